"""LayerError: an error inside a layer, with where it happened and on what.

Also where a layer was created in the user's code (`user_frame`), which the
Layer records at construction for these messages. Layers are duck-typed
here (name, caller, hidden_in_paths): this module sits below the Layer class.
"""

from __future__ import annotations

import os
import sys

from trax_sl import shapes

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LayerError(Exception):
    """An error inside a layer, with where it happened and on what.

    The message names the path from the outermost layer (`Serial >
    Residual[1] > Dense_16`), where the failing layer was created in the
    user's code, the function (init / pure_fn), the input signature in short
    form, and the original exception, which is also kept as `__cause__`.
    """

    def __new__(cls, layer=None, function_name=None, inputs=None, cause=None):
        # A wrapped ValueError/TypeError is still one, so `except ValueError` keeps working.
        kind = cls
        if cls is LayerError:
            kind = next(
                (sub for base_kind, sub in _KIND_SUBCLASSES.items() if isinstance(cause, base_kind)), cls
            )
        return super().__new__(kind)

    def __init__(self, layer, function_name: str, inputs, cause: BaseException):
        self.path = [layer.name]
        self.function_name = function_name
        self.caller = layer.caller
        self.input_signature = safe_short_form(inputs)
        self.cause = cause
        super().__init__()

    def enter(self, layer) -> None:
        """Adds an enclosing layer to the front of the path (unless library-internal)."""
        if layer.hidden_in_paths:
            self._skip_index = True
            return
        self.path.insert(0, layer.name)

    def at_index(self, index: int) -> None:
        """Notes that the current path head is sublayer `index` of its parent."""
        if getattr(self, "_skip_index", False):
            self._skip_index = False
            return
        self.path[0] = f"{self.path[0]}[{index}]"

    @property
    def message(self) -> str:
        cause = f"{type(self.cause).__name__}: {self.cause}"
        return (
            f"{' > '.join(self.path)} failed in {self.function_name}\n"
            f"  layer created at: {self.caller}\n"
            f"  layer input: {self.input_signature}\n"
            f"  cause: {cause}"
        )

    def __str__(self) -> str:
        return self.message


class _LayerValueError(LayerError, ValueError):
    pass


class _LayerTypeError(LayerError, TypeError):
    pass


for _kind in (_LayerValueError, _LayerTypeError):  # Tracebacks print the qualified name.
    _kind.__name__ = _kind.__qualname__ = "LayerError"
_KIND_SUBCLASSES = {ValueError: _LayerValueError, TypeError: _LayerTypeError}


def safe_short_form(inputs) -> str:
    """`shapes.short_form(inputs)`, or the inputs' type name where that fails (for error messages)."""
    try:
        return shapes.short_form(inputs)
    except Exception:  # noqa: BLE001 (an error message must not fail on odd inputs)
        return type(inputs).__name__


def user_frame(layer) -> str:
    """file:line of the innermost frame outside trax_sl: where the user built it.

    Frames of trax_sl, of gin's configurable wrappers, and the `__init__`
    chain of the layer's own class (a user's subclass calling
    super().__init__) are skipped.
    """
    frame = sys._getframe(2)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR)
        or frame.f_globals.get("__name__", "").startswith("gin.")
        or (frame.f_code.co_name == "__init__" and frame.f_locals.get("self") is layer)
    ):
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"
