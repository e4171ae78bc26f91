"""Tests of trax_sl.layers.dsp: the streaming contract, hand-checked values, and SequenceLayers 0.2 goldens."""

import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
from trax_sl.layers import base, dsp, streaming, test_utils
from trax_sl.shapes import ShapeDtype

Sequence = trax_sl.Sequence


def wave(batch, time):
    """The waveform the SequenceLayers goldens were computed on."""
    t = np.arange(time, dtype=np.float32).reshape((1, -1))
    b = np.arange(batch, dtype=np.float32).reshape((-1, 1))
    return (np.sin(0.37 * t * (b + 1)) + 0.02 * t - 0.1 * b).astype(np.float32)


def layer_wise(layer, x):
    weights, state = layer.init(base.as_signature(x))
    return layer.pure_fn(x, weights, state, None)[0]


def step_wise(layer, x, block):
    """Runs `layer` in predict mode on blocks of `block` steps; joins the outputs."""
    weights, _ = layer.init(base.as_signature(x))
    predict, state = streaming.start_stream(layer, base.as_signature(x[:, :block]), weights)
    step = jax.jit(lambda b, s: predict.pure_fn(b, weights, s, None))
    outputs = []
    for start in range(0, x.shape[1], block):
        y, state = step(x[:, start : start + block], state)
        outputs.append(y)
    return Sequence.concatenate_sequences(outputs)


# --- The streaming contract ---------------------------------------------------------


