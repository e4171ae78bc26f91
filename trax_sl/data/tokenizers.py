"""Tokenize and Detokenize: text to integer ids and back, with byte and sentencepiece vocabularies.

Vocabulary types (Trax's `vocab_type`):

- `'char'`: Trax's character vocabulary, which is byte level: a string's
  UTF-8 bytes are its ids (256 of them). Kept so that Trax configs give the
  same ids.
- `'byte'`: the same ids under their plain name. Both also take `bytes`
  (as tfds text features come) without decoding them.
- `'sentencepiece'`: the model at `vocab_dir/vocab_file`; needs the optional
  `sentencepiece` package.

`n_reserved_ids` shifts every id up, keeping 0..n_reserved_ids-1 free (for
padding, EOS); detokenizing drops ids in that range.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator

import gin
import numpy as np

from trax_sl.data.steps import Step, map_step

_VOCAB_TYPES = ("char", "byte", "sentencepiece")


class _ByteVocab:
    """UTF-8 bytes as ids."""

    vocab_size = 256

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text if isinstance(text, bytes) else _utf8(text)
        return np.frombuffer(data, np.uint8).astype(np.int32)

    def decode(self, ids: np.ndarray) -> str:
        if ids.size and (ids.min() < 0 or ids.max() >= 256):
            raise ValueError(
                f"detokenize: byte ids must be in [0, 256), got ids from {ids.min()} to {ids.max()}"
            )
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


class _SentencePieceVocab:
    """A sentencepiece model."""

    def __init__(self, path: str):
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError(
                "vocab_type='sentencepiece' needs the sentencepiece package, which is not installed: "
                "pip install sentencepiece (or use vocab_type='char' or 'byte')"
            ) from e
        if not os.path.exists(path):
            raise FileNotFoundError(f"sentencepiece: no model file at {path!r}")
        self._processor = sentencepiece.SentencePieceProcessor(model_file=path)
        self.vocab_size = self._processor.get_piece_size()

    def encode(self, text: str | bytes) -> np.ndarray:
        text = text.decode("utf-8") if isinstance(text, bytes) else text
        try:
            return np.asarray(self._processor.encode(text), np.int32)
        except Exception:
            # sentencepiece's own error for a lone surrogate names neither the text nor the place.
            _utf8(text)
            raise

    def decode(self, ids: np.ndarray) -> str:
        return self._processor.decode(ids.tolist())


def _utf8(text: str) -> bytes:
    """`text` as UTF-8; a ValueError naming the place where that is impossible (a lone surrogate)."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        start = max(0, e.start - 20)
        excerpt = ("..." if start else "") + repr(text[start : e.start + 20])[1:-1]
        excerpt += "..." if e.start + 20 < len(text) else ""
        raise ValueError(
            f"Tokenize: cannot encode the text '{excerpt}' ({len(text)} characters) as UTF-8: it holds "
            f"{text[e.start]!r} at position {e.start}, a lone surrogate (half of a UTF-16 pair, not a "
            f"character), which UTF-8 cannot encode. Clean the text first, e.g. "
            f"text.encode('utf-8', errors='replace').decode('utf-8') makes each such character '?'"
        ) from e


@functools.lru_cache(maxsize=16)
def _get_vocab(vocab_type: str, vocab_file: str | None, vocab_dir: str | None):
    """Loads a vocabulary once; the files it reads are fixed for a run."""
    if vocab_type in ("char", "byte"):
        return _ByteVocab()
    if vocab_type == "sentencepiece":
        if vocab_file is None:
            raise ValueError("vocab_type='sentencepiece' needs vocab_file (the .model file), got None")
        return _SentencePieceVocab(os.path.join(vocab_dir or "", vocab_file))
    raise ValueError(
        f"vocab_type must be one of {', '.join(map(repr, _VOCAB_TYPES))}, got {vocab_type!r} (Trax's 'subword' "
        "and 'bert' vocabularies are not provided; convert them to a sentencepiece model)"
    )


def vocab_size(
    vocab_type: str = "char",
    vocab_file: str | None = None,
    vocab_dir: str | None = None,
    n_reserved_ids: int = 0,
) -> int:
    """The number of ids a vocabulary uses, reserved ids included (the model's output size)."""
    return _get_vocab(vocab_type, vocab_file, vocab_dir).vocab_size + n_reserved_ids


