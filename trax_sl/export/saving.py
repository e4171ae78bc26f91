"""`save`: a model's predict-mode step, stream start and layer-wise function as StableHLO in one file.

Every function is exported with `jax.export` over flat lists of arrays (the
leaves of weights, state and inputs), so the file needs no trax_sl to run:
`loader.py` rebuilds what a caller passes and gets from the signatures in the
header. The batch size is symbolic everywhere; the layer-wise function's
time length too where the model allows it.

The stream state of a batch is found without symbolic shapes (building it
runs Python on shapes): `start_stream` at batch sizes 1, 2 and 3 shows each
state array's batch axis (the axis that grows by the same amount k per row,
k times the batch), and the state of one example, repeated along that axis,
must give the states of 2 and 3 exactly. The exported `init_state` repeats
that one example's state (saved in the file) along the batch axes.
"""

from __future__ import annotations

import fractions
import io
import json
import os
import sys
import traceback
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.export import loader
from trax_sl.layers import serialization, streaming
from trax_sl.supervised.checkpoint_checks import one_line

# Lowering for CUDA needs no GPU: a file made on a CPU machine runs on both.
DEFAULT_PLATFORMS = ("cpu", "cuda")

_FUNCTION_FILES = {"step": "step.jaxexport", "init_state": "init_state.jaxexport", "layer": "layer.jaxexport"}


def save(
    model,
    path,
    *,
    block_signature,
    weights=None,
    state=None,
    platforms: tuple[str, ...] | None = DEFAULT_PLATFORMS,
    layer_time_steps: int | bool | None = None,
) -> dict:
    """Exports `model` (built in 'eval' mode) to the file `path`; returns the file's header.

    Args:
        model: The trained model, not in predict mode (its predict twin is
            made here, as `tl.start_stream` makes it).
        path: The file to write (atomically).
        block_signature: One block: arrays, Sequences or a tuple of them (or
            their ShapeDtype signature). Its time length (a multiple of
            `model.block_size`) is the one the exported step takes; its
            batch size does not matter (the batch is symbolic).
        weights: The trained weights (default: the model's own).
        state: The trained state (default: the model's own).
        platforms: The platforms to lower for (`jax.export`'s names: 'cpu',
            'cuda', 'rocm', 'tpu'); None for the one JAX runs on here.
        layer_time_steps: The layer-wise function's time length: None for a
            symbolic one (any length, up to `model.stream_capacity` where a
            layer needs a bound), T to export it for inputs of T steps only,
            False to export no layer-wise function.

    Raises:
        ValueError: The model does not stream, its stream state cannot be
            built for a free batch size, or its layer-wise function cannot
            take a symbolic time length (the message names the layer and the
            choices of `layer_time_steps`).
    """
    if model.mode == "predict":
        raise ValueError(
            f"export.save: expected the model in 'eval' mode (its predict twin is made here), got "
            f"{model.name} in predict mode; pass the model you trained, built with mode='eval'"
        )
    if not (layer_time_steps is None or layer_time_steps is False or _is_count(layer_time_steps)):
        raise ValueError(
            f"export.save: layer_time_steps must be None (a symbolic time), False (no layer-wise "
            f"function) or an integer >= 1, got layer_time_steps={layer_time_steps!r}"
        )
    weights = model.weights if weights is None else weights
    state = model.state if state is None else state
    platforms = (loader.current_platform(),) if platforms is None else tuple(platforms)
    block = shapes.signature(block_signature)
    _check_streams(model)
    streaming.check_block(model, block)

    predict_model, state_tree, example_state, axes = _stream_state(model, block, weights, state)
    step, step_in, step_out = _export_step(
        predict_model, block, weights, state_tree, example_state, axes, platforms
    )
    functions = {"step": step, "init_state": _export_init(model.name, example_state, axes, platforms)}
    layer_header, layer = _export_layer(model, block, weights, state, platforms, layer_time_steps)
    if layer is not None:
        functions["layer"] = layer
    arrays = {
        "weights": [np.asarray(w) for w in jax.tree.leaves(weights)],
        "stream_state": [np.asarray(s) for s in example_state],
        "state": [np.asarray(s) for s in jax.tree.leaves(state)],
    }
    header = {
        "format": loader.FORMAT,
        "trax_sl_version": _trax_sl_version(),
        "jax_version": jax.__version__,
        "platforms": list(platforms),
        "model": model.name,
        "block_size": int(model.block_size),
        "block_steps": _block_steps(block),
        "input_latency": int(model.input_latency),
        "output_latency": int(model.output_latency),
        "output_ratio": str(fractions.Fraction(model.output_ratio)),
        "stream_capacity": None if model.stream_capacity is None else int(model.stream_capacity),
        "step": {"file": _FUNCTION_FILES["step"], "input_signature": step_in, "output_signature": step_out},
        "init_state": {
            "file": _FUNCTION_FILES["init_state"],
            "batch_axes": [None if a is None else {"axis": a[0], "per_row": a[1]} for a in axes],
        },
        "layer": layer_header,
        "arrays": {
            group: [{"shape": list(a.shape), "dtype": a.dtype.name} for a in leaves]
            for group, leaves in arrays.items()
        },
    }
    programs = {_FUNCTION_FILES[name]: bytes(exported.serialize()) for name, exported in functions.items()}

    def write(f):
        with zipfile.ZipFile(f, "w") as z:
            z.writestr(loader.HEADER, json.dumps(header, indent=1), compress_type=zipfile.ZIP_DEFLATED)
            for name, program in programs.items():
                z.writestr(name, program, compress_type=zipfile.ZIP_DEFLATED)
            for group, leaves in arrays.items():
                for i, array in enumerate(leaves):
                    z.writestr(f"{group}/{i:05d}.npy", _npy_bytes(array))

    serialization.atomic_write(os.fspath(path), write)
    return header


