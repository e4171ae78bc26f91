"""Every exported layer keeps the streaming contract, or says it does not stream and refuses predict mode."""

import jax
import pytest

import trax_sl.layers as tl
from trax_sl.layers import test_utils

from .registry import NOT_LAYERS, REGISTRY, exported_layer_names

STREAMING = sorted(name for name, entry in REGISTRY.items() if entry.streams)
NOT_STREAMING = sorted(name for name, entry in REGISTRY.items() if not entry.streams)


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
    test_utils.verify_contract(entry.build, entry.signature, **entry.contract)


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
