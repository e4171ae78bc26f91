"""research.sparse_ff: Trax's EfficientFeedForwardTest cases, numpy references, the recall path, the contract."""

import functools

import jax
import numpy as np
import pytest

from trax_sl.layers import test_utils
from trax_sl.layers.research import sparse_ff
from trax_sl.shapes import ShapeDtype, signature

RNG = np.random.default_rng(0)
KEY = jax.random.PRNGKey(0)
MODES = ("train", "eval", "predict")


def normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def relu(x):
    return np.maximum(x, 0.0)


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sparse_ff_weights(weights, chunked=False):
    """(controller, main) weights of a SparseFF, by Trax's nesting."""
    body = weights[0][1]  # BatchLeadingAxes > Serial(recall, body, remember)
    if chunked:
        body = body[1][0]  # Chunk is Serial(reshape, Scan(body), reshape).
    return body[1], body[2]  # body: Serial(Select, controller, main, Select, Dropout, Select)


def sparse_ff_numpy(x, controller, main, multiply=False):
    """SparseFF in eval mode: the controller's argmax unit of each block, relu, back to d_model."""
    m1, m2, mb = (np.asarray(w) for w in controller)
    w1, w2, b2 = (np.asarray(w) for w in main)
    d_lowrank, d1, d2 = m2.shape
    flat = x.reshape((-1, x.shape[-1]))
    logits = (flat @ m1 @ m2.reshape((d_lowrank, d1 * d2)) + mb.reshape((1, -1))).reshape((-1, d1, d2))
    chosen, probs = logits.argmax(-1), softmax(logits)
    y = np.zeros((flat.shape[0], w1.shape[0]), np.float32)
    for r in range(flat.shape[0]):
        for i in range(d1):
            unit = relu(flat[r] @ w1[:, i, chosen[r, i]])
            if multiply:
                unit = unit * probs[r, i, chosen[r, i]]
            y[r] += unit * w2[chosen[r, i], i]
    return (y + b2.reshape((1, -1))).reshape(x.shape)


def one_expert_numpy(x, weights, n_experts, scale_by_probability):
    """BlockSparseFF (or, scaled by the router probability, SwitchSparseFF) in eval mode."""
    m1, w1, w2, b2 = (np.asarray(w) for w in weights)
    size = w1.shape[1] // n_experts
    flat = x.reshape((-1, x.shape[-1]))
    probs = softmax(flat @ m1)
    y = np.zeros_like(flat)
    for r, e in enumerate(probs.argmax(-1)):
        hidden = flat[r] @ w1[:, e * size : (e + 1) * size]
        if scale_by_probability:
            hidden = hidden * probs[r, e]
        y[r] = relu(hidden) @ w2[e * size : (e + 1) * size]
    return (y + b2.reshape((1, -1))).reshape(x.shape)


def run(layer, x, rng=KEY, weights=None):
    w, s = layer.init(signature(x))
    y, _ = jax.jit(layer.pure_fn)(x, w if weights is None else weights, s, rng)
    return y, w


# --- Trax's EfficientFeedForwardTest, at small sizes ------------------------------------


@pytest.mark.parametrize("layer_class", [sparse_ff.BlockSparseFF, sparse_ff.SwitchSparseFF])
def test_one_expert_ff_train(layer_class):
    # Trax: test_blocksparse_ff_train, test_switchsparse_ff_train. The router learns in training.
    x = normal(3, 7, 16)
    layer = layer_class(d_ff=32, n_experts=4, mode="train")
    layer.init(signature(x))
    assert layer(x).shape == x.shape
    w, s = layer.weights, layer.state

    def loss(w):
        return layer.pure_fn(x, w, s, KEY)[0].sum()

    grad_m1 = jax.jit(jax.grad(loss))(w)[0]
    assert np.all(np.isfinite(grad_m1)) and np.abs(grad_m1).max() > 0


@pytest.mark.parametrize("layer_class", [sparse_ff.BlockSparseFF, sparse_ff.SwitchSparseFF])
def test_one_expert_ff_predict_equals_eval_and_numpy(layer_class):
    # Trax: test_blocksparse_ff_predict_equals_eval, test_switchsparse_ff_predict_equals_eval
    # (one position there; several rows here), and eval against numpy.
    x = normal(2, 5, 8)
    eval_out, weights = run(layer_class(d_ff=16, n_experts=4, temperature=0.7, mode="eval"), x)
    pred_out, _ = run(layer_class(d_ff=16, n_experts=4, temperature=0.7, mode="predict"), x, weights=weights)
    np.testing.assert_allclose(pred_out, eval_out, atol=1e-6)
    expected = one_expert_numpy(x, weights, 4, scale_by_probability=layer_class is sparse_ff.SwitchSparseFF)
    np.testing.assert_allclose(eval_out, expected, atol=1e-5)
    one = x[:1, :1]
    np.testing.assert_allclose(
        run(layer_class(16, n_experts=4, mode="predict"), one, weights=weights)[0],
        run(layer_class(16, n_experts=4, mode="eval"), one, weights=weights)[0],
        atol=1e-6,
    )


def test_sparse_ff_predict_equals_eval():
    # Trax: test_sparse_ff_predict_equals_eval, the same three configurations (d_model 64, d_ff 256 there).
    model_fn = functools.partial(sparse_ff.SparseFF, d_ff=32, temperature=0.7, n_elements_in_block=8)
    configs = [
        {"multiply_by_controller_output": True},
        {"multiply_by_controller_output": False},
        {"ff_chunk_size": 2},
    ]
    test_utils.test_eval_equals_predict_configs(normal(1, 6, 8), model_fn, configs)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("multiply", [False, True])
