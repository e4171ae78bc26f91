"""SequenceLayers' notebook helpers: printing trees of shapes, running a layer step by step.

`import sequence_layers.jax.utils as sl_utils` becomes `import trax_sl.sl.utils as sl_utils`.
"""

from __future__ import annotations

import functools
import pprint

import jax
import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import base, streaming


def pformat_tree_shapes_types(tree) -> str:
    """The shapes and dtypes of a pytree (weights, state, constants), pretty-printed."""
    return pprint.pformat(
        jax.tree.map(lambda a: shapes.ShapeDtype(a.shape, a.dtype) if hasattr(a, "dtype") else a, tree)
    )


def pprint_tree_shapes_types(tree) -> None:
    """Prints the shapes and dtypes of a pytree (weights, state, constants)."""
    print(pformat_tree_shapes_types(tree))


def _pad_to_multiple(x: seq.Sequence, block: int) -> seq.Sequence:
    extra = -x.shape[1] % block
    return x.pad_time(0, extra, valid=False) if extra else x


@functools.lru_cache(maxsize=32)
def _stepper(predict_model: base.Layer, with_constants: bool):
    """A compiled loop of predict-mode steps over blocks `[blocks, batch, block, ...]`."""

    def run(blocks, constants, weights, state, rng):
        def step(state, block_and_rng):
            block, step_rng = block_and_rng
            inputs = (block, constants) if with_constants else block
            y, state = predict_model.pure_fn(inputs, weights, state, step_rng)
            return state, y

        n_blocks = jax.tree.leaves(blocks)[0].shape[0]
        rngs = jax.random.split(rng, n_blocks)
        state, ys = jax.lax.scan(step, state, (blocks, rngs))
        return ys, state

    return jax.jit(run)


def step_by_step_dynamic(
    layer: base.Layer,
    x,
    training: bool = False,
    initial_state=None,
    blocks_per_step: int = 1,
    constants: dict | None = None,
    weights=None,
    rng=None,
):
    """Runs `layer` in predict mode over `x`, block by block in one compiled loop: (y, state, emits).

    As SequenceLayers' `utils.step_by_step_dynamic`: x is padded with invalid
    steps to a multiple of `layer.block_size * blocks_per_step`, and the
    outputs of the blocks are joined (not trimmed). The weights (and trained
    state, e.g. BatchNorm statistics) are the layer's interactive cache unless
    given; `initial_state` is a predict-mode state to start from (default: a
    fresh stream). `constants` go under each block on the stack. `emits` is
    `()` (trax_sl layers emit nothing). `training` must be False: predict mode
    is inference.
    """
    if training:
        raise ValueError("step_by_step_dynamic: predict mode is inference; pass training=False")
    x, was_sequence = seq.as_sequence(x)
    block = layer.block_size * blocks_per_step
    x = _pad_to_multiple(x, block)
    weights = layer.weights if weights is None else weights
    first = x[:, :block] if constants is None else (x[:, :block], constants)
    predict_model, state = streaming.start_stream(layer, first, weights, layer.state)
    if initial_state is not None:
        state = initial_state
    batch, time = x.shape[:2]

    def blocks_of(a):
        a = jnp.reshape(a, (batch, time // block, block) + tuple(a.shape[2:]))
        return jnp.moveaxis(a, 1, 0)

    blocks = jax.tree.map(blocks_of, x)
    run = _stepper(predict_model, constants is not None)
    ys, state = run(blocks, constants, weights, state, base.default_rng() if rng is None else rng)

    def join(a):
        a = jnp.moveaxis(a, 0, 1)
        return jnp.reshape(a, (batch, a.shape[1] * a.shape[2]) + tuple(a.shape[3:]))

    y = jax.tree.map(join, ys)
    return seq.like_input(y, was_sequence), state, ()
