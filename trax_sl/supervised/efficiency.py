"""How well a run uses its hardware: tokens per second, step time and model FLOPs utilisation (MFU).

MFU is the fraction of the devices' peak FLOP rate that the model's FLOPs
reach: `model_flops(step) * steps / seconds / (n_devices * peak_flops_per_device)`,
the step's matmul and convolution FLOPs counted from its jaxpr (`model_flops`). The peak
comes from `PEAK_FLOPS` by the device's kind (dense bf16 throughput, as
MaxText and PaLM report MFU), from an explicit override, or on a CPU from a
large float32 matmul measured once (the machine's cores are shared by its
host devices, so each gets its share).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per device (the vendors' figures without sparsity), by a substring of
# `device.device_kind`, lowercased; the first match wins, so a variant comes before its family.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h200", 989e12),  # GH200 too.
    ("b200", 2250e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("v100", 125e12),
    ("t4", 65e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("tpu v3", 123e12),
    ("tpu v2", 46e12),
)
_CPU_MATMUL_SIZE = 1024


def peak_flops_per_device(device: jax.Device, override: float | None = None) -> float | None:
    """The device's peak FLOP/s: `override` if given, the table's entry, a CPU's measured share, or None."""
    if override is not None:
        if not override > 0:
            raise ValueError(f"peak_flops_per_device must be > 0 FLOP/s, got {override!r}")
        return float(override)
    kind = device.device_kind.lower()
    for name, flops in PEAK_FLOPS:
        if name in kind:
            return flops
    if device.platform == "cpu":
        return measured_cpu_flops() / jax.local_device_count("cpu")
    return None


@functools.cache
def measured_cpu_flops(size: int = _CPU_MATMUL_SIZE) -> float:
    """This machine's float32 matmul FLOP/s on one CPU device (all its cores), best of a few runs."""
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x).lower(a).compile()
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def model_flops(jaxpr) -> float:
    """The matmul and convolution FLOPs of one call of a (closed) jaxpr, over the whole (global) arrays.

    Counted from the program JAX traced rather than XLA's cost analysis, which
    counts a while loop's body once: a `lax.scan` (`Repeat`, `Scan`,
    gradient accumulation) counts here `length` times. A `while_loop`, whose
    trip count is not known, counts once; a `cond` its costliest branch;
    `shard_map` its per-device body on every device.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            out, kernel = eqn.outvars[0].aval, eqn.invars[1].aval
            out_channels = kernel.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * np.prod(out.shape) * np.prod(kernel.shape) / out_channels
        elif name == "scan":
            total += eqn.params["length"] * model_flops(eqn.params["jaxpr"])
        elif name == "cond":
            total += max(model_flops(branch) for branch in eqn.params["branches"])
        else:
            inner = sum(model_flops(value) for value in _sub_jaxprs(eqn.params))
            if name == "shard_map":
                inner *= np.prod([eqn.params["mesh"].shape[axis] for axis in eqn.params["manual_axes"]])
            total += inner
    return float(total)


def _dot_flops(eqn) -> float:
    lhs, rhs = (var.aval for var in eqn.invars)
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [size for axis, size in enumerate(rhs.shape) if axis not in (*rhs_contract, *rhs_batch)]
    return 2.0 * np.prod(lhs.shape) * np.prod(rhs_free)


def _sub_jaxprs(params: dict):
    for value in params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns"):
                yield item


def training_flops(forward: Callable, *args) -> float:
    """The model FLOPs of one training step of `forward(*args)`: three times its forward pass's.

    The backward pass of a matmul is two matmuls of its size, so a step costs
    three forward passes; recomputation (`remat`) does not count, as in MFU's
    definition (PaLM, appendix B). Only traced, never run.
    """
    return 3 * model_flops(jax.make_jaxpr(forward)(*args))


def batch_tokens(batch) -> int:
    """Tokens in a batch: the batch and time axes of its first item ([batch, time, ...]), else its batch axis."""
    first = jax.tree.leaves(batch)[0]
    shape = np.shape(first)
    if len(shape) in (2, 3):
        return int(shape[0] * shape[1])
    return int(shape[0]) if shape else 1


class Meter:
    """Counts the steps, tokens and FLOPs trained since the last report, and the training time they took.

    Only time between `go` and `stop` counts, less the time inside `pause`
    (compiling a step, evals, saving checkpoints); `report` returns the
    figures and starts a new span.
    """

    def __init__(self):
        self._seconds = 0.0  # Training time of the span before the last `go`.
        self._since: float | None = None  # When the meter last went (None: stopped).
        self._steps = self._tokens = 0
        self._flops = 0.0

    def go(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self._seconds += time.perf_counter() - self._since
            self._since = None

    @contextlib.contextmanager
    def pause(self):
        """A context whose time does not count as training time (a stopped meter stays stopped)."""
        running = self._since is not None
        self.stop()
        try:
            yield
        finally:
            if running:
                self.go()

    def count(self, tokens: int, flops: float) -> None:
        """Adds one step of `tokens` tokens and `flops` FLOPs (on all devices together)."""
        self._steps += 1
        self._tokens += tokens
        self._flops += flops

    def report(self, peak_flops: float | None) -> dict[str, float]:
        """`{steps_per_second, seconds_per_step, tokens_per_second[, mfu]}` since the last report.

        `peak_flops` is the peak FLOP/s of all the devices together (None: no MFU).
        """
        running = self._since is not None
        self.stop()
        seconds = max(self._seconds, 1e-9)
        values = {
            "steps_per_second": self._steps / seconds,
            "seconds_per_step": seconds / max(self._steps, 1),
            "tokens_per_second": self._tokens / seconds,
        }
        if self._flops and peak_flops:
            values["mfu"] = self._flops / seconds / peak_flops
        self._seconds, self._steps, self._tokens, self._flops = 0.0, 0, 0, 0.0
        if running:
            self.go()
        return values
