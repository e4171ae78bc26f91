"""Combinators: layers that arrange other layers on the data stack (Trax's `combinators` module).

Stack semantics are Trax's: a layer takes its `n_in` items from the top of
the stack and pushes its `n_out` outputs back. Combinators pass Sequences
through untouched and compose their sublayers' streaming specs.

- `stack`: Serial, Parallel, Branch, Residual, Select/Drop/Dup/Swap, the
  arithmetic on stack items, Concatenate and Split.
- `control_flow`: Scan, Cond, Chunk, Cache, BatchLeadingAxes, Bidirectional.
"""

from trax_sl.layers.base import Fn
from trax_sl.layers.combinators.control_flow import BatchLeadingAxes, Bidirectional, Cache, Chunk, Cond, Scan
from trax_sl.layers.combinators.stack import (
    Add,
    Branch,
    Concatenate,
    Drop,
    Dup,
    FlattenList,
    Gate,
    Multiply,
    Parallel,
    Residual,
    Select,
    Serial,
    SerialWithSideOutputs,
    Split,
    StackOp,
    SubtractTop,
    Swap,
    built_mode,
    inputs_from_stack,
    outputs_onto_stack,
    serial_arity,
)

__all__ = [
    "Add",
    "BatchLeadingAxes",
    "Bidirectional",
    "Branch",
    "Cache",
    "Chunk",
    "Concatenate",
    "Cond",
    "Drop",
    "Dup",
    "FlattenList",
    "Fn",
    "Gate",
    "Multiply",
    "Parallel",
    "Residual",
    "Scan",
    "Select",
    "Serial",
    "SerialWithSideOutputs",
    "Split",
    "StackOp",
    "SubtractTop",
    "Swap",
    "built_mode",
    "inputs_from_stack",
    "outputs_onto_stack",
    "serial_arity",
]
