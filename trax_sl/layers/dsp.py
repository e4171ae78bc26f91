"""Signal processing front ends: Frame, STFT, InverseSTFT, LinearToMelSpectrogram and LogMelFrontend.

The layers keep SequenceLayers' names and semantics (`sl.Frame`, `sl.STFT`,
`sl.InverseSTFT`, `sl.LinearToMelSpectrogram`), with its config field names
as keyword arguments. Waveforms are `[batch, time, ...channels]` (often just
`[batch, time]`); a frame or spectrum axis is inserted at axis 2.

Framing is a strided convolution-like operation with SequenceLayers' time
paddings. In predict mode a buffer of past samples stands where layer-wise
padding is, so one framing routine serves both modes: the buffer is
concatenated to the block and framed with no padding.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, streaming

PADDINGS = streaming.window.PADDINGS + (streaming.window.SEMICAUSAL_FULL,)
FFT_PADDINGS = ("center", "right")


# --- Array functions (ports of tf.signal, as SequenceLayers' signal.py) ---------------


def _raised_cosine_window(window_length: int, periodic: bool, dtype, a: float, b: float) -> np.ndarray:
    if window_length == 1:
        return np.ones([1], dtype=dtype)
    even = 1 - window_length % 2
    n = np.asarray(window_length + int(periodic) * even - 1, dtype=dtype)
    count = np.arange(window_length, dtype=dtype)
    return a - b * np.cos(2 * np.pi * count / n)


def hann_window(window_length: int, periodic: bool = True, dtype=np.float32) -> np.ndarray:
    """A Hann window of `window_length` samples (periodic by default, for STFTs), as tf.signal."""
    return _raised_cosine_window(window_length, periodic, dtype, 0.5, 0.5)


def inverse_stft_window_fn(frame_step: int, forward_window_fn=hann_window):
    """A window function for InverseSTFT that inverts an STFT using `forward_window_fn`.

    The forward window divided by the overlap-added squared forward window
    (Griffin and Lim, equation 7), as `tf.signal.inverse_stft_window_fn`.
    """

    def window_fn(frame_length: int, dtype=np.float32) -> np.ndarray:
        forward = np.asarray(forward_window_fn(frame_length, dtype=dtype))
        overlaps = -(-frame_length // frame_step)
        denom = np.pad(np.square(forward), [(0, overlaps * frame_step - frame_length)])
        denom = np.tile(np.sum(denom.reshape((overlaps, frame_step)), 0), overlaps)[:frame_length]
        safe = np.where(denom == 0, 1, denom)
        return np.where(denom == 0, 0, forward / safe).astype(dtype)

    return window_fn


def _hertz_to_mel(frequencies_hertz):
    return 1127.0 * np.log(1.0 + frequencies_hertz / 700.0)


def _check_mel_arguments(name: str, num_mel_bins, sample_rate, lower_edge_hertz, upper_edge_hertz) -> None:
    if num_mel_bins <= 0:
        raise ValueError(f"{name}: num_mel_bins must be >= 1, got num_mel_bins={num_mel_bins}")
    if sample_rate <= 0:
        raise ValueError(f"{name}: sample_rate must be > 0, got sample_rate={sample_rate}")
    if lower_edge_hertz < 0:
        raise ValueError(f"{name}: lower_edge_hertz must be >= 0, got lower_edge_hertz={lower_edge_hertz}")
    if lower_edge_hertz >= upper_edge_hertz:
        raise ValueError(
            f"{name}: lower_edge_hertz must be below upper_edge_hertz, got "
            f"lower_edge_hertz={lower_edge_hertz}, upper_edge_hertz={upper_edge_hertz}"
        )
    if upper_edge_hertz > sample_rate / 2:
        raise ValueError(
            f"{name}: upper_edge_hertz must not exceed the Nyquist frequency sample_rate / 2 = "
            f"{sample_rate / 2}, got upper_edge_hertz={upper_edge_hertz}"
        )


def linear_to_mel_weight_matrix(
    num_mel_bins: int = 20,
    num_spectrogram_bins: int = 129,
    sample_rate: float = 8000,
    lower_edge_hertz: float = 125.0,
    upper_edge_hertz: float = 3800.0,
    dtype=np.float32,
) -> np.ndarray:
    """The `[num_spectrogram_bins, num_mel_bins]` matrix of `tf.signal.linear_to_mel_weight_matrix`.

    Triangular bands, linear in mel (HTK's formula), over the `fft_length // 2 + 1`
    bins of a spectrogram; the DC bin gets no weight. Computed in float64.
    """
    _check_mel_arguments(
        "linear_to_mel_weight_matrix", num_mel_bins, sample_rate, lower_edge_hertz, upper_edge_hertz
    )
    linear_frequencies = np.linspace(0.0, sample_rate / 2.0, num_spectrogram_bins, dtype=np.float64)[1:]
    bins_mel = _hertz_to_mel(linear_frequencies)[:, np.newaxis]
    edges = np.linspace(
        _hertz_to_mel(lower_edge_hertz), _hertz_to_mel(upper_edge_hertz), num_mel_bins + 2, dtype=np.float64
    )
    lower, center, upper = edges[:-2][np.newaxis], edges[1:-1][np.newaxis], edges[2:][np.newaxis]
    lower_slopes = (bins_mel - lower) / (center - lower)
    upper_slopes = (upper - bins_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slopes, upper_slopes))
    return np.pad(weights, [[1, 0], [0, 0]]).astype(dtype)


def _frames(values, frame_length: int, frame_step: int, num_frames: int):
    """Frames of `[batch, time, ...]` (no padding): `[batch, num_frames, frame_length, ...]`."""
    starts = (np.arange(num_frames) * frame_step).reshape((-1, 1))
    return jnp.take(values, starts + np.arange(frame_length).reshape((1, -1)), axis=1)


def _overlap_add(frames, frame_step: int):
    """Inverse of framing: `[batch, n, frame_length, ...]` -> `[batch, (n - 1) * frame_step + frame_length, ...]`."""
    batch, n, frame_length = frames.shape[:3]
    channels = tuple(frames.shape[3:])
    segments = -(-frame_length // frame_step)
    pad_tail = [(0, 0)] * len(channels)
    frames = jnp.pad(frames, [(0, 0), (0, 0), (0, segments * frame_step - frame_length)] + pad_tail)
    frames = frames.reshape((batch, n, segments, frame_step) + channels)
    # Segment s of frame i lands on output block i + s.
    blocks = sum(
        jnp.pad(frames[:, :, s], [(0, 0), (s, segments - 1 - s), (0, 0)] + pad_tail) for s in range(segments)
    )
    signal = blocks.reshape((batch, (n + segments - 1) * frame_step) + channels)
    return signal[:, : (n - 1) * frame_step + frame_length]


def _fit_length(values, length: int, padding: str):
    """Zero-pads or trims axis 2 to `length`, at the right or equally on both sides ('center')."""
    size = values.shape[2]
    if size == length:
        return values
    if size < length:
        left = (length - size) // 2 if padding == "center" else 0
        widths = [(0, 0), (0, 0), (left, length - size - left)] + [(0, 0)] * (values.ndim - 3)
        return jnp.pad(values, widths)
    start = (size - length) // 2 if padding == "center" else 0
    return values[:, :, start : start + length]


# --- Framing (shared by Frame and STFT): the shared time window of streaming/window.py ---------


def _check_fft_padding(name: str, fft_padding: str) -> None:
    if fft_padding not in FFT_PADDINGS:
        raise ValueError(
            f"{name}: fft_padding must be one of {FFT_PADDINGS}, got fft_padding={fft_padding!r}"
        )


def _framing_window(
    name: str, frame_length: int, frame_step: int, padding, argument: str = "padding"
) -> streaming.TimeWindow:
    """The time window of frames of `frame_length` samples every `frame_step` (SequenceLayers' Frame).

    `argument` names the constructor argument that set `padding`, for error messages.
    """
    checks.check_positive(name, frame_length=frame_length, frame_step=frame_step)
    if isinstance(padding, str):
        if padding not in PADDINGS:
            raise ValueError(
                f"{name}: {argument} must be one of {PADDINGS} or a (past, future) "
                f"pair, got {argument}={padding!r}"
            )
    else:
        pads = tuple(int(p) for p in padding)
        if len(pads) != 2 or min(pads) < 0 or sum(pads) != frame_length - 1:
            raise ValueError(
                f"{name}: an explicit {argument} must be two numbers >= 0 that sum to "
                f"frame_length - 1 = {frame_length - 1}, got {argument}={padding!r}"
            )
        padding = pads
    return streaming.TimeWindow(frame_length, frame_step, 1, padding)


def _frame(window: streaming.TimeWindow, x: seq.Sequence, state, mode: str):
    """(frames `[batch, frames, frame_length, ...]` as a Sequence, new state), in either mode."""
    padded, front, state = window.stream(x.mask_invalid(), state, mode, 0)
    num_frames = max(0, (padded.shape[1] - window.size) // window.stride + 1)
    values = _frames(padded.values, window.size, window.stride, num_frames)
    return seq.Sequence(values, window.output_mask(padded.mask, num_frames, front)), state


class _Framed(base.Layer):
    """A layer that frames its input first: its streaming properties and state are its window's."""

    handles_sequences = True
    _window: streaming.TimeWindow

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return self._window.spec()

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        return (), self._window.initial_state(seq.values_of(input_signature), 0)


class Frame(_Framed):
    """Overlapping frames of a sequence: `[batch, time, ...]` -> `[batch, frames, frame_length, ...]`.

    n_in=1, n_out=1. Frame i holds the (masked) samples `[i * frame_step - past,
    i * frame_step - past + frame_length)` of the input padded with `past`
    samples in front, as SequenceLayers' Frame; `padding` is one of PADDINGS or
    an explicit `(past, future)` pair summing to `frame_length - 1`. Output mask:
    the mask of the frame's own step for 'same', 'causal', 'reverse_causal',
    'semicausal' and explicit padding; the AND over the frame for 'valid',
    'causal_valid', 'reverse_causal_valid'; the OR for 'semicausal_full'.

    Streams (block_size = frame_step, output_ratio = 1/frame_step) with every
    padding but 'semicausal_full' and 'valid' (unless frame_length <=
    frame_step), with the latencies of the shared time window
    (streaming/window.py, SequenceLayers' rules): input_latency = future
    padding (none for 'causal' and 'semicausal'), output_latency = future
    padding // frame_step.

    Predict mode: the state holds the last `past + frame_step * (future // frame_step)`
    input samples and their mask (none for frame_length 1).
    """

    def __init__(
        self,
        frame_length: int,
        frame_step: int,
        padding: str | tuple[int, int] = "reverse_causal_valid",
        mode: str = "train",
    ):
        checks.check_mode("Frame", mode)
        super().__init__(name=f"Frame_{frame_length}_{frame_step}")
        self._window = _framing_window("Frame", frame_length, frame_step, padding)
        self._mode = mode

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        y, state = _frame(self._window, x, state, self._mode)
        return seq.like_input(y, was_sequence), state


def _window(name: str, window_fn, frame_length: int, dtype=None) -> np.ndarray | None:
    if window_fn is None:
        return None
    window = window_fn(frame_length) if dtype is None else window_fn(frame_length, dtype=dtype)
    window = np.asarray(window)
    if window.shape != (frame_length,):
        raise ValueError(
            f"{name}: window_fn({frame_length}) must return [{frame_length}] samples, "
            f"got shape {window.shape}"
        )
    return window


def _along_axis_2(vector, ndim: int):
    """Reshapes a vector to broadcast along axis 2 of a rank-`ndim` array (no rank promotion)."""
    return jnp.reshape(vector, (1, 1, -1) + (1,) * (ndim - 3))


class STFT(_Framed):
    """Short-time Fourier transform: `[batch, time, ...]` -> `[batch, frames, fft_length // 2 + 1, ...]`.

    n_in=1, n_out=1. Frames the waveform as `Frame(frame_length, frame_step,
    time_padding)`, multiplies each frame by `window_fn(frame_length)` (a
    periodic Hann window by default; None for none), pads or trims it to
    `fft_length` (`fft_padding`: 'right', or 'center' for equally on both
    sides), and takes its real FFT: complex64 output (complex128 for float64
    input), or its magnitude (float) with `output_magnitude=True`. With 'right'
    padding this is `tf.signal.stft`. Each channel in `...` gets its own STFT.
    SequenceLayers' defaults: time_padding='reverse_causal_valid', fft_padding='right'.

    Streams as Frame does (block_size = frame_step, output_ratio = 1/frame_step).

    Predict mode: the state holds the framing buffer (past samples and their mask).
    """

    def __init__(
        self,
        frame_length: int,
        frame_step: int,
        fft_length: int,
        window_fn: Callable | None = hann_window,
        time_padding: str | tuple[int, int] = "reverse_causal_valid",
        fft_padding: str = "right",
        output_magnitude: bool = False,
        mode: str = "train",
        name: str | None = None,
    ):
        checks.check_mode("STFT", mode)
        checks.check_positive("STFT", fft_length=fft_length)
        _check_fft_padding("STFT", fft_padding)
        super().__init__(name=name or "STFT")
        self._window = _framing_window("STFT", frame_length, frame_step, time_padding, "time_padding")
        self._fft_length = fft_length
        self._window_fn = window_fn
        self._fft_padding = fft_padding
        self._output_magnitude = output_magnitude
        self._mode = mode
        _window("STFT", window_fn, frame_length)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return dataclasses.replace(self._window.spec(), receptive_field=self._seen_field())

    def _seen_field(self) -> tuple[int, int]:
        # As SequenceLayers: samples that the window zeroes or the FFT trims are not seen.
        fl = self._window.size
        seen = np.ones(fl, bool) if self._window_fn is None else _window(self.name, self._window_fn, fl) > 0
        if self._fft_length < fl:
            start = (fl - self._fft_length) // 2 if self._fft_padding == "center" else 0
            kept = np.zeros(fl, bool)
            kept[start : start + self._fft_length] = True
            seen = seen & kept
        if not seen.any():
            return self._window.receptive_field
        past = self._window.pads()[0]
        offsets = np.flatnonzero(seen)
        return past - int(offsets[0]), int(offsets[-1]) - past

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        frames, state = _frame(self._window, x, state, self._mode)
        values = frames.values
        if not (values.dtype == jnp.float32 or values.dtype == jnp.float64):
            values = values.astype(jnp.float32)  # The FFT runs in float32 at least.
        window = _window(self.name, self._window_fn, self._window.size)
        if window is not None:
            values = values * _along_axis_2(jnp.asarray(window, values.dtype), values.ndim)
        values = _fit_length(values, self._fft_length, self._fft_padding)
        spectrum = jnp.fft.rfft(values, n=self._fft_length, axis=2)
        if self._output_magnitude:
            spectrum = jnp.abs(spectrum)
        return seq.like_input(seq.Sequence(spectrum, frames.mask), was_sequence), state


class InverseSTFT(base.Layer):
    """Inverse short-time Fourier transform: `[batch, frames, bins, ...]` -> `[batch, samples, ...]`.

    n_in=1, n_out=1. Each frame's spectrum (`bins = fft_length // 2 + 1`,
    complex) goes through an inverse real FFT of `fft_length`, is trimmed or
    zero-padded to `frame_length` (`fft_padding`), multiplied by
    `window_fn(frame_length, dtype=...)` and overlap-added every `frame_step`
    samples, as SequenceLayers' InverseSTFT (`tf.signal.inverse_stft` with
    'right' padding). For an exact inverse of an STFT pass
    `window_fn=inverse_stft_window_fn(frame_step)`.

    time_padding 'causal' (the default) streams: `frames * frame_step` output
    samples (the tail that later frames would complete is dropped), sample mask
    = its frame's mask repeated; block_size 1, output_ratio = frame_step, no
    latency. 'valid' (not streamable) keeps all `(frames - 1) * frame_step +
    frame_length` samples, valid where every frame overlapping them is.

    Predict mode: the state holds the `frame_length - frame_step` overlap-added
    samples that later frames still add to.
    """

    handles_sequences = True

    def __init__(
        self,
        frame_length: int,
        frame_step: int,
        fft_length: int,
        window_fn: Callable | None = hann_window,
        time_padding: str = "causal",
        fft_padding: str = "right",
        mode: str = "train",
    ):
        checks.check_mode("InverseSTFT", mode)
        checks.check_positive(
            "InverseSTFT", frame_length=frame_length, frame_step=frame_step, fft_length=fft_length
        )
        _check_fft_padding("InverseSTFT", fft_padding)
        if frame_length < frame_step:
            raise ValueError(
                f"InverseSTFT: frame_length must be >= frame_step, got "
                f"frame_length={frame_length}, frame_step={frame_step}"
            )
        if time_padding not in ("causal", "valid"):
            raise ValueError(
                f"InverseSTFT: time_padding must be 'causal' or 'valid', got time_padding={time_padding!r}"
            )
        super().__init__(name="InverseSTFT")
        self._frame_length = frame_length
        self._frame_step = frame_step
        self._fft_length = fft_length
        self._window_fn = window_fn
        self._time_padding = time_padding
        self._fft_padding = fft_padding
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        # An output sample sees the frames that overlap it: its own and the earlier ones.
        spec = streaming.StreamingSpec(
            output_ratio=fractions.Fraction(self._frame_step),
            receptive_field=(math.ceil(self._frame_length / self._frame_step) - 1, 0),
        )
        return spec if self._time_padding == "causal" else spec.not_streaming()

    def _tail_shape(self, signature) -> tuple[int, ...]:
        values = seq.values_of(signature)
        return (values.shape[0], self._frame_length - self._frame_step) + tuple(values.shape[3:])

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        values = seq.values_of(input_signature)
        real = jnp.finfo(values.dtype).dtype
        return (), jnp.zeros(self._tail_shape(input_signature), real)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        if x.ndim < 3:
            raise ValueError(f"InverseSTFT expects [batch, frames, bins, ...] input, got shape {x.shape}")
        x = x.mask_invalid()
        frames = jnp.fft.irfft(x.values, n=self._fft_length, axis=2)
        frames = _fit_length(frames, self._frame_length, self._fft_padding)
        window = _window(self.name, self._window_fn, self._frame_length, dtype=frames.dtype)
        if window is not None:
            frames = frames * _along_axis_2(jnp.asarray(window, frames.dtype), frames.ndim)
        signal = _overlap_add(frames, self._frame_step)
        fs = self._frame_step
        if self._time_padding == "valid":
            invalid = (~x.mask).astype(jnp.float32).reshape(x.mask.shape + (1,))
            overlaps = _overlap_add(jnp.broadcast_to(invalid, x.mask.shape + (self._frame_length,)), fs)
            return seq.like_input(seq.Sequence(signal, overlaps == 0), was_sequence), state
        # Causal: the samples that earlier frames (the state, zeros layer-wise) still add to come first.
        tail = jnp.zeros(self._tail_shape(x), signal.dtype) if self._mode != "predict" else state
        widths = [(0, 0), (0, signal.shape[1] - tail.shape[1])] + [(0, 0)] * (signal.ndim - 2)
        signal = signal + jnp.pad(tail, widths)
        done = x.shape[1] * fs
        mask = jnp.repeat(x.mask, fs, axis=1)
        new_state = signal[:, done:] if self._mode == "predict" else state
        return seq.like_input(seq.Sequence(signal[:, :done], mask), was_sequence), new_state


class LinearToMelSpectrogram(base.Layer):
    """Linear-frequency to mel-frequency spectrogram: `[batch, time, ..., bins]` -> `[..., num_mel_bins]`.

    n_in=1, n_out=1. Weightless: multiplies the last axis by
    `linear_to_mel_weight_matrix(num_mel_bins, bins, sample_rate,
    lower_edge_hertz, upper_edge_hertz)` (tf.signal's matrix, computed in
    float64 and cast to the input dtype), as SequenceLayers'
    LinearToMelSpectrogram. Feed it magnitudes, not log magnitudes.

    Predict mode: stateless and pointwise in time (block_size 1).
    """

    def __init__(
        self,
        num_mel_bins: int,
        sample_rate: float,
        lower_edge_hertz: float,
        upper_edge_hertz: float,
        name: str | None = None,
    ):
        _check_mel_arguments(
            "LinearToMelSpectrogram", num_mel_bins, sample_rate, lower_edge_hertz, upper_edge_hertz
        )
        super().__init__(name=name or "LinearToMelSpectrogram")
        self._num_mel_bins = num_mel_bins
        self._sample_rate = sample_rate
        self._lower_edge_hertz = lower_edge_hertz
        self._upper_edge_hertz = upper_edge_hertz

    def forward(self, x, weights, state, rng):
        matrix = linear_to_mel_weight_matrix(
            self._num_mel_bins,
            x.shape[-1],
            self._sample_rate,
            self._lower_edge_hertz,
            self._upper_edge_hertz,
            dtype=np.float64,
        )
        return jnp.einsum("...a,ab->...b", x, jnp.asarray(matrix, x.dtype)), state


def LogMelFrontend(  # noqa: N802 (returns a Layer)
    sample_rate: float = 24000.0,
    frame_length: int = 1200,
    frame_step: int = 300,
    fft_length: int = 2048,
    num_mel_bins: int = 128,
    lower_edge_hertz: float = 20.0,
    upper_edge_hertz: float = 12000.0,
    log_offset: float = 1e-6,
    time_padding: str | tuple[int, int] = "causal",
    fft_padding: str = "center",
    mode: str = "train",
) -> base.Layer:
    """A streamable log-mel spectrogram front end: `[batch, time]` -> `[batch, frames, num_mel_bins]`.

    n_in=1, n_out=1. `log(mel(|STFT(x)|) + log_offset)`: the SequenceLayers
    notebook's "Streamable Log mel Spectrogram Frontend", whose settings are
    the defaults. Streams with block_size = frame_step and output_ratio =
    1/frame_step; 'causal' time padding has no latency.

    Predict mode: the state holds the STFT's framing buffer.
    """
    return combinators.Serial(
        STFT(
            frame_length,
            frame_step,
            fft_length,
            output_magnitude=True,
            time_padding=time_padding,
            fft_padding=fft_padding,
            mode=mode,
        ),
        LinearToMelSpectrogram(num_mel_bins, sample_rate, lower_edge_hertz, upper_edge_hertz),
        base.Fn("AddLogOffset", lambda x: x + log_offset),
        base.Fn("Log", jnp.log),
        name="LogMelFrontend",
    )