@pytest.mark.parametrize(
    "padding",
    ["same", "causal_valid", "reverse_causal_valid", "causal", "reverse_causal", "semicausal", (2, 4)],
)
def test_frame_contract(padding):
    report = test_utils.verify_contract(
        lambda mode: dsp.Frame(7, 3, padding=padding, mode=mode), ShapeDtype((2, 18))
    )
    past, future = {"causal_valid": (6, 0), "causal": (6, 0), "semicausal": (4, 2), "same": (3, 3)}.get(
        padding, padding if isinstance(padding, tuple) else (0, 6)
    )
    assert (report.block_size, report.output_ratio) == (3, Fraction(1, 3))
    # SequenceLayers' Frame.input_latency: the future padding, none for the causal paddings
    # (semicausal included: its future padding is shorter than a step).
    latency = 0 if padding == "semicausal" else future
    assert (report.input_latency, report.output_latency) == (latency, future // 3)
    assert dsp.Frame(7, 3, padding=padding).receptive_field == (past, future)


def test_frame_contract_with_channels_and_short_frames():
    test_utils.verify_contract(
        lambda mode: dsp.Frame(8, 4, padding="causal", mode=mode), ShapeDtype((2, 16, 3))
    )
    # A frame shorter than its step: no buffer for causal framing, a latency for reverse causal.
    report = test_utils.verify_contract(
        lambda mode: dsp.Frame(3, 4, padding="reverse_causal", mode=mode), ShapeDtype((2, 16))
    )
    assert (report.input_latency, report.output_latency) == (2, 0)


@pytest.mark.parametrize("time_padding, fft_padding", [("causal", "center"), ("reverse_causal", "right")])
def test_stft_contract(time_padding, fft_padding):
    def stft(mode, magnitude):
        return dsp.STFT(
            8, 4, 8, time_padding=time_padding, fft_padding=fft_padding, output_magnitude=magnitude, mode=mode
        )

    # Complex outputs: verify_contract differentiates the real and imaginary parts.
    report = test_utils.verify_contract(lambda mode: stft(mode, False), ShapeDtype((2, 32)))
    test_utils.verify_contract(lambda mode: stft(mode, True), ShapeDtype((2, 16)))
    latency = 0 if time_padding == "causal" else 7
    assert (report.block_size, report.output_ratio) == (4, Fraction(1, 4))
    assert (report.input_latency, report.output_latency) == (latency, latency // 4)


def test_linear_to_mel_and_log_mel_frontend_contract():
    test_utils.verify_contract(
        lambda mode: dsp.LinearToMelSpectrogram(4, 8000.0, 20.0, 4000.0), ShapeDtype((2, 8, 9))
    )
    report = test_utils.verify_contract(
        lambda mode: dsp.LogMelFrontend(
            sample_rate=8000.0,
            frame_length=8,
            frame_step=4,
            fft_length=16,
            num_mel_bins=4,
            lower_edge_hertz=20.0,
            upper_edge_hertz=4000.0,
            mode=mode,
        ),
        ShapeDtype((2, 32)),
    )
    assert (report.block_size, report.output_ratio, report.input_latency, report.output_latency) == (
        4,
        Fraction(1, 4),
        0,
        0,
    )


def test_inverse_stft_contract():
    report = test_utils.verify_contract(
        lambda mode: dsp.InverseSTFT(6, 2, 8, fft_padding="center", mode=mode),
        ShapeDtype((2, 6, 5, 2), np.complex64),
    )
    assert (report.block_size, report.output_ratio, report.input_latency, report.output_latency) == (
        1,
        2,
        0,
        0,
    )


def test_paddings_that_do_not_stream():
    for padding in ("valid", "semicausal_full"):
        layer = dsp.Frame(4, 2, padding=padding)
        assert not layer.supports_step
        with pytest.raises(base.LayerError, match="does not stream"):
            layer.with_mode("predict")(np.zeros((1, 4), np.float32))
    assert not dsp.InverseSTFT(4, 2, 4, time_padding="valid").supports_step


def test_predict_mode_blocks_are_multiples_of_frame_step():
    stft = dsp.STFT(8, 4, 8, time_padding="causal", mode="predict")
    stft.init(ShapeDtype((1, 6)))
    with pytest.raises(base.LayerError, match="multiple of block_size=4"):
        stft(np.zeros((1, 6), np.float32))


# --- Frame: hand-checked values --------------------------------------------------------


def test_frame_of_a_ramp():
    x = np.arange(1, 9, dtype=np.float32).reshape((1, 8))
    causal = dsp.Frame(4, 2, padding="causal")(x)
    np.testing.assert_array_equal(causal, [[[0, 0, 0, 1], [0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]]])
    reverse = dsp.Frame(4, 2, padding="reverse_causal")(x)
    np.testing.assert_array_equal(reverse, [[[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 0, 0]]])
    valid = dsp.Frame(4, 2, padding="valid")(x)
    np.testing.assert_array_equal(valid, [[[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8]]])
    assert isinstance(causal, jax.Array)  # The output kind follows the input kind.


def test_frame_never_shows_invalid_samples():
    x = Sequence.from_lengths(jnp.asarray([[1.0, 2.0, 3.0, np.nan, np.nan, np.nan]]), [3])
    y = dsp.Frame(3, 1, padding="causal")(x)
    np.testing.assert_array_equal(y.values[0, :4], [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 0]])
    np.testing.assert_array_equal(y.mask, [[True, True, True, False, False, False]])


# SequenceLayers 0.2's Frame(frame_length=5, frame_step=2) on rows of lengths 12 and 7
# (row 1 holds 13..24): output masks, and row 1's frames.
SL_FRAME = {
    "valid": (
        [[1, 1, 1, 1], [1, 1, 0, 0]],
        [[13, 14, 15, 16, 17], [15, 16, 17, 18, 19], [17, 18, 19, 0, 0], [19, 0, 0, 0, 0]],
    ),
    "same": (
        [[1] * 6, [1, 1, 1, 1, 0, 0]],
        [
            [0, 0, 13, 14, 15],
            [13, 14, 15, 16, 17],
            [15, 16, 17, 18, 19],
            [17, 18, 19, 0, 0],
            [19, 0, 0, 0, 0],
            [0] * 5,
        ],
    ),
    "causal_valid": (
        [[1] * 6, [1, 1, 1, 1, 0, 0]],
        [
            [0, 0, 0, 0, 13],
            [0, 0, 13, 14, 15],
            [13, 14, 15, 16, 17],
            [15, 16, 17, 18, 19],
            [17, 18, 19, 0, 0],
            [19, 0, 0, 0, 0],
        ],
    ),
    "reverse_causal_valid": (
        [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
        [[13, 14, 15, 16, 17], [15, 16, 17, 18, 19], [17, 18, 19, 0, 0], [19, 0, 0, 0, 0], [0] * 5, [0] * 5],
    ),
    "causal": (
        [[1] * 6, [1, 1, 1, 1, 0, 0]],
        [
            [0, 0, 0, 0, 13],
            [0, 0, 13, 14, 15],
            [13, 14, 15, 16, 17],
            [15, 16, 17, 18, 19],
            [17, 18, 19, 0, 0],
            [19, 0, 0, 0, 0],
        ],
    ),
    "reverse_causal": (
        [[1] * 6, [1, 1, 1, 1, 0, 0]],
        [[13, 14, 15, 16, 17], [15, 16, 17, 18, 19], [17, 18, 19, 0, 0], [19, 0, 0, 0, 0], [0] * 5, [0] * 5],
    ),
    "semicausal": (
        [[1] * 6, [1, 1, 1, 1, 0, 0]],
        [
            [0, 0, 0, 13, 14],
            [0, 13, 14, 15, 16],
            [14, 15, 16, 17, 18],
            [16, 17, 18, 19, 0],
            [18, 19, 0, 0, 0],
            [0] * 5,
        ],
    ),
    "semicausal_full": (
        [[1] * 8, [1, 1, 1, 1, 1, 0, 0, 0]],
        [
            [0, 0, 0, 13, 14],
            [0, 13, 14, 15, 16],
            [14, 15, 16, 17, 18],
            [16, 17, 18, 19, 0],
            [18, 19, 0, 0, 0],
            [0] * 5,
            [0] * 5,
            [0] * 5,
        ],
    ),
}


@pytest.mark.parametrize("padding", sorted(SL_FRAME))
def test_frame_matches_sequence_layers(padding):
    x = Sequence.from_lengths(jnp.arange(1, 25, dtype=jnp.float32).reshape((2, 12)), [12, 7])
    y = dsp.Frame(5, 2, padding=padding)(x)
    mask, row1 = SL_FRAME[padding]
    np.testing.assert_array_equal(y.mask, np.asarray(mask, bool))
    np.testing.assert_array_equal(y.values[1], row1)


# --- STFT ----------------------------------------------------------------------------------


def test_hann_window_is_periodic():
    np.testing.assert_allclose(dsp.hann_window(4), [0.0, 0.5, 1.0, 0.5], atol=1e-7)
    np.testing.assert_allclose(dsp.hann_window(4, periodic=False), [0.0, 0.75, 0.75, 0.0], atol=1e-7)


def test_stft_of_a_pure_tone_peaks_at_its_bin():
    # cos(2 pi 3 n / 16) under a periodic Hann window of 16: |X[3]| = 16 / 4, |X[2]| = |X[4]| = 16 / 8.
    n = np.arange(64, dtype=np.float32)
    x = np.cos(2 * np.pi * 3 * n / 16).reshape((1, -1)).astype(np.float32)
    y = dsp.STFT(16, 4, 16, time_padding="reverse_causal", output_magnitude=True)(x)
    assert y.shape == (1, 16, 9) and y.dtype == jnp.float32
    full = (64 - 16) // 4 + 1  # Frames that lie wholly inside the signal.
    expected = np.tile(np.asarray([0, 0, 2, 4, 2, 0, 0, 0, 0], np.float32), (full, 1))
    np.testing.assert_allclose(y[0, :full], expected, atol=2e-5)
    assert np.all(np.argmax(y[0, :full], axis=-1) == 3)


def test_stft_output_dtypes_and_shapes():
    x = np.zeros((2, 16, 3), np.float32)
    y = dsp.STFT(8, 4, 16, time_padding="causal")(x)
    assert y.shape == (2, 4, 9, 3) and y.dtype == jnp.complex64
    y = dsp.STFT(8, 4, 16, time_padding="causal", output_magnitude=True)(x.astype(jnp.bfloat16))
    assert y.shape == (2, 4, 9, 3) and y.dtype == jnp.float32


def test_stft_without_window_is_the_dft_of_each_frame():
    x = wave(1, 16)
    y = dsp.STFT(8, 4, 8, window_fn=None, time_padding="reverse_causal")(x)
    frames = np.stack([np.pad(x[0], (0, 7))[i * 4 : i * 4 + 8] for i in range(4)])
    np.testing.assert_allclose(y[0], np.fft.rfft(frames, axis=-1), atol=1e-5)


def test_stft_receptive_field_skips_the_zero_of_the_window():
    # The periodic Hann window's first sample is zero, so the oldest sample of a causal frame is unseen.
    assert dsp.Frame(8, 4, padding="causal").receptive_field == (7, 0)
    assert dsp.STFT(8, 4, 8, time_padding="causal").receptive_field == (6, 0)
    assert dsp.STFT(8, 4, 4, window_fn=None, time_padding="causal", fft_padding="center").receptive_field == (
        5,
        -2,
    )


# --- Golden numbers from SequenceLayers 0.2 ---------------------------------------------
# sl.STFT(frame_length=6, frame_step=2, fft_length, time_padding, fft_padding).layer on
# wave(2, 12) with lengths [12, 7]: row 0's real and imaginary parts.
STFT_GOLDEN = {
    ("causal", "right", 8): (
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.464783, -0.412481, 0.286212, -0.159942, 0.10764],
            [1.986243, -1.412042, 0.430562, -0.021506, 0.019727],
            [2.996325, -1.592477, 0.079182, 0.000564, 0.029136],
            [2.564674, -1.016162, -0.297923, 0.020095, 0.023305],
            [0.979841, -0.015032, -0.503504, 0.025974, 0.005284],
        ],
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.126269, -0.178572, 0.126269, 0.0],
            [0.0, -0.601099, 0.445318, -0.028676, 0.0],
            [0.0, -1.441779, 0.668168, -0.008231, 0.0],
            [0.0, -1.574047, 0.562446, 0.017866, 0.0],
            [0.0, -0.959206, 0.193914, 0.036861, 0.0],
        ],
    ),
    ("causal", "center", 8): (
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.464783, -0.202382, -0.178572, 0.202382, -0.10764],
            [1.986243, -1.423506, 0.445318, -0.00507, -0.019727],
            [2.996325, -2.145543, 0.668168, -0.006219, -0.029136],
            [2.564674, -1.831554, 0.562446, -0.001577, -0.023305],
            [0.979841, -0.68889, 0.193914, 0.007698, -0.005284],
        ],
        [
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.380954, -0.286212, 0.02381, 0.0],
            [0.0, 0.573424, -0.430562, 0.035483, 0.0],
            [0.0, 0.10656, -0.079182, 0.005421, 0.0],
            [0.0, -0.394485, 0.297923, -0.026842, 0.0],
            [0.0, -0.667632, 0.503504, -0.044431, 0.0],
        ],
    ),
    ("reverse_causal", "right", 8): (
        [
            [2.659048, -1.602839, 0.271195, -0.010982, 0.026205],
            [2.960546, -1.386301, -0.119487, 0.011453, 0.028124],
            [1.870411, -0.536099, -0.431977, 0.025205, 0.015332],
            [0.02162, 0.472571, -0.502824, 0.022183, -0.00548],
            [-0.829868, 0.409304, 0.247377, -0.409304, 0.335113],
            [-0.145167, -0.102648, 0.0, 0.102648, 0.145167],
        ],
        [
            [0.0, -1.091349, 0.594976, -0.019917, 0.0],
            [0.0, -1.608903, 0.65634, 0.004918, 0.0],
            [0.0, -1.345873, 0.400549, 0.028976, 0.0],
            [0.0, -0.470325, -0.028139, 0.040569, 0.0],
            [0.0, 0.65926, -0.578843, 0.164506, 0.0],
            [0.0, 0.102648, 0.145167, 0.102648, 0.0],
        ],
    ),
    ("reverse_causal", "center", 8): (
        [
            [2.659048, -1.905079, 0.594976, -0.006318, -0.026205],
            [2.960546, -2.117929, 0.65634, -0.004621, -0.028124],
            [1.870411, -1.330755, 0.400549, 0.002666, -0.015332],
            [0.02162, 0.001588, -0.028139, 0.013001, 0.00548],
            [-0.829868, 0.755589, -0.578843, 0.405745, -0.335113],
            [-0.145167, 0.0, 0.145167, 0.0, -0.145167],
        ],
        [
            [0.0, 0.361678, -0.271195, 0.021849, 0.0],
            [0.0, -0.157403, 0.119487, -0.011576, 0.0],
            [0.0, -0.572596, 0.431977, -0.038311, 0.0],
            [0.0, -0.666728, 0.502824, -0.044373, 0.0],
            [0.0, 0.176746, -0.247377, 0.173098, 0.0],
            [0.0, 0.145167, 0.0, -0.145167, 0.0],
        ],
    ),
    ("causal", "center", 4): (
        [
            [0.0, 0.0, 0.0],
            [0.286212, 0.0, -0.286212],
            [1.717273, -0.714288, -0.288698],
            [2.767183, -0.897309, -0.258278],
            [2.479525, -0.647595, -0.108454],
            [1.0623, -0.111455, 0.077175],
        ],
        [
            [0.0, 0.0, 0.0],
            [0.0, 0.286212, 0.0],
            [0.0, 0.430562, 0.0],
            [0.0, 0.079182, 0.0],
            [0.0, -0.297923, 0.0],
            [0.0, -0.503504, 0.0],
        ],
    ),
}

