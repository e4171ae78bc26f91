"""SequenceLayers' names on trax_sl layers: `from trax_sl import sl` where SL code has `import sequence_layers.jax as sl`.

Every layer here takes SequenceLayers' config field names as keyword
arguments (`name=` included) and computes what SequenceLayers' layer of that
name computes, built on trax_sl's layers. `sl.X.Config(f=v, ...).make()`
becomes `sl.X(f=v, ...)`; README.md, "Coming from SequenceLayers", gives
the whole translation. Where trax_sl's layer already is SequenceLayers' (it
takes SL's fields), it is re-exported: `DotProductSelfAttention`,
`LocalDotProductSelfAttention`, `Conv2D`, `DepthwiseConv1D`, `STFT`,
`LinearToMelSpectrogram`, `AddTimingSignal`, `ApplyRotaryPositionalEncoding`,
`RMSNormalization` (`tl.RMSNorm`), `GroupNormalization` (`tl.GroupNorm`).
Where a name means something else in Trax (`Add`, `Flatten`, `Dense` with
`activation=`, `Serial` of a list), SequenceLayers' meaning is here and
Trax's stays in `trax_sl.layers`.

Modes. SequenceLayers passes `training=` at each call; trax_sl layers take a
`mode` when built. A model SL runs with `training=False` is
`model.with_mode('eval')` here (dropout off, BatchNormalization on its
running statistics), and SL's `step` is predict mode (`tl.start_stream`).

Constants. SequenceLayers' `constants` (a dict of named side inputs: the
source of a cross attention, conditioning) are one stack item under the
input, the dict itself:

    y = model((x, {"source": source}))              # SL: model.layer(x, constants=...)
    model.init((x, constants))                      # SL: model.init(key, x, constants=...)
    predict_model, state = tl.start_stream(model, (x[:, :1], constants), model.weights)
    y0, state = predict_model.pure_fn((x[:, :1], constants), model.weights, state, None)

- A layer that reads constants (`DotProductAttention(source_name=...)`)
  takes `x constants` off the stack (n_in=2) and gives `y`; its
  `constant_names` attribute lists the names it reads. Constants are not
  streamed: the whole dict goes under every block, and `time_items` (the
  predict-mode block check) does not count it.
- The combinators here (`Serial`, `Residual`, `Repeat`, `CheckpointGradient`,
  `Bidirectional`) take `x constants` when any sublayer reads constants, give
  the constants to each sublayer that reads them and return `y` alone: the
  dict is never consumed, as SL passes `constants=` down to every layer. A
  combinator none of whose sublayers reads constants is trax_sl's own, with
  one input.
- Inside a Trax-style `tl.Serial`, a layer reading constants pops them like
  any two-input layer (Trax's stack semantics); use these combinators to
  share one constants dict between several layers.
- The dict's signature (`shapes.signature`) is a `NamedSignatures`, so
  `init`, `output_signature` and `tl.start_stream` take example constants as
  they take example inputs.
"""

import trax_sl.layers as tl
from trax_sl.layers.base import Layer
from trax_sl.sequence import MaskedSequence, Sequence
from trax_sl.sl import utils
from trax_sl.sl.attention import DotProductAttention, DotProductSelfAttention, LocalDotProductSelfAttention
from trax_sl.sl.combinators import (
    Bidirectional,
    CheckpointGradient,
    CombinationMode,
    Repeat,
    Residual,
    Serial,
    SerialWithConstants,
)
from trax_sl.sl.convolution import Conv1D, Conv2D, DepthwiseConv1D
from trax_sl.sl.dense import Dense, DenseShaped, EinsumDense, Embedding
from trax_sl.sl.normalization import (
    BatchNormalization,
    GroupNormalization,
    LayerNormalization,
    RMSNormalization,
)
from trax_sl.sl.recurrent import LSTM
from trax_sl.sl.simple import (
    Add,
    Delay,
    Dropout,
    Exp,
    ExpandDims,
    Flatten,
    GatedLinearUnit,
    GatedUnit,
    Identity,
    Log,
    Lookahead,
    Relu,
    Scale,
    Sigmoid,
    Softplus,
    Swish,
    Tanh,
)

# A SequenceLayers config and the layer it makes are one object here: a trax_sl Layer.
SequenceLayer = Layer
SequenceLayerConfig = Layer

STFT = tl.STFT
LinearToMelSpectrogram = tl.LinearToMelSpectrogram
AddTimingSignal = tl.AddTimingSignal
ApplyRotaryPositionalEncoding = tl.ApplyRotaryPositionalEncoding

__all__ = [
    "LSTM",
    "STFT",
    "Add",
    "AddTimingSignal",
    "ApplyRotaryPositionalEncoding",
    "BatchNormalization",
    "Bidirectional",
    "CheckpointGradient",
    "CombinationMode",
    "Conv1D",
    "Conv2D",
    "Delay",
    "Dense",
    "DenseShaped",
    "DepthwiseConv1D",
    "DotProductAttention",
    "DotProductSelfAttention",
    "Dropout",
    "EinsumDense",
    "Embedding",
    "Exp",
    "ExpandDims",
    "Flatten",
    "GatedLinearUnit",
    "GatedUnit",
    "GroupNormalization",
    "Identity",
    "LayerNormalization",
    "LinearToMelSpectrogram",
    "LocalDotProductSelfAttention",
    "Log",
    "Lookahead",
    "MaskedSequence",
    "RMSNormalization",
    "Relu",
    "Repeat",
    "Residual",
    "Scale",
    "Sequence",
    "SequenceLayer",
    "SequenceLayerConfig",
    "Serial",
    "SerialWithConstants",
    "Sigmoid",
    "Softplus",
    "Swish",
    "Tanh",
    "utils",
]
