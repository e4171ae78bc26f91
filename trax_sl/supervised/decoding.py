"""Autoregressive sampling from a predict-mode model, as one compiled loop.

The model runs in predict mode (streaming: each call takes one block of
tokens and carries its KV caches, positions and carries in its state). As in
Trax, the sampler feeds `start_id`, then each sampled token: the shifted
stream that a predict-mode `ShiftRight` (a no-op) expects.

Sampling runs on the device inside `jax.lax.scan` (no Python work or host
sync per token), greedy at temperature 0 and categorical otherwise, with JAX
random keys (reproducible for a given seed). Rows stop at `eos_id`.
`beam_search` keeps the `n_beams` most likely continuations instead, with
each beam's stream state carried along the beam it extends.
"""

from __future__ import annotations

import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, shapes
from trax_sl.layers import base, streaming
from trax_sl.layers.streaming import rows as stream_rows


def _sample(logits, rng, temperature: float):
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(rng, logits / temperature, axis=-1).astype(jnp.int32)


def _step(core: base.Layer, inputs, tokens, weights, state):
    """One predict-mode call: the last-step logits `[batch, vocab]` and the new state."""
    outputs, state = core.pure_fn(tokens if inputs is None else (inputs, tokens), weights, state, None)
    outputs = outputs[0] if isinstance(outputs, tuple) else outputs
    return getattr(outputs, "values", outputs)[:, -1], state


_PREDICT_TWINS: dict[int, tuple[base.Layer, base.Layer]] = {}


def _predict_twin(model: base.Layer) -> base.Layer:
    """The model's predict-mode twin, made once per model (so compiled loops are reused)."""
    if model.mode == "predict":
        return model
    cached = _PREDICT_TWINS.get(id(model))
    if cached is None or cached[0] is not model:
        cached = (model, model.with_mode("predict"))
        _PREDICT_TWINS[id(model)] = cached
    return cached[1]


def _capacity(model: base.Layer) -> tuple[int | None, str]:
    """(positions the model's predict-mode stream holds (None: unbounded), what sets that)."""
    predict_model = _predict_twin(model)
    return predict_model.stream_capacity, predict_model._spec().capacity_source


def check_capacity(
    model: base.Layer, prompt_length: int, max_length: int, where: str = "autoregressive_sample"
) -> None:
    """Raises ValueError (before anything compiles) when the prompt and max_length overflow the model's cache.

    Sampling `max_length` tokens after a prompt of `prompt_length` (start_id
    and the context) reads the model's outputs at `prompt_length +
    max_length - 1` positions, which the predict-mode stream must hold.
    """
    capacity, source = _capacity(model)
    needed = prompt_length + max_length - 1
    if capacity is not None and needed > capacity:
        raise ValueError(
            f"{where}: a prompt of {prompt_length} token(s) (start_id and the context) "
            f"and max_length={max_length} need {needed} positions, but the model's predict-mode "
            f"stream holds {capacity} ({source}); pass max_length <= {capacity - prompt_length + 1} "
            f"or build the model with a larger cache"
        )


def _start(model, weights, state, batch_size: int, inputs):
    """(the predict-mode model, its fresh stream state)."""
    predict_model = _predict_twin(model)
    block = shapes.ShapeDtype((batch_size, 1), np.int32)
    signature = block if inputs is None else (shapes.signature(inputs), block)
    _, stream_state = streaming.start_stream(predict_model, signature, weights, state)
    return predict_model, stream_state


@functools.partial(jax.jit, static_argnames=("core", "length", "temperature", "eos_id", "min_length"))
def _decode(core, inputs, weights, state, first_tokens, rng, length, temperature, eos_id, min_length):
    """Feeds `first_tokens` [batch, k] (start_id + context), then samples `length` tokens."""
    logits, state = _step(core, inputs, first_tokens, weights, state)
    batch = first_tokens.shape[0]

    def body(carry, step_rng):
        logits, state, done, count = carry
        if min_length > 0:  # eos is not allowed before min_length tokens.
            blocked = (count < min_length) & (jnp.arange(logits.shape[-1]) == eos_id).reshape((1, -1))
            logits = jnp.where(blocked, -jnp.inf, logits)
        token = jnp.where(done, eos_id, _sample(logits, step_rng, temperature))
        done = done | (token == eos_id)
        next_logits, state = _step(core, inputs, token.reshape((batch, 1)), weights, state)
        return (next_logits, state, done, count + 1), token

    carry = (logits, state, jnp.zeros((batch,), jnp.bool_), jnp.zeros((), jnp.int32))
    _, tokens = jax.lax.scan(body, carry, jax.random.split(rng, length))
    return tokens.T


