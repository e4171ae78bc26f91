"""The one window sliding along time: paddings, output masks and the predict-mode buffer.

Convolutions, pooling and framing (Frame, STFT) all slide a window of
`size` steps (dilated by `dilation`) along time with a `stride`, after
padding time by a padding mode (SequenceLayers' names and rules; `eff =
(size - 1) * dilation + 1`, `s` the stride):

| padding                  | front, back padding        | output step valid when      |
| ------------------------ | -------------------------- | --------------------------- |
| 'causal'                 | eff - 1, 0                 | its input step is           |
| 'reverse_causal'         | 0, eff - 1                 | its input step is           |
| 'semicausal'             | max(eff - s, 0), the rest  | its input step is           |
| 'same' (SequenceLayers)  | (eff - 1) // 2, the rest   | its input step is           |
| 'SAME' (Trax, lax)       | lax's SAME rule            | its input step is           |
| 'causal_valid'           | eff - 1 (valid), 0         | its whole window is valid   |
| 'reverse_causal_valid'   | 0, eff - 1                 | its whole window is valid   |
| 'VALID'                  | 0, 0                       | its whole window is valid   |
| 'semicausal_full' (framing only) | max(eff - s, 0), eff - 1 | any step of its window is |

Output step j's input step is j * s. One code path serves both modes:
layer-wise the padded input is windowed without further padding; step-wise
the state holds the last `buffer_width` steps (at the start: the front
padding, then `delay` invalid steps) and each block is windowed with the
buffer in front. A padding streams when its layer-wise output has
`time / s` steps: block_size = s, output_ratio = 1/s, output_latency =
delay / s, input_latency as SequenceLayers: eff - 1 for the reverse-causal
paddings, the future padding of an explicit (front, back) pair, else `delay`
(none for the causal ones).
"""

from __future__ import annotations

import dataclasses
import fractions
import functools

import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl.layers.streaming import spec as spec_lib

PADDINGS = ("valid", "same", "causal_valid", "reverse_causal_valid", "causal", "reverse_causal", "semicausal")
LAX_SAME = "lax_same"  # Trax's 'SAME': lax's rule, which depends on the axis length.
SEMICAUSAL_FULL = "semicausal_full"  # SequenceLayers' framing padding that adds a frame at the end.
_AND_MASK = ("valid", "causal_valid", "reverse_causal_valid")
_REVERSE = ("reverse_causal", "reverse_causal_valid")


def normalize_padding(layer_name: str, padding, n: int, trax_same: bool) -> tuple:
    """One padding per windowed axis: a mode name or an explicit (front, back) pair.

    `padding` is a mode (for every axis) or a sequence of n modes or pairs.
    With `trax_same`, 'SAME'/'same' is lax's SAME (Trax); else SequenceLayers'.
    """
    if isinstance(padding, str):
        entries = (padding,) * n
    else:
        entries = tuple(padding)
        if len(entries) != n:
            raise ValueError(
                f"{layer_name}: padding must be a mode name or have {n} entries (one per windowed axis), "
                f"got padding={padding!r}"
            )
    result = []
    for entry in entries:
        if isinstance(entry, str):
            mode = entry.lower()
            if mode not in PADDINGS:
                raise ValueError(
                    f"{layer_name}: padding must be one of {', '.join(repr(p) for p in PADDINGS)} "
                    f"(or 'VALID'/'SAME'), or (front, back) pairs, got padding={entry!r}"
                )
            result.append(LAX_SAME if (mode == "same" and trax_same) else mode)
            continue
        pair = tuple(entry)
        if len(pair) != 2 or any(not isinstance(p, (int, np.integer)) or p < 0 for p in pair):
            raise ValueError(
                f"{layer_name}: an explicit padding must be a (front, back) pair of ints >= 0, got {entry!r}"
            )
        result.append((int(pair[0]), int(pair[1])))
    return tuple(result)


