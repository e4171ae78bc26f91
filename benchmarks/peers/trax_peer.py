"""The TransformerLM training step and greedy decode in Trax 1.4.1 (run in a venv of its own).

Trax 1.4.1 needs `jax==0.4.13 jaxlib==0.4.13 tensorflow==2.12.1
tensorflow-text==2.12.1 "numpy<1.24" "tensorflow-metadata<1.15"`
(`run_peers.sh` makes that venv). The step is Trax's own
`trax.optimizers.Trainer(Serial(TransformerLM, WeightedCategoryCrossEntropy),
Adam).one_step`; decoding is `trax.supervised.decoding.autoregressive_sample`
at temperature 0 on the predict-mode model holding the trained weights,
through one `tl.Accelerate` made once (so its compiled call is reused) and
given a fresh state before each decode. Trax samples in a Python loop, one
jitted call and one host transfer per token.

    /tmp/traxvenv/bin/python benchmarks/peers/trax_peer.py [--rounds 5]
"""

from __future__ import annotations

import jax
import numpy as np
import trax
from peer_common import CONFIG, best_median_ms, count_params, parse_args, report
from trax import layers as tl
from trax import models, optimizers, shapes
from trax.supervised import decoding


def main() -> None:
    args = parse_args(__doc__)
    c = CONFIG
    hyper = {key: c[key] for key in ("vocab_size", "d_model", "d_ff", "n_layers", "n_heads", "max_len")}
    model = models.TransformerLM(dropout=0.0, mode="train", **hyper)
    tokens = np.asarray(
        jax.random.randint(jax.random.PRNGKey(0), (c["batch"], c["length"]), 0, c["vocab_size"])
    )
    batch = (tokens, tokens, np.ones(tokens.shape, np.float32))
    with_loss = tl.Serial(model, tl.WeightedCategoryCrossEntropy())
    with_loss.init(shapes.signature(batch))
    optimizer = optimizers.Adam(c["learning_rate"])
    optimizer.tree_init(with_loss.weights)
    trainer = optimizers.Trainer(with_loss, optimizer)
    rng = jax.random.PRNGKey(1)
    steps = {"count": 0}

    def one_step():
        steps["count"] += 1
        loss, _ = trainer.one_step(batch, rng, step=steps["count"])
        return loss

    predict = models.TransformerLM(dropout=0.0, mode="predict", **hyper)
    predict.init(shapes.ShapeDtype((c["batch"], 1), np.int32))
    predict.weights = model.weights
    fresh_state = predict.state
    fast = tl.Accelerate(predict)

    def decode():
        fast.state = fresh_state
        return decoding.autoregressive_sample(
            fast, batch_size=c["batch"], temperature=0.0, max_length=c["length"], eos_id=-1, accelerate=False
        )

    times = best_median_ms({"train": one_step, "decode": decode}, args.rounds, args.calls)
    report(
        "trax",
        "TransformerLM",
        trax.__version__ if hasattr(trax, "__version__") else "1.4.1",
        times["train"],
        times["decode"],
        count_params(model.weights),
        "Trainer.one_step; autoregressive_sample (Python loop per token)",
    )


if __name__ == "__main__":
    main()
