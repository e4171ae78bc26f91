"""Models bigger than one device: FSDP and tensor parallelism give the 1-device run, on a fraction of the memory.

On 8 CPU host devices (tests/conftest.py) a TransformerLM trained 5 Adam
steps with `mesh_shape` {'fsdp': 8}, {'data': 2, 'fsdp': 2, 'tensor': 2} and
{'data': 8} ends where the 1-device run ends; under {'fsdp': 8} each device
holds about an eighth of the weights and optimizer state; a checkpoint saved
on 8 devices resumes on 4 and on 1 as an uninterrupted run goes on.
"""

import gin
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from trax_sl import data, mesh, models, optimizers, partitioning, shapes
from trax_sl import layers as tl
from trax_sl.supervised import train_step, training

V = 16
STEPS = 5
MESHES = {
    "fsdp=8": {"fsdp": 8},
    "data=2,fsdp=2,tensor=2": {"data": 2, "fsdp": 2, "tensor": 2},
    "data=8": {"data": 8},
}


def lm(mode="train"):
    # d_model 128: the weights a device holds of its shards dwarf the small replicated ones (biases, norms).
    return models.TransformerLM(
        vocab_size=V, d_model=128, d_ff=512, n_layers=2, n_heads=4, max_len=32, dropout=0.1, mode=mode
    )


def copy_inputs(batch_size=8):
    return data.sequence_copy_inputs(
        vocab_size=V,
        batch_size=batch_size,
        train_length=8,
        eval_min_length=4,
        eval_max_length=8,
        pad_to_multiple=16,
    )


def train_task(inputs):
    return training.TrainTask(
        lambda position: inputs.train_stream(1, position=position),
        tl.WeightedCategoryCrossEntropy(),
        optimizers.Adam(0.002),
        loss_name="loss",
        n_steps_per_checkpoint=3,
    )


def make_loop(output_dir=None, n_devices=None, mesh_shape=None):
    inputs = copy_inputs()
    task = train_task(inputs)
    eval_task = training.EvalTask(
        lambda position: inputs.eval_stream(1, position=position),
        [tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
        metric_names=["loss", "accuracy"],
        n_eval_batches=1,
    )
    return training.Loop(
        lm(),
        task,
        eval_model=lm("eval"),
        eval_tasks=eval_task,
        output_dir=output_dir,
        n_devices=n_devices,
        mesh_shape=mesh_shape,
        random_seed=0,
        eval_at=lambda step: True,  # Every step's loss and metrics in the history.
    )


def losses(loop):
    return [value for _, value in loop.history.get("train", "metrics/loss")]


def max_difference(a, b):
    return max(
        jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b))
    )


@pytest.fixture(scope="module")
def one_device_run():
    loop = make_loop(n_devices=1)
    initial = jax.tree.map(np.asarray, loop.model.weights)
    loop.run(STEPS)
    final = jax.tree.map(np.asarray, loop.model.weights)
    # The run moved the weights far beyond the tolerance the mesh runs are held to.
    assert max_difference(initial, final) > 1e-3
    return losses(loop), final


@pytest.mark.parametrize("name", sorted(MESHES))
def test_five_adam_steps_on_a_mesh_equal_the_one_device_run(name, one_device_run):
    loop = make_loop(mesh_shape=MESHES[name])
    assert {axis: loop.mesh.shape[axis] for axis in MESHES[name]} == MESHES[name]
    loop.run(STEPS)
    expected_losses, expected_weights = one_device_run
    assert len(expected_losses) == STEPS
    np.testing.assert_allclose(losses(loop), expected_losses, rtol=2e-5)
    assert max_difference(loop.model.weights, expected_weights) < 2e-5

    specs = {leaf.sharding.spec for leaf in jax.tree.leaves(loop.model.weights)}
    used = {
        axis
        for spec in specs
        for entry in spec
        for axis in ((entry,) if isinstance(entry, str) else entry or ())
    }
    expected_axes = {axis for axis, size in MESHES[name].items() if size > 1} - {"data"}
    assert used == expected_axes, specs  # data=8: all replicated; fsdp / tensor: used where asked.


def test_fsdp_puts_an_eighth_of_the_weights_and_optimizer_state_on_each_device():
    loop = make_loop(mesh_shape={"fsdp": 8})
    weights = loop.model.weights
    opt_state = loop._trainers[0].opt_state
    total = sum(leaf.nbytes for leaf in jax.tree.leaves((weights, opt_state)))
    per_device = partitioning.bytes_per_device((weights, opt_state))
    assert per_device <= 1.1 * total / 8, (per_device, total / 8)
    # Adam's two slots per weight are placed like their weights.
    split = lambda tree: sorted(
        str(leaf.sharding.spec) for leaf in jax.tree.leaves(tree) if leaf.sharding.spec
    )
    assert split(opt_state) == sorted(split(weights) * 2)
    memory = loop.memory_per_device()
    assert memory["weights"] == partitioning.bytes_per_device(weights)
    assert memory["step temporaries"] > 0
    assert "(mesh data=1 fsdp=8 tensor=1, 8 devices)" in loop.memory_line()


