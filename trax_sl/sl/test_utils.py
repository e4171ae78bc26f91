"""SequenceLayers' test helpers: `random_sequence`, and `verify_contract` (trax_sl's checker).

`import sequence_layers.jax.test_utils as sl_test_utils` becomes
`import trax_sl.sl.test_utils as sl_test_utils`.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl.layers.contract import verify_contract

__all__ = ["random_sequence", "verify_contract"]


def random_sequence(
    *dims: int,
    dtype=jnp.float32,
    random_mask: bool = False,
    random_lengths: bool | None = None,
    low: int = 0,
    high: int = 10,
    low_length: int = 0,
    high_length: int | None = None,
) -> seq.Sequence:
    """A random Sequence `[batch, time, ...]`, its invalid steps zeroed (SequenceLayers' helper).

    Values are standard normal (integers in `[low, high)` for integer
    dtypes). Each row has a random length in `[low_length, high_length)`
    (default `[0, time]`) unless `random_lengths=False` (all valid) or
    `random_mask=True` (a random, non-contiguous mask). Draws from numpy's
    global generator, as SequenceLayers does (seed it with np.random.seed).
    """
    if random_lengths is None:
        random_lengths = not random_mask
    if random_mask and random_lengths:
        raise ValueError("random_sequence: pass random_mask or random_lengths, not both")
    if len(dims) < 2:
        raise ValueError(f"random_sequence expects at least 2 dimensions (batch, time), got {dims}")
    if np.issubdtype(dtype, np.integer):
        values = np.random.randint(low, high, size=dims)
    else:
        values = np.random.normal(size=dims)
    batch, time = dims[:2]
    if random_mask:
        mask = np.random.uniform(size=(batch, time)) > 0.5
    else:
        if random_lengths and time > 0:
            high_length = time + 1 if high_length is None else high_length
            lengths = np.random.randint(low_length, high_length, size=[batch])
        else:
            lengths = np.full([batch], time)
        mask = np.arange(time)[np.newaxis, :] < lengths[:, np.newaxis]
    return seq.Sequence(jnp.asarray(values.astype(dtype)), jnp.asarray(mask)).mask_invalid()
