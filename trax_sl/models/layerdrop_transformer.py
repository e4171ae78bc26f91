"""Layer-skipping Transformer language models (Trax's), like https://arxiv.org/abs/1909.11556.

Names, arguments, defaults and stack semantics are Trax's
(`trax.models.research.layerdrop_transformer`): TransformerLM's decoder
blocks, each run or skipped as a uniform draw decides (`Cond(LargerThan(t),
block)`). SkippingTransformerLM and EveryOtherLayerDropTransformerLM draw one
number per call, shared by the blocks (it rides on the stack beside the
activations); LayerDropTransformerLM draws one per block. Trax's
`AssertShape` checks are left out (they compute nothing).

Outside training Trax's draws mostly decide every block one way: all blocks
run (the default eval settings), or a fixed subset (LayerDrop's
'every_other'). There the draw is replaced by a constant that decides them
so without an rng: the largest value the draw takes (the number of layers
for SkippingTransformerLM, 1.0 for the others), which runs a block exactly
when almost every draw would. So 'eval' and 'predict' mode need no rng and
stream: predict mode one token at a time gives the eval-mode logits. Eval
skip fractions strictly between 0 and 1 keep Trax's random eval (an rng is
needed); such a model does not stream. The choices follow the layer's mode,
so `with_mode` twins (a training model's eval twin) choose as the mode says.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl.layers import attention, base, combinators, core, normalization, position, streaming
from trax_sl.models import transformer


def LargerThan(val) -> base.Layer:  # noqa: N802
    """Returns Trax's `LargerThan(val)`: `x` -> `x > val` (bool), elementwise."""
    return base.Fn("LargerThan", lambda x: x > val)


def SkippingTransformerLM(  # noqa: N802
    vocab_size: int,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
    skip_fraction: float = 0.4,
) -> base.Layer:
    """Returns a Skipping Transformer LM: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. As TransformerLM, but in training each call draws
    `n_layers_to_keep` uniformly from [0, n_layers / skip_fraction) (exactly
    n_layers when skip_fraction is 0) and runs decoder block i only when
    `n_layers_to_keep > i`: a prefix of the blocks. In 'eval' and 'predict'
    mode the draw is n_layers (as Trax's), so every block runs. Streams in
    'eval'/'predict' mode with block_size 1 and no latency.

    Predict mode: as TransformerLM's (position counts, each block's KV
    cache of `max_len` steps per row; feed the shifted tokens).
    """
    # The training draw's range; outside training the draw is n_layers (Trax's range [n_layers, n_layers]).
    if skip_fraction == 0.0:
        minimum_layers = maximum_layers = float(n_layers)
    else:
        minimum_layers, maximum_layers = 0.0, float(n_layers) / skip_fraction

    def ConditionedBlock(current_layer_num):  # noqa: N802
        return combinators.Serial(
            combinators.Select([1, 0, 1]),  # n_layers_to_keep embedding n_layers_to_keep
            _ConditionedDecoderBlock(
                float(current_layer_num),
                float(current_layer_num),
                d_model,
                d_ff,
                n_heads,
                dropout,
                max_len,
                mode,
                ff_activation,
            ),  # embedding n_layers_to_keep
        )

    draw = _Draw(minimum_layers, maximum_layers, eval_value=float(n_layers), mode=mode)
    blocks = [ConditionedBlock(i) for i in range(n_layers)]
    return _SharedDrawLM("SkippingTransformerLM", vocab_size, d_model, dropout, max_len, mode, draw, blocks)


