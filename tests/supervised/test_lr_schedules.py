"""Exact values of every learning-rate schedule and multifactor factor at given steps."""

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl.supervised import lr_schedules


def values(schedule, steps):
    return [float(schedule(step)) for step in steps]


def test_multifactor_default_is_constant_warmup_rsqrt_decay():
    # 0.1 * min(1, step / 400) / sqrt(max(step, 400)).
    expected = [0.0, 0.1 * 0.5 / 20, 0.1 / 20, 0.1 / 40]
    np.testing.assert_allclose(values(lr_schedules.multifactor(), [0, 200, 400, 1600]), expected, rtol=1e-6)


def test_multifactor_on_a_traced_step_equals_eager():
    schedule = lr_schedules.multifactor()
    jitted = jax.jit(schedule)
    for step in [0, 200, 1600]:
        np.testing.assert_allclose(jitted(jnp.int32(step)), schedule(step), rtol=1e-6)
        assert jitted(jnp.int32(step)).dtype == jnp.float32


def test_two_constants():
    schedule = lr_schedules.multifactor(
        factors="two_constants", constant=0.1, second_constant=0.01, second_constant_step=10
    )
    np.testing.assert_allclose(values(schedule, [0, 9, 10, 100]), [0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_rsqrt_normalized_decay():
    # sqrt(100) / sqrt(max(step, 100)).
    schedule = lr_schedules.multifactor(factors="rsqrt_normalized_decay", warmup_steps=100)
    np.testing.assert_allclose(values(schedule, [0, 100, 400, 2500]), [1.0, 1.0, 0.5, 0.2], rtol=1e-6)


def test_decay_every():
    schedule = lr_schedules.multifactor(
        factors="constant * decay_every", constant=2.0, decay_factor=0.5, steps_per_decay=10
    )
    np.testing.assert_allclose(values(schedule, [0, 9, 10, 25]), [2.0, 2.0, 1.0, 0.5], rtol=1e-6)


def test_cosine_decay():
    # Flat during warm-up, then 0.5 * (1 + cos(pi * ((step - 10) / 100 % 1))).
    schedule = lr_schedules.multifactor(factors="cosine_decay", warmup_steps=10, steps_per_cycle=100)
    expected = [1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 1.0]
    np.testing.assert_allclose(values(schedule, [0, 10, 35, 60, 110]), expected, rtol=1e-6, atol=1e-7)


def test_linear_warmup_alone():
    schedule = lr_schedules.multifactor(factors="linear_warmup", warmup_steps=4)
    assert values(schedule, [0, 1, 2, 4, 8]) == [0.0, 0.25, 0.5, 1.0, 1.0]


def test_minimum_bounds_the_rate_from_below():
    schedule = lr_schedules.multifactor(minimum=0.004)
    np.testing.assert_allclose(values(schedule, [0, 400, 1600]), [0.004, 0.005, 0.004], rtol=1e-6)


def test_multifactor_rejects_unknown_factors_when_built():
    with pytest.raises(ValueError, match=r"unknown factor\(s\) \['linear_warmpu'\]"):
        lr_schedules.multifactor(factors="constant * linear_warmpu")
    with pytest.raises(ValueError, match="warmup_steps must be > 0"):
        lr_schedules.multifactor(warmup_steps=0)


def test_constant_is_zero_at_step_zero_as_in_trax():
    assert values(lr_schedules.constant(0.5), [0, 1, 1000]) == [0.0, 0.5, 0.5]


def test_warmup():
    # The line through (0, 0) and (10, 1), then 1.
    assert values(lr_schedules.warmup(9, 1.0), [0, 5, 10, 11, 100]) == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_warmup_and_rsqrt_decay():
    # Warm-up to step 4, then sqrt(4) / sqrt(step).
    np.testing.assert_allclose(
        values(lr_schedules.warmup_and_rsqrt_decay(3, 1.0), [0, 2, 4, 16, 64]),
        [0.0, 0.5, 1.0, 0.5, 0.25],
        rtol=1e-6,
    )


def test_body_and_tail_with_cosine_sawtooth_tail():
    tail = lr_schedules.CosineSawtoothTail(steps_per_cycle=10, min_value=0.1)
    schedule = lr_schedules.BodyAndTail(1.0, body_start=2, tail_start=5, tail_fn=tail)
    # Warm-up 0, 0.5; body 1 at 2..4; tail 0.1 + 0.9 * 0.5 * (1 + cos(pi * position in cycle)).
    expected = [0.0, 0.5, 1.0, 1.0, 1.0, 0.1 + 0.9 * 0.5, 1.0]
    np.testing.assert_allclose(values(schedule, [0, 1, 2, 4, 5, 10, 15]), expected, rtol=1e-6)


def test_cosine_sawtooth_by_trax_private_names_on_python_steps():
    # Trax's lr_schedules_test.test_cosine_sawtooth: Python steps give Trax's float64 values exactly.
    tail_fn = lr_schedules._CosineSawtoothTail(180, min_value=0.1)
    lr_fn = lr_schedules._BodyAndTail(0.3, tail_start=0, tail_fn=tail_fn)
    for cycle_start in (0, 180):
        for step, expected in ((1, 0.29998477), (30, 0.28660254), (60, 0.25), (120, 0.15), (179, 0.10001523)):
            assert lr_fn(cycle_start + step) == pytest.approx(expected, abs=5e-8)
    assert lr_fn(180) == 0.3
    # A traced step still works, in float32.
    assert jax.jit(lr_fn)(jnp.int32(60)).dtype == jnp.float32


def test_body_and_tail_rejects_missing_parts():
    with pytest.raises(ValueError, match="body_start and tail_start are both None"):
        lr_schedules.BodyAndTail(1.0)
    with pytest.raises(ValueError, match="tail_start=3 but tail_fn is None"):
        lr_schedules.BodyAndTail(1.0, tail_start=3)


def test_gin_configures_schedules_by_trax_names():
    gin.clear_config()
    try:
        gin.parse_config(
            """
            trax_sl.supervised.lr_schedules.multifactor.constant = 0.5
            multifactor.warmup_steps = 10
            lr_schedules.warmup.max_value = 2.0
            """
        )
        # 0.5 * (5 / 10) / sqrt(10).
        np.testing.assert_allclose(lr_schedules.multifactor()(5), 0.25 / math.sqrt(10), rtol=1e-6)
        np.testing.assert_allclose(lr_schedules.warmup(n_warmup_steps=1)(1), 1.0)
    finally:
        gin.clear_config()
