"""Research layers: Trax's research.efficient_attention and research.position_encodings."""

from trax_sl.layers.research import efficient_attention, position_encodings
