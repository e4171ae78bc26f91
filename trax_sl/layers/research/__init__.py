"""Research layers: Trax's research modules, each under Trax's module name (efficient_attention,
position_encodings, rel_attention, resampling, rotary_positional_embedding, sparsity); `sparsity`
gathers `sparse_dense`, `sparse_attention`, `favor` and `sparse_ff`."""

from trax_sl.layers.research import (
    efficient_attention,
    favor,
    position_encodings,
    rel_attention,
    resampling,
    rotary_positional_embedding,
    sparse_attention,
    sparse_dense,
    sparse_ff,
    sparsity,
)
