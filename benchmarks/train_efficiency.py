"""The Loop's training step under each precision policy and gradient accumulation: time, MFU and memory.

TransformerLM(vocab_size=256, d_model=256, d_ff=1024, n_layers=4, n_heads=4,
max_len=128, dropout=0.0) with `tl.CategoryCrossEntropy` on int32 tokens
[8, 128], optax Adam; each step is `trax_sl.supervised.train_step.train_step`
(what `training.Loop` compiles) on one device. Rows:

- `float32`: the model as it is;
- `bfloat16`: under `tl.WithPolicy(model, 'bfloat16')` (`train.precision`):
  float32 weights and Adam state, bfloat16 matmuls;
- `... grad_accum 4`: the batch as 4 micro-batches of 2 in one step
  (`train.grad_accum_steps = 4`);
- `... remat P`: `TransformerLM(remat=P)`, the scanned block body
  rematerialised with the policy P (`tl.repeat.REMAT_POLICIES`).

Columns: best and median step time over interleaved rounds (warm-up
excluded), the ratio to `float32`, MFU (the step's model FLOPs,
`efficiency.training_flops`, per second over the device's peak: on a CPU a
float32 matmul measured in this process), and the compiled step's temporary
memory (XLA's memory analysis: the activations it keeps). Equality: after one
step from the same weights, the largest difference of the updated weights and
the losses between grad_accum 4 and the whole batch (float32).

    python benchmarks/train_efficiency.py [--rounds 5] [--calls 3] [--batch 8] [--length 128]

Writes benchmarks/results/train_efficiency.json.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from harness import (
    add_lm_size_arguments,
    lm_size,
    machine_info,
    print_header,
    print_table,
    time_candidates,
    write_results,
)

import trax_sl.layers as tl
from trax_sl import mesh as mesh_lib
from trax_sl import models
from trax_sl.supervised import efficiency, train_step


class Stepper:
    """One configuration's compiled Loop step, carrying its (donated) weights, state and optimizer state."""

    def __init__(self, layer, tx, mesh, tokens, grad_accum_steps, rng):
        batch = train_step.put_batch((tokens, tokens), mesh)
        signature = train_step.input_signature(batch, layer.n_in)
        weights, state, shardings = train_step.sharded_init(layer, signature, rng, mesh)
        opt_state, opt_shardings = train_step.sharded_opt_init(tx, weights, shardings, mesh)
        step = train_step.train_step(layer, tx, mesh, shardings, opt_shardings, grad_accum_steps)
        self.rng = train_step.put_replicated(jax.random.PRNGKey(0), mesh)
        self.compiled = step.lower(weights, state, opt_state, batch, self.rng).compile()
        self.weights, self.state, self.opt_state, self.batch = weights, state, opt_state, batch

        def forward(w, s, b, r):
            return layer.pure_fn(train_step.stack_inputs(b, layer.n_in), w, s, r)

        self.flops = efficiency.training_flops(forward, weights, state, batch, self.rng)
        self.temp_bytes = self.compiled.memory_analysis().temp_size_in_bytes

    def __call__(self):
        self.weights, self.state, self.opt_state, loss, self.rng = self.compiled(
            self.weights, self.state, self.opt_state, self.batch, self.rng
        )
        return loss


