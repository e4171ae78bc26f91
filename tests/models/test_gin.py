"""Models are gin configurables named `trax_sl.models.<Name>`, as in Trax."""

import gin
import jax
import jax.numpy as jnp
import pytest

from trax_sl import models
from trax_sl.shapes import ShapeDtype
from trax_sl.supervised import trainer_lib  # noqa: F401  (registers `train`)

# The names of Trax's trax/models/__init__.py (its model_configure calls), in its order.
TRAX_MODELS = [
    "AtariCnn", "AtariCnnBody", "FrameStackMLP", "BERT", "BERTClassifierHead", "BERTRegressionHead",
    "ConfigurableTerraformer", "ConfigurableTransformer", "ConfigurableTransformerEncoder",
    "ConfigurableTransformerLM", "MLP", "NeuralGPU", "Reformer", "ReformerLM", "ReformerShortenLM",
    "Resnet50", "ReZeroTransformer", "ReZeroTransformerDecoder", "ReZeroTransformerEncoder",
    "ReZeroTransformerLM", "SkippingTransformerLM", "LayerDropTransformerLM",
    "EveryOtherLayerDropTransformerLM", "Transformer", "TransformerDecoder", "TransformerEncoder",
    "TransformerLM", "Transformer2", "WideResnet", "Policy", "PolicyAndValue", "Value", "Quality",
    "RNNLM", "GRULM", "LSTMSeq2SeqAttn", "ResidualShuffleExchange", "HourglassLM",
]  # fmt: skip
MODELS = TRAX_MODELS + ["ConformerEncoder", "SequenceTransformer"]


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize("name", MODELS)
def test_configs_name_models(name):
    gin.parse_config(f"train.model = @trax_sl.models.{name}")
    reference = gin.query_parameter("train.model")
    assert reference.configurable.name == name
    assert reference.configurable.module == "trax_sl.models"
    assert name in models.__all__


def test_every_trax_model_name_exists():
    assert len(TRAX_MODELS) == 38
    assert [name for name in TRAX_MODELS if not hasattr(models, name)] == []


def test_bindings_reach_the_model():
    gin.parse_config(
        [
            "TransformerLM.vocab_size = 8",
            "TransformerLM.d_model = 16",
            "TransformerLM.d_ff = 32",
            "trax_sl.models.TransformerLM.n_layers = 1",
            "TransformerLM.n_heads = 2",
        ]
    )
    model = models.TransformerLM(mode="eval")
    weights, _ = model.weights_and_state_signature(ShapeDtype((2, 4), jnp.int32))
    assert weights[1].shape == (8, 16)  # The embedding.
    assert len(weights) == 7  # One Repeat of the decoder block.
    assert jax.tree.leaves(weights[4])[0].shape[0] == 1  # Of one block.
