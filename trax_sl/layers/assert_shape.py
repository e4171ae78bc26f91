"""Shape assertions: `AssertShape`, `AssertFunction` and the `assert_shape` decorator (Trax's).

A spec names each axis of each stack item, as einsum does: `'bld,df'` is two
items, `[b, l, d]` and `[d, f]`. The same letter must be the same size
everywhere it appears; a digit is that fixed size (`'...34'` ends in
`[3, 4]`); `'...'` stands for any number of axes (zero included), at most
once per item, and every ellipsis of one check must cover the same sizes.
`AssertFunction('abc->abd', layer)` checks the layer's inputs and outputs
with one set of letters, so `a` and `b` must keep their sizes through it.

Shapes are static in JAX, so every check runs once, while the call is traced;
a compiled call pays nothing for it. A check sees only the items of one call:
in predict mode a spec holds for each block, and a letter on the time axis
may take a different size in each block of a stream.
"""

from __future__ import annotations

import functools
import inspect
import string
import sys

import numpy as np

from trax_sl.layers import base
from trax_sl.layers.combinators import Serial
from trax_sl.layers.errors import LayerError

__all__ = ["AssertFunction", "AssertShape", "assert_shape"]

_ELLIPSIS = "."  # What '...' reads as once parsed (Trax reads a lone '.' as one too).
_SPEC_CHARACTERS = frozenset(string.ascii_letters + string.digits + _ELLIPSIS + ",")


def _parse(where: str, spec) -> tuple[str, ...]:
    """The per-item specs of `spec`, each with '...' as one '.'; raises at once on a character specs lack."""
    if not isinstance(spec, str):
        raise TypeError(f"{where}: spec must be a string such as '...d,df', got {spec!r}")
    spec = spec.replace("...", _ELLIPSIS)
    unknown = sorted(set(spec) - _SPEC_CHARACTERS)
    if unknown:
        raise ValueError(
            f"{where}: spec {spec!r} may hold letters (named sizes), digits (fixed sizes), "
            f"'...' and ',' only; got {unknown}"
        )
    return tuple(spec.split(","))


def _same(a, b) -> bool:
    # A symbolic size (jax.export) compares equal only to itself; unequal may still be equal at run
    # time, so a check it takes part in passes (as Trax skips sizes it cannot read).
    return a == b or not (isinstance(a, (int, np.integer)) and isinstance(b, (int, np.integer)))


def _bind(specs: tuple[str, ...], shapes: list[tuple], dims: dict, kind: str) -> dict:
    """Binds the letters and the ellipsis of `specs` to `shapes`, given `dims` bound before.

    Returns the bindings, `dims` included (`dims` itself is left as it was);
    raises ValueError saying which item and axis disagree.
    """
    dims = dict(dims)

    def check(item: int, spec: str, sizes: tuple, first_axis: int) -> None:
        for axis, (letter, size) in enumerate(zip(spec, sizes), first_axis):
            expected = int(letter) if letter.isdigit() else dims.setdefault(letter, size)
            if not _same(size, expected):
                name = "the spec fixes" if letter.isdigit() else f"{letter!r} is"
                raise ValueError(f"{kind} {item} has size {size} on axis {axis} where {name} {expected}")

    for item, (spec, shape) in enumerate(zip(specs, shapes)):
        shape = tuple(shape)
        n_ellipses = spec.count(_ELLIPSIS)
        if n_ellipses > 1:
            # Trax raises this when the layer runs, not when it is built; Trax code relies on that.
            raise ValueError(f"{kind} {item}: its spec has {n_ellipses} ellipses; write at most one '...'")
        rank = len(spec) - n_ellipses
        if len(shape) != rank and not (n_ellipses and len(shape) > rank):
            at_least = "at least " if n_ellipses else ""
            raise ValueError(f"{kind} {item} has rank {len(shape)} where the spec asks for {at_least}{rank}")
        if not n_ellipses:
            check(item, spec, shape, 0)
            continue
        before, after = spec.split(_ELLIPSIS)
        end = len(shape) - len(after)
        check(item, before, shape[: len(before)], 0)
        check(item, after, shape[end:], end)
        covered = shape[len(before) : end]
        expected = dims.setdefault(_ELLIPSIS, covered)
        if len(covered) != len(expected) or not all(map(_same, covered, expected)):
            raise ValueError(
                f"{kind} {item}: '...' covers sizes {covered} where an earlier '...' covers {expected}"
            )
    return dims


