"""Contract fuzzing: verify_contract over every declared option space, alone and composed.

One example per layer is not coverage (self-attention with rotary
query/key networks broke the contract unseen), so each streamable layer of
`registry.py` declares its option space, and this file draws from it:

- single layers with drawn options, input dtype, depth, batch size, time,
  lengths (masks) and step-wise chunkings;
- random type-correct compositions of drawn layers: Serial, Residual,
  Branch and Parallel (with a merge), Repeat, nested 1 to 3 deep.

The budget is the Hypothesis profile's (tests/conftest.py): 'ci' draws the
same few examples every run; `HYPOTHESIS_PROFILE=long` hunts at random.
A failure found here is a bug: pin it as a regression test next to the
layer's other tests (tests/layers/test_*.py) with the drawn configuration.
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import trax_sl.layers as tl
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype

from .registry import BF16, F32, I32, REGISTRY

FUZZED = sorted(name for name, entry in REGISTRY.items() if entry.space is not None)
COMPOSABLE = sorted(name for name in FUZZED if REGISTRY[name].space.composes)
MAX_TIME = 16
# Compositions have the most to find: ten times the single-layer budget.
COMPOSITION_SETTINGS = settings(max_examples=10 * settings.default.max_examples)


def tolerance(dtype) -> dict:
    """verify_contract tolerances for an input dtype: bfloat16 rounds to 8 bits of mantissa."""
    return {"atol": 2e-2, "rtol": 2e-2} if dtype == BF16 else {"atol": 1e-5, "rtol": 1e-5}


@st.composite
def runs(draw, block_size: int):
    """verify_contract's run: input time, seed (weights, lengths), masks and step-wise chunkings."""
    time = block_size * draw(st.integers(1, MAX_TIME // block_size), label="time in blocks")
    return time, {
        "seed": draw(st.integers(0, 2**16), label="seed"),
        "random_lengths": draw(st.sampled_from((True, False)), label="random_lengths"),
        "chunkings": draw(
            st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=3), min_size=1, max_size=2),
            label="chunkings (in blocks)",
        ),
    }


def check(build: Callable[[str], tl.Layer], signature_of: Callable[[int], object], data, **contract):
    """verify_contract on `build` with a drawn batch size, time and run (time a multiple of block_size)."""
    layer = build("predict")
    assert layer.supports_step, f"{layer.name} does not stream in a configuration declared to stream"
    block_size = layer.block_size
    assume(block_size <= MAX_TIME)
    time, run = data.draw(runs(block_size))
    test_utils.verify_contract(build, signature_of(time), **run, **contract)


# --- Single layers -------------------------------------------------------------------


@pytest.mark.parametrize("name", FUZZED)
@given(data=st.data())
def test_layer_keeps_the_contract_over_its_options(name, data):
    space = REGISTRY[name].space
    options = data.draw(space.options, label=f"{name} options")
    dtype = data.draw(st.sampled_from(space.dtypes), label="dtype")
    depth = data.draw(st.sampled_from(space.depths), label="depth")
    batch = data.draw(st.integers(1, 3), label="batch")
    check(
        lambda mode: space.build(mode, options),
        lambda time: space.signature(options, batch, time, depth, dtype),
        data,
        **tolerance(dtype),
        **space.contract(options),
    )


# --- Compositions ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Piece:
    """A layer of a composition, built per mode: `[batch, time, depth]` -> `[batch, time * ratio, depth]`."""

    build: Callable[[str], tl.Layer]
    text: str
    ratio: fractions.Fraction

    def __repr__(self) -> str:
        return self.text


def serial(depth: int, *pieces: Piece) -> Piece:
    """The pieces in series."""
    if len(pieces) == 1:
        return pieces[0]
    return Piece(
        lambda mode: tl.Serial(*(p.build(mode) for p in pieces)),
        f"Serial({', '.join(p.text for p in pieces)})",
        math.prod((p.ratio for p in pieces), start=fractions.Fraction(1)),
    )