def test_embedding_is_split_over_fsdp_and_tensor_as_the_rules_say():
    loop = make_loop(mesh_shape={"data": 2, "fsdp": 2, "tensor": 2})
    embedding = loop.model.weights[1]
    assert embedding.shape == (V, 128)
    assert embedding.sharding.spec == PartitionSpec("tensor", "fsdp")  # ('vocab', 'embed')
    assert [s.data.shape for s in embedding.addressable_shards] == [(V // 2, 64)] * 8


def test_a_checkpoint_saved_on_8_devices_resumes_on_4_and_on_1_as_an_uninterrupted_run(tmp_path):
    uninterrupted = make_loop(tmp_path / "uninterrupted", mesh_shape={"fsdp": 8})
    uninterrupted.run(6)
    uninterrupted.close()
    for n_devices, mesh_shape in ((4, {"fsdp": 4}), (1, None)):
        output_dir = tmp_path / f"resumed_on_{n_devices}"
        first = make_loop(output_dir, mesh_shape={"fsdp": 8})
        first.run(3)
        first.close()
        resumed = make_loop(output_dir, n_devices=n_devices, mesh_shape=mesh_shape)
        assert resumed.step == 3 and resumed.mesh.devices.size == n_devices
        resumed.run(3)
        resumed.close()
        for kind, metric in (
            ("train", "metrics/loss"),
            ("eval", "metrics/loss"),
            ("eval", "metrics/accuracy"),
        ):
            got, expected = resumed.history.get(kind, metric), uninterrupted.history.get(kind, metric)
            assert [step for step, _ in got] == [step for step, _ in expected]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=2e-5)
        assert max_difference(resumed.model.weights, uninterrupted.model.weights) < 2e-5


@pytest.mark.parametrize(
    ("mesh_shape", "message"),
    [
        ({"fsdp": 4}, r"mesh_shape \{'fsdp': 4\} has 4 devices but the run has 8 .*set n_devices"),
        ({"model": 8}, r"unknown axes \['model'\]; the axes are \['data', 'fsdp', 'tensor'\]"),
        ({"data": -1, "fsdp": -1}, "at most one axis may be -1"),
        ({"fsdp": 3, "data": -1}, r"the other axes \(3 devices\) do not divide the 8 devices"),
        ({"fsdp": 0}, r"the size of 'fsdp' must be an int >= 1 or -1, got 0"),
    ],
)
def test_a_bad_mesh_shape_is_refused_clearly(mesh_shape, message):
    with pytest.raises(ValueError, match=message):
        mesh.make_mesh(mesh_shape)


def test_a_mesh_shape_that_is_not_a_dict_is_refused():
    with pytest.raises(TypeError, match="mesh_shape must be a dict of axis name to size"):
        mesh.make_mesh([("fsdp", 8)])


def test_mesh_shape_sizes_and_minus_one():
    assert dict(mesh.make_mesh({"fsdp": -1, "tensor": 2}).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert dict(mesh.make_mesh(None, n_devices=2).shape) == {"data": 2, "fsdp": 1, "tensor": 1}
    assert mesh.make_mesh({"fsdp": 8}) is mesh.make_mesh({"fsdp": 8, "data": 1})


def test_a_batch_axis_the_mesh_does_not_divide_is_named():
    # fsdp=8 splits batches eight ways too: a global batch of 4 cannot be split.
    task = train_task(copy_inputs(batch_size=4))
    with pytest.raises(
        ValueError, match=r"global batch size 4 does not divide by the 8 batch slices .*fsdp=8"
    ):
        training.Loop(lm(), task, mesh_shape={"fsdp": 8}, random_seed=0).run(1)


def test_the_rules_are_overridable_in_gin():
    axes, shape = partitioning.Axes("embed", "mlp"), (64, 128)
    fsdp_tensor = mesh.make_mesh({"fsdp": 4, "tensor": 2})
    assert partitioning.partition_spec(axes, shape, fsdp_tensor) == PartitionSpec("fsdp", "tensor")
    try:
        gin.parse_config("axis_rules.overrides = {'embed': None, 'mlp': ('fsdp', 'tensor')}")
        assert partitioning.partition_spec(axes, shape, fsdp_tensor) == PartitionSpec(
            None, ("fsdp", "tensor")
        )
        gin.parse_config("axis_rules.overrides = {'embed': 'model'}")
        with pytest.raises(ValueError, match="logical axis 'embed' maps to 'model'; mesh axes are"):
            partitioning.axis_rules()
    finally:
        gin.clear_config()


class _UserLayerWithoutAxes(tl.Layer):
    """A user's layer with a large weight and no `weight_axes`."""

    def init_weights_and_state(self, input_signature, rng):
        return jax.random.normal(rng, (input_signature.shape[-1], 512)), ()

    def forward(self, x, weights, state, rng):
        return x @ weights, state


def test_undeclared_weights_are_replicated_with_one_log_line(monkeypatch):
    # absl's handler setup depends on what ran before in the process: record the calls themselves.
    lines = []
    monkeypatch.setattr(partitioning.logging, "info", lambda message, *args: lines.append(message % args))
    monkeypatch.setattr(partitioning, "_logged_undeclared", set())  # Other tests' layers were logged.
    model = tl.Serial(tl.Embedding(V, 16), _UserLayerWithoutAxes(), tl.Dense(V))
    the_mesh = mesh.make_mesh({"fsdp": 8})
    signature = shapes.ShapeDtype((8, 4), np.int32)
    for _ in range(2):
        weights, _, _ = train_step.sharded_init(model, signature, jax.random.key(0), the_mesh)
    assert weights[1].shape == (16, 512) and weights[1].sharding.is_fully_replicated
    assert weights[2][0].sharding.spec == PartitionSpec("fsdp")  # A declared Dense [512, 16]: split.
    expected = (
        "_UserLayerWithoutAxes declares no logical axes for its weights (Layer.weight_axes): they are replicated "
        "on every device, not sharded."
    )
    assert [line for line in lines if "declares no logical axes" in line] == [expected]
