"""Hourglass: mirrors Trax's hourglass_test.py, plus the relative attention's distances and masks."""

import functools
import inspect

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import hourglass
from trax_sl.shapes import ShapeDtype


def test_trax_signature_and_defaults():
    params = inspect.signature(hourglass.HourglassLM).parameters
    assert {k: p.default for k, p in params.items() if k != "vocab_size"} == {
        "d_model": 512,
        "d_ff": 2048,
        "vanilla_layers": (1, 1),
        "hierarchy": "6@3",
        "n_heads": 8,
        "dropout": 0.1,
        "dropout_shared_axes": None,
        "mode": "train",
        "ff_activation": tl.FastGelu,
        "vanilla_attn_type": tl.RelativeAttentionWrapper,
        "middle_attn_type": tl.RelativeAttentionWrapper,
        "downsampling_fn": tl.AttentionResampling,
        "upsampling_fn": tl.AttentionResampling,
        "attention_downsampling_fn": tl.AveragePooling,
        "attention_upsampling_fn": tl.LinearUpsampling,
    }


def test_parse_hourglass_hierarchy():  # Trax: test_parse_hourglass_hierarchy.
    assert hourglass._parse_hierarchy("6@3") == ([6], [3])
    assert hourglass._parse_hierarchy("3@2 2@6 5@24 2@6 3@2") == ([3, 2, 5], [2, 3, 4])
    with pytest.raises(ValueError, match="not divisible"):
        hourglass._parse_hierarchy("1@2 2@3 1@2")
    with pytest.raises(ValueError, match="palindrome"):
        hourglass._parse_hierarchy("1@2 2@3")


def output_shape(model, shape):
    """The output shape of `model` initialised on int32 ids of `shape`, traced without compiling."""

    def run(x):
        weights, state, _ = model.init_tree(ShapeDtype(x.shape, x.dtype), jax.random.PRNGKey(0))
        return model.pure_fn(x, weights, state, jax.random.PRNGKey(1))[0]

    return jax.eval_shape(run, jax.ShapeDtypeStruct(shape, np.int32)).shape


def check_autoregressive(model, length, vocab_size):
    """Each position's logits depend on earlier tokens only (Trax's _test_autoregressive_property).

    Row i of the batch keeps the first i tokens of x1 and replaces the rest;
    its logits up to position i must equal x1's. All rows run in one call.
    """
    draw = np.random.default_rng(0)
    x1, x2 = draw.integers(1, vocab_size, size=(2, length))
    rows = np.stack([x1] + [np.concatenate([x1[:i], x2[i:]]) for i in range(length)]).astype(np.int32)
    model.init(ShapeDtype(rows.shape, np.int32))
    y = np.asarray(model(rows, rng=jax.random.PRNGKey(0)))
    assert y.shape == (length + 1, length, vocab_size)
    for i in range(length):
        np.testing.assert_allclose(y[i + 1, : i + 1], y[0, : i + 1], atol=1e-5)
    # ... and does depend on them: row 1 (all of x2) differs from x1's after position 0.
    assert not np.allclose(y[1, 1:], y[0, 1:], atol=1e-3)


def test_hourglass_lm_forward_shape():  # Trax: test_hourglass_lm_forward_shape.
    model = hourglass.HourglassLM(
        7, hierarchy="2@3 2@6 2@3", vanilla_layers=(1, 1), d_model=16, d_ff=16, n_heads=2
    )
    assert output_shape(model, (3, 24)) == (3, 24, 7)


def test_hourglass_lm_autoregressive_multi_stage():
    # Trax: the multi-stage half of test_hourglass_lm_autoregressive_property, smaller: 1 layer per
    # level, not 2, and no vanilla layers (the single-stage test has them).
    model = hourglass.HourglassLM(
        26, hierarchy="1@3 1@6 1@3", vanilla_layers=(0, 0), d_model=8, d_ff=8, n_heads=2, mode="eval"
    )
    check_autoregressive(model, length=12, vocab_size=26)


def test_hourglass_lm_autoregressive_single_stage():
    # Trax: the single-stage half of test_hourglass_lm_autoregressive_property (1 layer, not 2).
    model = hourglass.HourglassLM(
        26, hierarchy="1@4", vanilla_layers=(1, 1), d_model=8, d_ff=8, n_heads=2, mode="eval"
    )
    check_autoregressive(model, length=8, vocab_size=26)


def test_lsh_attention_in_vanilla():  # Trax: test_lsh_attention_in_vanilla (gin bindings -> partial).
    lsh = functools.partial(
        tl.PureLSHSelfAttentionWrapper, pure_lsh_implementation=tl.PureLSHSelfAttention, chunk_len=2
    )
    model = hourglass.HourglassLM(
        7,
        hierarchy="2@3",
        vanilla_layers=(1, 1),
        d_model=16,
        d_ff=16,
        n_heads=2,
        vanilla_attn_type=lsh,
        downsampling_fn=tl.LinearPooling,
        upsampling_fn=tl.LinearUpsampling,
    )
    assert output_shape(model, (3, 12)) == (3, 12, 7)


def test_attention_masks_of_shortened_and_upsampled_queries_hand_checked():
    """Query i of a shortened sequence sees keys up to its span's end; upsampled, up to its key's start."""
    mask_layer = tl.CreateAttentionMaskLayer()
    down = mask_layer((np.zeros((1, 2, 1)), np.zeros((1, 4, 1)), np.zeros((1, 4, 1))))[3]
    np.testing.assert_array_equal(down[0, 0], [[1, 1, 0, 0], [1, 1, 1, 1]])
    up = mask_layer((np.zeros((1, 4, 1)), np.zeros((1, 2, 1)), np.zeros((1, 2, 1))))[3]
    np.testing.assert_array_equal(up[0, 0], [[1, 0], [1, 0], [1, 1], [1, 1]])


def test_relative_attention_shares_its_biases():
    """One context and one location bias `[1, n_heads, 1, d_head]` serve every relative attention."""
    context, location = tl.get_rel_att_inputs(8, 2)
    attention = tl.Serial(
        tl.RelativeAttentionWrapper(
            8, 2, context_bias_layer=context, location_bias_layer=location, total_pooling=1
        ),
        tl.RelativeAttentionWrapper(
            8, 2, context_bias_layer=context, location_bias_layer=location, total_pooling=1
        ),
    )
    weights, _ = attention.init(ShapeDtype((1, 4, 8)))
    biases = [w for w in jax.tree.leaves(weights) if getattr(w, "shape", None) == (1, 2, 1, 4)]
    assert len(biases) == 2  # The second wrapper's are the first's, shared.


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: hourglass.HourglassLM(8, mode="predict"), "HourglassLM: mode='predict'"),
        (lambda: tl.PositionalEmbeddings(8, True, 1), "separate_cls=True"),
        (lambda: tl.get_rel_att_inputs(6, 4), "multiple of n_heads"),
    ],
)
def test_unsupported_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
