"""Every layer, combinator and layer function: `import trax_sl.layers as tl`."""

import importlib

from trax_sl.layers import (
    acceleration,
    activation_fns,
    attention,
    base,
    combinators,
    convolution,
    core,
    delay,
    distributions,
    dsp,
    gin_names,
    initializers,
    metrics,
    normalization,
    pooling,
    position,
    precision,
    reductions,
    repeat,
    research,
    reversible,
    rnn,
    self_attention,
    streaming,
)
from trax_sl.layers.acceleration import (
    Accelerate,
    for_n_devices,
    jit_forward,
    mean_or_pmean,
    on_accelerator,
    on_cpu,
    reshape_by_device,
)
from trax_sl.layers.activation_fns import (
    Elu,
    Exp,
    FastGelu,
    Gelu,
    Glu,
    HardSigmoid,
    HardTanh,
    LeakyRelu,
    Log,
    ParametricRelu,
    Relu,
    Selu,
    Sigmoid,
    Softplus,
    Swish,
    Tanh,
    ThresholdedLinearUnit,
)
from trax_sl.layers.assert_shape import (  # tl.assert_shape is the decorator, as in Trax.
    AssertFunction,
    AssertShape,
    assert_shape,
)
from trax_sl.layers.attention import (
    Attention,
    AttentionQKV,
    CausalAttention,
    ConfigurableAttention,
    DotProductAttention,
    DotProductCausalAttention,
    EncoderDecoderMask,
    MergeHeads,
    PaddingMask,
    PureAttention,
    ShiftRight,
    SplitIntoHeads,
)
from trax_sl.layers.base import (
    EMPTY_STATE,
    EMPTY_WEIGHTS,
    GET_WEIGHTS_FROM_CACHE,
    SHARED,
    Fn,
    Layer,
    LayerError,
    PureLayer,
    flatten_weights_and_state,
    np_from_file,
    np_to_file,
    shard,
    to_list,
    unflatten_weights_and_state,
    unshard,
    unshard_in_pmap,
)
from trax_sl.layers.combinators import (
    Add,
    BatchLeadingAxes,
    Bidirectional,
    Branch,
    Cache,
    Chunk,
    Concatenate,
    Cond,
    Drop,
    Dup,
    FlattenList,
    Gate,
    Multiply,
    Parallel,
    Residual,
    Scan,
    Select,
    Serial,
    SerialWithSideOutputs,
    Split,
    SubtractTop,
    Swap,
    inputs_from_stack,
    outputs_onto_stack,
)
from trax_sl.layers.convolution import CausalConv, CausalDepthwiseConv, Conv, Conv1d, Conv2D, DepthwiseConv1D
from trax_sl.layers.core import (
    Dense,
    Dropout,
    Embedding,
    Flatten,
    LocallyConnected1d,
    Negate,
    PrintShape,
    RandomUniform,
    StopGradient,
    SummaryImage,
    SummaryScalar,
    ThresholdToBinary,
    ToFloat,
    Weights,
)
from trax_sl.layers.deconvolution import ConvTranspose
from trax_sl.layers.delay import Delay, Lookahead
from trax_sl.layers.distributions import (
    log_gaussian_diag_pdf,
    log_gaussian_pdf,
    log_softmax,
    logsoftmax_sample,
    multigaussian_loss,
    one_hot,
)
from trax_sl.layers.dsp import STFT, Frame, InverseSTFT, LinearToMelSpectrogram, LogMelFrontend
from trax_sl.layers.initializers import (
    AtariConvInit,
    GlorotNormalInitializer,
    GlorotUniformInitializer,
    InitializerFromFile,
    KaimingNormalInitializer,
    KaimingUniformInitializer,
    LeCunNormalInitializer,
    LeCunUniformInitializer,
    OrthogonalInitializer,
    RandomNormalInitializer,
    RandomUniformInitializer,
    ScaledInitializer,
)
from trax_sl.layers.metrics import (
    Accuracy,
    BinaryCrossEntropy,
    BinaryCrossEntropyLoss,
    BinaryCrossEntropySum,
    CategoryAccuracy,
    CategoryCrossEntropy,
    CrossEntropyLoss,
    CrossEntropyLossWithLogSoftmax,
    CrossEntropySum,
    L1Loss,
    L2Loss,
    MacroAveragedFScore,
    MaskedSequenceAccuracy,
    SequenceAccuracy,
    SmoothL1Loss,
    WeightedCategoryAccuracy,
    WeightedCategoryCrossEntropy,
    WeightedFScore,
    WeightedSum,
)
from trax_sl.layers.model_summary import parameter_count, summary
from trax_sl.layers.normalization import BatchNorm, FilterResponseNorm, GroupNorm, LayerNorm, RMSNorm
from trax_sl.layers.pooling import AvgPool, MaxPool, SumPool
from trax_sl.layers.position import AddTimingSignal, ApplyRotaryPositionalEncoding, PositionalEncoding
from trax_sl.layers.precision import Policy, WithPolicy, get_policy
from trax_sl.layers.reductions import ArgMax, LogSoftmax, LogSumExp, Max, Mean, Min, Softmax, Sum
from trax_sl.layers.repeat import CheckpointGradient, GatedLinearUnit, Repeat
from trax_sl.layers.research.attention_ops import (
    apply_broadcasted_dropout,
    attend,
    hash_vecs,
    length_normalized,
    look_adjacent,
    mask_self_attention,
    permute_via_gather,
    permute_via_sort,
)
from trax_sl.layers.research.efficient_attention import (
    LSHFF,
    EfficientAttentionBase,
    EncDecAttention,
    LSHSelfAttention,
    MixedLSHSelfAttention,
    PureLSHSelfAttention,
    PureLSHSelfAttentionWrapper,
    SelfAttention,
)
from trax_sl.layers.research.favor import CausalFavor, CausalFavorAttention, Favor, FavorAttention
from trax_sl.layers.research.position_encodings import (
    AxialPositionalEncoding,
    FixedBasePositionalEncoding,
    InfinitePositionalEncoding,
    SinCosPositionalEncoding,
    TimeBinPositionalEncoding,
    threefry_2x32_prange,
    threefry_2x32_prf,
)
from trax_sl.layers.research.rel_attention import (
    CreateAttentionMaskLayer,
    PositionalEmbeddings,
    RelativeAttention,
    RelativeAttentionLayer,
    RelativeAttentionLMLayer,
    RelativeAttentionWrapper,
    ShiftRightCls,
    calc_funnel_ratio,
    get_rel_att_inputs,
)
from trax_sl.layers.research.resampling import (
    AttentionResampling,
    AveragePooling,
    FeedForwardBlock,
    LinearPooling,
    LinearUpsampling,
    NaiveUpsampling,
    NoUpsampling,
)
from trax_sl.layers.research.rotary_positional_embedding import Rotate, rotate
from trax_sl.layers.research.sparse_attention import (
    ConvCausalAttention,
    LowRankCausalAttention,
    ModularCausalAttention,
    MultiplicativeCausalAttention,
    MultiplicativeConvCausalAttention,
    MultiplicativeModularCausalAttention,
)
from trax_sl.layers.research.sparse_dense import (
    EinsumDense,
    FactoredDense,
    LocallyConnectedDense,
    LocallyConvDense,
    LowRankDense,
    MergeLastTwoAxes,
    MultiplicativeModularSparseDense,
    RandomLayer,
    ReversibleRandomPermute,
    ReversibleReshapePermute,
    SparseDenseWithOptions,
    SplitLastAxis,
)
from trax_sl.layers.research.sparse_ff import BlockSparseFF, SparseFF, SwitchSparseFF
from trax_sl.layers.reversible import (
    ReversibleConcatenatePair,
    ReversibleHalfResidual,
    ReversibleLayer,
    ReversiblePrintShape,
    ReversibleReshape,
    ReversibleSelect,
    ReversibleSerial,
    ReversibleSwap,
)
from trax_sl.layers.rnn import (
    GRU,
    LSTM,
    SRU,
    ConvGRUCell,
    GeneralGRUCell,
    GRUCell,
    InnerSRUCell,
    LSTMCell,
    MakeZeroState,
    ScanSRUCell,
)
from trax_sl.layers.self_attention import DotProductSelfAttention, LocalDotProductSelfAttention
from trax_sl.layers.streaming import reset_stream_rows, start_stream

# Test helpers load on first use, so that `import trax_sl.layers` does not pay
# for them: `tl.contract.verify_contract` (and its old name `tl.test_utils`).
_LAZY_MODULES = ("contract", "test_utils")


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Last, once every name is here: each becomes `trax_sl.layers.<Name>` in gin configs.
gin_names.register(globals(), metrics)
