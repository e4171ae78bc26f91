"""Predict mode: the one check of a layer and its block, and starting a stream from trained weights.

In predict mode a model's `pure_fn` consumes one block of time steps per call
and carries the sequence state (buffers, caches, carries, offsets) in
`state`. See DESIGN §5. Layers are duck-typed here (name, sublayers, the
streaming properties, `with_mode`, `init_tree`): this module sits below the
Layer class and imports no layer.
"""

from __future__ import annotations

import functools

import jax

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import rng as rng_lib


def time_items(x) -> list:
    """The stack items of `x` that carry a time axis: Sequences and arrays of rank >= 2."""
    items = x if isinstance(x, (tuple, list)) else (x,)
    return [item for item in items if isinstance(item, seq.Sequence) or len(getattr(item, "shape", ())) >= 2]


def check_predict_mode(layer, x) -> None:
    """Raises ValueError for a layer that cannot stream or a block it cannot take."""
    check_steps(layer)
    check_block(layer, x)


def check_steps(layer) -> None:
    """Raises ValueError when `layer` does not step, naming why when its spec says.

    The refusal is raised by the innermost layer that does not step (its
    sublayers all do), so the message names the culprit, not its parents.
    """
    if not layer.supports_step and all(sub.supports_step for sub in layer.sublayers):
        try:
            why = layer.streaming_spec.why_not or "supports_step is False"
        except ValueError as e:  # The spec itself cannot be formed; its error says why.
            why = str(e)
        raise ValueError(
            f"{layer.name} does not stream ({why}), so it cannot run in predict mode; "
            f"run it layer-wise in 'eval' mode"
        )


def check_block(layer, x) -> None:
    """Raises ValueError when a predict-mode block is not a multiple of block_size."""
    if not layer.supports_step:
        return  # No block size; the innermost layer that does not step refuses (check_steps).
    block_size = layer.block_size
    if block_size == 1:
        return
    for item in time_items(x):
        length = item.shape[1]
        if length % block_size:
            raise ValueError(
                f"{layer.name}: in predict mode each block must be a multiple of "
                f"block_size={block_size} time steps, got a block of {length} "
                f"({shapes.short_form(item)})"
            )


def steps_after_block(layer, steps_taken: int, x) -> int:
    """The array steps an interactive stream has taken after block `x`; raises ValueError past capacity.

    Arrays have no mask, so every step counts; a block holding a Sequence is
    not counted here (its steps past the capacity come out invalid).
    """
    items = time_items(x)
    if not items or any(isinstance(item, seq.Sequence) for item in items):
        return steps_taken
    steps = steps_taken + items[0].shape[1]
    capacity = layer.stream_capacity
    if capacity is not None and steps > capacity:
        raise ValueError(
            f"{layer.name}: this predict-mode stream has taken {steps_taken} steps and the block "
            f"has {items[0].shape[1]}, but the stream holds {capacity} steps "
            f"({layer._spec().capacity_source}); start a new stream (layer.init, or set layer.state) "
            f"or build the model with a larger cache"
        )
    return steps


def _same_signature(a, b) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    return all(
        tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


def _carry_over(layer, trained, fresh):
    """Trained state where a layer keeps it in every mode, fresh stream state elsewhere."""
    subs = layer.sublayers
    if layer.state_per_copy:
        # A Repeat streams with a state per repeat; its trained state is their stack.
        return tuple(
            _carry_over(subs[0], jax.tree.map(lambda a, r=r: a[r], trained), fresh_r)
            for r, fresh_r in enumerate(fresh)
        )
    if (
        subs
        and isinstance(fresh, tuple)
        and isinstance(trained, tuple)
        and len(fresh) == len(subs) == len(trained)
    ):
        return tuple(_carry_over(sub, t, f) for sub, t, f in zip(subs, trained, fresh))
    if len(subs) == 1 and not (isinstance(fresh, tuple) and len(fresh) == 1):
        # The state is the sublayer's own (a wrapper's): decide inside it.
        return _carry_over(subs[0], trained, fresh)
    return trained if _same_signature(trained, fresh) else fresh


@functools.lru_cache(maxsize=64)
def _fresh_state_fn(predict_model, signature):
    """A compiled init that returns only the state (XLA drops the weights), cached per model and block."""
    return jax.jit(lambda rng: predict_model.init_tree(signature, rng)[1])


def start_stream(model, block_signature, weights, state=None, rng=None):
    """Starts streaming a (trained) model: returns (predict_model, stream_state).

    `predict_model` is `model.with_mode('predict')` (or model itself when it is
    already in predict mode) and runs on `weights` as they are. The returned
    state holds fresh stream buffers (convolution buffers, KV caches, RNN
    carries, time offsets) for the batch of `block_signature`, and keeps the
    parts of the trained `state` that a layer carries in every mode (e.g.
    BatchNorm statistics): a layer whose trained state has the same structure,
    shapes and dtypes as its predict-mode state keeps the trained one.

        predict_model, state = tl.start_stream(model, block_sig, weights, state)
        for block in blocks:
            y, state = predict_model.pure_fn(block, weights, state, None)
    """
    predict_model = model if model.mode == "predict" else model.with_mode("predict")
    signature = shapes.signature(block_signature)
    rng = rng_lib.default_rng() if rng is None else rng
    fresh = _fresh_state_fn(predict_model, signature)(rng)
    if state is None:
        return predict_model, fresh
    return predict_model, _carry_over(predict_model, state, fresh)
