"""The TransformerLM training step and greedy decode in SequenceLayers (0.2, with flax).

The model: Embedding, AddTimingSignal (SequenceLayers' sinusoids, not a
trainable table, so it has max_len x d_model fewer parameters than Trax's),
n pre-LN blocks (Residual(LayerNormalization, DotProductSelfAttention with
biased q/k/v, Flatten, Dense), Residual(LayerNormalization, Dense(d_ff),
Relu, Dense)), LayerNormalization, Dense(vocab). SequenceLayers cannot
step global attention (`max_past_horizon=-1`), so the horizon is max_len,
which over max_len steps is the same function. The inputs are the tokens
shifted right outside the model; decoding feeds token 0, then each
greedy token, through `step` in a `jax.lax.scan`.

    /tmp/slvenv/bin/python benchmarks/peers/sequence_layers_peer.py [--rounds 5]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
import sequence_layers
import sequence_layers.jax as sl
from peer_common import CONFIG, best_median_ms, count_params, parse_args, report


def make_model(c: dict):
    d, heads = c["d_model"], c["n_heads"]
    layers = [sl.Embedding.Config(dimension=d, num_embeddings=c["vocab_size"]), sl.AddTimingSignal.Config()]
    for _ in range(c["n_layers"]):
        attention = sl.DotProductSelfAttention.Config(
            num_heads=heads,
            units_per_head=d // heads,
            max_past_horizon=c["max_len"],
            input_projection=sl.SeparateQueryKeyValueProjection(),
            use_bias=True,
        )
        layers += [
            sl.Residual.Config(
                [sl.LayerNormalization.Config(), attention, sl.Flatten.Config(), sl.Dense.Config(d)]
            ),
            sl.Residual.Config(
                [
                    sl.LayerNormalization.Config(),
                    sl.Dense.Config(c["d_ff"]),
                    sl.Relu.Config(),
                    sl.Dense.Config(d),
                ]
            ),
        ]
    layers += [sl.LayerNormalization.Config(), sl.Dense.Config(c["vocab_size"])]
    return sl.Serial.Config(layers).make()


def main() -> None:
    args = parse_args(__doc__)
    c = CONFIG
    model = make_model(c)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (c["batch"], c["length"]), 0, c["vocab_size"])
    params = model.init(jax.random.PRNGKey(1), sl.Sequence.from_values(tokens), training=False)
    tx = optax.adam(c["learning_rate"])

    def loss_fn(params, tokens):
        inputs = jnp.pad(tokens, ((0, 0), (1, 0)))[:, : tokens.shape[1]]
        logits = model.apply(params, sl.Sequence.from_values(inputs), training=True).values
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, tokens[..., None], axis=-1))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def decode(params):
        batch = c["batch"]
        state = model.apply(
            params, batch, sl.ChannelSpec((), jnp.int32), training=False, method=model.get_initial_state
        )

        def body(carry, _):
            token, state = carry
            x = sl.Sequence.from_values(token[:, None])
            y, state = model.apply(params, x, state, training=False, method=model.step)
            next_token = jnp.argmax(y.values[:, -1], axis=-1).astype(jnp.int32)
            return (next_token, state), next_token

        first = jnp.zeros((batch,), jnp.int32)
        _, out = jax.lax.scan(body, (first, state), None, length=c["length"])
        return out.T

    carry = {"params": jax.tree_util.tree_map(jnp.array, params)}
    carry["opt_state"] = tx.init(carry["params"])

    def one_step():
        carry["params"], carry["opt_state"], loss = train_step(carry["params"], carry["opt_state"], tokens)
        return loss

    times = best_median_ms(
        {"train": one_step, "decode": lambda: jax.device_get(decode(params))}, args.rounds, args.calls
    )
    report(
        "sequence-layers",
        "SL stack",
        getattr(sequence_layers, "__version__", "0.2"),
        times["train"],
        times["decode"],
        count_params(params),
        "AddTimingSignal (no position table); max_past_horizon=max_len",
    )


if __name__ == "__main__":
    main()
