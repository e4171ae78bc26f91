"""Efficiency reporting: model FLOPs, peak FLOP/s, the meter's spans, and what a Loop logs and profiles."""

import glob
import itertools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.supervised.test_training import V, make_loop
from trax_sl import layers as tl
from trax_sl import shapes
from trax_sl.supervised import efficiency

A = jnp.ones((4, 6), jnp.float32)
B = jnp.ones((6, 5), jnp.float32)


def _flops(fn, *args):
    return efficiency.model_flops(jax.make_jaxpr(fn)(*args))


def test_matmul_einsum_and_conv_flops_are_hand_counted():
    assert _flops(jnp.matmul, A, B) == 2 * 4 * 6 * 5
    q, k = jnp.ones((2, 3, 7, 4)), jnp.ones((2, 3, 9, 4))  # [batch, heads, length, depth]
    assert _flops(lambda q, k: jnp.einsum("bhqd,bhkd->bhqk", q, k), q, k) == 2 * 2 * 3 * 7 * 9 * 4
    x, kernel = jnp.ones((2, 16, 8, 3)), jnp.ones((3, 3, 3, 5))
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # Each of the 2*16*8*5 outputs: a 3x3x3 window, a multiply and an add per tap.
    assert _flops(conv, x, kernel) == 2 * (2 * 16 * 8 * 5) * 27
    assert _flops(jnp.tanh, A) == 0  # Elementwise work is not model FLOPs.


def test_a_scan_counts_its_body_once_per_step_and_a_cond_its_costliest_branch():
    square = jnp.ones((6, 6))

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ square, None), x, None, length=8)[0]

    def unrolled(x):
        for _ in range(8):
            x = x @ square
        return x

    assert _flops(scanned, A) == _flops(unrolled, A) == 8 * 2 * 4 * 6 * 6
    # XLA's cost analysis counts the scan's loop body once: why FLOPs are counted from the jaxpr.
    xla = jax.jit(scanned).lower(A).compile().cost_analysis()
    xla = xla[0] if isinstance(xla, (list, tuple)) else xla
    assert xla["flops"] < _flops(scanned, A) / 4

    def cond(p, x):
        return jax.lax.cond(p, lambda x: x @ square @ square, lambda x: x @ square, x)

    assert _flops(cond, True, A) == 2 * 2 * 4 * 6 * 6


def test_training_flops_are_three_forward_passes_whatever_is_rematerialised():
    layer = tl.Dense(5)
    x = jnp.ones((4, 6))
    weights, state = layer.init(shapes.signature(x))
    forward = lambda w, s, x: layer.pure_fn(x, w, s, None)
    assert efficiency.training_flops(forward, weights, state, x) == 3 * 2 * 4 * 6 * 5
    remat = lambda w, s, x: jax.checkpoint(forward)(w, s, x)
    assert efficiency.training_flops(remat, weights, state, x) == 3 * 2 * 4 * 6 * 5


def _device(kind, platform="gpu"):
    return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize(
    ("kind", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v4", 275e12),
    ],
)
def test_peak_flops_of_common_accelerators(kind, peak):
    assert efficiency.peak_flops_per_device(_device(kind)) == peak


def test_peak_flops_override_unknown_device_and_cpu():
    assert efficiency.peak_flops_per_device(_device("NVIDIA H100 PCIe"), override=5e14) == 5e14
    assert efficiency.peak_flops_per_device(_device("Mystery accelerator")) is None
    with pytest.raises(ValueError, match="peak_flops_per_device must be > 0 FLOP/s, got -1"):
        efficiency.peak_flops_per_device(_device("NVIDIA L4"), override=-1)
    cpu = jax.devices("cpu")[0]
    per_device = efficiency.peak_flops_per_device(cpu)
    # The cores are shared by the host devices: each gets its share of the measured matmul rate.
    assert per_device * jax.local_device_count("cpu") == pytest.approx(efficiency.measured_cpu_flops())
    assert 1e8 < efficiency.measured_cpu_flops() < 1e14


