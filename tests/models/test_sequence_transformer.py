"""The notebook's Transformer encoder (SequenceTransformer): SequenceLayers' numbers, streaming."""

import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import base, test_utils
from trax_sl.models import sequence_transformer
from trax_sl.shapes import ShapeDtype

from .golden import fill, golden_values, residual_inner, set_at, zeros_like_signature


def test_weights_shapes():
    model = models.SequenceTransformer(
        8,
        3,
        num_heads=2,
        units_per_head=4,
        ffn_dim=6,
        dropout_rate=0.1,
        max_past_horizon=4,
        max_future_horizon=0,
    )
    weights, _ = model.weights_and_state_signature(ShapeDtype((2, 5, 3)))
    # Serial(AddTimingSignal, Dense, Relu, Repeat(block), RMSNorm); no biases.
    assert weights[1].shape == (3, 8) and weights[4].shape == (8,)
    attention = residual_inner((3, 0))
    block = weights
    for i in attention:
        block = block[i]
    assert block[0].shape == (3, 8)  # RMSNorm scales, one per layer.
    assert [w.shape for w in block[1][0]] == [(3, 8, 2, 4)] * 3
    assert block[3].shape == (3, 8, 8)


def test_streams_only_with_bounded_horizons():
    def make(past, future, cache_size=None):
        return models.SequenceTransformer(8, 2, 2, 4, 8, 0.0, past, future, cache_size=cache_size)

    assert make(4, 1).supports_step and (make(4, 1).input_latency, make(4, 1).output_latency) == (2, 2)
    assert make(-1, 0, cache_size=16).supports_step
    assert not make(-1, -1).supports_step  # The notebook's unmasked example.
    with pytest.raises(base.LayerError, match="pass cache_size="):
        make(-1, 0).with_mode("predict").init(ShapeDtype((2, 1, 3)))
    # Layer-wise, the unmasked one sees the whole sequence: the first step sees the last.
    unmasked = make(-1, -1).with_mode("eval")
    x = jnp.asarray(fill((1, 5, 3), 7))
    unmasked.init(ShapeDtype((1, 5, 3)))
    y = unmasked(x)
    assert not np.allclose(unmasked(x.at[:, 4].set(3.0))[:, 0], y[:, 0])


def test_geglu_is_gelu_times_gate():
    x = jnp.asarray(fill((2, 3, 4), 1))
    a, b = np.asarray(x[..., :2]), np.asarray(x[..., 2:])
    gelu = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
    np.testing.assert_allclose(sequence_transformer.GeGLU()(x), gelu * b, atol=1e-6)


# Made by SequenceLayers 0.2 running the notebook's Transformer(model_dimension=4,
# num_layers=1, num_heads=2, units_per_head=2, ffn_dim=4, dropout_rate=0.0,
# max_past_horizon=2, max_future_horizon=0) layer-wise, with the weights of
# `golden_values(KEYS)` (the Repeat axis added) on `2 * fill((2, 6, 3), 310)`, lengths [6, 4].
KEYS = [
    ("in_k", (3, 4)),
    ("att_rms_s", (4,)),
    ("att_qkv", (4, 3, 2, 2)),
    ("att_out_k", (2, 2, 4)),
    ("ffn_rms_s", (4,)),
    ("ffn_d1_k", (4, 8)),
    ("ffn_d2_k", (4, 4)),
    ("out_rms_s", (4,)),
]
GOLDEN = np.array(
    [
        [
            [1.3041729, 1.5707791, 1.5696138, 1.2857012],
            [0.084076576, 0.9095383, 1.7182881, 2.2406037],
            [0.51221555, 1.2001042, 1.7447367, 1.9906408],
            [0.19564372, 1.0117191, 1.7369373, 2.1699812],
            [2.0593534, 1.1984158, 1.1313064, 0.8585164],
            [1.8906064, 1.6811423, 1.1224227, 0.34560668],
        ],
        [
            [1.1717653, 1.5210453, 1.6225717, 1.4347403],
            [0.24728575, 0.7469865, 1.6719277, 2.322097],
            [0.5578005, 1.2255809, 1.7426677, 1.9606134],
            [0.43684345, 1.1570911, 1.7464381, 2.0380251],
            [0.05692581, -2.583309, -1.0261807, 0.7601732],
            [0.020692077, 0.7902869, 1.6897357, 2.3104784],
        ],
    ],
    np.float32,
)


def golden_model_and_weights(mode="eval"):
    model = models.SequenceTransformer(4, 1, 2, 2, 4, 0.0, 2, 0, mode=mode)
    weights, _ = zeros_like_signature(model.weights_and_state_signature(ShapeDtype((2, 6, 3))))
    p = golden_values(KEYS)

    def r(name):
        return jnp.asarray(p[name])[None]

    attention, ffn = residual_inner((3, 0)), residual_inner((3, 1))
    qkv = p["att_qkv"]
    for path, value in (
        ((1,), jnp.asarray(p["in_k"])),
        ((4,), jnp.asarray(p["out_rms_s"])),
        ((*attention, 0), r("att_rms_s")),
        ((*attention, 1, 0), tuple(jnp.asarray(qkv[:, i])[None] for i in range(3))),
        ((*attention, 3), r("att_out_k").reshape((1, 4, 4))),
        ((*ffn, 0), r("ffn_rms_s")),
        ((*ffn, 1), r("ffn_d1_k")),
        ((*ffn, 4), r("ffn_d2_k")),
    ):
        weights = set_at(weights, path, value)
    return model, weights


def test_sequence_layers_golden_numbers():
    model, weights = golden_model_and_weights()
    x = seq.Sequence.from_lengths(jnp.asarray(2.0 * fill((2, 6, 3), 310)), [6, 4])
    y = model(x, weights=weights)
    valid = np.asarray(y.mask)[:, :, None]
    np.testing.assert_array_equal(y.mask, x.mask)
    np.testing.assert_allclose(np.where(valid, y.values, 0), np.where(valid, GOLDEN, 0), atol=2e-5)


def test_contract_with_lookahead_and_a_global_cache():
    test_utils.verify_contract(
        lambda mode: models.SequenceTransformer(8, 2, 2, 4, 8, 0.1, -1, 1, cache_size=12, mode=mode),
        ShapeDtype((2, 8, 3)),
        # The attention's gradients are checked in tests/layers; the step loop's backward
        # pass through the whole stack takes XLA long to compile on CPU.
        check_gradients=False,
    )