SL_MEL_MATRIX_16K = [
    [0.0, 0.0, 0.0, 0.0, 0.0],
    [0.120961, 0.879039, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.918627, 0.081373, 0.0],
    [0.0, 0.0, 0.099748, 0.900252, 0.0],
    [0.0, 0.0, 0.0, 0.478003, 0.521997],
    [0.0, 0.0, 0.0, 0.0, 0.976657],
    [0.0, 0.0, 0.0, 0.0, 0.556559],
    [0.0, 0.0, 0.0, 0.0, 0.195012],
    [0.0, 0.0, 0.0, 0.0, 0.0],
]

SL_LOG_MEL = [
    [-13.815511, -13.815511, -13.815511, -13.815511],
    [-0.02825, 0.371112, 0.34709, -0.699895],
    [0.736497, 1.01123, 0.559999, -1.715642],
    [-0.574207, 0.17333, 0.31184, -1.508217],
]

ISTFT_GOLDEN = {
    ("causal", "right"): [
        0.0,
        0.219562,
        0.241814,
        0.090382,
        0.193354,
        0.046707,
        0.119092,
        0.000071,
        0.060705,
        -0.049362,
        0.039959,
        -0.091918,
    ],
    ("causal", "center"): [
        0.0,
        0.080605,
        -0.08808,
        0.103212,
        -0.091013,
        0.094816,
        -0.059483,
        0.166458,
        -0.023713,
        0.236429,
        0.011685,
        0.2928,
    ],
    ("valid", "right"): [
        0.0,
        0.219562,
        0.241814,
        0.090382,
        0.193354,
        0.046707,
        0.119092,
        0.000071,
        0.060705,
        -0.049362,
        0.039959,
        -0.091918,
        0.064715,
        0.053916,
        0.087222,
        -0.000914,
    ],
    ("valid", "center"): [
        0.0,
        0.080605,
        -0.08808,
        0.103212,
        -0.091013,
        0.094816,
        -0.059483,
        0.166458,
        -0.023713,
        0.236429,
        0.011685,
        0.2928,
        0.042741,
        0.309839,
        -0.002742,
        0.175192,
    ],
}


