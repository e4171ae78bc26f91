"""AtariCnn, AtariCnnBody, FrameStackMLP: Trax's signatures and tests (trax/models/atari_cnn_test.py), frame stacking."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl.models import atari_cnn
from trax_sl.shapes import ShapeDtype


def random_init(model, signature, seed=0):
    """Random weights shaped by the abstract init (initializers compile per shape, slowly on CPU)."""
    rng = np.random.default_rng(seed)
    weights, state = model.weights_and_state_signature(signature)
    return jax.tree.map(lambda s: rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype), weights), state


def defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


def test_trax_signatures_and_defaults():
    assert defaults(atari_cnn.AtariCnn) == {
        "n_frames": 4,
        "hidden_sizes": (32, 32),
        "output_size": 128,
        "mode": "train",
    }
    assert defaults(atari_cnn.AtariCnnBody) == {
        "n_frames": 4,
        "hidden_sizes": (32, 64, 64),
        "output_size": 512,
        "mode": "train",
        "kernel_initializer": None,
        "padding": "VALID",
    }
    assert defaults(atari_cnn.FrameStackMLP) == {
        "n_frames": 4,
        "hidden_sizes": (64,),
        "output_size": 64,
        "mode": "train",
    }


def test_atari_cnn_computes():
    # Trax's AtariCnnTest.test_computes: initialized on one frame, run on a (2, 3) batch of trajectories.
    model = atari_cnn.AtariCnn(hidden_sizes=(4, 4), output_size=6)
    obs = (28, 28, 3)
    weights, state = random_init(model, ShapeDtype((1, 1) + obs))
    x = np.arange(2 * 3 * int(np.prod(obs))).reshape((2, 3) + obs)
    y = model(x, weights=weights, state=state)
    assert y.shape == (2, 3, 6)
    assert bool(jnp.all(y >= 0))  # The final Relu.
    # Frames of 4 stacked RGB frames in, two stride-2 'SAME' convolutions: 28 -> 14 -> 7.
    kernels = [w.shape for w in jax.tree.leaves(weights) if w.ndim == 4]
    assert kernels == [(5, 5, 12, 4), (5, 5, 4, 4)]
    assert weights[-2][0].shape == (7 * 7 * 4, 6)


def test_frame_stack_mlp_computes():
    # Trax's FrameStackMLPTest.test_computes.
    model = atari_cnn.FrameStackMLP(hidden_sizes=(4, 4), output_size=6)
    weights, state = random_init(model, ShapeDtype((1, 1, 3)))
    x = np.arange(2 * 3 * 3).reshape((2, 3, 3))
    assert model(x, weights=weights, state=state).shape == (2, 3, 6)


def test_atari_cnn_body_shapes_and_kernel_initializer():
    made = []

    def kernel_initializer(shape, rng):
        del rng
        made.append(tuple(shape))
        return jnp.zeros(shape, jnp.float32)

    model = atari_cnn.AtariCnnBody(
        n_frames=2, hidden_sizes=(2, 3, 4), output_size=5, kernel_initializer=kernel_initializer
    )
    # 'VALID' (DQN): 36 -> 8 (8x8, stride 4) -> 3 (4x4, stride 2) -> 1 (3x3).
    weights, _ = model.weights_and_state_signature(ShapeDtype((1, 2, 36, 36, 3)))
    assert made == [(8, 8, 6, 2), (4, 4, 2, 3), (3, 3, 3, 4)]  # Every Conv's kernels, and only those.
    assert weights[-2][0].shape == (4, 5)
    same = atari_cnn.AtariCnnBody(hidden_sizes=(2, 3, 4), padding="SAME")
    assert same.output_signature(ShapeDtype((1, 2, 36, 36, 1))) == ShapeDtype((1, 2, 512))


def test_frame_stack_is_the_frame_and_those_before_it():
    model = atari_cnn.FrameStackMLP(n_frames=3, hidden_sizes=(), output_size=2)
    x = np.random.default_rng(0).standard_normal((2, 5, 4)).astype(np.float32)
    weights, state = random_init(model, ShapeDtype(x.shape))
    w, b = weights[-1]
    assert w.shape == (3 * 4, 2)
    shifted = [np.concatenate([np.zeros((2, n, 4), np.float32), x[:, : 5 - n]], axis=1) for n in range(3)]
    expected = np.concatenate(shifted, axis=-1) @ np.asarray(w) + np.asarray(b)  # Now, t - 1, t - 2.
    np.testing.assert_allclose(model(x, weights=weights, state=state), expected, atol=1e-5, rtol=1e-5)
    # One frame: nothing to stack.
    assert atari_cnn.FrameStackMLP(n_frames=1, hidden_sizes=(), output_size=2).sublayers[0].name == "Dense_2"


def test_bytes_become_floats_in_unit_range():
    model = atari_cnn.AtariCnn(n_frames=1, hidden_sizes=(1, 1), output_size=1)
    byte = model.sublayers[0]
    assert byte.name == "BytesToFloats"
    np.testing.assert_allclose(byte(np.array([0, 51, 255], np.uint8)), [0.0, 0.2, 1.0], rtol=1e-6)


def test_mode_is_ignored_as_in_trax():
    # Trax deletes `mode`: in every mode the frame stack shifts (a predict-mode ShiftRight would not).
    x = np.random.default_rng(1).standard_normal((2, 5, 3)).astype(np.float32)
    model = atari_cnn.FrameStackMLP(n_frames=3, hidden_sizes=(4,), output_size=3)
    weights, state = random_init(model, ShapeDtype(x.shape), seed=1)
    y = model(x, weights=weights, state=state)
    for mode in ("eval", "predict"):
        other = atari_cnn.FrameStackMLP(n_frames=3, hidden_sizes=(4,), output_size=3, mode=mode)
        np.testing.assert_allclose(other(x, weights=weights, state=state), y, atol=1e-6)
