"""Trax's optimizers, gin-registered, built on optax.

An optimizer object holds Trax's hyperparameters (same names and defaults as
`trax.optimizers`); `to_optax` turns it into an `optax.GradientTransformation`
for a whole weights tree, its learning rate driven by a schedule::

    import optax
    import trax_sl
    from trax_sl.supervised import lr_schedules

    opt = trax_sl.optimizers.Adam(0.01)
    tx = opt.to_optax(lr_schedules.multifactor())   # or opt.to_optax() for a constant rate
    opt_state = tx.init(weights)
    updates, opt_state = tx.update(grads, opt_state, weights)   # jit-able
    weights = optax.apply_updates(weights, updates)
    opt_state.hyperparams["learning_rate"]           # the rate of the last update

Schedules are functions step -> learning rate, evaluated on optax's update
count (0 at the first update; `to_optax(schedule, step_offset=1)` numbers it
1, as Trax's `training.Loop` does). Empty entries of the weights tree (`()`,
`None`) and `tl.SHARED` markers are pytrees without leaves: they get no
state and no update.

Updates follow Trax's rules: weight decay (`weight_decay_rate`) subtracts a
fraction of each weight per step, independent of the learning rate, and
`clip_grad_norm` clips the global gradient norm first. Optimizers: `SGD`,
`Momentum`, `RMSProp`, `Adam`, `AdamW` (decay scaled by the learning rate; not
in Trax), `Adafactor`, `SM3`. In gin: `train.optimizer =
@trax_sl.optimizers.Adam` and `Adam.weight_decay_rate = 1e-5`.

Trax's per-tree API runs too: `opt.tree_init(weights)` gives `(slots,
opt_params)` (one slot per weight array: Momentum's velocity, Adam's `(m, v)`,
None for SGD), `opt.tree_update(step, grads, weights, slots, opt_params)` one
update, and `Trainer(model_with_loss, opt).one_step(batch, rng)` a compiled step;
`ReversibleSerialTrainer(blocks, loss_layer, optimizer_fn)` the same step,
layer by layer, for models bigger than an accelerator's memory.
"""

from trax_sl.optimizers import adafactor, adam, base, momentum, reversible_trainer, rms_prop, sm3, trainer
from trax_sl.optimizers.adafactor import Adafactor
from trax_sl.optimizers.adam import Adam, AdamW
from trax_sl.optimizers.base import SGD, Optimizer, clip_grads, l2_norm
from trax_sl.optimizers.momentum import Momentum
from trax_sl.optimizers.reversible_trainer import ReversibleSerialTrainer
from trax_sl.optimizers.rms_prop import RMSProp
from trax_sl.optimizers.sm3 import SM3, MomentumType
from trax_sl.optimizers.trainer import Trainer

__all__ = [
    "SGD",
    "SM3",
    "Adafactor",
    "Adam",
    "AdamW",
    "Momentum",
    "MomentumType",
    "Optimizer",
    "RMSProp",
    "ReversibleSerialTrainer",
    "Trainer",
    "clip_grads",
    "l2_norm",
]