@pytest.mark.parametrize("time_padding, fft_padding, fft_length", sorted(STFT_GOLDEN))
def test_stft_matches_sequence_layers(time_padding, fft_padding, fft_length):
    x = Sequence.from_lengths(jnp.asarray(wave(2, 12)), [12, 7])
    y = dsp.STFT(6, 2, fft_length, time_padding=time_padding, fft_padding=fft_padding)(x)
    real, imag = STFT_GOLDEN[(time_padding, fft_padding, fft_length)]
    assert y.dtype == jnp.complex64
    np.testing.assert_allclose(y.values[0], np.asarray(real) + 1j * np.asarray(imag), atol=2e-6)
    np.testing.assert_array_equal(y.mask, [[True] * 6, [True] * 4 + [False] * 2])
    magnitude = dsp.STFT(
        6, 2, fft_length, time_padding=time_padding, fft_padding=fft_padding, output_magnitude=True
    )(x)
    np.testing.assert_allclose(magnitude.values[0], np.hypot(real, imag), atol=2e-6)


def test_mel_matrix_matches_sequence_layers():
    matrix = dsp.linear_to_mel_weight_matrix(5, 9, 16000, 125.0, 7600.0)
    assert matrix.shape == (9, 5) and matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, SL_MEL_MATRIX_16K, atol=1e-6)
    # sl.LinearToMelSpectrogram multiplies the last axis by that matrix; so does ours.
    x = Sequence.from_lengths(jnp.asarray(wave(2, 27).reshape((2, 3, 9))), [3, 1])
    y = dsp.LinearToMelSpectrogram(5, 16000, 125.0, 7600.0)(x)
    valid = np.asarray(x.mask)[..., None]  # Invalid steps are zeroed before pointwise math.
    np.testing.assert_allclose(
        np.where(valid, y.values, 0),
        np.where(valid, np.asarray(x.values) @ np.asarray(SL_MEL_MATRIX_16K, np.float32), 0),
        atol=1e-5,
    )
    np.testing.assert_array_equal(y.mask, x.mask)


