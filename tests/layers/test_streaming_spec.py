"""The streaming algebra (layers/streaming/spec.py) on hand-checked cases."""

import fractions

import pytest

from trax_sl.layers import streaming

HALF = fractions.Fraction(1, 2)
STRIDE_2 = streaming.StreamingSpec(block_size=2, output_ratio=HALF)
UPSAMPLE_2 = streaming.StreamingSpec(output_ratio=fractions.Fraction(2))
LOOKAHEAD_1 = streaming.StreamingSpec(output_latency=1, receptive_field=(0, 1))


def test_a_strided_window_needs_its_stride_as_latency_period():
    assert STRIDE_2.latency_period == 2
    assert streaming.StreamingSpec(output_ratio=fractions.Fraction(2, 3)).latency_period == 3
    assert UPSAMPLE_2.latency_period == 1
    assert streaming.POINTWISE.latency_period == 1


@pytest.mark.parametrize(
    "specs, block_size, period",
    [
        ([STRIDE_2, STRIDE_2], 4, 4),  # Two halvings: latencies must be multiples of 4 input steps.
        ([UPSAMPLE_2, STRIDE_2], 1, 1),  # Doubled first, any latency reaches the stride even.
        ([STRIDE_2, UPSAMPLE_2], 2, 2),
        ([LOOKAHEAD_1, STRIDE_2], 2, 2),  # Serial, not the spec, inserts the Delay for the lookahead.
        ([LOOKAHEAD_1, LOOKAHEAD_1], 1, 1),
    ],
)
def test_serial_composes_block_size_and_latency_period(specs, block_size, period):
    spec = streaming.serial(specs)
    assert (spec.block_size, spec.latency_period) == (block_size, period)


def test_parallel_needs_every_branch_in_phase():
    spec = streaming.parallel(
        [("a", STRIDE_2), ("b", streaming.serial([STRIDE_2, STRIDE_2, UPSAMPLE_2]))], where="Branch"
    )
    assert spec.latency_period == 4
    assert spec.output_ratio == HALF
