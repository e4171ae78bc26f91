"""Data-parallel training: all local devices by default, the same results on 1, 2 and 8 devices."""

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from trax_sl import data, mesh, optimizers
from trax_sl import layers as tl
from trax_sl.supervised import train_step, training

V = 8
STEPS = 5


def copy_inputs(batch_size=8):
    # Every batch is [batch_size, 16]: one shape, one compilation.
    return data.sequence_copy_inputs(
        vocab_size=V,
        batch_size=batch_size,
        train_length=6,
        eval_min_length=2,
        eval_max_length=6,
        pad_to_multiple=16,
    )


def dropout_model():
    # Dropout draws from the step's rng: its masks must not depend on how the batch is split.
    return tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3, mode="train"), tl.LayerNorm(), tl.Dense(V))


def make_loop(n_devices=None, batch_size=8):
    inputs = copy_inputs(batch_size)
    task = training.TrainTask(
        lambda position: inputs.train_stream(1, position=position),
        tl.WeightedCategoryCrossEntropy(),
        optimizers.Adam(0.05),
        loss_name="loss",
    )
    return training.Loop(
        dropout_model(),
        task,
        n_devices=n_devices,
        random_seed=0,
        checkpoint_at=lambda step: False,
        eval_at=lambda step: True,
    )


def test_by_default_every_local_device_takes_a_slice_of_the_batch():
    loop = make_loop()
    assert jax.local_device_count() == 8  # tests/conftest.py
    assert loop.n_devices == 8 and loop.mesh.devices.size == 8
    assert loop.mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
    assert dict(loop.mesh.shape) == {"data": 8, "fsdp": 1, "tensor": 1}
    loop.run(1)
    for leaf in jax.tree.leaves(loop.model.weights):  # Replicated, and still so after a step.
        assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8

    x, y, weights = train_step.put_batch(next(copy_inputs().train_stream(1)), loop.mesh)
    for leaf in (x.values, x.mask, y.values, weights):
        assert leaf.sharding.spec == PartitionSpec(mesh.BATCH_AXES)
        assert [shard.data.shape[0] for shard in leaf.addressable_shards] == [1] * 8
    # The compiled step computes on one example per device: its batch parameters are per-device slices.
    layer = tl.Serial(dropout_model(), tl.WeightedCategoryCrossEntropy())
    signature = train_step.input_signature((x, y, weights), layer.n_in)
    layer_weights, state, shardings = train_step.sharded_init(layer, signature, jax.random.key(1), loop.mesh)
    tx = optax.adam(0.05)
    opt_state, opt_shardings = train_step.sharded_opt_init(tx, layer_weights, shardings, loop.mesh)
    step = train_step.train_step(layer, tx, loop.mesh, shardings, opt_shardings)
    rng = train_step.put_replicated(jax.random.key(0), loop.mesh)
    args = (layer_weights, state, opt_state, (x, y, weights), rng)
    hlo = step.lower(*args).compile().as_text()
    assert "s32[1,16]" in hlo and "s32[8,16]" not in hlo


def test_one_two_and_eight_devices_give_the_same_losses_and_weights():
    results = {}
    for n_devices in (1, 2, 8):
        loop = make_loop(n_devices)
        loop.run(STEPS)
        losses = [value for _, value in loop.history.get("train", "metrics/loss")]
        results[n_devices] = losses, jax.tree.map(np.asarray, loop.model.weights)
        assert loop.mesh.devices.size == n_devices
    losses_1, weights_1 = results[1]
    assert len(losses_1) == STEPS and losses_1[-1] < losses_1[0]
    for n_devices in (2, 8):
        losses, weights = results[n_devices]
        np.testing.assert_allclose(losses, losses_1, rtol=1e-5)
        differences = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), weights, weights_1)
        assert max(jax.tree.leaves(differences)) < 1e-5, differences


def test_a_batch_that_does_not_divide_names_the_batch_size_and_the_mesh():
    loop = make_loop(n_devices=4, batch_size=6)
    with pytest.raises(
        ValueError,
        match=r"the global batch size 6 does not divide by the 4 batch slices of the mesh \(data=4 x fsdp=1\)",
    ):
        loop.run(1)
    # n_devices=3 divides 6.
    loop = make_loop(n_devices=3, batch_size=6)
    loop.run(1)
    assert loop.step == 1


def test_n_devices_beyond_the_local_devices_is_refused():
    for n_devices in (0, 9):
        with pytest.raises(
            ValueError, match=rf"between 1 and the 8 local device\(s\).*n_devices={n_devices}"
        ):
            mesh.make_mesh(n_devices=n_devices)
