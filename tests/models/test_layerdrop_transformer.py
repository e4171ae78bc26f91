"""Layer-skipping Transformer LMs: Trax's layerdrop_transformer_test cases, which blocks run, streaming."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import layerdrop_transformer as ld
from trax_sl.models import transformer
from trax_sl.shapes import ShapeDtype

SMALL = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16, "dropout": 0.0}
TRAX_TEST = {"d_model": 16, "d_ff": 32, "n_layers": 2, "n_heads": 2, "max_len": 16}
PAIR = (ShapeDtype((1, 8), jnp.int32), ShapeDtype((1, 8), jnp.int32))


def tokens(shape, seed=0, low=1, high=8):
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32))


def shifted(x):
    """What a decoding loop feeds a predict-mode LM (ShiftRight is Trax's no-op there): 0, then each previous token."""
    return jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def block_weights(weights, i, shared_draw=True):
    """The weights of decoder block i (its two Residuals) inside a ConditionedBlock's Cond."""
    # After ShiftRight, Embedding, Dropout, PositionalEncoding (and the shared draw and its Swap).
    conditioned = weights[(6 if shared_draw else 4) + i]
    cond = conditioned[1]  # Serial(Select or draw, Cond(LargerThan, Serial(block), Serial())).
    assert cond[0] == () and cond[2] == ()
    return tuple(cond[1])


def transformer_lm_with(weights, blocks, shared_draw=True):
    """A TransformerLM (eval) running `blocks` of a layer-drop LM's `weights`, and its weights."""
    lm = transformer.TransformerLM(8, n_layers=len(blocks), mode="eval", scan_layers=False, **SMALL)
    lm_weights = (
        tuple(weights[:4])
        + sum((block_weights(weights, i, shared_draw) for i in blocks), ())
        + tuple(weights[-2:])
    )
    return lm, lm_weights


def test_trax_signatures_and_defaults():
    common = {
        "vocab_size": inspect.Parameter.empty,
        "d_model": 512,
        "d_ff": 2048,
        "n_layers": 6,
        "n_heads": 8,
        "dropout": 0.1,
        "max_len": 2048,
        "mode": "train",
        "ff_activation": tl.Relu,
    }

    def signature(fn):
        return [(k, p.default) for k, p in inspect.signature(fn).parameters.items()]

    assert signature(ld.SkippingTransformerLM) == [*common.items(), ("skip_fraction", 0.4)]
    assert signature(ld.LayerDropTransformerLM) == [
        *common.items(),
        ("skip_fraction", 0.4),
        ("eval_skip_fraction", "every_other"),
    ]
    assert signature(ld.EveryOtherLayerDropTransformerLM) == [
        *common.items(),
        ("skip_mode", "even"),
        ("skip_fraction", 0.5),
        ("eval_skip_fraction", 0.0),
    ]


# --- Trax's cases: forward shapes (by abstract evaluation), a second stack item passing through -------


def test_skipping_transformer_forward_shape():
    model = ld.SkippingTransformerLM(16, **TRAX_TEST)
    assert [y.shape for y in model.output_signature(PAIR)] == [(1, 8, 16), (1, 8)]


def test_layerdrop_transformer_forward_shape():
    model = ld.LayerDropTransformerLM(16, **TRAX_TEST)
    assert [y.shape for y in model.output_signature(PAIR)] == [(1, 8, 16), (1, 8)]


def test_layerdrop_layerwise_skip_fraction():
    model = ld.LayerDropTransformerLM(16, skip_fraction=[0.2, 0.8], **TRAX_TEST)
    assert [y.shape for y in model.output_signature(PAIR)] == [(1, 8, 16), (1, 8)]


def test_everyother_layerdrop_transformer_forward():
    model = ld.EveryOtherLayerDropTransformerLM(16, skip_mode="1half", **TRAX_TEST)
    assert [y.shape for y in model.output_signature(PAIR)] == [(1, 8, 16), (1, 8)]


# --- Which blocks run ----------------------------------------------------------------------------


def runs(model, weights, x, i, rng=None):
    """Whether block i ran: the output changes with its weights (the draws depend on the rng alone)."""
    index = (4 if model.name == "LayerDropTransformerLM" else 6) + i  # After the embedder (and draw, Swap).
    changed = list(weights)
    changed[index] = jax.tree.map(lambda w: 1.5 * w + 0.1, weights[index])
    y, other = (model(x, weights=w, rng=rng) for w in (weights, tuple(changed)))
    return not np.allclose(y, other, atol=1e-4)


def test_eval_runs_the_blocks_trax_s_eval_settings_keep():
    x = tokens((2, 6))
    signature = ShapeDtype((2, 6), jnp.int32)
    cases = [
        # Skipping: eval draws n_layers, so every block runs.
        (ld.SkippingTransformerLM(8, n_layers=2, mode="eval", **SMALL), [True, True]),
        # LayerDrop's 'every_other' at skip_fraction 0.4: layers 0 and 2 always skipped.
        (ld.LayerDropTransformerLM(8, n_layers=3, mode="eval", **SMALL), [False, True, False]),
        # EveryOther: eval_skip_fraction 1 never runs the 'odd' ones (0, the default, runs all).
        (
            ld.EveryOtherLayerDropTransformerLM(
                8, n_layers=3, skip_mode="odd", eval_skip_fraction=1.0, mode="eval", **SMALL
            ),
            [True, False, True],
        ),
    ]
    for model, expected in cases:
        weights, _ = model.init(signature, jax.random.PRNGKey(2))
        assert [runs(model, weights, x, i) for i in range(len(expected))] == expected, model.name


def test_training_draws_decide_which_blocks_run():
    x = tokens((2, 6))
    signature = ShapeDtype((2, 6), jnp.int32)
    # One draw per call, shared by the blocks: the even block runs when u > 0.5; the odd one always.
    model = ld.EveryOtherLayerDropTransformerLM(8, n_layers=2, skip_mode="even", **SMALL)
    weights, _ = model.init(signature, jax.random.PRNGKey(3))
    rngs = [jax.random.PRNGKey(seed) for seed in range(6)]
    assert {runs(model, weights, x, 0, rng) for rng in rngs} == {True, False}
    assert all(runs(model, weights, x, 1, rng) for rng in rngs)

    # Per-layer fractions in training: 0 always runs, 1 never does, whatever the rng; a block
    # that runs is TransformerLM's.
    model = ld.LayerDropTransformerLM(8, n_layers=2, skip_fraction=[0.0, 1.0], **SMALL)
    weights, _ = model.init(signature, jax.random.PRNGKey(4))
    lm, lm_weights = transformer_lm_with(weights, [0], shared_draw=False)
    lm.init(signature)
    np.testing.assert_allclose(model(x, rng=jax.random.PRNGKey(5)), lm(x, weights=lm_weights), atol=1e-6)


def test_eval_twin_of_a_training_model_chooses_as_eval():
    x = tokens((2, 6))
    signature = ShapeDtype((2, 6), jnp.int32)
    model = ld.LayerDropTransformerLM(8, n_layers=2, skip_fraction=1.0, eval_skip_fraction=0.0, **SMALL)
    weights, _ = model.init(signature)
    built_eval = ld.LayerDropTransformerLM(
        8, n_layers=2, skip_fraction=1.0, eval_skip_fraction=0.0, mode="eval", **SMALL
    )
    built_eval.init(signature)
    twin = model.with_mode("eval")
    y = twin(x, weights=weights)  # No rng: eval decides without drawing.
    np.testing.assert_allclose(y, built_eval(x, weights=weights), atol=1e-6)
    # Training (skip_fraction 1) skips every block, unlike eval.
    assert not np.allclose(model(x, weights=weights, rng=jax.random.PRNGKey(0)), y, atol=1e-3)


def test_random_eval_needs_an_rng_and_does_not_stream():
    model = ld.LayerDropTransformerLM(8, n_layers=2, eval_skip_fraction="same", mode="eval", **SMALL)
    weights, state = model.init(ShapeDtype((2, 6), jnp.int32))
    with pytest.raises(tl.LayerError, match="needs an rng"):
        model.pure_fn(tokens((2, 6)), weights, state, None)
    assert not model.with_mode("predict").supports_step
    assert ld.LayerDropTransformerLM(8, n_layers=2, mode="predict", **SMALL).supports_step


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"n_layers \(2\) must be equal to len\(skip_fraction\) \(3\)"):
        ld.LayerDropTransformerLM(8, n_layers=2, skip_fraction=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"n_layers \(2\) must be equal to len\(eval_skip_fraction\) \(1\)"):
        ld.LayerDropTransformerLM(8, n_layers=2, eval_skip_fraction=[0.1])
    with pytest.raises(ValueError, match="skip_mode must be one of"):
        ld.EveryOtherLayerDropTransformerLM(8, n_layers=2, skip_mode="third")


def test_larger_than():
    np.testing.assert_array_equal(ld.LargerThan(0.5)(jnp.asarray([0.2, 0.5, 0.7])), [False, False, True])


# --- Streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ld.SkippingTransformerLM(8, n_layers=2, mode="eval", **SMALL),
        lambda: ld.LayerDropTransformerLM(8, n_layers=2, mode="eval", **SMALL),
        lambda: ld.EveryOtherLayerDropTransformerLM(8, n_layers=2, mode="eval", **SMALL),
    ],
    ids=["skipping", "layerdrop", "everyother"],
)
def test_stepped_one_token_at_a_time_equals_layer_wise(make):
    model = make()
    x = tokens((2, 7), seed=1)
    weights, _ = model.init(ShapeDtype((2, 7), jnp.int32), jax.random.PRNGKey(1))
    y = model(x)
    predict, state = tl.start_stream(model, ShapeDtype((2, 1), jnp.int32), weights)
    assert predict.supports_step
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    fed, outputs = shifted(x), []
    for t in range(7):
        y_t, state = step(fed[:, t : t + 1], state)
        outputs.append(y_t)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), y, atol=1e-5, rtol=1e-5)
