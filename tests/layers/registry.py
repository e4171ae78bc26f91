"""One registry of every exported layer: a small constructor and input signature each.

`test_registry.py` runs `verify_contract` over the streamable entries, checks
that the others declare `supports_step = False` and refuse predict mode, and
fails when an exported layer is missing here.

Streamable entries may also declare their option space (`Entry.space`): a
Hypothesis strategy of constructor keywords, how to build the layer from
(mode, options) and its input signature from the options.
`test_contract_fuzz.py` draws from these spaces, alone and composed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import trax_sl.layers as tl
from trax_sl.shapes import ShapeDtype

F32 = np.float32
BF16 = jnp.bfloat16
I32 = np.int32
BOOL = np.bool_
X = ShapeDtype((2, 8, 4))  # [batch, time, depth]
IDS = ShapeDtype((2, 8), np.int32)


def ranked_signature(options, batch, time, depth, dtype):
    """`[batch, time, depth]`, or the rank `options['rank']` asks for: 2 drops depth, 4 adds a space axis of 3."""
    rank = options.get("rank", 3)
    middle = (3,) * (rank - 3)
    return ShapeDtype((batch, time) + middle + (depth,)[: rank - 2], dtype)


@dataclasses.dataclass(frozen=True)
class Space:
    """A layer's option space, for the fuzzer.

    options: a strategy of constructor-keyword dicts, each a configuration that
      streams (keys starting with '_' or named 'rank' are for `signature` only).
    build: `(mode, options) -> layer`.
    signature: `(options, batch, time, depth, dtype) -> input signature`;
      time is a multiple of the layer's block_size.
    dtypes: input dtypes the layer takes (the first is the usual one).
    depths: input depths the layer takes.
    contract: `options -> extra verify_contract arguments`.
    composes: whether compositions may use it on `[batch, time, depth]` floats.
    """

    options: st.SearchStrategy
    build: Callable[[str, dict], tl.Layer]
    signature: Callable = ranked_signature
    dtypes: tuple = (F32,)
    depths: tuple = (1, 2, 3, 4, 6, 8)
    contract: Callable[[dict], dict] = lambda options: {}
    composes: bool = True


def _kwargs(options: dict) -> dict:
    return {k: v for k, v in options.items() if not k.startswith("_") and k != "rank"}


def built(constructor) -> Callable[[str, dict], tl.Layer]:
    """`(mode, options) -> constructor(**options, mode=mode)`."""
    return lambda mode, options: constructor(**_kwargs(options), mode=mode)


def built_without_mode(constructor) -> Callable[[str, dict], tl.Layer]:
    return lambda mode, options: constructor(**_kwargs(options))


@dataclasses.dataclass
class Entry:
    build: Callable[[str], tl.Layer]  # mode -> layer
    signature: object
    streams: bool | None = True  # None: no time axis (cells), predict mode must equal eval
    contract: dict = dataclasses.field(default_factory=dict)  # extra verify_contract arguments
    space: Space | None = None  # option space for test_contract_fuzz.py


# --- Option spaces -------------------------------------------------------------------
#
# Each strategy draws only configurations that stream, by the rules the layers
# document (not by asking the layer): a test that asserts supports_step then
# catches a layer that wrongly refuses to stream.

# Every padding a convolution or pooling takes by name ('SAME'/'VALID' are Trax's, lax's rules).
TRAX_PADDINGS = (
    "causal",
    "reverse_causal",
    "semicausal",
    "same",
    "SAME",
    "causal_valid",
    "reverse_causal_valid",
    "VALID",
)
# SequenceLayers' layers (DepthwiseConv1D, Conv2D, Frame): lower case; 'same' is SequenceLayers'.
SL_PADDINGS = (
    "causal",
    "reverse_causal",
    "semicausal",
    "same",
    "causal_valid",
    "reverse_causal_valid",
    "valid",
)


@st.composite
def time_window(draw, paddings=TRAX_PADDINGS, max_size=4, max_stride=3, max_dilation=2):
    """(size, stride, dilation, padding) of a window along time that streams.

    Every padding streams but 'valid', which streams only when windows do not
    overlap: (size - 1) * dilation + 1 <= stride.
    """
    padding = draw(st.sampled_from(paddings))
    stride = draw(st.integers(1, max_stride))
    dilation = draw(st.integers(1, max_dilation))
    largest = (stride - 1) // dilation + 1 if padding.lower() == "valid" else max_size
    return draw(st.integers(1, largest)), stride, dilation, padding


@st.composite
def conv1d_options(draw):
    size, stride, dilation, padding = draw(time_window())
    return {
        "filters": draw(st.integers(1, 4)),
        "kernel_size": size,
        "stride": stride,
        "dilation_rate": dilation,
        "padding": padding,
        "use_bias": draw(st.booleans()),
    }


@st.composite
def conv_options(draw):
    size, stride, dilation, padding = draw(time_window())
    return {
        "filters": draw(st.integers(1, 4)),
        "kernel_size": (size, draw(st.integers(1, 3))),
        "strides": (stride, draw(st.integers(1, 2))),
        "dilation_rate": (dilation, 1),
        "padding": (padding, draw(st.sampled_from(("SAME", "VALID", "causal")))),
        "use_bias": draw(st.booleans()),
        "rank": 4,
    }


@st.composite
def depthwise_conv1d_options(draw):
    size, stride, dilation, padding = draw(time_window(SL_PADDINGS + ("SAME",)))
    return {
        "kernel_size": size,
        "strides": stride,
        "dilation_rate": dilation,
        "padding": padding,
        "depth_multiplier": draw(st.integers(1, 2)),
        "use_bias": draw(st.booleans()),
        "activation": draw(st.sampled_from((None, jax.nn.relu))),
    }


@st.composite
def conv2d_options(draw):
    size, stride, dilation, padding = draw(time_window(SL_PADDINGS))
    groups = draw(st.sampled_from((1, 2)))
    return {
        "filters": groups * draw(st.integers(1, 2)),
        "kernel_size": (size, draw(st.integers(1, 3))),
        "strides": (stride, draw(st.integers(1, 2))),
        "dilation_rate": (dilation, draw(st.integers(1, 2))),
        "time_padding": padding,
        "spatial_padding": draw(st.sampled_from(("same", "valid", "causal", "reverse_causal", (1, 0)))),
        "groups": groups,
        "use_bias": draw(st.booleans()),
        "rank": 4,
    }


@st.composite
def pool_options(draw, paddings=TRAX_PADDINGS):
    size, stride, _, padding = draw(time_window(paddings, max_dilation=1))
    rank = draw(st.sampled_from((3, 4)))
    if rank == 3:
        return {"pool_size": (size,), "strides": (stride,), "padding": padding, "rank": 3}
    return {
        "pool_size": (size, draw(st.integers(1, 2))),
        "strides": (stride, draw(st.integers(1, 2))),
        "padding": (padding, draw(st.sampled_from(("SAME", "VALID")))),
        "rank": 4,
    }


@st.composite
def framing(draw, max_length=5, max_step=3):
    """(frame_length, frame_step, padding) of framing that streams (Frame, STFT)."""
    length = draw(st.integers(1, max_length))
    step = draw(st.integers(1, max_step))
    paddings = [p for p in SL_PADDINGS if p != "valid" or length <= step]
    past = draw(st.integers(0, length - 1))
    padding = draw(st.sampled_from(paddings + [(past, length - 1 - past)]))
    return length, step, padding


@st.composite
def frame_options(draw):
    length, step, padding = draw(framing())
    return {
        "frame_length": length,
        "frame_step": step,
        "padding": padding,
        "rank": draw(st.sampled_from((2, 3))),
    }


@st.composite
def stft_options(draw):
    length, step, padding = draw(framing(max_length=6))
    return {
        "frame_length": length,
        "frame_step": step,
        "fft_length": draw(st.integers(max(1, length - 2), 8)),
        "window_fn": draw(st.sampled_from((tl.dsp.hann_window, None))),
        "time_padding": padding,
        "fft_padding": draw(st.sampled_from(("right", "center"))),
        "output_magnitude": draw(st.booleans()),
        "rank": draw(st.sampled_from((2, 3))),
    }


@st.composite
def self_attention_options(draw, local: bool = False):
    """DotProductSelfAttention's (or, `local`, LocalDotProductSelfAttention's) keywords that stream."""
    num_kv_heads = draw(st.sampled_from((1, 2)))
    options = {
        "num_heads": num_kv_heads * draw(st.sampled_from((1, 2))),
        "num_kv_heads": draw(st.sampled_from((None, num_kv_heads))),
        "units_per_head": draw(st.sampled_from((2, 4))),  # Even: RoPE networks rotate halves.
        "use_bias": draw(st.booleans()),
        "attention_logits_soft_cap": draw(st.sampled_from((None, 5.0))),
        "zero_fully_masked": draw(st.booleans()),
        "_query_rope": draw(st.booleans()),
        "_key_rope": draw(st.booleans()),
        "_value_relu": draw(st.booleans()),
    }
    if options["num_kv_heads"] is None:
        options["num_heads"] = num_kv_heads
    if local:
        options["block_size"] = draw(st.integers(1, 4))
        options["max_past_horizon"] = draw(st.integers(1, 4))
        options["max_future_horizon"] = draw(st.integers(0, 2))
        return options
    past = draw(st.integers(-1, 4))
    future = draw(st.integers(0 if past else 1, 2))
    options.update(max_past_horizon=past, max_future_horizon=future)
    if past == -1:
        # At least every valid step of a 16-step test input: no output is invalidated.
        options["cache_size"] = draw(st.integers(16, 20))
    return options


def build_self_attention(constructor) -> Callable[[str, dict], tl.Layer]:
    def build(mode, options):
        return constructor(
            **_kwargs(options),
            query_network=tl.ApplyRotaryPositionalEncoding(mode=mode) if options["_query_rope"] else None,
            key_network=tl.ApplyRotaryPositionalEncoding(mode=mode) if options["_key_rope"] else None,
            value_network=tl.Relu() if options["_value_relu"] else None,
            mode=mode,
        )

    return build


def fixed(**options) -> st.SearchStrategy:
    """A space with one point (layers without options)."""
    return st.just(options)


SPACES_OF_ACTIVATIONS = {
    "ParametricRelu": st.fixed_dictionaries({"a": st.sampled_from((1.0, 0.5, 2.0))}),
    "LeakyRelu": st.fixed_dictionaries({"a": st.sampled_from((0.01, 0.3))}),
    "Elu": st.fixed_dictionaries({"a": st.sampled_from((1.0, 0.5))}),
}


def _dense(mode):
    return tl.Dense(4)


REGISTRY: dict[str, Entry] = {
    # --- combinators ---
    "Serial": Entry(lambda mode: tl.Serial(tl.Dense(4), tl.Relu(), tl.Delay(1, mode=mode)), X),
    "Parallel": Entry(lambda mode: tl.Parallel(tl.Dense(3), None, tl.Lookahead(1, mode=mode)), (X, X, X)),
    "Branch": Entry(
        lambda mode: tl.Serial(
            tl.Branch(tl.Dense(4), tl.Lookahead(2, preserve_length_in_layer=True, mode=mode)), tl.Add()
        ),
        X,
    ),
    "Residual": Entry(lambda mode: tl.Residual(tl.Dense(4), shortcut=tl.Dense(4)), X),
    "Select": Entry(lambda mode: tl.Select([1, 0, 1]), (X, X)),
    "Drop": Entry(lambda mode: tl.Serial(tl.Drop(), tl.Dense(2)), (X, X)),
    "Dup": Entry(lambda mode: tl.Dup(), X),
    "Swap": Entry(lambda mode: tl.Swap(), (X, X)),
    "Add": Entry(lambda mode: tl.Add(), (X, X)),
    "SubtractTop": Entry(lambda mode: tl.SubtractTop(), (X, X)),
    "Multiply": Entry(lambda mode: tl.Multiply(), (X, X)),
    "Gate": Entry(lambda mode: tl.Gate(), (X, X, X)),
    "Concatenate": Entry(lambda mode: tl.Concatenate(3), (X, X, X)),
    "Split": Entry(lambda mode: tl.Split(2), X),
    "FlattenList": Entry(lambda mode: tl.FlattenList(), X),
    "SerialWithSideOutputs": Entry(
        lambda mode: tl.SerialWithSideOutputs([tl.Dup(), tl.Branch(tl.Dense(4), tl.Dense(2))]), X
    ),
    # Over time with a carry it streams, as Trax's predict-mode Scan (TimeScan); over other axes not.
    "Scan": Entry(
        lambda mode: tl.Scan(tl.Fn("Add", lambda x, c: (x + c, x + c), n_out=2), axis=1, mode=mode),
        (X, ShapeDtype((2, 4))),
        contract={"streamed": (True, False)},
    ),
    "Cond": Entry(
        lambda mode: tl.Cond(tl.Fn("Positive", lambda x: jnp.sum(x) > 0), tl.Dense(4)),
        (ShapeDtype((2,)), X),
        streams=False,
    ),
    "Chunk": Entry(lambda mode: tl.Chunk(tl.Dense(4), chunk_size=1), X, streams=False),
    "Cache": Entry(lambda mode: tl.Cache(tl.Dense(4)), X, streams=False),
    "BatchLeadingAxes": Entry(lambda mode: tl.BatchLeadingAxes(tl.Dense(4)), X, streams=False),
    "Bidirectional": Entry(lambda mode: tl.Bidirectional(tl.Dense(3)), X, streams=False),
    "Fn": Entry(lambda mode: tl.Fn("Square", lambda x: x * x), X),
    "PureLayer": Entry(lambda mode: tl.PureLayer(lambda x: 2.0 * x), X),
    # --- core ---
    "Dense": Entry(
        _dense,
        X,
        space=Space(
            st.fixed_dictionaries({"n_units": st.integers(1, 8), "use_bias": st.booleans()}),
            built_without_mode(tl.Dense),
            dtypes=(F32, BF16),
        ),
    ),
    "Embedding": Entry(
        lambda mode: tl.Embedding(8, 3),
        IDS,
        space=Space(
            st.fixed_dictionaries({"vocab_size": st.integers(1, 10), "d_feature": st.integers(1, 6)}),
            built_without_mode(tl.Embedding),
            signature=lambda options, batch, time, depth, dtype: ShapeDtype((batch, time), dtype),
            dtypes=(I32,),
            # Ids past the vocabulary too: they clip to its last entry.
            contract=lambda options: {"int_maxval": options["vocab_size"] + 2},
            composes=False,
        ),
    ),
    "Dropout": Entry(
        lambda mode: tl.Dropout(0.5, mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries(
                {
                    "rate": st.sampled_from((0.0, 0.5, 0.9)),
                    "shared_axes": st.sampled_from((None, (1,), (-1,))),
                }
            ),
            built(tl.Dropout),
            dtypes=(F32, BF16),
        ),
    ),
    "Weights": Entry(
        lambda mode: tl.Serial(tl.Weights(tl.RandomNormalInitializer(), shape=(1, 1, 4)), tl.Add()), X
    ),
    "RandomUniform": Entry(lambda mode: tl.RandomUniform(shape=(3,)), (), streams=False),
    "LocallyConnected1d": Entry(lambda mode: tl.LocallyConnected1d(3, 3, padding="SAME"), X, streams=False),
    "PrintShape": Entry(lambda mode: tl.PrintShape(), X),
    # The time letter 't' binds per block in predict mode: blocks of 1, 2, 3 steps must all pass.
    "AssertShape": Entry(lambda mode: tl.AssertShape("bt..."), X),
    "AssertFunction": Entry(lambda mode: tl.AssertFunction("btd->btf", tl.Dense(3)), X),
    "SummaryScalar": Entry(lambda mode: tl.SummaryScalar("x"), X),
    "SummaryImage": Entry(lambda mode: tl.SummaryImage("x", 1), X, streams=False),
    "Flatten": Entry(lambda mode: tl.Flatten(n_axes_to_keep=2), ShapeDtype((2, 8, 2, 2))),
    "LogSoftmax": Entry(lambda mode: tl.LogSoftmax(), X),
    "LogSumExp": Entry(lambda mode: tl.LogSumExp(), X),
    "Softmax": Entry(lambda mode: tl.Softmax(), X),
    "ToFloat": Entry(lambda mode: tl.ToFloat(), IDS),
    "Mean": Entry(lambda mode: tl.Mean(), X),
    "Min": Entry(lambda mode: tl.Min(), X),
    "Max": Entry(lambda mode: tl.Max(), X),
    "Sum": Entry(lambda mode: tl.Sum(axis=-1), X),
    "ThresholdToBinary": Entry(lambda mode: tl.ThresholdToBinary(), X, contract={"check_gradients": False}),
    "ArgMax": Entry(lambda mode: tl.ArgMax(), X, contract={"check_gradients": False}),
    "Negate": Entry(lambda mode: tl.Negate(), X),
    "StopGradient": Entry(lambda mode: tl.StopGradient(), X),
    # --- activation_fns ---
    **{
        name: Entry(
            lambda mode, name=name: getattr(tl, name)(),
            X,
            space=Space(
                SPACES_OF_ACTIVATIONS.get(name, fixed()),
                built_without_mode(getattr(tl, name)),
                dtypes=(F32, BF16),
                depths=(2, 4, 6) if name == "Glu" else (1, 2, 3, 4, 6, 8),
                # Repeated in a residual, x + exp(x) overflows: a composition would only find float32's end.
                composes=name != "Exp",
            ),
        )
        for name in (
            "Relu",
            "ParametricRelu",
            "LeakyRelu",
            "Elu",
            "Selu",
            "Gelu",
            "FastGelu",
            "Sigmoid",
            "Tanh",
            "HardSigmoid",
            "HardTanh",
            "Softplus",
            "Exp",
            "Swish",
            "Glu",
        )
    },
    "Log": Entry(lambda mode: tl.Serial(tl.Exp(), tl.Log()), X),
    "ThresholdedLinearUnit": Entry(lambda mode: tl.ThresholdedLinearUnit(), X),
    # --- SequenceLayers-named and streaming layers ---
    "Delay": Entry(
        lambda mode: tl.Delay(2, mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries({"length": st.integers(0, 4), "delay_layer_output": st.booleans()}),
            built(tl.Delay),
            dtypes=(F32, BF16, I32, BOOL),
        ),
    ),
    "Lookahead": Entry(
        lambda mode: tl.Lookahead(2, mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries({"length": st.integers(0, 4), "preserve_length_in_layer": st.booleans()}),
            built(tl.Lookahead),
            dtypes=(F32, BF16, I32, BOOL),
        ),
    ),
    "Repeat": Entry(
        lambda mode: tl.Repeat(tl.Residual(tl.Dense(4), tl.Delay(1, delay_layer_output=False, mode=mode)), 3),
        X,
    ),
    "CheckpointGradient": Entry(lambda mode: tl.CheckpointGradient(tl.Serial(tl.Dense(4), tl.Tanh())), X),
    # bfloat16 compute: layer-wise and step-wise agree to bfloat16's precision (8 bits of mantissa).
    "WithPolicy": Entry(
        lambda mode: tl.WithPolicy(
            tl.Serial(tl.Dense(4), tl.CausalAttention(4, n_heads=2, max_inference_length=8, mode=mode)),
            "bfloat16",
        ),
        X,
        contract={"atol": 3e-2, "rtol": 3e-2},
    ),
    "GatedLinearUnit": Entry(lambda mode: tl.GatedLinearUnit(), X),
    "LayerNorm": Entry(
        lambda mode: tl.LayerNorm(),
        X,
        space=Space(
            st.fixed_dictionaries(
                {
                    "center": st.booleans(),
                    "epsilon": st.sampled_from((1e-6, 1e-2)),
                    "rank": st.sampled_from((3, 4)),
                }
            ),
            built_without_mode(tl.LayerNorm),
            dtypes=(F32, BF16),
        ),
    ),
    "RMSNorm": Entry(
        lambda mode: tl.RMSNorm(),
        X,
        space=Space(
            st.sampled_from((3, 4)).flatmap(
                lambda rank: st.fixed_dictionaries(
                    {
                        "axis": st.sampled_from((-1, (-2, -1)) if rank == 4 else (-1,)),
                        "epsilon": st.sampled_from((1e-6, 1e-2)),
                        "use_scale": st.booleans(),
                        "reductions_in_at_least_fp32": st.booleans(),
                        "rank": st.just(rank),
                    }
                )
            ),
            built_without_mode(tl.RMSNorm),
            dtypes=(F32, BF16),
        ),
    ),
    "BatchNorm": Entry(
        lambda mode: tl.BatchNorm(axis=(0, 1), mode=mode),
        X,
        space=Space(
            st.sampled_from((3, 4)).flatmap(
                lambda rank: st.fixed_dictionaries(
                    {
                        "axis": st.sampled_from(((0, 1), (0, 1, 2)) if rank == 4 else ((0, 1),)),
                        "epsilon": st.sampled_from((1e-5, 1e-2)),
                        "center": st.booleans(),
                        "scale": st.booleans(),
                        "rank": st.just(rank),
                    }
                )
            ),
            built(tl.BatchNorm),
            dtypes=(F32, BF16),
        ),
    ),
    "FilterResponseNorm": Entry(lambda mode: tl.FilterResponseNorm(mode=mode), X, streams=False),
    "GroupNorm": Entry(
        lambda mode: tl.GroupNorm(2, cumulative=True, mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries(
                {
                    "num_groups": st.sampled_from((1, 2)),
                    "cumulative": st.just(True),
                    "epsilon": st.sampled_from((1e-6, 1e-2)),
                    "use_bias": st.booleans(),
                    "use_scale": st.booleans(),
                    "rank": st.sampled_from((3, 4)),
                }
            ),
            built(tl.GroupNorm),
            dtypes=(F32, BF16),
            depths=(2, 4, 6, 8),
        ),
    ),
    "PositionalEncoding": Entry(lambda mode: tl.PositionalEncoding(max_len=64, mode=mode), X),
    "AddTimingSignal": Entry(
        lambda mode: tl.AddTimingSignal(mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries(
                {
                    "min_timescale": st.sampled_from((1.0, 2.0)),
                    "max_timescale": st.sampled_from((1.0e4, 10.0)),
                    "trainable_scale": st.booleans(),
                    "axes": st.sampled_from((None, -1)),
                    "only_advance_position_for_valid_timesteps": st.booleans(),
                    "rank": st.sampled_from((3, 4)),
                }
            ),
            built(tl.AddTimingSignal),
            dtypes=(F32, BF16),
        ),
    ),
    "ApplyRotaryPositionalEncoding": Entry(
        lambda mode: tl.ApplyRotaryPositionalEncoding(mode=mode),
        X,
        space=Space(
            st.fixed_dictionaries(
                {
                    "max_wavelength": st.sampled_from((1.0e4, 10.0)),
                    "only_advance_position_for_valid_timesteps": st.booleans(),
                    "rank": st.sampled_from((3, 4)),
                }
            ),
            built(tl.ApplyRotaryPositionalEncoding),
            dtypes=(F32, BF16),
            depths=(2, 4, 6, 8),
        ),
    ),
    "Frame": Entry(
        lambda mode: tl.Frame(4, 2, mode=mode),
        ShapeDtype((2, 16)),
        space=Space(frame_options(), built(tl.Frame), dtypes=(F32, BF16, I32)),
    ),
    "STFT": Entry(
        lambda mode: tl.STFT(8, 4, 8, output_magnitude=True, mode=mode),
        ShapeDtype((2, 16)),
        # Complex spectra (output_magnitude=False) would turn a composition complex.
        space=Space(stft_options(), built(tl.STFT), composes=False),
    ),
    "InverseSTFT": Entry(
        lambda mode: tl.InverseSTFT(8, 4, 8, mode=mode),
        ShapeDtype((2, 4, 5), np.complex64),
        contract={"check_gradients": False},
    ),
    "LinearToMelSpectrogram": Entry(lambda mode: tl.LinearToMelSpectrogram(4, 8000.0, 100.0, 3000.0), X),
    "LogMelFrontend": Entry(
        lambda mode: tl.LogMelFrontend(
            sample_rate=8000.0,
            frame_length=8,
            frame_step=4,
            fft_length=8,
            num_mel_bins=4,
            lower_edge_hertz=100.0,
            upper_edge_hertz=3000.0,
            mode=mode,
        ),
        ShapeDtype((2, 16)),
    ),
}

W = ShapeDtype((2, 8))
IMAGE = ShapeDtype((2, 8, 5, 4))  # [batch, time, space, channels]
REGISTRY.update(
    {
        # --- convolution and pooling ---
        "Conv1d": Entry(
            lambda mode: tl.Conv1d(4, 3, stride=2, padding="causal", mode=mode),
            X,
            space=Space(conv1d_options(), built(tl.Conv1d), dtypes=(F32, BF16)),
        ),
        "Conv": Entry(
            lambda mode: tl.Conv(2, (3, 3), padding=("causal", "SAME"), mode=mode),
            IMAGE,
            space=Space(conv_options(), built(tl.Conv), dtypes=(F32, BF16), composes=False),  # Rank 4 only.
        ),
        "CausalConv": Entry(
            lambda mode: tl.CausalConv(3, kernel_width=3, mode=mode),
            X,
            space=Space(
                st.fixed_dictionaries(
                    {
                        "filters": st.integers(1, 4),
                        "kernel_width": st.integers(1, 4),
                        "use_bias": st.booleans(),
                    }
                ),
                built(tl.CausalConv),
                dtypes=(F32, BF16),
            ),
        ),
        "CausalDepthwiseConv": Entry(
            lambda mode: tl.CausalDepthwiseConv(3, mode=mode),
            X,
            space=Space(
                st.fixed_dictionaries({"kernel_size": st.integers(1, 4)}),
                built(tl.CausalDepthwiseConv),
                dtypes=(F32, BF16),
            ),
        ),
        "DepthwiseConv1D": Entry(
            lambda mode: tl.DepthwiseConv1D(3, padding="reverse_causal", mode=mode),
            X,
            space=Space(depthwise_conv1d_options(), built(tl.DepthwiseConv1D), dtypes=(F32, BF16)),
        ),
        "Conv2D": Entry(
            lambda mode: tl.Conv2D(3, 3, strides=2, time_padding="causal", mode=mode),
            IMAGE,
            space=Space(
                conv2d_options(), built(tl.Conv2D), dtypes=(F32, BF16), depths=(2, 4, 6, 8), composes=False
            ),
        ),
        **{
            name: Entry(
                build,
                X,
                space=Space(
                    # AvgPool documents that 'causal_valid' does not stream (padding valid, not averaged).
                    pool_options(tuple(p for p in TRAX_PADDINGS if name != "AvgPool" or p != "causal_valid")),
                    built(getattr(tl, name)),
                    dtypes=(F32, BF16) if name == "AvgPool" else (F32, BF16, I32),
                ),
            )
            for name, build in (
                ("MaxPool", lambda mode: tl.MaxPool((2,), (2,), mode=mode)),
                ("AvgPool", lambda mode: tl.AvgPool((2,), (2,), padding="causal", mode=mode)),
                ("SumPool", lambda mode: tl.SumPool((2,), (1,), padding="causal", mode=mode)),
            )
        },
    }
)
REGISTRY.update(
    {
        # --- rnn ---
        "LSTM": Entry(
            lambda mode: tl.LSTM(3, mode=mode),
            X,
            space=Space(
                st.fixed_dictionaries({"n_units": st.integers(1, 5), "return_state": st.booleans()}),
                built(tl.LSTM),
                dtypes=(F32, BF16),
            ),
        ),
        "GRU": Entry(
            lambda mode: tl.GRU(3, mode=mode),
            X,
            space=Space(
                st.fixed_dictionaries({"n_units": st.integers(1, 5)}), built(tl.GRU), dtypes=(F32, BF16)
            ),
        ),
        "SRU": Entry(lambda mode: tl.SRU(4, mode=mode), X),
        "ScanSRUCell": Entry(
            lambda mode: tl.ScanSRUCell(mode),
            (X, X, ShapeDtype((2, 4))),
            contract={"streamed": (True, True, False)},
        ),
        "GeneralGRUCell": Entry(lambda mode: tl.GeneralGRUCell(lambda: tl.Dense(4), dropout_rate_c=0.0), X),
        # Its convolutions delay one copy of the state but not the other: not streamable.
        "ConvGRUCell": Entry(lambda mode: tl.ConvGRUCell(4), ShapeDtype((2, 8, 5, 4)), streams=False),
        # Cells: one step, no time axis; predict mode must compute what eval does.
        "LSTMCell": Entry(
            lambda mode: tl.LSTMCell(3), (ShapeDtype((2, 4)), ShapeDtype((2, 6))), streams=None
        ),
        "GRUCell": Entry(lambda mode: tl.GRUCell(3), (ShapeDtype((2, 4)), ShapeDtype((2, 3))), streams=None),
        "InnerSRUCell": Entry(lambda mode: tl.InnerSRUCell(), (W, W, W), streams=None),
        "MakeZeroState": Entry(lambda mode: tl.MakeZeroState(), X, streams=None),
        # --- metrics (reductions over the batch and time: not streamable) ---
        **{
            name: Entry(lambda mode, name=name: getattr(tl, name)(), (X, IDS), streams=False)
            for name in ("CategoryAccuracy", "CategoryCrossEntropy", "MacroAveragedFScore", "WeightedFScore")
        },
        **{
            name: Entry(lambda mode, name=name: getattr(tl, name)(), (X, IDS, W), streams=False)
            for name in (
                "WeightedCategoryAccuracy",
                "WeightedCategoryCrossEntropy",
                "Accuracy",
                "SequenceAccuracy",
                "MaskedSequenceAccuracy",
                "CrossEntropyLoss",
                "CrossEntropyLossWithLogSoftmax",
                "CrossEntropySum",
            )
        },
        **{
            name: Entry(lambda mode, name=name: getattr(tl, name)(), (W, W), streams=False)
            for name in ("BinaryCrossEntropy", "WeightedSum")
        },
        **{
            name: Entry(lambda mode, name=name: getattr(tl, name)(), (W, W, W), streams=False)
            for name in ("BinaryCrossEntropyLoss", "BinaryCrossEntropySum")
        },
        **{
            name: Entry(lambda mode, name=name: getattr(tl, name)(), (X, X, X), streams=False)
            for name in ("L2Loss", "L1Loss", "SmoothL1Loss")
        },
    }
)

SOURCE = ShapeDtype((2, 5, 4))
REGISTRY.update(
    {
        # --- attention ---
        "ShiftRight": Entry(lambda mode: tl.ShiftRight(1, mode=mode), IDS),
        "DotProductSelfAttention": Entry(
            lambda mode: tl.DotProductSelfAttention(
                2, 2, max_past_horizon=3, max_future_horizon=1, mode=mode
            ),
            X,
            space=Space(
                self_attention_options(), build_self_attention(tl.DotProductSelfAttention), dtypes=(F32, BF16)
            ),
        ),
        "LocalDotProductSelfAttention": Entry(
            lambda mode: tl.LocalDotProductSelfAttention(
                2, 2, block_size=3, max_past_horizon=2, max_future_horizon=1, mode=mode
            ),
            X,
            space=Space(
                self_attention_options(local=True),
                build_self_attention(tl.LocalDotProductSelfAttention),
                dtypes=(F32, BF16),
            ),
        ),
        "CausalAttention": Entry(
            lambda mode: tl.CausalAttention(4, n_heads=2, max_inference_length=8, mode=mode), X
        ),
        "DotProductCausalAttention": Entry(
            lambda mode: tl.DotProductCausalAttention(max_inference_length=8, mode=mode), (X, X, X)
        ),
        "ConfigurableAttention": Entry(
            lambda mode: tl.ConfigurableAttention(
                tl.Dense(4),
                tl.Dense(4),
                tl.Dense(4),
                tl.Dense(4),
                tl.DotProductCausalAttention(max_inference_length=8, mode=mode),
                n_heads=2,
            ),
            X,
        ),
        "SplitIntoHeads": Entry(lambda mode: tl.Serial(tl.SplitIntoHeads(2), tl.MergeHeads(2)), X),
        "MergeHeads": Entry(lambda mode: tl.Serial(tl.SplitIntoHeads(2), tl.MergeHeads(2)), X),
        # Cross attention: the source, its values and mask are given whole at every step.
        "AttentionQKV": Entry(
            lambda mode: tl.Serial(
                tl.AttentionQKV(4, n_heads=2, cache_KV_in_predict=True, mode=mode), tl.Select([0], n_in=2)
            ),
            (X, SOURCE, SOURCE, ShapeDtype((2, 1, 1, 5), np.bool_)),
            contract={"streamed": (True, False, False, False)},
        ),
        "PureAttention": Entry(
            lambda mode: tl.Serial(tl.PureAttention(n_heads=2, mode=mode), tl.Select([0], n_in=2)),
            (X, SOURCE, SOURCE, ShapeDtype((2, 1, 1, 5), np.bool_)),
            contract={"streamed": (True, False, False, False)},
        ),
        "DotProductAttention": Entry(
            lambda mode: tl.DotProductAttention(mode=mode),
            (X, SOURCE, SOURCE, ShapeDtype((2, 1, 5), np.bool_)),
            contract={"streamed": (True, False, False, False)},
        ),
        "PaddingMask": Entry(lambda mode: tl.PaddingMask(), ShapeDtype((2, 8)), streams=None),
        "EncoderDecoderMask": Entry(
            lambda mode: tl.EncoderDecoderMask(), (X, ShapeDtype((2, 1, 1, 5))), streams=None
        ),
        "Attention": Entry(
            lambda mode: tl.Attention(4, n_heads=2, mode=mode),
            (X, ShapeDtype((2, 1, 1, 8), np.bool_)),
            streams=False,
        ),
    }
)

REGISTRY["Accelerate"] = Entry(
    lambda mode: tl.Accelerate(tl.Conv1d(4, 3, stride=2, padding="causal", mode=mode)), X
)

# --- reversible and research ---
PAIR = (ShapeDtype((2, 4, 2)), ShapeDtype((2, 4, 2)))
REGISTRY.update(
    {
        "ReversibleSerial": Entry(
            lambda mode: tl.ReversibleSerial(
                tl.ReversibleHalfResidual(tl.CausalConv(2, kernel_width=2, mode=mode)),
                tl.ReversibleConcatenatePair(),
            ),
            PAIR,
        ),
        "ReversibleHalfResidual": Entry(lambda mode: tl.ReversibleHalfResidual(tl.Dense(2)), PAIR),
        "ReversibleConcatenatePair": Entry(lambda mode: tl.ReversibleConcatenatePair(), PAIR),
        "ReversibleSelect": Entry(lambda mode: tl.ReversibleSelect([1, 0]), PAIR),
        "ReversibleSwap": Entry(lambda mode: tl.ReversibleSwap(), PAIR),
        "ReversiblePrintShape": Entry(lambda mode: tl.ReversiblePrintShape(n_in=2), PAIR),
        "ReversibleReshape": Entry(
            lambda mode: tl.ReversibleReshape((2, 8, 2, 2), (2, 8, 4)),
            ShapeDtype((2, 8, 2, 2)),
            streams=False,
        ),
        "LSHFF": Entry(lambda mode: tl.LSHFF(8, n_buckets=4, n_hashes=2, mode=mode), ShapeDtype((2, 4, 3))),
        "AxialPositionalEncoding": Entry(
            lambda mode: tl.AxialPositionalEncoding(shape=(3, 4), d_embs=(2, 2), mode=mode), X
        ),
        "SinCosPositionalEncoding": Entry(lambda mode: tl.SinCosPositionalEncoding(mode=mode), X),
        "FixedBasePositionalEncoding": Entry(
            lambda mode: tl.FixedBasePositionalEncoding(bases=(5, 7), n_digits=2, mode=mode), X
        ),
        "InfinitePositionalEncoding": Entry(
            lambda mode: tl.InfinitePositionalEncoding(transform="diag", time_bin_length=3, mode=mode),
            ShapeDtype((2, 8, 5)),
        ),
        "TimeBinPositionalEncoding": Entry(lambda mode: tl.TimeBinPositionalEncoding(3, mode=mode), X),
        # Research attention: layer-wise only.
        # Causal and chunked it streams (a window of past chunks); unchunked it does not (tested there).
        "SelfAttention": Entry(
            lambda mode: tl.SelfAttention(
                n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4, n_chunks_before=1, mode=mode
            ),
            X,
        ),
        "LSHSelfAttention": Entry(
            lambda mode: tl.LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, chunk_len=4, n_buckets=2, mode=mode),
            X,
            streams=False,
        ),
        "PureLSHSelfAttention": Entry(
            lambda mode: tl.PureLSHSelfAttention(
                n_heads=2, d_qk=3, d_v=3, chunk_len=4, n_buckets=2, causal=True, mode=mode
            ),
            (ShapeDtype((4, 8, 3)), ShapeDtype((4, 8, 3))),
            streams=False,
        ),
        "MixedLSHSelfAttention": Entry(
            lambda mode: tl.MixedLSHSelfAttention(
                n_heads=2, d_qk=3, d_v=3, causal=True, chunk_len=4, n_buckets=2, mode=mode
            ),
            (ShapeDtype((4, 8, 3)), ShapeDtype((4, 8, 3))),
            streams=False,
        ),
        "PureLSHSelfAttentionWrapper": Entry(
            lambda mode: tl.PureLSHSelfAttentionWrapper(
                n_heads=2, d_qk=4, d_v=4, chunk_len=4, n_buckets=2, mode=mode
            ),
            X,
            streams=False,
        ),
        "EncDecAttention": Entry(
            lambda mode: tl.EncDecAttention(n_heads=2, d_qk=4, d_v=4, mode=mode),
            (X, SOURCE, ShapeDtype((2, 5), np.bool_)),
            streams=False,
        ),
    }
)


# Trax's research.rel_attention, resampling and rotary_positional_embedding; deconvolution.
def _relative_biases():
    return tl.get_rel_att_inputs(4, 2)


def _attention_resampling(mode, is_upsampling):
    return tl.Serial(
        tl.AttentionResampling(
            2, 4, is_upsampling, 8, 2, 0.0, None, mode, tl.Relu, *_relative_biases(), 1, tl.AveragePooling
        )
    )


MASK_8x8 = ShapeDtype((2, 1, 8, 8), BOOL)
REGISTRY.update(
    {
        "Rotate": Entry(
            lambda mode: tl.Rotate(mode=mode),
            X,
            space=Space(
                st.fixed_dictionaries({"rank": st.sampled_from((3, 4))}),
                built(tl.Rotate),
                dtypes=(F32, BF16),
                depths=(2, 4, 6, 8),
            ),
        ),
        "ConvTranspose": Entry(
            lambda mode: tl.ConvTranspose(3, (2, 2), strides=(2, 1)), IMAGE, streams=False
        ),
        "RelativeAttentionWrapper": Entry(
            lambda mode: tl.RelativeAttentionWrapper(
                4,
                2,
                mode=mode,
                context_bias_layer=_relative_biases()[0],
                location_bias_layer=_relative_biases()[1],
                total_pooling=1,
            ),
            X,
            streams=False,
        ),
        "RelativeAttentionLMLayer": Entry(
            lambda mode: tl.RelativeAttentionLMLayer(4, *_relative_biases(), 1, n_heads=2, mode=mode),
            (X, X, X),
            streams=False,
        ),
        "RelativeAttentionLayer": Entry(
            lambda mode: tl.RelativeAttentionLayer(4, *_relative_biases(), 1, False, n_heads=2, mode=mode),
            (X, X, X, MASK_8x8),
            streams=False,
        ),
        "RelativeAttention": Entry(
            lambda mode: tl.RelativeAttention(False, n_heads=2, mode=mode),
            (ShapeDtype((1, 2, 1, 2)), ShapeDtype((1, 2, 1, 2)), ShapeDtype((8, 4)), X, X, X, MASK_8x8),
            streams=False,
        ),
        "PositionalEmbeddings": Entry(
            lambda mode: tl.PositionalEmbeddings(4, False, 1), (X, X), streams=False
        ),
        "CreateAttentionMaskLayer": Entry(
            lambda mode: tl.CreateAttentionMaskLayer(), (X, X, X), streams=False
        ),
        "ShiftRightCls": Entry(lambda mode: tl.ShiftRightCls(1), IDS, streams=False),
        # Resampling: AveragePooling is AvgPool with stride = size (non-overlapping windows), which streams.
        "AveragePooling": Entry(lambda mode: tl.AveragePooling(2), X),
        "LinearPooling": Entry(lambda mode: tl.LinearPooling(2, 4, mode=mode), X, streams=False),
        "LinearUpsampling": Entry(lambda mode: tl.LinearUpsampling(2, 4, mode=mode), X, streams=False),
        "NaiveUpsampling": Entry(lambda mode: tl.NaiveUpsampling(2, 4), X, streams=False),
        "NoUpsampling": Entry(lambda mode: tl.NoUpsampling(2, 4), X, streams=False),
        "FeedForwardBlock": Entry(
            lambda mode: tl.Serial(tl.FeedForwardBlock(4, 8, 0.0, None, mode, tl.Relu)), X
        ),
        "AttentionResampling": Entry(lambda mode: _attention_resampling(mode, False), X, streams=False),
    }
)

# Trax's research.sparsity: sparse feed-forward blocks (position-wise) and FAVOR attention.
MASK_1x1x8 = ShapeDtype((2, 1, 1, 8), BOOL)
REGISTRY.update(
    {
        "SparseFF": Entry(
            lambda mode: tl.SparseFF(
                8,
                n_elements_in_block=4,
                d_lowrank=3,
                ff_chunk_size=2,
                multiply_by_controller_output=True,
                mode=mode,
            ),
            X,
        ),
        "BlockSparseFF": Entry(lambda mode: tl.BlockSparseFF(8, n_experts=4, mode=mode), X),
        "SwitchSparseFF": Entry(lambda mode: tl.SwitchSparseFF(8, n_experts=2, mode=mode), X),
        "FavorAttention": Entry(
            lambda mode: tl.Serial(
                tl.FavorAttention(d_feature=4, n_heads=2, mode=mode), tl.Select([0], n_in=2)
            ),
            (ShapeDtype((4, 8, 2)), ShapeDtype((4, 8, 2)), ShapeDtype((4, 8, 2)), MASK_1x1x8),
            streams=False,
        ),
        "Favor": Entry(
            lambda mode: tl.Serial(tl.Favor(4, n_heads=2, mode=mode), tl.Select([0], n_in=2)),
            (X, MASK_1x1x8),
            streams=False,
        ),
        "CausalFavorAttention": Entry(lambda mode: tl.CausalFavorAttention(mode=mode), (X, X, X)),
        "CausalFavor": Entry(lambda mode: tl.CausalFavor(4, n_heads=2, mode=mode), X),
    }
)

# Trax's research.sparsity: sparse and factored dense layers and the causal attention built on them.
REGISTRY.update(
    {
        "ReversibleReshapePermute": Entry(lambda mode: tl.ReversibleReshapePermute(), X),
        "ReversibleRandomPermute": Entry(lambda mode: tl.ReversibleRandomPermute(), X),
        "SplitLastAxis": Entry(lambda mode: tl.Serial(tl.SplitLastAxis(2), tl.MergeLastTwoAxes()), X),
        "MergeLastTwoAxes": Entry(lambda mode: tl.Serial(tl.SplitLastAxis(2), tl.MergeLastTwoAxes()), X),
        "LocallyConnectedDense": Entry(lambda mode: tl.LocallyConnectedDense(2, 3, kernel_size=3), X),
        "LocallyConvDense": Entry(
            lambda mode: tl.LocallyConvDense(2, 3, mode=mode, kernel_size=3, length_kernel_size=3), X
        ),
        "LowRankDense": Entry(lambda mode: tl.LowRankDense(5, 2), X),
        "EinsumDense": Entry(lambda mode: tl.EinsumDense(4, 5, use_bias=True), X),
        "RandomLayer": Entry(lambda mode: tl.RandomLayer(tl.Dense(3), tl.Dense(3), 0.5), X, streams=False),
        "SparseDenseWithOptions": Entry(
            lambda mode: tl.SparseDenseWithOptions(
                6, d_input=4, sparsity_type="mult", sparsity=2, prob_sparse=0.5, mode=mode
            ),
            X,
        ),
        "FactoredDense": Entry(lambda mode: tl.FactoredDense(2, 4, 6), X),
        "MultiplicativeModularSparseDense": Entry(lambda mode: tl.MultiplicativeModularSparseDense(2, 4), X),
        "ModularCausalAttention": Entry(
            lambda mode: tl.ModularCausalAttention(
                4, n_heads=2, kernel_size=3, max_inference_length=8, mode=mode
            ),
            X,
        ),
        "ConvCausalAttention": Entry(
            lambda mode: tl.ConvCausalAttention(
                4, n_heads=2, kernel_size=3, max_inference_length=8, mode=mode
            ),
            X,
        ),
        "LowRankCausalAttention": Entry(
            lambda mode: tl.LowRankCausalAttention(
                4, n_heads=2, lowrank=2, max_inference_length=8, mode=mode
            ),
            X,
        ),
        "MultiplicativeCausalAttention": Entry(
            lambda mode: tl.MultiplicativeCausalAttention(4, n_heads=2, max_inference_length=8, mode=mode), X
        ),
        "MultiplicativeModularCausalAttention": Entry(
            lambda mode: tl.MultiplicativeModularCausalAttention(
                4, n_heads=2, max_inference_length=8, mode=mode
            ),
            X,
        ),
        "MultiplicativeConvCausalAttention": Entry(
            lambda mode: tl.MultiplicativeConvCausalAttention(
                4,
                n_heads=2,
                length_kernel_size=2,
                share_qk=True,
                output_layer_type="multconv",
                v_concat_type="original",
                max_inference_length=8,
                mode=mode,
            ),
            X,
        ),
    }
)

# CamelCase exports of `tl` that are not layers.
NOT_LAYERS = {
    "Layer",
    "Policy",
    "ReversibleLayer",
    "EfficientAttentionBase",
    "LayerError",
    "SHARED",
    "EMPTY_WEIGHTS",
    "EMPTY_STATE",
    "AtariConvInit",
    "GlorotNormalInitializer",
    "GlorotUniformInitializer",
    "InitializerFromFile",
    "KaimingNormalInitializer",
    "KaimingUniformInitializer",
    "LeCunNormalInitializer",
    "LeCunUniformInitializer",
    "OrthogonalInitializer",
    "RandomNormalInitializer",
    "RandomUniformInitializer",
    "ScaledInitializer",
}


def exported_layer_names() -> set[str]:
    """CamelCase public names of `tl` (layers and functions returning layers)."""
    return {name for name in dir(tl) if name[:1].isupper() and not name.isupper()} - NOT_LAYERS