def dense(depth: int) -> Piece:
    return Piece(lambda mode: tl.Dense(depth), f"Dense({depth})", fractions.Fraction(1))


def _fitted_to_depth(layer: tl.Layer, depth: int) -> list[Piece]:
    """Layers that bring `layer`'s output back to one `[batch, time, depth]` float item."""
    fit = []
    if layer.n_out > 1:  # E.g. an LSTM's final state: dropped.
        fit.append(
            Piece(lambda mode, n=layer.n_out: tl.Select([0], n_in=n), "Select([0])", fractions.Fraction(1))
        )
    output = layer.output_signature(ShapeDtype((1, layer.block_size, depth), F32))
    output = output[0] if isinstance(output, tuple) else output
    shape = output.shape
    if len(shape) > 3:
        fit.append(Piece(lambda mode: tl.Flatten(n_axes_to_keep=2), "Flatten(2)", fractions.Fraction(1)))
    if math.prod(shape[2:]) != depth:
        fit.append(dense(depth))
    return fit


@st.composite
def registered_pieces(draw, depth: int, ratio_one: bool):
    """A drawn layer of the registry on `[batch, time, depth]` floats, its output fitted back to depth."""
    names = [n for n in COMPOSABLE if depth in REGISTRY[n].space.depths]
    name = draw(st.sampled_from(names))
    space = REGISTRY[name].space
    options = draw(space.options.filter(lambda o: len(space.signature(o, 1, 1, depth, F32).shape) == 3))
    layer = space.build("eval", options)
    # Halving time at most once per piece keeps nested block sizes within MAX_TIME.
    allowed = (1,) if ratio_one else (1, fractions.Fraction(1, 2))
    assume(layer.output_ratio in allowed)
    # Pieces give time * output_ratio steps layer-wise; Delay and Lookahead change the length (as in
    # SequenceLayers), so a Residual or a merge could not pair them: only their length-keeping options.
    time = 4 * layer.block_size
    output = layer.output_signature(space.signature(options, 1, time, depth, F32))
    output = output[0] if isinstance(output, tuple) else output
    assume(output.shape[1] == time * layer.output_ratio)
    shown = {k: v for k, v in options.items() if k != "rank"}
    piece = Piece(
        lambda mode: space.build(mode, options),
        f"{name}(**{shown!r})",
        layer.output_ratio,
    )
    return serial(depth, piece, *_fitted_to_depth(layer, depth))


def downsampled(piece: Piece, ratio: fractions.Fraction, depth: int, kind: int) -> Piece:
    """`piece` followed by a stride-k window, so that its ratio becomes `ratio`."""
    k = piece.ratio / ratio
    assert k.denominator == 1
    k = int(k)
    if k == 1:
        return piece
    samplers = (
        (
            lambda mode: tl.AvgPool((k,), (k,), padding="causal", mode=mode),
            f"AvgPool(({k},), ({k},), 'causal')",
        ),
        (lambda mode: tl.MaxPool((k,), (k,), mode=mode), f"MaxPool(({k},), ({k},))"),
        (lambda mode: tl.Conv1d(depth, k, stride=k, mode=mode), f"Conv1d({depth}, {k}, stride={k})"),
    )
    build, text = samplers[kind % len(samplers)]
    return serial(depth, piece, Piece(build, text, fractions.Fraction(1, k)))


def aligned(pieces, depth: int, draw) -> list[Piece]:
    """Branches brought to one output ratio by downsampling the faster ones."""
    target = fractions.Fraction(1, math.lcm(*(p.ratio.denominator for p in pieces)))
    return [downsampled(p, target, depth, draw(st.integers(0, 2))) for p in pieces]


MERGES = {
    "Add": (lambda depth: lambda mode: tl.Add(), "Add()"),
    "Multiply": (lambda depth: lambda mode: tl.Multiply(), "Multiply()"),
    "Concatenate": (
        lambda depth: lambda mode: tl.Serial(tl.Concatenate(), tl.Dense(depth)),
        "Concatenate(), Dense",
    ),
}


