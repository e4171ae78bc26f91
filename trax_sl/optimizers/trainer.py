"""Trax's `Trainer`: one compiled optimizer step at a time on a model that ends in its loss.

For loops written against Trax (`trainer.one_step(batch, rng)`); trax_sl's own
`supervised.training.Loop` does not need it. The model's interactive weights
and state (`model_with_loss.weights`) and the optimizer's `slots` are what the
step reads and updates, as in Trax.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl.optimizers.base import Optimizer
from trax_sl.optimizers.devices import check_trainer_devices, placed_on
from trax_sl.optimizers.reversible_trainer import (  # noqa: F401  (Trax's module has them)
    ReversibleSerialTrainer,
    extract_reversible_blocks,
    init_reversible_blocks,
)


class Trainer:
    """Runs optimizer steps of `optimizer` on `model_with_loss` (its output: a scalar loss).

    Each step is one compiled function of (weights, state, slots, step,
    opt_params, batch, rng). With `n_devices` > 1 (all local devices by
    default, as in Trax) the batch is split over them on its leading axis and
    weights are replicated; the gradients are averaged as one batch's.
    """

    def __init__(
        self, model_with_loss, optimizer: Optimizer, n_devices: int | None = None, adasum: bool = False
    ):
        self._n_devices = check_trainer_devices("Trainer", n_devices, adasum)
        self._model_with_loss = model_with_loss
        self._optimizer = optimizer
        self._mesh = Mesh(np.array(jax.local_devices()[: self._n_devices]), ("batch",))
        self._step_fn = jax.jit(self._step)

    @property
    def model_with_loss(self):
        return self._model_with_loss

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    @property
    def slots(self):
        return self._optimizer.slots

    @slots.setter
    def slots(self, slots):
        self._optimizer.slots = slots

    def _step(self, weights, state, slots, step, opt_params, batch, rng):
        def loss_fn(weights):
            return self._model_with_loss.pure_fn(batch, weights, state, rng)

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(weights)
        new_weights, new_slots, stats = self._optimizer.tree_update(
            step, grads, weights, slots, opt_params, store_slots=False
        )
        return new_weights, new_state, new_slots, {**stats, "loss": loss}

    def one_step(self, batch, rng, step: int = 0, learning_rate=None):
        """Runs one optimizer step on `batch`; returns `(loss, stats)` as Trax's.

        Args:
            batch: The model's inputs (e.g. `(inputs, targets, weights)`).
            rng: The step's random key (dropout).
            step: The update number (from 0), for the optimizer's internals.
            learning_rate: This step's rate; the optimizer's `opt_params` if None.
        """
        model = self._model_with_loss
        if self._optimizer.slots is None:
            self._optimizer.tree_init(model.weights)  # Trax needs tree_init first; here it is done for you.
        opt_params = self._optimizer.opt_params
        if learning_rate is not None:
            opt_params["learning_rate"] = learning_rate
        replicated = NamedSharding(self._mesh, PartitionSpec())
        weights, state, slots = jax.device_put(
            (model.weights, model.state, self._optimizer.slots), replicated
        )
        batch = jax.tree.map(lambda x: placed_on(self._mesh, self._n_devices, x), batch)
        weights, state, slots, stats = self._step_fn(weights, state, slots, step, opt_params, batch, rng)
        model.weights, model.state = weights, state
        self._optimizer.slots = slots
        return stats["loss"], stats
