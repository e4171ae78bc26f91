"""Every layer with weights names their logical axes (`Layer.weight_axes`), and the rules place them on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import trax_sl.layers as tl
from trax_sl import models, partitioning, sl
from trax_sl.layers import base
from trax_sl.mesh import make_mesh
from trax_sl.shapes import ShapeDtype

from .registry import REGISTRY

Axes = partitioning.Axes
IDS = ShapeDtype((2, 8), np.int32)
SMALL = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}


def declared_axes(layer, signature):
    """(weights signature, axes), checked: the weights' tree, an Axes of the weight's rank per array."""
    weights = layer.weights_and_state_signature(signature)[0]
    axes = layer.weight_axes(weights)
    assert jax.tree.structure(axes) == jax.tree.structure(weights), layer.name
    for a, w in zip(jax.tree.leaves(axes), jax.tree.leaves(weights)):
        assert isinstance(a, Axes), f"{layer.name}: a weight {w} with axes {a!r}"
        assert len(a) == len(w.shape), f"{layer.name}: axes {a!r} for a weight {w}"
    return weights, axes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_layer_declares_its_weight_axes(name):
    entry = REGISTRY[name]
    declared_axes(entry.build("train"), entry.signature)


MODELS = {
    "TransformerLM": (lambda: models.TransformerLM(16, n_layers=2, **SMALL), IDS),
    "Transformer shared embedding": (
        lambda: models.Transformer(16, n_encoder_layers=1, n_decoder_layers=1, **SMALL),
        (IDS, IDS),
    ),
    "Transformer": (
        lambda: models.Transformer(16, 12, n_encoder_layers=1, n_decoder_layers=1, **SMALL),
        (IDS, IDS),
    ),
    "TransformerEncoder": (lambda: models.TransformerEncoder(16, n_classes=3, n_layers=1, **SMALL), IDS),
    "TransformerDecoder": (lambda: models.TransformerDecoder(16, n_layers=1, **SMALL), IDS),
    "TransformerDecoder on vectors": (
        lambda: models.TransformerDecoder(None, n_layers=1, **SMALL),
        ShapeDtype((2, 8, 5)),
    ),
    "RNNLM": (lambda: models.RNNLM(16, d_model=8, n_layers=2), IDS),
    "GRULM": (lambda: models.GRULM(16, d_model=8, n_layers=2), IDS),
    "MLP": (lambda: models.MLP(d_hidden=8, n_output_classes=3), ShapeDtype((2, 4, 3))),
    "MLP layer_widths": (lambda: models.MLP(layer_widths=(8, 4)), ShapeDtype((2, 6))),
    "ConformerEncoder": (
        lambda: models.ConformerEncoder(8, num_blocks=2, max_horizon=2, num_heads=2, conv_kernel_size=3),
        ShapeDtype((2, 8, 16)),
    ),
    "SequenceTransformer": (
        lambda: models.SequenceTransformer(8, 2, 2, 4, 16, 0.1, 4, 0),
        ShapeDtype((2, 8, 5)),
    ),
    "LogMelFrontend": (
        lambda: models.LogMelFrontend(frame_length=16, frame_step=4, fft_length=16, num_mel_bins=8),
        ShapeDtype((2, 32)),
    ),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_declares_its_weight_axes(name):
    build, signature = MODELS[name]
    declared_axes(build(), signature)


X = jnp.zeros((2, 6, 4))
SOURCE = {"source": jnp.zeros((2, 5, 3))}
SL_LAYERS = {
    "Dense": (lambda: sl.Dense(5), X),
    "Embedding": (lambda: sl.Embedding(4, 10), IDS),
    "EinsumDense": (lambda: sl.EinsumDense("...a,abc->...bc", (2, 3), bias_axes="c"), X),
    "DenseShaped": (lambda: sl.DenseShaped([5]), jnp.zeros((2, 6, 2, 3))),
    "Conv1D": (lambda: sl.Conv1D(4, 3, padding="causal"), X),
    "LayerNormalization over two axes": (
        lambda: sl.LayerNormalization(axis=(-2, -1)),
        jnp.zeros((2, 6, 3, 4)),
    ),
    "BatchNormalization": (lambda: sl.BatchNormalization(), X),
    "LSTM": (lambda: sl.LSTM(3), X),
    "DotProductAttention": (lambda: sl.DotProductAttention("source", 2, 3, use_bias=True), (X, SOURCE)),
    "Repeat with constants": (
        lambda: sl.Repeat(sl.Residual([sl.DotProductAttention("source", 2, 2), sl.Flatten()]), num_repeats=2),
        (X, SOURCE),
    ),
}


@pytest.mark.parametrize("name", sorted(SL_LAYERS))
def test_sequence_layers_names_declare_their_weight_axes(name):
    build, signature = SL_LAYERS[name]
    declared_axes(build(), signature)


# --- Hand-checked axes -----------------------------------------------------------------


def test_dense_kernel_and_bias():
    x = ShapeDtype((2, 4))
    assert declared_axes(tl.Dense(3, use_bias=False), x)[1] == Axes("embed", "mlp")
    assert declared_axes(tl.Dense(3), x)[1] == (Axes("embed", "mlp"), Axes("mlp"))
    dense = tl.Dense(3, kernel_axes=("mlp", "embed"))
    assert declared_axes(dense, x)[1] == (Axes("mlp", "embed"), Axes("embed"))


def test_embedding_and_norms():
    assert declared_axes(tl.Embedding(10, 4), IDS)[1] == Axes("vocab", "embed")
    assert declared_axes(tl.LayerNorm(), ShapeDtype((2, 8, 4)))[1] == (Axes("norm"), Axes("norm"))
    assert declared_axes(tl.RMSNorm(), ShapeDtype((2, 8, 4)))[1] == Axes("norm")


def test_causal_attention_projections():
    axes = declared_axes(tl.CausalAttention(8, n_heads=2), ShapeDtype((2, 5, 8)))[1]
    qkv = [Axes("embed", "heads"), Axes("heads")]
    assert jax.tree.leaves(axes) == 3 * qkv + [Axes("heads", "embed"), Axes("embed")]


def test_self_attention_projection_heads():
    layer = tl.DotProductSelfAttention(num_heads=4, units_per_head=3, max_past_horizon=2, num_kv_heads=2)
    axes = declared_axes(layer, ShapeDtype((2, 5, 8)))[1]
    q, k, v = axes[0]
    assert q == Axes("embed", "heads", "head_dim")
    assert k == v == Axes("embed", "kv_heads", "head_dim")


def test_einsum_dense_names_axes_by_their_role():
    default = sl.EinsumDense("...a,abc->...bc", (2, 3), bias_axes="c")
    assert declared_axes(default, X)[1] == (Axes("embed", "mlp", "mlp"), Axes("mlp"))
    cross = sl.DotProductAttention("source", 2, 3, use_bias=True)
    query = declared_axes(cross, (X, SOURCE))[1][0]
    assert query == (Axes("embed", "heads", "head_dim"), Axes("heads", "head_dim"))


def test_conv_kernel_follows_its_layout():
    conv = tl.Conv(4, (3, 2), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    kernel = ("conv_window", "conv_window", "conv_in", "conv_out")
    assert declared_axes(conv, ShapeDtype((2, 8, 5, 3)))[1] == (Axes(*kernel), Axes("conv_out"))
    causal = tl.CausalDepthwiseConv(kernel_size=3)
    assert declared_axes(causal, ShapeDtype((2, 8, 5)))[1] == Axes("conv_window", "conv_out")


def test_repeat_prepends_layers():
    body = tl.Serial(tl.Dense(8), tl.LayerNorm())
    axes = declared_axes(tl.Repeat(body, 3), ShapeDtype((2, 5, 8)))[1]
    assert axes == (
        (Axes("layers", "embed", "mlp"), Axes("layers", "mlp")),
        (Axes("layers", "norm"), Axes("layers", "norm")),
    )


class _Undeclared(base.Layer):
    def init_weights_and_state(self, input_signature, rng):
        return jnp.zeros((input_signature.shape[-1],)), ()

    def forward(self, x, weights, state, rng):
        return x + jnp.reshape(weights, (1, 1, -1)), state


def test_undeclared_weights_stay_undeclared_under_repeat():
    layer = tl.Repeat(_Undeclared(), 2)
    weights = layer.weights_and_state_signature(ShapeDtype((2, 5, 8)))[0]
    assert layer.weight_axes(weights) is partitioning.UNDECLARED


def test_a_shared_layer_is_declared_once():
    dense = tl.Dense(4)
    weights = tl.Serial(dense, dense).weights_and_state_signature(ShapeDtype((2, 4)))[0]
    assert tl.Serial(dense, dense).weight_axes(weights) == ((Axes("embed", "mlp"), Axes("mlp")), base.SHARED)


# --- On a mesh ----------------------------------------------------------------------------


def test_tensor_and_fsdp_mesh():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert partitioning.partition_spec(Axes("embed", "mlp"), (64, 128), mesh) == PartitionSpec(
        "fsdp", "tensor"
    )
    assert partitioning.partition_spec(Axes("norm"), (64,), mesh) == PartitionSpec()


def test_fsdp_mesh_splits_large_weights_but_never_their_layers_axis():
    mesh = make_mesh({"fsdp": 8})
    assert partitioning.partition_spec(Axes(None, None), (512, 64), mesh) == PartitionSpec("fsdp")
    stacked = partitioning.partition_spec(Axes("layers", None), (4096, 8), mesh)
    assert stacked == PartitionSpec(None, "fsdp")


def test_transformer_lm_shardings():
    model = models.TransformerLM(16, n_layers=1, **SMALL)
    weights, axes = declared_axes(model, IDS)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    specs = [s.spec for s in jax.tree.leaves(partitioning.weight_shardings(axes, weights, mesh))]
    assert specs[0] == PartitionSpec("tensor", "fsdp")  # The embedding, [vocab, embed].
    assert specs[-2:] == [PartitionSpec("fsdp", "tensor"), PartitionSpec("tensor")]  # Onto the vocabulary.