@st.composite
def pieces(draw, depth: int, nesting: int, ratio_one: bool = False):
    """A composition `nesting` combinators deep (0: one registered layer)."""
    if nesting == 0:
        return draw(registered_pieces(depth, ratio_one))

    def child(ratio_one=ratio_one, deepest=False):
        level = nesting - 1 if deepest else draw(st.integers(0, nesting - 1))
        return draw(pieces(depth, level, ratio_one))

    kinds = ["Serial", "Residual", "Branch", "Parallel", "Repeat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "Serial":
        return serial(depth, child(deepest=True), *(child() for _ in range(draw(st.integers(0, 2)))))
    if kind == "Residual":
        body = child(ratio_one=True, deepest=True)
        shortcut = draw(st.one_of(st.none(), pieces(depth, 0, ratio_one=True)))
        return Piece(
            lambda mode: tl.Residual(body.build(mode), shortcut=shortcut and shortcut.build(mode)),
            f"Residual({body.text}, shortcut={shortcut!r})",
            fractions.Fraction(1),
        )
    if kind == "Repeat":
        body = draw(pieces(depth, nesting - 1, ratio_one=True))
        n = draw(st.integers(1, 3))
        return Piece(
            lambda mode: tl.Repeat(body.build(mode), n), f"Repeat({body.text}, {n})", fractions.Fraction(1)
        )
    # Branch and Parallel: two or three branches, None (identity) among them, merged into one.
    branches = [child(deepest=True)] + [
        child() if draw(st.booleans()) else None for _ in range(draw(st.integers(1, 2)))
    ]
    identity = Piece(lambda mode: tl.Serial(), "None", fractions.Fraction(1))
    branches = aligned([identity if b is None else b for b in branches], depth, draw)
    merge_name = draw(st.sampled_from(sorted(MERGES)))
    merge_build, merge_text = MERGES[merge_name]
    merge = merge_build(depth)
    n = len(branches)

    def build(mode):
        layers = [b.build(mode) for b in branches]
        if kind == "Branch":
            combined = tl.Branch(*layers)
        else:
            combined = tl.Serial(tl.Select([0] * n), tl.Parallel(*layers))
        merges = [merge(mode) for _ in range(n - 1)]
        return tl.Serial(combined, *merges)

    text = f"{kind}({', '.join(b.text for b in branches)}) >> {merge_text} x{n - 1}"
    return Piece(build, text, branches[0].ratio)


@COMPOSITION_SETTINGS
@given(data=st.data())
def test_compositions_keep_the_contract(data):
    depth = data.draw(st.sampled_from((2, 4)), label="depth")
    nesting = data.draw(st.integers(1, 3), label="nesting")
    body = data.draw(pieces(depth, nesting), label="composition")
    embed = data.draw(st.booleans(), label="Embedding first (int ids)")
    batch = data.draw(st.integers(1, 3), label="batch")
    if embed:
        model = lambda mode: tl.Serial(tl.Embedding(8, depth), body.build(mode))
        signature_of = lambda time: ShapeDtype((batch, time), I32)
    else:
        model = body.build
        signature_of = lambda time: ShapeDtype((batch, time, depth), F32)
    check(model, signature_of, data, atol=1e-4, rtol=1e-4)


def test_the_fuzzer_draws_every_streamable_layer_the_issue_names():
    """The option spaces cover the layers whose configurations break unseen."""
    required = {
        "Conv1d", "CausalConv", "DepthwiseConv1D", "Conv2D", "MaxPool", "AvgPool", "SumPool",
        "Frame", "STFT", "Delay", "Lookahead", "DotProductSelfAttention",
        "LocalDotProductSelfAttention", "LSTM", "GRU", "LayerNorm", "RMSNorm", "GroupNorm",
        "BatchNorm", "AddTimingSignal", "ApplyRotaryPositionalEncoding", "Dense", "Embedding",
        "Relu", "Dropout",
    }  # fmt: skip
    assert not sorted(required - set(FUZZED))
    assert all(REGISTRY[name].streams for name in FUZZED)
