"""Trax's `trax.models.research` package path, so that Trax code runs with its imports renamed.

`from trax_sl.models.research import terraformer` and `import trax_sl.models.research.rezero`
give trax_sl's module of that name: the very module `trax_sl.models.terraformer` is (its gin
names, its objects), not a copy.
"""

import sys

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

for _module in (
    bert,
    configurable_transformer,
    hourglass,
    layerdrop_transformer,
    rezero,
    rse,
    terraformer,
    transformer2,
):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[-1]}"] = _module
