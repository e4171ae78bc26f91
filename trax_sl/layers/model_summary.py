"""What a model is: one row per layer, with its output signature and parameter count.

`summary(model, input_signature)` is Trax's "Total number of trainable
weights" and Flax's `tabulate` for the stack: one row per layer in the order
init visits them, then the totals. A row's path is the one a `LayerError` in
that layer names (`TransformerLM > Residual[4] > Dense_512[1]`), written one
step per line and indented by depth; library-internal combinators
(`hidden_in_paths`, such as Branch's Parallel) have no row, as they have no
step in error paths. A row's parameters are those of the layer's weights
subtree, so a combinator's include its sublayers'.

Everything comes from one abstract init (`jax.eval_shape`): summarising a
model allocates no weights and computes nothing, and leaves its interactive
cache alone. Each layer's init already returns what a row needs (weights,
state and output signature), since combinators thread output signatures
through their sublayers' inits as forward threads values; `base.Layer.init_tree`
hands each layer's init to the recorder here while a summary traces.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax

from trax_sl import shapes
from trax_sl.layers import base, repeat
from trax_sl.layers.errors import LayerError


def parameter_count(model_or_weights, input_signature=None) -> int:
    """The number of parameters: the total size of a weights tree's leaves.

    Args:
        model_or_weights: A weights tree (arrays or signatures, e.g. what
            `layer.init` returns or `layer.weights`; the SHARED marks of shared
            layers have no leaves, so shared weights count once), or a layer.
        input_signature: With a layer: the signature (or example inputs) its
            weights are for, counted by abstract evaluation (no init runs).

    Returns:
        The number of scalars in the weights.
    """
    weights = model_or_weights
    if isinstance(model_or_weights, base.Layer):
        if input_signature is None:
            raise TypeError(
                f"parameter_count: {model_or_weights.name} is a layer, whose weights depend on its "
                f"inputs' shapes; pass input_signature=, or pass its weights (layer.weights)"
            )
        weights, _ = model_or_weights.weights_and_state_signature(input_signature)
    return _size_and_bytes(weights)[0]


def summary(
    model: base.Layer,
    input_signature,
    *,
    depth: int | None = None,
    print_fn: Callable[[str], object] | None = print,
) -> str:
    """Prints and returns a table of the model's layers: path, output, parameters.

    One row per layer of the tree, depth first: its path step (`Dense_16[2]`:
    the layer's name and its index in its parent, as `LayerError` paths name
    it) indented by depth, the signature of its outputs (`f32[8,16,32]`;
    `Sequence(f32[8,16,32])` for a Sequence, a tuple for several), and the
    parameters of its weights subtree with their bytes; a `state` column when
    the model has state. Below the table: the total parameters (the size of
    `model.init(input_signature)`'s weights) and state. A layer used twice
    shares its weights: its second use shows `shared`, is counted once, and a
    line below the table says which layer it shares with. Inside a `Repeat`,
    rows count all repeats' stacked weights and show one repeat's output.

    Runs by abstract evaluation (`jax.eval_shape`): no weights are allocated,
    nothing is computed, and the model's interactive weights and state stay
    as they are.

    Args:
        model: The layer to summarise.
        input_signature: What `model.init` takes: a ShapeDtype (a tuple of
            them for n_in > 1, a Sequence of them for Sequence inputs), or
            example inputs.
        depth: Show rows down to this depth (0: the model's row only); deeper
            layers are folded into their parents' counts. None shows all.
        print_fn: Called with the table; None prints nothing.

    Returns:
        The table, as printed.
    """
    if depth is not None and depth < 0:
        raise ValueError(f"summary: depth must be None or >= 0, got depth={depth}")
    try:
        signature = base.as_signature(input_signature)
    except TypeError as e:
        raise LayerError(model, "summary", input_signature, e) from e
    rows = _trace_init(model, signature)
    table = _format(model, signature, rows, depth)
    if print_fn is not None:
        print_fn(table)
    return table


@dataclasses.dataclass(eq=False)
class _Row:
    """One use of a layer in the tree."""

    layer: base.Layer
    path: tuple[str, ...]  # LayerError path steps from the model: ("Serial", "Dense_3[0]").
    shown: bool  # False for library-internal combinators, as in error paths.
    parent: _Row | None  # The nearest shown enclosing row.
    first: _Row | None  # The layer's first use, when this one shares its weights.
    scale: int  # The product of enclosing Repeats' n_repeats: their weights are stacked.
    output: object = None
    params: tuple[int, int] = (0, 0)  # (size, bytes)
    state: tuple[int, int] = (0, 0)

    @property
    def depth(self) -> int:
        return len(self.path) - 1

    @property
    def shares_weights(self) -> bool:
        return self.first is not None and self.first.params[0] > 0


@dataclasses.dataclass
class _OpenInit:
    row: _Row | None  # None: a layer init'ed outside the tree (e.g. a twin for its state).
    next_index: int = 0


class _Recorder:
    """Wraps each layer's init while summary traces the model's: one row per call."""

    def __init__(self):
        self.rows: list[_Row] = []
        self._open: list[_OpenInit] = []
        self._first_use: dict[int, _Row] = {}

    def __call__(self, layer: base.Layer, init):
        def recorded_init(input_signature, rng):
            row = self._enter(layer)
            self._open.append(_OpenInit(row))
            try:
                weights, state, out = init(input_signature, rng)
            finally:
                self._open.pop()
            if row is not None:
                row.output = out
                row.params = _size_and_bytes(weights, row.scale)
                row.state = _size_and_bytes(state, row.scale)
            return weights, state, out

        return recorded_init

    def _enter(self, layer: base.Layer) -> _Row | None:
        if not self._open:
            row = _Row(layer, (layer.name,), shown=True, parent=None, first=None, scale=1)
        else:
            outer = self._open[-1]
            index = None if outer.row is None else _sublayer_index(outer, layer)
            if index is None:
                return None
            parent = outer.row
            scale = parent.scale * (parent.layer.n_repeats if isinstance(parent.layer, repeat.Repeat) else 1)
            shown = not layer.hidden_in_paths
            row = _Row(
                layer,
                parent.path + (f"{layer.name}[{index}]",) if shown else parent.path,
                shown=shown,
                parent=parent if parent.shown else parent.parent,
                first=self._first_use.get(id(layer)),
                scale=scale,
            )
        self._first_use.setdefault(id(layer), row)
        self.rows.append(row)
        return row


def _sublayer_index(outer: _OpenInit, layer: base.Layer) -> int | None:
    """Which sublayer of the open init `layer` is: the next use in order, else any (None: not one)."""
    sublayers = outer.row.layer.sublayers
    later = (i for i in range(outer.next_index, len(sublayers)) if sublayers[i] is layer)
    index = next(later, None)
    if index is None:
        index = next((i for i, sub in enumerate(sublayers) if sub is layer), None)
    if index is not None:
        outer.next_index = index + 1
    return index


def _trace_init(model: base.Layer, signature) -> list[_Row]:
    recorder = _Recorder()
    outer = base._scope.init_recorder
    base._scope.init_recorder = recorder
    try:
        jax.eval_shape(lambda rng: model.init_tree(signature, rng)[:2], base.default_rng())
    finally:
        base._scope.init_recorder = outer
    return recorder.rows


def _size_and_bytes(tree, scale: int = 1) -> tuple[int, int]:
    size = n_bytes = 0
    for leaf in jax.tree.leaves(tree):
        leaf = shapes.signature(leaf)
        n = math.prod(leaf.shape)
        size += n
        n_bytes += n * leaf.dtype.itemsize
    return size * scale, n_bytes * scale


def _bytes_repr(n_bytes: int) -> str:
    """`4.7 MB`: Flax's `tabulate` units (powers of 1000, one decimal)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes > scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,} B"


def _count(size_and_bytes: tuple[int, int]) -> str:
    size, n_bytes = size_and_bytes
    return f"{size:,} ({_bytes_repr(n_bytes)})" if size else "0"


def _format(model: base.Layer, signature, rows: list[_Row], depth: int | None) -> str:
    root = rows[0]
    has_state = root.state[0] > 0
    table = [("path", "output", "params") + (("state",) if has_state else ())]
    for row in rows:
        if not row.shown or (depth is not None and row.depth > depth):
            continue
        cells = ("  " * row.depth + row.path[-1], shapes.short_form(row.output))
        cells += ("shared" if row.shares_weights else _count(row.params),)
        table.append(cells + ((_count(row.state),) if has_state else ()))
    widths = [max(len(cells[i]) for cells in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in table]
    rule = "-" * max(len(line) for line in lines)
    footer = [f"Total parameters: {_count(root.params)}"]
    if has_state:
        footer.append(f"Total state: {_count(root.state)}")
    for row in rows:
        if row.shown and row.shares_weights and not (row.parent and row.parent.shares_weights):
            footer.append(
                f"shared: {' > '.join(row.path)} uses the weights of {' > '.join(row.first.path)}, "
                f"counted once"
            )
    title = f"Summary of {model.name} on inputs {shapes.short_form(signature)}"
    return "\n".join([title, lines[0], rule, *lines[1:], rule, *footer])
