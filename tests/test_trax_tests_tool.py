"""tools/trax_tests.py's import rewriting: Trax test source renamed to trax_sl, line numbers kept."""

import textwrap

import pytest

from tests import scripts

trax_tests = scripts.load("tools/trax_tests.py", "trax_tests_tool")

TRAX_MODULES = {
    "trax",
    "trax.layers",
    "trax.layers.base",
    "trax.layers.test_utils",
    "trax.layers.initializers",
    "trax.layers.research",
    "trax.layers.research.sparsity",
    "trax.fastmath",
    "trax.shapes",
    "trax.models",
    "trax.models.transformer",
    "trax.models.reformer",
    "trax.models.reformer.reformer",
    "trax.models.research",
    "trax.models.research.terraformer",
    "trax.data",
    "trax.data.tf_inputs",
    "trax.test_utils",
}
SL_MODULES = {
    "trax_sl",
    "trax_sl.layers",
    "trax_sl.layers.base",
    "trax_sl.layers.test_utils",
    "trax_sl.layers.initializers",
    "trax_sl.layers.research",
    "trax_sl.fastmath",
    "trax_sl.shapes",
    "trax_sl.models",
    "trax_sl.models.transformer",
    "trax_sl.models.reformer",  # A module here, a package in Trax.
    "trax_sl.data",
    "trax_sl.data.tf_inputs",
}


def rewrite(source, tf_test_shim=False):
    return trax_tests.rewrite_imports(textwrap.dedent(source), TRAX_MODULES, SL_MODULES, tf_test_shim)


@pytest.mark.parametrize(
    "trax_line, sl_line",
    [
        ("from trax import layers as tl", "from trax_sl import layers as tl"),
        ("import trax.layers as tl", "from trax_sl import layers as tl"),
        ("import trax", "import trax_sl as trax"),
        ("from trax import fastmath", "from trax_sl import fastmath"),
        ("from trax.fastmath import numpy as jnp", "from trax_sl.fastmath import numpy as jnp"),
        ("from trax.shapes import ShapeDtype", "from trax_sl.shapes import ShapeDtype"),
        ("from trax.models import transformer", "from trax_sl.models import transformer"),
        ("import trax.layers.initializers as init", "from trax_sl.layers import initializers as init"),
        # Moved module: same top package and name, another layout.
        ("from trax.models.reformer import reformer", "from trax_sl.models import reformer"),
        # Missing module: the plain rename, so the failure names what is missing.
        ("from trax.layers.research import sparsity", "from trax_sl.layers.research import sparsity"),
        ("from trax.models.research import terraformer", "from trax_sl.models.research import terraformer"),
        # Trax's test-only flag helper maps to the harness's stand-in.
        ("from trax import test_utils", "from trax_tests_harness import trax_test_utils as test_utils"),
        ("from trax.layers import test_utils", "from trax_sl.layers import test_utils"),
        ("import numpy as np", "import numpy as np"),
    ],
)
def test_one_import_line(trax_line, sl_line):
    assert rewrite(trax_line + "\n") == sl_line + "\n"


def test_modules_and_names_from_one_statement_keep_line_numbers():
    source = """\
    from trax.layers import (base,
                             Dense as D)
    x = 1
    """
    assert rewrite(source) == textwrap.dedent("""\
    from trax_sl.layers import Dense as D; from trax_sl.layers import base

    x = 1
    """)


def test_import_submodule_binds_trax():
    assert rewrite("import trax.models\n") == "import trax_sl.models; import trax_sl as trax\n"


def test_code_references_and_patch_targets():
    source = """\
    import trax
    y = trax.models.reformer.reformer.Reformer
    with mock.patch('trax.data.tf_inputs.download_and_prepare'):
      pass
    doc = 'Tests for trax.layers.'
    """
    assert rewrite(source) == textwrap.dedent("""\
    import trax_sl as trax
    y = trax.models.reformer.Reformer
    with mock.patch('trax_sl.data.tf_inputs.download_and_prepare'):
      pass
    doc = 'Tests for trax.layers.'
    """)


def test_tf_test_base_class_shim_only_when_asked():
    assert rewrite("from tensorflow import test\n", tf_test_shim=True) == (
        "from trax_tests_harness import tf_test as test\n"
    )
    assert rewrite("from tensorflow.compat.v2 import test\n") == "from tensorflow.compat.v2 import test\n"
    assert rewrite("import tensorflow as tf\n", tf_test_shim=True) == "import tensorflow as tf\n"


def test_gin_config():
    gin = "import trax.models.reformer.reformer\ntrain.model = @trax.models.Reformer\nx.y = 1\n"
    assert trax_tests.rewrite_gin(gin, TRAX_MODULES, SL_MODULES) == (
        "import trax_sl.models.reformer\ntrain.model = @trax_sl.models.Reformer\nx.y = 1\n"
    )


def test_unfair_needs_come_from_the_failure_text():
    assert trax_tests.unfair_need("ModuleNotFoundError: No module named 'tensorflow'") == "tensorflow"
    assert trax_tests.unfair_need("ModuleNotFoundError: No module named 'gym'") == "gym"
    jax_refuses = "TypeError: unsupported operand type(s) for ==: 'ArrayImpl' and 'list'"
    assert trax_tests.unfair_need(jax_refuses) == "an older JAX (array == list)"
    assert trax_tests.unfair_need("AttributeError: module 'trax_sl.layers' has no attribute 'X'") is None
    assert trax_tests.unfair_need("ModuleNotFoundError: No module named 'trax_sl.models.research'") is None


def test_globs_stay_within_a_folder_unless_double_star():
    assert trax_tests.glob_match("trax/layers/core_test.py", "trax/layers/*_test.py")
    assert not trax_tests.glob_match("trax/layers/research/sparsity_test.py", "trax/layers/*_test.py")
    assert trax_tests.glob_match("trax/layers/research/sparsity_test.py", "trax/**/*_test.py")