def test_mel_matrix_by_hand():
    def mel(hz):
        return 1127.0 * math.log(1 + hz / 700.0)

    # 4 bands from 0 to 4000 Hz over bins at 0, 1000, ..., 4000 Hz; band j spans mel edges j to j + 2.
    matrix = dsp.linear_to_mel_weight_matrix(4, 5, 8000, 0.0, 4000.0, dtype=np.float64)
    e = np.linspace(0.0, mel(4000), 6)
    m1, m3 = mel(1000), mel(3000)  # e[2] < m1 < e[3] and e[4] < m3 < e[5].
    expected = np.zeros((5, 4))
    expected[1, 1], expected[1, 2] = (e[3] - m1) / (e[3] - e[2]), (m1 - e[2]) / (e[3] - e[2])
    expected[2, 2], expected[2, 3] = (e[4] - mel(2000)) / (e[4] - e[3]), (mel(2000) - e[3]) / (e[4] - e[3])
    expected[3, 3] = (e[5] - m3) / (e[5] - e[4])
    # DC gets no weight, and 4000 Hz is the top edge of the last band.
    np.testing.assert_allclose(matrix, expected, atol=1e-12)


def test_log_mel_frontend_matches_sequence_layers():
    frontend = dsp.LogMelFrontend(
        sample_rate=8000.0,
        frame_length=8,
        frame_step=4,
        fft_length=16,
        num_mel_bins=4,
        lower_edge_hertz=20.0,
        upper_edge_hertz=4000.0,
    )
    assert frontend.name == "LogMelFrontend"
    x = Sequence.from_lengths(jnp.asarray(wave(2, 16)), [16, 10])
    y = frontend(x)
    np.testing.assert_allclose(y.values[0], SL_LOG_MEL, atol=2e-5)
    np.testing.assert_array_equal(y.mask, [[True] * 4, [True, True, True, False]])


