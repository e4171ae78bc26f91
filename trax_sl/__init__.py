"""trax_sl: Trax-style layers on a data stack that keep the streaming contract."""

__version__ = "0.1.0"

from trax_sl import data, layers, models, optimizers, shapes, sl, supervised
from trax_sl.sequence import MaskedSequence, Sequence

__all__ = [
    "MaskedSequence",
    "Sequence",
    "__version__",
    "data",
    "layers",
    "models",
    "optimizers",
    "shapes",
    "sl",
    "supervised",
]
