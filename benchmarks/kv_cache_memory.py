"""Memory of streaming attention: its predict-mode state stays flat however long the stream.

Streams, one step at a time in predict mode, `tl.DotProductSelfAttention(num_heads,
units_per_head, max_past_horizon=P)` (a window KV cache of P steps), the same
with `max_past_horizon=-1` and a `cache_size` (a global cache), and Trax's
`tl.CausalAttention(d, n_heads, max_inference_length=L)`, for 10, 100, 1000
and 10000 steps in all (one stream, continued). Each stretch of steps runs
as one compiled `jax.lax.scan` carrying the state; the inputs are drawn on
the device inside the loop, so nothing grows with the stream but what the
layer keeps. After each stretch the table gives the state's size (the sum
of its leaves' nbytes), the fraction of the stretch's outputs that are valid
(a global cache marks outputs invalid once a row has more valid steps than
it holds, rather than truncating silently), the time per step, and the
device memory in use (`memory_stats()`; on CPU, where there is none, the
process's resident and peak resident set size).

    python benchmarks/kv_cache_memory.py [--steps 10 100 1000 10000] [--horizons 16 128]
        [--cache-size 1024] [--batch 2] [--num-heads 4] [--units-per-head 16]

Writes benchmarks/results/kv_cache_memory.json.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from harness import (
    device_memory_stats,
    machine_info,
    peak_rss_bytes,
    print_header,
    print_table,
    rss_bytes,
    tree_nbytes,
    write_results,
)

import trax_sl
import trax_sl.layers as tl
from trax_sl import shapes


def layers(args) -> dict[str, tl.Layer]:
    d = args.num_heads * args.units_per_head
    made = {
        f"DotProductSelfAttention(P={p})": tl.DotProductSelfAttention(
            args.num_heads, args.units_per_head, max_past_horizon=p, mode="predict"
        )
        for p in args.horizons
    }
    made[f"DotProductSelfAttention(P=-1, cache_size={args.cache_size})"] = tl.DotProductSelfAttention(
        args.num_heads, args.units_per_head, max_past_horizon=-1, cache_size=args.cache_size, mode="predict"
    )
    made[f"CausalAttention(max_inference_length={args.cache_size})"] = tl.CausalAttention(
        d, n_heads=args.num_heads, max_inference_length=args.cache_size, mode="predict"
    )
    return made


@functools.partial(jax.jit, static_argnames=("layer", "n_steps", "batch", "depth"))
def stream(layer, weights, state, rng, n_steps, batch, depth):
    """Feeds n_steps random `[batch, 1, depth]` blocks; returns (state, valid outputs, sum of outputs)."""

    def body(carry, i):
        state, n_valid, total = carry
        x = jax.random.normal(jax.random.fold_in(rng, i), (batch, 1, depth), jnp.float32)
        y, state = layer.pure_fn(trax_sl.Sequence.from_values(x), weights, state, None)
        n_valid = n_valid + jnp.sum(y.mask.astype(jnp.int32))
        total = total + jnp.sum(jnp.where(trax_sl.sequence.expand_mask(y.mask, y.ndim), y.values, 0.0))
        return (state, n_valid, total), None

    carry = (state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))
    (state, n_valid, total), _ = jax.lax.scan(body, carry, jnp.arange(n_steps))
    return state, n_valid, total


def measure(name: str, layer: tl.Layer, args) -> list[dict]:
    depth = args.num_heads * args.units_per_head
    weights, state = layer.init(shapes.ShapeDtype((args.batch, 1, depth), np.float32))
    rows = []
    done = 0
    rng = jax.random.PRNGKey(0)
    for total_steps in args.steps:
        n = total_steps - done
        run = functools.partial(stream, layer, n_steps=n, batch=args.batch, depth=depth)
        chunk_rng = jax.random.fold_in(rng, done)
        run(weights, state, chunk_rng)  # Compiles (not timed); the state is fed again below.
        start = time.perf_counter()
        state, n_valid, checksum = jax.block_until_ready(run(weights, state, chunk_rng))
        seconds = time.perf_counter() - start
        done = total_steps
        stats = device_memory_stats()
        rows.append(
            {
                "layer": name,
                "steps": total_steps,
                "state_bytes": tree_nbytes(state),
                "valid_fraction": int(n_valid) / (n * args.batch),
                "finite": bool(np.isfinite(float(checksum))),
                "us_per_step": seconds / n * 1e6,
                "device_bytes_in_use": None if stats is None else stats.get("bytes_in_use"),
                "device_peak_bytes": None if stats is None else stats.get("peak_bytes_in_use"),
                "rss_bytes": rss_bytes(),
                "peak_rss_bytes": peak_rss_bytes(),
            }
        )
    flat = len({r["state_bytes"] for r in rows}) == 1
    for r in rows:
        r["state_flat"] = flat
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--horizons", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--cache-size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--units-per-head", type=int, default=16)
    args = parser.parse_args()
    if sorted(args.steps) != args.steps:
        parser.error(f"--steps must increase (one stream, continued), got {args.steps}")
    info = machine_info()  # Before the run, so the load average is the others'.

    results = [row for name, layer in layers(args).items() for row in measure(name, layer, args)]

    device = "device memory" if results[0]["device_bytes_in_use"] is not None else "RSS"
    print_header(
        info,
        f"one stream of [batch={args.batch}, 1, {args.num_heads * args.units_per_head}] blocks, "
        f"compiled scan per stretch; memory: {device}",
    )
    mib = 2.0**20
    rows = []
    for r in results:
        if r["device_bytes_in_use"] is not None:
            memory = (f"{r['device_bytes_in_use'] / mib:.1f}", f"{r['device_peak_bytes'] / mib:.1f}")
        else:
            memory = (f"{r['rss_bytes'] / mib:.0f}", f"{r['peak_rss_bytes'] / mib:.0f}")
        rows.append(
            (
                r["layer"],
                r["steps"],
                f"{r['state_bytes']:,}",
                "yes" if r["state_flat"] else "NO",
                f"{r['valid_fraction']:.3f}",
                f"{r['us_per_step']:.1f}",
                *memory,
            )
        )
    mem_cols = ("device MiB", "device peak MiB") if device != "RSS" else ("RSS MiB", "peak RSS MiB")
    print_table(("layer", "steps", "state bytes", "flat", "valid frac", "us/step", *mem_cols), rows)
    write_results(
        "kv_cache_memory",
        info,
        vars(args),
        results,
        summary={"all_flat": all(r["state_flat"] for r in results)},
    )


if __name__ == "__main__":
    main()
