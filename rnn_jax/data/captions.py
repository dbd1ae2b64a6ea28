r"""Caption vocabulary, tokenization and batching shared by the image-captioning tasks.

Tokenization (:func:`tokenize`), used for training captions, references and hypotheses alike:
lowercase; a word is a run of letters and digits (Unicode ``str.isalnum``), possibly joined by
apostrophes inside it (``"dog's"``, ``"don't"``; the typographic ``’`` counts as ``'``); everything
else (punctuation, ``_``, apostrophes at a word's edge, whitespace) separates words and is dropped::

    tokenize("A dog's ball, e.g. RED-and-blue!")  ->  ["a", "dog's", "ball", "e", "g", "red", "and", "blue"]

Vocabulary (:class:`CaptionVocab`): ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<unk>`` = 3,
then ``words`` in order. :meth:`CaptionVocab.build` orders the words by descending count, ties
alphabetically, after dropping those seen fewer than ``min_count`` times; ``max_size`` keeps at most
that many words (the four specials not counted).

Batches (:func:`pack_captions`) are dicts of numpy arrays with a fixed ``T = max_len``:

* ``tokens [B, T]`` int32: the caption's word ids, then EOS, then PAD. A caption of more than
  ``T - 1`` words keeps its first ``T - 1`` so that the EOS always fits. A model reads
  ``[BOS, tokens[:, :-1]]`` as its input and predicts ``tokens``.
* ``lengths [B]`` int32: the words kept plus one (the valid positions of ``tokens``, EOS included).
* ``weight [B]`` float32: 1 for the captions given, 0 for the rows that pad the batch to
  ``batch_size`` (they repeat the first caption).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from rnn_jax.errors import InputError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

__all__ = ["BOS_ID", "CaptionVocab", "EOS_ID", "PAD_ID", "SPECIALS", "UNK_ID", "pack_captions", "tokenize"]


def tokenize(text: str) -> list[str]:
    """The words of ``text``: lowercase, punctuation dropped, apostrophes kept inside words (module
    docstring)."""
    if not isinstance(text, str):
        raise InputError(f"tokenize: expected a string; got {type(text).__name__} {text!r}")
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@dataclasses.dataclass(frozen=True)
class CaptionVocab:
    """Ids: PAD 0, BOS 1, EOS 2, UNK 3, then ``words`` (distinct, none of them a special token)."""

    words: tuple

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __post_init__(self):
        object.__setattr__(self, "words", tuple(self.words))
        bad = [w for w in self.words if not isinstance(w, str) or not w or w in SPECIALS]
        if bad:
            raise InputError(f"caption vocabulary words must be non-empty strings other than {', '.join(SPECIALS)};"
                             f" got {bad[0]!r}")
        index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        if len(index) != len(self.words):
            dup = next(w for w, n in collections.Counter(self.words).items() if n > 1)
            raise InputError(f"caption vocabulary words must be distinct; {dup!r} appears more than once")
        object.__setattr__(self, "_index", index)

    @property
    def tokens(self) -> tuple:
        """Every token by id: the specials, then the words."""
        return SPECIALS + self.words

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.words)

    def encode(self, words: Sequence[str]) -> list[int]:
        """The ids of ``words`` (no BOS/EOS added); words not in the vocabulary become UNK."""
        if isinstance(words, str):
            raise InputError(f"CaptionVocab.encode takes a sequence of words, not a string; got {words!r}"
                             " (split it with tokenize())")
        return [self._index.get(w, UNK_ID) for w in words]

    def decode(self, ids) -> list[str]:
        """The tokens of ``ids`` up to the first EOS; PAD and BOS are skipped, UNK reads ``<unk>``."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            if not 0 <= i < len(self):
                raise InputError(f"token id {i} is outside the caption vocabulary [0, {len(self)})")
            out.append(self.tokens[i])
        return out

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 1, max_size: int | None = None
              ) -> "CaptionVocab":
        """The words of ``captions`` (each a sequence of words) seen at least ``min_count`` times, by
        descending count, ties alphabetically; at most ``max_size`` of them (``None``: all)."""
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise InputError(f"caption vocabulary min_count={min_count!r}: must be an integer >= 1")
        if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, (int, np.integer))
                                     or max_size < 0):
            raise InputError(f"caption vocabulary max_size={max_size!r}: must be None or an integer >= 0")
        counts = collections.Counter()
        for caption in captions:
            if isinstance(caption, str):
                raise InputError(f"CaptionVocab.build takes captions as sequences of words, not strings; got"
                                 f" {caption!r}")
            counts.update(caption)
        words = sorted((w for w, n in counts.items() if n >= min_count and w and w not in SPECIALS),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[:max_size]
        return cls(tuple(words))


def pack_captions(vocab: CaptionVocab, captions: list[list[str]], max_len: int, batch_size: int | None = None
                  ) -> dict[str, np.ndarray]:
    """``captions`` (lists of words) as ``tokens``, ``lengths`` and ``weight`` (module docstring),
    ``batch_size`` rows (``None``: one per caption); padding rows repeat the first caption."""
    n = len(captions)
    batch_size = n if batch_size is None else batch_size
    if isinstance(max_len, bool) or not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise InputError(f"pack_captions max_len={max_len!r}: must be an integer >= 1 (words + EOS)")
    if n == 0 or n > batch_size:
        raise InputError(f"pack_captions: cannot pack {n} captions into a batch of {batch_size}")
    tokens = np.full((batch_size, max_len), PAD_ID, np.int32)
    lengths = np.zeros((batch_size,), np.int32)
    for row in range(batch_size):
        ids = vocab.encode(captions[row if row < n else 0])[:max_len - 1]
        tokens[row, :len(ids) + 1] = [*ids, EOS_ID]
        lengths[row] = len(ids) + 1
    return {"tokens": tokens, "lengths": lengths, "weight": (np.arange(batch_size) < n).astype(np.float32)}
