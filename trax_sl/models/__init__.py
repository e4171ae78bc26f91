"""Models: Trax's (MLP, Transformer family, RNN LMs) and the SequenceLayers notebook's.

Each model is a function returning a Layer, with Trax's signature where Trax
has the model. As in Trax, the names here are gin configurables, so configs
say `train.model = @trax_sl.models.TransformerLM` and
`TransformerLM.d_model = 64` (and a direct call sees those bindings too).

Streaming (predict mode, see DESIGN §5): TransformerLM, TransformerDecoder,
Transformer (in the target; the source given whole), RNNLM, GRULM,
ConformerEncoder and SequenceTransformer (with bounded horizons) stream;
TransformerEncoder does not (supports_step False). `LogMelFrontend` is the
notebook's streaming speech front end, a natural input to ConformerEncoder.
"""

import gin

from trax_sl.layers.dsp import LogMelFrontend  # The notebook's front end, for the speech models.
from trax_sl.models import conformer, mlp, rnn, sequence_transformer, transformer


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

__all__ = [
    "GRULM",
    "MLP",
    "RNNLM",
    "ConformerEncoder",
    "LogMelFrontend",
    "SequenceTransformer",
    "Transformer",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLM",
    "conformer",
    "mlp",
    "rnn",
    "sequence_transformer",
    "transformer",
]
