"""Multilayer perceptron (Trax's MLP)."""

from __future__ import annotations

from trax_sl.layers import activation_fns, base, combinators, core


def MLP(  # noqa: N802
    n_hidden_layers: int = 2,
    d_hidden: int = 512,
    activation_fn=activation_fns.Relu,
    n_output_classes: int = 10,
    flatten: bool = True,
    mode: str = "train",
    *,
    layer_widths=None,
    out_activation: bool = False,
) -> base.Layer:
    """Returns a multilayer perceptron: `[batch, ...]` -> `[batch, n_output_classes]`.

    n_in=1, n_out=1. Flatten (with `flatten`: all axes after the batch axis
    merged into one), then `n_hidden_layers` times Dense(d_hidden) and
    `activation_fn()`, then Dense(n_output_classes): Trax's classic
    signature. With `layer_widths` (Trax 1.4's signature, keyword only) the
    network is instead one Dense per width with `activation_fn()` between
    them (and after the last one too with `out_activation`).

    `mode` is ignored (the network does the same in every mode). With
    `flatten=True` a Sequence's time axis is merged into the features.

    Predict mode: stateless. With `flatten=False` it acts on the last axis,
    pointwise in time, and streams with block_size 1 on `[batch, time, d]`;
    with `flatten=True` it mixes time steps and does not stream.
    """
    del mode
    if layer_widths is not None:
        widths = tuple(layer_widths)
        if not widths:
            raise ValueError("MLP: layer_widths must name at least one layer, got ()")
        layers = []
        for width in widths:
            layers += [core.Dense(width), activation_fn()]
        if not out_activation:
            layers.pop()  # No activation after the last layer.
    else:
        if isinstance(n_hidden_layers, bool) or not isinstance(n_hidden_layers, int) or n_hidden_layers < 0:
            raise ValueError(f"MLP: n_hidden_layers must be an integer >= 0, got {n_hidden_layers!r}")
        layers = [[core.Dense(d_hidden), activation_fn()] for _ in range(n_hidden_layers)]
        layers.append(core.Dense(n_output_classes))
    return combinators.Serial([core.Flatten()] if flatten else [], layers, name="MLP")