def test_notebook_frontend_streams_block_by_block():
    # The notebook's settings (24 kHz, 1200-sample frames every 300, FFT 2048, 128 mel bins, causal).
    frontend = dsp.LogMelFrontend()
    assert (frontend.block_size, frontend.output_ratio) == (300, Fraction(1, 300))
    assert (frontend.input_latency, frontend.output_latency) == (0, 0)
    rng = np.random.default_rng(0)
    x = Sequence.from_lengths(jnp.asarray(rng.standard_normal((2, 3000)).astype(np.float32)), [3000, 2100])
    expected = layer_wise(frontend, x)
    assert expected.shape == (2, 10, 128)
    actual = step_wise(frontend, x, block=300)
    np.testing.assert_array_equal(actual.mask, expected.mask)
    valid = np.asarray(expected.mask).reshape((2, 10, 1))
    np.testing.assert_allclose(
        np.where(valid, actual.values, 0), np.where(valid, expected.values, 0), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("time_padding, fft_padding", sorted(ISTFT_GOLDEN))
def test_inverse_stft_matches_sequence_layers(time_padding, fft_padding):
    # sl.InverseSTFT(frame_length=6, frame_step=2, fft_length=8) on this spectrum, lengths [6, 4].
    t = np.arange(6, dtype=np.float32).reshape((-1, 1))
    k = np.arange(5, dtype=np.float32).reshape((1, -1))
    z = (np.cos(0.3 * t + k) + 1j * np.sin(0.5 * t - k)).astype(np.complex64)
    x = Sequence.from_lengths(jnp.asarray(np.stack([z, 2 * z])), [6, 4])
    y = dsp.InverseSTFT(6, 2, 8, time_padding=time_padding, fft_padding=fft_padding)(x)
    golden = ISTFT_GOLDEN[(time_padding, fft_padding)]
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y.values[0], golden, atol=2e-6)
    # Row 1's 4 valid frames: causally 4 * 2 samples; 'valid' ends where invalid frame 4 overlaps (sample 8).
    np.testing.assert_array_equal(y.mask[1], [True] * 8 + [False] * (len(golden) - 8))
    assert bool(jnp.all(y.mask[0]))


