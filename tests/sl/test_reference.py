"""trax_sl.sl against sequence-layers 0.2: the same weights and inputs give SL's numbers.

The literals below were computed offline by `make_reference.py` (beside this
file) with sequence-layers 0.2 and flax; the tests never import them. Inputs
and weights are deterministic sine patterns (`det`), set into both libraries;
rows have valid lengths [5, 3] (SL's outputs are compared where valid, masked
to zero elsewhere). Each test names the SL layer and configuration it mirrors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import Sequence, sl

# --- SequenceLayers 0.2's outputs (make_reference.py) ------------------------------------------

DENSE_RELU = np.array(
    [
        [
            [0, 0, 0],
            [0.648082, 0.418285, 0.131876],
            [0.478722, 0.61583, 0.669588],
            [0, 0, 0.0606383],
            [0, 0, 0],
        ],
        [
            [0.491425, 0.212015, 0],
            [0.639633, 0.686883, 0.641166],
            [0, 0.039357, 0.283449],
            [0, 0, 0],
            [0, 0, 0],
        ],
    ],
    np.float32,
)
EINSUM_DENSE = np.array(
    [
        [
            [-0.727362, -0.601601, -0.394415],
            [0.684083, 0.486006, 0.22215],
            [-0.407495, -0.240018, -0.0400548],
            [-0.499108, -0.449786, -0.339587],
            [0.70324, 0.529869, 0.284783],
        ],
        [
            [-0.658912, -0.444868, -0.170613],
            [-0.214276, -0.245964, -0.244361],
            [0.610265, 0.488278, 0.300204],
            [0, 0, 0],
            [0, 0, 0],
        ],
    ],
    np.float32,
)
DENSE_SHAPED = np.array(
    [
        [
            [[-0.0100365, 0.0914417, 0.180544], [0.24521, 0.276688, 0.270718]],
            [[0.0614835, 0.213644, 0.336888], [0.414537, 0.436079, 0.398601]],
            [[0.140669, 0.108279, 0.0612342], [0.00590125, -0.0502304, -0.0995636]],
            [[0.0835093, -0.0330297, -0.145098], [-0.237529, -0.29781, -0.317785]],
            [[-0.00604225, 0.0467092, 0.0931388], [0.126962, 0.143602, 0.140806]],
        ],
        [
            [[0.0348783, 0.202478, 0.342674], [0.43649, 0.47123, 0.44219]],
            [[0.131851, 0.150987, 0.149688], [0.12813, 0.0892298, 0.0382528]],
            [[0.108515, -0.0141196, -0.134843], [-0.237317, -0.30767, -0.336382]],
            [[0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0]],
        ],
    ],
    np.float32,
)
CONV1D = np.array(
    [
        [
            [0.0187753, -0.260088, -0.234904, -0.350121],
            [-0.424162, -0.463471, -0.634737, -0.668504],
            [0.309756, 0.254454, 0.417929, 0.416909],
        ],
        [[-0.0621302, 0.168404, 0.255794, 0.418473], [0.263203, 0.129475, 0.321865, 0.262471], [0, 0, 0, 0]],
    ],
    np.float32,
)
CONV1D_MASK = [[True, True, True], [True, True, False]]
LAYER_NORM = np.array(
    [
        [
            [-0.769612, -0.211786, 0.376085, 1.00604],
            [0.419536, 0.387223, -0.0603033, -1.18359],
            [0.645441, 0.193912, -0.318436, -0.93563],
            [-0.380039, -0.503403, -0.045243, 1.34339],
            [-0.737261, -0.251079, 0.332495, 1.06665],
        ],
        [
            [-0.13807, 0.567036, 0.407191, -1.15281],
            [0.614807, 0.22876, -0.278505, -0.98792],
            [0.685649, -0.393971, -0.680187, 0.305051],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)
LAYER_NORM_NO_BIAS = np.array(
    [
        [
            [-0.712831, -0.191436, 0.357244, 0.950154],
            [0.466536, 0.401012, -0.0764877, -1.21793],
            [0.696538, 0.212641, -0.334482, -0.983738],
            [-0.316758, -0.469623, -0.0606753, 1.25358],
            [-0.681343, -0.230802, 0.314176, 1.01157],
        ],
        [
            [-0.0781232, 0.542846, 0.360864, -1.11479],
            [0.666331, 0.247478, -0.294837, -1.03633],
            [0.679208, -0.34402, -0.640765, 0.232733],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)
LAYER_NORM_2_AXES = np.array(
    [
        [
            [[2.18631, 1.23524, 0.115513], [-0.85433, -1.40053, -1.40569]],
            [[-1.5549, -1.18853, -0.456896], [0.482866, 1.38548, 2.01248]],
            [[0.915743, 1.38423, 1.21946], [0.346453, -1.04955, -2.58324]],
            [[2.41374, 0.988922, -0.375448], [-1.23798, -1.32888, -0.666555]],
            [[-1.7244, -1.15116, -0.286258], [0.656496, 1.42159, 1.81331]],
        ],
        [
            [[1.41606, 1.41276, 0.901208], [-0.0594157, -1.24115, -2.3293]],
            [[1.89964, -0.0783621, -1.4347], [-1.61815, -0.496514, 1.56928]],
            [[-1.8989, -1.08795, -0.0775485], [0.854245, 1.44362, 1.54875]],
            [[0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0]],
        ],
    ],
    np.float32,
)
BATCH_NORM_EVAL = np.array(
    [
        [
            [0.247447, 0.624327, 0.762787, 0.709361],
            [1.67817, 1.35767, 0.884381, 0.417971],
            [0.506899, -0.0469521, -0.434611, -0.620648],
            [-1.13623, -1.03501, -0.795396, -0.517605],
            [-0.262926, 0.19043, 0.458171, 0.539701],
        ],
        [
            [1.53857, 1.40072, 1.04628, 0.628393],
            [0.991955, 0.394751, -0.100636, -0.412829],
            [-0.908664, -0.997961, -0.896732, -0.69034],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)
BATCH_NORM_TRAIN = np.array(
    [
        [
            [-0.142084, 0.460275, 0.792579, 0.879908],
            [1.77717, 1.44557, 0.957599, 0.474105],
            [0.205959, -0.441631, -0.832451, -0.972323],
            [-1.99822, -1.76915, -1.32208, -0.828821],
            [-0.826725, -0.122693, 0.379174, 0.643631],
        ],
        [
            [1.5899, 1.5034, 1.17732, 0.767148],
            [0.856639, 0.151825, -0.379201, -0.682905],
            [-1.69295, -1.71937, -1.45961, -1.06938],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)
BATCH_NORM_TRAIN_MEAN = np.array([-0.189769, -0.196736, -0.177075, -0.133449], np.float32)
BATCH_NORM_TRAIN_VAR = np.array([0.846023, 0.90367, 0.973657, 1.0464], np.float32)
GEGLU = np.array(
    [
        [
            [0, 0.207673],
            [0.666513, 0.418944],
            [-0.0546997, 0.0638408],
            [0.144338, 0.106543],
            [-0.0472175, 0.00232719],
        ],
        [[0.703093, 0.66356], [-0.0701498, -0.0529963], [0.168548, 0.143719], [0, 0], [0, 0]],
    ],
    np.float32,
)
GLU = np.array(
    [
        [
            [0, 0.25677],
            [0.6864, 0.60377],
            [0.0669209, -0.0580394],
            [-0.279851, -0.337055],
            [-0.209943, 0.00452208],
        ],
        [[0.649763, 0.685926], [0.234061, 0.0642019], [-0.217288, -0.280993], [0, 0], [0, 0]],
    ],
    np.float32,
)
ADD = np.array(
    [
        [
            [1, 2.36162, 3.67429, 4.8957],
            [1.99588, 2.96128, 3.79657, 4.52404],
            [1.1806, 1.81271, 2.47016, 3.19933],
            [0.036869, 1.00476, 2.10735, 3.33076],
            [0.644746, 2.00681, 3.36796, 4.6793],
        ],
        [
            [1.89871, 2.99648, 3.95937, 4.79243],
            [1.51823, 2.17389, 2.80602, 3.4644],
            [0.195269, 1.03506, 2.00545, 3.11044],
            [0, 0, 0, 0],
            [0, 0, 0, 0],
        ],
    ],
    np.float32,
)
CROSS_ATTENTION = np.array(
    [
        [
            [[-0.00153908, -0.0135485, -0.0237242], [-0.0147499, -0.010445, -0.00472647]],
            [[-0.00345968, -0.0133607, -0.0214535], [-0.00949908, -0.000413425, 0.00872822]],
            [[-0.00279141, -0.00587957, -0.00817193], [-0.0227043, -0.0278355, -0.0291993]],
            [[-0.000924687, -0.00490352, -0.00821867], [-0.0316212, -0.0447892, -0.0518952]],
        ],
        [
            [[-0.106908, -0.0416942, 0.0291628], [0.0974682, 0.150549, 0.183254]],
            [[-0.111067, -0.0457884, 0.0256876], [0.0877586, 0.146587, 0.185576]],
            [[0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0]],
        ],
    ],
    np.float32,
)
LSTM = np.array(
    [
        [
            [0.0887065, 0.0768915, 0.0542149],
            [0.0497658, 0.0653657, 0.0698926],
            [-0.0412161, -0.0279399, -0.0106401],
            [-0.00218146, -0.0192209, -0.0351233],
            [0.0919922, 0.063704, 0.0255758],
        ],
        [
            [0.035103, 0.0447371, 0.0484434],
            [-0.0434593, -0.0256811, -0.00324284],
            [-0.0297482, -0.0398264, -0.045662],
            [0, 0, 0],
            [0, 0, 0],
        ],
    ],
    np.float32,
)
BIDIRECTIONAL_STACK = np.array(
    [
        [
            [[0.758151, 0.607124, 0.373926], [-1.12987, -1.36285, -1.41136]],
            [[-0.0933885, -0.149847, -0.186025], [0.663871, 0.216928, -0.259375]],
            [[-0.16867, -0.232249, -0.264395], [1.07057, 1.2448, 1.25055]],
            [[0.11207, 0.0903586, 0.0564176], [-0.649419, -0.148576, 0.372375]],
            [[0.238262, 0.231263, 0.192965], [-0.701541, -0.794573, -0.780063]],
        ],
        [
            [[0.512657, 0.608772, 0.622492], [0.221647, -0.267971, -0.72132]],
            [[-0.192546, -0.260566, -0.29332], [1.22853, 1.22315, 1.05222]],
            [[0.0339458, 0.00116861, -0.0317668], [-0.17855, 0.332396, 0.798353]],
            [[0.247971, 0.243406, 0.205898], [-1.4406, -1.32025, -1.02122]],
            [[0.0602905, 0.0255996, -0.012556], [-0.120347, -0.365016, -0.560282]],
        ],
    ],
    np.float32,
)
BIDIRECTIONAL_CONCAT = np.array(
    [
        [
            [0.758151, 0.607124, 0.373926, -1.12987, -1.36285, -1.41136],
            [-0.0933885, -0.149847, -0.186025, 0.663871, 0.216928, -0.259375],
            [-0.16867, -0.232249, -0.264395, 1.07057, 1.2448, 1.25055],
            [0.11207, 0.0903586, 0.0564176, -0.649419, -0.148576, 0.372375],
            [0.238262, 0.231263, 0.192965, -0.701541, -0.794573, -0.780063],
        ],
        [
            [0.512657, 0.608772, 0.622492, 0.221647, -0.267971, -0.72132],
            [-0.192546, -0.260566, -0.29332, 1.22853, 1.22315, 1.05222],
            [0.0339458, 0.00116861, -0.0317668, -0.17855, 0.332396, 0.798353],
            [0.247971, 0.243406, 0.205898, -1.4406, -1.32025, -1.02122],
            [0.0602905, 0.0255996, -0.012556, -0.120347, -0.365016, -0.560282],
        ],
    ],
    np.float32,
)
EMBEDDING = np.array(
    [
        [
            [-0.404038, -0.0459104, 0.318431],
            [-0.772317, -0.949764, -0.998665],
            [0.972914, 0.823481, 0.562593],
        ],
        [[0.225561, -0.141999, -0.490341], [0.639674, 0.87434, 0.990668], [0.639674, 0.87434, 0.990668]],
    ],
    np.float32,
)


# --- The same inputs and weights here ---------------------------------------------------------


def det(shape, seed, scale=1.0):
    n = int(np.prod(shape))
    return (scale * np.sin(np.arange(n) * 0.37 + seed)).reshape(shape).astype(np.float32)


def seq_of(values, lengths):
    values = jnp.asarray(values)
    mask = np.arange(values.shape[1])[None, :] < np.asarray(lengths)[:, None]
    return Sequence(values, jnp.asarray(mask))


X = seq_of(det((2, 5, 4), 0.0), [5, 3])
ATOL = 2e-5


def run(layer, x, weights, state=None):
    """The layer's output (invalid steps zeroed) with `weights` (and `state`) in place of its own."""
    _, init_state = layer.init(x)
    y, new_state = layer.pure_fn(x, weights, init_state if state is None else state, None)
    return y, new_state


