r"""Generated sequence tasks of Jozefowicz, Zaremba & Sutskever (2015), as one character stream.

Every task is a language model over one continuous stream: examples are generated one by one,
each a pure function of ``(seed, split, index)``, and concatenated. Training cuts the stream into
contiguous streams and carries the hidden state across minibatches (truncated BPTT), so a cell
must clear what earlier examples left in its state by itself; nothing is reset between examples.

A task stream is a :class:`TaskCorpus`: the usual :class:`~rnn_jax.data.text.Corpus` (vocabulary
and ``train``/``valid``/``test`` token arrays) plus, for each split, boolean masks aligned with the
tokens. ``mask[i]`` is about predicting token ``i`` from the tokens before it:

* ``scored``: the positions the task's metric (and, by default, the training loss) counts;
* ``predictable`` (XML only): the closing-tag characters after ``</``;
* ``example``: the index of the example each token belongs to (for whole-answer accuracy).

Tasks
-----
*Arithmetic*: ``a op b = answer.`` with ``a, b`` of 1 to ``max_digits`` digits, ``op`` in
``+ -``, and 0 to ``max_distractors`` random lowercase letters after every input character
before ``=``. The paper's example (``max_digits=8``) reads ``3e36d9-h1h39f94eeh43keg3c=-13991064``;
here each answer ends with ``.``, so the stream is unambiguous. Scored: the answer characters and
the final ``.``. Operands are non-negative as in the paper's example (the answer has either
sign); ``negative_prob`` > 0 makes each operand negative with that probability (``3+-5=-2.``).

*XML*: the paper's generator. Starting from nothing, each iteration closes the most recent open
tag with probability 0.5 (or always after ``max_iters`` iterations), stopping when none is open;
otherwise it opens a new tag of 2 to 10 random lowercase letters. Example: ``<ab><cde></cde></ab>``.
Scored: every character; ``predictable``: the name and ``>`` of closing tags.

*Memorization*: ``num_symbols`` letters drawn from 26, ``=``, the same letters again, ``.``.
Scored: the reproduced letters.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Mapping

import numpy as np

from rnn_jax.data.text import Corpus, Vocab
from rnn_jax.errors import InputError

TASKS = ("arithmetic", "xml", "memorization")
SPLITS = ("train", "valid", "test")
LETTERS = string.ascii_lowercase


@dataclasses.dataclass(frozen=True)
class TaskCorpus(Corpus):
    """A :class:`Corpus` with per-split masks: ``marks[split][name]`` aligned with the tokens."""

    marks: Mapping[str, Mapping[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    task: str = ""

    def mask(self, split: str, name: str) -> np.ndarray | None:
        return self.marks.get(split, {}).get(name)


# ----------------------------------------------------------------------------- single examples
# Each generator returns (text, scored, predictable) with the masks as lists of bools per char.

def _digits(rng: np.random.Generator, max_digits: int) -> int:
    """A number of 1 to ``max_digits`` digits: the length uniform, then the value uniform."""
    n = int(rng.integers(1, max_digits + 1))
    low = 0 if n == 1 else 10 ** (n - 1)
    return int(rng.integers(low, 10 ** n))


def arithmetic_example(rng: np.random.Generator, max_digits: int = 8, max_distractors: int = 3,
                       negative_prob: float = 0.0):
    a, b = _digits(rng, max_digits), _digits(rng, max_digits)
    if negative_prob > 0:
        a = -a if rng.random() < negative_prob else a
        b = -b if rng.random() < negative_prob else b
    op = "+" if rng.random() < 0.5 else "-"
    answer = a + b if op == "+" else a - b
    question = f"{a}{op}{b}"
    counts = rng.integers(0, max_distractors + 1, size=len(question))
    letters = rng.integers(0, 26, size=int(counts.sum()))
    parts, used = [], 0
    for ch, k in zip(question, counts.tolist()):
        parts.append(ch)
        parts.append("".join(LETTERS[i] for i in letters[used:used + k].tolist()))
        used += k
    head = "".join(parts) + "="
    tail = f"{answer}."
    return head + tail, [False] * len(head) + [True] * len(tail), None


def xml_example(rng: np.random.Generator, max_iters: int = 50, min_len: int = 2, max_len: int = 10):
    text, predictable, stack = [], [], []
    it = 0
    while True:
        if rng.random() < 0.5 or it >= max_iters:
            if not stack:
                break
            name = stack.pop()
            text.append(f"</{name}>")
            predictable.append([False, False] + [True] * (len(name) + 1))
        else:
            n = int(rng.integers(min_len, max_len + 1))
            name = "".join(LETTERS[i] for i in rng.integers(0, 26, size=n))
            stack.append(name)
            text.append(f"<{name}>")
            predictable.append([False] * (n + 2))
        it += 1
    joined = "".join(text)
    flat = [p for part in predictable for p in part]
    return joined, [True] * len(joined), flat


def memorization_example(rng: np.random.Generator, num_symbols: int = 5, alphabet: int = 26):
    symbols = "".join(LETTERS[i] for i in rng.integers(0, alphabet, size=num_symbols))
    text = f"{symbols}={symbols}."
    scored = [False] * (num_symbols + 1) + [True] * num_symbols + [False]
    return text, scored, None


def _vocab(task: str) -> Vocab:
    if task == "arithmetic":
        return Vocab(tuple("0123456789+-=." + LETTERS), "char")
    if task == "xml":
        return Vocab(tuple("</>" + LETTERS), "char")
    if task == "memorization":
        return Vocab(tuple("=." + LETTERS), "char")
    raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")


BLOCK = 256  # examples drawn from one random stream (seeding a generator costs more than an example)


def _generator(task: str):
    makers = {"arithmetic": arithmetic_example, "xml": xml_example, "memorization": memorization_example}
    if task not in makers:
        raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return makers[task]


def _block(task: str, seed: int, split: str, block: int, options: Mapping):
    """Examples ``block·BLOCK ... (block+1)·BLOCK - 1``, from the generator seeded ``(seed, split, block)``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    make = _generator(task)
    rng = np.random.default_rng([seed, SPLITS.index(split), block])
    return [make(rng, **options) for _ in range(BLOCK)]


