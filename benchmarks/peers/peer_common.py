"""Timing and reporting shared by the peer scripts (no trax_sl import: each runs in its own venv).

Each peer script builds the same TransformerLM training step and greedy
decode in one library, times them like the trax_sl benchmarks do (warm-up
excluded, interleaved rounds, a round's figure the median of its
synchronized calls, the best round reported) and prints one JSON line
prefixed `PEER_RESULT ` for `run_peers.sh` to collect.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax

# The configuration benchmarks/train_step.py and decode.py use.
CONFIG = {
    "vocab_size": 256,
    "d_model": 256,
    "d_ff": 1024,
    "n_layers": 4,
    "n_heads": 4,
    "max_len": 128,
    "batch": 8,
    "length": 128,
    "learning_rate": 1e-3,
}


def parse_args(doc: str) -> argparse.Namespace:
    """A peer script's command line: `--rounds` (interleaved rounds) and `--calls` (per round)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3)
    return parser.parse_args()


def best_median_ms(candidates: dict, rounds: int, calls: int, warmup: int = 1) -> dict:
    """name -> best round's median milliseconds per call (interleaved rounds, warm-up excluded)."""
    for fn in candidates.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    names = list(candidates)
    medians = {name: [] for name in names}
    for round_index in range(rounds):
        start = round_index % len(names)
        for name in names[start:] + names[:start]:
            durations = []
            for _ in range(calls):
                begin = time.perf_counter()
                jax.block_until_ready(candidates[name]())
                durations.append(time.perf_counter() - begin)
            medians[name].append(statistics.median(durations))
    return {name: min(values) * 1e3 for name, values in medians.items()}


def count_params(tree) -> int:
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(tree)))


# The two models compared: Trax's TransformerLM (trainable position table,
# ShiftRight inside) and the SequenceLayers stack of sequence_layers_peer.py
# (sinusoids, tokens shifted outside). trax_sl runs both, so that each peer
# is compared with trax_sl on the same model, same size and same span.
MODELS = ("TransformerLM", "SL stack")


def report(
    peer: str, model: str, version: str, train_step_ms: float, decode_ms: float, n_params: int, notes: str
) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    tokens = CONFIG["batch"] * CONFIG["length"]
    result = {
        "peer": peer,
        "model": model,
        "version": version,
        "jax": jax.__version__,
        "python": platform.python_version(),
        "load_average_1min": os.getloadavg()[0],
        "params": n_params,
        "train_step_ms": train_step_ms,
        "decode_ms": decode_ms,
        "decode_tokens_per_second": tokens / decode_ms * 1e3,
        "notes": notes,
    }
    print("PEER_RESULT " + json.dumps(result), flush=True)
