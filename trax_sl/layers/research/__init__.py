"""Research layers: Trax's research modules (efficient_attention, position_encodings, rel_attention,
resampling, rotary_positional_embedding), each under Trax's module name."""

from trax_sl.layers.research import (
    efficient_attention,
    position_encodings,
    rel_attention,
    resampling,
    rotary_positional_embedding,
)
