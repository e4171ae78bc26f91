"""Trax's research.sparsity module: sparse and factored dense layers, their attention, Favor, sparse feed-forward.

The layers live in `sparse_dense`, `sparse_attention`, `favor` and `sparse_ff`; this module gathers
them under the name Trax code imports (`from trax.layers.research import sparsity`).
"""

from trax_sl.layers.research.favor import *
from trax_sl.layers.research.sparse_attention import *
from trax_sl.layers.research.sparse_dense import *
from trax_sl.layers.research.sparse_ff import *