def _is_count(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1


def _check_streams(model) -> None:
    """Raises ValueError naming the innermost layer that does not step, and why."""
    culprit = model
    while not culprit.supports_step and any(not sub.supports_step for sub in culprit.sublayers):
        culprit = next(sub for sub in culprit.sublayers if not sub.supports_step)
    try:
        streaming.check_steps(culprit)
    except ValueError as e:
        raise ValueError(f"export.save: {model.name} has no predict-mode step to export: {e}") from e


def _trax_sl_version() -> str:
    # The root package (the floor above this one) is imported before any of its subpackages, and
    # sets __version__ first thing.
    return sys.modules["trax_sl"].__version__


def _block_steps(block) -> int:
    items = streaming.time_items(block)
    return int(items[0].shape[1]) if items else 1


def _with_batch(signature, batch: int):
    """`signature` with every array's leading (batch) axis set to `batch`."""
    return jax.tree.map(
        lambda s: shapes.ShapeDtype((batch,) + s.shape[1:], s.dtype) if s.ndim else s, signature
    )


def _stream_state(model, block, weights, state):
    """(predict model, the stream state's tree structure, its arrays for one example, and per array
    its (batch axis, size per row), or None for an array shared by the batch)."""
    starts = [streaming.start_stream(model, _with_batch(block, n), weights, state) for n in (1, 2, 3)]
    predict_model = starts[0][0]
    # The axes as reset_stream_rows finds them (raising for a leaf that holds its rows otherwise).
    axes = streaming.batch_axes(predict_model, shapes.signature(_with_batch(block, 1)))
    leaves = [[np.asarray(x) for x in jax.tree.leaves(s)] for _, s in starts]
    for i, (axis, one, two, three) in enumerate(zip(axes, *leaves)):
        # A free batch size needs more: the state of n rows is one row's repeated n times.
        if not all(_same(_repeat(one, axis, n), x) for n, x in ((2, two), (3, three))):
            raise ValueError(
                f"export.save: array {i} of the stream state of {model.name} ({shapes.short_form(one)} for one row, "
                f"{shapes.short_form(two)} for 2, {shapes.short_form(three)} for 3) is not one row's state repeated along a batch "
                f"axis, so it cannot be exported for a free batch size"
            )
    return predict_model, jax.tree.structure(starts[0][1]), leaves[0], list(axes)


def _repeat(one, axis, n):
    return one if axis is None else np.concatenate([one] * n, axis=axis[0])


def _same(a, b) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=bool(np.issubdtype(a.dtype, np.inexact))))


def _struct(x, shape=None):
    return jax.ShapeDtypeStruct(tuple(x.shape) if shape is None else shape, x.dtype)


def _symbolic(signature, batch, time=None):
    """The signature's ShapeDtypeStructs with the batch `batch` and, given `time`, the time `time`.

    The time is axis 1 of every array of rank >= 2 but those in a dict item
    (side inputs, SequenceLayers' constants, keep their length).
    """

    def leaf(path, s):
        if not s.ndim:
            return _struct(s)
        in_dict = any(isinstance(k, jax.tree_util.DictKey) for k in path)  # side inputs keep their time.
        if time is not None and s.ndim >= 2 and not in_dict:
            return _struct(s, (batch, time) + s.shape[2:])
        return _struct(s, (batch,) + s.shape[1:])

    return jax.tree_util.tree_map_with_path(leaf, signature)


