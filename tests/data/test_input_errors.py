"""What a user sees when the input pipeline cannot go on: the exact messages (issue 15)."""

import itertools

import gin
import numpy as np
import pytest

from trax_sl import data


def _example(length):
    return np.zeros(length, np.int32), np.zeros(length, np.int32)


# --- FilterByLength on a source it rejects whole -----------------------------------------------------


def test_filter_by_length_that_rejects_a_repeating_source_raises_instead_of_hanging():
    source = itertools.cycle([_example(50), (np.zeros(120), np.zeros(3)), _example(57)])
    kept = data.FilterByLength(max_length=10, max_consecutive_rejections=1000)(source)
    with pytest.raises(ValueError) as info:
        next(kept)
    assert str(info.value) == (
        "FilterByLength(max_length=10, min_length=0): rejected 1000 examples in a row, with lengths "
        "from 50 to 120 (the first: 50, 120, 57, 50, 120); the length is the largest size on axis 0 of "
        "the first two features. Widen max_length/min_length, set length_keys and length_axis to the "
        "sequence features, or raise max_consecutive_rejections if long runs of rejected examples "
        "are expected"
    )


def test_filter_by_length_counts_rejections_in_a_row_only():
    # 3 rejected, 1 kept, 3 rejected, ...: never 4 in a row, so a bound of 4 never trips.
    source = itertools.cycle([_example(9)] * 3 + [_example(2)])
    kept = data.FilterByLength(max_length=5, max_consecutive_rejections=4)(source)
    assert [len(x) for x, _ in itertools.islice(kept, 100)] == [2] * 100
    too_short = data.FilterByLength(None, min_length=8, length_keys=[1], max_consecutive_rejections=3)
    with pytest.raises(
        ValueError,
        match=r"^FilterByLength\(max_length=None, min_length=8\): rejected 3 "
        r"examples in a row, with lengths from 2 to 2 \(the first: 2, 2, 2\); the length is "
        r"the largest size on axis 0 of features \[1\]\.",
    ):
        next(too_short(itertools.cycle([_example(2)])))


def test_filter_by_length_default_bound_and_its_checks():
    # A long but finite source, so that a filter without the bound fails here instead of hanging.
    source = itertools.islice(itertools.cycle([_example(4)]), 100_001)
    with pytest.raises(ValueError, match="rejected 100000 examples in a row"):
        next(data.FilterByLength(max_length=3)(source))
    with pytest.raises(
        ValueError,
        match="max_consecutive_rejections must be an integer >= 1, got max_consecutive_rejections=0",
    ):
        data.FilterByLength(max_length=3, max_consecutive_rejections=0)


def test_filter_by_length_bound_is_gin_configurable():
    gin.parse_config("trax_sl.data.FilterByLength.max_consecutive_rejections = 2")
    try:
        kept = data.FilterByLength(max_length=3)(itertools.cycle([_example(4)]))
        with pytest.raises(ValueError, match="rejected 2 examples in a row"):
            next(kept)
    finally:
        gin.clear_config()


# --- Text that UTF-8 cannot encode ---------------------------------------------------------------------


@pytest.mark.parametrize("vocab_type", ["char", "byte"])
def test_tokenize_a_lone_surrogate_names_the_text_and_position(vocab_type):
    with pytest.raises(ValueError) as info:
        list(data.Tokenize(vocab_type=vocab_type)(iter(["abc\ud800def"])))
    assert str(info.value) == (
        "Tokenize: cannot encode the text 'abc\\ud800def' (7 characters) as UTF-8: it holds '\\ud800' at "
        "position 3, a lone surrogate (half of a UTF-16 pair, not a character), which UTF-8 cannot "
        "encode. Clean the text first, e.g. text.encode('utf-8', errors='replace').decode('utf-8') "
        "makes each such character '?'"
    )
    assert isinstance(info.value.__cause__, UnicodeEncodeError)


def test_tokenize_a_lone_surrogate_in_long_text_shows_the_place_around_it():
    text = "x" * 100 + "\udc80" + "y" * 100
    with pytest.raises(ValueError) as info:
        list(data.tokenize(iter([(text, "fine")]), keys=[0]))
    assert str(info.value).startswith(
        f"Tokenize: cannot encode the text '...{'x' * 20}\\udc80{'y' * 19}...' (201 characters) as UTF-8: "
        "it holds '\\udc80' at position 100, a lone surrogate"
    )


def test_tokenize_cleaned_text_as_the_message_suggests():
    cleaned = "abc\ud800def".encode("utf-8", errors="replace").decode("utf-8")
    (ids,) = data.Tokenize()(iter([cleaned]))
    assert data.detokenize(ids) == "abc?def"
