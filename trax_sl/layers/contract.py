"""verify_contract: checks a layer keeps the streaming contract (DESIGN §5).

Public, for users' own layers too (also reachable under its old name,
`tl.test_utils`):

    tl.contract.verify_contract(lambda mode: MyLayer(..., mode=mode),
                                trax_sl.Sequence(ShapeDtype((2, 16, 3)), ShapeDtype((2, 16), bool)))

It builds the layer in 'eval' mode (layer-wise) and 'predict' mode
(step-wise) on the same weights, and raises AssertionError naming the first
broken rule. A layer that, as Trax's `ShiftRight`, takes an already shifted
stream in predict mode (`fed_shifted_in_predict_mode`) is a no-op on both
sides: the predict-mode model fed the shifted stream must equal the eval-mode
model.
"""

from __future__ import annotations

import dataclasses
import fractions

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import streaming

__all__ = ["ContractReport", "verify_contract"]


@dataclasses.dataclass
class ContractReport:
    """What verify_contract checked, for the record."""

    name: str
    block_size: int
    output_ratio: fractions.Fraction
    input_latency: int
    output_latency: int
    chunkings: list
    checks: list


# The checks take inputs and outputs apart by structure, not by the layer's
# n_in/n_out as base.as_items does: a layer with n_out=1 may return a tuple
# (FlattenList), and its elements are what gets compared and differentiated.


def _parts(x) -> tuple:
    """The arrays and Sequences the checks see in `x`: a tuple's elements, else x alone."""
    return tuple(x) if isinstance(x, tuple) else (x,)


def _like(parts: tuple, like):
    """`parts` packed as `like` was: a tuple, or the one part bare."""
    return tuple(parts) if isinstance(like, tuple) else parts[0]


def _is_time_signature(s) -> bool:
    return isinstance(s, seq.Sequence) or len(getattr(s, "shape", ())) >= 2


def _random_values(rng: np.random.Generator, s, int_maxval: int):
    dtype = np.dtype(s.dtype)
    if dtype == np.bool_:
        return rng.random(s.shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, int_maxval, size=s.shape).astype(dtype)
    return rng.standard_normal(s.shape).astype(dtype)


def _garbage_like(
    rng: np.random.Generator, values: np.ndarray, nan: bool, int_maxval: int, scale: float = 1e3
):
    if values.dtype == np.bool_:
        return rng.random(values.shape) < 0.5
    if np.issubdtype(values.dtype, np.integer):
        return rng.integers(0, int_maxval, size=values.shape).astype(values.dtype)
    garbage = (scale * rng.standard_normal(values.shape)).astype(values.dtype)
    if nan:
        garbage[...] = np.nan
    return garbage


def _with_garbage(x: seq.Sequence, rng, nan: bool, int_maxval: int, scale: float = 1e3) -> seq.Sequence:
    values = np.asarray(x.values)
    mask = np.asarray(x.mask).reshape(x.mask.shape + (1,) * (values.ndim - 2))
    garbage = _garbage_like(rng, values, nan, int_maxval, scale)
    return seq.Sequence(jnp.asarray(np.where(mask, values, garbage)), x.mask)


def _random_inputs(signature, streamed, rng, int_maxval: int, random_lengths: bool):
    """Sequences (random lengths, garbage past them) for streamed items; arrays otherwise."""
    items = []
    for s, is_streamed in zip(_parts(signature), streamed):
        if not is_streamed and not isinstance(s, seq.Sequence):
            items.append(jnp.asarray(_random_values(rng, s, int_maxval)))
            continue
        values_sig = seq.values_of(s)
        batch, time = values_sig.shape[:2]
        lengths = rng.integers(1, time + 1, size=batch) if random_lengths else np.full(batch, time)
        lengths[0] = time
        values = _random_values(rng, values_sig, int_maxval)
        x = seq.Sequence.from_lengths(jnp.asarray(values), jnp.asarray(lengths))
        items.append(_with_garbage(x, rng, nan=False, int_maxval=int_maxval))
    return _like(tuple(items), signature)


def _map_time_items(fn, x, streamed):
    return _like(tuple(fn(item) if s else item for item, s in zip(_parts(x), streamed)), x)


def _fail(name: str, what: str) -> None:
    raise AssertionError(f"verify_contract({name}): {what}")


