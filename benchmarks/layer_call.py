"""Interactive `layer(x)` against `jax.jit(layer.pure_fn)`: the per-call overhead.

The model is an 8-block MLP (`Serial` of 8 x [Dense(256), Relu]) on an input
of shape [32, 256]. Both ways run the same compiled computation, so the gap is
the Python work `Layer.__call__` does around it (argument defaulting, the
interactive cache, the jit dispatch). Both are warmed first, then timed in
interleaved rounds of single calls, each ended by `block_until_ready`; a
round's figure is its median call, and the table gives the best round.

    python benchmarks/layer_call.py [--rounds 25] [--calls 200] [--no-small]

A second, tiny model (width 16, batch 1) is timed too: its compute is a few
microseconds, so its figures are nearly all per-call overhead.

Writes benchmarks/results/layer_call.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import timeit

import jax
import numpy as np

import trax_sl
import trax_sl.layers as tl

_RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info() -> dict:
    """CPU model, core count and JAX backend, for the record next to the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "trax_sl": trax_sl.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        # Other processes competing for the cores make every figure noisier.
        "load_average_1min": os.getloadavg()[0],
    }


def make_mlp(n_blocks: int, width: int) -> tl.Layer:
    # Fresh instances per block: reusing one instance would share its weights.
    return tl.Serial([[tl.Dense(width), tl.Relu()] for _ in range(n_blocks)])


def time_calls(fn, n_calls: int) -> float:
    """Median seconds per call of `fn` over n_calls single, synchronized calls."""
    durations = []
    for _ in range(n_calls):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


_JIT = "jax.jit(layer.pure_fn)(x, w, s, rng)"


def call_python_overhead(n_blocks: int, width: int, batch: int, n_calls: int = 20000) -> float:
    """Seconds `Layer.__call__` spends around its compiled function, per call.

    The compiled function is swapped for a stub that returns its cached
    outputs, so what is left is the Python work of `__call__` alone (falling
    back on the cache, the default rng, storing the new state). Measured with
    many calls and no device work, so it is stable on a busy machine.
    """
    model = make_mlp(n_blocks, width)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, width), np.float32)
    weights, state = model.init(x)
    model(x)
    outputs = model._jitted_pure_fn(x, weights, state, jax.random.PRNGKey(0))

    def stub(*args):
        del args
        return outputs

    model._jitted_pure_fn = stub
    rng = jax.random.PRNGKey(0)
    with_call = min(timeit.repeat(lambda: model(x), number=n_calls, repeat=7)) / n_calls
    stub_only = min(timeit.repeat(lambda: stub(x, weights, state, rng), number=n_calls, repeat=7)) / n_calls
    return with_call - stub_only


def measure(n_blocks: int, width: int, batch: int, args) -> list[dict]:
    """Rows of the table for one model size."""
    model = make_mlp(n_blocks, width)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, width), np.float32)
    weights, state = model.init(x)
    rng = jax.random.PRNGKey(0)
    jitted = jax.jit(model.pure_fn)

    candidates = {
        "layer(x)": lambda: model(x),
        "layer(x, weights=w, state=s)": lambda: model(x, weights=weights, state=state),
        _JIT: lambda: jitted(x, weights, state, rng)[0],
    }
    reference = np.asarray(candidates[_JIT]())
    for name, fn in candidates.items():
        np.testing.assert_allclose(np.asarray(fn()), reference, rtol=1e-6, err_msg=name)
        for _ in range(args.warmup):
            jax.block_until_ready(fn())

    per_round: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(args.rounds):
        # Interleaved, and each round starts with the next candidate, so that
        # drift and a round's position hit all candidates alike.
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            per_round[name].append(time_calls(candidates[name], args.calls))

    baseline = min(per_round[_JIT])
    model_name = f"{n_blocks} x [Dense({width}), Relu] on [{batch}, {width}]"
    return [
        {
            "model": model_name,
            "blocks": n_blocks,
            "width": width,
            "batch": batch,
            "call": name,
            "best_median_us": min(medians) * 1e6,
            "median_of_medians_us": statistics.median(medians) * 1e6,
            "overhead_us": (min(medians) - baseline) * 1e6,
            "ratio_to_jit": min(medians) / baseline,
        }
        for name, medians in per_round.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--calls", type=int, default=200, help="calls per round")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--no-small",
        dest="small",
        action="store_false",
        help="skip the tiny model [1, 16] whose time is nearly all dispatch",
    )
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    configs = [(args.blocks, args.width, args.batch)]
    if args.small:
        configs.append((args.blocks, 16, 1))
    rows = [row for config in configs for row in measure(*config, args)]

    print(
        f"{info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']}), "
        f"load average {info['load_average_1min']:.1f}"
    )
    print(f"best of {args.rounds} rounds, each the median of {args.calls} synchronized calls\n")
    columns = ("model", "call", "us/call", "median round", "overhead us", "vs jit")
    widths = (max(len(r["model"]) for r in rows), max(len(r["call"]) for r in rows), 8, 12, 11, 6)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = (
            row["model"],
            row["call"],
            f"{row['best_median_us']:.1f}",
            f"{row['median_of_medians_us']:.1f}",
            f"{row['overhead_us']:+.1f}",
            f"{row['ratio_to_jit']:.2f}x",
        )
        print(
            "| "
            + " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            + " |"
        )

    python_overhead = call_python_overhead(args.blocks, args.width, args.batch)
    print(
        f"\nPython work of Layer.__call__ around the compiled call (jit stubbed out): "
        f"{python_overhead * 1e6:.2f} us/call"
    )

    os.makedirs(_RESULTS_DIR, exist_ok=True)
    path = os.path.join(_RESULTS_DIR, "layer_call.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "benchmark": "layer_call",
                "machine": info,
                "config": vars(args),
                "results": rows,
                "call_python_overhead_us": python_overhead * 1e6,
            },
            f,
            indent=1,
        )
    print(f"\nwrote {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