def _spec(tree) -> dict:
    """The JSON signature of a stack item tree (see loader.py); dimensions are ints or symbolic names."""
    if isinstance(tree, seq.Sequence):
        return {"sequence": {"values": _array_spec(tree.values), "mask": _array_spec(tree.mask)}}
    if isinstance(tree, (tuple, list)):
        return {"tuple": [_spec(item) for item in tree]}
    if isinstance(tree, dict):
        return {"dict": [[key, _spec(item)] for key, item in tree.items()]}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return {"array": _array_spec(tree)}
    raise TypeError(f"export.save: cannot export a stack item of type {type(tree).__name__}")


def _array_spec(x) -> dict:
    return {"shape": [d if isinstance(d, int) else str(d) for d in x.shape], "dtype": np.dtype(x.dtype).name}


def _to_caller(tree):
    """The form the loader's caller passes and gets: a Sequence as (values, mask)."""
    if isinstance(tree, seq.Sequence):
        return (tree.values, tree.mask)
    if isinstance(tree, (tuple, list)):
        return tuple(_to_caller(item) for item in tree)
    if isinstance(tree, dict):
        return {key: _to_caller(item) for key, item in tree.items()}
    return tree


def _from_caller(spec: dict, value):
    """Inverse of `_to_caller` given the signature: (values, mask) pairs become Sequences."""
    ((kind, body),) = spec.items()
    if kind == "sequence":
        return seq.Sequence(*value)
    if kind == "tuple":
        return tuple(_from_caller(s, v) for s, v in zip(body, value))
    if kind == "dict":
        return {key: _from_caller(s, value[key]) for key, s in body}
    return value


def _leaves(spec, tree, where):
    return loader.flatten(spec, _to_caller(tree), where)


def _rebuild(spec, leaves):
    return _from_caller(spec, loader.unflatten(spec, list(leaves)))


def _export(fn, args, platforms, what: str, model_name: str):
    try:
        return jax.export.export(jax.jit(fn), platforms=platforms)(*args)
    except Exception as e:
        raise ValueError(
            f"export.save: cannot export the {what} of {model_name} for platforms {list(platforms)}: "
            f"{one_line(e, limit=1200)}"
        ) from e


def _export_step(predict_model, block, weights, state_tree, example_state, axes, platforms):
    """The exported step over (weight arrays, state arrays, block arrays), and its in/out signatures."""
    (b,) = jax.export.symbolic_shape("b")
    block_structs = _symbolic(block, b)
    block_spec = _spec(block_structs)
    weight_tree = jax.tree.structure(weights)
    state_structs = [
        _struct(s) if a is None else _struct(s, s.shape[: a[0]] + (b * a[1],) + s.shape[a[0] + 1 :])
        for s, a in zip(example_state, axes)
    ]
    captured = {}
    flat_step = _flat_pure_fn(predict_model, block_spec, weight_tree, state_tree, captured, "step outputs")

    def step(weight_leaves, state_leaves, block_leaves):
        outputs, new_state = flat_step(weight_leaves, state_leaves, block_leaves)
        return outputs, jax.tree.leaves(new_state)

    weight_structs = [_struct(w) for w in jax.tree.leaves(weights)]
    exported = _export(
        step,
        (weight_structs, state_structs, _leaves(block_spec, block_structs, "block")),
        platforms,
        "predict-mode step",
        predict_model.name,
    )
    n_out = len(exported.out_avals) - len(state_structs)
    state_out = exported.out_avals[n_out:]
    if [(tuple(map(str, a.shape)), a.dtype) for a in state_out] != [
        (tuple(map(str, s.shape)), s.dtype) for s in state_structs
    ]:
        raise ValueError(
            f"export.save: the predict-mode step of {predict_model.name} returns a state shaped "
            f"{[str(a) for a in state_out]}, not like the state it takes {[str(s) for s in state_structs]}"
        )
    return exported, block_spec, captured["out"]


