"""Policy, Value, PolicyAndValue, Quality: Trax's signatures and tests (trax/models/rl_test.py), heads by hand."""

import inspect
import types

import jax
import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.models import rl
from trax_sl.shapes import ShapeDtype

# Trax's tests mock the distribution: only its n_inputs is read.
DISTRIBUTION = types.SimpleNamespace(n_inputs=4)


def random_init(model, signature, seed=0):
    """Random weights shaped by the abstract init (initializers compile per shape, slowly on CPU)."""
    rng = np.random.default_rng(seed)
    weights, state = model.weights_and_state_signature(signature)
    return jax.tree.map(lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), weights), state


def dense_kernels(weights):
    return [w.shape for w in jax.tree.leaves(weights) if w.ndim == 2]


def test_trax_signatures_and_defaults():
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    empty = inspect.Parameter.empty
    assert defaults(rl.Policy) == {
        "policy_distribution": empty,
        "body": None,
        "normalizer": None,
        "head_init_range": None,
        "batch_axes": None,
        "mode": "train",
    }
    assert defaults(rl.Value) == {
        "body": None,
        "normalizer": None,
        "inject_actions": False,
        "inject_actions_n_layers": 1,
        "inject_actions_dim": 64,
        "batch_axes": None,
        "mode": "train",
        "is_discrete": False,
        "vocab_size": 2,
        "multiplicative_action_injection": False,
        "head_init_range": None,
    }
    assert defaults(rl.PolicyAndValue) == {
        "policy_distribution": empty,
        "body": None,
        "policy_top": rl.Policy,
        "value_top": rl.Value,
        "normalizer": None,
        "joint": True,
        "mode": "train",
    }
    assert defaults(rl.Quality) == {
        "body": None,
        "normalizer": None,
        "batch_axes": None,
        "mode": "train",
        "n_actions": 2,
        "head_init_range": None,
    }


def test_policy_forward_shape():
    # Trax's test_policy_forward_shape.
    model = rl.Policy(policy_distribution=DISTRIBUTION)
    x = np.ones((2, 3), np.float32)
    weights, state = random_init(model, ShapeDtype(x.shape))
    assert model(x, weights=weights, state=state).shape == (2, 4)


def test_value_forward_shape():
    # Trax's test_value_forward_shape.
    model = rl.Value()
    x = np.ones((2, 3), np.float32)
    weights, state = random_init(model, ShapeDtype(x.shape))
    assert model(x, weights=weights, state=state).shape == (2, 1)


def test_policy_and_value_forward_shape():
    # Trax's test_policy_and_value_forward_shape.
    model = rl.PolicyAndValue(policy_distribution=DISTRIBUTION)
    x = np.ones((2, 3), np.float32)
    weights, state = random_init(model, ShapeDtype(x.shape))
    ys = model(x, weights=weights, state=state)
    assert [y.shape for y in ys] == [(2, 4), (2, 1)]


def test_quality_forward_shape():
    model = rl.Quality(n_actions=5)
    assert model.output_signature(ShapeDtype((2, 3))) == ShapeDtype((2, 5))


def test_policy_is_the_head_after_normalizer_and_body():
    model = rl.Policy(
        DISTRIBUTION,
        body=lambda mode: [tl.Dense(5), tl.Relu()],
        normalizer=lambda mode: tl.Fn("Halve", lambda x: x / 2.0),
    )
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    weights, state = random_init(model, ShapeDtype(x.shape))
    # As Trax's Serial, the tree is flat: Halve, Dense, Relu, the head.
    _, (w1, b1), _, (w2, b2) = weights
    expected = np.maximum((x / 2.0) @ w1 + b1, 0.0) @ w2 + b2
    np.testing.assert_allclose(model(x, weights=weights, state=state), expected, atol=1e-5, rtol=1e-5)


def test_batch_axes_fold_leading_axes_for_the_body():
    # The body sees [batch * time, h, w] (the last two axes kept), then the axes come back.
    def body(mode):
        return tl.Flatten()

    model = rl.Quality(body=body, batch_axes=2, n_actions=3)
    assert "BatchLeadingAxes" in str(model)
    assert model.output_signature(ShapeDtype((2, 7, 4, 5))) == ShapeDtype((2, 7, 3))
    assert dense_kernels(model.weights_and_state_signature(ShapeDtype((2, 7, 4, 5)))[0]) == [(20, 3)]
    # Without batch_axes the Flatten merges time too.
    unbatched = rl.Quality(body=body, n_actions=3)
    assert unbatched.output_signature(ShapeDtype((2, 7, 4, 5))) == ShapeDtype((2, 3))


