"""Greedy decoding: `decoding.autoregressive_sample` on TransformerLM against a hand-written KV-cache decoder.

TransformerLM(vocab_size=256, d_model=256, d_ff=1024, n_layers=4, n_heads=4,
max_len=128, dropout=0.0), batch 8, 128 tokens, temperature 0. trax_sl runs
its predict-mode twin (KV caches of max_len steps per layer) in one compiled
`jax.lax.scan`; the reference (`jax_transformer.greedy_decode`) is the same
model with the same weights written directly in JAX, also one scan with a
KV cache per layer. Both must produce the same tokens (asserted). Rows:

- `trax_sl autoregressive_sample`: the public call, end to end (host work
  included: starting the stream, fetching the tokens);
- `trax_sl scan_layers=False ...`: the same with the model's blocks
  unrolled (Trax's layout), its weights converted from the scanned model's
  (`trax_checkpoint.convert_weights`);
- `trax_sl compiled loop`: its jitted loop alone (`decoding._decode`, a
  private function), which separates the Python around it from the loop;
- `JAX KV-cache scan`: the reference, jitted, tokens fetched to the host.

Timing: warm-up excluded, `--rounds` interleaved rounds of `--calls` decodes,
each fetched to the host; a round's figure is its median, the ratio compares
best rounds. For the evidence of a gap, each candidate's XLA operations are
profiled (`jax.profiler`, time by kind of operation) and the optimized HLO
is searched for instructions that move a whole KV cache (copies,
concatenations, scatters, transposes at least a cache in size).

Target: trax_sl / JAX <= 1.2x (aim 1.1x).

    python benchmarks/decode.py [--rounds 5] [--calls 3] [--batch 8] [--length 128]

Writes benchmarks/results/decode.json.
"""

from __future__ import annotations

import argparse
import collections
import math
import re

import jax
import jax.numpy as jnp
import jax_transformer as ref
import numpy as np
from harness import (
    add_lm_size_arguments,
    lm_size,
    machine_info,
    op_profile,
    print_header,
    print_table,
    time_candidates,
    write_results,
)

from trax_sl import models, shapes
from trax_sl.layers import trax_checkpoint
from trax_sl.supervised import decoding

_TARGET = 1.2
_REFERENCE = "JAX KV-cache scan"
_MOVES = ("copy", "concatenate", "scatter", "transpose", "dynamic-update-slice")
_SHAPE = re.compile(r"=\s*([a-z0-9]+)\[([0-9,]*)\]\{[^}]*\}\s+([a-z\-]+)\(")