def assert_matches(y, expected):
    np.testing.assert_allclose(np.asarray(y.mask_invalid().values), expected, atol=ATOL, rtol=ATOL)


def test_dense_with_activation():  # sl.Dense.Config(3, activation=jax.nn.relu)
    y, _ = run(sl.Dense(3, activation=jax.nn.relu), X, (det((4, 3), 1.0, 0.5), det((3,), 2.0, 0.1)))
    assert_matches(y, DENSE_RELU)


def test_einsum_dense_on_heads():  # sl.EinsumDense.Config('...nh,nhd->...d', output_shape=[3], bias_axes='d')
    x = seq_of(det((2, 5, 2, 3), 3.0), [5, 3])
    layer = sl.EinsumDense("...nh,nhd->...d", output_shape=[3], bias_axes="d")
    y, _ = run(layer, x, (det((2, 3, 3), 4.0, 0.5), det((3,), 5.0, 0.1)))
    assert_matches(y, EINSUM_DENSE)


def test_dense_shaped():  # sl.DenseShaped.Config([2, 3])
    y, _ = run(sl.DenseShaped([2, 3]), X, (det((4, 2, 3), 6.0, 0.5), det((2, 3), 7.0, 0.1)))
    assert y.shape == (2, 5, 2, 3)
    assert_matches(y, DENSE_SHAPED)


