r"""Generated sequence-to-sequence tasks: ``reverse``, ``sort`` and ``addition``.

* ``reverse``: ``L`` symbols, ``min_len ≤ L ≤ max_len``, drawn from the first ``num_symbols``
  lowercase letters; the target is the source backwards (``"abcd" -> "dcba"``).
* ``sort``: the same sources; the target is the source sorted (``"dbca" -> "abcd"``).
* ``addition``: ``"a+b"`` with each operand of ``min_len`` to ``max_len`` digits (the number of
  digits uniform, then the value uniform among numbers of that many digits, no leading zeros);
  the target is the decimal sum (``"123+45" -> "168"``). ``num_symbols`` does not apply.

Vocabulary: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then the task's symbols.

Batches are dicts of numpy arrays with fixed shapes per task (so one compiled step serves all):
``src [B, S]`` int32, ``src_lengths [B]``, ``tgt_in [B, T]`` (BOS + target), ``tgt_out [B, T]``
(target + EOS), ``tgt_lengths [B]`` (target length + 1: the valid positions of both) and
``weight [B]`` float32 (0 for padding rows). ``S = task.src_len`` and ``T = task.tgt_len`` are
the task's maxima; padding is PAD.

Splits. A source belongs to one split by a hash of ``(seed, source)``: bucket
``crc32 mod 20`` = 0 is ``valid``, 1 is ``test``, the rest is ``train``, so the three splits never
share a source (about 5% of the sources are held out for each evaluation split). Training example
draws are a pure function of ``(seed, step)`` (``np.random.default_rng([seed, step])``), skipping
held-out sources; evaluation example ``i`` of a split is a pure function of ``(task.seed, split,
i)`` (``default_rng([task.seed, split index, i])``, drawing until the source falls in the split).

Metrics come from decoded output, never from teacher forcing: :func:`decoded_metrics` compares
``pred_ids [B, L]`` (e.g. :func:`rnn_jax.decoding.greedy`'s tokens: EOS included, PAD after) with
``tgt_out`` at the ``tgt_lengths`` valid positions::

    correct_tokens    = Σ_b w_b · #{t < n_b : pred[b, t] = tgt_out[b, t]}        (the EOS position counts)
    target_tokens     = Σ_b w_b · n_b
    correct_sequences = Σ_b w_b · [pred[b, t] = tgt_out[b, t] for all t < n_b]  (exact match up to EOS)
    sequences         = Σ_b w_b

and :meth:`Seq2SeqTask.metrics` turns sums (added over batches, possibly merged with the model's
loss sums ``nll``/``nll_tokens``) into ``token_accuracy``, ``sequence_accuracy`` (and ``loss``).
"""

from __future__ import annotations

import dataclasses
import functools
import string
import zlib
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from rnn_jax.errors import InputError

SEQ2SEQ_TASKS = ("reverse", "sort", "addition")
EVAL_SPLITS = ("valid", "test")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
HASH_BUCKETS = 20            # bucket 0: valid, 1: test, others: train
MIN_SOURCES = 200            # fewer distinct sources cannot fill held-out splits
MAX_TRIES = 100_000          # draws per held-out example before giving up

__all__ = ["EOS_ID", "BOS_ID", "PAD_ID", "SEQ2SEQ_TASKS", "Seq2SeqTask", "Seq2SeqVocab", "decoded_metrics",
           "make_task"]


@dataclasses.dataclass(frozen=True)
class Seq2SeqVocab:
    """Ids: PAD 0, BOS 1, EOS 2, then ``symbols`` (one character each)."""

    symbols: tuple

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    @property
    def tokens(self) -> tuple:
        return SPECIALS + tuple(self.symbols)

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.symbols)

    def encode(self, text: str) -> list[int]:
        index = {s: i + len(SPECIALS) for i, s in enumerate(self.symbols)}
        missing = sorted({ch for ch in text if ch not in index})
        if missing:
            raise InputError(f"symbol(s) not in the vocabulary: {', '.join(map(repr, missing))}")
        return [index[ch] for ch in text]

    def decode(self, ids) -> str:
        """The symbols of ``ids`` up to the first EOS; PAD and BOS are skipped."""
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i >= len(SPECIALS):
                out.append(self.symbols[i - len(SPECIALS)])
        return "".join(out)


