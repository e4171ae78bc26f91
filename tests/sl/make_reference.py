"""Prints the SequenceLayers 0.2 numbers pasted into test_reference.py. Not a test.

Run with a Python that has sequence-layers 0.2 and flax (trax_sl's tests never
import them): `python tests/sl/make_reference.py`.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import sequence_layers.jax as sl


def det(shape, seed, scale=1.0):
    n = int(np.prod(shape))
    return (scale * np.sin(np.arange(n) * 0.37 + seed)).reshape(shape).astype(np.float32)


def seqof(values, lengths):
    values = jnp.asarray(values)
    mask = np.arange(values.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return sl.Sequence(values, jnp.asarray(mask))


def run(cfg, params, x, extra=None, training=False, constants=None):
    m = cfg.make()
    v = m.init(jax.random.PRNGKey(0), x, training=False, constants=constants)
    v = flax.core.unfreeze(flax.core.meta.unbox(v))
    shapes = jax.tree.map(lambda a: a.shape, v)
    v["params"] = params
    if extra:
        v.update(extra)
    if training:
        y, updates = m.apply(
            v, x, training=True, constants=constants, method=m.layer, mutable=["batch_stats"]
        )
        return y, updates
    y = m.apply(v, x, training=False, constants=constants, method=m.layer)
    return y, shapes


def fmt(a):
    a = np.asarray(a)
    if a.ndim == 0:
        return format(float(a), ".6g")
    return "[" + ", ".join(fmt(b) for b in a) + "]"


def out(name, y):
    vals = np.asarray(y.mask_invalid().values)
    print(f"{name} = np.array({fmt(vals)}, np.float32)")


LEN = [5, 3]
x = seqof(det((2, 5, 4), 0.0), LEN)

y, _ = run(
    sl.Dense.Config(3, activation=jax.nn.relu),
    {"kernel": det((4, 3), 1.0, 0.5), "bias": det((3,), 2.0, 0.1)},
    x,
)
out("DENSE_RELU", y)

x4 = seqof(det((2, 5, 2, 3), 3.0), LEN)
y, _ = run(
    sl.EinsumDense.Config("...nh,nhd->...d", output_shape=[3], bias_axes="d"),
    {"kernel": det((2, 3, 3), 4.0, 0.5), "bias": det((3,), 5.0, 0.1)},
    x4,
)
out("EINSUM_DENSE", y)

y, _ = run(
    sl.DenseShaped.Config([2, 3]), {"kernel": det((4, 2, 3), 6.0, 0.5), "bias": det((2, 3), 7.0, 0.1)}, x
)
out("DENSE_SHAPED", y)

x6 = seqof(det((2, 6, 4), 8.0), [6, 3])
y, _ = run(
    sl.Conv1D.Config(4, kernel_size=3, strides=2, padding="causal", groups=2),
    {"kernel": det((3, 2, 4), 9.0, 0.5), "bias": det((4,), 10.0, 0.1)},
    x6,
)
out("CONV1D", y)
print(f"CONV1D_MASK = {np.asarray(y.mask).tolist()!r}")

y, _ = run(
    sl.LayerNormalization.Config(), {"scale": det((4,), 11.0, 0.5) + 1, "bias": det((4,), 12.0, 0.1)}, x
)
out("LAYER_NORM", y)
y, _ = run(sl.LayerNormalization.Config(use_bias=False, epsilon=1e-3), {"scale": det((4,), 11.0, 0.5) + 1}, x)
out("LAYER_NORM_NO_BIAS", y)
y, _ = run(
    sl.LayerNormalization.Config(axis=(-2, -1)),
    {"scale": det((2, 3), 13.0, 0.5) + 1, "bias": det((2, 3), 14.0, 0.1)},
    x4,
)
out("LAYER_NORM_2_AXES", y)

bn_params = {"BatchNorm_0": {"scale": det((4,), 15.0, 0.5) + 1, "bias": det((4,), 16.0, 0.1)}}
bn_stats = {"batch_stats": {"BatchNorm_0": {"mean": det((4,), 17.0, 0.2), "var": det((4,), 18.0, 0.2) + 1}}}
y, _ = run(sl.BatchNormalization.Config(), bn_params, x, extra=bn_stats)
out("BATCH_NORM_EVAL", y)
y, updates = run(sl.BatchNormalization.Config(), bn_params, x, extra=bn_stats, training=True)
out("BATCH_NORM_TRAIN", y)
stats = updates["batch_stats"]["BatchNorm_0"]
print(f"BATCH_NORM_TRAIN_MEAN = np.array({fmt(stats['mean'])}, np.float32)")
print(f"BATCH_NORM_TRAIN_VAR = np.array({fmt(stats['var'])}, np.float32)")

y, _ = run(sl.GatedUnit.Config(jax.nn.gelu, None), {}, x)
out("GEGLU", y)
y, _ = run(sl.GatedLinearUnit.Config(), {}, x)
out("GLU", y)
y, _ = run(sl.Add.Config(np.array([1.0, 2.0, 3.0, 4.0])), {}, x)
out("ADD", y)

xq = seqof(det((2, 4, 4), 19.0), [4, 2])
source = seqof(det((2, 3, 6), 20.0), [3, 2])
y, _ = run(
    sl.DotProductAttention.Config("source", num_heads=2, units_per_head=3),
    {
        "query_projection": {"kernel": det((4, 2, 3), 21.0, 0.5)},
        "key_value_projection": {"kernel": det((6, 2, 2, 3), 22.0, 0.5)},
    },
    xq,
    constants={"source": source},
)
out("CROSS_ATTENTION", y)

y, _ = run(
    sl.LSTM.Config(units=3),
    {
        "kernel": {"kernel": det((4, 12), 23.0, 0.5)},
        "recurrent_kernel": {"kernel": det((3, 12), 24.0, 0.5)},
        "bias": det((12,), 25.0, 0.1),
    },
    x,
)
out("LSTM", y)

xf = seqof(det((2, 5, 4), 26.0), [5, 5])
fwd = sl.Conv1D.Config(3, kernel_size=2, padding="causal")
bwd = sl.Conv1D.Config(3, kernel_size=2, padding="causal")
bidi = {
    "forward": {"kernel": det((2, 4, 3), 27.0, 0.5), "bias": det((3,), 28.0, 0.1)},
    "backward": {"kernel": det((2, 4, 3), 29.0, 0.5), "bias": det((3,), 30.0, 0.1)},
}
y, _ = run(sl.Bidirectional.Config(fwd, bwd, combination=sl.CombinationMode.STACK), bidi, xf)
out("BIDIRECTIONAL_STACK", y)
y, _ = run(sl.Bidirectional.Config(fwd, bwd, combination=sl.CombinationMode.CONCAT), bidi, xf)
out("BIDIRECTIONAL_CONCAT", y)

ids = sl.Sequence(jnp.asarray([[0, 4, 2], [3, 1, 1]], jnp.int32), jnp.ones((2, 3), bool))
y, _ = run(sl.Embedding.Config(dimension=3, num_embeddings=5), {"embedding": det((5, 3), 31.0)}, ids)
out("EMBEDDING", y)
