"""The Optimizer base class: Trax's hyperparameters in, an optax transformation out."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

Schedule = Callable[[jax.Array], jax.Array]


def check_number(optimizer: str, name: str, value, *, positive: bool = False) -> None:
    """Raises unless `value` is a real scalar (a schedule is not: see `to_optax`)."""
    is_scalar_array = isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) or is_scalar_array):
        hint = " (pass learning-rate schedules to to_optax(lr_schedule))" if callable(value) else ""
        raise TypeError(f"{optimizer}: {name} must be a number, got {value!r}{hint}")
    if positive and not value > 0:
        raise ValueError(f"{optimizer}: {name} must be > 0, got {name}={value}")


def trax_step(step: optax.GradientTransformation, weight_decay_rate=None) -> optax.GradientTransformation:
    """Makes `step` (learning rate included) Trax's update `w <- (1 - wd) * w - step`.

    Trax's optimizers decay weights by `weight_decay_rate` per step, not
    scaled by the learning rate (unlike AdamW), so the decay is added to the
    scaled step.

    Args:
        step: The transformation giving the step, learning rate included.
        weight_decay_rate: Fraction of each weight to subtract per step, or
            None for no decay.
    """
    parts = [step]
    if weight_decay_rate is not None:
        parts.append(optax.add_decayed_weights(weight_decay_rate))
    parts.append(optax.scale(-1.0))
    return optax.chain(*parts)


class Optimizer:
    """Base class of optimizers: hyperparameters that build an optax transformation.

    An optimizer object holds Trax's hyperparameters only. `to_optax` builds
    the `optax.GradientTransformation` that updates a whole weights tree;
    empty entries (`()`, `None`) and `SHARED` markers have no leaves, so
    they get no optimizer state and no update.

    Subclasses set `_INJECTED` (names of hyperparameters, besides the
    learning rate, that are kept in the optax state as
    `state.hyperparams[name]`) and define `_transform(learning_rate, ...)`.
    """

    _INJECTED: tuple[str, ...] = ()

    def __init__(self, learning_rate: float = 0.01, clip_grad_norm: float | None = None, **opt_params):
        """Records hyperparameters.

        Args:
            learning_rate: The step size used when `to_optax` gets no schedule.
            clip_grad_norm: If set, gradients are scaled down (as one vector
                over the whole tree) to this global L2 norm before the update.
            **opt_params: The optimizer's other hyperparameters.
        """
        name = type(self).__name__
        check_number(name, "learning_rate", learning_rate)
        if clip_grad_norm is not None:
            check_number(name, "clip_grad_norm", clip_grad_norm, positive=True)
        self._opt_params = {"learning_rate": learning_rate, **opt_params}
        self._clip_grad_norm = clip_grad_norm

    @property
    def learning_rate(self) -> float:
        return self._opt_params["learning_rate"]

    @property
    def clip_grad_norm(self) -> float | None:
        return self._clip_grad_norm

    @property
    def opt_params(self) -> dict:
        """The hyperparameters (Trax's `opt_params`), learning rate included."""
        return dict(self._opt_params)

    def __repr__(self) -> str:
        params = dict(self._opt_params)
        if self._clip_grad_norm is not None:
            params["clip_grad_norm"] = self._clip_grad_norm
        args = ", ".join(f"{k}={v!r}" for k, v in params.items())
        return f"{type(self).__name__}({args})"

    def to_optax(
        self, lr_schedule: Schedule | None = None, *, step_offset: int = 0
    ) -> optax.GradientTransformation:
        """Builds the optax transformation, its learning rate driven by `lr_schedule`.

        The result's state keeps the current hyperparameters in
        `state.hyperparams` (`optax.inject_hyperparams`); `update` needs the
        weights (`tx.update(grads, state, weights)`) for weight decay.

        Args:
            lr_schedule: A function step -> learning rate (jnp-traceable, e.g.
                from `trax_sl.supervised.lr_schedules`), or None to use the
                constant `learning_rate`.
            step_offset: The step number the schedule sees at the first update.
                Schedules get `update_count + step_offset`: 0 numbers steps as
                Trax's `trainer_lib` does, 1 as Trax's `training.Loop` does.
                Optimizer internals (Adam's bias correction, Adafactor's decay)
                count updates from 0 either way.
        """
        hyperparams = {name: self._opt_params[name] for name in self._INJECTED}
        hyperparams["learning_rate"] = self.learning_rate
        if lr_schedule is not None:
            if not callable(lr_schedule):
                raise TypeError(
                    f"to_optax: lr_schedule must be a function step -> learning rate, got {lr_schedule!r}"
                )
            hyperparams["learning_rate"] = _shifted(lr_schedule, step_offset)
        hyperparams.update(self._schedules(step_offset))

        def factory(**values):
            tx = self._transform(**values)
            if self._clip_grad_norm is not None:
                tx = optax.chain(optax.clip_by_global_norm(self._clip_grad_norm), tx)
            return tx

        # inject_hyperparams binds arguments by signature: give it _transform's names.
        factory.__signature__ = inspect.signature(self._transform)
        # float32 hyperparameters even for bfloat16 weights, as Trax keeps them.
        return optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**hyperparams)

    # --- Trax's per-tree API (its Trainer, and loops written against it) ----------------

    _slots = None  # Trax's: None until tree_init.

    @property
    def slots(self):
        """Trax's slots: after `tree_init`, one entry per weight array (None where nothing is kept for it).

        An entry holds the optimizer's per-array state in optax's order:
        Momentum's velocity, Adam's `(m, v)`; SGD keeps nothing.
        """
        return self._slots

    @slots.setter
    def slots(self, slots):
        self._slots = slots

    def tree_init(self, weight_tree):
        """Trax's: `(slots, opt_params)` for `weight_tree`; the slots are also stored (`self.slots`)."""
        tx = self.to_optax()
        self._slots = _slots_of(tx, tx.init(weight_tree), weight_tree)
        return self._slots, self.opt_params

    def tree_update(self, step, grad_tree, weight_tree, slots, opt_params, store_slots: bool = True):
        """Trax's update of a whole tree: `(new_weights, new_slots, {'gradients_l2', 'weights_l2'})`.

        `step` counts updates from 0 (Adam's bias correction uses it);
        `opt_params` sets the hyperparameters (e.g. `learning_rate`) of this
        update. Jit-able; with `store_slots=False` it is pure (Trax's Trainer
        jits it so), else the new slots are also stored.
        """
        tx = self.to_optax()
        state = _state_of(tx, weight_tree, slots, step, opt_params)
        updates, state = tx.update(grad_tree, state, weight_tree)
        new_weights = optax.apply_updates(weight_tree, updates)
        new_slots = _slots_of(tx, state, weight_tree)
        if store_slots:
            self._slots = new_slots
        return (
            new_weights,
            new_slots,
            {"gradients_l2": l2_norm(grad_tree), "weights_l2": l2_norm(weight_tree)},
        )

    def _schedules(self, step_offset: int) -> dict[str, Schedule]:
        """Step-dependent injected hyperparameters other than the learning rate."""
        del step_offset
        return {}

    def _transform(self, learning_rate, **injected) -> optax.GradientTransformation:
        raise NotImplementedError(f"{type(self).__name__} must define _transform")


