"""Both peer models' training step and greedy decode in trax_sl, timed as the peer scripts time theirs.

- TransformerLM, Trax's model (as trax_peer.py runs it in Trax):
  `Serial(TransformerLM, WeightedCategoryCrossEntropy)`; decoding is
  `trax_sl.supervised.decoding.autoregressive_sample` at temperature 0.
- SL stack, the SequenceLayers model of sequence_layers_peer.py written with
  `trax_sl.sl` (same layers, config fields and parameter count; tokens shifted
  outside the model, the same loss); decoding is `autoregressive_sample` on its
  predict-mode twin, which starts from token 0 as the SequenceLayers peer does.

Each step is jitted with optax Adam, weights and optimizer state donated. The
four candidates are timed interleaved in one process.

    PYTHONPATH=. python benchmarks/peers/trax_sl_peer.py [--rounds 5]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from peer_common import CONFIG, best_median_ms, count_params, parse_args, report

import trax_sl
import trax_sl.layers as tl
from trax_sl import models, shapes, sl
from trax_sl.sequence import Sequence
from trax_sl.supervised import decoding


class Stepper:
    """One model's jitted training step, carrying its (donated) weights and optimizer state."""

    def __init__(self, loss_fn, weights, batch, tx):
        @functools.partial(jax.jit, donate_argnums=(0, 1))
        def train_step(weights, opt_state, batch):
            loss, grads = jax.value_and_grad(loss_fn)(weights, batch)
            updates, opt_state = tx.update(grads, opt_state, weights)
            return optax.apply_updates(weights, updates), opt_state, loss

        self._step = train_step
        self._weights = jax.tree.map(np.array, weights)  # A private copy: steps donate their inputs.
        self._opt_state = tx.init(self._weights)
        self._batch = batch

    def __call__(self):
        self._weights, self._opt_state, loss = self._step(self._weights, self._opt_state, self._batch)
        return loss


def greedy_decode(c: dict, model, weights):
    """A call decoding `c['length']` tokens for `c['batch']` rows at temperature 0 (Trax's sampler)."""

    def decode():
        return decoding.autoregressive_sample(
            model, batch_size=c["batch"], temperature=0.0, max_length=c["length"], eos_id=-1, weights=weights
        )

    return decode


def transformer_lm(c: dict, tokens, tx):
    """(train step, decode, parameter count) of Trax's TransformerLM."""
    hyper = {key: c[key] for key in ("vocab_size", "d_model", "d_ff", "n_layers", "n_heads", "max_len")}
    model = models.TransformerLM(dropout=0.0, **hyper)
    batch = (tokens, tokens, np.ones(tokens.shape, np.float32))
    with_loss = tl.Serial(model, tl.WeightedCategoryCrossEntropy())
    weights, state = with_loss.init(shapes.signature(batch))

    def loss_fn(w, batch):
        return with_loss.pure_fn(batch, w, state, None)[0]

    return Stepper(loss_fn, weights, batch, tx), greedy_decode(c, model, weights[0]), count_params(weights)


def sl_stack(c: dict, mode: str):
    """sequence_layers_peer.py's model, in `trax_sl.sl`."""
    d, heads = c["d_model"], c["n_heads"]
    layers = [sl.Embedding(dimension=d, num_embeddings=c["vocab_size"]), sl.AddTimingSignal()]
    for _ in range(c["n_layers"]):
        attention = sl.DotProductSelfAttention(
            num_heads=heads,
            units_per_head=d // heads,
            max_past_horizon=c["max_len"],
            use_bias=True,
            mode=mode,
        )
        layers += [
            sl.Residual([sl.LayerNormalization(), attention, sl.Flatten(), sl.Dense(d)]),
            sl.Residual([sl.LayerNormalization(), sl.Dense(c["d_ff"]), sl.Relu(), sl.Dense(d)]),
        ]
    layers += [sl.LayerNormalization(), sl.Dense(c["vocab_size"])]
    return sl.Serial(layers)


def sl_stack_candidates(c: dict, tokens, tx):
    """(train step, decode, parameter count) of the SL stack."""
    model = sl_stack(c, "train")
    tokens = jnp.asarray(tokens)
    weights, state = model.init(Sequence.from_values(tokens))

    def loss_fn(w, tokens):
        inputs = jnp.pad(tokens, ((0, 0), (1, 0)))[:, : tokens.shape[1]]
        logits = model.pure_fn(Sequence.from_values(inputs), w, state, None)[0].values
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, tokens[..., None], axis=-1))

    predict = sl_stack(c, "predict")

    def decode():
        return decoding.autoregressive_sample(
            predict,
            batch_size=c["batch"],
            temperature=0.0,
            max_length=c["length"],
            eos_id=-1,
            weights=weights,
        )

    return Stepper(loss_fn, weights, tokens, tx), decode, count_params(weights)


def main() -> None:
    args = parse_args(__doc__)
    c = CONFIG
    tokens = np.asarray(
        jax.random.randint(jax.random.PRNGKey(0), (c["batch"], c["length"]), 0, c["vocab_size"])
    )
    tx = optax.adam(c["learning_rate"])
    lm_step, lm_decode, lm_params = transformer_lm(c, tokens, tx)
    sl_step, sl_decode, sl_params = sl_stack_candidates(c, tokens, tx)
    times = best_median_ms(
        {"lm train": lm_step, "lm decode": lm_decode, "sl train": sl_step, "sl decode": sl_decode},
        args.rounds,
        args.calls,
    )
    report(
        "trax_sl",
        "TransformerLM",
        trax_sl.__version__,
        times["lm train"],
        times["lm decode"],
        lm_params,
        "trainable position table; KV cache of max_len",
    )
    report(
        "trax_sl",
        "SL stack",
        trax_sl.__version__,
        times["sl train"],
        times["sl decode"],
        sl_params,
        "trax_sl.sl; AddTimingSignal; max_past_horizon=max_len",
    )


if __name__ == "__main__":
    main()