def _export_init(model_name: str, example_state, axes, platforms):
    """The exported stream start: (int32[b], one example's state arrays) -> the state of b rows."""
    (b,) = jax.export.symbolic_shape("b")

    def init_state(rows, example):
        n = rows.shape[0]
        out = []
        for x, axis in zip(example, axes):
            if axis is None:
                out.append(x)
                continue
            a, k = axis
            wide = jnp.broadcast_to(
                x.reshape(x.shape[:a] + (1, k) + x.shape[a + 1 :]), x.shape[:a] + (n, k) + x.shape[a + 1 :]
            )
            out.append(wide.reshape(x.shape[:a] + (n * k,) + x.shape[a + 1 :]))
        return out

    args = (jax.ShapeDtypeStruct((b,), np.int32), [_struct(s) for s in example_state])
    return _export(init_state, args, platforms, "stream start", model_name)


def _export_layer(model, block, weights, state, platforms, time_steps):
    """(header entry, exported layer-wise function or None)."""
    if time_steps is False:
        return {"reason": "not exported (layer_time_steps=False)"}, None
    weight_tree, state_tree = jax.tree.structure(weights), jax.tree.structure(state)
    captured = {}

    def attempt(constraints):
        if time_steps is None:
            b, t = jax.export.symbolic_shape("b, t", constraints=constraints)
        else:
            (b,), t = jax.export.symbolic_shape("b"), int(time_steps)
        structs = _symbolic(block, b, t)
        spec = _spec(structs)

        flat_layer = _flat_pure_fn(model, spec, weight_tree, state_tree, captured, "layer outputs")

        def layer(weight_leaves, state_leaves, x_leaves):
            return flat_layer(weight_leaves, state_leaves, x_leaves)[0]

        args = (
            [_struct(w) for w in jax.tree.leaves(weights)],
            [_struct(s) for s in jax.tree.leaves(state)],
            _leaves(spec, structs, "input"),
        )
        exported = jax.export.export(jax.jit(layer), platforms=platforms)(*args)
        return spec, exported

    capacity = model.stream_capacity
    tries = [()] if time_steps is not None or capacity is None else [(), (f"t <= {int(capacity)}",)]
    for constraints in tries:
        try:
            spec, exported = attempt(constraints)
        except Exception as e:  # noqa: BLE001 (any tracing failure: reported below, with the layer)
            error = e
            continue
        entry = {
            "file": _FUNCTION_FILES["layer"],
            "input_signature": spec,
            "output_signature": captured["out"],
            "constraints": list(constraints),
        }
        return entry, exported
    how = "a symbolic number of" if time_steps is None else f"inputs of {time_steps}"
    raise ValueError(
        f"export.save: the layer-wise function of {model.name} cannot be exported for {how} time steps: "
        f"{_why(error)}. Pass layer_time_steps=T to export it for inputs of T steps, or "
        f"layer_time_steps=False to export the predict-mode step alone"
    ) from error


def _why(error: BaseException) -> str:
    """A failed export on one line: the layer path and the cause, and the library line that failed."""
    lines = str(error).splitlines()
    causes = [i for i, line in enumerate(lines) if line.strip().startswith("cause:")]
    text = " ".join(line.strip() for line in lines[: causes[0] + 1]) if causes else one_line(error, limit=600)
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frames = [
        f
        for f in traceback.extract_tb(cause.__traceback__)
        if f.filename.startswith(package) and os.sep + "export" + os.sep not in f.filename
    ]
    if frames:
        where = os.path.relpath(frames[-1].filename, os.path.dirname(package))
        text += f" (at {where}:{frames[-1].lineno}: {(frames[-1].line or '').strip()})"
    return text


def _npy_bytes(array: np.ndarray) -> bytes:
    """.npy bytes; dtypes NumPy lacks (bfloat16, ...) as unsigned integers of their width (the header names them)."""
    array = np.asarray(array)
    if array.dtype.kind == "V" or array.dtype.type.__module__.startswith("ml_dtypes"):
        array = array.view(f"uint{8 * array.dtype.itemsize}")
    buffer = io.BytesIO()
    # Not np.ascontiguousarray, which makes a 0-d array 1-d.
    np.lib.format.write_array(buffer, np.require(array, requirements="C"), allow_pickle=False)
    return buffer.getvalue()


def _flat_pure_fn(model, input_spec, weight_tree, state_tree, captured: dict, what: str):
    """`model.pure_fn` over flat lists of arrays: (output leaves, new state); the output spec goes to `captured`."""

    def call(weight_leaves, state_leaves, input_leaves):
        x = _rebuild(input_spec, input_leaves)
        w = jax.tree.unflatten(weight_tree, weight_leaves)
        s = jax.tree.unflatten(state_tree, state_leaves)
        y, new_state = model.pure_fn(x, w, s, None)
        captured["out"] = _spec(y)
        return _leaves(captured["out"], y, what), new_state

    return call
