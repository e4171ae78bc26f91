"""Prints the peers' results side by side and writes benchmarks/results/peers.json.

Reads the `PEER_RESULT {...}` lines the peer scripts print, from the files
named on the command line (a missing or empty file is a peer that did not
run, reported as such).

    python benchmarks/peers/compare.py out/trax_sl.log out/sequence_layers.log out/trax.log
"""

from __future__ import annotations

import json
import os
import sys

_RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "peers.json")


def read(path: str) -> list[dict]:
    """The results a peer's log holds (trax_sl's holds one per model); none if it did not run."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line for line in f if line.startswith("PEER_RESULT ")]
    except OSError:
        return []
    return [json.loads(line[len("PEER_RESULT ") :]) for line in lines]


def main(paths: list[str]) -> None:
    results = {os.path.splitext(os.path.basename(p))[0]: read(p) for p in paths}
    ran = [r for rs in results.values() for r in rs]
    # Each peer against trax_sl running the same model.
    base = {r["model"]: r for r in ran if r["peer"] == "trax_sl"}
    columns = (
        "peer",
        "model",
        "version",
        "jax",
        "params",
        "train step ms",
        "vs trax_sl",
        "decode ms",
        "tokens/s",
        "vs trax_sl",
    )
    rows = []
    for name, rs in results.items():
        if not rs:
            rows.append((name, "did not run (see its log)", "", "", "", "", "", "", "", ""))
        for r in sorted(rs, key=lambda r: r["model"]):
            b = base.get(r["model"])
            rows.append(
                (
                    r["peer"],
                    r["model"],
                    r["version"],
                    r["jax"],
                    f"{r['params']:,}",
                    f"{r['train_step_ms']:.1f}",
                    f"{r['train_step_ms'] / b['train_step_ms']:.2f}x" if b else "",
                    f"{r['decode_ms']:.1f}",
                    f"{r['decode_tokens_per_second']:.0f}",
                    f"{r['decode_ms'] / b['decode_ms']:.2f}x" if b else "",
                )
            )
    widths = [max(len(c), *(len(str(row[i])) for row in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
    for r in ran:
        print(f"  {r['peer']} ({r['model']}): {r['notes']} (load average {r['load_average_1min']:.1f})")
    os.makedirs(os.path.dirname(_RESULTS), exist_ok=True)
    with open(_RESULTS, "w", encoding="utf-8") as f:
        json.dump({"benchmark": "peers", "results": results}, f, indent=1)
    print(f"\nwrote {os.path.relpath(_RESULTS)}")


if __name__ == "__main__":
    main(sys.argv[1:])
