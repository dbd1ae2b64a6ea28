"""Text corpora for language models: characters from any UTF-8 file, words in Penn Treebank format.

A corpus is a :class:`Corpus`: a :class:`Vocab` plus ``train``/``valid``/``test`` token arrays
(``int32``). The vocabulary is saved in the run directory (``vocab.json``) so that a resumed run
and the sampler can check that they see the same symbols.

Nothing here downloads: files are read from local paths, and ``tfds:NAME`` sources are read with
``tensorflow_datasets.data_source`` only when the dataset is already prepared on disk.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from rnn_jax.errors import InputError

PTB_FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS = "<eos>"
UNK = "<unk>"


@dataclasses.dataclass(frozen=True)
class Vocab:
    """An ordered list of symbols (characters or words); token id = position in the list."""

    symbols: tuple
    level: str  # "char" or "word"

    def __post_init__(self):
        if self.level not in ("char", "word"):
            raise ValueError(f"vocab level must be 'char' or 'word', got {self.level!r}")
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocabulary symbols must be unique")

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def index(self) -> dict:
        return {s: i for i, s in enumerate(self.symbols)}

    def encode(self, text) -> np.ndarray:
        """Characters of a string (char level) or a list of words (word level) to ids."""
        items = list(text) if self.level == "char" else (text.split() if isinstance(text, str) else list(text))
        index = self.index
        missing = sorted({s for s in items if s not in index})
        if missing:
            if self.level == "word" and UNK in index:
                return np.asarray([index.get(s, index[UNK]) for s in items], np.int32)
            shown = ", ".join(repr(s) for s in missing[:10])
            raise InputError(f"{len(missing)} symbol(s) not in the vocabulary: {shown}"
                             f"{' ...' if len(missing) > 10 else ''}")
        return np.asarray([index[s] for s in items], np.int32)

    def decode(self, ids) -> str:
        parts = [self.symbols[int(i)] for i in np.asarray(ids).reshape(-1)]
        return "".join(parts) if self.level == "char" else " ".join(parts)

    def to_json(self) -> dict:
        return {"level": self.level, "symbols": list(self.symbols)}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        return cls(tuple(d["symbols"]), d["level"])

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, ensure_ascii=False)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Vocab":
        with open(path, encoding="utf-8") as f:
            return cls.from_json(json.load(f))

    def check_same(self, other: "Vocab", where: str) -> None:
        """Raise a clear error when ``other`` differs from this (saved) vocabulary."""
        if self == other:
            return
        if self.level != other.level:
            raise InputError(f"{where}: vocabulary level {other.level!r} differs from the saved {self.level!r}")
        added = sorted(set(other.symbols) - set(self.symbols))[:10]
        removed = sorted(set(self.symbols) - set(other.symbols))[:10]
        raise InputError(
            f"{where}: the data's vocabulary ({len(other)} symbols) differs from the one saved in the "
            f"run directory ({len(self)} symbols); new: {added}, missing: {removed}"
            + ("; same symbols in a different order" if not added and not removed else "")
            + ". Use a fresh workdir for different data.")


@dataclasses.dataclass(frozen=True)
class Corpus:
    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be one of train, valid, test; got {name!r}")
        return getattr(self, name)


def check_data_file(path) -> None:
    """Raise ``FileNotFoundError`` when ``path`` does not exist, ``IsADirectoryError`` when it is a directory."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{os.fspath(path)!r} is a directory, not a data file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {os.fspath(path)!r} does not exist")


