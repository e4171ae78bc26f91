"""Serving many audio streams with one exported streaming Conformer.

    python examples/stream_server.py [--slots 8] [--streams 32] [--seed 0]

A server keeps a batch of `--slots` slots. Synthetic audio streams (16 kHz,
tones in noise, 0.5 to 3 s each) arrive at random times; each takes a free
slot when one is free, is fed 40 ms of audio per step, and leaves when its
audio ends, freeing the slot for the next (`reset_rows` restarts only that
slot's stream state). Every step runs the whole batch; an empty slot gets an
invalid (masked) block. Nothing comes from the network: the model (a log-mel
front end and a ConformerEncoder, with random weights: this measures serving,
not recognition) is exported with `trax_sl.export.save` to a temporary file
and run through `trax_sl.export.load`, as a deployment would.

Prints the streams served, p50/p99 latency of one step, and the real-time
factor (compute time / audio time per stream): 1 / factor streams of this
size could run live on this machine.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import time

import jax
import numpy as np

import trax_sl.layers as tl
from trax_sl import Sequence, export, models

SAMPLE_RATE = 16000
HOP = 160  # 10 ms frames.
BLOCK = 4 * HOP  # The Conformer subsamples frames by 4: one step takes 40 ms of audio.


def streaming_conformer() -> tl.Layer:
    return tl.Serial(
        tl.LogMelFrontend(
            sample_rate=SAMPLE_RATE,
            frame_length=400,
            frame_step=HOP,
            fft_length=512,
            num_mel_bins=80,
            upper_edge_hertz=SAMPLE_RATE / 2,
            mode="eval",
        ),
        models.ConformerEncoder(
            64, num_blocks=2, max_horizon=16, num_heads=4, conv_kernel_size=8, mode="eval"
        ),
    )


def synthetic_audio(rng: np.random.Generator) -> np.ndarray:
    """0.5 to 3 s of two tones in noise, a whole number of blocks."""
    n = int(rng.uniform(0.5, 3.0) * SAMPLE_RATE) // BLOCK * BLOCK
    t = np.arange(n) / SAMPLE_RATE
    tones = sum(np.sin(2 * np.pi * rng.uniform(100, 2000) * t) for _ in range(2))
    return (0.1 * tones + 0.01 * rng.normal(size=n)).astype(np.float32)


def export_model(path: str) -> None:
    """Exports the model's step for blocks of 40 ms of masked audio (a Sequence: empty slots are invalid)."""
    model = streaming_conformer()
    block = Sequence.from_values(np.zeros((1, BLOCK), np.float32))
    model.init(block, rng=jax.random.PRNGKey(0))
    export.save(model, path, block_signature=block, layer_time_steps=False)


def serve(n_slots: int, n_streams: int, seed: int) -> dict:
    """Runs the simulation; returns the measurements."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "conformer.export")
        export_model(path)
        server = export.load(path)
    # Arrivals: a Poisson process with, on average, a new stream every 2 steps.
    arrivals = np.cumsum(rng.exponential(2.0, n_streams)).astype(int)
    waiting = collections.deque((int(step), synthetic_audio(rng)) for step in arrivals)
    slots: list[np.ndarray | None] = [None] * n_slots  # Each slot: the audio still to feed, or None.
    state = server.init_state(n_slots)
    latencies, audio_blocks, served, step = [], 0, 0, 0
    while waiting or any(s is not None for s in slots):
        free = [i for i, s in enumerate(slots) if s is None]
        admitted = []
        while free and waiting and waiting[0][0] <= step:
            slot = free.pop(0)
            slots[slot] = waiting.popleft()[1]
            admitted.append(slot)
        if admitted:
            state = server.reset_rows(state, admitted)
        values = np.zeros((n_slots, BLOCK), np.float32)
        mask = np.zeros((n_slots, BLOCK), bool)
        for i, audio in enumerate(slots):
            if audio is not None:
                values[i], mask[i] = audio[:BLOCK], True
        start = time.perf_counter()
        outputs, state = server.step((values, mask), state)
        jax.block_until_ready((outputs, state))
        if step > 0:  # The first step compiles.
            latencies.append(time.perf_counter() - start)
            audio_blocks += int(mask[:, 0].sum())
        for i, audio in enumerate(slots):
            if audio is not None:
                slots[i] = audio[BLOCK:] if len(audio) > BLOCK else None
                served += slots[i] is None
        step += 1
    latencies_ms = np.asarray(latencies) * 1e3
    audio_seconds = audio_blocks * BLOCK / SAMPLE_RATE
    return {
        "streams served": served,
        "slots": n_slots,
        "steps": step,
        "p50 step latency (ms)": float(np.percentile(latencies_ms, 50)),
        "p99 step latency (ms)": float(np.percentile(latencies_ms, 99)),
        "audio per step (ms)": 1e3 * BLOCK / SAMPLE_RATE,
        "real-time factor": float(np.sum(latencies) / audio_seconds),
        "live streams this machine could serve": float(audio_seconds / np.sum(latencies)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slots", type=int, default=8, help="streams run together in one batch")
    parser.add_argument("--streams", type=int, default=32, help="streams arriving in the simulation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = serve(args.slots, args.streams, args.seed)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.3g}" if isinstance(value, float) else f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
