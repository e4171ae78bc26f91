"""research.position_encodings: the streaming contract, exact values, Trax parity, and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, test_utils
from trax_sl.layers.research import position_encodings as pe
from trax_sl.shapes import ShapeDtype

# --- The streaming contract -------------------------------------------------------------

CONTRACT_CASES = {
    "AxialPositionalEncoding": (
        lambda mode: pe.AxialPositionalEncoding(shape=(3, 4), d_embs=(2, 2), mode=mode),
        (2, 8, 4),
    ),
    "SinCosPositionalEncoding": (lambda mode: pe.SinCosPositionalEncoding(mode=mode), (2, 8, 4)),
    "FixedBasePositionalEncoding": (
        lambda mode: pe.FixedBasePositionalEncoding(bases=(5, 7), n_digits=2, mode=mode),
        (2, 8, 4),
    ),
    "InfinitePositionalEncoding": (
        lambda mode: pe.InfinitePositionalEncoding(transform="diag", time_bin_length=3, mode=mode),
        (2, 8, 5),
    ),
    "TimeBinPositionalEncoding": (lambda mode: pe.TimeBinPositionalEncoding(3, mode=mode), (2, 8, 4)),
}


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_contract(name):
    layer_fn, shape = CONTRACT_CASES[name]
    report = test_utils.verify_contract(layer_fn, ShapeDtype(shape))
    assert (report.block_size, report.output_ratio, report.input_latency, report.output_latency) == (
        1,
        1,
        0,
        0,
    )
    assert "step-wise == layer-wise" in report.checks and "gradients" in report.checks


def _stream(layer, x, blocks, weights=None):
    """Runs a predict-mode layer over x (a Sequence) in blocks; returns (joined output, final state)."""
    init_weights, state = layer.init(x[:, : blocks[0]])
    weights = init_weights if weights is None else weights
    step = jax.jit(layer.pure_fn)
    outputs, start = [], 0
    for size in blocks:
        y, state = step(x[:, start : start + size], weights, state, None)
        outputs.append(y)
        start += size
    return seq.Sequence.concatenate_sequences(outputs), state


# --- SinCosPositionalEncoding -----------------------------------------------------------


def _sincos_row(p):
    # d=4: div_term = [1, 10000 ** -0.5] = [1, 0.01]; sines first, then cosines.
    return [math.sin(p), math.sin(p / 100), math.cos(p), math.cos(p / 100)]


def test_sincos_adds_sines_then_cosines():
    layer = pe.SinCosPositionalEncoding(mode="eval")
    assert layer.init(ShapeDtype((1, 3, 4))) == ((), ())
    y = layer(jnp.ones((1, 3, 4)))
    np.testing.assert_allclose(y[0], 1.0 + np.array([_sincos_row(p) for p in range(3)]), atol=1e-6)


def test_sincos_predict_mode_counts_each_rows_valid_steps():
    layer = pe.SinCosPositionalEncoding(mode="predict")
    x = seq.Sequence(jnp.zeros((2, 4, 4)), jnp.array([[True] * 4, [True, False, True, True]]))
    y, state = _stream(layer, x, [1, 3])
    np.testing.assert_array_equal(state, [4, 3])  # Trax keeps one scalar for the batch.
    np.testing.assert_allclose(y.values[0], [_sincos_row(p) for p in range(4)], atol=1e-6)
    np.testing.assert_allclose(y.values[1, [0, 2, 3]], [_sincos_row(p) for p in range(3)], atol=1e-6)


def test_sincos_train_mode_offset_and_dropout():
    x = jnp.zeros((2, 3, 4))
    rows = np.array([_sincos_row(p) for p in range(3)], np.float32)
    with pytest.raises(base.LayerError, match="needs an rng"):
        pe.SinCosPositionalEncoding(mode="train").pure_fn(x, (), (), None)
    # start_from_zero_one_in=1: never an offset, so train equals eval.
    no_offset = pe.SinCosPositionalEncoding(start_from_zero_one_in=1, mode="train")
    np.testing.assert_allclose(no_offset(x, rng=jax.random.PRNGKey(0))[0], rows, atol=1e-6)
    # add_offset=1: offsets are always 0 too.
    np.testing.assert_allclose(
        pe.SinCosPositionalEncoding(add_offset=1)(x, rng=jax.random.PRNGKey(3))[1], rows, atol=1e-6
    )
    # Dropout shared along time (dropout_broadcast_dims=(-2,)): each feature kept (x2) or zeroed throughout.
    dropped = np.asarray(pe.SinCosPositionalEncoding(add_offset=1, dropout=0.5)(x, rng=jax.random.PRNGKey(5)))
    for j in range(4):
        kept = np.allclose(dropped[:, :, j], 2 * np.broadcast_to(rows[:, j], (2, 3)), atol=1e-6)
        assert kept or np.all(dropped[:, :, j] == 0)
    np.testing.assert_allclose(pe.SinCosPositionalEncoding(dropout=0.5, mode="eval")(x)[0], rows, atol=1e-6)


# --- AxialPositionalEncoding ----------------------------------------------------------------


def test_axial_concatenates_the_axis_embeddings_of_each_grid_cell():
    layer = pe.AxialPositionalEncoding(shape=(2, 3), d_embs=(1, 2), mode="eval")
    (w0, w1), state = layer.init(ShapeDtype((1, 6, 3)))
    assert (w0.shape, w1.shape, state) == ((1, 2, 1, 1), (1, 1, 3, 2), ())
    w0 = np.array([10.0, 20.0], np.float32).reshape((1, 2, 1, 1))
    w1 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32).reshape((1, 1, 3, 2))
    y = layer(jnp.zeros((1, 6, 3)), weights=(w0, w1))
    # Position p is cell (p // 3, p % 3).
    expected = [[10, 1, 2], [10, 3, 4], [10, 5, 6], [20, 1, 2], [20, 3, 4], [20, 5, 6]]
    np.testing.assert_allclose(y[0], expected)
    # Shorter inputs take the first positions; a stream past the grid gets invalid, zero steps.
    np.testing.assert_allclose(layer(jnp.zeros((1, 2, 3)), weights=(w0, w1))[0], expected[:2])
    streamed, _ = _stream(
        layer.with_mode("predict"), seq.Sequence.from_values(jnp.zeros((1, 8, 3))), [4, 4], weights=(w0, w1)
    )
    np.testing.assert_allclose(streamed.values[0, :6], expected)
    np.testing.assert_array_equal(streamed.mask[0], [True] * 6 + [False] * 2)
    np.testing.assert_array_equal(streamed.values[0, 6:], 0.0)
    assert layer.stream_capacity == 6


def test_axial_errors():
    with pytest.raises(ValueError, match="shape and d_embs must be non-empty and of the same length"):
        pe.AxialPositionalEncoding(shape=(2, 3), d_embs=(4,))
    with pytest.raises(base.LayerError, match=r"sum\(d_embs\) must equal the input depth"):
        pe.AxialPositionalEncoding(shape=(2, 3), d_embs=(1, 2)).init(ShapeDtype((1, 6, 4)))
    with pytest.raises(base.LayerError, match="more than prod\\(shape\\) = 6"):
        pe.AxialPositionalEncoding(shape=(2, 3), d_embs=(1, 2), mode="eval").init(ShapeDtype((1, 7, 3)))
    with pytest.raises(ValueError, match="dropout must be in"):
        pe.AxialPositionalEncoding(dropout=1.0)


# --- FixedBasePositionalEncoding ---------------------------------------------------------------


def test_fixed_base_embeds_digits_and_marks_the_start():
    layer = pe.FixedBasePositionalEncoding(bases=(3, 4), n_digits=2, mode="eval")
    (base_weights, start_vec), _ = layer.init(ShapeDtype((1, 5, 4)))
    assert [[w.shape for w in ws] for ws in base_weights] == [[(1, 2)] * 2] * 2 and start_vec.shape == (
        1,
        1,
        4,
    )
    # As in Trax, every base starts from the same digit vectors.
    np.testing.assert_array_equal(base_weights[0][1], base_weights[1][1])
    weights = (
        ((np.float32([[1, 0]]), np.float32([[0, 1]])), (np.float32([[10, 0]]), np.float32([[0, 10]]))),
        np.float32([[[100, 100, 100, 100]]]),
    )
    y = layer(jnp.zeros((1, 5, 4)), weights=weights)

    # Digit i (least significant first) fills features [2i, 2i + 2); the bases are summed.
    def row(p):
        return [p % 3 + 10 * (p % 4), 0, 0, p // 3 % 3 + 10 * (p // 4 % 4)]

    expected = np.array([row(p) for p in range(5)], np.float32)
    expected[0] += 100  # The start vector marks position 0.
    np.testing.assert_allclose(y[0], expected)


def test_fixed_base_train_mode_shifts_positions_but_keeps_the_start_vector():
    layer = pe.FixedBasePositionalEncoding(
        bases=(5,), n_digits=2, start_from_zero_one_in=10**6, base_dropout_one_in=10**6
    )
    layer.init(ShapeDtype((4, 3, 2)))
    # One feature per digit (weight 1), and a start vector of 100s.
    weights = (((np.float32([[1]]), np.float32([[1]])),), np.float32([[[100, 100]]]))
    y = np.asarray(layer(jnp.zeros((4, 3, 2)), weights=weights, rng=jax.random.PRNGKey(7)))
    starts = []
    for row in y:  # Each row counts on from its own random start; step 0 also gets the start vector.
        p0 = round(float(row[1, 0] + 5 * row[1, 1])) - 1
        starts.append(p0)
        expected = [[(p0 + t) % 5, (p0 + t) // 5 % 5] for t in range(3)]
        np.testing.assert_allclose(row, np.array(expected) + [[100, 100], [0, 0], [0, 0]])
    assert max(starts) > 0 and len(set(starts)) > 1
    with pytest.raises(base.LayerError, match="positions must stay below 25"):
        layer.with_mode("eval").init(ShapeDtype((1, 25, 2)))
    with pytest.raises(base.LayerError, match=r"depth \(3\) must be a multiple of n_digits=2"):
        layer.init(ShapeDtype((1, 4, 3)))


# --- threefry -------------------------------------------------------------------------------


def test_threefry_prf_known_answer_and_prange():
    # Random123's known-answer test for Threefry-2x32 (20 rounds): key 0, counter 0.
    y = pe.threefry_2x32_prf(jnp.zeros((2,), jnp.uint32), jnp.zeros((1, 2), jnp.uint32))
    np.testing.assert_array_equal(y, np.array([[0x6B200159, 0x99BA4EFE]], np.uint32))
    key = jnp.array([1, 2], jnp.uint32)
    counters = jnp.array([[3, 0], [4, 0], [5, 0]], jnp.uint32)
    np.testing.assert_array_equal(pe.threefry_2x32_prange(key, 3, 6), pe.threefry_2x32_prf(key, counters))
    with pytest.raises(TypeError, match="key must be uint32"):
        pe.threefry_2x32_prf(jnp.zeros((2,), jnp.int32), counters)
    with pytest.raises(TypeError, match=r"x must be uint32\[..., 2\]"):
        pe.threefry_2x32_prf(key, jnp.zeros((3,), jnp.uint32))


# --- InfinitePositionalEncoding and TimeBinPositionalEncoding ------------------------------------


def _trax_infinite_embeddings(length, depth, drift, time_bin_length=None):
    """Trax 1.4.1's _get_embeddings(lo=0, hi=length) without a random phase, in numpy."""
    n_pairs = (depth + 1) // 2
    noise_length = 1 << max(0, (length - 1).bit_length())
    key = jax.random.split(jax.random.PRNGKey(234234535))[0]
    noise = np.asarray(pe.threefry_2x32_prange(key, 0, noise_length * n_pairs))
    noise = noise.reshape((noise_length, n_pairs, 2))[:, :, 0].astype(np.float32) / np.float32(2**31 - 1)
    noise = (noise * 3**0.5).cumsum(axis=0)[:length] * drift**0.5
    t, c = np.mgrid[0:length, :depth]
    d = drift ** (n_pairs / (depth // 2)) if depth > 2 else drift
    freq = np.geomspace(0.5, 0.5 * d**2, num=n_pairs)[c // 2]
    cycles = (c % 2) / 4 + freq * t + noise[:, c[0] // 2] / 4
    emb = np.cos(2 * np.pi * cycles)
    if time_bin_length is not None:
        inter, intra = divmod(t[:, -1:], time_bin_length)
        emb = np.concatenate([emb[:, :-3], 1 / (1 + inter), intra / time_bin_length, inter % 2], -1)
    return emb


@pytest.mark.parametrize("depth,time_bin_length", [(5, 4)])
def test_infinite_matches_trax_embeddings(depth, time_bin_length):
    layer = pe.InfinitePositionalEncoding(
        drift=0.03, affine=False, transform="none", time_bin_length=time_bin_length, mode="eval"
    )
    assert layer.init(ShapeDtype((1, 9, depth))) == ((), ())
    y = layer(jnp.zeros((2, 9, depth)))
    expected = _trax_infinite_embeddings(9, depth, 0.03, time_bin_length)
    np.testing.assert_allclose(y[1], expected, atol=2e-5)
    # Predict mode carries the random walk: blocks of 3 give the same.
    streamed, (counts, walk) = _stream(
        layer.with_mode("predict"), seq.Sequence.from_values(jnp.zeros((2, 9, depth))), [3, 3, 3]
    )
    np.testing.assert_allclose(streamed.values[0], expected, atol=2e-5)
    assert counts.tolist() == [9, 9] and walk.shape == (2, (depth + 1) // 2)


def test_infinite_transforms_and_affine_phase():
    x = jnp.zeros((1, 4, 4))
    raw = _trax_infinite_embeddings(4, 4, 0.03)
    diag = pe.InfinitePositionalEncoding(affine=False, transform="diag", mode="eval")
    weights, _ = diag.init(ShapeDtype(x.shape))
    np.testing.assert_allclose(weights, np.full(4, 1e-4))
    np.testing.assert_allclose(
        diag(x, weights=jnp.array([0.0, 1.0, 2.0, 3.0]))[0],
        raw * np.log1p(np.exp([0.0, 1.0, 2.0, 3.0])),
        atol=2e-5,
    )
    # transform='any' (orthogonal init) with affine=True: a random phase per call, in train mode only.
    layer = pe.InfinitePositionalEncoding(transform="any")
    w, _ = layer.init(ShapeDtype(x.shape))
    np.testing.assert_allclose(np.asarray(w) @ np.asarray(w).T, np.eye(4), atol=1e-5)
    with pytest.raises(base.LayerError, match="needs an rng"):
        layer.pure_fn(x, w, (), None)
    assert not np.allclose(layer(x, rng=jax.random.PRNGKey(1)), layer(x, rng=jax.random.PRNGKey(2)))
    np.testing.assert_allclose(layer.with_mode("eval")(x)[0], raw @ np.asarray(w), atol=2e-5)
    with pytest.raises(ValueError, match="transform must be 'any', 'diag' or 'none'"):
        pe.InfinitePositionalEncoding(transform="full")


def test_time_bin_writes_the_last_three_channels():
    layer = pe.TimeBinPositionalEncoding(2, mode="eval")
    x = jnp.arange(20, dtype=jnp.float32).reshape((1, 5, 4))
    y = layer(x)
    # Positions 0..4 in bins of 2: bins 0, 0, 1, 1, 2.
    bins, fractions = [0, 0, 1, 1, 2], [0, 0.5, 0, 0.5, 0]
    expected = [[4 * p, 1 / (1 + b), f, b % 2] for p, b, f in zip(range(5), bins, fractions)]
    np.testing.assert_allclose(y[0], expected, atol=1e-6)
    # Fewer than 3 channels keep the last features only, as in Trax.
    np.testing.assert_allclose(layer(jnp.zeros((1, 5, 2)))[0], [[f, b % 2] for b, f in zip(bins, fractions)])
    assert pe.TimeBinPositionalEncoding.num_features == 3
    with pytest.raises(ValueError, match="time_bin_length must be an integer >= 1"):
        pe.TimeBinPositionalEncoding(0)
