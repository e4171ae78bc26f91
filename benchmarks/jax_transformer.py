"""A hand-written JAX transformer language model: the reference the benchmarks time trax_sl against.

The same math as `trax_sl.models.TransformerLM` (and Trax's): the inputs
shifted right by one (a 0 token first), an embedding, a trainable
positional table initialised to Trax's sinusoids, pre-LN blocks (causal
multi-head attention with biased q/k/v/output projections, a ReLU
feed-forward), a final LayerNorm and a Dense to the vocabulary. Parameters
are plain nested dicts, written as one would without a layer library;
`params_from_trax_sl` fills them from a TransformerLM's weights, so the two
can be checked to agree on the same numbers. Greedy decoding runs a KV cache
of `max_len` steps per layer in one `jax.lax.scan`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl.layers import trax_checkpoint

_EPSILON = 1e-6  # trax_sl's (and Trax's) LayerNorm epsilon.
_MASKED = -1e9  # The logit of a key a query may not see (Trax's).


def sinusoids(max_len: int, d_model: int) -> np.ndarray:
    """Trax's positional table: sin on even features, cos on odd ones."""
    position = np.arange(max_len)[:, None]
    rates = np.exp(np.arange(0, d_model, 2) * -(np.log(10000.0) / d_model))
    table = np.zeros((max_len, d_model), np.float32)
    table[:, 0::2] = np.sin(position * rates)
    table[:, 1::2] = np.cos(position * rates)
    return table


def init_params(rng, vocab_size: int, d_model: int, d_ff: int, n_layers: int, max_len: int) -> dict:
    """Random parameters (Glorot-uniform matrices, zero biases, unit LayerNorm scales)."""

    def dense(key, d_in, d_out):
        limit = np.sqrt(6.0 / (d_in + d_out))
        return {
            "w": jax.random.uniform(key, (d_in, d_out), jnp.float32, -limit, limit),
            "b": jnp.zeros((d_out,), jnp.float32),
        }

    def norm():
        return {"scale": jnp.ones((d_model,), jnp.float32), "bias": jnp.zeros((d_model,), jnp.float32)}

    keys = iter(jax.random.split(rng, 2 + 6 * n_layers))
    layers = []
    for _ in range(n_layers):
        layer = {"ln1": norm(), "ln2": norm()}
        for name in ("q", "k", "v", "o"):
            layer[name] = dense(next(keys), d_model, d_model)
        layer["ff1"] = dense(next(keys), d_model, d_ff)
        layer["ff2"] = dense(next(keys), d_ff, d_model)
        layers.append(layer)
    return {
        "embed": jax.random.normal(next(keys), (vocab_size, d_model), jnp.float32) / np.sqrt(d_model),
        "positions": jnp.asarray(sinusoids(max_len, d_model)),
        "layers": layers,
        "ln": norm(),
        "out": dense(next(keys), d_model, vocab_size),
    }


def params_from_trax_sl(model, weights, n_layers: int) -> dict:
    """The reference's parameters holding a `trax_sl.models.TransformerLM`'s weights (copied).

    The arrays are taken in Trax's order (each block's in turn, whether the model stacks its blocks or not).
    """
    leaves = [jnp.array(leaf) for leaf in trax_checkpoint.in_trax_order(model, weights)]
    expected = 2 + 16 * n_layers + 4
    if len(leaves) != expected:
        raise ValueError(
            f"expected a TransformerLM's {expected} weight arrays for n_layers={n_layers}, got {len(leaves)}"
        )
    it = iter(leaves)

    def dense():
        return {"w": next(it), "b": next(it)}

    def norm():
        return {"scale": next(it), "bias": next(it)}

    params = {"embed": next(it), "positions": next(it), "layers": []}
    for _ in range(n_layers):
        layer = {"ln1": norm()}
        layer["q"], layer["k"], layer["v"], layer["o"] = dense(), dense(), dense(), dense()
        layer["ln2"] = norm()
        layer["ff1"], layer["ff2"] = dense(), dense()
        params["layers"].append(layer)
    params["ln"], params["out"] = norm(), dense()
    return params


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def layer_norm(x, p):
    mean = jnp.mean(x, -1, keepdims=True)
    variance = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(variance + _EPSILON) * p["scale"] + p["bias"]


