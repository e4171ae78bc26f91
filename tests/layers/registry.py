"""One registry of every exported layer: a small constructor and input signature each.

`test_registry.py` runs `verify_contract` over the streamable entries, checks
that the others declare `supports_step = False` and refuse predict mode, and
fails when an exported layer is missing here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.shapes import ShapeDtype

F32 = np.float32
X = ShapeDtype((2, 8, 4))  # [batch, time, depth]
IDS = ShapeDtype((2, 8), np.int32)


@dataclasses.dataclass
class Entry:
    build: Callable[[str], tl.Layer]  # mode -> layer
    signature: object
    streams: bool | None = True  # None: no time axis (cells), predict mode must equal eval
    contract: dict = dataclasses.field(default_factory=dict)  # extra verify_contract arguments


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
    "Scan": Entry(
        lambda mode: tl.Scan(tl.Fn("Add", lambda x, c: (x + c, x + c), n_out=2), axis=1),
        (X, ShapeDtype((2, 4))),
        streams=False,
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
    "Dense": Entry(_dense, X),
    "Embedding": Entry(lambda mode: tl.Embedding(8, 3), IDS),
    "Dropout": Entry(lambda mode: tl.Dropout(0.5, mode=mode), X),
    "Weights": Entry(
        lambda mode: tl.Serial(tl.Weights(tl.RandomNormalInitializer(), shape=(1, 1, 4)), tl.Add()), X
    ),
    "RandomUniform": Entry(lambda mode: tl.RandomUniform(shape=(3,)), (), streams=False),
    "LocallyConnected1d": Entry(lambda mode: tl.LocallyConnected1d(3, 3, padding="SAME"), X, streams=False),
    "PrintShape": Entry(lambda mode: tl.PrintShape(), X),
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
        name: Entry(lambda mode, name=name: getattr(tl, name)(), X)
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
    "Delay": Entry(lambda mode: tl.Delay(2, mode=mode), X),
    "Lookahead": Entry(lambda mode: tl.Lookahead(2, mode=mode), X),
    "Repeat": Entry(
        lambda mode: tl.Repeat(tl.Residual(tl.Dense(4), tl.Delay(1, delay_layer_output=False, mode=mode)), 3),
        X,
    ),
    "CheckpointGradient": Entry(lambda mode: tl.CheckpointGradient(tl.Serial(tl.Dense(4), tl.Tanh())), X),
    "GatedLinearUnit": Entry(lambda mode: tl.GatedLinearUnit(), X),
    "LayerNorm": Entry(lambda mode: tl.LayerNorm(), X),
    "RMSNorm": Entry(lambda mode: tl.RMSNorm(), X),
    "BatchNorm": Entry(lambda mode: tl.BatchNorm(axis=(0, 1), mode=mode), X),
    "FilterResponseNorm": Entry(lambda mode: tl.FilterResponseNorm(mode=mode), X, streams=False),
    "GroupNorm": Entry(lambda mode: tl.GroupNorm(2, cumulative=True, mode=mode), X),
    "PositionalEncoding": Entry(lambda mode: tl.PositionalEncoding(max_len=64, mode=mode), X),
    "AddTimingSignal": Entry(lambda mode: tl.AddTimingSignal(mode=mode), X),
    "ApplyRotaryPositionalEncoding": Entry(lambda mode: tl.ApplyRotaryPositionalEncoding(mode=mode), X),
    "Frame": Entry(lambda mode: tl.Frame(4, 2, mode=mode), ShapeDtype((2, 16))),
    "STFT": Entry(lambda mode: tl.STFT(8, 4, 8, output_magnitude=True, mode=mode), ShapeDtype((2, 16))),
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
        "Conv1d": Entry(lambda mode: tl.Conv1d(4, 3, stride=2, padding="causal", mode=mode), X),
        "Conv": Entry(lambda mode: tl.Conv(2, (3, 3), padding=("causal", "SAME"), mode=mode), IMAGE),
        "CausalConv": Entry(lambda mode: tl.CausalConv(3, kernel_width=3, mode=mode), X),
        "CausalDepthwiseConv": Entry(lambda mode: tl.CausalDepthwiseConv(3, mode=mode), X),
        "DepthwiseConv1D": Entry(lambda mode: tl.DepthwiseConv1D(3, padding="reverse_causal", mode=mode), X),
        "Conv2D": Entry(lambda mode: tl.Conv2D(3, 3, strides=2, time_padding="causal", mode=mode), IMAGE),
        "MaxPool": Entry(lambda mode: tl.MaxPool((2,), (2,), mode=mode), X),
        "AvgPool": Entry(lambda mode: tl.AvgPool((2,), (2,), padding="causal", mode=mode), X),
        "SumPool": Entry(lambda mode: tl.SumPool((2,), (1,), padding="causal", mode=mode), X),
    }
)
REGISTRY.update(
    {
        # --- rnn ---
        "LSTM": Entry(lambda mode: tl.LSTM(3, mode=mode), X),
        "GRU": Entry(lambda mode: tl.GRU(3, mode=mode), X),
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
        ),
        "LocalDotProductSelfAttention": Entry(
            lambda mode: tl.LocalDotProductSelfAttention(
                2, 2, block_size=3, max_past_horizon=2, max_future_horizon=1, mode=mode
            ),
            X,
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
        "SelfAttention": Entry(
            lambda mode: tl.SelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, mode=mode), X, streams=False
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

# CamelCase exports of `tl` that are not layers.
NOT_LAYERS = {
    "Layer",
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
