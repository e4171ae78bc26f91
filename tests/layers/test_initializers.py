"""Initializers: shapes, dtypes, determinism and the statistics they promise."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl.layers import initializers as init

RNG = jax.random.PRNGKey(0)
# A large sample: relative errors of sample variances are ~sqrt(2 / N) = 0.2%.
BIG = (512, 1024)
TRUNC_STD = 0.87962566103423978  # stddev of a standard normal truncated to [-2, 2]

ALL = {
    "RandomNormal": init.RandomNormalInitializer(),
    "RandomUniform": init.RandomUniformInitializer(),
    "GlorotNormal": init.GlorotNormalInitializer(),
    "GlorotUniform": init.GlorotUniformInitializer(),
    "LeCunNormal": init.LeCunNormalInitializer(),
    "LeCunUniform": init.LeCunUniformInitializer(),
    "KaimingNormal": init.KaimingNormalInitializer(),
    "KaimingUniform": init.KaimingUniformInitializer(),
    "Orthogonal": init.OrthogonalInitializer(),
    "ScaledTruncated": init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal"),
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4, 5)])
def test_shape_dtype_determinism(name, shape):
    fn = ALL[name]
    a = fn(shape, RNG)
    assert a.shape == shape and a.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(a)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(fn(shape, RNG)))
    assert not np.array_equal(np.asarray(a), np.asarray(fn(shape, jax.random.PRNGKey(1))))


@pytest.mark.parametrize("name", sorted(ALL))
def test_accepts_numpy_int_shapes(name):
    shape = (np.int64(4), np.int32(3))
    assert ALL[name](shape, RNG).shape == (4, 3)


def test_jittable():
    fn = init.GlorotUniformInitializer()
    a = jax.jit(lambda rng: fn((8, 4), rng))(RNG)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(fn((8, 4), RNG)))


# --- Statistics -----------------------------------------------------------------


def _var(a):
    return float(np.var(np.asarray(a, np.float64)))


def test_random_normal_stddev():
    a = np.asarray(init.RandomNormalInitializer(stddev=0.5)(BIG, RNG), np.float64)
    assert abs(a.mean()) < 0.003
    assert a.std() == pytest.approx(0.5, rel=0.005)
    np.testing.assert_array_equal(
        np.asarray(init.RandomNormalInitializer()((4,), RNG)), 0.01 * np.asarray(jax.random.normal(RNG, (4,)))
    )


def test_random_uniform_limits():
    a = np.asarray(init.RandomUniformInitializer(lim=3.0)(BIG, RNG))
    assert a.min() >= -3.0 and a.max() < 3.0
    assert a.min() < -2.99 and a.max() > 2.99
    assert _var(a) == pytest.approx(9.0 / 3.0, rel=0.01)


def test_glorot_uniform_limit_and_variance():
    fan_in, fan_out = BIG
    lim = math.sqrt(6.0 / (fan_in + fan_out))
    a = np.asarray(init.GlorotUniformInitializer()(BIG, RNG))
    assert a.min() >= -lim and a.max() <= lim
    assert a.min() < -0.999 * lim and a.max() > 0.999 * lim
    assert _var(a) == pytest.approx(2.0 / (fan_in + fan_out), rel=0.01)


def test_glorot_uniform_scale():
    fan_in, fan_out = BIG
    a = np.asarray(init.GlorotUniformInitializer(scale=4.0)(BIG, RNG))
    assert np.abs(a).max() <= math.sqrt(4 * 6.0 / (fan_in + fan_out))
    assert _var(a) == pytest.approx(8.0 / (fan_in + fan_out), rel=0.01)


def test_glorot_normal_variance():
    fan_in, fan_out = BIG
    a = init.GlorotNormalInitializer()(BIG, RNG)
    assert _var(a) == pytest.approx(2.0 / (fan_in + fan_out), rel=0.01)


def test_normal_initializers_are_plain_normals_as_in_trax():
    # Trax's Glorot/LeCun/Kaiming normal initializers draw jax.random.normal
    # scaled by sqrt(gain); the same key gives the same numbers.
    shape = (6, 10)
    z = np.asarray(jax.random.normal(RNG, shape), np.float64)
    np.testing.assert_allclose(
        np.asarray(init.GlorotNormalInitializer()(shape, RNG)), z * math.sqrt(2.0 / 16), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(init.LeCunNormalInitializer()(shape, RNG)), z * math.sqrt(1.0 / 6), rtol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(init.KaimingNormalInitializer()(shape, RNG)), z * math.sqrt(2.0 / 6), rtol=1e-6
    )


def test_lecun_variances():
    fan_in = BIG[0]
    assert _var(init.LeCunNormalInitializer()(BIG, RNG)) == pytest.approx(1.0 / fan_in, rel=0.01)
    a = np.asarray(init.LeCunUniformInitializer(scale=2.0)(BIG, RNG))
    assert np.abs(a).max() <= math.sqrt(3 * 2.0 / fan_in)
    assert _var(a) == pytest.approx(2.0 / fan_in, rel=0.01)


def test_kaiming_variances():
    fan_in = BIG[0]
    assert _var(init.KaimingNormalInitializer()(BIG, RNG)) == pytest.approx(2.0 / fan_in, rel=0.01)
    assert _var(init.KaimingUniformInitializer()(BIG, RNG)) == pytest.approx(2.0 / fan_in, rel=0.01)
    # Trax's leaky scale: 2 / sqrt(1 + param**2).
    expected = 2.0 / math.sqrt(1 + 3.0**2) / fan_in
    assert _var(init.KaimingNormalInitializer(param=3.0)(BIG, RNG)) == pytest.approx(expected, rel=0.01)
    assert _var(init.KaimingUniformInitializer(param=3.0)(BIG, RNG)) == pytest.approx(expected, rel=0.01)


def test_fan_out_mode_and_dims():
    fan_out = BIG[1]
    a = init.ScaledInitializer(-1, -2, 1.0, "fan_out", "normal")(BIG, RNG)
    assert _var(a) == pytest.approx(1.0 / fan_out, rel=0.01)
    # Swapping in_dim and out_dim swaps the fans.
    b = init.ScaledInitializer(-2, -1, 1.0, "fan_in", "normal")(BIG, RNG)
    assert _var(b) == pytest.approx(1.0 / fan_out, rel=0.01)


def test_truncated_normal_is_bounded_at_two_stddev():
    fan_in = BIG[0]
    a = np.asarray(init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal")(BIG, RNG))
    # The variance is the requested one; the truncation is at 2 stddev of the
    # underlying (untruncated) normal.
    assert _var(a) == pytest.approx(1.0 / fan_in, rel=0.01)
    bound = 2 * math.sqrt(1.0 / fan_in) / TRUNC_STD
    assert np.abs(a).max() <= bound * (1 + 1e-6)
    assert np.abs(a).max() > 0.99 * bound


def test_receptive_field_counts_in_fans():
    # A [height, width, in, out] conv kernel: fan_in = 3 * 3 * 64.
    shape = (3, 3, 64, 32)
    a = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "normal")(shape, RNG)
    assert _var(a) == pytest.approx(1.0 / (3 * 3 * 64), rel=0.03)
    b = init.GlorotUniformInitializer()(shape, RNG)
    assert np.abs(np.asarray(b)).max() <= math.sqrt(6.0 / (9 * 64 + 9 * 32))
    assert _var(b) == pytest.approx(2.0 / (9 * 64 + 9 * 32), rel=0.03)


def test_nonreceptive_dims():
    shape = (16, 3, 64, 32)  # axis 0 is, e.g., heads: not part of the fan.
    fn = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "normal")
    assert _var(fn(shape, RNG, nonreceptive_dims=0)) == pytest.approx(1.0 / (3 * 64), rel=0.02)
    assert _var(fn(shape, RNG, nonreceptive_dims=[0])) == pytest.approx(1.0 / (3 * 64), rel=0.02)


def test_vector_and_scalar_fans():
    fn = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "uniform")
    a = np.asarray(fn((100_000,), RNG))
    assert np.abs(a).max() <= math.sqrt(3.0 / 100_000)
    s = fn((), RNG)
    assert s.shape == () and abs(float(s)) <= math.sqrt(3.0)


# --- Orthogonal -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 8), (16, 5), (4, 3, 6)])
def test_orthogonal_columns(shape):
    q = np.asarray(init.OrthogonalInitializer()(shape, RNG), np.float64).reshape((-1, shape[-1]))
    np.testing.assert_allclose(q.T @ q, np.eye(shape[-1]), atol=1e-5)


def test_orthogonal_square_is_orthogonal_both_ways_and_scaled():
    q = np.asarray(init.OrthogonalInitializer(stddev=2.0)((6, 6), RNG), np.float64)
    np.testing.assert_allclose(q.T @ q, 4.0 * np.eye(6), atol=1e-5)
    np.testing.assert_allclose(q @ q.T, 4.0 * np.eye(6), atol=1e-5)


def test_orthogonal_wide_has_orthonormal_rows():
    q = np.asarray(init.OrthogonalInitializer()((3, 10), RNG), np.float64)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-5)


def test_orthogonal_is_not_biased_by_qr_signs():
    # The sign correction makes the diagonal of Q's R factor positive, so
    # Q's diagonal is not always of one sign across draws.
    diags = [float(init.OrthogonalInitializer()((4, 4), jax.random.PRNGKey(i))[0, 0]) for i in range(20)]
    assert min(diags) < 0 < max(diags)


def test_orthogonal_vector():
    v = np.asarray(init.OrthogonalInitializer()((5,), RNG), np.float64)
    assert v.shape == (5,)
    assert np.linalg.norm(v) == pytest.approx(1.0, rel=1e-5)


# --- ScaledInitializer arguments ---------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scale": 1.0, "mode": "fan_max", "distribution": "normal"}, "mode"),
        ({"scale": 1.0, "mode": "FAN_IN", "distribution": "normal"}, "mode"),
        ({"scale": 0.0, "mode": "fan_in", "distribution": "normal"}, "scale"),
        ({"scale": -1.0, "mode": "fan_in", "distribution": "normal"}, "scale"),
        ({"scale": float("nan"), "mode": "fan_in", "distribution": "normal"}, "scale"),
        ({"scale": 1.0, "mode": "fan_in", "distribution": "gaussian"}, "distribution"),
        ({"scale": 1.0, "mode": "fan_in", "distribution": None}, "distribution"),
    ],
)
def test_scaled_initializer_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        init.ScaledInitializer(-1, -2, **kwargs)


def test_scaled_initializer_uniform_limit():
    a = np.asarray(init.ScaledInitializer(-1, -2, 3.0, "fan_avg", "uniform")(BIG, RNG))
    lim = math.sqrt(3.0 * 3.0 / (sum(BIG) / 2))
    assert a.max() <= lim and a.min() >= -lim and a.max() > 0.999 * lim


# --- InitializerFromFile -----------------------------------------------------------


def test_initializer_from_file(tmp_path):
    path = tmp_path / "emb.npy"
    expected = np.arange(12, dtype=np.float32).reshape((3, 4))
    np.save(path, expected)
    a = init.InitializerFromFile(str(path))((3, 4), RNG)
    assert a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), expected)
    np.testing.assert_array_equal(np.asarray(init.InitializerFromFile(str(path))((3, 4), None)), expected)


def test_initializer_from_file_refuses_shape_mismatch(tmp_path):
    path = tmp_path / "emb.npy"
    np.save(path, np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        init.InitializerFromFile(str(path))((4, 3), RNG)


def test_initializer_from_file_refuses_pickle(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        init.InitializerFromFile(str(path))((2,), RNG)


def test_initializer_from_file_refuses_npz(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.zeros((2,)), b=np.ones((2,)))
    with pytest.raises(TypeError, match="one array"):
        init.InitializerFromFile(str(path))((2,), RNG)


# --- AtariConvInit -------------------------------------------------------------------


def test_atari_conv_init_bounds():
    shape = (8, 8, 4, 512)
    bound = 1.0 / math.sqrt(8 * 8 * 4)
    a = np.asarray(init.AtariConvInit(shape, RNG))
    assert a.shape == shape and a.dtype == np.float32
    assert a.min() >= -bound and a.max() < bound
    assert a.min() < -0.99 * bound and a.max() > 0.99 * bound
    assert _var(a) == pytest.approx(bound**2 / 3, rel=0.01)
    np.testing.assert_array_equal(a, np.asarray(init.AtariConvInit(shape, RNG)))


def test_atari_conv_init_dtype():
    a = init.AtariConvInit((3, 3, 2, 4), RNG, dtype=jnp.bfloat16)
    assert a.dtype == jnp.bfloat16
