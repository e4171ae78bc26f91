"""Sparse feed-forward blocks (Trax's research.sparsity): SparseFF, BlockSparseFF, SwitchSparseFF.

Each replaces the dense block `Dense(d_ff) -> Relu -> Dense(d_model)` by one
in which a small controller picks, per position, which hidden units run:

- `SparseFF` splits the d_ff hidden units into blocks of `n_elements_in_block`
  and keeps one unit per block (a low-rank controller picks it);
- `BlockSparseFF` and `SwitchSparseFF` split them into `n_experts` blocks and
  keep one whole block (a mixture of experts with one expert per position).

Training uses the straight-through Gumbel-softmax trick
(https://arxiv.org/abs/1801.09797, section 2.1); eval and predict pick the
controller's argmax. Predict mode computes only the picked units, gathering
their weights (what makes these blocks fast at inference), and gives the
eval-mode values. All three map each position on its own: they stream with
block_size 1 and no latency.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import checks, partitioning
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init
from trax_sl.layers.combinators import BatchLeadingAxes, Chunk, Select, Serial
from trax_sl.layers.core import Dropout
from trax_sl.layers.distributions import one_hot

__all__ = ["BlockSparseFF", "SparseFF", "SwitchSparseFF"]

# The flags of a remembering layer's state. Trax's reversible layers replace the first by the
# second (with the forward pass's remembered value) when they recompute a layer in reverse.
_FIRST_PASS = "running_second_time"
_SECOND_PASS = "running_second_time_yes"


# --- Array functions ---------------------------------------------------------------


def _gumbel_argmax(where: str, log_probs, temperature: float, rng):
    """argmax over the last axis of `log_probs` plus `temperature` times Gumbel noise.

    At temperature 0 the plain argmax, drawing nothing (so no rng is needed).
    """
    if temperature == 0.0:
        return jnp.argmax(log_probs, axis=-1)
    if rng is None:
        raise ValueError(
            f"{where}: mode='train' samples with Gumbel noise and needs an rng, got None; "
            f"pass rng= (or use mode='eval', which takes the argmax)"
        )
    u = jax.random.uniform(rng, log_probs.shape, jnp.float32, 1e-6, 1.0 - 1e-6)
    return jnp.argmax(log_probs + temperature * -jnp.log(-jnp.log(u)), axis=-1)


def _straight_through(hard, soft):
    """`hard` in the forward pass, with the gradient of `soft`."""
    return jax.lax.stop_gradient(hard) + soft - jax.lax.stop_gradient(soft)


def _relu(x):
    # Trax's form (zero at 0, gradient 0 there), not jnp.maximum's split gradient at ties.
    return jnp.where(x <= 0, jnp.zeros_like(x), x)


def _train_rng(where: str, rng):
    if rng is None:
        raise ValueError(f"{where}: mode='train' draws random values and needs an rng, got None; pass rng=")
    return rng


def _check_divides(where: str, d_ff, key: str, value) -> None:
    checks.check_positive(where, d_ff=d_ff, **{key: value})
    if d_ff % value:
        raise ValueError(f"{where}: d_ff must be a multiple of {key}, got d_ff={d_ff} and {key}={value}")


# --- SparseFF: one active unit per block of n_elements_in_block ----------------------


class _RememberInReverse(base.Layer):
    """Remembers its input in the state, for a reversible model's second (reverse) pass.

    n_in=1, n_out=1 (output=True: the input, passed on) or 0 (output=False).
    The state is `(remembered, {flag: ()})`. When a reversible layer
    recomputes this layer in reverse it marks the state's flag as the second
    pass (Trax's `'running_second_time_yes'`); the layer then outputs what it
    remembered in the forward pass, so that the recomputation takes the same
    discrete decisions as the forward pass did. Outside reversible models it
    only passes its input on.

    Predict mode: nothing is remembered (no reverse pass follows a step, and
    the state keeps its shape whatever the block); pointwise, streams.
    """

    def __init__(self, output=True, mode="train"):
        checks.check_mode("_RememberInReverse", mode)
        super().__init__(n_in=1, n_out=1 if output else 0, name="_RememberInReverse")
        self._output = output
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        if isinstance(input_signature, (list, tuple)):
            input_signature = input_signature[0]
        # Of the input's dtype (Trax's is int32, the dtype of the quant masks it remembers).
        return (), (jnp.zeros(input_signature.shape, input_signature.dtype), {_FIRST_PASS: ()})

    def forward(self, x, weights, state, rng):
        remembered, flags = state
        result = remembered if _SECOND_PASS in flags else x
        if self._mode != "predict":
            state = (x, {_FIRST_PASS: ()})
        return (result if self._output else ()), state


class _RecallQuantMaskInReverse(base.Layer):
    """Pushes the quant mask that `remember_layer` remembered, or -1s (none) in the forward pass.

    n_in=1, n_out=2. `x [rows, d_model]` -> `x, recalled [rows, elements]`
    (int32). Lets a reversible model with feed-forward chunking remember the
    quant mask after the chunks and recall it before them: the controller
    then uses the recalled choices (where not -1) instead of its own.

    Trax's layer reads the remembering layer's state off that layer; state is
    passed in here, so the enclosing `_RecallingSerial` hands this layer the
    remembering layer's state as its own.
    """

    def __init__(self, remember_layer, elements):
        super().__init__(n_in=1, n_out=2, name="_RecallQuantMaskInReverse")
        self._remember_layer = remember_layer
        self._elements = elements

    def forward(self, x, weights, state, rng):
        if state and _SECOND_PASS in state[1]:
            return (x, state[0]), state
        return (x, -jnp.ones((x.shape[0], self._elements), jnp.int32)), state


class _RecallingSerial(Serial):
    """Serial(recalling, ..., remembering) in which the first layer reads the last one's state.

    The state keeps Trax's layout, one entry per sublayer; the recalling
    layer's own entry stays `()`.
    """

    def __init__(self, recalling: _RecallQuantMaskInReverse, *layers):
        if not layers or recalling._remember_layer is not layers[-1]:
            raise ValueError(
                "_RecallingSerial: the last layer must be the one the recalling layer recalls from"
            )
        super().__init__(recalling, *layers, name="Serial")

    def forward(self, xs, weights, state, rng):
        handed = (state[-1],) + tuple(state[1:])
        ys, new_state = super().forward(xs, weights, handed, rng)
        return ys, (state[0],) + tuple(new_state[1:])


class _SparseFFController(base.Layer):
    """SparseFF's controller: picks one element in each block of n_elements_in_block hidden units.

    n_in=2, n_out=2 (`also_return_nondiscrete_output`) or 1.
    `x [rows, d_model], recalled [rows, d1]` -> `quant_mask [rows, d1]`
    (int32, d1 = d_ff // n_elements_in_block) and, with
    `also_return_nondiscrete_output`, `mask [rows, d1, n_elements_in_block]`
    (the softmax). The logits are low rank: `x m1 m2 + mb`. In 'train' mode
    the choice is Gumbel-sampled at `temperature` and a recalled choice
    (not -1) overrides it; otherwise it is the argmax.
    Weights: `(m1 [d_model, d_lowrank], m2 [d_lowrank, d1, n_elements_in_block],
    mb [d1, n_elements_in_block])`.
    """

    def __init__(
        self,
        d_ff,
        n_elements_in_block,
        d_lowrank,
        temperature,
        use_bfloat16,
        mode,
        kernel_initializer,
        bias_initializer,
        also_return_nondiscrete_output,
    ):
        _check_divides("_SparseFFController", d_ff, "n_elements_in_block", n_elements_in_block)
        checks.check_mode("_SparseFFController", mode)
        n_out = 2 if also_return_nondiscrete_output else 1
        super().__init__(n_in=2, n_out=n_out, name=f"_SparseFFController_{d_ff}")
        self._d_ff, self._d_lowrank, self._temperature = d_ff, d_lowrank, temperature
        self._d1, self._d2 = d_ff // n_elements_in_block, n_elements_in_block
        self._use_bfloat16 = use_bfloat16
        self._mode = mode
        self._kernel_initializer, self._bias_initializer = kernel_initializer, bias_initializer
        self._also_return_nondiscrete_output = also_return_nondiscrete_output

    def weight_axes(self, weights):
        return (
            partitioning.Axes("embed", None),
            partitioning.Axes(None, "mlp", None),
            partitioning.Axes("mlp", None),
        )

    def init_weights_and_state(self, input_signature, rng):
        d_model = input_signature[0].shape[-1]
        rng_m1, rng_m2, rng_mb = jax.random.split(rng, 3)
        m1 = self._kernel_initializer((d_model, self._d_lowrank), rng_m1)
        m2 = self._kernel_initializer((self._d_lowrank, self._d_ff), rng_m2)
        mb = self._bias_initializer((self._d_ff,), rng_mb)
        if self._use_bfloat16:
            m1, m2, mb = (w.astype(jnp.bfloat16) for w in (m1, m2, mb))
        m2 = jnp.reshape(m2, (self._d_lowrank, self._d1, self._d2))
        return (m1, m2, jnp.reshape(mb, (self._d1, self._d2))), ()

    def forward(self, inputs, weights, state, rng):
        x, recalled = inputs
        m1, m2, mb = weights
        x = jnp.reshape(x, (-1, x.shape[-1]))
        logits = jnp.einsum("bd,dl,lxy->bxy", x, m1, m2) + mb[None]
        if self._also_return_nondiscrete_output:
            log_mask = jax.nn.log_softmax(logits, axis=-1)
            temperature = self._temperature if self._mode == "train" else 0.0
            quant_mask = _gumbel_argmax(self.name, log_mask, temperature, rng)
        else:
            quant_mask = jnp.argmax(logits, axis=-1)
        if self._mode == "train":
            quant_mask = jnp.where(recalled == -1, quant_mask, recalled)
        if self._also_return_nondiscrete_output:
            return (quant_mask, jnp.exp(log_mask)), state
        return quant_mask, state


class _SparseFFMain(base.Layer):
    """SparseFF's main part: the feed-forward block with the controller's one unit per block.

    n_in=3 (`quant_mask, mask, x`; in 'train' mode or with
    `multiply_by_controller_output`) or 2 (`quant_mask, x`), n_out=2:
    `quant_mask, y [rows, d_model]`. The hidden units form d1 blocks of
    n_elements_in_block; only the chosen one of each block is non-zero:
    `relu(x w1 * one_hot(quant_mask)) w2 + b2`. In 'train' mode the one-hot
    is straight-through and, with probability 1 - `quant_prob` per call, the
    soft mask is used instead. Predict mode gathers the chosen units' weights.
    Weights: `(w1 [d_model, d1, n_elements_in_block],
    w2 [n_elements_in_block, d1, d_model], b2 [d_model])`.
    """

    def __init__(
        self,
        d_ff,
        n_elements_in_block,
        d_lowrank,
        quant_prob,
        use_bfloat16,
        big_weights_in_bfloat16,
        mode,
        kernel_initializer,
        bias_initializer,
        multiply_by_controller_output,
        kernel_scaling,
    ):
        _check_divides("_SparseFFMain", d_ff, "n_elements_in_block", n_elements_in_block)
        checks.check_mode("_SparseFFMain", mode)
        n_in = 3 if mode == "train" or multiply_by_controller_output else 2
        super().__init__(n_in=n_in, n_out=2, name=f"_SparseFFMain_{d_ff}")
        self._d_ff, self._d_lowrank, self._quant_prob = d_ff, d_lowrank, quant_prob
        self._d1, self._d2 = d_ff // n_elements_in_block, n_elements_in_block
        self._use_bfloat16, self._big_weights_in_bfloat16 = use_bfloat16, big_weights_in_bfloat16
        self._mode = mode
        self._kernel_initializer, self._bias_initializer = kernel_initializer, bias_initializer
        self._multiply_by_controller_output = multiply_by_controller_output
        self._kernel_scaling = kernel_scaling

    def weight_axes(self, weights):
        return (
            partitioning.Axes("embed", "mlp", None),
            partitioning.Axes(None, "mlp", "embed"),
            partitioning.Axes("embed"),
        )

    def init_weights_and_state(self, input_signature, rng):
        d_model = input_signature[-1].shape[-1]
        rng_w1, rng_w2, rng_b2 = jax.random.split(rng, 3)
        w1 = self._kernel_initializer((d_model, self._d_ff), rng_w1)
        w2 = self._kernel_initializer((self._d_ff, d_model), rng_w2)
        b2 = self._bias_initializer((d_model,), rng_b2)
        if self._use_bfloat16:
            b2 = b2.astype(jnp.bfloat16)
        if self._use_bfloat16 or self._big_weights_in_bfloat16:
            w1, w2 = w1.astype(jnp.bfloat16), w2.astype(jnp.bfloat16)
        w1 = jnp.reshape(w1, (d_model, self._d1, self._d2))
        w2 = jnp.reshape(w2, (self._d2, self._d1, d_model))
        if self._kernel_scaling:  # Keeps the output's expected variance whatever n_elements_in_block.
            w2 = w2 * jnp.asarray(self._d2**0.5, w2.dtype)
        return (w1, w2, b2), ()

    def forward(self, inputs, weights, state, rng):
        if self.n_in == 3:
            quant_mask, mask, x = inputs
        else:
            (quant_mask, x), mask = inputs, None
        w1, w2, b2 = weights
        flat = jnp.reshape(x, (-1, x.shape[-1]))
        if self._mode == "predict":
            hidden, w2_rows = self._chosen_units(flat, quant_mask, w1, w2)
            if self._multiply_by_controller_output:
                hidden = hidden * jnp.take_along_axis(mask, quant_mask[..., None], axis=-1)[..., 0]
            y = jnp.einsum("ai,aid->ad", hidden, w2_rows)
        else:
            chosen = one_hot(quant_mask, self._d2)
            if self._mode == "train":
                if mask is None:
                    raise ValueError(
                        f"{self.name}: was built for mode='eval'/'predict' without the controller's soft "
                        f"mask, which training needs; build SparseFF with mode='train'"
                    )
                # Straight-through one-hot on quant_prob of the calls, the soft mask on the others.
                quantized = jax.random.uniform(_train_rng(self.name, rng), (), jnp.float32) < self._quant_prob
                gate = jnp.where(quantized, _straight_through(chosen, mask), mask)
            else:
                gate = chosen
            hidden = _relu(jnp.einsum("bd,dxy->bxy", flat, w1) * gate)
            if self._multiply_by_controller_output and self._mode == "train":
                # The soft-mask calls are multiplied already; the gradient passes through the one-hot.
                hidden = hidden * jax.lax.stop_gradient(jnp.where(quantized, mask, jnp.ones_like(mask)))
            elif self._multiply_by_controller_output:
                hidden = hidden * mask
            y = jnp.einsum("bxy,yxd->bd", hidden, w2)
        y = y + b2[None]
        return (quant_mask, jnp.reshape(y, x.shape[:-1] + y.shape[-1:])), state

    def _chosen_units(self, flat, quant_mask, w1, w2):
        """The relu activations of the chosen unit of each block `[rows, d1]`, and those units' rows of w2."""
        blocks = jnp.arange(self._d1).reshape((1, -1))
        w1_units = jnp.transpose(w1, (1, 2, 0))[blocks, quant_mask]  # [rows, d1, d_model]
        w2_units = jnp.transpose(w2, (1, 0, 2))[blocks, quant_mask]  # [rows, d1, d_model]
        return _relu(jnp.einsum("ad,aid->ai", flat, w1_units)), w2_units


class _PositionwiseBatchLeadingAxes(BatchLeadingAxes):
    """`BatchLeadingAxes` for a layer whose folded rows are independent and whose state does not carry.

    Each position becomes a row of the folded batch, so such a layer maps
    each position on its own and streams pointwise (a general
    `BatchLeadingAxes` cannot know that of its layer and does not stream).
    """

    streaming_spec = streaming.POINTWISE


def SparseFF(  # noqa: N802
    d_ff,
    n_elements_in_block=32,
    d_lowrank=64,
    temperature=0.1,
    quant_prob=0.3,
    use_bfloat16=False,
    big_weights_in_bfloat16=False,
    mode="train",
    kernel_initializer=init.GlorotUniformInitializer(),
    bias_initializer=init.RandomNormalInitializer(1e-6),
    dropout_rate=0.0,
    dropout_shared_axes=None,
    ff_chunk_size=0,
    multiply_by_controller_output=False,
    kernel_scaling=False,
) -> base.Layer:
    """Feed-forward block with one active hidden unit in each block of `n_elements_in_block`.

    n_in=1, n_out=1. `[..., d_model]` -> `[..., d_model]`. A low-rank
    controller picks the active unit of each block (straight-through
    Gumbel-softmax in training); only those units are computed at inference.

    Layer tree (Trax's): `BatchLeadingAxes(Serial(_RecallQuantMaskInReverse,
    Chunk(Serial(Select, _SparseFFController, _SparseFFMain, Select, Dropout,
    Select)), _RememberInReverse))`; chunking runs the rows (all positions of
    the batch) in chunks of `ff_chunk_size`.

    Args:
        d_ff: Number of hidden units.
        n_elements_in_block: The sparsity: one unit of each block of this many is active.
        d_lowrank: The controller's rank.
        temperature: The controller's Gumbel temperature in training (0 in eval/predict).
        quant_prob: The fraction of training calls that use the quantized (one-hot)
            mask; the others use the controller's soft mask.
        use_bfloat16: Whether all weights are bfloat16.
        big_weights_in_bfloat16: Whether the main (non-controller) weights are bfloat16.
        mode: 'train', 'eval' or 'predict'.
        kernel_initializer: Initializer of the weight matrices.
        bias_initializer: Initializer of the biases.
        dropout_rate: Dropout rate on the output (in 'train' mode).
        dropout_shared_axes: Axes (of the folded `[rows, d_model]` output) sharing a dropout mask.
        ff_chunk_size: If > 0, run the rows in chunks of this many to save memory.
        multiply_by_controller_output: Whether the hidden units are multiplied by the
            controller's softmax.
        kernel_scaling: Whether to scale w2 by sqrt(n_elements_in_block) at init, which keeps
            the output's variance whatever the sparsity.

    Predict mode: pointwise in time and stateless in effect (the remembering
    state is kept as initialized); streams with block_size 1, equal to eval.
    """
    _check_divides("SparseFF", d_ff, "n_elements_in_block", n_elements_in_block)
    checks.check_positive("SparseFF", d_lowrank=d_lowrank)
    checks.check_non_negative("SparseFF", ff_chunk_size=ff_chunk_size)
    checks.check_mode("SparseFF", mode)
    if not 0.0 <= quant_prob <= 1.0:
        raise ValueError(f"SparseFF: quant_prob must be in [0, 1], got quant_prob={quant_prob!r}")
    also_return_nondiscrete_output = mode == "train" or multiply_by_controller_output
    controller = _SparseFFController(
        d_ff=d_ff,
        n_elements_in_block=n_elements_in_block,
        d_lowrank=d_lowrank,
        temperature=temperature,
        use_bfloat16=use_bfloat16,
        mode=mode,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        also_return_nondiscrete_output=also_return_nondiscrete_output,
    )
    main = _SparseFFMain(
        d_ff=d_ff,
        n_elements_in_block=n_elements_in_block,
        d_lowrank=d_lowrank,
        quant_prob=quant_prob,
        use_bfloat16=use_bfloat16,
        big_weights_in_bfloat16=big_weights_in_bfloat16,
        mode=mode,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        multiply_by_controller_output=multiply_by_controller_output,
        kernel_scaling=kernel_scaling,
    )
    # The quant mask is remembered after the chunks and recalled before them (reversible models).
    remembering = _RememberInReverse(output=False, mode=mode)
    recalling = _RecallQuantMaskInReverse(remember_layer=remembering, elements=d_ff // n_elements_in_block)
    chunked = Serial(
        Select((0, 1, 0)),  # emb, recalled, emb
        controller,  # quant_mask, [mask,] emb
        main,  # quant_mask, out
        Select([1, 0]),
        Dropout(rate=dropout_rate, shared_axes=dropout_shared_axes, mode=mode),
        Select([1, 0]),  # quant_mask, out
    )
    return _PositionwiseBatchLeadingAxes(
        _RecallingSerial(recalling, Chunk(chunked, chunk_size=ff_chunk_size), remembering)
    )


# --- BlockSparseFF and SwitchSparseFF: one active block (expert) of d_ff // n_experts units ---


class _OneExpertFF(base.Layer):
    """What BlockSparseFF and SwitchSparseFF share: weights, the router, the dense and gathered FF.

    Subclasses define `_gate` (the `[rows, n_experts]` multiplier of the
    experts' hidden units in 'train'/'eval') and `_chosen_scale` (the chosen
    expert's multiplier in predict mode).
    """

    def __init__(self, d_ff, n_experts, temperature, mode, kernel_initializer, bias_initializer):
        where = type(self).__name__
        _check_divides(where, d_ff, "n_experts", n_experts)
        checks.check_mode(where, mode)
        super().__init__(name=f"{where}_{d_ff}")
        self._d_ff, self._n_experts, self._temperature = d_ff, n_experts, temperature
        self._n_elements_in_block = d_ff // n_experts
        self._mode = mode
        self._kernel_initializer, self._bias_initializer = kernel_initializer, bias_initializer

    def weight_axes(self, weights):
        return (
            partitioning.Axes("embed", None),
            partitioning.Axes("embed", "mlp"),
            partitioning.Axes("mlp", "embed"),
            partitioning.Axes("embed"),
        )

    def init_weights_and_state(self, input_signature, rng):
        d_model = input_signature.shape[-1]
        rng_m1, rng_w1, rng_w2, rng_b2 = jax.random.split(rng, 4)
        return (
            self._kernel_initializer((d_model, self._n_experts), rng_m1),
            self._kernel_initializer((d_model, self._d_ff), rng_w1),
            self._kernel_initializer((self._d_ff, d_model), rng_w2),
            self._bias_initializer((d_model,), rng_b2),
        ), ()

    def forward(self, x, weights, state, rng):
        m1, w1, w2, b2 = weights
        flat = jnp.reshape(x, (-1, x.shape[-1]))
        log_mask = jax.nn.log_softmax(jnp.dot(flat, m1), axis=-1)
        mask = jnp.exp(log_mask)
        rng_gumbel, rng_gate = (None, None) if rng is None else jax.random.split(rng)
        temperature = self._temperature if self._mode == "train" else 0.0
        selected = _gumbel_argmax(self.name, log_mask, temperature, rng_gumbel)
        if self._mode == "predict":
            y = self._chosen_expert_ff(flat, selected, self._chosen_scale(mask, selected), w1, w2)
        else:
            gate = self._gate(one_hot(selected, self._n_experts), mask, rng_gate)
            hidden = _relu(jnp.dot(flat, w1) * jnp.repeat(gate, self._n_elements_in_block, axis=-1))
            y = jnp.dot(hidden, w2)
        y = y + b2[None]
        return jnp.reshape(y, x.shape[:-1] + y.shape[-1:]), state

    def _chosen_expert_ff(self, flat, selected, scale, w1, w2):
        """The FF of each row's chosen expert alone (its hidden units multiplied by `scale`)."""
        d_model, n_experts, size = flat.shape[-1], self._n_experts, self._n_elements_in_block
        w1_expert = jnp.transpose(jnp.reshape(w1, (d_model, n_experts, size)), (1, 0, 2))[selected]
        w2_expert = jnp.reshape(w2, (n_experts, size, -1))[selected]  # [rows, size, d_model]
        hidden = jnp.einsum("rd,rde->re", flat, w1_expert)
        if scale is not None:
            hidden = hidden * scale[:, None]
        return jnp.einsum("re,red->rd", _relu(hidden), w2_expert)


class BlockSparseFF(_OneExpertFF):
    """Feed-forward block with one active block (expert) of d_ff // n_experts hidden units per position.

    n_in=1, n_out=1. `[..., d_model]` -> `[..., d_model]`. A router
    `softmax(x m1)` picks the expert (Gumbel-sampled at `temperature` in
    training, the argmax otherwise); the hidden units of the others are zero.
    Training uses the straight-through one-hot on about half of the calls and
    the soft router mask on the others. Weights: `(m1 [d_model, n_experts],
    w1 [d_model, d_ff], w2 [d_ff, d_model], b2 [d_model])`.

    Predict mode: computes only the chosen expert's units; stateless and
    pointwise in time, streams with block_size 1, equal to eval.
    """

    def __init__(
        self,
        d_ff,
        n_experts=64,
        temperature=0.7,
        mode="train",
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    ):
        super().__init__(d_ff, n_experts, temperature, mode, kernel_initializer, bias_initializer)

    def _gate(self, chosen, mask, rng):
        if self._mode != "train":
            return chosen
        quantized = jax.random.uniform(_train_rng(self.name, rng), (), jnp.float32, -1.0, 1.0) > 0.0
        return jnp.where(quantized, _straight_through(chosen, mask), mask)

    def _chosen_scale(self, mask, selected):
        return None


class SwitchSparseFF(_OneExpertFF):
    """Feed-forward block with switch-style routing: one expert per position, scaled by its router probability.

    n_in=1, n_out=1. `[..., d_model]` -> `[..., d_model]`. As BlockSparseFF,
    but the chosen expert's hidden units are multiplied by its router
    probability (`softmax(x m1)`), through which the router is trained (Switch
    Transformer), instead of a straight-through one-hot. Weights as
    BlockSparseFF's.

    Predict mode: computes only the chosen expert's units; stateless and
    pointwise in time, streams with block_size 1, equal to eval.
    """

    def __init__(
        self,
        d_ff,
        n_experts=64,
        temperature=0.1,
        mode="train",
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    ):
        super().__init__(d_ff, n_experts, temperature, mode, kernel_initializer, bias_initializer)

    def _gate(self, chosen, mask, rng):
        return jax.lax.stop_gradient(chosen) * mask

    def _chosen_scale(self, mask, selected):
        return jnp.take_along_axis(mask, selected[:, None], axis=-1)[:, 0]
