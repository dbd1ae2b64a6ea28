r"""Generated many-to-one tasks (one label per sequence) that need memory over the whole sequence.

Every task here, like :class:`rnn_jax.data.digits.DigitsTask`, offers the classification-task
interface the trainer will use:

* ``train_batch(seed, step, batch_size) -> dict``: random training examples, a pure function of
  the arguments (drawn from ``np.random.default_rng([seed, step])``);
* ``eval_batches(split, batch_size) -> list[dict]``: the whole ``split`` (``"valid"`` or
  ``"test"``) exactly once, in order, the last batch padded to ``batch_size`` with copies of the
  split's first examples whose ``weight`` is 0;
* ``metrics(sums) -> dict``: final metrics from sums accumulated over evaluation batches
  (:func:`classification_metrics`: ``loss`` and ``accuracy``).

A batch holds ``inputs`` ``[B, T]`` int32 tokens (``T = max_len``, zeros past each length),
``lengths`` ``[B]`` int32, ``labels`` ``[B]`` int32 and ``weight`` ``[B]`` float32 (1 for real
examples). Attributes for building a model: ``num_classes``, ``vocab_size`` (``input_size`` is
``None``: the inputs are tokens) and ``num_steps`` (``T``).

Tasks
-----
*Parity* (:class:`ParityTask`): a string of uniformly random bits (tokens 0/1) of a length drawn
uniformly from ``[min_len, max_len]``; the label is the XOR of all its bits. Every bit matters, so
a model must carry one bit of state from the first step to the last.

*Brackets* (:class:`BracketsTask`): a string over ``(`` (token 0) and ``)`` (token 1) of an even
length drawn uniformly from the even numbers in ``[min_len, max_len]``; the label is whether it is
balanced (every prefix has at least as many ``(`` as ``)``, and the counts are equal). Labels are
drawn 50/50. A balanced string is a uniformly random Dyck word of that length (cycle lemma). An
unbalanced one has as many ``(`` as ``)`` too (a uniformly random arrangement that is not
balanced), so neither the length nor the counts give the label away: a model must follow the
nesting depth and remember whether it ever went below zero.

Examples of the evaluation splits are a pure function of ``(seed, split, index)``: example ``i``
of ``split`` comes from ``np.random.default_rng([seed, 0x5E9, split_id, i])``
(``split_id`` 1 for valid, 2 for test), so it does not depend on the split's size, and the
splits do not depend on a run's seed (``seed`` is the task's, like ``data.seed``). Training examples
are drawn fresh at every step; short strings recur across splits (there are only
``2^len`` of them), which is harmless for these rule-based tasks.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import numpy as np

from rnn_jax.errors import InputError

EVAL_SPLITS = ("valid", "test")
MAX_LEN_LIMIT = 100_000
_EVAL_TAG = 0x5E9  # keeps evaluation seeds [seed, tag, split, i] apart from training's [seed, step]


# ----------------------------------------------------------------------------- shared helpers

def check_int(name: str, value, low: int, high: int | None = None, what: str = "option") -> int:
    """``value`` as an int in ``[low, high]``, else :class:`InputError` naming ``name`` and the range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise InputError(f"{what} {name}={value!r}: must be {allowed}")
    return int(value)


def check_split(split: str, allowed: Sequence[str]) -> str:
    if split not in allowed:
        raise InputError(f"split must be one of {', '.join(map(repr, allowed))}; got {split!r}")
    return split


