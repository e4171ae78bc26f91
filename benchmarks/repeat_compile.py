"""Compile time of `tl.Repeat(block, n)` against an unrolled `tl.Serial` of n copies of the block.

The block is a pre-LN transformer block,
`Serial(Residual(LayerNorm, attention), Residual(LayerNorm, Dense(d_ff), Relu, Dense(d)))`,
with `CausalAttention(d, n_heads)` or `DotProductSelfAttention(n_heads, d / n_heads,
max_past_horizon=-1)` followed by a Dense back to d. For each depth n the
jitted training step (`value_and_grad` of a sum of squares of the output;
`--what forward` for the forward alone) is lowered and compiled from a
freshly built model, so no JAX cache is hit; the time is split into lower
(tracing to StableHLO) and compile (XLA), and the size of the lowered
module (its lines of text) shows what the compiler is given. `init` time is
reported too. A warm-up compile of a small model runs first, so JAX's
one-time start-up costs are excluded.

Target: Repeat's lower + compile at n=32 within 1.5x of Repeat's at n=2.

    python benchmarks/repeat_compile.py [--depths 2 8 32] [--repeats 3] [--serial-repeats 1]
        [--what train|forward] [--attention causal|dpsa]

The unrolled Serial takes about a minute to compile at n=32 on 2 cores, so
it is measured `--serial-repeats` times (1 by default), Repeat `--repeats`
times; the table gives the best of each.

Writes benchmarks/results/repeat_compile.json.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from harness import machine_info, print_header, print_table, write_results

import trax_sl.layers as tl
from trax_sl import shapes

_TARGET = 1.5


def make_block(attention: str, d_model: int, d_ff: int, n_heads: int) -> tl.Layer:
    if attention == "causal":
        attend = tl.CausalAttention(d_model, n_heads=n_heads)
    else:
        attend = tl.Serial(
            tl.DotProductSelfAttention(n_heads, d_model // n_heads, max_past_horizon=-1),
            tl.Fn("MergeHeads", lambda y: y.reshape(y.shape[:2] + (-1,))),
            tl.Dense(d_model),
        )
    return tl.Serial(
        tl.Residual(tl.LayerNorm(), attend),
        tl.Residual(tl.LayerNorm(), tl.Dense(d_ff), tl.Relu(), tl.Dense(d_model)),
    )


def make_model(kind: str, n: int, args) -> tl.Layer:
    def block():
        return make_block(args.attention, args.d_model, args.d_ff, args.n_heads)

    if kind == "Repeat":
        return tl.Repeat(block(), n)
    return tl.Serial([block() for _ in range(n)])


def compile_once(kind: str, n: int, args) -> dict:
    """Builds a fresh model, inits it, lowers and compiles its step; returns the times."""
    model = make_model(kind, n, args)
    x = np.ones((args.batch, args.length, args.d_model), np.float32)
    start = time.perf_counter()
    weights, state = model.init(shapes.signature(x))
    jax.block_until_ready(weights)
    init_s = time.perf_counter() - start

    def forward(w, x):
        return model.pure_fn(x, w, state, None)[0]

    def loss(w, x):
        y = forward(w, x)
        return jnp.sum(y * y)

    fn = jax.jit(jax.value_and_grad(loss) if args.what == "train" else forward)
    start = time.perf_counter()
    lowered = fn.lower(weights, x)
    lower_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - start
    return {
        "init_s": init_s,
        "lower_s": lower_s,
        "compile_s": compile_s,
        "total_s": lower_s + compile_s,
        "hlo_lines": lowered.as_text().count("\n"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="fresh compiles of each Repeat model")
    parser.add_argument(
        "--serial-repeats", type=int, default=1, help="fresh compiles of each unrolled Serial"
    )
    parser.add_argument("--what", choices=("train", "forward"), default="train")
    parser.add_argument("--attention", choices=("causal", "dpsa"), default="causal")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--d-ff", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=16)
    args = parser.parse_args()
    info = machine_info()  # Before the run, so the load average is the others'.

    compile_once("Serial", 1, args)  # Warm-up: JAX's and XLA's one-time costs.
    results = []
    for n in args.depths:
        for kind, repeats in (("Repeat", args.repeats), ("Serial", args.serial_repeats)):
            runs = [compile_once(kind, n, args) for _ in range(repeats)]
            best = min(runs, key=lambda r: r["total_s"])
            results.append(
                {"kind": kind, "depth": n, "runs": runs, **{f"best_{k}": v for k, v in best.items()}}
            )
            print(f"  {kind:6} n={n:3}: lower+compile {best['total_s']:.2f} s", flush=True)

    base = next(
        r["best_total_s"] for r in results if r["kind"] == "Repeat" and r["depth"] == min(args.depths)
    )
    for r in results:
        r["vs_repeat_at_min_depth"] = r["best_total_s"] / base
    top = next(r for r in results if r["kind"] == "Repeat" and r["depth"] == max(args.depths))
    target_met = top["vs_repeat_at_min_depth"] <= _TARGET

    print()
    print_header(
        info,
        f"{args.what} step of n x [pre-LN block, {args.attention} attention, d={args.d_model}, "
        f"d_ff={args.d_ff}, heads={args.n_heads}] on f32[{args.batch},{args.length},{args.d_model}]; "
        f"best of {args.repeats} (Repeat) / {args.serial_repeats} (Serial) fresh compiles",
    )
    rows = [
        (
            f"{r['kind']} n={r['depth']}",
            f"{r['best_init_s']:.2f}",
            f"{r['best_lower_s']:.2f}",
            f"{r['best_compile_s']:.2f}",
            f"{r['best_total_s']:.2f}",
            f"{r['vs_repeat_at_min_depth']:.2f}x",
            r["best_hlo_lines"],
        )
        for r in results
    ]
    columns = ("model", "init s", "lower s", "compile s", "lower+compile s", "vs Repeat min n", "HLO lines")
    print_table(columns, rows)
    print(
        f"\nRepeat n={max(args.depths)} / Repeat n={min(args.depths)}: "
        f"{top['vs_repeat_at_min_depth']:.2f}x (target <= {_TARGET}x): {'met' if target_met else 'NOT met'}"
    )
    write_results(
        "repeat_compile",
        info,
        vars(args),
        results,
        summary={"repeat_max_over_min": top["vs_repeat_at_min_depth"], "target": _TARGET, "met": target_met},
    )


if __name__ == "__main__":
    main()