@functools.partial(jax.jit, static_argnames=("core", "length", "temperature"))
def _decode_chunk(core, inputs, weights, state, last_tokens, rng, length, temperature):
    """`length` tokens without eos, with the state and last tokens to go on from."""

    def body(carry, step_rng):
        tokens, state = carry
        logits, state = _step(core, inputs, tokens, weights, state)
        token = _sample(logits, step_rng, temperature)
        return (token.reshape((-1, 1)), state), token

    (last, state), tokens = jax.lax.scan(body, (last_tokens, state), jax.random.split(rng, length))
    return tokens.T, state, last


def _prompt(where: str, model, inputs, context, batch_size: int, start_id: int):
    """(encoder inputs, the tokens fed first: start_id and the context); a language model's inputs are its prompt."""
    if inputs is not None and model.n_in == 1:  # As in Trax.
        if context is not None:
            raise ValueError(
                f"{where}: a language model's inputs are its prompt (as context is); give one of them"
            )
        context, inputs = inputs, None
    return inputs, _prefix(batch_size, start_id, context)


def _prefix(batch_size: int, start_id: int, context):
    start = np.full((batch_size, 1), start_id, np.int32)
    if context is None:
        return start
    context = np.asarray(context, np.int32).reshape((batch_size, -1))
    return np.concatenate([start, context], axis=1)


@gin.configurable(module="trax_sl.supervised.decoding")
def autoregressive_sample(
    model,
    inputs=None,
    batch_size: int = 1,
    temperature: float = 1.0,
    start_id: int = 0,
    eos_id: int = 1,
    max_length: int = 100,
    accelerate: bool = True,
    eval_mode: bool = False,
    eval_min_length: int = 1,
    *,
    context=None,
    rng=None,
    weights=None,
    state=None,
):
    """Samples `max_length` tokens (fewer when every row hits eos_id) from a model.

    The positional parameters are Trax's, in Trax's order; `context`, `rng`,
    `weights` and `state` are keywords.

    Args:
      model: a language model (or encoder-decoder taking (inputs, targets)),
        in any mode: its predict-mode twin is used. Its weights come from
        `weights` or the model's interactive cache (set by init/init_from_file).
      context: optional `[batch_size, k]` token ids fed after start_id before
        sampling (a prompt).
      inputs: optional encoder inputs, given whole at every step; for a
        language model (n_in 1), its prompt, as in Trax (the same as `context`).
      batch_size: number of rows sampled at once.
      temperature: 0 for greedy (argmax) decoding.
      start_id: the first token fed to the model.
      eos_id: a row stops at this token; later positions hold eos_id.
      max_length: number of tokens sampled.
      accelerate: True: one compiled loop on a fresh stream. False, with a
        predict-mode model: Trax's eager loop, which calls the model itself
        once per token from its current stream (`model.state`) and leaves it
        there, so a second call continues the stream and restoring
        `model.state` rewinds it (any layer with Trax's calling convention
        works, e.g. `tl.test_utils.MockTransformerLM`).
      eval_mode: if True, eos is not sampled before eval_min_length tokens.
      eval_min_length: see eval_mode.
      rng: a JAX key (default PRNGKey(0)): the same key gives the same samples.
      weights: override the model's cached weights.
      state: override the model's cached (trained) state.

    Returns:
      int32 numpy array `[batch_size, length]`, length <= max_length: cut after
      the last row's eos.
    """
    inputs, prefix = _prompt("autoregressive_sample", model, inputs, context, batch_size, start_id)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    min_length = eval_min_length if eval_mode else 0
    if not accelerate and (model.mode == "predict" or model._has_predict_mode_sublayer()):
        return _sample_eagerly(model, inputs, prefix, rng, max_length, float(temperature), eos_id, min_length)
    check_capacity(model, prefix.shape[1], max_length)
    weights = model.weights if weights is None else weights
    core, core_state = _start(model, weights, state, batch_size, inputs)
    tokens = _decode(
        core,
        inputs,
        weights,
        core_state,
        jnp.asarray(prefix),
        rng,
        length=max_length,
        temperature=float(temperature),
        eos_id=eos_id,
        min_length=min_length,
    )
    return _cut_after_eos(np.asarray(tokens), eos_id)


def _cut_after_eos(tokens, eos_id: int):
    """`tokens` [batch, length] up to the last row's first eos, when every row has one."""
    ended = tokens == eos_id
    if ended.any(axis=1).all():
        tokens = tokens[:, : int(ended.argmax(axis=1).max()) + 1]
    return tokens