def pad_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> list[dict]:
    """Cuts ``arrays`` (equal first dimension ``N`` ≥ 1) into ``ceil(N / batch_size)`` batches.

    Each batch gets ``weight`` ``[batch_size]`` float32: 1 for the split's examples, 0 for the
    padding that fills the last batch, which repeats the split's first examples (so padded rows
    are ordinary inputs and cannot produce non-finite values).
    """
    batch_size = check_int("batch_size", batch_size, 1, what="argument")
    n = len(next(iter(arrays.values())))
    if n == 0:
        raise InputError("cannot make evaluation batches of an empty split")
    num_batches = -(-n // batch_size)
    index = np.arange(num_batches * batch_size)
    weight = (index < n).astype(np.float32)
    index = np.where(index < n, index, index % n)
    batches = []
    for b in range(num_batches):
        rows = index[b * batch_size:(b + 1) * batch_size]
        batch = {k: np.ascontiguousarray(v[rows]) for k, v in arrays.items()}
        batch["weight"] = weight[b * batch_size:(b + 1) * batch_size]
        batches.append(batch)
    return batches


def classification_metrics(sums: Mapping) -> dict:
    """``{"loss": nll / count, "accuracy": correct / count}`` from summed ``nll``, ``correct``,
    ``count`` (each weighted by the examples' ``weight``); NaN where ``count`` is 0."""
    missing = sorted({"nll", "correct", "count"} - set(sums))
    if missing:
        raise ValueError(f"sums lack {', '.join(missing)}; got keys {sorted(sums)}")
    count = float(sums["count"])
    if count <= 0:
        return {"loss": float("nan"), "accuracy": float("nan")}
    return {"loss": float(sums["nll"]) / count, "accuracy": float(sums["correct"]) / count}


# ----------------------------------------------------------------------------- single examples

def parity_example(rng: np.random.Generator, min_len: int, max_len: int) -> tuple[np.ndarray, int]:
    """``(bits, label)``: bits of a length uniform in ``[min_len, max_len]``, label = XOR of the bits."""
    n = int(rng.integers(min_len, max_len + 1))
    bits = rng.integers(0, 2, size=n).astype(np.int32)
    return bits, int(bits.sum() % 2)


def is_balanced(tokens: np.ndarray) -> bool:
    """Whether a string of ``(`` (0) and ``)`` (1) is balanced: no prefix closes more than it opens."""
    depth = np.cumsum(1 - 2 * np.asarray(tokens, np.int64))
    return bool(depth.size == 0 or (depth.min() >= 0 and depth[-1] == 0))


def dyck_word(rng: np.random.Generator, pairs: int) -> np.ndarray:
    """A uniformly random balanced string of ``pairs`` pairs, as tokens ``(`` = 0, ``)`` = 1.

    Cycle lemma: of the rotations of a random arrangement of ``pairs`` opening and ``pairs + 1``
    closing steps, exactly one (starting right after the first minimum of the prefix sums) keeps
    every proper prefix sum ≥ 0; without its last closing step it is the Dyck word.
    """
    steps = np.concatenate([np.ones(pairs, np.int64), -np.ones(pairs + 1, np.int64)])
    rng.shuffle(steps)
    start = int(np.argmin(np.cumsum(steps))) + 1
    word = np.roll(steps, -start)[:-1]
    return ((1 - word) // 2).astype(np.int32)


def brackets_example(rng: np.random.Generator, min_len: int, max_len: int) -> tuple[np.ndarray, int]:
    """``(tokens, label)``: an even-length bracket string in ``[min_len, max_len]``, balanced with
    probability 1/2 (label 1); an unbalanced one has equal counts of ``(`` and ``)``."""
    pairs = int(rng.integers(-(-min_len // 2), max_len // 2 + 1))
    if rng.random() < 0.5:
        return dyck_word(rng, pairs), 1
    while True:  # a random arrangement of equal counts is balanced with probability 1/(pairs+1)
        tokens = rng.permutation(np.repeat(np.array([0, 1], np.int32), pairs))
        if not is_balanced(tokens):
            return tokens, 0


# ----------------------------------------------------------------------------- tasks

def _stack(examples, num_steps: int) -> dict:
    """Examples ``[(tokens, label), ...]`` as a batch without ``weight`` (tokens zero-padded to T)."""
    inputs = np.zeros((len(examples), num_steps), np.int32)
    lengths = np.zeros(len(examples), np.int32)
    labels = np.zeros(len(examples), np.int32)
    for b, (tokens, label) in enumerate(examples):
        inputs[b, :len(tokens)] = tokens
        lengths[b] = len(tokens)
        labels[b] = label
    return {"inputs": inputs, "lengths": lengths, "labels": labels}


@dataclasses.dataclass(frozen=True)
class _GeneratedTask:
    """Shared by the generated tasks: options, training batches, fixed evaluation splits."""

    min_len: int = 1
    max_len: int = 20
    num_valid: int = 1000
    num_test: int = 1000
    seed: int = 0

    name = ""
    min_len_floor = 1
    num_classes = 2
    vocab_size = 2
    input_size = None

    def __post_init__(self):
        low = self.min_len_floor
        check_int("min_len", self.min_len, low, MAX_LEN_LIMIT, what=f"{self.name} option")
        check_int("max_len", self.max_len, self.min_len, MAX_LEN_LIMIT, what=f"{self.name} option")
        check_int("num_valid", self.num_valid, 1, what=f"{self.name} option")
        check_int("num_test", self.num_test, 1, what=f"{self.name} option")
        check_int("seed", self.seed, 0, what=f"{self.name} option")

    @property
    def num_steps(self) -> int:
        """``T`` of every batch: ``max_len``."""
        return self.max_len

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def eval_example(self, split: str, index: int) -> tuple[np.ndarray, int]:
        """Example ``index`` of an evaluation split: ``(tokens, label)``, a pure function of
        ``(seed, split, index)``."""
        split_id = 1 + EVAL_SPLITS.index(check_split(split, EVAL_SPLITS))
        return self.example(np.random.default_rng([self.seed, _EVAL_TAG, split_id, index]))

    def num_examples(self, split: str) -> int:
        return self.num_valid if check_split(split, EVAL_SPLITS) == "valid" else self.num_test

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` fresh examples from ``np.random.default_rng([seed, step])``."""
        check_int("batch_size", batch_size, 1, what="argument")
        rng = np.random.default_rng([check_int("seed", seed, 0, what="argument"),
                                     check_int("step", step, 0, what="argument")])
        batch = _stack([self.example(rng) for _ in range(batch_size)], self.num_steps)
        batch["weight"] = np.ones(batch_size, np.float32)
        return batch

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """The whole split once, in index order, padded to full batches (padding has weight 0)."""
        return pad_batches(_eval_split(self, check_split(split, EVAL_SPLITS)), batch_size)

    def metrics(self, sums: Mapping) -> dict:
        return classification_metrics(sums)


@functools.lru_cache(maxsize=16)
def _eval_split(task: _GeneratedTask, split: str) -> dict:
    n = task.num_examples(split)
    arrays = _stack([task.eval_example(split, i) for i in range(n)], task.num_steps)
    for a in arrays.values():
        a.flags.writeable = False  # cached: shared by every call
    return arrays


@dataclasses.dataclass(frozen=True)
class ParityTask(_GeneratedTask):
    """Label = XOR of a random bit string; lengths uniform in ``[min_len, max_len]`` (min 1)."""

    name = "parity"

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return parity_example(rng, self.min_len, self.max_len)


@dataclasses.dataclass(frozen=True)
class BracketsTask(_GeneratedTask):
    """Label = whether a bracket string is balanced (50/50); even lengths in ``[min_len, max_len]``."""

    min_len: int = 2
    name = "brackets"
    min_len_floor = 2

    def __post_init__(self):
        super().__post_init__()
        if -(-self.min_len // 2) > self.max_len // 2:
            raise InputError(f"brackets options min_len={self.min_len}, max_len={self.max_len}: the range "
                             "must contain an even length (strings of brackets are balanced only at even lengths)")

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return brackets_example(rng, self.min_len, self.max_len)


__all__ = ["BracketsTask", "ParityTask", "brackets_example", "check_int", "classification_metrics",
           "dyck_word", "is_balanced", "pad_batches", "parity_example"]