def tokenize(
    stream: Iterable,
    keys=None,
    vocab_type: str = "char",
    vocab_file: str | None = None,
    vocab_dir: str | None = None,
    n_reserved_ids: int = 0,
) -> Iterator:
    """Maps strings in a stream to int32 id arrays.

    Args:
        stream: Strings (or bytes), tuples of them, or dicts of them.
        keys: Which tuple positions or dict keys to tokenize; all if None.
        vocab_type: `'char'`, `'byte'` or `'sentencepiece'`.
        vocab_file: The sentencepiece model file.
        vocab_dir: The directory of `vocab_file`.
        n_reserved_ids: Added to every id, keeping 0..n_reserved_ids-1 free.
    """
    return map(_on_text(keys, _encoder(vocab_type, vocab_file, vocab_dir, n_reserved_ids)), stream)


def _encoder(vocab_type: str, vocab_file: str | None, vocab_dir: str | None, n_reserved_ids: int):
    vocab = _get_vocab(vocab_type, vocab_file, vocab_dir)

    def encode(x):
        if not isinstance(x, (str, bytes)):
            raise TypeError(f"Tokenize: expected str or bytes to tokenize, got {type(x).__name__}")
        return vocab.encode(x) + np.int32(n_reserved_ids)

    return encode


@gin.configurable(module="trax_sl.data")
def Tokenize(  # noqa: N802
    keys=None,
    vocab_type: str = "char",
    vocab_file: str | None = None,
    vocab_dir: str | None = None,
    n_reserved_ids: int = 0,
) -> Step:
    """Returns a step that maps text to integer arrays; see `tokenize`."""
    # A bad vocabulary fails here, not mid-pipeline.
    encode = _encoder(vocab_type, vocab_file, vocab_dir, n_reserved_ids)
    return map_step(f"Tokenize(keys={keys}, vocab_type={vocab_type!r})", _on_text(keys, encode))


def detokenize(
    x,
    vocab_type: str = "char",
    vocab_file: str | None = None,
    vocab_dir: str | None = None,
    n_reserved_ids: int = 0,
) -> str:
    """Maps a 1-D array (or list) of ids back to text; drops reserved ids (< n_reserved_ids)."""
    ids = np.asarray(x).astype(np.int64)
    if ids.ndim != 1:
        raise ValueError(f"detokenize: expected a 1-D array of ids, got shape {ids.shape}")
    ids = ids[ids >= n_reserved_ids] - n_reserved_ids
    return str(_get_vocab(vocab_type, vocab_file, vocab_dir).decode(ids))


@gin.configurable(module="trax_sl.data")
def Detokenize(  # noqa: N802
    keys=None,
    vocab_type: str = "char",
    vocab_file: str | None = None,
    vocab_dir: str | None = None,
    n_reserved_ids: int = 0,
) -> Step:
    """Returns a step that maps id arrays back to text; see `detokenize`."""
    _get_vocab(vocab_type, vocab_file, vocab_dir)
    return map_step(
        f"Detokenize(keys={keys}, vocab_type={vocab_type!r})",
        _on_text(keys, lambda x: detokenize(x, vocab_type, vocab_file, vocab_dir, n_reserved_ids)),
    )


@gin.configurable(module="trax_sl.data")
def ConvertToUnicode(keys=None) -> Step:  # noqa: N802
    """Returns a step that decodes bytes (as tfds gives text) to str, dropping bad UTF-8."""

    def to_str(x):
        return x.decode("utf-8", errors="ignore") if isinstance(x, bytes) else str(x)

    return map_step(f"ConvertToUnicode(keys={keys})", _on_text(keys, to_str))


def _on_text(keys, fn) -> Callable:
    """example -> `fn` applied to its `keys` items (tuples or dicts), or to a bare item (all if keys is None)."""

    def apply(example):
        if isinstance(example, (tuple, list)):
            return tuple(fn(x) if keys is None or i in keys else x for i, x in enumerate(example))
        if isinstance(example, dict):
            return {k: fn(x) if keys is None or k in keys else x for k, x in example.items()}
        return fn(example)

    return apply
