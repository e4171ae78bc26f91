"""Trax's `trax.models.research` package path, so that Trax code runs with its imports renamed.

`from trax_sl.models.research import terraformer` and `import trax_sl.models.research.rezero`
give trax_sl's module of that name: the very module `trax_sl.models.terraformer` is (its gin
names, its objects), not a copy.
"""

import sys
import types

from trax_sl.models import (
    bert,
    configurable_transformer,
    hourglass,
    layerdrop_transformer,
    rezero,
    rse,
    terraformer,
    transformer2,
)

for _name, _module in list(globals().items()):
    if isinstance(_module, types.ModuleType) and _module.__name__.startswith("trax_sl.models."):
        sys.modules[f"{__name__}.{_name}"] = _module