def explicit_padding(padding, kernel_size: int, stride: int, dilation_rate: int, length=None):
    """(front, back) padding of one axis; `length=None`: a length that is a multiple of stride."""
    eff = (kernel_size - 1) * dilation_rate + 1
    if not isinstance(padding, str):
        return padding
    if padding == LAX_SAME:
        n = stride if length is None else length
        total = max((-(-n // stride) - 1) * stride + eff - n, 0)
        return total // 2, total - total // 2
    if padding in ("causal", "causal_valid"):
        return eff - 1, 0
    if padding in _REVERSE:
        return 0, eff - 1
    if padding == "semicausal":
        front = max(eff - stride, 0)
        return front, eff - 1 - front
    if padding == SEMICAUSAL_FULL:
        return max(eff - stride, 0), eff - 1
    if padding == "same":
        return (eff - 1) // 2, eff - 1 - (eff - 1) // 2
    return 0, 0


def _pad_time(x: seq.Sequence, front: int, back: int, front_valid: bool, pad_value) -> seq.Sequence:
    """Pads time with `pad_value`: the front steps valid when `front_valid`, the back ones invalid."""
    pads = [(0, 0), (front, back)] + [(0, 0)] * (x.ndim - 2)
    values = jnp.pad(x.values, pads, constant_values=np.asarray(pad_value, x.dtype))
    mask = jnp.pad(jnp.pad(x.mask, [(0, 0), (front, 0)], constant_values=front_valid), [(0, 0), (0, back)])
    return seq.Sequence(values, mask)


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """A window sliding along time (of a convolution, pooling or framing) and how it streams."""

    size: int
    stride: int = 1
    dilation: int = 1
    padding: str | tuple[int, int] = "valid"

    @property
    def effective_size(self) -> int:
        return (self.size - 1) * self.dilation + 1

    def pads(self, length=None) -> tuple[int, int]:
        """Layer-wise (front, back) padding for `length` steps (None: the streaming one)."""
        return explicit_padding(self.padding, self.size, self.stride, self.dilation, length)

    @property
    def front_valid(self) -> bool:
        """'causal_valid' counts its front padding as valid steps."""
        return self.padding == "causal_valid"

    @property
    def streams(self) -> bool:
        """Whether the layer-wise output has time / stride steps (time a multiple of stride)."""
        if self.padding == SEMICAUSAL_FULL:
            return False
        front, back = self.pads()
        return self.effective_size - self.stride <= front + back <= self.effective_size - 1

    @property
    def delay(self) -> int:
        """Invalid steps the stream starts with, so that each block of s steps gives one output."""
        return self.stride * ((self.effective_size - 1 - self.pads()[0]) // self.stride)

    @property
    def buffer_width(self) -> int:
        return self.pads()[0] + self.delay

    @property
    def receptive_field(self) -> tuple[int, int]:
        front = self.pads()[0]
        return front, self.effective_size - 1 - front

    @property
    def input_latency(self) -> int:
        """SequenceLayers' rule: eff - 1 reverse-causal, the future padding for an explicit pair,
        none for the causal ones (semicausal included); else the `delay` a stream starts with."""
        if self.padding in _REVERSE:
            return self.effective_size - 1
        if not isinstance(self.padding, str):
            return self.receptive_field[1]
        return self.delay

    def spec(self) -> spec_lib.StreamingSpec:
        """The streaming properties of a layer that slides this window along time."""
        if not self.streams:
            front, back = self.pads()
            change = "shortens" if front + back < self.effective_size - self.stride else "lengthens"
            return spec_lib.StreamingSpec(
                block_size=self.stride,
                output_ratio=fractions.Fraction(1, self.stride),
                receptive_field=self.receptive_field,
                supports_step=False,
                why_not=(
                    f"padding {self.padding!r} with a time window of {self.effective_size} and stride "
                    f"{self.stride} {change} the sequence"
                ),
            )
        return spec_lib.StreamingSpec(
            block_size=self.stride,
            output_ratio=fractions.Fraction(1, self.stride),
            input_latency=self.input_latency,
            output_latency=self.delay // self.stride,
            receptive_field=self.receptive_field,
        )

    def initial_state(self, values_signature, pad_value):
        """The predict-mode buffer: the front padding, then `delay` invalid steps."""
        if not self.buffer_width:
            return ()
        batch, rest = values_signature.shape[0], tuple(values_signature.shape[2:])
        empty = seq.Sequence(
            jnp.zeros((batch, 0) + rest, values_signature.dtype), jnp.zeros((batch, 0), bool)
        )
        delayed = _pad_time(empty, self.delay, 0, False, pad_value)
        return _pad_time(delayed, self.pads()[0], 0, self.front_valid, pad_value)

    def stream(self, x: seq.Sequence, state, mode: str, pad_value):
        """(the padded input, its front padding, new state): buffer + block in predict mode."""
        if mode != "predict":
            front, back = self.pads(x.shape[1])
            return _pad_time(x, front, back, self.front_valid, pad_value), front, state
        width = self.buffer_width
        if not width:
            return x, self.pads()[0], state
        joined = seq.Sequence.concatenate_sequences([state, x])
        return joined, self.pads()[0], joined[:, joined.shape[1] - width :]

    def output_mask(self, mask, n_out: int, front: int):
        """The output mask of a window run over a padded mask (SequenceLayers' compute_conv_mask)."""
        if n_out <= 0:
            return mask[:, :0]

        def taps(start):
            return mask[:, start : start + (n_out - 1) * self.stride + 1 : self.stride]

        if self.padding in _AND_MASK:
            return functools.reduce(jnp.logical_and, [taps(i * self.dilation) for i in range(self.size)])
        if self.padding == SEMICAUSAL_FULL:
            return functools.reduce(jnp.logical_or, [taps(i * self.dilation) for i in range(self.size)])
        picked = taps(front)
        return jnp.pad(picked, [(0, 0), (0, n_out - picked.shape[1])])


def window_spec(window: TimeWindow | None) -> spec_lib.StreamingSpec:
    """The spec of a windowed layer; `None`: its window does not run along time, so it cannot step."""
    if window is None:
        return spec_lib.NOT_STREAMING.not_streaming("it does not run along time")
    return window.spec()
