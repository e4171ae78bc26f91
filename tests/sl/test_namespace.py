"""trax_sl.sl: SequenceLayers' names, fields and semantics, and constants on the stack.

Values against SequenceLayers' own numbers are in test_reference.py; here
the names the SL intro notebook uses, `name=` everywhere, the semantics that
differ from Trax's layers of the same name, constants through the
combinators, and the streaming contract of the layers this package adds.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence, shapes, sl
from trax_sl.layers import contract
from trax_sl.layers.combinators import StackOp
from trax_sl.sl import test_utils as sl_test_utils
from trax_sl.sl import utils as sl_utils

# Every `sl.` name the SequenceLayers intro notebook uses.
NOTEBOOK_NAMES = [
    "Sequence",
    "SequenceLayer",
    "SequenceLayerConfig",
    "Serial",
    "Dense",
    "Conv1D",
    "DotProductSelfAttention",
    "EinsumDense",
    "LSTM",
    "DotProductAttention",
    "Flatten",
    "Delay",
    "Lookahead",
    "STFT",
    "LinearToMelSpectrogram",
    "Add",
    "Log",
    "Residual",
    "RMSNormalization",
    "ApplyRotaryPositionalEncoding",
    "DenseShaped",
    "Dropout",
    "GatedUnit",
    "AddTimingSignal",
    "Repeat",
    "LayerNormalization",
    "LocalDotProductSelfAttention",
    "Scale",
    "GatedLinearUnit",
    "DepthwiseConv1D",
    "BatchNormalization",
    "Swish",
    "ExpandDims",
    "Conv2D",
    "GroupNormalization",
    "Relu",
    "Bidirectional",
    "CombinationMode",
    "CheckpointGradient",
    "Embedding",
]

X = shapes.ShapeDtype((2, 8, 4))
SOURCE = shapes.ShapeDtype((2, 5, 6))


def test_every_name_the_notebook_uses_exists():
    assert not [name for name in NOTEBOOK_NAMES if not hasattr(sl, name)]
    assert set(sl.__all__) <= set(dir(sl))


# One builder per layer, each given SL's `name=`.
NAMED = {
    "Dense": lambda: sl.Dense(3, name="n"),
    "EinsumDense": lambda: sl.EinsumDense("...a,ab->...b", [3], name="n"),
    "DenseShaped": lambda: sl.DenseShaped([3], name="n"),
    "Embedding": lambda: sl.Embedding(dimension=3, num_embeddings=5, name="n"),
    "Conv1D": lambda: sl.Conv1D(3, 2, name="n"),
    "Conv2D": lambda: sl.Conv2D(3, 2, name="n"),
    "DepthwiseConv1D": lambda: sl.DepthwiseConv1D(2, name="n"),
    "Add": lambda: sl.Add(1.0, name="n"),
    "Scale": lambda: sl.Scale(2.0, name="n"),
    "ExpandDims": lambda: sl.ExpandDims(-1, name="n"),
    "Flatten": lambda: sl.Flatten(name="n"),
    "GatedUnit": lambda: sl.GatedUnit(None, None, name="n"),
    "GatedLinearUnit": lambda: sl.GatedLinearUnit(name="n"),
    "Dropout": lambda: sl.Dropout(0.1, name="n"),
    "Relu": lambda: sl.Relu(name="n"),
    "Swish": lambda: sl.Swish(name="n"),
    "Log": lambda: sl.Log(name="n"),
    "Delay": lambda: sl.Delay(2, name="n"),
    "Lookahead": lambda: sl.Lookahead(2, name="n"),
    "LayerNormalization": lambda: sl.LayerNormalization(name="n"),
    "RMSNormalization": lambda: sl.RMSNormalization(name="n"),
    "BatchNormalization": lambda: sl.BatchNormalization(name="n"),
    "GroupNormalization": lambda: sl.GroupNormalization(num_groups=1, name="n"),
    "STFT": lambda: sl.STFT(8, 4, 8, name="n"),
    "LinearToMelSpectrogram": lambda: sl.LinearToMelSpectrogram(4, 16000.0, 20.0, 4000.0, name="n"),
    "AddTimingSignal": lambda: sl.AddTimingSignal(name="n"),
    "ApplyRotaryPositionalEncoding": lambda: sl.ApplyRotaryPositionalEncoding(name="n"),
    "DotProductSelfAttention": lambda: sl.DotProductSelfAttention(1, 2, 3, name="n"),
    "LocalDotProductSelfAttention": lambda: sl.LocalDotProductSelfAttention(1, 2, 2, 3, name="n"),
    "DotProductAttention": lambda: sl.DotProductAttention("source", 1, 2, name="n"),
    "LSTM": lambda: sl.LSTM(3, name="n"),
    "Serial": lambda: sl.Serial([sl.Relu()], name="n"),
    "Residual": lambda: sl.Residual([sl.Relu()], name="n"),
    "Repeat": lambda: sl.Repeat(sl.Relu(), num_repeats=2, name="n"),
    "CheckpointGradient": lambda: sl.CheckpointGradient(sl.Relu(), name="n"),
    "Bidirectional": lambda: sl.Bidirectional(sl.Relu(), sl.Relu(), name="n"),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_name_is_accepted_everywhere(name):
    assert NAMED[name]().name == "n"


def test_add_and_flatten_keep_their_sequence_layers_meaning():
    x = Sequence.from_values(jnp.ones((2, 3, 2, 2)))
    assert sl.Add(jnp.asarray([1.0, 2.0])).n_in == 1 and tl.Add().n_in == 2
    np.testing.assert_array_equal(sl.Add(np.array([1.0, 2.0]))(x).values[0, 0], [[2.0, 3.0], [2.0, 3.0]])
    assert sl.Flatten()(x).shape == (2, 3, 4)  # Batch and time kept; Trax's default keeps batch only.
    assert tl.Flatten()(x.values).shape == (2, 12)


@pytest.mark.parametrize(
    ("axis", "shape"), [(-1, (2, 3, 4, 5, 1)), (0, (2, 3, 1, 4, 5)), ((0, -2), (2, 3, 1, 1, 4, 5))]
)
def test_expand_dims_counts_channel_axes(axis, shape):
    # SL's docstring maps [b, t, c, d] with axis (0, -2) to [b, t, 1, c, 1, d]; its code (0.2, the
    # original that decides) resolves -2 to channel index 1 and gives [b, t, 1, 1, c, d].
    assert sl.ExpandDims(axis)(jnp.ones((2, 3, 4, 5))).shape == shape


def test_expand_dims_refuses_batch_and_time():
    with pytest.raises(ValueError, match="channel axes"):
        sl.ExpandDims(3)(jnp.ones((2, 3, 4)))


def test_scale_broadcasts_against_channels_in_the_input_dtype():
    y = sl.Scale(np.array([2.0, 3.0]))(jnp.ones((1, 2, 2), jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32)[0], [[2.0, 3.0], [2.0, 3.0]])


def test_dropout_broadcast_dims_share_one_draw():
    layer = sl.Dropout(0.5, broadcast_dims=(1,))
    y = layer(jnp.ones((4, 6, 8)), rng=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(y, jnp.broadcast_to(y[:, :1], y.shape))  # Same along time.
    assert sl.Dropout(0.5).with_mode("eval")(jnp.ones((2, 3))).sum() == 6


def test_repeat_takes_num_repeats():
    layer = sl.Repeat(sl.Dense(4), num_repeats=3)
    weights, _ = layer.init(X)
    assert weights[0].shape == (3, 4, 4)


def test_batch_normalization_keeps_the_feature_axis():
    layer = sl.BatchNormalization(axis=-1)
    weights, state = layer.init(shapes.ShapeDtype((2, 8, 5, 3)))
    assert [w.shape for w in weights] == [(3,), (3,)]
    assert state[0].shape == (3,)


def test_lstm_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="only SequenceLayers' defaults"):
        sl.LSTM(3, activation=jax.nn.relu)


def test_einsum_dense_checks_its_equation():
    with pytest.raises(ValueError, match="form"):
        sl.EinsumDense("ab,bc->ac", [3])
    with pytest.raises(ValueError, match="bias axis"):
        sl.EinsumDense("...a,ab->...b", [3], bias_axes="a")


def test_combination_modes():
    a, b = jnp.ones((2, 3, 4)), 2 * jnp.ones((2, 3, 4))
    combine = sl.combinators.combine
    assert combine(sl.CombinationMode.STACK, a, b).shape == (2, 3, 2, 4)
    assert combine(sl.CombinationMode.CONCAT, a, b).shape == (2, 3, 8)
    np.testing.assert_array_equal(combine(sl.CombinationMode.ADD, a, b), 3 * a)
    np.testing.assert_array_equal(combine(sl.CombinationMode.MEAN, a, b), 1.5 * a)
    np.testing.assert_array_equal(combine(sl.CombinationMode.PRODUCT, a, b), b)
    # SL's broadcasting: a missing channel axis is a leading one.
    assert combine(sl.CombinationMode.STACK, jnp.ones((2, 3, 5)), jnp.ones((2, 3, 4, 5))).shape == (
        2,
        3,
        2,
        4,
        5,
    )


def test_random_sequence_is_masked_with_lengths_in_range():
    np.random.seed(0)
    x = sl_test_utils.random_sequence(3, 6, 2, low_length=2, high_length=4)
    lengths = np.asarray(x.lengths())
    assert np.all((lengths >= 2) & (lengths < 4))
    assert np.all(np.asarray(x.values)[~np.asarray(x.mask)] == 0)
    assert np.asarray(sl_test_utils.random_sequence(2, 5, random_lengths=False).mask).all()


# --- The streaming contract of the layers this package adds --------------------------------------


def _with_source(model):
    """`x source` -> model on `x {'source': source}`: verify_contract feeds stack items, not dicts."""
    return tl.Serial(tl.Parallel(None, StackOp(lambda s: {"source": s}, name="AsConstants")), model)


CONTRACT = {
    "Conv1D": (lambda m: sl.Conv1D(4, 3, strides=2, padding="causal", groups=2, mode=m), X, {}),
    "Conv1D_reverse_causal": (lambda m: sl.Conv1D(3, 3, padding="reverse_causal", mode=m), X, {}),
    "EinsumDense": (lambda m: sl.EinsumDense("...a,ab->...b", [3], bias_axes="b"), X, {}),
    "DenseShaped": (lambda m: sl.DenseShaped([2, 3]), X, {}),
    "GatedUnit": (lambda m: sl.GatedUnit(jax.nn.gelu, None), X, {}),
    "LayerNormalization_no_bias": (lambda m: sl.LayerNormalization(use_bias=False), X, {}),
    "cross attention after a lookahead convolution": (
        lambda m: _with_source(
            sl.Serial(
                [
                    sl.Conv1D(4, 3, padding="reverse_causal", mode=m),
                    sl.DotProductAttention("source", 2, 3, mode=m),
                    sl.Flatten(),
                ]
            )
        ),
        (X, SOURCE),
        {"streamed": (True, False)},
    ),
    "repeated residual cross attention": (
        lambda m: _with_source(
            sl.Repeat(
                sl.Residual(
                    [sl.DotProductAttention("source", 2, 2, mode=m), sl.Flatten()],
                    shortcut_layers=[sl.Conv1D(4, 3, padding="causal", mode=m)],
                ),
                num_repeats=2,
            )
        ),
        (X, SOURCE),
        {"streamed": (True, False)},
    ),
}


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_streaming_contract(name):
    layer_fn, signature, kwargs = CONTRACT[name]
    contract.verify_contract(layer_fn, signature, **kwargs)


# --- Constants ------------------------------------------------------------------------------------


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = Sequence.from_lengths(jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32), jnp.asarray([6, 4]))
    source = Sequence.from_lengths(
        jnp.asarray(rng.standard_normal((2, 5, 3)), jnp.float32), jnp.asarray([5, 2])
    )
    return x, {"source": source}


def test_a_layer_reading_constants_takes_them_under_its_input():
    layer = sl.DotProductAttention("source", num_heads=2, units_per_head=3)
    assert (layer.n_in, layer.n_out, layer.constant_names) == (2, 1, ("source",))
    x, constants = _inputs()
    layer.init((x, constants))
    y = layer((x, constants))
    assert y.shape == (2, 6, 2, 3)
    np.testing.assert_array_equal(y.mask, x.mask)


def test_invalid_source_steps_are_never_attended():
    layer = sl.DotProductAttention("source", num_heads=1, units_per_head=2)
    x, constants = _inputs()
    layer.init((x, constants))
    source = constants["source"]
    garbage = Sequence(jnp.where(source.mask[:, :, None], source.values, 1e3), source.mask)
    np.testing.assert_allclose(
        layer((x, {"source": garbage})).mask_invalid().values, layer((x, constants)).mask_invalid().values
    )


def test_combinators_pass_constants_to_every_layer_that_reads_them():
    model = sl.Serial(
        [
            sl.DotProductAttention("source", 1, 4, name="first"),
            sl.Flatten(),
            sl.Residual([sl.DotProductAttention("source", 1, 4, name="second"), sl.Flatten()]),
            sl.Dense(2),
        ]
    )
    assert isinstance(model, sl.SerialWithConstants)
    assert (model.n_in, model.n_out, model.constant_names) == (2, 1, ("source",))
    x, constants = _inputs()
    model.init((x, constants))
    assert model((x, constants)).shape == (2, 6, 2)
    # Without constants the same combinators are trax_sl's own, one input.
    plain = sl.Serial([sl.Dense(2), sl.Residual([sl.Dense(2)])])
    assert isinstance(plain, tl.Serial) and plain.n_in == 1 and not sl.common.takes_constants(plain)


def test_constants_may_hold_more_names_than_a_layer_reads():
    layer = sl.DotProductAttention("source", 1, 2)
    x, constants = _inputs()
    more = {"other": jnp.ones((2, 3)), **constants}
    layer.init((x, more))
    np.testing.assert_allclose(layer((x, more)).values, layer((x, constants)).values)


def test_missing_constants_say_what_is_expected():
    layer = sl.DotProductAttention("source", 1, 2)
    x, constants = _inputs()
    layer.init((x, constants))
    with pytest.raises(ValueError, match="expected 'source' in the constants"):
        layer.pure_fn((x, {"memory": constants["source"]}), layer.weights, layer.state, None)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        layer(x)


def test_cross_attention_streams_with_the_source_keys_cached():
    layer = sl.DotProductAttention("source", num_heads=2, units_per_head=3).with_mode("eval")
    x, constants = _inputs()
    layer.init((x, constants))
    y = layer((x, constants))
    predict, state = tl.start_stream(layer, (x[:, :1], constants), layer.weights)
    step = jax.jit(predict.pure_fn)
    ys = []
    for t in range(x.shape[1]):
        # After the first step the keys come from the state: another source changes nothing.
        source = constants if t == 0 else {"source": constants["source"].apply_values(jnp.zeros_like)}
        y_t, state = step((x[:, t : t + 1], source), layer.weights, state, None)
        ys.append(y_t)
    stepped = Sequence.concatenate_sequences(ys)
    np.testing.assert_allclose(stepped.mask_invalid().values, y.mask_invalid().values, atol=1e-5)
    stored, keys, _, key_mask = state[-1]
    assert stored.shape == (2,) and bool(stored.all()) and keys.shape == (2, 5, 2, 3)
    np.testing.assert_array_equal(key_mask, constants["source"].mask)


def test_step_by_step_dynamic_pads_to_whole_blocks():
    layer = sl.Serial(
        [sl.Conv1D(2, 4, strides=2, padding="causal"), sl.Conv1D(2, 2, strides=2, padding="causal")]
    )
    x = Sequence.from_values(jnp.ones((2, 10, 3)))
    layer.init(x)
    y, _, emits = sl_utils.step_by_step_dynamic(layer, x)
    assert emits == () and y.shape == (2, 3, 2)  # 10 steps padded to 12, in blocks of 4.
    np.testing.assert_allclose(y[:, :2].values, layer(x)[:, :2].values, atol=1e-6)


def test_pprint_tree_shapes_types(capsys):
    sl_utils.pprint_tree_shapes_types({"source": Sequence.from_values(jnp.ones((2, 3, 4)))})
    assert "f32[2,3,4]" in capsys.readouterr().out