def _check_int(task: str, name: str, value, minimum: int, maximum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise InputError(f"{task} option {name}={value!r}: must be an integer in [{minimum}, {maximum}]")


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask:
    """One task with its options (see the module docstring); build it with :func:`make_task`.

    ``valid_size``/``test_size``: the number of examples in each evaluation split.
    """

    name: str
    seed: int = 0
    min_len: int = 1
    max_len: int = 10
    num_symbols: int | None = None
    valid_size: int = 1000
    test_size: int = 1000

    def __post_init__(self):
        if self.name not in SEQ2SEQ_TASKS:
            raise InputError(f"seq2seq task must be one of {', '.join(SEQ2SEQ_TASKS)}; got {self.name!r}")
        _check_int(self.name, "seed", self.seed, 0, 2**63 - 1)
        max_len_limit = 50 if self.name == "addition" else 1000
        _check_int(self.name, "min_len", self.min_len, 1, max_len_limit)
        _check_int(self.name, "max_len", self.max_len, 1, max_len_limit)
        if self.min_len > self.max_len:
            raise InputError(f"{self.name} options min_len={self.min_len} > max_len={self.max_len}")
        if self.name == "addition":
            if self.num_symbols is not None:
                raise InputError("addition option num_symbols does not apply (the symbols are the digits and '+')")
        else:
            if self.num_symbols is None:
                object.__setattr__(self, "num_symbols", 10)
            _check_int(self.name, "num_symbols", self.num_symbols, 2, 26)
        _check_int(self.name, "valid_size", self.valid_size, 1, 10**7)
        _check_int(self.name, "test_size", self.test_size, 1, 10**7)
        if self.num_sources < MIN_SOURCES:
            raise InputError(f"{self.name}: only {self.num_sources} distinct sources with these options; at least"
                             f" {MIN_SOURCES} are needed to hold out valid and test sources (raise max_len"
                             f" or num_symbols)")

    # ---- sizes and vocabulary -------------------------------------------------------------------

    @property
    def vocab(self) -> Seq2SeqVocab:
        if self.name == "addition":
            return Seq2SeqVocab(tuple("0123456789+"))
        return Seq2SeqVocab(tuple(string.ascii_lowercase[:self.num_symbols]))

    def decode(self, ids) -> str:
        return self.vocab.decode(ids)

    @property
    def src_len(self) -> int:
        """``S``: the longest source."""
        return 2 * self.max_len + 1 if self.name == "addition" else self.max_len

    @property
    def tgt_len(self) -> int:
        """``T``: the longest target plus one (BOS in ``tgt_in``, EOS in ``tgt_out``); a decoding
        ``max_len`` that fits every target."""
        return self.max_len + 2 if self.name == "addition" else self.max_len + 1

    @property
    def num_sources(self) -> int:
        """The number of distinct sources (capped at 10**9)."""
        if self.name == "addition":
            per_operand = sum(10 if d == 1 else 9 * 10 ** (d - 1) for d in range(self.min_len, self.max_len + 1))
            return min(per_operand ** 2, 10**9)
        total = 0
        for length in range(self.min_len, self.max_len + 1):
            total += self.num_symbols ** length
            if total >= 10**9:
                return 10**9
        return total

    # ---- examples ------------------------------------------------------------------------------

    def _draw(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """One ``(source ids, target ids)`` pair (without BOS/EOS)."""
        offset = len(SPECIALS)
        if self.name == "addition":
            a, b = (self._number(rng) for _ in range(2))
            vocab = self.vocab
            return vocab.encode(f"{a}+{b}"), vocab.encode(str(a + b))
        length = int(rng.integers(self.min_len, self.max_len + 1))
        src = (rng.integers(0, self.num_symbols, size=length) + offset).tolist()
        return src, (src[::-1] if self.name == "reverse" else sorted(src))

    def _number(self, rng: np.random.Generator) -> int:
        """The number of digits uniform, then the value uniform among numbers of that many digits."""
        digits = int(rng.integers(self.min_len, self.max_len + 1))
        if digits == 1:
            return int(rng.integers(0, 10))
        first, rest = int(rng.integers(1, 10)), rng.integers(0, 10, size=digits - 1).tolist()
        return int("".join(map(str, [first, *rest])))

    def split_of(self, src_ids) -> str:
        """``"train"``, ``"valid"`` or ``"test"``: where a source belongs (module docstring)."""
        data = np.asarray([self.seed, *src_ids], np.int64).tobytes()
        bucket = zlib.crc32(data) % HASH_BUCKETS
        return "valid" if bucket == 0 else "test" if bucket == 1 else "train"

    def example(self, split: str, index: int) -> tuple[list[int], list[int]]:
        """Example ``index`` of an evaluation split: a pure function of ``(seed, split, index)``."""
        if split not in EVAL_SPLITS:
            raise InputError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")
        rng = np.random.default_rng([self.seed, 1 + EVAL_SPLITS.index(split), index])
        for _ in range(MAX_TRIES):
            src, tgt = self._draw(rng)
            if self.split_of(src) == split:
                return src, tgt
        raise InputError(f"{self.name}: no {split} source found in {MAX_TRIES} draws; widen the task's options")

    def train_examples(self, seed: int, step: int, count: int) -> list[tuple[list[int], list[int]]]:
        rng = np.random.default_rng([seed, step])
        out = []
        while len(out) < count:
            src, tgt = self._draw(rng)
            if self.split_of(src) == "train":
                out.append((src, tgt))
        return out

    # ---- batches -------------------------------------------------------------------------------

    def pack(self, examples, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Examples as one batch of ``batch_size`` rows (default: as many as examples); the rows
        past the examples repeat the first one with ``weight`` 0."""
        n = len(examples)
        batch_size = n if batch_size is None else batch_size
        if n == 0 or n > batch_size:
            raise ValueError(f"cannot pack {n} examples into a batch of {batch_size}")
        S, T = self.src_len, self.tgt_len
        batch = {"src": np.full((batch_size, S), PAD_ID, np.int32),
                 "src_lengths": np.zeros((batch_size,), np.int32),
                 "tgt_in": np.full((batch_size, T), PAD_ID, np.int32),
                 "tgt_out": np.full((batch_size, T), PAD_ID, np.int32),
                 "tgt_lengths": np.zeros((batch_size,), np.int32),
                 "weight": (np.arange(batch_size) < n).astype(np.float32)}
        for row in range(batch_size):
            src, tgt = examples[row if row < n else 0]
            batch["src"][row, :len(src)] = src
            batch["src_lengths"][row] = len(src)
            batch["tgt_in"][row, :len(tgt) + 1] = [BOS_ID, *tgt]
            batch["tgt_out"][row, :len(tgt) + 1] = [*tgt, EOS_ID]
            batch["tgt_lengths"][row] = len(tgt) + 1
        return batch

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """A training batch: a pure function of ``(seed, step, batch_size)``, no held-out source."""
        _check_int(self.name, "batch_size", batch_size, 1, 10**7)
        return self.pack(self.train_examples(seed, step, batch_size))

    def eval_batches(self, split: str, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Every example of ``split`` exactly once, in order, as full batches (the last padded with
        ``weight`` 0)."""
        _check_int(self.name, "batch_size", batch_size, 1, 10**7)
        examples = _eval_examples(self, split)
        return [self.pack(examples[i:i + batch_size], batch_size) for i in range(0, len(examples), batch_size)]

    # ---- metrics -------------------------------------------------------------------------------

    @staticmethod
    def metrics(sums: Mapping) -> dict[str, float]:
        """``token_accuracy``, ``sequence_accuracy`` (from :func:`decoded_metrics` sums) and, when
        the model's loss sums are there, ``loss`` (nats per target token)."""
        out = {}
        if "target_tokens" in sums:
            out["token_accuracy"] = float(sums["correct_tokens"]) / max(float(sums["target_tokens"]), 1.0)
            out["sequence_accuracy"] = float(sums["correct_sequences"]) / max(float(sums["sequences"]), 1.0)
        if "nll" in sums:
            out["loss"] = float(sums["nll"]) / max(float(sums["nll_tokens"]), 1.0)
        return out


@functools.lru_cache(maxsize=16)
def _eval_examples(task: Seq2SeqTask, split: str) -> tuple:
    size = task.valid_size if split == "valid" else task.test_size
    if split not in EVAL_SPLITS:
        raise InputError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")
    return tuple(task.example(split, i) for i in range(size))


def make_task(name: str, seed: int = 0, **options) -> Seq2SeqTask:
    """The task ``name`` with ``options`` (``min_len``, ``max_len``, ``num_symbols``, ``valid_size``,
    ``test_size``); unknown names and options raise :class:`~rnn_jax.errors.InputError`."""
    allowed = [f.name for f in dataclasses.fields(Seq2SeqTask) if f.name not in ("name", "seed")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(map(repr, unknown))} for seq2seq task {name!r};"
                         f" allowed: {', '.join(allowed)}")
    return Seq2SeqTask(name, seed, **options)


def decoded_metrics(pred_ids, batch) -> dict:
    """Sums of correct tokens and exact sequences of decoded ``pred_ids [B, L]`` against the batch's
    ``tgt_out`` (module docstring); jit-compatible, returns jax scalars."""
    pred_BxL = jnp.asarray(pred_ids, jnp.int32)
    tgt_BxT = jnp.asarray(batch["tgt_out"], jnp.int32)
    T, L = tgt_BxT.shape[1], pred_BxL.shape[1]
    if L < T:
        pred_BxL = jnp.pad(pred_BxL, ((0, 0), (0, T - L)), constant_values=PAD_ID)
    pred_BxT = pred_BxL[:, :T]
    valid_BxT = jnp.arange(T)[None, :] < jnp.asarray(batch["tgt_lengths"])[:, None]
    weight_B = jnp.asarray(batch["weight"], jnp.float32)
    hit_BxT = (pred_BxT == tgt_BxT) & valid_BxT
    exact_B = jnp.all(hit_BxT | ~valid_BxT, axis=1)
    return {"correct_tokens": jnp.sum(hit_BxT.sum(1) * weight_B),
            "target_tokens": jnp.sum(valid_BxT.sum(1) * weight_B),
            "correct_sequences": jnp.sum(exact_B * weight_B),
            "sequences": jnp.sum(weight_B)}
