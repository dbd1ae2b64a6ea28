"""The task registry: every generated task (and scikit-learn's digits) by name, one entry each.

A config names a task with ``data.kind = NAME`` and gives its options in the block of that name
(``data.parity = {"max_len": 50}``); ``data.seed`` is the task's seed (the evaluation sets depend on
it, not on the run's seed). :func:`make` builds the task object, whose interface the trainer uses:

* ``train_batch(seed, step, batch_size) -> dict`` of NumPy arrays, a pure function of its arguments;
* ``eval_batches(split, batch_size) -> list[dict]``: ``"valid"`` or ``"test"`` once, padded to full
  batches with rows of ``weight`` 0;
* ``metrics(sums) -> dict``: ``{"loss", ...}`` from sums added over evaluation batches;
* whatever its model kind reads to size the model (``num_classes``, ``vocab_size``, ...).

Adding a task: write its file under ``rnn_jax/data/`` with that interface, and add one
:class:`TaskEntry` below naming the model kind that trains it (docs/design.md, "Adding a task").

The Jozefowicz stream tasks (``arithmetic``, ``xml``, ``memorization``) are listed here too (model
kind ``lm``); they are one character stream rather than batches of examples, and
:mod:`rnn_jax.data.tasks` builds them.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Mapping

from rnn_jax.errors import InputError


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One task: ``make(seed, **options) -> task``; ``model_kind`` trains it; ``metrics`` are its
    higher-is-better evaluation metrics (the first selects the best checkpoint by default);
    ``train_size(task)`` is the size of a fixed training set (``None``: fresh examples every step)."""

    name: str
    model_kind: str
    make: Callable
    metrics: tuple
    train_size: Callable | None = None
    doc: str = ""


def _digits(seed, mode="row"):
    from rnn_jax.data.digits import DigitsTask

    return DigitsTask(mode=mode)


def _dataclass_task(cls, name: str, seed: int, options: Mapping):
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"config.data.{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
                         f"allowed: {', '.join(allowed)}")
    return cls(seed=seed, **options)


def _parity(seed, **options):
    from rnn_jax.data.sequence_tasks import ParityTask

    return _dataclass_task(ParityTask, "parity", seed, options)


def _brackets(seed, **options):
    from rnn_jax.data.sequence_tasks import BracketsTask

    return _dataclass_task(BracketsTask, "brackets", seed, options)


def _seq2seq(name):
    def make(seed, **options):
        from rnn_jax.data.seq2seq_tasks import make_task

        return make_task(name, seed, **options)
    return make


def _conditioned(name):
    def make(seed, **options):
        from rnn_jax.data.conditioned_tasks import make_task

        return make_task(name, seed, **options)
    return make


def _tagging(name):
    def make(seed, **options):
        from rnn_jax.data.tagging_tasks import make_task

        return make_task(name, seed, **options)
    return make


def _scenes(seed, **options):
    from rnn_jax.data.scenes import DigitScenesTask

    return _dataclass_task(DigitScenesTask, "digit_scenes", seed, options)


def _karpathy(seed, **options):
    from rnn_jax.data.karpathy import KarpathyTask

    return _dataclass_task(KarpathyTask, "karpathy", seed, options)


def _sort_of_clevr(seed, **options):
    from rnn_jax.data.sort_of_clevr import make_task

    return make_task(seed, **options)


def _stream(name):
    def make(seed, **options):
        raise InputError(f"{name} is a character-stream task: the lm kind builds it (rnn_jax.data.tasks)")
    return make


TASKS: dict[str, TaskEntry] = {e.name: e for e in (
    TaskEntry("arithmetic", "lm", _stream("arithmetic"), ("accuracy",), doc="Jozefowicz: a op b = answer."),
    TaskEntry("xml", "lm", _stream("xml"), ("accuracy",), doc="Jozefowicz: nested XML tags"),
    TaskEntry("memorization", "lm", _stream("memorization"), ("accuracy",), doc="Jozefowicz: repeat the letters"),
    TaskEntry("digits", "classifier", _digits, ("accuracy",), train_size=lambda task: task.num_examples("train"),
              doc="scikit-learn's 8x8 digits read row by row (mode=row) or pixel by pixel (mode=pixel)"),
    TaskEntry("parity", "classifier", _parity, ("accuracy",), doc="XOR of a bit string"),
    TaskEntry("brackets", "classifier", _brackets, ("accuracy",), doc="is a bracket string balanced"),
    TaskEntry("bracket_depth", "tagger", _tagging("bracket_depth"), ("accuracy", "sequence_accuracy"),
              doc="the nesting depth after every bracket"),
    TaskEntry("digit_rows", "conditioned", _conditioned("digit_rows"), (),
              doc="draw a digit of a given class row by row"),
    TaskEntry("spell", "conditioned", _conditioned("spell"), ("sequence_accuracy", "token_accuracy"),
              doc="spell a number in English words"),
    TaskEntry("reverse", "seq2seq", _seq2seq("reverse"), ("sequence_accuracy", "token_accuracy"),
              doc="the source backwards"),
    TaskEntry("sort", "seq2seq", _seq2seq("sort"), ("sequence_accuracy", "token_accuracy"), doc="the source sorted"),
    TaskEntry("addition", "seq2seq", _seq2seq("addition"), ("sequence_accuracy", "token_accuracy"),
              doc="the sum of two numbers written as digits"),
    TaskEntry("digit_scenes", "caption", _scenes, ("bleu_4", "cider_d", "rouge_l", "attribute_recall"),
              doc="caption coloured handwritten digits on a canvas ('a red three left of a blue seven')"),
    TaskEntry("karpathy", "caption", _karpathy, ("bleu_4", "cider_d", "rouge_l"),
              train_size=lambda task: task.num_images("train"),
              doc="Flickr8k/30k/COCO in the Karpathy-split JSON layout (images or precomputed features)"),
    TaskEntry("sort_of_clevr", "vqa", _sort_of_clevr, ("accuracy", "relational_accuracy", "nonrelational_accuracy"),
              doc="Sort-of-CLEVR questions about coloured squares and circles"),
)}


def names(model_kind: str | None = None) -> tuple:
    return tuple(name for name, e in TASKS.items() if model_kind is None or e.model_kind == model_kind)


def get(name: str) -> TaskEntry:
    if name not in TASKS:
        raise InputError(f"task {name!r}: must be one of {', '.join(TASKS)}")
    return TASKS[name]


def make(name: str, seed: int = 0, options: Mapping | None = None):
    """The task ``name`` with ``options`` (checked by the task; an unknown option is refused naming
    the allowed ones)."""
    entry = get(name)
    options = dict(options or {})
    signature = inspect.signature(entry.make)
    if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        allowed = [p for p in signature.parameters if p != "seed"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise InputError(f"config.data.{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(allowed)}")
    try:
        return entry.make(seed, **options)
    except InputError as e:
        message = str(e)
        raise InputError(message if message.startswith("config.") else f"config.data.{name}: {message}") from None
