"""Trax's module paths, renamed `trax` -> `trax_sl`, import: Trax code runs with only its imports changed."""

import importlib

import pytest

# Trax's modules (trax/**.py) that trax_sl provides under the renamed path. Not here: Trax's
# TensorFlow numpy backend (fastmath.tf, tf_numpy), its RL code, trax2keras, T2T text encoders.
TRAX_MODULES = [
    "trax_sl.data.inputs",
    "trax_sl.data.tf_inputs",
    "trax_sl.fastmath",
    "trax_sl.layers.acceleration",
    "trax_sl.layers.assert_shape",
    "trax_sl.layers.attention",
    "trax_sl.layers.deconvolution",
    "trax_sl.layers.research.efficient_attention",
    "trax_sl.layers.research.position_encodings",
    "trax_sl.layers.research.rel_attention",
    "trax_sl.layers.research.resampling",
    "trax_sl.layers.research.rotary_positional_embedding",
    "trax_sl.layers.research.sparsity",
    "trax_sl.layers.test_utils",
    "trax_sl.models.reformer.reformer",
    "trax_sl.models.research.bert",
    "trax_sl.models.research.configurable_transformer",
    "trax_sl.models.research.hourglass",
    "trax_sl.models.research.layerdrop_transformer",
    "trax_sl.models.research.rezero",
    "trax_sl.models.research.rse",
    "trax_sl.models.research.terraformer",
    "trax_sl.models.research.transformer2",
    "trax_sl.optimizers.trainer",
    "trax_sl.supervised.decoding",
    "trax_sl.supervised.lr_schedules",
    "trax_sl.supervised.trainer_lib",
    "trax_sl.supervised.training",
]


@pytest.mark.parametrize("name", TRAX_MODULES)
def test_trax_module_path_imports(name):
    importlib.import_module(name)


def test_moved_modules_are_the_modules_themselves_not_copies():
    from trax_sl.models import reformer, terraformer
    from trax_sl.models.reformer import reformer as trax_reformer
    from trax_sl.models.research import terraformer as trax_terraformer

    assert trax_reformer is reformer and trax_terraformer is terraformer
    assert importlib.import_module("trax_sl.models.research.rezero").ReZeroTransformerLM.__module__ == (
        "trax_sl.models.rezero"
    )
