"""Policy and value networks of Trax's RL agents: Policy, Value, PolicyAndValue and Quality.

Names, arguments, defaults and layer trees are Trax's (`trax.models.rl`).
Each attaches a Dense head to an optional `body` and `normalizer`, given as
functions of `mode` that return a layer or a list of layers (e.g.
`functools.partial(atari_cnn.AtariCnnBody, ...)`). With `batch_axes=k`, the
normalizer and the body run on inputs whose leading axes (all but the last
k) are folded into one batch axis, then restored (`BatchLeadingAxes`).
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl.layers import base, combinators, core, initializers, normalization
from trax_sl.models import mlp


def _NoLayers(mode):  # noqa: N802
    """The default body and normalizer: no layers."""
    del mode
    return []


def _Batch(x, batch_axes):  # noqa: N802
    """`x` on inputs whose leading axes (all but the last `batch_axes`) are folded into the batch."""
    if batch_axes is None:
        return x
    if isinstance(x, list) and not x:
        return []
    layer = x if isinstance(x, base.Layer) else combinators.Serial(x)
    return combinators.BatchLeadingAxes(layer, n_last_axes_to_keep=batch_axes)


def _head_kwargs(head_init_range):
    """The head's Dense arguments: uniform kernels in [-head_init_range, head_init_range) if given."""
    if head_init_range is None:
        return {}
    return {"kernel_initializer": initializers.RandomUniformInitializer(lim=head_init_range)}


def Policy(  # noqa: N802
    policy_distribution,
    body=None,
    normalizer=None,
    head_init_range=None,
    batch_axes=None,
    mode="train",
) -> base.Layer:
    """Returns a policy network: observations `[..., d]` -> distribution inputs `[..., n_inputs]`.

    n_in=1, n_out=1. `normalizer(mode=mode)`, `body(mode=mode)` (each
    batched over leading axes with `batch_axes`), then
    Dense(policy_distribution.n_inputs) (kernels uniform in +-head_init_range
    when given). `policy_distribution` is anything with an `n_inputs`
    attribute, e.g. a Trax RL distribution.

    Predict mode: streams where the normalizer and body do, without batch_axes
    (BatchLeadingAxes does not stream); the head is pointwise.
    """
    body = _NoLayers if body is None else body
    normalizer = _NoLayers if normalizer is None else normalizer
    return combinators.Serial(
        _Batch(normalizer(mode=mode), batch_axes),
        _Batch(body(mode=mode), batch_axes),
        core.Dense(policy_distribution.n_inputs, **_head_kwargs(head_init_range)),
        name="Policy",
    )


def Value(  # noqa: N802
    body=None,
    normalizer=None,
    inject_actions=False,
    inject_actions_n_layers=1,
    inject_actions_dim=64,
    batch_axes=None,
    mode="train",
    is_discrete=False,
    vocab_size=2,
    multiplicative_action_injection=False,
    head_init_range=None,
) -> base.Layer:
    """Returns a value network: observations `[..., d]` -> values `[..., 1]`.

    n_in=1, n_out=1 (n_in=2 with `inject_actions`: observations, then
    actions). `normalizer(mode=mode)` and `body(mode=mode)` (batched with
    `batch_axes`), then, with `inject_actions`, the action injector, then
    Dense(1) (kernels uniform in +-head_init_range when given).

    The action injector: Dense(inject_actions_dim) on the body's output and
    an action encoder on the actions (Embedding(vocab_size,
    inject_actions_dim) of integer actions if `is_discrete`, else
    Dense(inject_actions_dim)), combined by adding them, or with
    `multiplicative_action_injection` by `x * tanh(a)` and a LayerNorm;
    then an MLP of `inject_actions_n_layers` layers of width
    `inject_actions_dim`, each followed by Relu.

    Predict mode: streams where the normalizer and body do, without batch_axes
    (BatchLeadingAxes does not stream); the rest is pointwise.
    """
    body = _NoLayers if body is None else body
    normalizer = _NoLayers if normalizer is None else normalizer

    def ActionInjector(mode):  # noqa: N802
        if not inject_actions:
            return []
        if is_discrete:
            action_encoder = core.Embedding(vocab_size, inject_actions_dim)
        else:
            action_encoder = core.Dense(inject_actions_dim)
        encoders = combinators.Parallel(core.Dense(inject_actions_dim), action_encoder)
        if multiplicative_action_injection:
            action_injector = combinators.Serial(
                base.Fn("TanhMulGate", lambda x, a: x * jnp.tanh(a)),
                normalization.LayerNorm(),  # The product has a smaller variance.
            )
        else:
            action_injector = combinators.Add()
        return combinators.Serial(
            # Stack: body output, actions.
            encoders,
            action_injector,
            mlp.MLP(
                layer_widths=(inject_actions_dim,) * inject_actions_n_layers,
                out_activation=True,
                flatten=False,
                mode=mode,
            ),
        )

    return combinators.Serial(
        _Batch(normalizer(mode=mode), batch_axes),
        _Batch(body(mode=mode), batch_axes),
        ActionInjector(mode=mode),
        core.Dense(1, **_head_kwargs(head_init_range)),
        name="Value",
    )


def PolicyAndValue(  # noqa: N802
    policy_distribution,
    body=None,
    policy_top=Policy,
    value_top=Value,
    normalizer=None,
    joint=True,
    mode="train",
) -> base.Layer:
    """Returns policy and value heads on one body: observations -> (distribution inputs, values).

    n_in=1, n_out=2. `normalizer(mode=mode)`, then with `joint` one
    `body(mode=mode)` and `Branch(policy_top, value_top)`; without, the
    policy and the value each get their own body (separate weights):
    `Branch(Serial(body, policy_top), Serial(body, value_top))`. The tops
    are built as `policy_top(policy_distribution=..., body=None,
    normalizer=None, mode=mode)` and `value_top(body=None, normalizer=None,
    mode=mode)`.

    Predict mode: streams where the normalizer and body do (the heads are pointwise).
    """
    normalizer = _NoLayers if normalizer is None else normalizer
    body = _NoLayers if body is None else body
    common_kwargs = {"body": None, "normalizer": None, "mode": mode}
    policy_top = policy_top(policy_distribution=policy_distribution, **common_kwargs)
    value_top = value_top(**common_kwargs)
    layers = [normalizer(mode=mode)]
    if joint:
        layers += [body(mode=mode), combinators.Branch(policy_top, value_top)]
    else:
        layers.append(
            combinators.Branch(
                combinators.Serial(body(mode=mode), policy_top),
                combinators.Serial(body(mode=mode), value_top),
            )
        )
    return combinators.Serial(layers, name="PolicyAndValue")


def Quality(  # noqa: N802
    body=None,
    normalizer=None,
    batch_axes=None,
    mode="train",
    n_actions=2,
    head_init_range=None,
) -> base.Layer:
    """Returns a Q network: observations `[..., d]` -> action values `[..., n_actions]`.

    n_in=1, n_out=1. `normalizer(mode=mode)` and `body(mode=mode)` (batched
    with `batch_axes`), then Dense(n_actions) (kernels uniform in
    +-head_init_range when given).

    Predict mode: streams where the normalizer and body do, without batch_axes
    (BatchLeadingAxes does not stream); the head is pointwise.
    """
    body = _NoLayers if body is None else body
    normalizer = _NoLayers if normalizer is None else normalizer
    return combinators.Serial(
        _Batch(normalizer(mode=mode), batch_axes),
        _Batch(body(mode=mode), batch_axes),
        core.Dense(n_actions, **_head_kwargs(head_init_range)),
        name="Quality",
    )
