r"""Generated synced many-to-many tasks (one label per input step) that need memory.

*Bracket depth* (:class:`DepthTask`, ``"bracket_depth"``): the input is a string over ``(``
(token 0) and ``)`` (token 1), plus, with ``distractors = k > 0``, the letters ``a``, ``b``, ...
(tokens ``2 .. k+1``), which change nothing. The label at step ``t`` is the state of a bracket
parser after reading character ``t``::

    d_t   = #"(" − #")" in characters 0..t          (the nesting depth; letters count nothing)
    y_t   = U                     if d_s < 0 for some s ≤ t  ("unbalanced so far", U = max_depth + 1)
          = min(d_t, max_depth)   otherwise

So labels ``0 .. max_depth`` are depths (the last one meaning "max_depth or deeper") and
``num_classes = max_depth + 2``. ``U`` is absorbing: once a ``)`` has closed more than was opened,
no continuation can balance the prefix, and every later step is ``U`` too. The clipping is of the
label only: after ``max_depth + 2`` opening brackets it takes two closing ones to get back to
the label ``max_depth − 1``, so a model must count past ``max_depth``.

Strings. The length is uniform in ``[min_len, max_len]``. With ``distractors > 0`` each character
is, with probability :data:`DISTRACTOR_RATE`, a letter drawn uniformly from the ``k``; the other
characters are brackets. Half of the strings (a fair coin per string) are *clean*: their brackets
follow a walk reflected at depth 0 (``(`` at depth 0, else ``(`` or ``)`` with probability 1/2),
so they never become unbalanced; the others are *free*: each bracket ``(`` or ``)`` with
probability 1/2, which usually become unbalanced somewhere. Every label occurs, and no step's label
follows from the step index alone.

Splits and purity as in :mod:`rnn_jax.data.sequence_tasks`: ``train_batch(seed, step,
batch_size)`` draws from ``np.random.default_rng([seed, step])``; example ``i`` of an evaluation
split comes from ``np.random.default_rng([task.seed, 0x7A6, split_id, i])`` (``split_id`` 1 for
valid, 2 for test; ``valid_size``/``test_size`` examples), so the splits are fixed by the task's
``seed`` and do not depend on their sizes. Short strings recur across splits (there are only so
many), which is harmless for a rule-based task.

A batch holds ``inputs`` ``[B, T]`` int32 tokens (``T = num_steps = max_len``; 0 past each length),
``lengths`` ``[B]`` int32, ``labels`` ``[B, T]`` int32 (0 past each length, ignored by the loss)
and ``weight`` ``[B]`` float32 (1 for real examples, 0 for the padding rows that fill the last
evaluation batch). The model is :class:`rnn_jax.models.tagger.SequenceTagger` with
``**task.model_options()``; :meth:`DepthTask.metrics` turns its summed loss terms into ``loss``
(nats per valid step), ``accuracy`` (per valid step) and ``sequence_accuracy`` (strings with every
step right).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.data.sequence_tasks import EVAL_SPLITS, MAX_LEN_LIMIT, check_int, check_split, pad_batches
from rnn_jax.errors import InputError

TAGGING_TASKS = ("bracket_depth",)
DISTRACTOR_RATE = 0.25  # the share of letters among the characters when distractors > 0
MAX_DISTRACTORS = 26    # a .. z
MAX_DEPTH_LIMIT = 1000
_EVAL_TAG = 0x7A6       # keeps evaluation seeds [seed, tag, split, i] apart from training's [seed, step]
OPEN, CLOSE = 0, 1


def depth_labels(tokens, max_depth: int) -> np.ndarray:
    """The per-step labels of a token string (module docstring): clipped depth, or ``max_depth + 1``
    from the first step that closes more than was opened."""
    tokens = np.asarray(tokens, np.int64)
    step = np.where(tokens == OPEN, 1, np.where(tokens == CLOSE, -1, 0))
    depth = np.cumsum(step)
    broken = np.minimum.accumulate(depth) < 0 if depth.size else np.zeros(0, bool)
    return np.where(broken, max_depth + 1, np.minimum(depth, max_depth)).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class DepthTask:
    """Label each step of a bracket string with the parser's depth (module docstring)."""

    min_len: int = 2
    max_len: int = 20
    max_depth: int = 4
    distractors: int = 0
    valid_size: int = 1000
    test_size: int = 1000
    seed: int = 0

    name = "bracket_depth"
    input_size = None

    def __post_init__(self):
        what = f"{self.name} option"
        check_int("min_len", self.min_len, 1, MAX_LEN_LIMIT, what=what)
        check_int("max_len", self.max_len, self.min_len, MAX_LEN_LIMIT, what=what)
        check_int("max_depth", self.max_depth, 1, MAX_DEPTH_LIMIT, what=what)
        check_int("distractors", self.distractors, 0, MAX_DISTRACTORS, what=what)
        check_int("valid_size", self.valid_size, 1, what=what)
        check_int("test_size", self.test_size, 1, what=what)
        check_int("seed", self.seed, 0, what=what)

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return 2 + self.distractors

    @property
    def num_classes(self) -> int:
        """Depths ``0 .. max_depth`` and "unbalanced so far" (``max_depth + 1``)."""
        return self.max_depth + 2

    @property
    def unbalanced(self) -> int:
        """The label of "unbalanced so far"."""
        return self.max_depth + 1

    @property
    def num_steps(self) -> int:
        """``T`` of every batch: ``max_len``."""
        return self.max_len

    @property
    def uniform_loss(self) -> float:
        """``ln C``: the loss per step of uniform predictions."""
        return math.log(self.num_classes)

    @property
    def symbols(self) -> str:
        """The character of each token."""
        return "()" + string.ascii_lowercase[:self.distractors]

    def model_options(self) -> dict:
        """Options of :class:`~rnn_jax.models.tagger.SequenceTagger` that the task fixes."""
        return {"vocab_size": self.vocab_size, "num_classes": self.num_classes}

    # ---- examples and batches ------------------------------------------------------------------

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens, labels)``, both ``[n]`` int32 (module docstring)."""
        n = int(rng.integers(self.min_len, self.max_len + 1))
        clean = rng.random() < 0.5
        letter = (rng.random(n) < DISTRACTOR_RATE if self.distractors
                  else np.zeros(n, bool))
        letters = rng.integers(2, 2 + max(self.distractors, 1), size=n)
        coins = rng.random(n) < 0.5
        tokens = np.empty(n, np.int32)
        depth = 0
        for t in range(n):
            if letter[t]:
                tokens[t] = letters[t]
                continue
            opens = coins[t] or (clean and depth == 0)
            tokens[t] = OPEN if opens else CLOSE
            depth += 1 if opens else -1
        return tokens, depth_labels(tokens, self.max_depth)

    def eval_example(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Example ``index`` of an evaluation split, a pure function of ``(seed, split, index)``."""
        split_id = 1 + EVAL_SPLITS.index(check_split(split, EVAL_SPLITS))
        return self.example(np.random.default_rng([self.seed, _EVAL_TAG, split_id, index]))

    def num_examples(self, split: str) -> int:
        return self.valid_size if check_split(split, EVAL_SPLITS) == "valid" else self.test_size

    def stack(self, examples) -> dict:
        """Examples ``[(tokens, labels), ...]`` as a batch without ``weight`` (zero-padded to ``T``)."""
        B, T = len(examples), self.num_steps
        batch = {"inputs": np.zeros((B, T), np.int32), "lengths": np.zeros(B, np.int32),
                 "labels": np.zeros((B, T), np.int32)}
        for b, (tokens, labels) in enumerate(examples):
            batch["inputs"][b, :len(tokens)] = tokens
            batch["labels"][b, :len(labels)] = labels
            batch["lengths"][b] = len(tokens)
        return batch

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` fresh examples from ``np.random.default_rng([seed, step])``."""
        check_int("batch_size", batch_size, 1, what="argument")
        rng = np.random.default_rng([check_int("seed", seed, 0, what="argument"),
                                     check_int("step", step, 0, what="argument")])
        batch = self.stack([self.example(rng) for _ in range(batch_size)])
        batch["weight"] = np.ones(batch_size, np.float32)
        return batch

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """The whole split once, in index order, padded to full batches (padding rows: weight 0)."""
        return pad_batches(_eval_split(self, check_split(split, EVAL_SPLITS)), batch_size)

    # ---- evaluation ----------------------------------------------------------------------------

    @staticmethod
    def eval_sums(model, params, batch: Mapping) -> dict:
        """The model's summed loss terms on ``batch`` (no dropout); jit-compatible, e.g.
        ``jax.jit(functools.partial(task.eval_sums, model))``."""
        return model.loss(params, batch)[1]

    @staticmethod
    def metrics(sums: Mapping) -> dict:
        """``loss`` (nll / count), ``accuracy`` (correct / count) and ``sequence_accuracy``
        (correct_sequences / sequences) from sums added over batches; NaN where a count is 0."""
        missing = sorted({"nll", "count", "correct", "correct_sequences", "sequences"} - set(sums))
        if missing:
            raise ValueError(f"sums lack {', '.join(missing)}; got keys {sorted(sums)}")
        ratio = lambda a, b: float(sums[a]) / float(sums[b]) if float(sums[b]) > 0 else float("nan")
        return {"loss": ratio("nll", "count"), "accuracy": ratio("correct", "count"),
                "sequence_accuracy": ratio("correct_sequences", "sequences")}

    def render_labels(self, labels) -> list[str]:
        """Labels as short strings: the depth, ``max_depth`` as ``"4+"`` (for ``max_depth=4``), and
        ``"!"`` for "unbalanced so far"."""
        out = []
        for y in np.asarray(labels).tolist():
            out.append("!" if y == self.unbalanced else f"{y}+" if y == self.max_depth else str(y))
        return out

    def sample_text(self, model, params, key, num_examples: int = 4, split: str = "valid") -> str:
        """``num_examples`` examples of ``split`` (chosen by ``key``) with the model's predicted tags
        under the true ones, one column per step, for a run's ``samples.txt``."""
        check_int("num_examples", num_examples, 1, what="argument")
        size = self.num_examples(split)
        index = np.asarray(jax.random.choice(key, size, (min(num_examples, size),), replace=False))
        index = np.sort(index)
        batch = self.stack([self.eval_example(split, int(i)) for i in index])
        pred = np.asarray(jnp.argmax(jax.jit(model.apply)(params, batch), axis=-1))
        blocks = []
        for row, i in enumerate(index.tolist()):
            n = int(batch["lengths"][row])
            chars = [self.symbols[k] for k in batch["inputs"][row, :n].tolist()]
            true = self.render_labels(batch["labels"][row, :n])
            guess = self.render_labels(pred[row, :n])
            width = max(len(s) for s in chars + true + guess)
            line = lambda cells: " ".join(s.rjust(width) for s in cells)
            right = sum(a == b for a, b in zip(true, guess))
            blocks.append(f"{split}[{i}]  {right}/{n} steps right\n"
                          f"  input: {line(chars)}\n  true:  {line(true)}\n  pred:  {line(guess)}")
        return "\n".join(blocks) + "\n"


@functools.lru_cache(maxsize=16)
def _eval_split(task: DepthTask, split: str) -> dict:
    arrays = task.stack([task.eval_example(split, i) for i in range(task.num_examples(split))])
    for a in arrays.values():
        a.flags.writeable = False  # cached: shared by every call
    return arrays


def make_task(name: str, seed: int = 0, **options) -> DepthTask:
    """The tagging task ``name`` with ``options`` (:class:`DepthTask`'s fields but ``seed``);
    unknown names and options raise :class:`~rnn_jax.errors.InputError`."""
    if name not in TAGGING_TASKS:
        raise InputError(f"tagging task must be one of {', '.join(map(repr, TAGGING_TASKS))}; got {name!r}")
    allowed = [f.name for f in dataclasses.fields(DepthTask) if f.name != "seed"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(map(repr, unknown))} for tagging task {name!r};"
                         f" allowed: {', '.join(allowed)}")
    return DepthTask(seed=seed, **options)


__all__ = ["DISTRACTOR_RATE", "DepthTask", "TAGGING_TASKS", "depth_labels", "make_task"]