def _compare_outputs(name: str, what: str, expected, actual, atol: float, rtol: float, length=None):
    """Valid values and masks of `actual` (first `length` steps) equal `expected`."""
    for i, (e, a) in enumerate(zip(_parts(expected), _parts(actual))):
        where = f"{what}, output {i}"
        if isinstance(e, seq.Sequence) != isinstance(a, seq.Sequence):
            _fail(name, f"{where}: one run returned a Sequence and the other a plain array")
        if not isinstance(e, seq.Sequence):
            np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=rtol, err_msg=where)
            continue
        steps = e.shape[1] if length is None else length
        if a.shape[1] < steps:
            # Steps the run never produced must be invalid in the expected output.
            if bool(jnp.any(e.mask[:, a.shape[1] : steps])):
                _fail(
                    name,
                    f"{where}: expected {steps} output steps, got {a.shape[1]}, and the "
                    f"missing ones are valid in the expected output",
                )
            steps = a.shape[1]
        e_mask, a_mask = np.asarray(e.mask[:, :steps]), np.asarray(a.mask[:, :steps])
        if not np.array_equal(e_mask, a_mask):
            bad = np.argwhere(e_mask != a_mask)[0]
            _fail(
                name,
                f"{where}: masks differ first at row {bad[0]}, step {bad[1]} "
                f"(expected {e_mask[tuple(bad)]}, got {a_mask[tuple(bad)]})",
            )
        mask = e_mask.reshape(e_mask.shape + (1,) * (e.ndim - 2))
        e_vals = np.where(mask, np.asarray(e.values[:, :steps]), 0)
        a_vals = np.where(mask, np.asarray(a.values[:, :steps]), 0)
        if not np.allclose(a_vals, e_vals, atol=atol, rtol=rtol) or np.isnan(a_vals).any():
            diff = np.where(np.isnan(a_vals), np.inf, np.abs(a_vals - e_vals))
            bad = np.unravel_index(np.argmax(diff), diff.shape)
            _fail(
                name,
                f"{where}: values differ at row {bad[0]}, step {bad[1]}: expected "
                f"{e_vals[bad]}, got {a_vals[bad]} (max abs diff {diff.max():.3g})",
            )


def _chunk_sizes(name: str, blocks, block_size: int) -> list[int]:
    """Chunk sizes in steps from sizes in blocks (each an int >= 1)."""
    blocks = list(blocks)
    if not blocks or any(not isinstance(b, (int, np.integer)) or b < 1 for b in blocks):
        raise ValueError(
            f"verify_contract({name}): each chunking must be a non-empty list of block counts >= 1, "
            f"got {blocks!r}"
        )
    return [int(b) * block_size for b in blocks]


def _chunk_lengths(total: int, chunk_sizes) -> list[int]:
    lengths, start, i = [], 0, 0
    while start < total:
        size = min(chunk_sizes[i % len(chunk_sizes)], total - start)
        lengths.append(size)
        start += size
        i += 1
    return lengths


def _time_slice(x, streamed, start: int, stop: int):
    return _map_time_items(lambda item: item[:, start:stop], x, streamed)


def _run_steps(layer, step_fn, x, weights, state, lengths, streamed):
    """Feeds x block by block; returns (outputs joined along time, states after each step)."""
    outputs, states, start = [], [], 0
    for length in lengths:
        y, state = step_fn(_time_slice(x, streamed, start, start + length), weights, state)
        outputs.append(y)
        states.append(state)
        start += length
    joined = []
    for i in range(len(_parts(outputs[0]))):
        parts = [_parts(y)[i] for y in outputs]
        if isinstance(parts[0], seq.Sequence):
            joined.append(seq.Sequence.concatenate_sequences(parts))
        else:  # No time axis (e.g. a final RNN state): the last step's value counts.
            joined.append(parts[-1])
    return _like(tuple(joined), outputs[0]), states