def dense(x, p):
    return x @ p["w"] + p["b"]


def feed_forward(x, layer):
    return dense(jax.nn.relu(dense(x, layer["ff1"])), layer["ff2"])


def attention(x, layer, n_heads: int):
    """Causal multi-head self-attention on `[batch, time, d]`."""
    batch, time, d = x.shape

    # Heads before time, [batch, heads, time, units]: on XLA:CPU this layout needs fewer
    # copies than einsum("bqhd,bkhd->bhqk"), whose step was ~15% slower here.
    def heads(y):
        return y.reshape(batch, time, n_heads, d // n_heads).transpose(0, 2, 1, 3)

    q, k, v = (heads(dense(x, layer[name])) for name in ("q", "k", "v"))
    logits = (q / np.sqrt(d // n_heads)) @ jnp.swapaxes(k, -1, -2)
    causal = np.tril(np.ones((time, time), bool))
    probs = jax.nn.softmax(jnp.where(causal, logits, _MASKED), axis=-1)
    return dense((probs @ v).transpose(0, 2, 1, 3).reshape(batch, time, d), layer["o"])


def forward(params, tokens, n_heads: int):
    """Logits `[batch, time, vocab]`: step t predicts token t from the tokens before it."""
    time = tokens.shape[1]
    shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :time]
    x = params["embed"][shifted] + params["positions"][:time]
    for layer in params["layers"]:
        x = x + attention(layer_norm(x, layer["ln1"]), layer, n_heads)
        x = x + feed_forward(layer_norm(x, layer["ln2"]), layer)
    return dense(layer_norm(x, params["ln"]), params["out"])


def cross_entropy(logits, targets):
    """Mean over all positions of `-log softmax(logits)[target]`."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1))


def loss(params, tokens, n_heads: int):
    return cross_entropy(forward(params, tokens, n_heads), tokens)


@functools.partial(jax.jit, static_argnames=("batch", "length", "n_heads", "start_id"))
def greedy_decode(params, batch: int, length: int, n_heads: int, start_id: int = 0):
    """Greedy decoding of `length` tokens per row from `start_id`, with per-layer KV caches.

    Each layer keeps keys and values of `max_len` (the positional table's
    length) steps, `[batch, heads, max_len, units]` (heads before time, so
    attending needs no transposes); step t writes its keys at slot t and
    attends to slots <= t.
    """
    max_len, d = params["positions"].shape
    head = d // n_heads
    empty = jnp.zeros((batch, n_heads, max_len, head), jnp.float32)
    caches = [(empty, empty) for _ in params["layers"]]
    slots = jnp.arange(max_len)

    def step(carry, position):
        token, caches = carry
        x = params["embed"][token] + params["positions"][position]  # [batch, d]
        new_caches = []
        for layer, (keys, values) in zip(params["layers"], caches):
            y = layer_norm(x, layer["ln1"])
            q, k, v = (dense(y, layer[name]).reshape(batch, n_heads, head) for name in ("q", "k", "v"))
            keys = jax.lax.dynamic_update_slice(keys, k[:, :, None], (0, 0, position, 0))
            values = jax.lax.dynamic_update_slice(values, v[:, :, None], (0, 0, position, 0))
            logits = jnp.einsum("bhd,bhtd->bht", q / np.sqrt(head), keys)
            probs = jax.nn.softmax(jnp.where(slots <= position, logits, _MASKED), axis=-1)
            attended = jnp.einsum("bht,bhtd->bhd", probs, values).reshape(batch, d)
            x = x + dense(attended, layer["o"])
            x = x + feed_forward(layer_norm(x, layer["ln2"]), layer)
            new_caches.append((keys, values))
        logits = dense(layer_norm(x, params["ln"]), params["out"])
        next_token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (next_token, new_caches), next_token

    first = jnp.full((batch,), start_id, jnp.int32)
    _, tokens = jax.lax.scan(step, (first, caches), jnp.arange(length))
    return tokens.T
