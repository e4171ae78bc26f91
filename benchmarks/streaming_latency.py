"""Streaming latency: time per block of a streaming Conformer and per token of TransformerLM decoding.

Conformer: `Serial(LogMelFrontend, ConformerEncoder)` in predict mode on 16 kHz
audio (25 ms windows every 10 ms, 80 mel bins; ConformerEncoder(hidden_size
144, 4 blocks, 4 heads, max_horizon 16)), fed one block of 4 frames (640
samples, 40 ms of audio: the encoder's block) per call, batch 1. Real-time
factor: the mean time per block over the block's 40 ms (< 1 keeps up with
live audio).

Decoding: TransformerLM(vocab_size=256, d_model=256, d_ff=1024, n_layers=4,
n_heads=4; max_len the steps decoded) in predict mode, one token per call
(what an interactive decoder does), at batch 1 and 8 (`--batches`, the
model's size and `--decode-dtype bfloat16` are flags), with its blocks
scanned (the default) and unrolled (`scan_layers=False`).

Each call is the jitted predict-mode step (`pure_fn` with the state carried),
timed to `block_until_ready`; warm-up calls excluded. p50/p99 over `--steps`
calls.

    python benchmarks/streaming_latency.py [--steps 200] [--batches 1 8]

Writes benchmarks/results/streaming_latency.json.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from harness import add_lm_size_arguments, lm_size, machine_info, print_header, print_table, write_results

import trax_sl.layers as tl
from trax_sl import models, shapes
from trax_sl.layers import dsp

_SAMPLE_RATE = 16000
_FRAME_STEP = 160  # 10 ms.
_FRAMES_PER_BLOCK = 4  # The Conformer's subsampling consumes 4 frames per output step.


def step_latencies(layer, block_shape, dtype, steps: int, warmup: int, make_block) -> np.ndarray:
    """Seconds per call of `layer`'s jitted predict-mode step on blocks of `block_shape`, state carried."""
    weights, state = layer.init(shapes.ShapeDtype(block_shape, dtype))
    state = jax.tree.map(jnp.array, state)  # Distinct buffers (init may share one), as donation needs.
    step = jax.jit(lambda w, s, x: layer.pure_fn(x, w, s, None), donate_argnums=(1,))
    times = []
    for i in range(warmup + steps):
        block = make_block(i)
        start = time.perf_counter()
        out, state = step(weights, state, block)
        jax.block_until_ready(out)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return np.array(times)


def summary(times: np.ndarray) -> dict:
    return {
        "p50_ms": float(np.percentile(times, 50) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "mean_ms": float(times.mean() * 1e3),
    }


def conformer(steps: int, warmup: int) -> dict:
    block = _FRAME_STEP * _FRAMES_PER_BLOCK
    model = tl.Serial(
        dsp.LogMelFrontend(
            sample_rate=_SAMPLE_RATE,
            frame_length=400,
            frame_step=_FRAME_STEP,
            fft_length=512,
            num_mel_bins=80,
            upper_edge_hertz=_SAMPLE_RATE / 2,
            mode="predict",
        ),
        models.ConformerEncoder(144, 4, max_horizon=16, dropout_rate=0.0, num_heads=4, mode="predict"),
    )
    audio = jax.random.normal(jax.random.PRNGKey(0), (1, (warmup + steps) * block)) * 0.1
    times = step_latencies(
        model, (1, block), jnp.float32, steps, warmup, lambda i: audio[:, i * block : (i + 1) * block]
    )
    seconds_of_audio = block / _SAMPLE_RATE
    return {
        "what": "Conformer, 40 ms blocks, batch 1",
        **summary(times),
        "real_time_factor": float(times.mean() / seconds_of_audio),
    }


def decoding(batch: int, steps: int, warmup: int, size: dict, dtype: str, scan_layers: bool) -> dict:
    lm = models.TransformerLM(
        **size, max_len=warmup + steps, dropout=0.0, mode="predict", scan_layers=scan_layers
    )
    if dtype != "float32":
        lm = tl.WithPolicy(lm, dtype)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, warmup + steps), 0, size["vocab_size"])
    times = step_latencies(lm, (batch, 1), jnp.int32, steps, warmup, lambda i: tokens[:, i : i + 1])
    return {
        "what": f"TransformerLM decoding, batch {batch}, {dtype}{'' if scan_layers else ', scan_layers=False'}",
        **summary(times),
        "tokens_per_second": float(batch / times.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    add_lm_size_arguments(parser)
    parser.add_argument("--decode-dtype", default="float32", help="float32, or bfloat16 (tl.WithPolicy)")
    args = parser.parse_args()
    size = lm_size(args)
    info = machine_info()

    results = [conformer(args.steps, args.warmup)]
    results += [
        decoding(batch, args.steps, args.warmup, size, args.decode_dtype, scan_layers)
        for scan_layers in (True, False)
        for batch in args.batches
    ]
    print_header(info, f"predict-mode steps, jitted, state carried; p50/p99 over {args.steps} calls")
    print_table(
        ("stream", "p50 ms", "p99 ms", "mean ms", "real-time factor", "tokens/s"),
        [
            (
                r["what"],
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['mean_ms']:.2f}",
                f"{r['real_time_factor']:.3f}" if "real_time_factor" in r else "-",
                f"{r['tokens_per_second']:.0f}" if "tokens_per_second" in r else "-",
            )
            for r in results
        ],
    )
    write_results("streaming_latency", info, vars(args), results)


if __name__ == "__main__":
    main()