def test_batch_tokens_are_batch_times_length():
    assert efficiency.batch_tokens((np.zeros((8, 16)), np.zeros((8, 16)))) == 128
    assert efficiency.batch_tokens((np.zeros((4, 10, 80)),)) == 40  # [batch, frames, features]
    assert efficiency.batch_tokens((np.zeros((4, 28, 28, 1)),)) == 4  # Images: examples.


def test_the_meter_counts_only_training_time(monkeypatch):
    # go at 0, pause from 10 to 14, report at 20 (and go again at 20), then the clock runs on.
    clock = itertools.chain([0.0, 10.0, 14.0, 20.0, 20.0], itertools.count(21.0))
    monkeypatch.setattr(efficiency.time, "perf_counter", lambda: next(clock))
    meter = efficiency.Meter()
    meter.go()
    for _ in range(4):
        meter.count(tokens=100, flops=3e9)
    with meter.pause():
        pass
    values = meter.report(peak_flops=1e9)
    # 16 seconds of training for 4 steps, 400 tokens and 12e9 FLOPs at a peak of 1e9 FLOP/s.
    assert values == pytest.approx(
        {"steps_per_second": 0.25, "seconds_per_step": 4.0, "tokens_per_second": 25.0, "mfu": 12e9 / 16 / 1e9}
    )
    assert "mfu" not in meter.report(peak_flops=None)


def test_a_loop_logs_tokens_per_second_step_time_and_mfu(tmp_path):
    loop = make_loop(str(tmp_path), n_steps_per_checkpoint=5)
    loop.run(5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert last["step"] == 5
    # Batches are [8, 16] tokens; the model's one matmul is Dense(16 -> V), three times per step.
    assert (
        loop._trainers[0]
        .compiled_step(
            (loop.model.weights, loop._trainers[0].ends_weights),
            (loop.model.state, loop._trainers[0].ends_state),
            (jnp.zeros((8, 16), jnp.int32),) * 3,
            jax.random.PRNGKey(0),
        )
        .flops
        == 3 * 2 * 8 * 16 * 16 * V
    )
    assert last["train/tokens_per_second"] == pytest.approx(128 * last["train/steps_per_second"])
    assert last["train/seconds_per_step"] == pytest.approx(1 / last["train/steps_per_second"])
    assert 0 < last["train/mfu"] < 1
    peak = efficiency.peak_flops_per_device(jax.devices()[0]) * loop.n_devices
    expected_mfu = 3 * 2 * 8 * 16 * 16 * V * last["train/steps_per_second"] / peak
    assert last["train/mfu"] == pytest.approx(expected_mfu)


def test_a_loop_writes_a_profile_of_the_steps_asked_for(tmp_path):
    loop = make_loop(str(tmp_path), n_steps_per_checkpoint=10, profile_steps=(2, 3))
    loop.run(4)
    traces = glob.glob(os.path.join(tmp_path, "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("steps", [(0, 2), (3, 2), (1,), "1-2", (1.0, 2)])
def test_bad_profile_steps_read_clearly(tmp_path, steps):
    with pytest.raises(
        ValueError, match=r"profile_steps must be \(first, last\) steps with 1 <= first <= last"
    ):
        make_loop(str(tmp_path), profile_steps=steps)


def test_profile_steps_need_an_output_dir():
    with pytest.raises(ValueError, match="profile_steps needs an output_dir"):
        make_loop(None, profile_steps=(1, 2))


def test_a_pause_leaves_a_stopped_meter_stopped(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(efficiency.time, "perf_counter", lambda: now[0])
    meter = efficiency.Meter()
    with meter.pause():  # E.g. the first log's peak measurement, outside `run`.
        pass
    now[0] = 5.0
    meter.go()  # `run` starts: training time counts from here, not from the pause.
    meter.count(tokens=1, flops=0.0)
    now[0] = 6.0
    assert meter.report(peak_flops=None)["seconds_per_step"] == 1.0