def _sample_eagerly(
    model, inputs, prefix, rng, max_length: int, temperature: float, eos_id: int, min_length: int
):
    """Trax's loop (accelerate=False): `model(...)` once per token, on the model's own stream."""
    tokens, sampled = prefix, []
    done = np.zeros((prefix.shape[0],), bool)
    for count in range(max_length):
        outputs = model(tokens if inputs is None else (inputs, tokens))
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs
        logits = jnp.asarray(getattr(outputs, "values", outputs))[:, -1]
        if count < min_length:  # eos is not allowed before min_length tokens.
            logits = jnp.where((jnp.arange(logits.shape[-1]) == eos_id)[None, :], -jnp.inf, logits)
        rng, step_rng = jax.random.split(rng)
        token = np.where(done, eos_id, np.asarray(_sample(logits, step_rng, temperature)))
        done |= token == eos_id
        sampled.append(token)
        if done.all():
            break
        tokens = token.reshape((-1, 1)).astype(np.int32)
    return _cut_after_eos(np.stack(sampled, axis=1).astype(np.int32), eos_id)


@gin.configurable(module="trax_sl.supervised.decoding")
def beam_search(
    model,
    inputs=None,
    batch_size: int = 1,
    n_beams: int = 2,
    start_id: int = 0,
    eos_id: int = 1,
    max_length: int = 100,
    length_penalty: float = 1.0,
    accelerate: bool = True,
    *,
    context=None,
    weights=None,
    state=None,
):
    """The `n_beams` most likely continuations of `max_length` tokens, best first (Trax's signature).

    Beam search as one compiled loop: every row holds `n_beams` beams, each a
    stream of the predict-mode model; at each step the `n_beams` best
    one-token extensions of a row's beams (by summed log-probability) become
    its beams, each taking the stream state of the beam it extends. At the
    first step all extensions come from one beam, as in Trax. A beam that
    emits `eos_id` is finished: it keeps its score and is padded with
    eos_id. Beams are ranked by `log_prob / ((5 + length) / 6) **
    length_penalty` (GNMT's length normalisation, length counting up to the
    eos), which orders beams of equal length as their log-probabilities do.

    Args:
      model: as in `autoregressive_sample`.
      inputs: as in `autoregressive_sample` (a language model's inputs are its prompt).
      batch_size: as in `autoregressive_sample`.
      start_id: as in `autoregressive_sample`.
      context: as in `autoregressive_sample`.
      weights: as in `autoregressive_sample`.
      state: as in `autoregressive_sample`.
      n_beams: beams kept per row.
      eos_id: the token that ends a beam.
      max_length: tokens decoded per beam.
      length_penalty: the exponent of the length normalisation of the ranking.
      accelerate: kept for Trax compatibility; the loop is always compiled.

    Returns:
      As Trax's: a list of `n_beams` pairs `(tokens [batch_size, max_length]
      int32, log_prob [batch_size] float32)`, best first per row.
    """
    del accelerate
    checks.check_positive("beam_search", n_beams=n_beams, max_length=max_length)
    inputs, prefix = _prompt("beam_search", model, inputs, context, batch_size, start_id)
    check_capacity(model, prefix.shape[1], max_length, where="beam_search")
    weights = model.weights if weights is None else weights
    rows = batch_size * n_beams
    if inputs is not None:
        inputs = jax.tree.map(lambda x: np.repeat(np.asarray(x), n_beams, axis=0), inputs)
    core, core_state = _start(model, weights, state, rows, inputs)
    block = shapes.ShapeDtype((rows, 1), np.int32)
    signature = block if inputs is None else (shapes.signature(inputs), block)
    tokens, scores = _beams(
        core,
        inputs,
        weights,
        core_state,
        jnp.asarray(np.repeat(prefix, n_beams, axis=0)),
        axes=tuple(stream_rows.batch_axes(core, signature)),
        n_beams=n_beams,
        length=max_length,
        eos_id=eos_id,
        length_penalty=float(length_penalty),
    )
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    return [(tokens[:, b], scores[:, b]) for b in range(n_beams)]