def build(args):
    def model(remat):
        return models.TransformerLM(**lm_size(args), max_len=args.length, dropout=0.0, remat=remat)

    mesh = mesh_lib.make_mesh(None, 1)
    tx = optax.adam(args.learning_rate)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (args.batch, args.length), 0, args.vocab_size)
    rng = jax.random.PRNGKey(1)  # The same initial weights for every configuration.
    configs = {
        "float32": (None, 1, "none"),
        "bfloat16": ("bfloat16", 1, "none"),
        f"float32, grad_accum {args.grad_accum}": (None, args.grad_accum, "none"),
        f"bfloat16, grad_accum {args.grad_accum}": ("bfloat16", args.grad_accum, "none"),
        **{f"float32, remat {remat}": (None, 1, remat) for remat in ("full", "dots_saveable", "minimal")},
    }
    unknown = set(args.configs or ()) - set(configs)
    if unknown:
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; known: {list(configs)}")
    steppers = {}
    for name, (precision, k, remat) in configs.items():
        if args.configs and name not in args.configs:
            continue
        body = model(remat) if precision is None else tl.WithPolicy(model(remat), precision)
        steppers[name] = Stepper(tl.Serial(body, tl.CategoryCrossEntropy()), tx, mesh, tokens, k, rng)
    return steppers


def accumulation_gap(steppers: dict, k: int) -> dict:
    """One step of float32 grad_accum k against the whole batch, from the same weights."""
    whole, accumulated = steppers["float32"], steppers[f"float32, grad_accum {k}"]
    start = jax.tree.map(np.asarray, whole.weights)
    np.testing.assert_equal(start, jax.tree.map(np.asarray, accumulated.weights))
    losses = [float(whole()), float(accumulated())]
    gaps = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), whole.weights, accumulated.weights)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), whole.weights, start)
    return {
        "loss_whole": losses[0],
        "loss_accumulated": losses[1],
        "max_weight_difference": max(jax.tree.leaves(gaps)),
        "max_weight_update": max(jax.tree.leaves(moved)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--grad-accum", type=int, default=4)
    add_lm_size_arguments(parser)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--configs", nargs="+", help="only these rows (the first is the ratios' reference)")
    args = parser.parse_args()
    info = machine_info()

    steppers = build(args)
    reference = next(iter(steppers))
    accumulated = f"float32, grad_accum {args.grad_accum}"
    gap = accumulation_gap(steppers, args.grad_accum) if {"float32", accumulated} <= set(steppers) else None
    peak = efficiency.peak_flops_per_device(jax.devices()[0])
    timings = time_candidates(steppers, reference, rounds=args.rounds, calls=args.calls, warmup=args.warmup)
    results = [
        {
            "config": name,
            **timing,
            "mfu": None if peak is None else steppers[name].flops / (timing["best_ms"] / 1e3) / peak,
            "flops_per_step": steppers[name].flops,
            "temp_bytes": steppers[name].temp_bytes,
        }
        for name, timing in timings.items()
    ]
    print_header(
        info,
        f"TransformerLM(vocab={args.vocab_size}, d_model={args.d_model}, d_ff={args.d_ff}, "
        f"n_layers={args.n_layers}, n_heads={args.n_heads}) Loop train step, Adam, int32[{args.batch},"
        f"{args.length}]; best of {args.rounds} rounds of {args.calls} steps; peak "
        f"{'unknown' if peak is None else f'{peak / 1e9:.1f} GFLOP/s'} per device",
    )
    print_table(
        ("step", "best ms", "median round ms", f"vs {reference}", "MFU", "tokens/s", "temp MiB"),
        [
            (
                r["config"],
                f"{r['best_ms']:.1f}",
                f"{r['median_round_ms']:.1f}",
                f"{r['ratio']:.3f}x",
                "-" if r["mfu"] is None else f"{r['mfu']:.2f}",
                f"{args.batch * args.length / (r['best_ms'] / 1e3):.0f}",
                f"{r['temp_bytes'] / 2**20:.1f}",
            )
            for r in results
        ],
    )
    if gap is not None:
        print(
            f"\ngrad_accum {args.grad_accum} vs the whole batch, one float32 step: losses "
            f"{gap['loss_accumulated']:.6f} vs {gap['loss_whole']:.6f}, weights differ by at most "
            f"{gap['max_weight_difference']:.2e} (the update itself: up to {gap['max_weight_update']:.2e})"
        )
    write_results("train_efficiency", info, vars(args), results, accumulation=gap)


if __name__ == "__main__":
    main()
