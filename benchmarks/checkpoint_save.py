"""Training time lost per checkpoint: asynchronous Orbax saves against synchronous ones.

The main job's model (`configs/transformer_lm_python_chars.gin`: TransformerLM
d_model 128, d_ff 512, 2 layers, 4 heads, Adam, batches of 32 x 128 tokens)
trains `--steps` steps in a `training.Loop` with an output_dir, three ways:
no checkpoints but the one every run ends with, a checkpoint every `--every`
steps written in the background (`async_checkpoints=True`, the default), and
the same written before training goes on (`async_checkpoints=False`). Time lost
per checkpoint = (run time - run time without checkpoints) / extra checkpoints.
Batches are generated (the cost of a checkpoint does not depend on them).

Run it in a checkout without `async_checkpoints` (before Orbax) and it times
that checkout's own synchronous writer as "sync", so the same script gives the
before/after comparison on one machine.

    python benchmarks/checkpoint_save.py [--rounds 5] [--steps 60] [--every 10]

Writes benchmarks/results/checkpoint_save.json.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import shutil
import tempfile

import numpy as np
from harness import machine_info, print_header, print_table, time_candidates, write_results

import trax_sl.layers as tl
from trax_sl import models, optimizers
from trax_sl.supervised import training


def _never(step: int) -> bool:
    del step
    return False


def make_loop(output_dir: str, every: int | None, async_save: bool | None) -> training.Loop:
    model = models.TransformerLM(
        vocab_size=256, d_model=128, d_ff=512, n_layers=2, n_heads=4, max_len=512, dropout=0.0
    )
    tokens = np.random.default_rng(0).integers(0, 256, (32, 128)).astype(np.int32)
    batch = (tokens, tokens, np.ones(tokens.shape, np.float32))
    task = training.TrainTask(
        itertools.repeat(batch), tl.WeightedCategoryCrossEntropy(), optimizers.Adam(1e-3)
    )
    kwargs = {} if async_save is None else {"async_checkpoints": async_save}
    return training.Loop(
        model,
        task,
        output_dir=output_dir,
        eval_at=_never,
        checkpoint_at=_never if every is None else (lambda step: step % every == 0),
        permanent_checkpoint_at=_never,
        random_seed=0,
        progress_bar=False,
        n_checkpoints_to_keep=2,
        **kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1, help="runs per round")
    parser.add_argument("--steps", type=int, default=60, help="steps per run")
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    info = machine_info()

    has_async = "async_checkpoints" in inspect.signature(training.Loop.__init__).parameters
    settings = {"no checkpoints": (None, None)}
    if has_async:
        settings.update({"async": (args.every, True), "sync": (args.every, False)})
    else:
        settings["sync"] = (args.every, None)
    root = tempfile.mkdtemp(prefix="checkpoint_save_")
    loops = {
        name: make_loop(f"{root}/{i}", every, mode)
        for i, (name, (every, mode)) in enumerate(settings.items())
    }
    candidates = {name: (lambda loop=loop: loop.run(args.steps)) for name, loop in loops.items()}
    try:
        timings = time_candidates(
            candidates, "no checkpoints", rounds=args.rounds, calls=args.calls, warmup=args.warmup
        )
    finally:
        for loop in loops.values():
            if hasattr(loop, "close"):
                loop.close()
        shutil.rmtree(root, ignore_errors=True)

    extra = args.steps // args.every - 1  # Each run saves its last step in every setting.
    base = timings["no checkpoints"]
    results = [
        {
            "setting": name,
            **t,
            "lost_ms_per_checkpoint": (t["best_ms"] - base["best_ms"]) / extra
            if name != "no checkpoints"
            else 0.0,
            "lost_cpu_ms_per_checkpoint": (t["best_cpu_ms"] - base["best_cpu_ms"]) / extra
            if name != "no checkpoints"
            else 0.0,
        }
        for name, t in timings.items()
    ]
    print_header(
        info,
        f"runs of {args.steps} steps of the main job's model, a checkpoint every {args.every} "
        f"({extra} more than without); best of {args.rounds} rounds",
    )
    print_table(
        ("setting", "ms/run", "ms/step", "lost ms/checkpoint", "lost CPU ms/checkpoint"),
        [
            (
                r["setting"],
                f"{r['best_ms']:.0f}",
                f"{r['best_ms'] / args.steps:.1f}",
                f"{r['lost_ms_per_checkpoint']:.1f}",
                f"{r['lost_cpu_ms_per_checkpoint']:.1f}",
            )
            for r in results
        ],
    )
    write_results("checkpoint_save", info, vars(args), results)


if __name__ == "__main__":
    main()
