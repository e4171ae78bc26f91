"""Trax's ReversibleSerialTrainer: layer-by-layer steps equal to the Trainer's on the same Serial model."""

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import optimizers, shapes
from trax_sl.optimizers import reversible_trainer


def _batch(batch_size=8, length=4):
    inputs = np.arange(batch_size * length).reshape((batch_size, length)) % 9
    return inputs, (2 * inputs) % 19, np.ones_like(inputs)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _layers():
    """Two blocks with dropout everywhere (the rng each layer gets matters), a stateful layer, a loss with weights."""
    first = tl.Serial(tl.Embedding(9, 4), tl.BatchNorm(axis=(0, 1)), tl.Dropout(0.5), tl.Dup())
    revs1 = [
        tl.ReversibleHalfResidual(tl.Dense(4), tl.Dropout(0.2)),
        tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(tl.Dropout(0.5), tl.Dense(4)),
        tl.ReversibleSwap(),
    ]
    middle = tl.Serial(tl.Add(), tl.Dense(4), tl.Dup())
    revs2 = [tl.ReversibleHalfResidual(tl.Dense(4), tl.Dropout(0.3)), tl.ReversibleSwap()]
    loss = tl.Serial(tl.Concatenate(), tl.Dense(19), tl.Dropout(0.3), tl.LogSoftmax(), tl.CrossEntropyLoss())
    return first, revs1, middle, revs2, loss


@pytest.mark.parametrize("n_devices", [1, 8])
def test_steps_equal_the_trainer_on_the_serial_model(n_devices):
    first, revs1, middle, revs2, loss = _layers()
    model = tl.Serial([first, *revs1, middle, *revs2, loss])
    batch, rng_init = _batch(), jax.random.PRNGKey(12)
    step_rngs = [jax.random.PRNGKey(i) for i in (7, 8, 9)]

    model.init(shapes.signature(batch), rng=rng_init)
    trainer = optimizers.Trainer(model, optimizers.Adam(), n_devices=n_devices)
    losses = [
        trainer.one_step(batch, rng, step=i, learning_rate=0.01 * (i + 1))[0]
        for i, rng in enumerate(step_rngs)
    ]
    expected = [layer.weights for layer in (first, revs1[0], revs1[2], middle, revs2[0], loss)]
    expected_state = first.state

    model.init(shapes.signature(batch), rng=rng_init)
    rev_trainer = optimizers.ReversibleSerialTrainer(
        [(first.sublayers, revs1), (middle.sublayers, revs2)], loss, optimizers.Adam, n_devices=n_devices
    )
    for i, rng in enumerate(step_rngs):
        loss_value, stats = rev_trainer.one_step(batch, rng, step=i, learning_rate=0.01 * (i + 1))
        np.testing.assert_allclose(loss_value, losses[i], rtol=1e-5)
    _close(expected, [layer.weights for layer in (first, revs1[0], revs1[2], middle, revs2[0], loss)])
    _close(expected_state, first.state)  # BatchNorm's running statistics moved once per step.
    # Trax's stats: per layer in model order (the blocks' standard layers as one), the loss layer last.
    assert set(stats) >= {"layer0/gradients_l2", "layer1/weights_l2", "layer8/loss"}
    # Between steps the weights and slots live on the host.
    assert all(isinstance(w, np.ndarray) for w in jax.tree.leaves(revs1[0].weights))
    assert all(isinstance(s, np.ndarray) for s in jax.tree.leaves(rev_trainer.slots))


def test_slots_read_and_assign_in_trax_layout():
    first, revs1, _, _, _ = _layers()
    loss = tl.Serial(tl.Concatenate(), tl.Dense(19), tl.LogSoftmax(), tl.CrossEntropyLoss())
    reversible_trainer.init_reversible_blocks(
        [(first.sublayers, revs1)], loss, shapes.signature(_batch()), jax.random.PRNGKey(0)
    )
    trainer = optimizers.ReversibleSerialTrainer([(first.sublayers, revs1)], loss, optimizers.Momentum)
    slots = trainer.slots
    assert len(slots) == 2 and len(slots[0][1]) == len(revs1)  # [(standard, [reversible...]), loss]
    assert slots[0][1][1] == ()  # ReversibleSwap has no weights, so no slots.
    doubled = jax.tree.map(lambda s: 2 * s, slots)
    trainer.slots = doubled
    _close(doubled, trainer.slots)


def test_chunked_loss_equals_the_whole_loss():
    model = tl.Serial(
        tl.Embedding(13, 8),
        tl.Dup(),
        tl.ReversibleHalfResidual(tl.Dense(8)),
        tl.ReversibleSwap(),
        tl.Concatenate(),
    )
    loss = tl.Serial(tl.Select([0, 1, 2]), tl.Dense(19), tl.LogSoftmax(), tl.CrossEntropyLoss())
    batch = _batch(batch_size=2, length=6)
    model_with_loss = tl.Serial(model, loss)
    model_with_loss.init(shapes.signature(batch))
    whole = model_with_loss(batch)

    blocks, chunked_loss = optimizers.trainer.extract_reversible_blocks([model, loss], loss_chunk_size=4)
    assert [len(std) for std, _ in blocks] == [2] and [len(rev) for _, rev in blocks] == [2]
    assert "Chunk" in repr(chunked_loss)
    chunked = tl.Serial([tl.Serial(std) for std, _ in blocks], blocks[0][1], chunked_loss)  # The same layers.
    np.testing.assert_allclose(chunked(batch), whole, rtol=1e-6)


def test_bad_blocks_are_refused_with_the_layer_named():
    with pytest.raises(TypeError, match=r"block 0's second list must hold reversible layers .*Dense"):
        optimizers.ReversibleSerialTrainer([([tl.Dup()], [tl.Dense(4)])], tl.L2Loss(), optimizers.SGD)
    with pytest.raises(
        ValueError, match="last layer must be a standard loss layer, got the reversible ReversibleSwap"
    ):
        optimizers.trainer.extract_reversible_blocks([tl.Dup(), tl.ReversibleSwap()])
    with pytest.raises(ValueError, match="loss chunking needs the loss to end in a projection, LogSoftmax"):
        optimizers.trainer.extract_reversible_blocks([tl.Select([0, 1]), tl.L2Loss()], loss_chunk_size=4)
