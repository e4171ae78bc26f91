"""MLP: Trax's signatures and exact values."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype


def test_trax_signature_and_defaults():
    params = inspect.signature(models.MLP).parameters
    assert list(params)[:6] == [
        "n_hidden_layers",
        "d_hidden",
        "activation_fn",
        "n_output_classes",
        "flatten",
        "mode",
    ]
    assert {k: p.default for k, p in params.items()} == {
        "n_hidden_layers": 2,
        "d_hidden": 512,
        "activation_fn": tl.Relu,
        "n_output_classes": 10,
        "flatten": True,
        "mode": "train",
        "layer_widths": None,
        "out_activation": False,
    }


def test_default_mlp_flattens_and_classifies():
    model = models.MLP()
    weights, _ = model.weights_and_state_signature(ShapeDtype((3, 4, 5)))
    # Serial(Flatten, Dense, Relu, Dense, Relu, Dense).
    assert [w[0].shape for w in weights if w] == [(20, 512), (512, 512), (512, 10)]
    assert model.output_signature(ShapeDtype((3, 4, 5))) == ShapeDtype((3, 10))


def test_values_are_dense_relu_dense():
    model = models.MLP(n_hidden_layers=1, d_hidden=3, n_output_classes=2)
    x = np.random.default_rng(0).standard_normal((2, 2, 2)).astype(np.float32)
    weights, _ = model.init(ShapeDtype(x.shape), jax.random.PRNGKey(1))
    (w1, b1), _, (w2, b2) = weights[1:]
    h = np.maximum(x.reshape((2, 4)) @ np.asarray(w1) + np.asarray(b1), 0.0)
    np.testing.assert_allclose(model(jnp.asarray(x)), h @ np.asarray(w2) + np.asarray(b2), atol=1e-6)


def test_layer_widths_is_trax_1_4_signature():
    model = models.MLP(layer_widths=(6, 4), activation_fn=tl.Tanh, flatten=False)
    weights, _ = model.init(ShapeDtype((2, 3)))
    assert [np.shape(w[0]) for w in weights if w] == [(3, 6), (6, 4)]
    assert len(weights) == 3  # Dense, Tanh, Dense: no activation after the last layer.
    assert len(models.MLP(layer_widths=(6, 4), out_activation=True).sublayers) == 5  # Flatten first.


def test_unflattened_mlp_streams_on_sequences():
    test_utils.verify_contract(
        lambda mode: models.MLP(n_hidden_layers=1, d_hidden=4, n_output_classes=3, flatten=False, mode=mode),
        ShapeDtype((2, 4, 3)),
    )
    y = models.MLP(d_hidden=4, flatten=False)
    y.init(ShapeDtype((1, 2, 3)))
    out = y(seq.Sequence.from_lengths(jnp.ones((1, 2, 3)), [1]))
    assert isinstance(out, seq.Sequence) and out.shape == (1, 2, 10)


def test_bad_arguments():
    with pytest.raises(ValueError, match="MLP: n_hidden_layers must be an integer >= 0, got -1"):
        models.MLP(n_hidden_layers=-1)
    with pytest.raises(ValueError, match="MLP: layer_widths must name at least one layer"):
        models.MLP(layer_widths=())
