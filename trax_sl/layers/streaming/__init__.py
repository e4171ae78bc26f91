"""The streaming algebra: how layers stream, the window they share, predict-mode checks, start_stream, row resets.

- `spec`: `StreamingSpec`, one value holding a layer's streaming properties
  (DESIGN §5), and its `serial`/`parallel` composition.
- `window`: `TimeWindow`, the one time-window buffer that convolution,
  pooling and framing share (paddings, masks, predict-mode buffer).
- `predict`: the one predict-mode check (a layer that cannot step, a block
  that is not a multiple of block_size) and `start_stream`.
- `rows`: `reset_stream_rows`, restarting some rows (streams) of a batch's
  stream state while the others go on.

Nothing here imports the Layer class: the Layer (`layers/base.py`) builds on
this package, and layers are duck-typed where they are passed in.
"""

from trax_sl.layers.streaming.predict import (
    check_block,
    check_predict_mode,
    check_steps,
    start_stream,
    steps_after_block,
    time_items,
)
from trax_sl.layers.streaming.rows import batch_axes, reset_stream_rows
from trax_sl.layers.streaming.spec import NOT_STREAMING, POINTWISE, StreamingSpec, parallel, serial
from trax_sl.layers.streaming.window import TimeWindow, window_spec

__all__ = [
    "NOT_STREAMING",
    "POINTWISE",
    "StreamingSpec",
    "TimeWindow",
    "batch_axes",
    "check_block",
    "check_predict_mode",
    "check_steps",
    "parallel",
    "reset_stream_rows",
    "serial",
    "start_stream",
    "steps_after_block",
    "time_items",
    "window_spec",
]