def test_inverse_stft_inverts_a_causal_stft():
    # Causal frame i ends at sample 2i and overlap-adds back onto samples 2i .. 2i + 7, so x comes
    # back frame_length - 1 = 7 samples late; the inverse window makes the overlapping windows sum to 1.
    x = wave(2, 48)
    spectrum = dsp.STFT(8, 2, 8, time_padding="causal")(x)
    y = dsp.InverseSTFT(8, 2, 8, window_fn=dsp.inverse_stft_window_fn(2))(spectrum)
    assert y.shape == (2, 48)
    np.testing.assert_allclose(y[:, 7:], x[:, :-7], atol=1e-5)
    np.testing.assert_allclose(y[:, :7], 0.0, atol=1e-6)


# --- Constructor errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: dsp.Frame(0, 2), "Frame: frame_length must be an integer >= 1, got frame_length=0"),
        (lambda: dsp.Frame(4, 0), "Frame: frame_step must be an integer >= 1, got frame_step=0"),
        (lambda: dsp.Frame(4, 2, padding="full"), "Frame: padding must be one of"),
        (lambda: dsp.Frame(4, 2, padding=(1, 1)), r"sum to frame_length - 1 = 3, got padding=\(1, 1\)"),
        (lambda: dsp.Frame(4, 2, mode="test"), "Frame: mode must be one of"),
        (lambda: dsp.STFT(8, 4, 0), "STFT: fft_length must be an integer >= 1, got fft_length=0"),
        (lambda: dsp.STFT(8, 4, 8, fft_padding="left"), "STFT: fft_padding must be one of"),
        (lambda: dsp.STFT(8, 4, 8, time_padding="nope"), "STFT: time_padding must be one of"),
        (lambda: dsp.STFT(8, 4, 8, window_fn=lambda n: np.ones(n + 1)), r"must return \[8\] samples"),
        (lambda: dsp.InverseSTFT(4, 8, 8), "InverseSTFT: frame_length must be >= frame_step"),
        (
            lambda: dsp.InverseSTFT(8, 4, 8, time_padding="reverse_causal"),
            "InverseSTFT: time_padding must be",
        ),
        (
            lambda: dsp.LinearToMelSpectrogram(0, 8000, 0, 4000),
            "num_mel_bins must be >= 1, got num_mel_bins=0",
        ),
        (
            lambda: dsp.LinearToMelSpectrogram(4, 8000, 100, 50),
            "lower_edge_hertz must be below upper_edge_hertz",
        ),
        (lambda: dsp.LinearToMelSpectrogram(4, 8000, 0, 5000), "must not exceed the Nyquist frequency"),
        (lambda: dsp.LinearToMelSpectrogram(4, 8000, -1, 4000), "lower_edge_hertz must be >= 0"),
    ],
)
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