def read_utf8(path: str) -> str:
    """Read a UTF-8 file; undecodable bytes raise an error giving byte offset, line and column.

    A missing path raises ``FileNotFoundError``, a directory ``IsADirectoryError``, bytes that are not
    UTF-8 :class:`~rnn_jax.errors.InputError`.
    """
    check_data_file(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        bad = raw[e.start:e.end]
        raise InputError(f"{path}: not valid UTF-8 at byte {e.start} (line {line}, column {col}): "
                         f"byte(s) {bad!r} ({e.reason})") from None


def split_by_fractions(n: int, fractions: Sequence[float]) -> tuple:
    """Boundaries ``(a, b)`` that cut ``n`` items into train ``[:a]``, valid ``[a:b]``, test ``[b:]``."""
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise InputError(f"data.splits must be three non-negative fractions (train, valid, test) "
                         f"summing to 1, got {fractions}")
    if fractions[0] == 0 or fractions[1] == 0:
        raise InputError(f"data.splits needs non-zero train and valid fractions, got {fractions}")
    a = int(round(n * fractions[0]))
    b = int(round(n * (fractions[0] + fractions[1])))
    return a, b


def char_corpus(path: str, splits: Sequence[float] = (0.9, 0.05, 0.05)) -> Corpus:
    """A character corpus from a UTF-8 file, split by position (train first, then valid, test).

    The vocabulary is every character of the whole file, sorted by code point.
    """
    text = read_utf8(path)
    if not text:
        raise InputError(f"{path}: the file is empty")
    vocab = Vocab(tuple(sorted(set(text))), "char")
    ids = vocab.encode(text)
    a, b = split_by_fractions(len(ids), splits)
    return Corpus(vocab, ids[:a], ids[a:b], ids[b:])


def _read_ptb_file(path: str) -> list:
    words = []
    for line in read_utf8(path).split("\n"):
        if line.strip():
            words.extend(line.split())
            words.append(EOS)
    return words


def ptb_corpus(data_dir: str) -> Corpus:
    """Penn Treebank text format: ``ptb.{train,valid,test}.txt`` in ``data_dir``.

    One sentence per line, tokens separated by spaces, ``<unk>`` already in the text; ``<eos>`` is
    appended at each line end. The vocabulary comes from the training file, ordered by decreasing
    frequency (ties alphabetically); words of valid/test that it lacks map to ``<unk>`` when the
    vocabulary has it and are an error otherwise.
    """
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise NotADirectoryError(f"data.dir {data_dir!r} is a file, not a directory")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"data.dir {data_dir!r} is not a directory")
    missing = [f for f in PTB_FILES.values() if not os.path.isfile(os.path.join(data_dir, f))]
    if missing:
        raise FileNotFoundError(f"data.dir {data_dir!r} lacks {', '.join(missing)} "
                                f"(expected {', '.join(PTB_FILES.values())})")
    words = {k: _read_ptb_file(os.path.join(data_dir, f)) for k, f in PTB_FILES.items()}
    for k, w in words.items():
        if not w:
            raise InputError(f"{os.path.join(data_dir, PTB_FILES[k])}: the file is empty")
    counts = collections.Counter(words["train"])
    vocab = Vocab(tuple(sorted(counts, key=lambda w: (-counts[w], w))), "word")
    arrays = {}
    for k, w in words.items():
        try:
            arrays[k] = vocab.encode(w)
        except ValueError as e:
            raise InputError(f"{PTB_FILES[k]}: {e} (the training file has no {UNK!r} to map them to)") from None
    return Corpus(vocab, arrays["train"], arrays["valid"], arrays["test"])


def tfds_corpus(name: str, data_dir: str | None = None, feature: str = "text",
                splits: Sequence[str] = ("train", "validation", "test")) -> Corpus:
    """A character corpus from a prepared TFDS dataset (``tensorflow_datasets.data_source``).

    Each example's ``feature`` (a string or bytes) is one document; documents are joined with a
    newline. Needs the ``tfds`` extra and a dataset already prepared under ``data_dir``; nothing is
    downloaded. ``splits`` names the dataset's train/valid/test splits.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError("tfds sources need tensorflow-datasets: pip install -e '.[tfds]'") from None
    texts = []
    for split in splits:
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # tfds raises several types for a dataset that is not prepared
            raise InputError(f"tfds dataset {name!r} split {split!r} is not prepared in "
                             f"{data_dir or 'the default data dir'} (nothing is downloaded): {e}") from None
        docs = []
        for i in range(len(source)):
            value = source[i][feature]
            docs.append(value.decode("utf-8") if isinstance(value, bytes) else str(value))
        texts.append("\n".join(docs))
    if not texts[0]:
        raise InputError(f"tfds dataset {name!r}: the training split is empty")
    vocab = Vocab(tuple(sorted(set("".join(texts)))), "char")
    return Corpus(vocab, *(vocab.encode(t) for t in texts))


def load_corpus(data) -> Corpus:
    """The corpus a config's ``data`` block names (``data.kind``: char, ptb or tfds)."""
    kind = data.kind
    if kind == "char":
        path = data.path
        if isinstance(path, str) and path.startswith("tfds:"):
            return tfds_corpus(path[len("tfds:"):], data_dir=data.get("tfds_data_dir") or None)
        return char_corpus(path, data.splits)
    if kind == "ptb":
        return ptb_corpus(data.dir)
    raise InputError(f"data.kind must be one of char, ptb; got {kind!r}")
