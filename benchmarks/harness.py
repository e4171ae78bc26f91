"""What the benchmarks share: interleaved timing, memory probes, tables and JSON results.

Every benchmark times trax_sl against hand-written JAX doing the same math,
in the same process: the candidates are warmed first (compilation excluded),
then timed in interleaved rounds (each round starts with the next
candidate, so drift and other processes' load hit all alike); a round's
figure is the median of its synchronized calls, and ratios compare the best
rounds, the ones least disturbed by other processes.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import jax
from layer_call import machine_info  # benchmarks/ is on sys.path when run as a script.

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

__all__ = [
    "RESULTS_DIR",
    "device_memory_stats",
    "interleaved_medians",
    "machine_info",
    "op_profile",
    "peak_rss_bytes",
    "print_header",
    "print_table",
    "rss_bytes",
    "time_candidates",
    "tree_nbytes",
    "write_results",
]


def _median_call(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) per call."""
    wall, cpu = [], []
    for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    rounds: int,
    calls: int,
    warmup: int,
    cpu_medians: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Per candidate, the median wall seconds per call of each round (warm-up calls excluded).

    Each call is ended by `block_until_ready`, so asynchronous dispatch never
    hides work in the next call. If `cpu_medians` is given, it receives the
    rounds' medians of this process's CPU time per call (all threads): less
    disturbed than wall time by other processes on a shared machine, though
    it hides how well a computation uses the cores.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    names = list(candidates)
    medians: dict[str, list[float]] = {name: [] for name in names}
    if cpu_medians is not None:
        cpu_medians.update({name: [] for name in names})
    for round_index in range(rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            wall, cpu = _median_call(candidates[name], calls)
            medians[name].append(wall)
            if cpu_medians is not None:
                cpu_medians[name].append(cpu)
    return medians


def time_candidates(
    candidates: dict[str, Callable[[], object]], reference: str, rounds: int, calls: int, warmup: int
) -> dict[str, dict]:
    """Times candidates interleaved; per name, best and median round (wall and CPU) and ratios.

    Ratios compare best rounds with the `reference` candidate's, in wall
    time (`ratio`) and in CPU time (`cpu_ratio`).
    """
    cpu: dict[str, list[float]] = {}
    wall = interleaved_medians(candidates, rounds=rounds, calls=calls, warmup=warmup, cpu_medians=cpu)
    best, best_cpu = min(wall[reference]), min(cpu[reference])
    return {
        name: {
            "best_ms": min(wall[name]) * 1e3,
            "median_round_ms": statistics.median(wall[name]) * 1e3,
            "best_cpu_ms": min(cpu[name]) * 1e3,
            "ratio": min(wall[name]) / best,
            "cpu_ratio": min(cpu[name]) / best_cpu,
            "round_medians_ms": [t * 1e3 for t in wall[name]],
            "round_cpu_medians_ms": [t * 1e3 for t in cpu[name]],
        }
        for name in candidates
    }


_RUNTIME_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction", "CommonPjRt", "end: ")


def op_profile(fn: Callable[[], object], calls: int = 3) -> dict[str, float]:
    """Milliseconds per call spent in each kind of XLA operation, from a `jax.profiler` trace.

    The kinds are the executed HLO instructions' names without their numeric
    suffix (`copy_bitcast_fusion.21` counts as `copy_bitcast_fusion`), so the
    table says where the time goes (dot fusions, layout copies, loops, ...).
    Runtime bookkeeping events (the executor, thread-pool waits, dispatch,
    Python) are left out. A loop (`while`) counts the time its body's
    operations are not traced one by one, so kinds do not sum to the step
    time. Empty where the trace cannot be read.
    """
    jax.block_until_ready(fn())
    totals: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(fn())
        files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
        if not files:
            return {}
        with gzip.open(files[0], "rt", encoding="utf-8") as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    for event in events:
        name = event.get("name", "")
        if event.get("ph") != "X" or name.startswith(_RUNTIME_EVENTS):
            continue
        totals[re.sub(r"\.\d+$", "", name)] += event.get("dur", 0.0)
    return {name: us / calls / 1e3 for name, us in totals.most_common()}


def tree_nbytes(tree) -> int:
    """Sum of the `nbytes` of a pytree's leaves."""
    return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree))


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int:
    """This process's resident set size now (from /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def device_memory_stats() -> dict | None:
    """`memory_stats()` of the first device; None where the backend has none (CPU)."""
    try:
        return jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 (some backends raise instead of returning None)
        return None


def add_lm_size_arguments(parser) -> None:
    """`--vocab-size --d-model --d-ff --n-layers --n-heads` of the benchmarks' TransformerLM (train_step.py's model)."""
    for flag, default in (
        ("--vocab-size", 256),
        ("--d-model", 256),
        ("--d-ff", 1024),
        ("--n-layers", 4),
        ("--n-heads", 4),
    ):
        parser.add_argument(flag, type=int, default=default)


def lm_size(args) -> dict:
    """The TransformerLM keywords those arguments give."""
    names = ("vocab_size", "d_model", "d_ff", "n_layers", "n_heads")
    return {name: getattr(args, name) for name in names}


def print_header(info: dict, what: str) -> None:
    print(
        f"{info['cpu']}, {info['cores']} cores, jax {info['jax']} ({info['backend']}), "
        f"load average {info['load_average_1min']:.1f}"
    )
    print(what + "\n")


def print_table(columns: tuple[str, ...], rows: list[tuple]) -> None:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    cells = [tuple(str(c) for c in row) for row in rows]
    widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(
            "| "
            + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            + " |"
        )


def write_results(name: str, info: dict, config: dict, results: list[dict], **extra) -> str:
    """Writes benchmarks/results/<name>.json and returns its path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {"benchmark": name, "machine": info, "config": config, "results": results, **extra}, f, indent=1
        )
    print(f"\nwrote {os.path.relpath(path)}")
    return path