def _scan_steps(predict, x, weights, state, block: int, streamed):
    """Feeds x in equal blocks through a lax.scan: compiled once, whatever the length."""
    n_blocks = next(item.shape[1] for item, s in zip(_parts(x), streamed) if s) // block

    def to_blocks(a):  # [b, n*block, ...] -> [n, b, block, ...]
        a = a.reshape((a.shape[0], n_blocks, block) + a.shape[2:])
        return jnp.moveaxis(a, 1, 0)

    blocks = _map_time_items(lambda item: jax.tree.map(to_blocks, item), x, streamed)
    constant = tuple(item for item, s in zip(_parts(x), streamed) if not s)

    def body(state, block_items):
        it_blocks, it_constant = iter(_parts(block_items)), iter(constant)
        inputs = _like(tuple(next(it_blocks) if s else next(it_constant) for s in streamed), x)
        y, new_state = predict.pure_fn(inputs, weights, state, None)
        return new_state, y

    streamed_blocks = _like(tuple(item for item, s in zip(_parts(blocks), streamed) if s), blocks)
    final_state, ys = jax.lax.scan(body, state, streamed_blocks)

    def from_blocks(a):  # [n, b, out_block, ...] -> [b, n*out_block, ...]
        a = jnp.moveaxis(a, 0, 1)
        return a.reshape((a.shape[0], a.shape[1] * a.shape[2]) + a.shape[3:])

    joined = tuple(
        jax.tree.map(from_blocks, item) if isinstance(item, seq.Sequence) else item[-1] for item in _parts(ys)
    )
    return _like(joined, ys), final_state


def _drop_front(y, n: int):
    return _like(tuple(item[:, n:] if isinstance(item, seq.Sequence) else item for item in _parts(y)), y)


def _real_dot(values, cot):
    """values * cot, made real: complex outputs contribute both parts to the loss."""
    product = values * cot
    return jnp.real(product) + jnp.imag(product) if jnp.iscomplexobj(product) else product


def _masked_dot(y, cotangents):
    total = 0.0
    for item, cot in zip(_parts(y), cotangents):
        if isinstance(item, seq.Sequence):
            steps = min(cot.shape[1], item.shape[1])
            mask = item.mask[:, :steps].reshape((item.shape[0], steps) + (1,) * (item.ndim - 2))
            total = total + jnp.sum(jnp.where(mask, _real_dot(item.values[:, :steps], cot[:, :steps]), 0.0))
        else:
            total = total + jnp.sum(_real_dot(item, cot))
    return total


def _graph(layer) -> list:
    """Every layer of `layer`'s graph, each once."""
    seen, found, todo = set(), [], [layer]
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            found.append(node)
            todo.extend(node.sublayers)
    return found


def _fed_shifted(layer):
    """Eval-mode `layer`, or where it shifts its input (ShiftRight) a twin fed the shifted stream.

    The twin's shifting layers run as in predict mode (no-ops), so it computes
    what the predict-mode layer computes on the stream the caller shifts.
    """
    if not any(node.fed_shifted_in_predict_mode for node in _graph(layer)):
        return layer
    twin = layer.with_mode("eval")
    for node in _graph(twin):
        if node.fed_shifted_in_predict_mode:
            node._mode = "predict"
    return twin