def cache_moves(hlo_text: str, cache_elements: int) -> dict[str, int]:
    """Instructions of optimized HLO (by opcode) whose output is at least a KV cache in size."""
    counts: collections.Counter = collections.Counter()
    for match in _SHAPE.finditer(hlo_text):
        dims = [int(d) for d in match.group(2).split(",") if d]
        opcode = match.group(3)
        if opcode in _MOVES and math.prod(dims) >= cache_elements:
            counts[opcode] += 1
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="decodes per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens decoded (and max_len)")
    add_lm_size_arguments(parser)
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the op profiles")
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    model, unrolled = (
        models.TransformerLM(**lm_size(args), max_len=args.length, dropout=0.0, scan_layers=scan_layers)
        for scan_layers in (True, False)
    )
    signature = shapes.ShapeDtype((args.batch, args.length), np.int32)
    weights, _ = model.init(signature)
    unrolled.init(signature)
    unrolled.weights = trax_checkpoint.convert_weights(weights, model, unrolled, signature)
    params = ref.params_from_trax_sl(model, weights, args.n_layers)
    # eos_id=-1: no row stops early, so both decode exactly args.length tokens.
    sample_kwargs = {"batch_size": args.batch, "temperature": 0.0, "max_length": args.length, "eos_id": -1}

    core, core_state = decoding._start(model, weights, None, args.batch, None)
    core_weights = weights
    first = jnp.zeros((args.batch, 1), jnp.int32)
    loop_kwargs = {"length": args.length, "temperature": 0.0, "eos_id": -1, "min_length": 0}
    rng = jax.random.PRNGKey(0)

    candidates = {
        "trax_sl autoregressive_sample": lambda: decoding.autoregressive_sample(model, **sample_kwargs),
        "trax_sl scan_layers=False autoregressive_sample": lambda: decoding.autoregressive_sample(
            unrolled, **sample_kwargs
        ),
        "trax_sl compiled loop": lambda: np.asarray(
            decoding._decode(core, None, core_weights, core_state, first, rng, **loop_kwargs)
        ),
        _REFERENCE: lambda: np.asarray(
            ref.greedy_decode(params, batch=args.batch, length=args.length, n_heads=args.n_heads)
        ),
    }
    outputs = {name: fn() for name, fn in candidates.items()}
    for name, tokens in outputs.items():
        np.testing.assert_array_equal(tokens, outputs[_REFERENCE], err_msg=f"{name} decodes other tokens")

    timings = time_candidates(
        candidates, _REFERENCE, rounds=args.rounds, calls=args.calls, warmup=args.warmup
    )
    cache_elements = args.batch * args.length * args.d_model
    hlo = {
        "trax_sl compiled loop": decoding._decode.lower(
            core, None, core_weights, core_state, first, rng, **loop_kwargs
        )
        .compile()
        .as_text(),
        _REFERENCE: ref.greedy_decode.lower(
            params, batch=args.batch, length=args.length, n_heads=args.n_heads
        )
        .compile()
        .as_text(),
    }
    moves = {name: cache_moves(text, cache_elements) for name, text in hlo.items()}
    profiles = {name: op_profile(fn, calls=2) for name, fn in candidates.items()} if args.profile else {}

    n_tokens = args.batch * args.length
    results = [
        {
            "candidate": name,
            **timing,
            "tokens_per_second": n_tokens / timing["best_ms"] * 1e3,
            "cache_sized_moves": moves.get(name),
            "op_profile_ms": profiles.get(name),
        }
        for name, timing in timings.items()
    ]
    main_ratio = results[0]["ratio"]

    print_header(
        info,
        f"greedy decoding of {args.length} tokens x batch {args.batch}, TransformerLM(vocab="
        f"{args.vocab_size}, d_model={args.d_model}, d_ff={args.d_ff}, n_layers={args.n_layers}, "
        f"n_heads={args.n_heads}, max_len={args.length}); same tokens; best of {args.rounds} rounds",
    )
    print_table(
        ("decoder", "best ms", "tokens/s", "median round ms", "vs JAX", "best CPU ms", "CPU vs JAX"),
        [
            (
                r["candidate"],
                f"{r['best_ms']:.1f}",
                f"{r['tokens_per_second']:.0f}",
                f"{r['median_round_ms']:.1f}",
                f"{r['ratio']:.3f}x",
                f"{r['best_cpu_ms']:.1f}",
                f"{r['cpu_ratio']:.3f}x",
            )
            for r in results
        ],
    )
    print(
        f"\noptimized HLO instructions at least one KV cache in size (f32[{args.batch}x{args.length}x{args.d_model}]):"
    )
    kinds = sorted({k for m in moves.values() for k in m})
    print_table(("decoder", *kinds), [(name, *(m.get(k, 0) for k in kinds)) for name, m in moves.items()])
    if profiles:
        print("\nXLA operation time per decode (ms, by kind; jax.profiler):")
        kinds = []
        for profile in profiles.values():
            kinds += [k for k in list(profile)[:6] if k not in kinds]
        print_table(
            ("decoder", *kinds),
            [(name, *(f"{p.get(k, 0.0):.1f}" for k in kinds)) for name, p in profiles.items()],
        )
    print(
        f"\ntrax_sl autoregressive_sample / JAX: {main_ratio:.3f}x (target <= {_TARGET}x): "
        f"{'met' if main_ratio <= _TARGET else 'NOT met'}"
    )
    write_results(
        "decode",
        info,
        vars(args),
        results,
        summary={
            "ratio": main_ratio,
            "cpu_ratio": results[0]["cpu_ratio"],
            "target": _TARGET,
            "met": main_ratio <= _TARGET,
        },
    )


if __name__ == "__main__":
    main()
