"""Tokenize / Detokenize: byte-level ids, reserved ids, round trips and errors."""

import sys

import numpy as np
import pytest

from trax_sl import data


def test_char_and_byte_ids_are_utf8_bytes():
    (ids,) = data.Tokenize(vocab_type="char")(iter(["hé!"]))
    np.testing.assert_array_equal(ids, [104, 195, 169, 33])
    assert ids.dtype == np.int32
    (ids,) = data.Tokenize(vocab_type="byte", n_reserved_ids=2)(iter([b"h\xc3\xa9!"]))
    np.testing.assert_array_equal(ids, [106, 197, 171, 35])
    assert data.vocab_size("char") == 256
    assert data.vocab_size("byte", n_reserved_ids=2) == 258


@pytest.mark.parametrize("vocab_type", ["char", "byte"])
@pytest.mark.parametrize("n_reserved_ids", [0, 3])
def test_round_trip(vocab_type, n_reserved_ids):
    text = "def f(x):\n    return 'ünï' + x  # ☃\n"
    (ids,) = data.tokenize(iter([text]), vocab_type=vocab_type, n_reserved_ids=n_reserved_ids)
    assert ids.min() >= n_reserved_ids
    assert data.detokenize(ids, vocab_type=vocab_type, n_reserved_ids=n_reserved_ids) == text


def test_detokenize_drops_reserved_ids_and_rejects_ids_past_the_vocabulary():
    assert data.detokenize([0, 105, 106, 1, 0], n_reserved_ids=2) == "gh"
    assert data.detokenize(np.array([104, 105])) == "hi"
    with pytest.raises(ValueError, match="byte ids must be in \\[0, 256\\), got ids from 104 to 300"):
        data.detokenize([104, 300])
    with pytest.raises(ValueError, match="expected a 1-D array of ids, got shape \\(1, 2\\)"):
        data.detokenize([[104, 105]])


def test_tokenize_keys_of_tuples_and_dicts():
    stream = data.Tokenize(keys=[1])(iter([("a", "bc", 7)]))
    a, bc, seven = next(stream)
    assert a == "a" and seven == 7
    np.testing.assert_array_equal(bc, [98, 99])
    out = next(data.Tokenize(keys=["text"])(iter([{"text": "A", "label": 1}])))
    assert out["label"] == 1
    np.testing.assert_array_equal(out["text"], [65])
    with pytest.raises(TypeError, match="Tokenize: expected str or bytes to tokenize, got int"):
        next(data.Tokenize()(iter([("a", 7)])))


def test_detokenize_stream_and_convert_to_unicode():
    ids = next(data.Tokenize()(iter([("ok", "no")])))
    assert next(data.Detokenize(keys=[0])(iter([ids])))[0] == "ok"
    assert next(data.Detokenize()(iter([ids]))) == ("ok", "no")
    assert next(data.ConvertToUnicode(keys=[0])(iter([(b"caf\xc3\xa9\xff", b"x")]))) == ("café", b"x")


def test_vocabulary_errors():
    with pytest.raises(
        ValueError, match="vocab_type must be one of 'char', 'byte', 'sentencepiece', got 'subword'"
    ):
        data.Tokenize(vocab_type="subword")
    with pytest.raises(ValueError, match="vocab_type='sentencepiece' needs vocab_file"):
        data.Tokenize(vocab_type="sentencepiece")


def test_sentencepiece_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # As if it were not installed.
    with pytest.raises(ImportError, match="needs the sentencepiece package.*pip install sentencepiece"):
        data.Tokenize(vocab_type="sentencepiece", vocab_file="en.model", vocab_dir=str(tmp_path))