def _item_shapes(x, n: int) -> list[tuple]:
    """The shapes of n layer-packaged stack items (a Sequence's are its values')."""
    return [tuple(item.shape) for item in base.as_items(x, n)]


def _failure(who: str, spec: str, shapes: list[tuple], reason: ValueError, message) -> ValueError:
    shown = ", ".join(str(shape) for shape in shapes)
    extra = f" ({message})" if message else ""
    return ValueError(f"{who}: shapes {shown} do not match the spec {spec!r}: {reason}{extra}")


class AssertShape(base.Layer):
    """Checks the shapes of its inputs against a spec and returns them unchanged.

    n_in = n_out = the number of items in `spec` (`'aba,ba'`: two). See the
    module docstring for specs: letters, digits, '...', ','. Sequences are
    checked by the shape of their values and pass through as they are.
    A mismatch raises `LayerError` when the layer is traced (shapes are
    static, so the check costs nothing per compiled call).

    Predict mode: stateless; streams with block_size 1. Each call (block) is
    checked on its own, so the time axis may differ between blocks.
    """

    handles_sequences = True

    def __init__(self, spec: str, message: str | None = None, visible_layer: bool = False):
        """Returns a layer that asserts `spec` on its inputs.

        Args:
            spec: One spec per input, separated by ','; e.g. `'...d,df'`.
            message: Text to add to the error when the check fails; the
                error names where the layer was created in any case.
            visible_layer: Trax's switch to show the layer when printing a
                model; here it always has a name (error paths show it).
        """
        specs = _parse("AssertShape", spec)
        super().__init__(n_in=len(specs), n_out=len(specs), name="AssertShape")
        self._spec_text = spec
        self._specs = specs
        self._message = message
        self._visible_layer = visible_layer

    def _check(self, inputs) -> None:
        shapes = _item_shapes(inputs, self.n_in)
        try:
            _bind(self._specs, shapes, {}, "input")
        except ValueError as e:
            raise _failure(self.name, self._spec_text, shapes, e, self._message) from None

    def forward(self, inputs, weights, state, rng):
        self._check(inputs)
        return inputs, state

    def __call__(self, x, weights=None, state=None, rng=None):
        """Checks `x` and returns it, the very object given (as Trax's): nothing to compile or run."""
        items = tuple(x) if isinstance(x, list) and self.n_in > 1 else x
        try:
            self._check(items)
        except ValueError as e:
            raise LayerError(self, "__call__", items, e) from e
        return x


class _AssertFunction(Serial):
    """`Serial(AssertShape(inputs), layer, AssertShape(outputs))` that also checks the letters they share."""

    def __init__(self, input_spec: str, layer: base.Layer, output_spec: str, message: str | None):
        self._specification = f"{input_spec}->{output_spec}"
        self._input_specs = _parse("AssertFunction", input_spec)
        self._output_specs = _parse("AssertFunction", output_spec)
        super().__init__(
            AssertShape(input_spec, message=message),
            layer,
            AssertShape(output_spec, message=message),
            name="AssertFunction",
            sublayers_to_print=[layer],
        )
        self._message = message

    def forward(self, xs, weights, state, rng):
        outputs, new_state = super().forward(xs, weights, state, rng)
        self._check_link(xs, outputs)
        return outputs, new_state

    def init_with_output_signature(self, input_signature, rng):
        weights, state, output_signature = super().init_with_output_signature(input_signature, rng)
        self._check_link(input_signature, output_signature)
        return weights, state, output_signature

    def _check_link(self, xs, outputs) -> None:
        """Checks the outputs against the output spec with the sizes the inputs bound (each spec alone passed)."""
        n_in, n_out = len(self._input_specs), len(self._output_specs)
        # Serial packs items past those its sublayers take after its outputs; the specs see the first.
        inputs = [tuple(x.shape) for x in self._items(xs)[:n_in]]
        shapes = [tuple(y.shape) for y in self._items(outputs)[:n_out]]
        dims = _bind(self._input_specs, inputs, {}, "input")
        try:
            _bind(self._output_specs, shapes, dims, "output")
        except ValueError as e:
            bound = ", ".join(f"{k if k != _ELLIPSIS else '...'}={v}" for k, v in dims.items())
            extra = f" ({self._message})" if self._message else ""
            shown = ", ".join(map(str, shapes))
            raise ValueError(
                f"AssertFunction: output shapes {shown} do not match {self._specification!r} "
                f"with the sizes of the inputs ({bound}): {e}{extra}"
            ) from None


