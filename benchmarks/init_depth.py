"""`init` time of deeply nested Serials against a flat Serial of the same layers.

Nested, depth D: `Serial(Dense(16), Relu, Serial(Dense(16), Relu, Serial(...)))`
with D Dense layers and D Serials; flat: `Serial` of D x [Dense(16), Relu].
Both hold the same weights, so any gap is what nesting costs `init` (signature
threading, error bookkeeping, recursion). The first `init` of each model is
reported on its own: it pays for compiling what that model meets first (for a
flat Serial of n sublayers, `jax.random.split(rng, n)` and the unstacking of
its n keys). Later ones are timed repeatedly, and the median and best are
reported; the nested/flat ratio compares the best (least disturbed by other
processes). For scale, the first `layer(x)` (trace and compile) of each model
is timed too.

    python benchmarks/init_depth.py [--depths 16 64 128] [--repeats 15]

Writes benchmarks/results/init_depth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import numpy as np
from layer_call import machine_info  # benchmarks/ is on sys.path when run as a script.

import trax_sl.layers as tl
from trax_sl import shapes

_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_WIDTH = 16


def nested(depth: int) -> tl.Layer:
    model = tl.Serial(tl.Dense(_WIDTH), tl.Relu())
    for _ in range(depth - 1):
        model = tl.Serial(tl.Dense(_WIDTH), tl.Relu(), model)
    return model


def flat(depth: int) -> tl.Layer:
    return tl.Serial([[tl.Dense(_WIDTH), tl.Relu()] for _ in range(depth)])


def time_once(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(depth: int, repeats: int, signature, x) -> list[dict]:
    """Rows for the flat and the nested model of one depth."""
    models = {"flat": flat(depth), "nested": nested(depth)}
    rng = jax.random.PRNGKey(0)
    first = {kind: time_once(lambda m=m: m.init(signature, rng=rng)) for kind, m in models.items()}
    again: dict[str, list[float]] = {kind: [] for kind in models}
    for i in range(repeats):
        # Alternating which goes first, so load from other processes hits both alike.
        for kind in ("flat", "nested") if i % 2 == 0 else ("nested", "flat"):
            again[kind].append(time_once(lambda m=models[kind]: m.init(signature, rng=rng)))
    first_call = {kind: time_once(lambda m=m: m(x)) for kind, m in models.items()}
    rows = [
        {
            "kind": kind,
            "depth": depth,
            "n_weight_arrays": len(jax.tree.leaves(model.weights)),
            "first_init_ms": first[kind] * 1e3,
            "init_median_ms": statistics.median(again[kind]) * 1e3,
            "init_best_ms": min(again[kind]) * 1e3,
            "first_call_ms": first_call[kind] * 1e3,
        }
        for kind, model in models.items()
    ]
    rows[1]["nested_over_flat"] = rows[1]["init_best_ms"] / rows[0]["init_best_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 128])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    signature = shapes.ShapeDtype((args.batch, _WIDTH), np.float32)
    x = np.ones((args.batch, _WIDTH), np.float32)
    # Warm JAX itself (backend start-up, the random-number kernels) outside the timings.
    flat(2).init(signature)

    rows = [row for depth in args.depths for row in measure(depth, args.repeats, signature, x)]

    print(
        f"{info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']}), "
        f"load average {info['load_average_1min']:.1f}"
    )
    print(f"init on f32[{args.batch},{_WIDTH}]; median and best of {args.repeats} after the first\n")
    columns = (
        "depth",
        "serial",
        "first init ms",
        "init ms (median)",
        "init ms (best)",
        "nested/flat (best)",
        "first layer(x) ms",
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for row in rows:
        ratio = f"{row['nested_over_flat']:.2f}x" if "nested_over_flat" in row else ""
        cells = (
            str(row["depth"]),
            row["kind"],
            f"{row['first_init_ms']:.1f}",
            f"{row['init_median_ms']:.1f}",
            f"{row['init_best_ms']:.1f}",
            ratio,
            f"{row['first_call_ms']:.0f}",
        )
        print("| " + " | ".join(c.rjust(len(h)) for c, h in zip(cells, columns)) + " |")

    os.makedirs(_RESULTS_DIR, exist_ok=True)
    path = os.path.join(_RESULTS_DIR, "init_depth.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {"benchmark": "init_depth", "machine": info, "config": vars(args), "results": rows}, f, indent=1
        )
    print(f"\nwrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
