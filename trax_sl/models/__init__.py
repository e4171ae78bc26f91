"""Models: Trax's (`trax.models`) and the SequenceLayers notebook's.

Each model is a function returning a Layer, with Trax's signature where Trax
has the model. As in Trax, the names here are gin configurables, so configs
say `train.model = @trax_sl.models.TransformerLM` and
`TransformerLM.d_model = 64` (and a direct call sees those bindings too).

Trax's 38 models: MLP; the Transformer family (TransformerEncoder/Decoder/LM,
Transformer), its configurable (ConfigurableTransformer*, Terraformer),
ReZero and LayerDrop variants, Reformer, BERT, Transformer2 and HourglassLM;
RNNLM, GRULM, LSTMSeq2SeqAttn; Resnet50, WideResnet, AtariCnn, NeuralGPU,
ResidualShuffleExchange and the RL heads (Policy, Value, ...).

Streaming (predict mode, see DESIGN §5): the causal language models and
decoders built from causal dot-product attention stream (as in Trax, a
predict-mode `ShiftRight` is a no-op: feed 0, then each previous token),
encoder-decoders stream in the target (the source given whole),
ConformerEncoder and SequenceTransformer stream with bounded horizons.
Encoders, image models, and models whose attention is LSH or chunked
(Reformer's defaults, Terraformer, Transformer2, HourglassLM) do not: their
predict mode raises with the reason.
`LogMelFrontend` is the notebook's streaming speech front end, a natural
input to ConformerEncoder.
"""

import gin

from trax_sl.layers.dsp import LogMelFrontend  # The notebook's front end, for the speech models.
from trax_sl.models import (
    atari_cnn,
    bert,
    configurable_transformer,
    conformer,
    hourglass,
    layerdrop_transformer,
    mlp,
    neural_gpu,
    reformer,
    resnet,
    rezero,
    rl,
    rnn,
    rse,
    sequence_transformer,
    terraformer,
    transformer,
    transformer2,
)


def _model_configure(model):
    """gin's wrapper of `model`, named `trax_sl.models.<name>` (as Trax's model_configure)."""
    return gin.external_configurable(model, module="trax_sl.models")


MLP = _model_configure(mlp.MLP)
TransformerEncoder = _model_configure(transformer.TransformerEncoder)
TransformerDecoder = _model_configure(transformer.TransformerDecoder)
TransformerLM = _model_configure(transformer.TransformerLM)
Transformer = _model_configure(transformer.Transformer)
RNNLM = _model_configure(rnn.RNNLM)
GRULM = _model_configure(rnn.GRULM)
ConformerEncoder = _model_configure(conformer.ConformerEncoder)
SequenceTransformer = _model_configure(sequence_transformer.SequenceTransformer)
AtariCnn = _model_configure(atari_cnn.AtariCnn)
AtariCnnBody = _model_configure(atari_cnn.AtariCnnBody)
FrameStackMLP = _model_configure(atari_cnn.FrameStackMLP)
ConfigurableTerraformer = _model_configure(terraformer.ConfigurableTerraformer)
ConfigurableTransformer = _model_configure(configurable_transformer.ConfigurableTransformer)
ConfigurableTransformerEncoder = _model_configure(configurable_transformer.ConfigurableTransformerEncoder)
ConfigurableTransformerLM = _model_configure(configurable_transformer.ConfigurableTransformerLM)
NeuralGPU = _model_configure(neural_gpu.NeuralGPU)
Resnet50 = _model_configure(resnet.Resnet50)
WideResnet = _model_configure(resnet.WideResnet)
Policy = _model_configure(rl.Policy)
PolicyAndValue = _model_configure(rl.PolicyAndValue)
Value = _model_configure(rl.Value)
Quality = _model_configure(rl.Quality)
ReZeroTransformer = _model_configure(rezero.ReZeroTransformer)
ReZeroTransformerDecoder = _model_configure(rezero.ReZeroTransformerDecoder)
ReZeroTransformerEncoder = _model_configure(rezero.ReZeroTransformerEncoder)
ReZeroTransformerLM = _model_configure(rezero.ReZeroTransformerLM)
SkippingTransformerLM = _model_configure(layerdrop_transformer.SkippingTransformerLM)
LayerDropTransformerLM = _model_configure(layerdrop_transformer.LayerDropTransformerLM)
EveryOtherLayerDropTransformerLM = _model_configure(layerdrop_transformer.EveryOtherLayerDropTransformerLM)
LSTMSeq2SeqAttn = _model_configure(rnn.LSTMSeq2SeqAttn)
Reformer = _model_configure(reformer.Reformer)
ReformerLM = _model_configure(reformer.ReformerLM)
ReformerShortenLM = _model_configure(reformer.ReformerShortenLM)
BERT = _model_configure(bert.BERT)
BERTClassifierHead = _model_configure(bert.BERTClassifierHead)
BERTRegressionHead = _model_configure(bert.BERTRegressionHead)
Transformer2 = _model_configure(transformer2.Transformer2)
ResidualShuffleExchange = _model_configure(rse.ResidualShuffleExchange)
HourglassLM = _model_configure(hourglass.HourglassLM)

__all__ = [
    "BERT",
    "GRULM",
    "MLP",
    "RNNLM",
    "AtariCnn",
    "AtariCnnBody",
    "BERTClassifierHead",
    "BERTRegressionHead",
    "ConfigurableTerraformer",
    "ConfigurableTransformer",
    "ConfigurableTransformerEncoder",
    "ConfigurableTransformerLM",
    "ConformerEncoder",
    "EveryOtherLayerDropTransformerLM",
    "FrameStackMLP",
    "HourglassLM",
    "LSTMSeq2SeqAttn",
    "LayerDropTransformerLM",
    "LogMelFrontend",
    "NeuralGPU",
    "Policy",
    "PolicyAndValue",
    "Quality",
    "ReZeroTransformer",
    "ReZeroTransformerDecoder",
    "ReZeroTransformerEncoder",
    "ReZeroTransformerLM",
    "Reformer",
    "ReformerLM",
    "ReformerShortenLM",
    "ResidualShuffleExchange",
    "Resnet50",
    "SequenceTransformer",
    "SkippingTransformerLM",
    "Transformer",
    "Transformer2",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLM",
    "Value",
    "WideResnet",
    "atari_cnn",
    "bert",
    "configurable_transformer",
    "conformer",
    "hourglass",
    "layerdrop_transformer",
    "mlp",
    "neural_gpu",
    "reformer",
    "resnet",
    "rezero",
    "rl",
    "rnn",
    "rse",
    "sequence_transformer",
    "terraformer",
    "transformer",
    "transformer2",
]