def _gather_streams(state, axes, rows):
    """The stream state whose stream i is stream `rows[i]` of `state` (`axes`: `rows.batch_axes`)."""
    leaves, structure = jax.tree.flatten(state)
    gathered = []
    for leaf, axis_and_k in zip(leaves, axes):
        if axis_and_k is None:  # Shared by the batch.
            gathered.append(leaf)
            continue
        axis, k = axis_and_k
        by_stream = leaf.reshape(leaf.shape[:axis] + (leaf.shape[axis] // k, k) + leaf.shape[axis + 1 :])
        gathered.append(jnp.take(by_stream, rows, axis=axis).reshape(leaf.shape))
    return jax.tree.unflatten(structure, gathered)


@functools.partial(jax.jit, static_argnames=("core", "axes", "n_beams", "length", "eos_id", "length_penalty"))
def _beams(core, inputs, weights, state, prefix, axes, n_beams, length, eos_id, length_penalty):
    """Beam search over `length` tokens after `prefix` [batch * n_beams, k]; (tokens, scores), best first."""
    logits, state = _step(core, inputs, prefix, weights, state)
    rows = prefix.shape[0]
    batch = rows // n_beams
    vocab = logits.shape[-1]
    is_eos = (jnp.arange(vocab) == eos_id).reshape((1, 1, vocab))
    # At first all beams hold the same prefix: extend beam 0 only.
    scores = jnp.broadcast_to(jnp.where(jnp.arange(n_beams) == 0, 0.0, -jnp.inf)[None, :], (batch, n_beams))
    history = jnp.full((batch, n_beams, length), eos_id, jnp.int32)
    ends = jnp.full((batch, n_beams), length, jnp.int32)  # Tokens up to and including the eos.

    def select(logits, scores, history, ends, t):
        """Each row's n_beams best one-token extensions: their scores, tokens so far, ends, source beams."""
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape((batch, n_beams, vocab))
        finished = (ends < length)[:, :, None]
        log_probs = jnp.where(finished, jnp.where(is_eos, 0.0, -jnp.inf), log_probs)
        candidates = (scores[:, :, None] + log_probs).reshape((batch, n_beams * vocab))
        scores, best = jax.lax.top_k(candidates, n_beams)
        beam, token = best // vocab, (best % vocab).astype(jnp.int32)
        history = jnp.take_along_axis(history, beam[:, :, None], axis=1).at[:, :, t].set(token)
        ends = jnp.take_along_axis(ends, beam, axis=1)
        ends = jnp.where((ends == length) & (token == eos_id), t + 1, ends)
        return scores, history, ends, beam, token

    def body(carry, t):
        logits, state, scores, history, ends = carry
        scores, history, ends, beam, token = select(logits, scores, history, ends, t)
        state = _gather_streams(state, axes, (jnp.arange(batch)[:, None] * n_beams + beam).reshape((rows,)))
        logits, state = _step(core, inputs, token.reshape((rows, 1)), weights, state)
        return (logits, state, scores, history, ends), None

    carry = (logits, state, scores, history, ends)
    (logits, _, scores, history, ends), _ = jax.lax.scan(body, carry, jnp.arange(length - 1))
    scores, history, ends, _, _ = select(logits, scores, history, ends, length - 1)  # The last: no feed.
    ranked = scores / ((5.0 + ends) / 6.0) ** length_penalty
    order = jnp.argsort(-ranked, axis=1, stable=True)
    return jnp.take_along_axis(history, order[:, :, None], axis=1), jnp.take_along_axis(scores, order, axis=1)


def autoregressive_sample_stream(
    model,
    inputs=None,
    batch_size: int = 1,
    temperature: float = 1.0,
    start_id: int = 0,
    accelerate: bool = True,
    eval_mode: bool = False,
    eval_min_length: int = 1,
    rng=None,
    weights=None,
    state=None,
    chunk_length: int = 32,
):
    """Yields sampled tokens `[batch_size]` one position at a time, without end.

    Tokens are sampled on the device `chunk_length` at a time by the same
    compiled loop as `autoregressive_sample` (the stream's state carries over
    between chunks), and yielded one by one. A model whose predict-mode
    stream holds N positions (`stream_capacity`) yields N tokens, then raises
    ValueError naming its cache.
    """
    del accelerate, eval_min_length, eval_mode
    weights = model.weights if weights is None else weights
    core, stream_state = _start(model, weights, state, batch_size, inputs)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    last = jnp.asarray(_prefix(batch_size, start_id, None))
    capacity, source = _capacity(model)
    left = capacity
    while left is None or left > 0:
        length = chunk_length if left is None else min(chunk_length, left)
        rng, chunk_rng = jax.random.split(rng)
        tokens, stream_state, last = _decode_chunk(
            core,
            inputs,
            weights,
            stream_state,
            last,
            chunk_rng,
            length=length,
            temperature=float(temperature),
        )
        left = None if left is None else left - length
        yield from np.asarray(tokens).T
    raise ValueError(
        f"autoregressive_sample_stream: the model's predict-mode stream holds {capacity} positions "
        f"({source}) and all {capacity} tokens were sampled; build the model with a larger cache "
        f"to sample more"
    )
