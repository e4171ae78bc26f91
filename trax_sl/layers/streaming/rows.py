"""Many streams in one batch: restarting some rows of a predict-mode state, leaving the others running.

A batch of B slots serves streams that start and end at different times. A
stream's state is spread over every layer's state (KV caches, convolution
buffers, RNN carries, time offsets, delay buffers), each leaf holding one row
per stream along its batch axis, which is not always the first (attention
with its heads folded into the batch caches `[batch * heads, ...]`). The batch axis of
each leaf is found by abstract evaluation: the fresh stream state for a batch
of B and of B + 1; the one axis that grows, by k, is the batch axis, holding
k consecutive entries per stream (batch-major, as reshaping `[batch, k, ...]`
to `[batch * k, ...]` gives). A leaf without one is shared by the batch
(trained statistics such as BatchNorm's, batch-wide summaries) and is left as
it is. Layers are duck-typed here, as in `predict.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence as SequenceABC

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import shapes
from trax_sl.layers.streaming import predict as predict_lib


def _with_batch(signature, batch: int):
    """`signature` with the leading (batch) axis of every leaf of rank >= 1 set to `batch`."""
    return jax.tree.map(
        lambda s: shapes.ShapeDtype((batch,) + tuple(s.shape[1:]), s.dtype) if s.shape else s, signature
    )


def _batch_of(name: str, signature) -> int:
    sizes = {s.shape[0] for s in jax.tree.leaves(signature) if s.shape}
    if len(sizes) != 1:
        raise ValueError(
            f"reset_stream_rows({name}): the block signature must have one batch size on the leading "
            f"axis of its arrays, got {shapes.short_form(signature)}"
        )
    return sizes.pop()


@functools.lru_cache(maxsize=64)
def batch_axes(predict_model, signature) -> tuple:
    """Per leaf of the stream state (flattened): `(axis, k)`, its batch axis holding k entries per
    stream, or None for a leaf shared by the batch.

    Raises ValueError for a leaf whose streams cannot be told apart (more than
    one axis changes with the batch, or one that is not k entries per stream).
    """
    batch = _batch_of(predict_model.name, signature)
    _, state = predict_model.weights_and_state_signature(signature)
    _, bigger = predict_model.weights_and_state_signature(_with_batch(signature, batch + 1))
    leaves, structure = jax.tree_util.tree_flatten_with_path(state)
    if jax.tree.structure(bigger) != structure:
        raise ValueError(
            f"reset_stream_rows({predict_model.name}): the stream state's structure depends on the "
            f"batch size, so its rows cannot be restarted one by one"
        )
    axes = []
    for (path, a), b in zip(leaves, jax.tree.leaves(bigger)):
        changed = [i for i, (m, n) in enumerate(zip(a.shape, b.shape)) if m != n]
        if not changed:
            axes.append(None)
            continue
        axis = changed[0]
        k = b.shape[axis] - a.shape[axis]
        if len(changed) > 1 or k < 1 or a.shape[axis] != batch * k:
            raise ValueError(
                f"reset_stream_rows({predict_model.name}): state leaf {jax.tree_util.keystr(path)} is "
                f"{shapes.short_form(a)} for a batch of {batch} and {shapes.short_form(b)} for "
                f"{batch + 1}; each leaf must hold its streams along one axis, the same number of "
                f"entries for each"
            )
        axes.append((axis, k))
    return tuple(axes)


def _row_mask(name: str, rows, batch: int):
    """A bool mask `[batch]` from a mask or from row indices (traced or not)."""
    if isinstance(rows, SequenceABC) and not rows:
        return jnp.zeros((batch,), jnp.bool_)
    rows = jnp.asarray(rows)
    if rows.dtype == jnp.bool_:
        if rows.shape != (batch,):
            raise ValueError(
                f"reset_stream_rows({name}): a row mask must be bool[{batch}], got {shapes.short_form(rows)}"
            )
        return rows
    if not jnp.issubdtype(rows.dtype, jnp.integer) or rows.ndim != 1:
        raise TypeError(
            f"reset_stream_rows({name}): rows must be a bool mask [{batch}] or a 1-D sequence of row "
            f"indices, got {shapes.short_form(rows)}"
        )
    if not isinstance(rows, jax.core.Tracer) and rows.size:
        bad = np.asarray(rows)[(np.asarray(rows) < -batch) | (np.asarray(rows) >= batch)]
        if bad.size:
            raise ValueError(
                f"reset_stream_rows({name}): row {int(bad[0])} is out of range for a batch of {batch}"
            )
    return jnp.zeros((batch,), jnp.bool_).at[rows].set(True)


def reset_stream_rows(model, state, rows, block_signature, weights, trained_state=None, rng=None):
    """Restarts the streams in `rows` of a predict-mode `state`; the other rows go on unchanged.

    Every state leaf's rows in `rows` become those of a freshly started stream,
    `start_stream(model, block_signature, weights, trained_state, rng)`, and
    its other rows are kept: feeding a restarted row a new stream's blocks
    from its first gives what a fresh stream gives, whatever the row held
    before. Each leaf's batch axis is found by abstract evaluation (module
    docstring); leaves without one (trained statistics carried over,
    batch-wide summaries) are kept as they are. jit-able: `rows` may be a
    traced mask.

        predict_model, state = tl.start_stream(model, block_sig, weights)
        for block in blocks:  # Rows end and start anywhere in the stream.
            state = tl.reset_stream_rows(predict_model, state, ended, block_sig, weights)
            y, state = predict_model.pure_fn(block, weights, state, None)

    Args:
      model: the predict-mode model (or a model whose predict twin is meant;
        pass the predict model `start_stream` returned, so that its compiled
        init and batch axes are computed once).
      state: the stream state, as `predict_model.pure_fn` returns it.
      rows: a bool mask `[batch]`, or a sequence (1-D array) of row indices.
      block_signature: the signature of one block for the whole batch, as
        given to `start_stream`.
      weights: as `start_stream` takes them.
      trained_state: as `start_stream` takes it.
      rng: as `start_stream` takes it.

    Returns:
      The state with the rows in `rows` restarted.
    """
    predict_model = model if model.mode == "predict" else model.with_mode("predict")
    signature = shapes.signature(block_signature)
    name = predict_model.name
    axes = batch_axes(predict_model, signature)
    _, fresh = predict_lib.start_stream(predict_model, signature, weights, trained_state, rng)
    leaves, structure = jax.tree.flatten(state)
    fresh_leaves = jax.tree.leaves(fresh)
    if structure != jax.tree.structure(fresh) or any(
        tuple(a.shape) != tuple(f.shape) or a.dtype != f.dtype for a, f in zip(leaves, fresh_leaves)
    ):
        raise ValueError(
            f"reset_stream_rows({name}): the state is not a stream state of this model for blocks of "
            f"{shapes.short_form(signature)}: got {shapes.short_form(shapes.signature(tuple(leaves)))}, "
            f"expected {shapes.short_form(shapes.signature(tuple(fresh_leaves)))}"
        )
    mask = _row_mask(name, rows, _batch_of(name, signature))

    def reset(leaf, fresh_leaf, axis_and_k):
        if axis_and_k is None:
            return leaf
        axis, k = axis_and_k
        shape = [1] * leaf.ndim
        shape[axis] = -1
        return jnp.where(jnp.repeat(mask, k).reshape(shape), fresh_leaf, leaf)

    return jax.tree.unflatten(structure, [reset(*args) for args in zip(leaves, fresh_leaves, axes)])
