"""Every exported layer keeps the streaming contract, or says it does not stream and refuses predict mode."""

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.layers import test_utils

from .registry import NOT_LAYERS, REGISTRY, exported_layer_names

STREAMING = sorted(name for name, entry in REGISTRY.items() if entry.streams)
NOT_STREAMING = sorted(name for name, entry in REGISTRY.items() if entry.streams is False)
NO_TIME_AXIS = sorted(name for name, entry in REGISTRY.items() if entry.streams is None)


def test_every_exported_layer_is_registered():
    missing = sorted(exported_layer_names() - set(REGISTRY))
    assert not missing, f"exported layers missing from tests/layers/registry.py: {missing}"


def test_registry_names_exist():
    assert not sorted(set(REGISTRY) - set(dir(tl))), "registry entries that tl does not export"
    assert not sorted(NOT_LAYERS - set(dir(tl)))


@pytest.mark.parametrize("name", STREAMING)
def test_streamable_layer_keeps_the_contract(name):
    entry = REGISTRY[name]
    assert entry.build("predict").supports_step
    # Includes the reset check: rows restarted mid-stream (tl.reset_stream_rows) equal fresh streams.
    report = test_utils.verify_contract(entry.build, entry.signature, **entry.contract)
    assert "reset rows == fresh streams" in report.checks


@pytest.mark.parametrize("name", NOT_STREAMING)
def test_non_streamable_layer_refuses_predict_mode(name):
    entry = REGISTRY[name]
    layer = entry.build("predict").with_mode("predict")
    assert not layer.supports_step
    with pytest.raises(tl.LayerError, match="does not stream"):
        weights, state = layer.init(entry.signature, jax.random.PRNGKey(0))
        layer.pure_fn(
            jax.tree.map(lambda s: jax.numpy.zeros(s.shape, s.dtype), entry.signature), weights, state, None
        )


@pytest.mark.parametrize("name", NO_TIME_AXIS)
def test_layer_without_time_axis_computes_the_same_in_predict_mode(name):
    entry = REGISTRY[name]
    eval_layer, predict_layer = entry.build("eval"), entry.build("predict").with_mode("predict")
    weights, state = eval_layer.init(entry.signature, jax.random.PRNGKey(0))
    x = jax.tree.map(lambda s: jax.random.normal(jax.random.PRNGKey(1), s.shape, s.dtype), entry.signature)
    expected = eval_layer.pure_fn(x, weights, state, None)[0]
    _, predict_state = predict_layer.init(entry.signature, jax.random.PRNGKey(0))
    actual = predict_layer.pure_fn(x, weights, predict_state, None)[0]
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
