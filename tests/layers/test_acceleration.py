"""Accelerate and the device helpers, on the 8 CPU devices tests/conftest.py sets up."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.layers import test_utils
from trax_sl.layers.acceleration import (
    Accelerate,
    for_n_devices,
    jit_forward,
    mean_or_pmean,
    on_accelerator,
    on_cpu,
    reshape_by_device,
)
from trax_sl.shapes import ShapeDtype


def _normal(shape, seed=1):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _assert_trees_close(actual, expected, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _is_replicated_on(a, n_devices):
    return a.sharding.is_fully_replicated and a.sharding.device_set == set(jax.devices()[:n_devices])


# --- Accelerate: same results as the plain layer ------------------------------------


@pytest.mark.parametrize("n_devices", [1, 2, 8])
@pytest.mark.parametrize("batch", [8, 5])
def test_accelerate_equals_layer_and_splits_the_batch(n_devices, batch):
    layer = tl.Serial(tl.Dense(3), tl.Relu())
    x = _normal((batch, 4))
    layer.init(x)
    fast = Accelerate(layer, n_devices=n_devices)
    y = fast(x)
    np.testing.assert_allclose(y, layer(x), rtol=1e-6, atol=1e-6)
    assert y.sharding.device_set == set(jax.devices()[:n_devices])
    if n_devices > 1 and batch % n_devices == 0:
        assert y.sharding.spec == PartitionSpec("batch")


def test_uneven_batch_is_split_over_devices_too():
    layer = tl.Dense(3)
    x = _normal((13, 4))
    fast = Accelerate(layer)
    weights, state = fast.init(x)
    hlo = jax.jit(fast.pure_fn).lower(x, weights, state, None).compile().as_text()
    # 13 rows on 8 devices: each device multiplies ceil(13 / 8) = 2 rows.
    assert re.search(r"f32\[2,3\].* dot\(", hlo), hlo
    np.testing.assert_allclose(fast(x), layer(x), rtol=1e-6, atol=1e-6)


def test_sequence_input_is_split_like_an_array():
    layer = tl.Serial(tl.Dense(2), tl.Tanh())
    x = Sequence.from_lengths(_normal((5, 3, 4)), jnp.array([3, 0, 1, 2, 3]))
    layer.init(x)
    y = Accelerate(layer)(x)
    expected = layer(x)
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.mask, expected.mask)
    np.testing.assert_allclose(y.values, expected.values, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("batch", [8, 5])
def test_batch_norm_statistics_are_the_whole_batch(batch):
    # Unlike Trax's explicit zero-padding, an uneven batch keeps its statistics.
    norm = tl.BatchNorm(axis=(0, 1), mode="train")
    x = 3.0 + _normal((batch, 3, 4))
    weights, state = norm.init(x)
    y, (new_state,) = Accelerate(norm).pure_fn(x, (weights,), (state,), None)
    expected, expected_state = norm.pure_fn(x, weights, state, None)
    _assert_trees_close(y, expected, rtol=1e-5, atol=1e-5)
    _assert_trees_close(new_state, expected_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1)), np.zeros(4), atol=1e-5)


def test_call_updates_both_caches_with_the_new_state():
    norm = tl.BatchNorm(axis=(0, 1), mode="train")
    x = _normal((5, 3, 4))
    norm.init(x)
    plain = tl.BatchNorm(axis=(0, 1), mode="train")
    plain.init(x)
    fast = Accelerate(norm)
    fast(x)
    plain(x)
    _assert_trees_close(fast.state[0], plain.state, rtol=1e-5)
    _assert_trees_close(norm.state, plain.state, rtol=1e-5)
    assert int(plain.state[2]) == 1  # Hand check: one batch seen.


def test_same_rng_gives_the_same_dropout_mask():
    dropout = tl.Dropout(0.5, mode="train")
    x = jnp.ones((8, 16))
    rng = jax.random.PRNGKey(3)
    fast = Accelerate(dropout)
    weights, state = fast.init(x)
    y, _ = fast.pure_fn(x, weights, state, rng)
    np.testing.assert_array_equal(y, dropout.pure_fn(x, (), (), rng)[0])
    assert 0 < int(jnp.sum(y == 0)) < x.size


def test_gradients_equal_the_plain_layers():
    layer = tl.Serial(tl.Dense(3), tl.Tanh(), tl.Dense(2))
    x = _normal((5, 4))
    weights, state = layer.init(x)
    fast = Accelerate(layer)

    def loss(model, w, s):
        return jnp.sum(model.pure_fn(x, w, s, None)[0] ** 2)

    expected = jax.grad(loss, argnums=1)(layer, weights, state)
    (eager,) = jax.grad(loss, argnums=1)(fast, (weights,), (state,))
    (jitted,) = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)(fast, (weights,), (state,))
    _assert_trees_close(eager, expected, rtol=1e-5)
    _assert_trees_close(jitted, expected, rtol=1e-5)


def test_shared_weights_follow_the_weights_passed_in():
    dense = tl.Dense(4)
    model = tl.Serial(dense, tl.Relu(), dense)
    x = _normal((5, 4))
    weights, state = model.init(x)
    fast = Accelerate(model)
    np.testing.assert_allclose(fast(x), model(x), rtol=1e-6, atol=1e-6)
    for scale in (2.0, -1.0):  # A cached trace would keep the first call's shared weights.
        scaled = jax.tree.map(lambda a, scale=scale: scale * a, weights)
        y, _ = fast.pure_fn(x, (scaled,), (state,), None)
        np.testing.assert_allclose(y, model.pure_fn(x, scaled, state, None)[0], rtol=1e-6, atol=1e-6)


# --- Accelerate: the interactive cache -----------------------------------------------


def test_works_without_init_on_an_initialized_layer():
    layer = tl.Serial(tl.Dense(3), tl.Relu())
    x = _normal((8, 4))
    weights, _ = layer.init(x)
    fast = Accelerate(layer)
    np.testing.assert_allclose(fast(x), layer(x), rtol=1e-6, atol=1e-6)
    _assert_trees_close(fast.weights[0], weights, rtol=0, atol=0)
    assert all(_is_replicated_on(a, 8) for a in jax.tree.leaves(fast.weights))
    _assert_trees_close(layer.weights, weights, rtol=0, atol=0)  # Not initialized anew.


def test_init_initializes_the_sublayer_and_replicates():
    dense = tl.Dense(3)
    fast = Accelerate(dense, n_devices=2)
    weights, state = fast.init(ShapeDtype((8, 4)))
    expected, _ = tl.Dense(3).init(ShapeDtype((8, 4)))
    assert state == ((),)
    _assert_trees_close(weights[0], expected, rtol=0, atol=0)
    _assert_trees_close(dense.weights, expected, rtol=0, atol=0)
    assert all(_is_replicated_on(a, 2) for a in jax.tree.leaves(weights))


def test_replicate_weights_sets_the_sublayer_and_this_layer():
    dense = tl.Dense(2)
    fast = Accelerate(dense)
    fast.init(ShapeDtype((4, 3)))
    kernel = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    bias = np.array([1.0, -1.0], np.float32)
    fast.replicate_weights((kernel, bias))
    x = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(fast(x), [[1.0, 0.0], [7.0, 7.0], [7.0, 8.0], [1.0, -1.0]])
    assert dense.weights[0] is kernel
    assert all(_is_replicated_on(a, 8) for a in jax.tree.leaves(fast.weights))
    with pytest.raises(ValueError, match=r"1-tuple \(sublayer_weights,\)"):
        fast.weights = (kernel, bias)


def test_replicate_state_sets_the_sublayer_and_this_layer():
    norm = tl.BatchNorm(axis=(0, 1), epsilon=0.0, mode="eval")
    fast = Accelerate(norm)
    fast.init(ShapeDtype((3, 2, 2)))
    fast.replicate_state((jnp.ones(2), jnp.full(2, 4.0), jnp.array(7)))
    x = jnp.array([[[1.0, 3.0], [5.0, -1.0]]] * 3)
    # Eval mode: (x - running_mean) / sqrt(running_var), with beta = 0 and gamma = 1.
    np.testing.assert_allclose(fast(x), (x - 1.0) / 2.0)
    assert int(norm.state[2]) == 7
    assert all(_is_replicated_on(a, 8) for a in jax.tree.leaves(fast.state))


# --- Accelerate: streaming, errors -------------------------------------------------------


def test_predict_mode_keeps_the_streaming_contract():
    # block_size 2, and a stream state with a batch axis: a batch of 2 on 8 devices.
    test_utils.verify_contract(
        lambda mode: Accelerate(tl.Conv1d(4, 3, stride=2, padding="causal", mode=mode)), ShapeDtype((2, 8, 4))
    )


def test_streaming_properties_are_the_sublayers():
    layer = tl.Serial(tl.Conv1d(4, 3, stride=2, padding="causal"), tl.Lookahead(2))
    fast = Accelerate(layer)
    props = ("block_size", "output_ratio", "input_latency", "output_latency", "receptive_field")
    assert [getattr(fast, p) for p in props] == [getattr(layer, p) for p in props]
    assert fast.block_size == 2
    assert not Accelerate(tl.Bidirectional(tl.Dense(3))).supports_step


def test_constructor_errors():
    with pytest.raises(ValueError, match="n_devices=9 is more than the 8 local device"):
        Accelerate(tl.Dense(2), n_devices=9)
    with pytest.raises(ValueError, match="positive int, got n_devices=-1"):
        Accelerate(tl.Dense(2), n_devices=-1)
    with pytest.raises(TypeError, match="expected a Layer to accelerate, got function"):
        Accelerate(lambda x: x)


def test_errors_name_the_path_inside():
    fast = Accelerate(tl.Serial(tl.Dense(3), tl.Dense(2)))
    fast.init(ShapeDtype((4, 5)))
    with pytest.raises(tl.LayerError, match=r"Accelerate > Serial > Dense_3\[0\] failed in pure_fn") as info:
        fast(jnp.ones((4, 6)))
    assert "f32[4,6]" in str(info.value)


# --- Device helpers ------------------------------------------------------------------


def test_reshape_by_device():
    x = np.arange(24).reshape(6, 4)
    y = reshape_by_device(x, 3)
    assert isinstance(y, jax.Array)
    np.testing.assert_array_equal(y[1], [[8, 9, 10, 11], [12, 13, 14, 15]])
    nested = reshape_by_device({"a": x, "s": Sequence.from_lengths(np.ones((6, 5)), np.arange(6))}, 2, True)
    assert isinstance(nested["a"], np.ndarray)
    assert nested["a"].shape == (2, 3, 4)
    assert nested["s"].values.shape == (2, 3, 5)
    np.testing.assert_array_equal(nested["s"].mask[1, 0], [True, True, True, False, False])
    with pytest.raises(ValueError, match=r"number of devices \(4\) does not evenly divide .* \(6, 4\)"):
        reshape_by_device(x, 4)


def test_for_n_devices_puts_one_copy_on_each_device():
    x = {"w": np.array([[1.0, 2.0]]), "b": 3.0}
    assert for_n_devices(x, 1) is x
    y = for_n_devices(x, 4)
    assert y["w"].shape == (4, 1, 2) and y["b"].shape == (4,)
    shards = sorted(y["w"].addressable_shards, key=lambda s: s.device.id)
    assert [s.device for s in shards] == jax.devices()[:4]
    for s in shards:
        np.testing.assert_array_equal(s.data, [[[1.0, 2.0]]])
    traced = jax.jit(lambda a: for_n_devices(a, 2))(jnp.arange(3.0))
    np.testing.assert_array_equal(traced, [[0.0, 1.0, 2.0]] * 2)


@pytest.mark.parametrize("n_devices", [0, 1, 2, 8])
def test_jit_forward_equals_the_plain_forward(n_devices):
    layer = tl.Dense(3)
    x = _normal((8, 4))
    weights, state = layer.init(x)
    expected = layer.pure_fn(x, weights, state, None)[0]
    forward = jit_forward(layer.pure_fn, n_devices, do_mean=False)
    y, _ = forward(x, for_n_devices(weights, n_devices), for_n_devices(state, n_devices), None)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    mean, _ = jit_forward(layer.pure_fn, n_devices)(
        x, for_n_devices(weights, n_devices), for_n_devices(state, n_devices), None
    )
    # As in Trax, do_mean averages over axis 0 on several devices only.
    mean_expected = expected if n_devices < 2 else jnp.mean(expected, axis=0)
    np.testing.assert_allclose(mean, mean_expected, rtol=1e-5, atol=1e-6)
    if n_devices == 0:
        assert y.devices() == {jax.devices("cpu")[0]}


def test_jit_forward_runs_each_device_on_its_part():
    # pmap semantics: per-device batch statistics, per-device state, per-device rng.
    norm = tl.BatchNorm(axis=(0, 1), mode="train")
    x = _normal((8, 3, 2))
    weights, state = norm.init(x)
    forward = jit_forward(norm.pure_fn, 2, do_mean=False)
    y, new_state = forward(x, for_n_devices(weights, 2), for_n_devices(state, 2), None)
    first, first_state = norm.pure_fn(x[:4], weights, state, None)
    np.testing.assert_allclose(y[:4], first, rtol=1e-5, atol=1e-5)
    assert new_state[0].shape == (2, 2)
    np.testing.assert_allclose(new_state[0][0], first_state[0], rtol=1e-5)

    def draw(x, weights, state, rng):
        return jax.random.uniform(rng, (x.shape[0],)), state

    rng = jax.random.PRNGKey(5)
    bits, _ = jit_forward(draw, 4, do_mean=False)(jnp.ones((8, 1)), (), (), rng)
    expected = jnp.concatenate([jax.random.uniform(k, (2,)) for k in jax.random.split(rng, 4)])
    np.testing.assert_array_equal(bits, expected)


def test_jit_forward_gradients_are_per_device():
    layer = tl.Dense(1)
    x = _normal((8, 2))
    weights, state = layer.init(x)
    forward = jit_forward(layer.pure_fn, 4, do_mean=False)

    def loss(w):
        return jnp.sum(forward(x, w, for_n_devices(state, 4), None)[0])

    grads = jax.grad(loss)(for_n_devices(weights, 4))
    # d/dkernel of sum(x @ kernel + b) over device i's two rows, and 2 for the bias.
    np.testing.assert_allclose(grads[0][:, :, 0], np.asarray(x).reshape(4, 2, 2).sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(grads[1], np.full((4, 1), 2.0))


def test_jit_forward_needs_per_device_weights():
    with pytest.raises(ValueError, match=r"one copy per device .* got shape \(2, 3\) at weights\[0\]"):
        jit_forward(tl.Dense(3).pure_fn, 4)(jnp.ones((8, 2)), (jnp.ones((2, 3)), jnp.ones((4, 3))), (), None)


def test_mean_or_pmean_outside_a_mapped_function():
    x = jnp.array([[1.0, 2.0], [3.0, 6.0]])
    np.testing.assert_allclose(mean_or_pmean(2, x, axis=0), [2.0, 4.0])
    assert float(mean_or_pmean(2, x)) == 3.0
    with pytest.raises(ValueError, match="axis can only be None or 0, got axis=1"):
        mean_or_pmean(2, x, axis=1)


def test_mean_or_pmean_inside_a_mapped_function():
    def forward(x, weights, state, rng):
        # Device i holds rows [2i, 2i + 1] of arange(16).reshape(8, 2): local mean 2i + 1.5.
        local = jnp.mean(x)
        return (mean_or_pmean(4, local, axis=0), mean_or_pmean(4, x)), state

    (across, overall), _ = jit_forward(forward, 4, do_mean=False)(
        jnp.arange(16.0).reshape(8, 2), (), (), None
    )
    np.testing.assert_allclose(across, np.full(4, 7.5))
    np.testing.assert_allclose(overall, np.full(4, 7.5))
    per_row = jax.vmap(lambda v: mean_or_pmean(3, v, axis=0), axis_name="batch")(jnp.array([1.0, 2.0, 6.0]))
    np.testing.assert_allclose(per_row, [3.0, 3.0, 3.0])
    with pytest.raises(ValueError, match="n_devices=2 but the mapped axis 'batch' spans 3 devices"):
        jax.vmap(lambda v: mean_or_pmean(2, v, axis=0), axis_name="batch")(jnp.ones(3))


def test_on_cpu_and_on_accelerator():
    x = {"a": np.arange(3.0)}
    on_host = on_cpu(x)
    assert on_host["a"].devices() == {jax.devices("cpu")[0]}
    np.testing.assert_array_equal(on_host["a"], [0.0, 1.0, 2.0])
    # On a CPU-only machine the accelerator is the default device.
    assert on_accelerator(x)["a"].devices() == {jax.devices()[0]}