def verify_contract(
    layer_fn,
    input_signature,
    *,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    check_gradients: bool = True,
    int_maxval: int = 8,
    random_lengths: bool = True,
    streamed=None,
    chunkings=None,
    check_reset: bool = True,
) -> ContractReport:
    """Checks that `layer_fn(mode)` keeps the streaming contract; raises AssertionError if not.

    Args:
      layer_fn: builds the layer for a mode ('eval' for layer-wise, 'predict'
        for step-wise); both must take the same weights.
      input_signature: `[batch, time, ...]` ShapeDtypes (Sequences of them, or a
        tuple for several inputs); time must be a multiple of the block size.
        Time-bearing inputs become Sequences with random lengths and garbage
        past them.
      seed: for the random inputs, weights, lengths and chunkings.
      atol: absolute tolerance of every comparison.
      rtol: relative tolerance of every comparison.
      check_gradients: also compare layer-wise and step-wise gradients of the
        valid outputs with respect to float inputs and weights.
      int_maxval: integer inputs are drawn from [0, int_maxval).
      random_lengths: rows of random valid lengths (else all full).
      streamed: per input, whether it is fed block by block (default: every
        time-bearing input); the others (e.g. a cross-attention source) are
        given whole at every step.
      chunkings: the step-wise runs to compare, each a list of chunk sizes in
        blocks (cycled until the input ends), e.g. `[[1], [3, 1, 2]]`;
        default `[[1], [2], eight random sizes from 1 to 3]`.
      check_reset: also check that restarting rows mid-stream
        (`reset_stream_rows`) and feeding them new streams gives what fresh
        streams give, and leaves the other rows' outputs as they were (on by
        default; a layer whose state holds batch-wide stream content fails it).

    Checks: layer-wise == step-wise over chunkings (default: 1x, 2x and random
    multiples of block_size) (after flushing `input_latency` invalid steps and
    dropping `output_latency` outputs, which must be invalid); output masks;
    padding invariance (garbage and NaN past the lengths, extra end padding);
    batch invariance (shuffled rows); gradients; predict-mode state shapes and
    dtypes stable from step to step; with `check_reset`, rows restarted
    mid-stream equal fresh streams, the other rows unaffected; the weights
    tree equal in both modes;
    output length = input length x output_ratio, give or take the latencies
    (Delay's layer-wise output is input_latency steps longer, Lookahead's
    output_latency steps shorter, as in SequenceLayers).
    """
    rng = np.random.default_rng(seed)
    signature = (
        shapes.signature(input_signature)
        if not isinstance(input_signature, seq.Sequence)
        else input_signature
    )
    layer = _fed_shifted(layer_fn("eval"))
    predict = layer_fn("predict")
    name = layer.name
    if not predict.supports_step:
        _fail(name, "supports_step is False: the layer does not stream")
    if streamed is None:
        streamed = tuple(_is_time_signature(s) for s in _parts(signature))
    streamed = tuple(streamed)
    block_size = predict.block_size
    ratio = predict.output_ratio
    in_latency, out_latency = predict.input_latency, predict.output_latency
    checks = []

    x = _random_inputs(signature, streamed, rng, int_maxval, random_lengths)
    time = next(item.shape[1] for item, s in zip(_parts(x), streamed) if s)
    if time % block_size:
        _fail(name, f"the test input has {time} steps; use a multiple of block_size={block_size}")
    x_signature = shapes.signature(x)  # Compiled init: eager init of a model is op by op and slow.
    weights, state = jax.jit(lambda r: layer.init_tree(x_signature, r)[:2])(jax.random.PRNGKey(seed))

    layer_wise = jax.jit(lambda x, w, s: layer.pure_fn(x, w, s, None)[0])
    y = layer_wise(x, weights, state)

    # Output length: time x output_ratio, give or take the latencies: Delay's layer-wise
    # output is input_latency steps longer, Lookahead's output_latency steps shorter.
    flush = -(-in_latency // block_size) * block_size
    shortest, longest = time * ratio - out_latency, (time + flush) * ratio
    for item in _parts(y):
        if isinstance(item, seq.Sequence) and not shortest <= item.shape[1] <= longest:
            _fail(
                name,
                f"output has {item.shape[1]} steps for {time} input steps, but output_ratio={ratio} "
                f"(with input_latency={in_latency}, output_latency={out_latency}) allows "
                f"{shortest} to {longest}",
            )
    checks.append("output_ratio")

    # Padding invariance: other garbage, NaN, and extra end padding.
    for nan in (False, True):
        x2 = _map_time_items(lambda s, nan=nan: _with_garbage(s, rng, nan, int_maxval), x, streamed)
        _compare_outputs(
            name,
            f"padding invariance (garbage{' NaN' if nan else ''} past the lengths)",
            y,
            layer_wise(x2, weights, state),
            atol,
            rtol,
        )
    extra = 2 * block_size
    x_long = _map_time_items(
        lambda s: _with_garbage(s.pad_time(0, extra, valid=False), rng, False, int_maxval), x, streamed
    )
    _compare_outputs(
        name,
        f"padding invariance ({extra} more steps of end padding)",
        y,
        layer_wise(x_long, weights, state),
        atol,
        rtol,
    )
    checks.append("padding invariance")

    # Batch invariance: shuffled rows give shuffled outputs.
    batch = jax.tree.leaves(x)[0].shape[0]
    perm = np.arange(batch)[::-1]  # Reversal: never the identity, never a rotation (for batch > 2).
    x_perm = jax.tree.map(lambda a: a[perm], x)
    y_perm = jax.tree.map(lambda a: a[perm], y)
    _compare_outputs(
        name, "batch invariance (shuffled rows)", y_perm, layer_wise(x_perm, weights, state), atol, rtol
    )
    checks.append("batch invariance")

    # Step-wise equals layer-wise.
    x_stream = _map_time_items(
        lambda s: _with_garbage(s.pad_time(0, flush, valid=False), rng, False, int_maxval), x, streamed
    )
    total = time + flush
    first_block = _map_time_items(lambda s: s[:, :block_size], x_stream, streamed)
    predict_weights_sig, _ = predict.weights_and_state_signature(shapes.signature(first_block))
    if jax.tree.structure(predict_weights_sig) != jax.tree.structure(weights):
        _fail(name, "the weights tree differs between eval and predict mode")
    _, state0 = streaming.start_stream(predict, shapes.signature(first_block), weights)
    state0_sig = shapes.signature(jax.tree.leaves(state0))
    step_fn = jax.jit(lambda x, w, s: predict.pure_fn(x, w, s, None))
    if chunkings is None:
        chunkings = [[1], [2], [int(k) for k in rng.integers(1, 4, size=8)]]
    chunkings = [_chunk_sizes(name, blocks, block_size) for blocks in chunkings]
    for sizes in chunkings:
        lengths = _chunk_lengths(total, sizes)
        y_step, states = _run_steps(predict, step_fn, x_stream, weights, state0, lengths, streamed)
        for i, s in enumerate(states):
            if (
                jax.tree.structure(s) != jax.tree.structure(state0)
                or shapes.signature(jax.tree.leaves(s)) != state0_sig
            ):
                _fail(
                    name,
                    f"predict-mode state changed shape or dtype after step {i}: "
                    f"{shapes.short_form(state0_sig)} -> {shapes.short_form(shapes.signature(jax.tree.leaves(s)))}",
                )
        for i, item in enumerate(_parts(y_step)):
            if isinstance(item, seq.Sequence) and out_latency and bool(jnp.any(item.mask[:, :out_latency])):
                _fail(
                    name,
                    f"output {i}: the first output_latency={out_latency} step-wise outputs must be invalid",
                )
        what = f"step-wise (blocks of {lengths[:4]}...) vs layer-wise"
        _compare_outputs(name, what, y, _drop_front(y_step, out_latency), atol, rtol)
    checks.append("step-wise == layer-wise")

    if check_reset:
        # Its own generator: the other checks draw the same values with or without it.
        reset_rng = np.random.default_rng([seed, 1])
        x_new = _random_inputs(signature, streamed, reset_rng, int_maxval, random_lengths)
        x_new = _map_time_items(
            lambda s: _with_garbage(s.pad_time(0, flush, valid=False), reset_rng, False, int_maxval),
            x_new,
            streamed,
        )
        _check_reset(
            name, predict, step_fn, x_stream, x_new, weights, state0, streamed, block_size, atol, rtol
        )
        checks.append("reset rows == fresh streams")

    if check_gradients:
        # Moderate garbage: the gradient of exp() at 1e3 is inf even where the loss ignores it.
        x, x_stream = (
            _map_time_items(lambda s: _with_garbage(s, rng, False, int_maxval, scale=1.0), a, streamed)
            for a in (x, x_stream)
        )
        _check_gradients(
            name,
            layer,
            predict,
            x,
            x_stream,
            weights,
            state,
            state0,
            streamed,
            block_size,
            out_latency,
            rng,
            atol,
            rtol,
        )
        checks.append("gradients")

    return ContractReport(name, block_size, ratio, in_latency, out_latency, chunkings, checks)


def _check_gradients(
    name,
    layer,
    predict,
    x,
    x_stream,
    weights,
    state,
    state0,
    streamed,
    block_size,
    out_latency,
    rng,
    atol,
    rtol,
):
    """Layer-wise and step-wise gradients of the valid outputs agree."""
    y = jax.eval_shape(lambda x: layer.pure_fn(x, weights, state, None)[0], x)
    cotangents = []
    for item in _parts(y):  # Each output's layer-wise shape; step-wise ones are trimmed to it.
        cotangents.append(jnp.asarray(rng.standard_normal(item.shape).astype(np.float32)))

    def float_values(x):
        return [
            i
            for i, (item, s) in enumerate(zip(_parts(x), streamed))
            if s and jnp.issubdtype(item.values.dtype, jnp.floating)
        ]

    differentiable = float_values(x)

    def replace(x, values):
        items = list(_parts(x))
        for i, v in zip(differentiable, values):
            items[i] = seq.Sequence(v, items[i].mask)
        return _like(tuple(items), x)

    def layer_loss(values, w):
        return _masked_dot(layer.pure_fn(replace(x, values), w, state, None)[0], cotangents)

    def step_loss(values, w):
        flush = x_stream
        full = replace(
            flush,
            [
                jnp.concatenate([v, _parts(flush)[i].values[:, v.shape[1] :]], axis=1)
                for i, v in zip(differentiable, values)
            ],
        )
        y_step, _ = _scan_steps(predict, full, w, state0, block_size, streamed)
        return _masked_dot(_drop_front(y_step, out_latency), cotangents)

    values = [_parts(x)[i].values for i in differentiable]
    g_layer = jax.jit(jax.grad(layer_loss, argnums=(0, 1)))(values, weights)
    g_step = jax.jit(jax.grad(step_loss, argnums=(0, 1)))(values, weights)
    for what, gl, gs in (("inputs", g_layer[0], g_step[0]), ("weights", g_layer[1], g_step[1])):
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(gl)[0], jax.tree.leaves(gs)):
            a, b = np.asarray(a), np.asarray(b)
            if not np.all(np.isfinite(a)):
                _fail(name, f"layer-wise gradient w.r.t. {what}{jax.tree_util.keystr(path)} is not finite")
            scale = max(1.0, float(np.max(np.abs(a))) if a.size else 1.0)
            if not np.allclose(a, b, atol=10 * atol * scale, rtol=10 * rtol):
                _fail(
                    name,
                    f"gradients w.r.t. {what}{jax.tree_util.keystr(path)} differ between layer-wise "
                    f"and step-wise (max abs diff {np.max(np.abs(a - b)):.3g})",
                )