def test_conv1d_causal_strided_grouped():  # sl.Conv1D.Config(4, 3, strides=2, padding='causal', groups=2)
    x = seq_of(det((2, 6, 4), 8.0), [6, 3])
    layer = sl.Conv1D(4, kernel_size=3, strides=2, padding="causal", groups=2)
    y, _ = run(layer, x, (det((3, 2, 4), 9.0, 0.5), det((4,), 10.0, 0.1)))
    np.testing.assert_array_equal(y.mask, CONV1D_MASK)
    assert_matches(y, CONV1D)


def test_layer_normalization_defaults():  # sl.LayerNormalization.Config()
    y, _ = run(sl.LayerNormalization(), X, (det((4,), 11.0, 0.5) + 1, det((4,), 12.0, 0.1)))
    assert_matches(y, LAYER_NORM)


def test_layer_normalization_without_bias():  # sl.LayerNormalization.Config(use_bias=False, epsilon=1e-3)
    layer = sl.LayerNormalization(use_bias=False, epsilon=1e-3)
    y, _ = run(layer, X, ((), det((4,), 11.0, 0.5) + 1))
    assert_matches(y, LAYER_NORM_NO_BIAS)


def test_layer_normalization_over_two_axes():  # sl.LayerNormalization.Config(axis=(-2, -1))
    x = seq_of(det((2, 5, 2, 3), 3.0), [5, 3])
    weights = ((), det((2, 3), 13.0, 0.5) + 1, det((2, 3), 14.0, 0.1))
    y, _ = run(sl.LayerNormalization(axis=(-2, -1)), x, weights)
    assert_matches(y, LAYER_NORM_2_AXES)