def example(task: str, seed: int, split: str, index: int, **options):
    """Example ``index`` of ``split`` for ``seed``: ``(text, scored, predictable or None)``."""
    check_options(task, options)
    return _block(task, seed, split, index // BLOCK, options)[index % BLOCK]


def check_options(task: str, options: Mapping) -> dict:
    """Validate a task's options (names and ranges); returns them as a plain dict."""
    allowed = {"arithmetic": ("max_digits", "max_distractors", "negative_prob"),
               "xml": ("max_iters", "min_len", "max_len"),
               "memorization": ("num_symbols", "alphabet")}
    if task not in allowed:
        raise InputError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    options = dict(options)
    for key, value in options.items():
        if key not in allowed[task]:
            raise InputError(f"unknown option {key!r} for task {task!r}; allowed: {', '.join(allowed[task])}")
        if key == "negative_prob":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                raise InputError(f"{task} option negative_prob={value!r}: must be a number in [0, 1]")
            continue
        minimum = 0 if key == "max_distractors" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise InputError(f"{task} option {key}={value!r}: must be an integer >= {minimum}")
    if task == "xml" and options.get("min_len", 2) > options.get("max_len", 10):
        raise InputError(f"xml options min_len={options.get('min_len', 2)} > max_len={options.get('max_len', 10)}")
    if task == "memorization" and options.get("alphabet", 26) > 26:
        raise InputError(f"memorization option alphabet={options['alphabet']}: at most 26 letters")
    if task == "arithmetic" and options.get("max_digits", 8) > 18:
        raise InputError(f"arithmetic option max_digits={options['max_digits']}: at most 18")
    return options


def task_stream(task: str, seed: int, split: str, num_chars: int, **options):
    """Examples ``0, 1, ...`` of ``split`` concatenated until at least ``num_chars`` characters.

    Returns ``(text, marks)`` where ``marks`` maps ``scored``/``example`` (and ``predictable`` for
    XML) to arrays with one entry per character.
    """
    if not isinstance(num_chars, int) or num_chars < 1:
        raise InputError(f"num_chars must be a positive integer, got {num_chars!r}")
    check_options(task, options)
    texts, scored, predictable, ids = [], [], [], []
    total, index, block = 0, 0, []
    while total < num_chars:
        if index % BLOCK == 0:
            block = _block(task, seed, split, index // BLOCK, options)
        text, s, p = block[index % BLOCK]
        texts.append(text)
        scored.extend(s)
        if p is not None:
            predictable.extend(p)
        ids.append(np.full(len(text), index, np.int32))
        total += len(text)
        index += 1
    marks = {"scored": np.asarray(scored, bool), "example": np.concatenate(ids)}
    if predictable:
        marks["predictable"] = np.asarray(predictable, bool)
    return "".join(texts), marks


def task_corpus(task: str, seed: int = 0, num_chars: Mapping[str, int] | None = None,
                **options) -> TaskCorpus:
    """The three splits of a task as a :class:`TaskCorpus` (sizes in characters per split)."""
    vocab = _vocab(task)
    given = dict(num_chars or {})
    unknown = sorted(set(given) - set(SPLITS))
    if unknown:
        raise InputError(f"num_chars: unknown split(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(SPLITS)}")
    sizes = {"train": 200_000, "valid": 20_000, "test": 20_000, **given}
    arrays, marks = {}, {}
    for split in SPLITS:
        text, m = task_stream(task, seed, split, sizes[split], **options)
        arrays[split] = vocab.encode(text)
        marks[split] = m
    return TaskCorpus(vocab, arrays["train"], arrays["valid"], arrays["test"], marks=marks, task=task)


def accuracies(task: str, correct: np.ndarray, positions: np.ndarray, marks: Mapping[str, np.ndarray]) -> dict:
    """The task's metrics from per-target correctness.

    ``correct[k]`` says whether the model's most likely next token equals token ``positions[k]``
    of the split (the prediction of that token from the ones before it). Returns ``accuracy``
    (scored positions) and, for arithmetic and memorization, ``answer_accuracy`` (examples whose
    scored characters are all right, among those fully evaluated), for XML
    ``predictable_accuracy``.
    """
    correct = np.asarray(correct, bool)
    positions = np.asarray(positions)
    scored = marks["scored"][positions]
    out = {"accuracy": float(correct[scored].mean()) if scored.any() else float("nan")}
    if "predictable" in marks:
        p = marks["predictable"][positions]
        out["predictable_accuracy"] = float(correct[p].mean()) if p.any() else float("nan")
    if task in ("arithmetic", "memorization"):
        ex = marks["example"][positions][scored]
        ok = correct[scored]
        if ex.size:
            ids, inverse, counts = np.unique(ex, return_inverse=True, return_counts=True)
            wrong = np.bincount(inverse, weights=~ok, minlength=len(ids))
            # only examples all of whose scored characters were evaluated
            full = np.bincount(marks["example"][marks["scored"]], minlength=int(ids.max()) + 1)[ids] == counts
            out["answer_accuracy"] = float((wrong[full] == 0).mean()) if full.any() else float("nan")
        else:
            out["answer_accuracy"] = float("nan")
    return out