def EveryOtherLayerDropTransformerLM(  # noqa: N802
    vocab_size: int,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
    skip_mode: str = "even",
    skip_fraction: float = 0.5,
    eval_skip_fraction: float = 0.0,
) -> base.Layer:
    """Returns an "EveryOther" LayerDrop Transformer LM: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. As TransformerLM, but each call draws u from [0, 1)
    once; the blocks that `skip_mode` names ('even', 'odd', '1half': the
    first half, '2half': the second) all run only when u > skip_fraction
    (`eval_skip_fraction` outside training), the others always. With
    `eval_skip_fraction` 0 (or >= 1) 'eval' and 'predict' mode run all
    blocks (or none of those named) with no rng, and stream with block_size
    1 and no latency.

    Predict mode: as TransformerLM's (position counts, each block's KV
    cache of `max_len` steps per row; feed the shifted tokens).
    """
    skip_mode_funs = {  # Which layers are skipped when skipping.
        "even": lambda num: num % 2 == 0,  # The 0th layer is even.
        "odd": lambda num: num % 2 == 1,
        "1half": lambda num: num < n_layers / 2,
        "2half": lambda num: num >= n_layers / 2,
    }
    if skip_mode not in skip_mode_funs:
        raise ValueError(
            f"EveryOtherLayerDropTransformerLM: skip_mode must be one of {sorted(skip_mode_funs)}, "
            f"got skip_mode={skip_mode!r}"
        )
    skipped = [skip_mode_funs[skip_mode](i) for i in range(n_layers)]
    thresholds = [skip_fraction if s else 0.0 for s in skipped]
    eval_thresholds = [eval_skip_fraction if s else 0.0 for s in skipped]

    def ConditionedBlock(current_layer_num):  # noqa: N802
        return combinators.Serial(
            combinators.Select([1, 0, 1]),  # random embedding random
            _ConditionedDecoderBlock(
                thresholds[current_layer_num],
                eval_thresholds[current_layer_num],
                d_model,
                d_ff,
                n_heads,
                dropout,
                max_len,
                mode,
                ff_activation,
                identity_skip=True,  # Trax's Cond without a false branch.
            ),  # embedding random
        )

    draw = _Draw(0.0, 1.0, eval_value=_fixed_draw(eval_thresholds), mode=mode)
    blocks = [ConditionedBlock(i) for i in range(n_layers)]
    return _SharedDrawLM(
        "EveryOtherLayerDropTransformerLM", vocab_size, d_model, dropout, max_len, mode, draw, blocks
    )


def LayerDropTransformerLM(  # noqa: N802
    vocab_size: int,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
    skip_fraction=0.4,
    eval_skip_fraction="every_other",
) -> base.Layer:
    """Returns a LayerDrop Transformer LM (Fan, Grave, Joulin 2019): token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. As TransformerLM, but block i draws its own u from
    [0, 1) on each call and runs only when u > skip_fraction[i]
    (eval_skip_fraction[i] outside training). `skip_fraction`: one
    probability or one per layer. `eval_skip_fraction`: one probability, one
    per layer, 'same' (skip_fraction's) or 'every_other' (the paper's:
    block i is always skipped when i is a multiple of int(1 /
    skip_fraction[i]), else always run; never skipped where skip_fraction[i]
    is 0). Where every eval fraction is 0 or 1 (the default), 'eval' and
    'predict' mode need no rng and stream with block_size 1 and no latency.

    Predict mode: as TransformerLM's (position counts, the KV caches of
    the blocks that run, `max_len` steps per row; feed the shifted tokens).

    Raises:
        ValueError: a list of skip fractions whose length is not n_layers.
    """
    if not isinstance(skip_fraction, (list, tuple)):
        skip_fraction = [skip_fraction] * n_layers
    if len(skip_fraction) != n_layers:
        raise ValueError(
            f"LayerDropTransformerLM: n_layers ({n_layers}) must be equal to len(skip_fraction) "
            f"({len(skip_fraction)})"
        )
    if eval_skip_fraction == "every_other":
        # 100% skipping for layers i with i % int(1 / skip_fraction) == 0 (the even ones at 0.4); 0% for the rest.
        eval_skip_fraction = [
            (1.0 if i % int(1.0 / fraction) == 0 else 0.0) if fraction != 0 else 0.0
            for i, fraction in enumerate(skip_fraction)
        ]
    elif eval_skip_fraction == "same":
        eval_skip_fraction = skip_fraction
    if not isinstance(eval_skip_fraction, (list, tuple)):
        eval_skip_fraction = [eval_skip_fraction] * n_layers
    if len(eval_skip_fraction) != n_layers:
        raise ValueError(
            f"LayerDropTransformerLM: n_layers ({n_layers}) must be equal to len(eval_skip_fraction) "
            f"({len(eval_skip_fraction)})"
        )

    def ConditionedBlock(current_layer_num):  # noqa: N802
        eval_threshold = eval_skip_fraction[current_layer_num]
        return combinators.Serial(
            _Draw(0.0, 1.0, eval_value=_fixed_draw([eval_threshold]), mode=mode),  # random embedding
            _ConditionedDecoderBlock(
                skip_fraction[current_layer_num],
                eval_threshold,
                d_model,
                d_ff,
                n_heads,
                dropout,
                max_len,
                mode,
                ff_activation,
            ),  # embedding
        )

    return combinators.Serial(
        _embedder(vocab_size, d_model, dropout, max_len, mode),
        [ConditionedBlock(i) for i in range(n_layers)],
        normalization.LayerNorm(),
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="LayerDropTransformerLM",
    )


