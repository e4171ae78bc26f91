"""Names layers, initializers and metrics in gin configs as `trax_sl.layers.<Name>`, as Trax's configs do.

The one place where layers meet gin. `trax_sl.layers` calls `register` once
with its namespace, and every public CamelCase callable in it (layer classes,
layer functions, combinators, initializers, metrics) becomes nameable:
`@trax_sl.layers.Dense`, `trax_sl.layers.CausalAttention.n_heads = 2`. A new
layer exported from `trax_sl.layers` needs nothing more.

Layers and initializers are registered without being replaced: `tl.Dense`
stays the class itself, and bindings reach what configs build. Metrics are
replaced by gin's wrapper, in `tl` and in `trax_sl.layers.metrics`, so that
bindings such as `trax_sl.layers.CategoryCrossEntropy.label_smoothing = 0.1`
also reach the metrics that code builds by calling them (a training loop's
default loss and metrics).
"""

from __future__ import annotations

from types import ModuleType

import gin

MODULE = "trax_sl.layers"

# Classes to subclass or catch, not to configure.
_BASE_CLASSES = frozenset({"Layer", "LayerError", "ReversibleLayer", "EfficientAttentionBase"})


def _is_configurable(name: str, obj) -> bool:
    return name[:1].isupper() and not name.isupper() and callable(obj) and name not in _BASE_CLASSES


def register(namespace: dict, metrics: ModuleType) -> None:
    """Registers the configurables of `namespace` with gin as `trax_sl.layers.<Name>`.

    Args:
        namespace: The globals of `trax_sl.layers`; its metrics are replaced
            by their gin wrappers.
        metrics: The module defining the metrics; its names are replaced too.
    """
    for name, obj in sorted(namespace.items()):
        if not _is_configurable(name, obj):
            continue
        if getattr(metrics, name, None) is obj:
            wrapped = gin.configurable(name, module=MODULE)(obj)
            setattr(metrics, name, wrapped)
            namespace[name] = wrapped
        else:
            gin.external_configurable(obj, name=name, module=MODULE)
