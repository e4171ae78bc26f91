"""Runs every benchmark, each in a process of its own, and prints one summary table.

Each benchmark prints its own table and writes benchmarks/results/<name>.json;
this script then reads those files and summarises each in one line: the
headline figure, its target where the benchmark has one, and whether it is met.

    python benchmarks/run_all.py [--only train_step decode] [--skip repeat_compile]

The repository root is put on PYTHONPATH, so trax_sl need not be installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
_RESULTS = os.path.join(_HERE, "results")

BENCHMARKS = (
    "layer_call",
    "init_depth",
    "repeat_compile",
    "kv_cache_memory",
    "checkpoint_memory",
    "train_step",
    "train_efficiency",
    "streaming_latency",
    "decode",
    "loop_overhead",
)


def _load(name: str) -> dict:
    with open(os.path.join(_RESULTS, f"{name}.json"), encoding="utf-8") as f:
        return json.load(f)


def _layer_call(data: dict) -> tuple[str, str, bool | None]:
    row = next(r for r in data["results"] if r["call"] == "layer(x)")
    return f"layer(x) {row['ratio_to_jit']:.2f}x jit(pure_fn), {row['overhead_us']:+.0f} us/call", "", None


def _init_depth(data: dict) -> tuple[str, str, bool | None]:
    deepest = max(r["depth"] for r in data["results"])
    row = next(r for r in data["results"] if r["depth"] == deepest and "nested_over_flat" in r)
    return f"nested/flat init at depth {deepest}: {row['nested_over_flat']:.2f}x", "", None


def _repeat_compile(data: dict) -> tuple[str, str, bool | None]:
    s = data["summary"]
    rows = data["results"]
    top = max(r["depth"] for r in rows)
    serial = next(r for r in rows if r["kind"] == "Serial" and r["depth"] == top)
    repeat = next(r for r in rows if r["kind"] == "Repeat" and r["depth"] == top)
    figure = (
        f"Repeat n={top} / n={min(r['depth'] for r in rows)}: {s['repeat_max_over_min']:.2f}x "
        f"(Serial n={top}: {serial['best_total_s']:.1f} s, Repeat: {repeat['best_total_s']:.1f} s)"
    )
    return figure, f"<= {s['target']}x", s["met"]


def _kv_cache_memory(data: dict) -> tuple[str, str, bool | None]:
    steps = max(r["steps"] for r in data["results"])
    flat = data["summary"]["all_flat"]
    return f"state bytes flat over 10..{steps} steps for every layer: {flat}", "flat", flat


def _checkpoint_memory(data: dict) -> tuple[str, str, bool | None]:
    rows = {(r["stack"], r["variant"]): r for r in data["results"]}
    parts = []
    for variant in ("trax_sl CheckpointGradient", "trax_sl Repeat(remat=True)", "JAX jax.checkpoint"):
        row = rows.get(("transformer", variant))
        if row:
            parts.append(f"{variant.split(' ', 1)[1]} {row['temp_vs_trax_sl_plain']:.2f}x")
    return "transformer temp bytes vs plain: " + ", ".join(parts), "", None


def _train_efficiency(data: dict) -> tuple[str, str, bool | None]:
    rows = {r["config"]: r for r in data["results"]}
    gap = data["accumulation"]
    parts = [f"{name} MFU {r['mfu']:.2f} ({r['ratio']:.2f}x)" for name, r in rows.items() if r["mfu"]]
    if gap:
        parts.append(f"grad_accum weights gap {gap['max_weight_difference']:.1e}")
    return "; ".join(parts), "", None


def _streaming_latency(data: dict) -> tuple[str, str, bool | None]:
    parts = []
    for r in data["results"]:
        figure = (
            f"RTF {r['real_time_factor']:.3f}"
            if "real_time_factor" in r
            else f"{r['tokens_per_second']:.0f} tok/s"
        )
        parts.append(f"{r['what']}: p50 {r['p50_ms']:.1f} ms, {figure}")
    return "; ".join(parts), "", None


def _ratio(data: dict, what: str, higher_is_better: bool = False) -> tuple[str, str, bool | None]:
    s = data["summary"]
    sign = ">=" if higher_is_better else "<="
    cpu = f" (CPU time {s['cpu_ratio']:.3f}x)" if "cpu_ratio" in s else ""
    return f"{what} {s['ratio']:.3f}x{cpu}", f"{sign} {s['target']}x", s["met"]


SUMMARIES = {
    "layer_call": _layer_call,
    "init_depth": _init_depth,
    "repeat_compile": _repeat_compile,
    "kv_cache_memory": _kv_cache_memory,
    "checkpoint_memory": _checkpoint_memory,
    "train_step": lambda d: _ratio(d, "trax_sl / JAX step time"),
    "train_efficiency": _train_efficiency,
    "streaming_latency": _streaming_latency,
    "decode": lambda d: _ratio(d, "trax_sl / JAX decode time"),
    "loop_overhead": lambda d: _ratio(d, "Loop / bare loop steps/s", higher_is_better=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[], help="do not run these")
    args = parser.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if n not in args.skip]

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    status, seconds, data = {}, {}, {}
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        started, start = time.time(), time.perf_counter()
        status[name] = subprocess.run(
            [sys.executable, os.path.join(_HERE, f"{name}.py")], env=env, check=False
        ).returncode
        seconds[name] = time.perf_counter() - start
        # Read at once: another run of the same script would overwrite the file.
        path = os.path.join(_RESULTS, f"{name}.json")
        if status[name] == 0 and os.path.exists(path) and os.path.getmtime(path) >= started:
            data[name] = _load(name)

    print("\n===== summary =====")
    rows = []
    for name in names:
        if status[name] != 0 or name not in data:
            why = f"exit {status[name]}" if status[name] else "no results file written"
            rows.append((name, f"FAILED ({why})", "", "", f"{seconds[name]:.0f}"))
            continue
        figure, target, met = SUMMARIES[name](data[name])
        rows.append(
            (
                name,
                figure,
                target,
                "" if met is None else ("met" if met else "NOT met"),
                f"{seconds[name]:.0f}",
            )
        )
    columns = ("benchmark", "result", "target", "", "s")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    sys.exit(0 if all(status[name] == 0 and name in data for name in names) else 1)


if __name__ == "__main__":
    main()