def test_sparse_ff_with_chunking(mode, multiply):
    # Trax: test_sparse_ff_with_chunking, test_sparse_ff_multiply; chunks change no value outside training.
    x = normal(2, 8, 8)
    make = functools.partial(
        sparse_ff.SparseFF,
        d_ff=16,
        n_elements_in_block=2,
        temperature=0.7,
        mode=mode,
        multiply_by_controller_output=multiply,
    )
    chunked, weights = run(make(ff_chunk_size=4), x)
    assert chunked.shape == x.shape
    if mode != "train":
        controller, main = sparse_ff_weights(weights, chunked=True)
        np.testing.assert_allclose(chunked, sparse_ff_numpy(x, controller, main, multiply), atol=1e-5)


def test_sparse_ff_kernel_scaling():
    # Trax: test_sparse_ff_kernel_scaling; w2 is scaled by sqrt(n_elements_in_block), nothing else changes.
    x = normal(2, 8, 8)
    make = functools.partial(
        sparse_ff.SparseFF, d_ff=16, n_elements_in_block=2, temperature=0.7, ff_chunk_size=4
    )
    scaled = make(kernel_scaling=True)
    out, scaled_weights = run(scaled, x)
    assert out.shape == x.shape
    plain_weights, _ = make().init(signature(x), rng=KEY)
    scaled_weights, _ = scaled.init(signature(x), rng=KEY)
    (_, (w1, w2, b2)), (_, (s1, s2, sb2)) = (
        sparse_ff_weights(w, chunked=True) for w in (plain_weights, scaled_weights)
    )
    np.testing.assert_allclose(s2, w2 * np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_array_equal(s1, w1)
    np.testing.assert_array_equal(sb2, b2)


# --- Beyond Trax's tests ---------------------------------------------------------------


def test_sparse_ff_weight_shapes_follow_trax():
    weights, state = sparse_ff.SparseFF(16, n_elements_in_block=4, d_lowrank=3, mode="eval").init(
        ShapeDtype((2, 3, 8))
    )
    controller, main = sparse_ff_weights(weights)
    assert [w.shape for w in controller] == [(8, 3), (3, 4, 4), (4, 4)]
    assert [w.shape for w in main] == [(8, 4, 4), (4, 4, 8), (8,)]
    remembered, flags = state[0][2]  # The remembering layer: the rows' quant masks, int32.
    assert (
        remembered.shape == (6, 4) and remembered.dtype == np.int32 and flags == {"running_second_time": ()}
    )


def test_sparse_ff_recalls_the_remembered_mask_in_the_second_pass():
    # A reversible model recomputes the block in reverse with the forward pass's state marked as the
    # second pass; the controller then takes the remembered choices, whatever its Gumbel noise says.
    x = normal(2, 3, 8)
    layer = sparse_ff.SparseFF(16, n_elements_in_block=4, d_lowrank=3, temperature=10.0, quant_prob=1.0)
    weights, state = layer.init(signature(x))
    first, first_state = layer.pure_fn(x, weights, state, KEY)
    remembered = first_state[0][2][0]
    assert remembered.shape == (6, 4) and 0 <= remembered.min() and remembered.max() < 4
    other_key = jax.random.PRNGKey(1)
    unmarked, _ = layer.pure_fn(x, weights, first_state, other_key)
    assert np.abs(np.asarray(unmarked - first)).max() > 1e-3  # Other noise, other units.
    serial_state = first_state[0]
    second_pass = ((serial_state[0], serial_state[1], (remembered, {"running_second_time_yes": ()})),)
    recalled, _ = layer.pure_fn(x, weights, second_pass, other_key)
    np.testing.assert_allclose(recalled, first, atol=1e-6)


def test_trained_model_twin_in_predict_mode_equals_eval():
    x = normal(2, 4, 8)
    trained = sparse_ff.SparseFF(16, n_elements_in_block=4, d_lowrank=3, multiply_by_controller_output=True)
    weights, _ = trained.init(signature(x))
    twin_out, _ = run(trained.with_mode("predict"), x, weights=weights)
    eval_out, _ = run(
        sparse_ff.SparseFF(
            16, n_elements_in_block=4, d_lowrank=3, multiply_by_controller_output=True, mode="eval"
        ),
        x,
        weights=weights,
    )
    np.testing.assert_allclose(twin_out, eval_out, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="SparseFF: d_ff must be a multiple of n_elements_in_block"):
        sparse_ff.SparseFF(10, n_elements_in_block=4)
    with pytest.raises(ValueError, match="BlockSparseFF: d_ff must be a multiple of n_experts"):
        sparse_ff.BlockSparseFF(10, n_experts=4)
    with pytest.raises(ValueError, match="SwitchSparseFF: mode must be one of"):
        sparse_ff.SwitchSparseFF(8, n_experts=4, mode="test")
    layer = sparse_ff.BlockSparseFF(8, n_experts=2)
    w, s = layer.init(ShapeDtype((1, 2, 4)))
    with pytest.raises(Exception, match="needs an rng"):
        layer.pure_fn(np.ones((1, 2, 4), np.float32), w, s, None)


# --- The streaming contract ------------------------------------------------------------
# tests/layers/registry.py runs verify_contract on each of the three (SparseFF with chunks and the
# controller's output, its configuration with the most parts); test_sparse_ff_predict_equals_eval
# steps the plain one.