def test_head_init_range_makes_small_uniform_kernels():
    model = rl.Quality(n_actions=3, head_init_range=1e-3)
    weights, _ = model.init(ShapeDtype((2, 3)))
    w = np.asarray(weights[-1][0])
    assert np.all(np.abs(w) <= 1e-3) and np.std(w) > 1e-4


def test_value_adds_encoded_actions():
    model = rl.Value(inject_actions=True, inject_actions_dim=4, inject_actions_n_layers=2)
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    a = np.random.default_rng(2).standard_normal((2, 2)).astype(np.float32)
    weights, state = random_init(model, (ShapeDtype(x.shape), ShapeDtype(a.shape)))
    # Serial(injector, Dense(1)) (no normalizer or body layers); injector: Parallel(Dense, Dense), Add, MLP.
    ((wx, bx), (wa, ba)), _, mlp = weights[0]
    (w1, b1), _, (w2, b2), _ = mlp
    h = np.maximum((x @ wx + bx + a @ wa + ba) @ w1 + b1, 0.0)
    h = np.maximum(h @ w2 + b2, 0.0)  # out_activation: a Relu after the last MLP layer too.
    w, b = weights[1]
    np.testing.assert_allclose(model((x, a), weights=weights, state=state), h @ w + b, atol=1e-5, rtol=1e-5)


def test_value_multiplies_embedded_discrete_actions():
    model = rl.Value(
        inject_actions=True,
        inject_actions_dim=4,
        is_discrete=True,
        vocab_size=3,
        multiplicative_action_injection=True,
    )
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    a = np.array([2, 0], np.int32)
    weights, state = random_init(model, (ShapeDtype(x.shape), ShapeDtype(a.shape, jnp.int32)))
    ((wx, bx), embedding), (_, (scale, bias)), mlp = weights[0]
    assert embedding.shape == (3, 4)
    g = (x @ wx + bx) * np.tanh(embedding[a])
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6) * scale + bias
    (w1, b1), _ = mlp
    w, b = weights[1]
    expected = np.maximum(g @ w1 + b1, 0.0) @ w + b
    np.testing.assert_allclose(model((x, a), weights=weights, state=state), expected, atol=1e-4, rtol=1e-4)


def test_policy_and_value_share_the_body_when_joint():
    def body(mode):
        return tl.Dense(5)

    joint = rl.PolicyAndValue(DISTRIBUTION, body=body)
    separate = rl.PolicyAndValue(DISTRIBUTION, body=body, joint=False)
    x = ShapeDtype((2, 3))
    assert dense_kernels(joint.weights_and_state_signature(x)[0]) == [(3, 5), (5, 4), (5, 1)]
    assert dense_kernels(separate.weights_and_state_signature(x)[0]) == [(3, 5), (5, 4), (3, 5), (5, 1)]
    assert joint.n_out == separate.n_out == 2


def test_policy_and_value_build_tops_without_body():
    calls = []

    def top(**kwargs):
        calls.append(kwargs)
        return tl.Dense(1)

    rl.PolicyAndValue(DISTRIBUTION, policy_top=top, value_top=top, mode="eval")
    assert calls == [
        {"policy_distribution": DISTRIBUTION, "body": None, "normalizer": None, "mode": "eval"},
        {"body": None, "normalizer": None, "mode": "eval"},
    ]


def test_policy_and_value_stream_with_a_causal_body():
    # With a body that streams (here a causal convolution over time), the heads stream too:
    # predict mode, one time step at a time, gives what eval mode gives on the whole trajectory.
    def model(mode):
        body = lambda mode: [tl.CausalConv(4, 3, mode=mode), tl.Relu()]
        return rl.PolicyAndValue(DISTRIBUTION, body=body, mode=mode)

    x = np.random.default_rng(4).standard_normal((2, 5, 3)).astype(np.float32)
    weights, state = random_init(model("eval"), ShapeDtype(x.shape))
    policy, value = model("eval")(x, weights=weights, state=state)
    predict, stream = tl.start_stream(model("predict"), ShapeDtype((2, 1, 3)), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    outputs = []
    for t in range(5):
        y_t, stream = step(x[:, t : t + 1], stream)
        outputs.append(y_t)
    np.testing.assert_allclose(np.concatenate([p for p, _ in outputs], axis=1), policy, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([v for _, v in outputs], axis=1), value, atol=1e-5, rtol=1e-5)