def _embedder(vocab_size, d_model, dropout, max_len, mode):
    """TransformerLM's first layers: ShiftRight, then Trax's `embedder` (Embedding, Dropout, PositionalEncoding)."""
    return [
        attention.ShiftRight(mode=mode),
        core.Embedding(vocab_size, d_model),
        core.Dropout(rate=dropout, mode=mode),
        position.PositionalEncoding(max_len=max_len, mode=mode),
    ]


def _SharedDrawLM(name, vocab_size, d_model, dropout, max_len, mode, draw, blocks) -> base.Layer:  # noqa: N802
    """The LM whose `blocks` share one `draw`: `_embedder`, the draw (under the activations), the blocks, head.

    The blocks take `embedding draw` and give it back; the draw is dropped
    before the LayerNorm and Dense(vocab_size).
    """
    return combinators.Serial(
        _embedder(vocab_size, d_model, dropout, max_len, mode),
        draw,  # draw embedding
        combinators.Swap(),  # embedding draw
        blocks,
        combinators.Select([0], n_in=2),  # embedding
        normalization.LayerNorm(),
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name=name,
    )


def _ConditionedDecoderBlock(  # noqa: N802
    threshold,
    eval_threshold,
    d_model,
    d_ff,
    n_heads,
    dropout,
    max_len,
    mode,
    ff_activation,
    identity_skip=False,
) -> base.Layer:
    """Trax's `Cond(LargerThan(threshold), Serial(decoder block), skip)`: `u x` -> the block's `x` if u > t.

    The decoder block is TransformerLM's, without shared dropout axes (Trax
    passes []); `eval_threshold` replaces `threshold` outside training. The
    skip branch is an empty Serial, or with `identity_skip` `Cond`'s identity
    (Trax's Cond without a false branch).
    """
    block = transformer._DecoderBlock(d_model, d_ff, n_heads, dropout, None, mode, ff_activation, max_len)
    false = None if identity_skip else combinators.Serial()
    return _Cond(_LargerThan(threshold, eval_threshold, mode), combinators.Serial(block), false)


def _fixed_draw(eval_thresholds) -> float | None:
    """The constant that stands for a [0, 1) draw outside training, or None where the draw decides.

    A draw u decides `u > t` the same way almost surely when t <= 0 (run) or
    t >= 1 (skip); 1.0 decides every such threshold so.
    """
    if all(t <= 0.0 or t >= 1.0 for t in eval_thresholds):
        return 1.0
    return None


class _Draw(core.RandomUniform):
    """Trax's `RandomUniform(min_val, max_val, sync=True)`; outside training `eval_value` when given.

    n_in=0, n_out=1: `()` -> `f32[]`. In 'train' mode a fresh draw per call
    (needs an rng). In 'eval' and 'predict' mode `eval_value`, with no rng,
    so the blocks choose the same at every step; with `eval_value=None` a
    draw as in training, which does not stream.
    """

    def __init__(self, min_val: float, max_val: float, eval_value: float | None, mode: str):
        super().__init__(min_val, max_val, sync=True)
        self._eval_value = eval_value
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        if self._mode != "train" and self._eval_value is not None:
            return streaming.POINTWISE  # A constant: no time axis, the same at every step.
        return streaming.NOT_STREAMING.not_streaming("draws a new random number on every call")

    def forward(self, inputs, weights, state, rng):
        if self._mode != "train" and self._eval_value is not None:
            return jnp.asarray(self._eval_value, self._dtype), state
        return super().forward(inputs, weights, state, rng)


class _LargerThan(base.Layer):
    """Trax's `LargerThan(threshold)` in training, `LargerThan(eval_threshold)` in 'eval' and 'predict' mode.

    n_in=1, n_out=1: `x` -> `x > threshold` (bool). Stateless; no time axis.
    """

    def __init__(self, threshold: float, eval_threshold: float, mode: str):
        super().__init__(name="LargerThan")
        self._threshold = threshold
        self._eval_threshold = eval_threshold
        self._mode = mode

    def forward(self, x, weights, state, rng):
        threshold = self._threshold if self._mode == "train" else self._eval_threshold
        return x > threshold, state


class _Cond(combinators.Cond):
    """Trax's `Cond(cond, true, false)`, which streams when its choice is the same at every step.

    Stack: `c x` -> `true(x)` if cond(c) else `false(x)`; the other branch's
    state is kept. In the models here `c` is a draw that is constant outside
    training (`_Draw`), so in predict mode each step takes the branch that
    the whole sequence takes and the chosen block's caches fill as
    layer-wise. Streams as its branches do (a branch with a KV cache bounds
    the stream's capacity).
    """

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        _, true, false = self.sublayers
        return streaming.spec.parallel(
            [("true", streaming.spec.of(true)), ("false", streaming.spec.of(false))], self.name
        )
