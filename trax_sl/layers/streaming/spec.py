"""How a layer streams, in one value, and how those values compose.

A `StreamingSpec` holds the five streaming properties of DESIGN §5 and
whether the layer steps at all. Layers describe themselves with one (the
`streaming_spec` property); combinators compose their sublayers' specs with
`serial` and `parallel` instead of restating the algebra, and wrappers
inherit their sublayer's. Everything here is plain Python: no layer, array
or JAX import, so every floor of the package can use it.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Iterable


def ceil_latency(x):
    """Rounds a latency or field up to whole steps; an unbounded one (math.inf) stays unbounded."""
    return x if isinstance(x, float) and math.isinf(x) else math.ceil(x)


@dataclasses.dataclass(frozen=True)
class StreamingSpec:
    """The streaming properties of a layer (DESIGN §5).

    Attributes:
      block_size: input time steps per predict-mode step (blocks are multiples).
      output_ratio: output steps per input step.
      input_latency: invalid input steps to feed after the end to flush the outputs.
      output_latency: leading step-wise outputs to drop to line up with layer-wise ones.
      receptive_field: (past, future) input steps an output sees (math.inf: unbounded).
      supports_step: whether predict mode keeps the streaming contract.
      why_not: when it does not step, why (said by the predict-mode refusal).
      latency_period: the step-wise latency of the input (in input steps)
        must be a multiple of it for the outputs to fall on the layer-wise
        steps (default: output_ratio's denominator, a stride-k window's k).
        Serial delays a sublayer's step-wise input to make it so.
      capacity: the most valid input steps a predict-mode stream can take
        (a KV cache's slots, a position table's rows); None: unbounded. Past
        it, outputs are invalid (masked, zero values), never NaN.
      capacity_source: what sets the capacity, for error messages (e.g.
        "PositionalEncoding max_len=8").
    """

    block_size: int = 1
    output_ratio: fractions.Fraction = fractions.Fraction(1)
    input_latency: int = 0
    output_latency: int = 0
    receptive_field: tuple = (0, 0)
    supports_step: bool = True
    why_not: str = ""
    latency_period: int | None = None
    capacity: int | None = None
    capacity_source: str = ""

    def __post_init__(self):
        if self.latency_period is None:
            period = fractions.Fraction(self.output_ratio).denominator
            object.__setattr__(self, "latency_period", period)

    def not_streaming(self, why: str = "") -> StreamingSpec:
        """The same properties, for a layer that does not step (and why)."""
        return dataclasses.replace(self, supports_step=False, why_not=why or self.why_not)


POINTWISE = StreamingSpec()
"""A layer that maps each time step on its own: block 1, ratio 1, no latency."""

NOT_STREAMING = StreamingSpec(supports_step=False)
"""A layer that needs the whole sequence (a reduction over time, a bidirectional pass)."""


def of(layer) -> StreamingSpec:
    """The spec a layer's public properties give.

    Read through the properties (not `layer.streaming_spec`) so that a user's
    layer which overrides one property (say `output_latency`) is composed as
    it says.
    """
    return StreamingSpec(
        block_size=layer.block_size,
        output_ratio=layer.output_ratio,
        input_latency=layer.input_latency,
        output_latency=layer.output_latency,
        receptive_field=layer.receptive_field,
        supports_step=layer.supports_step,
        latency_period=layer.latency_period,
        capacity=layer.stream_capacity,
        capacity_source=layer._spec().capacity_source,
    )


def _smallest_capacity(candidates: Iterable[tuple[int | None, str]]) -> dict:
    """The capacity fields of the smallest bounded capacity (unbounded when none is bounded)."""
    bounded = [(capacity, source) for capacity, source in candidates if capacity is not None]
    if not bounded:
        return {}
    capacity, source = min(bounded, key=lambda pair: pair[0])
    return {"capacity": capacity, "capacity_source": source}


def _inputs_for_multiple(n: int, ratio: fractions.Fraction) -> int:
    """The smallest count b of input steps for which b * ratio is a multiple of n."""
    needed = n * ratio.denominator
    return needed // math.gcd(needed, ratio.numerator)


def bounded_by(spec: StreamingSpec, sublayer_specs: Iterable[StreamingSpec]) -> StreamingSpec:
    """`spec` with the smallest capacity among its own and its sublayers' (which see its input)."""
    candidates = [(spec.capacity, spec.capacity_source)]
    candidates += [(sub.capacity, sub.capacity_source) for sub in sublayer_specs]
    return dataclasses.replace(spec, **_smallest_capacity(candidates))


def serial(specs: Iterable[StreamingSpec]) -> StreamingSpec:
    """The spec of layers applied one after another.

    Each layer sees the input time scaled by the output ratios of those before
    it: its block size, input latency and receptive field count in its own
    steps and are converted to the input's.
    """
    block, ratio = 1, fractions.Fraction(1)
    input_latency = 0
    output_latency = fractions.Fraction(0)
    past = future = fractions.Fraction(0)
    steps = True
    period = 1
    capacities = []
    for spec in specs:
        if spec.capacity is not None:  # Its capacity counts its own input steps.
            capacities.append((math.floor(spec.capacity / ratio), spec.capacity_source))
        block = math.lcm(block, _inputs_for_multiple(spec.block_size, ratio))
        # An input latency L reaches this layer as L * ratio (Serial aligns the rest).
        period = math.lcm(period, _inputs_for_multiple(spec.latency_period, ratio))
        input_latency += ceil_latency(spec.input_latency / ratio)
        output_latency = output_latency * spec.output_ratio + spec.output_latency
        spec_past, spec_future = spec.receptive_field
        past += spec_past / ratio
        future += spec_future / ratio
        ratio *= spec.output_ratio
        steps = steps and spec.supports_step
    return StreamingSpec(
        block_size=block,
        output_ratio=ratio,
        input_latency=input_latency,
        output_latency=ceil_latency(output_latency),
        receptive_field=(ceil_latency(past), ceil_latency(future)),
        supports_step=steps,
        latency_period=period,
        **_smallest_capacity(capacities),
    )


def parallel(named_specs: Iterable[tuple[str, StreamingSpec]], where: str) -> StreamingSpec:
    """The spec of branches run side by side on the same time axis.

    Raises:
      ValueError: the branches' output ratios disagree, so no step could
        give all of them whole outputs (`where` names the combinator).
    """
    named_specs = list(named_specs)
    if not named_specs:
        return POINTWISE
    specs = [spec for _, spec in named_specs]
    ratios = {spec.output_ratio for spec in specs}
    if len(ratios) > 1:
        raise ValueError(
            f"{where}: branches must agree on output_ratio to stream together, got "
            + ", ".join(f"{name}: {spec.output_ratio}" for name, spec in named_specs)
        )
    return StreamingSpec(
        block_size=math.lcm(*(spec.block_size for spec in specs)),
        output_ratio=ratios.pop(),
        input_latency=max(spec.input_latency for spec in specs),
        output_latency=max(spec.output_latency for spec in specs),
        receptive_field=(
            max(spec.receptive_field[0] for spec in specs),
            max(spec.receptive_field[1] for spec in specs),
        ),
        supports_step=all(spec.supports_step for spec in specs),
        latency_period=math.lcm(*(spec.latency_period for spec in specs)),
        **_smallest_capacity((spec.capacity, spec.capacity_source) for spec in specs),
    )
