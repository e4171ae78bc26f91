"""The TransformerLM training step and greedy decode in trax_sl, timed as the peer scripts time theirs.

The step is `Serial(TransformerLM, WeightedCategoryCrossEntropy)` with optax
Adam, jitted with weights and optimizer state donated; decoding is
`trax_sl.supervised.decoding.autoregressive_sample` at temperature 0.

    PYTHONPATH=. python benchmarks/peers/trax_sl_peer.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np
import optax
from peer_common import CONFIG, best_median_ms, count_params, report

import trax_sl
import trax_sl.layers as tl
from trax_sl import models, shapes
from trax_sl.supervised import decoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    c = CONFIG
    model = models.TransformerLM(
        vocab_size=c["vocab_size"],
        d_model=c["d_model"],
        d_ff=c["d_ff"],
        n_layers=c["n_layers"],
        n_heads=c["n_heads"],
        max_len=c["max_len"],
        dropout=0.0,
    )
    tokens = np.asarray(
        jax.random.randint(jax.random.PRNGKey(0), (c["batch"], c["length"]), 0, c["vocab_size"])
    )
    batch = (tokens, tokens, np.ones(tokens.shape, np.float32))
    with_loss = tl.Serial(model, tl.WeightedCategoryCrossEntropy())
    weights, state = with_loss.init(shapes.signature(batch))
    tx = optax.adam(c["learning_rate"])

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(weights, opt_state, batch):
        def loss_fn(w):
            return with_loss.pure_fn(batch, w, state, None)[0]

        loss, grads = jax.value_and_grad(loss_fn)(weights)
        updates, opt_state = tx.update(grads, opt_state, weights)
        return optax.apply_updates(weights, updates), opt_state, loss

    carry = {"weights": jax.tree.map(np.array, weights)}
    carry["opt_state"] = tx.init(carry["weights"])

    def one_step():
        carry["weights"], carry["opt_state"], loss = train_step(carry["weights"], carry["opt_state"], batch)
        return loss

    def decode():
        return decoding.autoregressive_sample(
            model,
            batch_size=c["batch"],
            temperature=0.0,
            max_length=c["length"],
            eos_id=-1,
            weights=weights[0],
        )

    times = best_median_ms({"train": one_step, "decode": decode}, args.rounds, args.calls)
    report(
        "trax_sl",
        trax_sl.__version__,
        times["train"],
        times["decode"],
        count_params(weights),
        "trainable position table; KV cache of max_len",
    )


if __name__ == "__main__":
    main()