def _leaf_indices(weight_tree):
    """`weight_tree` with each array replaced by its index in flattening order, and the array count."""
    leaves, treedef = jax.tree.flatten(weight_tree)
    return jax.tree.unflatten(treedef, range(len(leaves))), len(leaves)


def _slots_of(tx: optax.GradientTransformation, state, weight_tree) -> tuple:
    """Trax's slots: per weight array, the parts of optax's state that belong to it."""
    indices, n = _leaf_indices(weight_tree)
    parts = [[] for _ in range(n)]
    optax.tree_utils.tree_map_params(tx, lambda x, i: parts[i].append(x) or x, state, indices)
    return tuple(None if not p else p[0] if len(p) == 1 else tuple(p) for p in parts)


def _state_of(tx: optax.GradientTransformation, weight_tree, slots, step, opt_params):
    """optax's state holding `slots`, with its update counts at `step` and hyperparameters from opt_params."""
    indices, n = _leaf_indices(weight_tree)
    if len(slots) != n:
        raise ValueError(f"tree_update: got {len(slots)} slots for a weight tree of {n} arrays")
    queues = [[] if s is None else list(s) if isinstance(s, tuple) else [s] for s in slots]
    state = optax.tree_utils.tree_map_params(tx, lambda _, i: queues[i].pop(0), tx.init(weight_tree), indices)
    step = jnp.asarray(step, jnp.int32)
    state = jax.tree_util.tree_map_with_path(  # Every update count (injected hyperparameters', Adam's, ...).
        lambda path, x: step if getattr(path[-1], "name", None) == "count" else x, state
    )
    given = {k: jnp.asarray(v, jnp.float32) for k, v in opt_params.items() if k in state.hyperparams}
    return state._replace(hyperparams={**state.hyperparams, **given})


def _shifted(schedule: Schedule, step_offset: int) -> Schedule:
    if step_offset == 0:
        return schedule
    return lambda count: schedule(count + step_offset)


@gin.configurable(module="trax_sl.optimizers")
class SGD(Optimizer):
    """Stochastic gradient descent: `w <- w - learning_rate * g`."""

    def __init__(self, learning_rate: float = 0.01, clip_grad_norm: float | None = None):
        super().__init__(learning_rate=learning_rate, clip_grad_norm=clip_grad_norm)

    def _transform(self, learning_rate):
        return optax.sgd(learning_rate)


def l2_norm(tree) -> jax.Array:
    """The L2 norm of all elements of all arrays in `tree`, as one vector."""
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree)))


def clip_grads(grad_tree, max_norm: float):
    """Scales `grad_tree` down, as one vector, so its L2 norm is at most `max_norm`."""
    clipped, _ = optax.clip_by_global_norm(max_norm).update(grad_tree, optax.EmptyState())
    return clipped
