"""Gin bindings are checked against their parameters' annotations before a run starts."""

import gin
import pytest

from trax_sl import gin_types


@gin.configurable(module="test_gin_types")
def configured(
    steps: int = 1,
    rate: float = 0.5,
    name: str | None = None,
    at: list[int] | None = None,
    flag: bool = False,
    layer=None,
):
    return steps, rate, name, at, flag, layer


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize(
    "binding",
    [
        "configured.steps = 3",
        "configured.rate = 1",  # An int is a fine float.
        "configured.rate = 1e-3",
        "configured.name = None",
        "configured.at = [1, 2]",
        "configured.at = (1, 2)",
        "configured.flag = True",
        "configured.layer = 'anything'",  # Not annotated: not judged.
        "configured.steps = %STEPS\nSTEPS = 4",  # References are resolved (and judged) by gin later.
        "scoped/configured.steps = 3",
    ],
)
def test_values_that_fit_pass(binding):
    gin.parse_config(binding)
    gin_types.check_bindings()


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        (
            "configured.steps = '20'",
            "configured.steps = '20' has type str, but configured's steps takes int (write 20 without quotes)",
        ),
        ("configured.steps = 2.5", "configured.steps = 2.5 has type float, but configured's steps takes int"),
        (
            "configured.steps = True",
            "configured.steps = True has type bool, but configured's steps takes int",
        ),
        (
            "configured.rate = '1e-3'",
            "configured.rate = '1e-3' has type str, but configured's rate takes float (write 1e-3 without quotes)",
        ),
        ("configured.name = 3", "configured.name = 3 has type int, but configured's name takes str or None"),
        (
            "configured.at = [1, 'x']",
            "configured.at = [1, 'x'] has type list, but configured's at takes list[int] or None",
        ),
        ("configured.flag = 1", "configured.flag = 1 has type int, but configured's flag takes bool"),
        (
            "scoped/configured.steps = 'x'",
            "scoped/configured.steps = 'x' has type str, but configured's steps takes int",
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_the_parameter_and_the_type(binding, message):
    gin.parse_config(binding)
    with pytest.raises(gin_types.BindingTypeError) as caught:
        gin_types.check_bindings()
    assert str(caught.value) == message