BN_WEIGHTS = (det((4,), 16.0, 0.1), det((4,), 15.0, 0.5) + 1)  # (bias, scale)
BN_STATE = (det((4,), 17.0, 0.2), det((4,), 18.0, 0.2) + 1, jnp.zeros((), jnp.int32))


def test_batch_normalization_eval():  # sl.BatchNormalization.Config(), training=False
    y, _ = run(sl.BatchNormalization(mode="eval"), X, BN_WEIGHTS, BN_STATE)
    assert_matches(y, BATCH_NORM_EVAL)


def test_batch_normalization_train_uses_valid_steps_and_moves_statistics():  # training=True
    y, (mean, var, _) = run(sl.BatchNormalization(mode="train"), X, BN_WEIGHTS, BN_STATE)
    assert_matches(y, BATCH_NORM_TRAIN)
    np.testing.assert_allclose(mean, BATCH_NORM_TRAIN_MEAN, atol=ATOL)
    np.testing.assert_allclose(var, BATCH_NORM_TRAIN_VAR, atol=1e-4)


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (sl.GatedUnit(jax.nn.gelu, None), "GEGLU"),  # sl.GatedUnit.Config(jax.nn.gelu, None)
        (sl.GatedLinearUnit(), "GLU"),  # sl.GatedLinearUnit.Config()
        (sl.Add(np.array([1.0, 2.0, 3.0, 4.0])), "ADD"),  # sl.Add.Config(np.array([1, 2, 3, 4]))
    ],
)
def test_weightless_pointwise(layer, expected):
    y, _ = run(layer, X, ())
    assert_matches(y, globals()[expected])


