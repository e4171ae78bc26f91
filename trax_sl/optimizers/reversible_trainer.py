"""Trax's `ReversibleSerialTrainer`: a memory-lean optimizer step over blocks of standard and reversible layers.

The model is a series of blocks, each a list of standard layers followed by a
list of reversible ones, then a loss layer. A step runs the blocks forward
keeping only each standard layer's inputs (a reversible layer's inputs are
computed back from its outputs), then runs them backward one layer at a time,
updating each layer's weights with its own optimizer as soon as its gradient is
known. Weights, state and optimizer slots live on the host between uses, and
one compiled function per layer moves only that layer's to the devices, so a
model whose weights do not all fit on an accelerator still trains.

The updates equal `Trainer(tl.Serial(blocks + [loss_layer]), optimizer)`'s
(each layer gets the random key that Serial gives it), except for optimizers
that look at the whole weight tree at once (`clip_grad_norm`): here each layer
is clipped on its own, as in Trax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl.layers import base, metrics, reversible
from trax_sl.layers.combinators import Chunk, Serial
from trax_sl.layers.combinators import stack as stack_ops
from trax_sl.optimizers.devices import check_trainer_devices, placed_on


def _has_weights(weights) -> bool:
    return bool(jax.tree.leaves(weights))


def _is_float0(x) -> bool:
    return getattr(x, "dtype", None) == jax.dtypes.float0


def _cotangents_for(outputs, grads):
    """`grads` with a zero cotangent where it holds None (for integer outputs, JAX's float0 zeros)."""

    def one(out, grad):
        if grad is not None:
            return grad
        if jnp.issubdtype(out.dtype, jnp.inexact):
            return jnp.zeros_like(out)
        return np.zeros(out.shape, jax.dtypes.float0)

    return jax.tree.map(one, outputs, grads, is_leaf=lambda x: x is None)


def _without_float0(grads):
    """Integer inputs' cotangents (float0) as None, so that only real gradients leave a compiled step."""
    return jax.tree.map(lambda g: None if _is_float0(g) else g, grads)


def _items(x) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class ReversibleSerialTrainer:
    """Runs optimizer steps on `blocks` of (standard layers, reversible layers) followed by `loss_layer`.

    Trax's memory-efficient trainer (`trax.optimizers.ReversibleSerialTrainer`):
    the step equals `Trainer` on `tl.Serial(blocks + [loss_layer])` but keeps
    only the standard layers' inputs as activations, and weights on the host
    (module docstring). Layers are read and written through their interactive
    caches (`layer.weights`, `layer.state`), so the model the blocks came from
    sees the trained weights. With `n_devices` > 1 (default: all local
    devices) the batch is split over them on its leading axis.

    Args:
        blocks: A list of pairs `(standard_layers, reversible_layers)`; every
            layer of the second list must be a `tl.ReversibleLayer`.
        loss_layer: The last layer; its output is the scalar loss.
        optimizer_fn: Builds one optimizer per layer (e.g. `optimizers.Adam`).
        n_devices: The local devices to split the batch over.
        memoize_jit: Accepted for Trax compatibility. Trax shares compiled
            functions between layers with the same `repr`; here each layer
            compiles its own (a repr does not pin a layer's computation).
        free_accelerators_on_step: Accepted for Trax compatibility: weights
            and slots already leave the devices after each layer's use.
        adasum: Trax's Adasum gradient merging; not supported (raises).
    """

    def __init__(
        self,
        blocks,
        loss_layer,
        optimizer_fn,
        n_devices: int | None = None,
        memoize_jit: bool = True,
        free_accelerators_on_step: bool = False,
        adasum: bool = False,
    ):
        del memoize_jit, free_accelerators_on_step  # See the class docstring.
        self._n_devices = check_trainer_devices("ReversibleSerialTrainer", n_devices, adasum)
        self._mesh = Mesh(np.array(jax.local_devices()[: self._n_devices]), ("batch",))
        self._blocks = []
        for i, block in enumerate(blocks):
            standard, reversible_layers = block
            for layer in reversible_layers:
                if not isinstance(layer, reversible.ReversibleLayer):
                    raise TypeError(
                        f"ReversibleSerialTrainer: block {i}'s second list must hold reversible layers "
                        f"(tl.ReversibleLayer), got {layer.name} ({type(layer).__name__})"
                    )
            self._blocks.append((Serial(standard), list(reversible_layers)))
        self._loss_layer = loss_layer
        self._optimizer_fn = optimizer_fn
        self._n_layers = 1 + sum(1 + len(revs) for _, revs in self._blocks)
        self._optimizers = {}
        for layer in self.all_layers:
            opt = optimizer_fn()
            opt.tree_init(layer.weights)
            opt.slots = jax.device_get(opt.slots)
            self._optimizers[id(layer)] = opt
        self._forward_fns = {id(layer): jax.jit(layer.pure_fn) for layer in self.all_layers[:-1]}
        self._backward_fns = {}
        for standard, revs in self._blocks:
            self._backward_fns[id(standard)] = self._compiled_standard_update(standard)
            for layer in revs:
                self._backward_fns[id(layer)] = self._compiled_reversible_update(layer)
        self._backward_fns[id(loss_layer)] = self._compiled_standard_update(loss_layer, is_loss=True)

    @property
    def loss_layer(self):
        return self._loss_layer

    @property
    def all_layers(self) -> list:
        """The model's layers in order: each block's standard layers (as one Serial), its reversible layers, the loss."""
        layers = []
        for standard, revs in self._blocks:
            layers.append(standard)
            layers.extend(revs)
        layers.append(self._loss_layer)
        return layers

    @property
    def optimizer_fn(self):
        return self._optimizer_fn

    @property
    def slots(self) -> list:
        """Per block `(standard slots, [reversible layers' slots])`, then the loss layer's slots (Trax's layout)."""
        opts = self._optimizers
        blocks = [(opts[id(s)].slots, [opts[id(r)].slots for r in revs]) for s, revs in self._blocks]
        return [*blocks, opts[id(self._loss_layer)].slots]

    @slots.setter
    def slots(self, slots):
        *block_slots, loss_slots = slots
        for (standard, revs), (standard_slots, rev_slots) in zip(self._blocks, block_slots):
            self._optimizers[id(standard)].slots = standard_slots
            for layer, layer_slots in zip(revs, rev_slots):
                self._optimizers[id(layer)].slots = layer_slots
        self._optimizers[id(self._loss_layer)].slots = loss_slots

    # --- The compiled per-layer updates ---------------------------------------------

    def _update_weights(self, layer, weights, grads, slots, opt_params, step):
        if not _has_weights(weights):
            return weights, slots, {}
        return self._optimizers[id(layer)].tree_update(
            step, grads, weights, slots, opt_params, store_slots=False
        )

    def _compiled_standard_update(self, layer, is_loss: bool = False):
        """Recompute `layer` from its saved inputs, back-propagate `grads`, update its weights."""

        def update(inputs, weights, grads, state, slots, opt_params, rng, step):
            def apply(x, w):
                return layer.pure_fn(x, w, state, rng)

            outputs, vjp_fn, new_state = jax.vjp(apply, inputs, weights, has_aux=True)
            if is_loss:
                grads = jnp.ones((), outputs.dtype)
            input_grads, weight_grads = vjp_fn(_cotangents_for(outputs, grads))
            new_weights, new_slots, stats = self._update_weights(
                layer, weights, weight_grads, slots, opt_params, step
            )
            if is_loss:
                stats = {**stats, "loss": outputs}
            return new_weights, new_slots, new_state, _without_float0(input_grads), stats

        return jax.jit(update)

    def _compiled_reversible_update(self, layer):
        """Compute `layer`'s inputs back from its outputs, back-propagate `grads`, update its weights."""

        def update(outputs, weights, grads, state, new_state, slots, opt_params, rng, step):
            inputs, (input_grads, weight_grads) = layer.reverse_and_grad(
                outputs, _cotangents_for(outputs, grads), weights, state, new_state, rng=rng
            )
            new_weights, new_slots, stats = self._update_weights(
                layer, weights, weight_grads, slots, opt_params, step
            )
            return new_weights, new_slots, inputs, _without_float0(input_grads), stats

        return jax.jit(update)

    # --- One step ---------------------------------------------------------------------

    def _on_devices(self, tree):
        return jax.device_put(tree, NamedSharding(self._mesh, PartitionSpec()))

    def _opt_params(self, layer, learning_rate):
        params = self._optimizers[id(layer)].opt_params
        if learning_rate is not None:
            params["learning_rate"] = learning_rate
        return params

    def _store(self, layer, weights, slots, state):
        """Writes a layer's new weights, slots and state back to the host (the model's live caches)."""
        weights, slots, state = jax.device_get((weights, slots, state))
        if any(layer is standard for standard, _ in self._blocks):
            # A block's Serial is built here; its sublayers' caches are the model's: write each there.
            for sub, w, s in zip(layer.sublayers, weights, state):
                sub.weights, sub.state = w, s
        else:
            layer.weights, layer.state = weights, state
        self._optimizers[id(layer)].slots = slots

    def one_step(self, batch, rng, step: int = 0, learning_rate=None):
        """Runs one optimizer step on `batch`; returns `(loss, stats)` as Trax's.

        The stats are each layer's optimizer statistics, keyed `layer{i}/name`
        with the layers numbered in model order (the loss layer last; its
        `loss` too).

        Args:
            batch: The model's inputs (e.g. `(inputs, targets, weights)`).
            rng: The step's random key (dropout).
            step: The update number (from 0), for the optimizers' internals.
            learning_rate: This step's rate for every layer; the optimizers'
                own if None.
        """
        rngs = base.split_rng(rng, self._n_layers)
        stack = jax.tree.map(lambda x: placed_on(self._mesh, self._n_devices, x), _items(batch))
        saved = []  # Per block: its standard layer's inputs and state, and its reversible layers' states.
        index = 0
        for standard, revs in self._blocks:
            inputs = stack_ops.inputs_from_stack(stack, standard.n_in)
            state = self._on_devices(standard.state)
            outputs, _ = self._forward_fns[id(standard)](
                inputs, self._on_devices(standard.weights), state, rngs[index]
            )
            stack = _items(stack_ops.outputs_onto_stack(outputs, stack, standard.n_in))
            rev_states = []
            for layer in revs:
                index += 1
                old = self._on_devices(layer.state)
                outputs, new = self._forward_fns[id(layer)](
                    stack_ops.inputs_from_stack(stack, layer.n_in),
                    self._on_devices(layer.weights),
                    old,
                    rngs[index],
                )
                stack = _items(stack_ops.outputs_onto_stack(outputs, stack, layer.n_in))
                rev_states.append((old, new))
            saved.append((inputs, state, rev_states))
            index += 1

        stats = []
        loss = self._loss_layer
        inputs = stack_ops.inputs_from_stack(stack, loss.n_in)
        new_weights, new_slots, new_state, grads, loss_stats = self._backward_fns[id(loss)](
            inputs,
            self._on_devices(loss.weights),
            None,
            self._on_devices(loss.state),
            self._on_devices(self._optimizers[id(loss)].slots),
            self._opt_params(loss, learning_rate),
            rngs[-1],
            step,
        )
        self._store(loss, new_weights, new_slots, new_state)
        grad_stack = _items(grads) if loss.n_in > 1 else (grads,)
        stats.append(loss_stats)

        for (standard, revs), (inputs, state, rev_states) in zip(reversed(self._blocks), reversed(saved)):
            for layer, (old, new) in zip(reversed(revs), reversed(rev_states)):
                index -= 1
                outputs = stack_ops.inputs_from_stack(stack, layer.n_out)
                grads = stack_ops.inputs_from_stack(grad_stack, layer.n_out)
                update = self._backward_fns[id(layer)]
                new_weights, new_slots, layer_inputs, input_grads, layer_stats = update(
                    outputs,
                    self._on_devices(layer.weights),
                    grads,
                    old,
                    new,
                    self._on_devices(self._optimizers[id(layer)].slots),
                    self._opt_params(layer, learning_rate),
                    rngs[index],
                    step,
                )
                self._store(layer, new_weights, new_slots, new)
                stack = _items(stack_ops.outputs_onto_stack(layer_inputs, stack, layer.n_out))
                grad_stack = _items(stack_ops.outputs_onto_stack(input_grads, grad_stack, layer.n_out))
                stats.append(layer_stats)
            index -= 1
            grads = stack_ops.inputs_from_stack(grad_stack, standard.n_out)
            new_weights, new_slots, new_state, input_grads, layer_stats = self._backward_fns[id(standard)](
                inputs,
                self._on_devices(standard.weights),
                grads,
                state,
                self._on_devices(self._optimizers[id(standard)].slots),
                self._opt_params(standard, learning_rate),
                rngs[index],
                step,
            )
            self._store(standard, new_weights, new_slots, new_state)
            stack = _items(stack_ops.outputs_onto_stack(inputs, stack, standard.n_out))
            grad_stack = _items(stack_ops.outputs_onto_stack(input_grads, grad_stack, standard.n_out))
            stats.append(layer_stats)

        joint = {
            f"layer{i}/{k}": v
            for i, layer_stats in enumerate(reversed(stats))
            for k, v in layer_stats.items()
        }
        return loss_stats["loss"], joint


def _flattened(layers) -> list:
    """Layers with every list and Serial (ReversibleSerial included) opened into its sublayers."""
    if isinstance(layers, (list, tuple)):
        return [leaf for layer in layers for leaf in _flattened(layer)]
    if isinstance(layers, Serial):
        return _flattened(list(layers.sublayers))
    return [layers]


def extract_reversible_blocks(layers, loss_chunk_size: int = 0):
    """Splits a model ending in its loss into `(blocks, loss_layer)` for `ReversibleSerialTrainer` (Trax's).

    Serial layers are opened; each run of standard layers followed by
    reversible ones is a block, and the standard layers after the last
    reversible one are the loss layer.

    Args:
        layers: A layer or a list of layers ending in a loss (e.g. `[model, loss]`).
        loss_chunk_size: If > 0, the loss's projection, `LogSoftmax` and
            cross-entropy run on chunks of this many positions at a time (the
            batch and length axes merged), so the logits of a large
            vocabulary are never all alive. The loss must then end in
            `LogSoftmax, CrossEntropyLoss` after a `StripFromConcatenateWithPadding`
            or `Select` layer, and the projection is everything in between.

    Raises:
        ValueError: the last layer is reversible, or the loss cannot be chunked.
    """
    blocks, standard, revs = [], [], []
    for layer in _flattened(layers):
        if isinstance(layer, reversible.ReversibleLayer):
            revs.append(layer)
        elif not revs:
            standard.append(layer)
        else:
            blocks.append((standard, revs))
            standard, revs = [layer], []
    if revs:
        raise ValueError(
            f"extract_reversible_blocks: the last layer must be a standard loss layer, got the reversible "
            f"{revs[-1].name}"
        )
    if loss_chunk_size > 0:
        return blocks, _chunked_loss(standard, loss_chunk_size)
    return blocks, Serial(standard)


def _chunked_loss(layers: list, chunk_size: int):
    """`layers` (…, border, projection…, LogSoftmax, CrossEntropyLoss) with the per-position part chunked."""
    borders = ("StripFromConcatenateWithPadding", "Select")
    starts = [i + 1 for i, layer in enumerate(layers) if layer.name.split("[")[0] in borders]  # Select[0, 1]
    names = [layer.name for layer in layers]
    if not starts:
        raise ValueError(
            f"extract_reversible_blocks: loss chunking needs the loss to follow one of {borders}; "
            f"the loss layers are {names}"
        )
    start = starts[-1]
    if names[-2:] != ["LogSoftmax", "CrossEntropyLoss"] or len(layers) - start < 3:
        raise ValueError(
            "extract_reversible_blocks: loss chunking needs the loss to end in a projection, LogSoftmax "
            f"and CrossEntropyLoss after {names[start - 1] if start else 'its border'}; the loss layers are {names}"
        )

    def merge_positions(predictions, targets):
        return predictions.reshape((-1, predictions.shape[-1])), targets.reshape((-1,)), targets

    chunked = Chunk(
        Serial(
            layers[start:-1],
            base.Fn("_CrossEntropy", metrics._cross_entropies),  # CrossEntropyLoss's, per position.
        ),
        chunk_size,
    )
    return Serial(
        layers[:start],
        base.Fn("pre_xent_rebatch", merge_positions, n_out=3),
        chunked,
        base.Fn("after_xent_rebatch", lambda xent, targets: xent.reshape(targets.shape)),
        metrics._WeightedMean(),
    )


def init_reversible_blocks(blocks, loss_layer, input_signature, rng) -> None:
    """Initializes the blocks' layers and the loss layer one at a time (Trax's), keeping weights on the host.

    Each layer gets its own key, so no whole-model weight tree is ever built.
    """
    signature = input_signature
    for standard, revs in blocks:
        rngs = jax.random.split(rng, len(standard) + len(revs) + 1)
        rng = rngs[0]
        for layer, layer_rng in zip(list(standard) + list(revs), rngs[1:]):
            inputs = stack_ops.inputs_from_stack(signature, layer.n_in)
            layer.init(inputs, rng=layer_rng)
            layer.weights, layer.state = jax.device_get((layer.weights, layer.state))
            signature = stack_ops.outputs_onto_stack(layer.output_signature(inputs), signature, layer.n_in)
    loss_layer.init(stack_ops.inputs_from_stack(signature, loss_layer.n_in), rng=rng)
    loss_layer.weights, loss_layer.state = jax.device_get((loss_layer.weights, loss_layer.state))