def AssertFunction(specification: str, layer: base.Layer, message: str | None = None) -> base.Layer:  # noqa: N802
    """Returns `layer` with `specification` ('inputs->outputs') asserted on its inputs and outputs.

    `Serial(AssertShape(inputs), layer, AssertShape(outputs))`, weights
    `((), layer's, ())` as in Trax, whose letters are shared: in
    `'...ab->...c'` the outputs keep the inputs' leading sizes. The outputs
    and new state are the layer's, unchanged.

    Predict mode: streams as `layer` does; each block is checked on its own.

    Args:
        specification: `'<input specs>-><output specs>'`, e.g. `'bld,df->blf'`.
        layer: The layer to check.
        message: Text to add to the error when a check fails.
    """
    if not isinstance(specification, str) or specification.count("->") != 1:
        raise ValueError(
            f"AssertFunction: specification must be '<input specs>-><output specs>' "
            f"such as '...a->...b', got {specification!r}"
        )
    input_spec, output_spec = specification.split("->")
    return _AssertFunction(input_spec, layer, output_spec, message)


def assert_shape(specification: str):
    """Decorator asserting `specification` ('inputs->outputs') on a layer class or a layer-returning function.

    On a function, each layer it returns is wrapped in `AssertFunction`. On a
    `Layer` subclass, its `forward` (trax_sl's or Trax's signature) checks
    the inputs before and the outputs after, with shared letters; the class
    is changed in place, as Trax does.
    """
    caller = sys._getframe(1)
    message = f"asserted at {caller.f_code.co_filename}:{caller.f_lineno}"
    if not isinstance(specification, str) or specification.count("->") != 1:
        raise ValueError(f"assert_shape: specification must be like '...a->...b', got {specification!r}")
    input_spec, output_spec = specification.split("->")
    input_specs = _parse("assert_shape", input_spec)
    output_specs = _parse("assert_shape", output_spec)

    def wrap_class(cls):
        forward = cls.forward

        @functools.wraps(forward)
        def checked_forward(self, x, *args, **kwargs):
            trax_style = not args and not kwargs  # Trax's forward(self, x) returns the outputs alone.
            shapes = _item_shapes(x, len(input_specs))
            try:
                dims = _bind(input_specs, shapes, {}, "input")
            except ValueError as e:
                raise _failure(cls.__name__, input_spec, shapes, e, message) from None
            result = forward(self, x, *args, **kwargs)
            outputs = result if trax_style else result[0]
            shapes = _item_shapes(outputs, len(output_specs))
            try:
                _bind(output_specs, shapes, dims, "output")
            except ValueError as e:
                raise _failure(cls.__name__, output_spec, shapes, e, message) from None
            return result

        cls.forward = checked_forward
        return cls

    def wrap_function(function):
        @functools.wraps(function)
        def checked(*args, **kwargs):
            return AssertFunction(specification, function(*args, **kwargs), message)

        return checked

    return lambda target: wrap_class(target) if inspect.isclass(target) else wrap_function(target)
