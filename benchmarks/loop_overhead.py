"""Steps per second of `training.Loop` against a bare Python loop over the same jitted update.

Both run the step `trax_sl.supervised.train_step.train_step` builds for
`Serial(model, loss_layer)` with the same optax optimizer (weights, state and
optimizer state donated), on the same batches from a Python iterator. The
bare loop is what one writes by hand: take a batch, call the step, keep its
outputs. The Loop adds its per-step work: task bookkeeping, putting the
batch on its device mesh, keeping the model's weights current, callbacks,
the progress bar (disabled here) and the eval/checkpoint schedule (no evals
or checkpoints here, output_dir=None), and the host never waits for a step
in either loop except at the end of a stretch.

Two models: a TransformerLM (a realistic step of a few milliseconds, where
the target applies) and a tiny MLP (a step of well under a millisecond, so
its gap is nearly all per-step overhead, reported in microseconds).

Timing: warm-up steps excluded; `--rounds` interleaved rounds of `--calls`
stretches of `--steps` steps; a round's figure is its median stretch, and
steps/second compares best rounds.

Target: Loop within 5% of the bare loop (steps/s ratio >= 0.95) on the TransformerLM.

    python benchmarks/loop_overhead.py [--rounds 7] [--calls 3] [--steps 40]

Writes benchmarks/results/loop_overhead.json.
"""

from __future__ import annotations

import argparse
import itertools

import jax
import numpy as np
import optax
from harness import machine_info, print_header, print_table, time_candidates, write_results

import trax_sl.layers as tl
from trax_sl import mesh, models, shapes
from trax_sl.supervised import train_step, training

_TARGET = 0.95


def _never(step: int) -> bool:
    del step
    return False


def transformer_setup(args):
    model = models.TransformerLM(
        vocab_size=256, d_model=64, d_ff=256, n_layers=2, n_heads=4, max_len=args.length, dropout=0.0
    )
    tokens = np.random.default_rng(0).integers(0, 256, (args.batch, args.length)).astype(np.int32)
    batch = (tokens, tokens, np.ones(tokens.shape, np.float32))
    return "TransformerLM(d_model=64, n_layers=2)", model, tl.WeightedCategoryCrossEntropy(), batch


def mlp_setup(args):
    model = tl.Serial(tl.Dense(64), tl.Relu(), tl.Dense(10))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32)).astype(np.float32)
    y = rng.integers(0, 10, (args.batch,)).astype(np.int32)
    return "MLP(32-64-10)", model, tl.CategoryCrossEntropy(), (x, y)


def candidates(setup, args) -> tuple[str, dict]:
    name, model, loss_layer, batch = setup(args)
    tx = optax.adam(1e-3)

    task = training.TrainTask(itertools.repeat(batch), loss_layer, tx, n_steps_per_checkpoint=None)
    loop = training.Loop(
        model,
        task,
        output_dir=None,
        eval_at=_never,
        checkpoint_at=_never,
        permanent_checkpoint_at=_never,
        random_seed=0,
        progress_bar=False,
    )

    layer = tl.Serial(model, loss_layer)
    one_device = mesh.make_mesh(n_devices=1)
    signature = shapes.signature(batch[: layer.n_in])
    weights, state, shardings = train_step.sharded_init(layer, signature, jax.random.PRNGKey(0), one_device)
    opt_state, opt_shardings = train_step.sharded_opt_init(tx, weights, shardings, one_device)
    step = train_step.train_step(layer, tx, one_device, shardings, opt_shardings)
    carry = {
        "weights": weights,
        "state": state,
        "opt_state": opt_state,
        "rng": train_step.put_replicated(jax.random.PRNGKey(1), one_device),
    }
    data = itertools.repeat(batch)

    def bare(n_steps: int):
        w, s, o, rng = carry["weights"], carry["state"], carry["opt_state"], carry["rng"]
        for _ in range(n_steps):
            w, s, o, _loss, rng = step(w, s, o, next(data), rng)
        carry.update(weights=w, state=s, opt_state=o, rng=rng)
        return w

    def looped(n_steps: int):
        loop.run(n_steps)
        return loop.model.weights

    steps = args.steps if setup is transformer_setup else args.steps * args.mlp_steps_factor
    return name, steps, {"training.Loop": lambda: looped(steps), "bare loop": lambda: bare(steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3, help="stretches per round")
    parser.add_argument("--steps", type=int, default=40, help="steps per stretch (TransformerLM)")
    parser.add_argument("--mlp-steps-factor", type=int, default=10, help="the MLP runs this many times more")
    parser.add_argument("--warmup", type=int, default=1, help="stretches before timing")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    results = []
    for setup in (transformer_setup, mlp_setup):
        name, steps, fns = candidates(setup, args)
        timings = time_candidates(fns, "bare loop", rounds=args.rounds, calls=args.calls, warmup=args.warmup)
        bare = timings["bare loop"]
        for kind, t in timings.items():
            results.append(
                {
                    "model": name,
                    "loop": kind,
                    "steps_per_stretch": steps,
                    **t,
                    "steps_per_second": steps / t["best_ms"] * 1e3,
                    "steps_per_second_vs_bare": bare["best_ms"] / t["best_ms"],
                    "cpu_steps_per_second_vs_bare": bare["best_cpu_ms"] / t["best_cpu_ms"],
                    "overhead_us_per_step": (t["best_ms"] - bare["best_ms"]) / steps * 1e3,
                }
            )

    print_header(
        info,
        f"steps/s over stretches of steps (no evals, no checkpoints); best of {args.rounds} rounds "
        f"of {args.calls} stretches",
    )
    print_table(
        ("model", "loop", "steps/s", "vs bare", "CPU vs bare", "overhead us/step", "ms/step"),
        [
            (
                r["model"],
                r["loop"],
                f"{r['steps_per_second']:.0f}",
                f"{r['steps_per_second_vs_bare']:.3f}",
                f"{r['cpu_steps_per_second_vs_bare']:.3f}",
                f"{r['overhead_us_per_step']:+.0f}",
                f"{r['best_ms'] / r['steps_per_stretch']:.3f}",
            )
            for r in results
        ],
    )
    main_ratio = results[0]["steps_per_second_vs_bare"]
    print(
        f"\nLoop / bare loop steps/s on {results[0]['model']}: {main_ratio:.3f} "
        f"(target >= {_TARGET}): {'met' if main_ratio >= _TARGET else 'NOT met'}"
    )
    write_results(
        "loop_overhead",
        info,
        vars(args),
        results,
        summary={
            "ratio": main_ratio,
            "cpu_ratio": results[0]["cpu_steps_per_second_vs_bare"],
            "target": _TARGET,
            "met": main_ratio >= _TARGET,
        },
    )


if __name__ == "__main__":
    main()