def _check_reset(name, predict, step_fn, x_stream, x_new, weights, state0, streamed, block_size, atol, rtol):
    """Rows restarted mid-stream and fed new streams give what fresh streams give; the other rows go on.

    The even rows are restarted after half the stream's blocks (blocks of
    block_size throughout, so every run is aligned with its stream's start),
    then fed `x_new` from its first step, its whole-stream inputs included;
    the odd rows go on with `x_stream`.
    """
    total = next(item.shape[1] for item, s in zip(_parts(x_stream), streamed) if s)
    batch = jax.tree.leaves(x_stream)[0].shape[0]
    prefix = total // block_size // 2 * block_size
    rest = [block_size] * ((total - prefix) // block_size)
    restarted = np.arange(batch) % 2 == 0
    block_signature = shapes.signature(_time_slice(x_stream, streamed, 0, block_size))

    def by_row(new, old):  # Restarted rows from `new`; leaves without a batch axis from `old`.
        if not old.ndim or old.shape[0] != batch:
            return old
        return jnp.where(restarted.reshape((batch,) + (1,) * (old.ndim - 1)), new, old)

    state = state0
    if prefix:
        state = _run_steps(
            predict, step_fn, x_stream, weights, state0, [block_size] * (prefix // block_size), streamed
        )[1][-1]
    try:
        reset = jax.jit(
            lambda s, rows: streaming.reset_stream_rows(predict, s, rows, block_signature, weights)
        )
        state_reset = reset(state, jnp.asarray(restarted))
    except ValueError as e:
        _fail(name, f"reset_stream_rows cannot restart rows of this layer's state: {e}")
    x_rest = _time_slice(x_stream, streamed, prefix, total)
    x_mixed = jax.tree.map(by_row, _time_slice(x_new, streamed, 0, total - prefix), x_rest)
    y_mixed, _ = _run_steps(predict, step_fn, x_mixed, weights, state_reset, rest, streamed)
    y_fresh, _ = _run_steps(predict, step_fn, x_new, weights, state0, rest, streamed)
    y_going_on, _ = _run_steps(predict, step_fn, x_rest, weights, state, rest, streamed)

    what = (
        f"rows {np.flatnonzero(restarted).tolist()} restarted after {prefix} steps (reset_stream_rows) "
        f"vs fresh streams, the other rows vs their streams without a reset"
    )
    expected = jax.tree.map(by_row, y_fresh, y_going_on)
    _compare_outputs(name, what, expected, y_mixed, atol, rtol)