def test_cross_attention():  # sl.DotProductAttention.Config('source', num_heads=2, units_per_head=3)
    x = seq_of(det((2, 4, 4), 19.0), [4, 2])
    constants = {"source": seq_of(det((2, 3, 6), 20.0), [3, 2])}
    key_value = det((6, 2, 2, 3), 22.0, 0.5)  # SL's key_value_projection: [d, key or value, heads, units].
    weights = (det((4, 2, 3), 21.0, 0.5), key_value[:, 0], key_value[:, 1], (), (), ())
    y, _ = run(sl.DotProductAttention("source", num_heads=2, units_per_head=3), (x, constants), weights)
    assert_matches(y, CROSS_ATTENTION)


def test_lstm():  # sl.LSTM.Config(units=3)
    layer = sl.LSTM(units=3)
    weights, _ = layer.init(X)
    # SL: kernel [d, 4u] and recurrent kernel [u, 4u], gates i, f, g, o; here one kernel on [x, h],
    # Trax's gate order i, j (= g), f, o.
    order = np.concatenate([np.arange(3) + 3 * gate for gate in (0, 2, 1, 3)])
    kernel = np.concatenate([det((4, 12), 23.0, 0.5), det((3, 12), 24.0, 0.5)])[:, order]
    bias = det((12,), 25.0, 0.1)[order]
    y, _ = run(layer, X, jax.tree.unflatten(jax.tree.structure(weights), [kernel, bias]))
    assert_matches(y, LSTM)


@pytest.mark.parametrize("combination", ["STACK", "CONCAT"])
def test_bidirectional(combination):  # sl.Bidirectional.Config(Conv1D causal, Conv1D causal, combination)
    x = seq_of(det((2, 5, 4), 26.0), [5, 5])  # Full rows: SL reverses the physical time axis.
    layer = sl.Bidirectional(
        sl.Conv1D(3, kernel_size=2, padding="causal"),
        sl.Conv1D(3, kernel_size=2, padding="causal"),
        combination=getattr(sl.CombinationMode, combination),
    )
    weights, _ = layer.init(x)
    leaves = [
        det((2, 4, 3), 27.0, 0.5),
        det((3,), 28.0, 0.1),
        det((2, 4, 3), 29.0, 0.5),
        det((3,), 30.0, 0.1),
    ]
    y, _ = run(layer, x, jax.tree.unflatten(jax.tree.structure(weights), leaves))
    assert_matches(y, globals()[f"BIDIRECTIONAL_{combination}"])


def test_embedding():  # sl.Embedding.Config(dimension=3, num_embeddings=5)
    ids = Sequence.from_values(jnp.asarray([[0, 4, 2], [3, 1, 1]], jnp.int32))
    y, _ = run(sl.Embedding(dimension=3, num_embeddings=5), ids, det((5, 3), 31.0))
    assert_matches(y, EMBEDDING)
