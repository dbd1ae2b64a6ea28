"""What the training loop needs from a model kind: a :class:`Problem`, and :class:`ExampleKind`, the
kind of every model trained on batches of independent examples (classifier, tagger, conditioned
generator, encoder-decoder).

A :class:`Problem` is one program's model and data as the loop in :mod:`rnn_jax.train` sees them
(vmapped trials share one; they differ only in what ``init`` makes of their own config)::

    params = problem.init(config, key)                       # a trial's parameters
    carry = problem.zero_carry(batch_size)                    # None: nothing carried between batches
    batch, new_epoch = problem.batch(config, step)            # a pure function of (config.seed, step)
    objective, (mean, carry) = problem.loss(params, carry, batch, dropout_key)
    evaluate = problem.evaluator(place=None, trials=False)    # evaluate(params, split) -> {"loss", ...}
    text = problem.sample(params, key, step, valid_loss)      # for samples.txt, or None

``seed_batches`` says whether the batches depend on ``config.seed`` (then the trials of one program
draw their own batches). ``data`` is what the run directory fingerprints (``corpus.json``): a corpus,
or an object with ``fingerprint()``. ``metrics`` names the evaluation's higher-is-better metrics
(``train.select_by = "valid_<metric>"`` may select by one of them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import cells as cells_lib
from rnn_jax import configs as cfg
from rnn_jax.errors import InputError

NOMINAL_EPOCH = 1000  # steps per "epoch" of a task that draws fresh training examples every step


def as_cell(value, field: str = "cell") -> cells_lib.Cell:
    """A model field given as a :class:`~rnn_jax.cells.Cell` or a spec string (``"lstm:forget_bias=1.0"``)."""
    if isinstance(value, cells_lib.Cell):
        return value
    if isinstance(value, str):
        return cells_lib.from_spec(value)
    raise InputError(f"{field} must be a Cell or a spec string (e.g. 'lstm'), got {value!r}")


def check_impl(impl: str) -> None:
    from rnn_jax import layers

    if impl not in layers.IMPLS:
        raise InputError(f"impl must be one of {', '.join(map(repr, layers.IMPLS))}; got {impl!r}")


def check_fields(model, positive: tuple = (), zero_default: tuple = (), choices: dict | None = None) -> None:
    """The common checks of an image model's fields (captioner, VQA): ``cell`` as a
    :class:`~rnn_jax.cells.Cell` (a spec string is converted), the ``positive`` integers, the
    ``zero_default`` integers (0 means ``hidden_size``), ``choices`` (field -> allowed values),
    ``dropout`` in ``[0, 1)`` and ``impl``; :class:`InputError` naming the field otherwise."""
    object.__setattr__(model, "cell", as_cell(model.cell))
    for name in positive:
        value = getattr(model, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    for name in zero_default:
        value = getattr(model, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{name} must be an integer >= 0 (0: hidden_size), got {value!r}")
    for name, allowed in (choices or {}).items():
        if getattr(model, name) not in allowed:
            raise InputError(f"{name} must be one of {', '.join(allowed)}; got {getattr(model, name)!r}")
    if not isinstance(model.dropout, (int, float)) or not 0.0 <= model.dropout < 1.0:
        raise InputError(f"dropout must be in [0, 1), got {model.dropout!r}")
    check_impl(model.impl)


def check_inputs(model, sizes: tuple) -> None:
    """The input fields of a model reading tokens or features (classifier, tagger): exactly one of
    ``input_size`` and ``vocab_size``; ``embed_size`` only with tokens (default ``hidden_size``); then
    ``sizes`` and the input sizes are positive integers. Sets ``model.cell`` from a spec string."""
    from rnn_jax import lm

    object.__setattr__(model, "cell", as_cell(model.cell))
    if (model.input_size is None) == (model.vocab_size is None):
        raise InputError("give exactly one of input_size (float features [B, T, F]) and vocab_size "
                         f"(int tokens [B, T]); got input_size={model.input_size!r}, "
                         f"vocab_size={model.vocab_size!r}")
    if model.vocab_size is None and model.embed_size is not None:
        raise InputError(f"embed_size={model.embed_size!r} needs token inputs (vocab_size); "
                         "features go to the first layer as they are")
    if model.vocab_size is not None and model.embed_size is None:
        object.__setattr__(model, "embed_size", model.hidden_size)
    inputs = ("input_size",) if model.vocab_size is None else ("vocab_size", "embed_size")
    lm.check_sizes(model, (*sizes, *inputs))
    check_impl(model.impl)


def make_cell(config):
    """The config's cell with the model block's initialisers."""
    m = config.model
    return cells_lib.from_spec(config.cell, init_scale=m.init_scale, kernel_init=m.kernel_init,
                               recurrent_init=m.recurrent_init)


class Problem:
    """Base of the problems (see the module docstring); subclasses set the attributes."""

    model: Any = None
    data: Any = None
    vocab: Any = None
    level: str = "example"
    task: str | None = None
    steps_per_epoch: int = 1
    uniform_loss: float = math.inf
    seed_batches: bool = True
    metrics: tuple = ()

    def describe(self) -> str:
        return f"{self.task} task"


# ----------------------------------------------------------------------------- batches of examples

@dataclasses.dataclass(frozen=True)
class ExampleKind:
    """A model kind trained on batches of independent examples drawn from a registered task
    (:mod:`rnn_jax.data.registry`).

    ``build(config, task) -> model``: the model (its ``init(key)`` and ``loss(params, batch,
    dropout_key) -> (mean, sums)``). ``eval_sums(model, task) -> fn(params, batch) -> sums``: the
    jit-compatible summable scalars of one evaluation batch (decoded metrics, never teacher-forced,
    for generators); ``task.metrics(total sums)`` turns their totals into ``{"loss", ...}``.
    ``uniform_loss(model, task)``: the loss of uniform predictions (divergence bound).
    ``sample(model, task, params, key) -> str | None`` for ``samples.txt``. ``options``: the model
    block's kind-specific fields and their allowed values (the first is the default); ``fixed``:
    common model fields the kind supports at one value only (refused otherwise, naming the field).
    The task's registry entry names its metrics. ``evaluator(problem, trials) -> fn(params, split)``
    replaces the summed evaluation when a metric is not a sum over batches (corpus BLEU, CIDEr).
    """

    name: str
    build: Callable
    eval_sums: Callable
    uniform_loss: Callable
    sample: Callable | None = None
    evaluator: Callable | None = None
    options: dict = dataclasses.field(default_factory=dict)
    fixed: dict = dataclasses.field(default_factory=dict)

    def check(self, config) -> None:
        from rnn_jax.data import registry

        d, t = config.data, config.train
        if d.kind not in registry.names(self.name):
            raise InputError(f"config.data.kind = {d.kind!r} cannot be trained by model.kind = {self.name!r}; it "
                             f"trains {', '.join(map(repr, registry.names(self.name)))}")
        entry = registry.get(d.kind)
        cfg.check_int("data.seed", d.get("seed", 0), minimum=0)
        cfg.check_choice("train.loss_reduction", t.loss_reduction, ("mean",))
        if t.num_epochs and entry.train_size is None:
            raise InputError(f"config.train.num_epochs = {t.num_epochs}: the {d.kind} task draws fresh training "
                             "examples every step (it has no epochs); set train.num_steps instead")
        for name, value in self.fixed.items():
            cfg.check_choice(f"model.{name}", config.model.get(name, value), (value,))
        for name, choices in self.options.items():
            cfg.check_choice(f"model.{name}", config.model.get(name, choices[0]), choices)
        task = registry.make(d.kind, d.get("seed", 0), d.get(d.kind) or {})
        try:
            jax.eval_shape(self.build(config, task).init, jax.random.PRNGKey(0))
        except ValueError as e:
            raise InputError(f"config.cell = {config.cell!r} with model.hidden_size={config.model.hidden_size}: "
                             f"{e}") from None

    def problem(self, config) -> "ExampleProblem":
        from rnn_jax.data import registry

        d = config.data
        task = registry.make(d.kind, d.get("seed", 0), d.get(d.kind) or {})
        return ExampleProblem(self, config, task, registry.get(d.kind))


class _Fingerprint:
    """The run directory's data fingerprint of a generated task: digests of its evaluation sets and
    of a first training batch (the task's options are in the config, checked too)."""

    def __init__(self, task, batch_size: int):
        self.task, self.batch_size = task, batch_size

    def fingerprint(self) -> dict:
        out = {}
        for split in ("valid", "test"):
            batches = self.task.eval_batches(split, self.batch_size)
            digest = hashlib.sha256()
            for batch in batches:
                for key in sorted(batch):
                    digest.update(key.encode() + np.ascontiguousarray(batch[key]).tobytes())
            out[split] = {"batches": len(batches), "sha256": digest.hexdigest()}
        first = self.task.train_batch(0, 0, 4)
        digest = hashlib.sha256()
        for key in sorted(first):
            digest.update(key.encode() + np.ascontiguousarray(first[key]).tobytes())
        out["train"] = {"first_batch_sha256": digest.hexdigest()}
        return out


class ExampleProblem(Problem):
    """Training on a registered task's example batches; nothing is carried between batches."""

    seed_batches = True

    def __init__(self, kind: ExampleKind, config, task, entry):
        self.kind, self.task_obj, self.config = kind, task, config
        self.task = entry.name
        self.model = kind.build(config, task)
        self.data = _Fingerprint(task, config.train.eval_batch_size)
        t = config.train
        # tasks that draw fresh examples have no epochs: a nominal one of NOMINAL_EPOCH steps (for
        # eval_every = 0 and epoch schedules), fixed so that a resume cannot change it
        self.steps_per_epoch = (max(1, entry.train_size(task) // t.batch_size) if entry.train_size is not None
                                else NOMINAL_EPOCH)
        self.uniform_loss = float(kind.uniform_loss(self.model, task))
        self.metrics = tuple(entry.metrics)
        self._eval_sums = kind.eval_sums(self.model, task)

    def describe(self) -> str:
        options = self.config.data.get(self.task) or {}
        shown = ", ".join(f"{k}={v}" for k, v in dict(options).items())
        return f"{self.task} task" + (f" ({shown})" if shown else "")

    def init(self, config, key):
        return self.kind.build(config, self.task_obj).init(key)

    def zero_carry(self, batch_size: int):
        return None

    def batch(self, config, step: int):
        return self.task_obj.train_batch(config.seed, step, config.train.batch_size), False

    def loss(self, params, carry, batch, key):
        objective, sums = self.model.loss(params, batch, dropout_key=key)
        # the reported (and divergence-checked) loss; a model whose objective adds a regulariser
        # (the captioner's attention penalty) reports the data term alone
        reported = getattr(self.model, "reported_loss", None)
        return objective, ((reported(sums) if reported is not None else objective), carry)

    def evaluator(self, place=None, trials: bool = False):
        if self.kind.evaluator is not None:
            return self.kind.evaluator(self, trials)
        return ExampleEvaluator(self, trials)

    def sample(self, params, key, step: int, valid_loss: float):
        if self.kind.sample is None or not self.config.train.sample_length:
            return None
        return self.kind.sample(self.model, self.task_obj, params, key)


class ExampleEvaluator:
    """``evaluator(params, split)``: the task's metrics over every example of the split, one jitted
    call per evaluation batch (the batches live on the device); with ``trials`` the parameters carry a
    leading trial axis and a list of per-trial dicts comes back."""

    def __init__(self, problem: ExampleProblem, trials: bool):
        self.task, self.trials = problem.task_obj, trials
        fn = problem._eval_sums
        self._sums = jax.jit(jax.vmap(fn, in_axes=(0, None)) if trials else fn)
        size = problem.config.train.eval_batch_size
        test_size = problem.config.train.test_batch_size or size
        self.batches = {split: [jax.tree.map(jnp.asarray, b) for b in self.task.eval_batches(split, n)]
                        for split, n in (("valid", size), ("test", test_size))}

    def __call__(self, params, split: str):
        total = None
        for batch in self.batches[split]:
            sums = self._sums(params, batch)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        total = jax.device_get(total)
        if not self.trials:
            return self.task.metrics(total)
        k = len(next(iter(total.values())))
        return [self.task.metrics({name: v[i] for name, v in total.items()}) for i in range(k)]
