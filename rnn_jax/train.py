"""The one training loop: plain runs and vmapped trials, every model kind, runs that resume exactly.

The optimizer and schedules are :mod:`rnn_jax.optim`'s, evaluation is the model kind's (see
:mod:`rnn_jax.models`), and the run directory's files and lock are :mod:`rnn_jax.rundir`'s (names
such as ``train.make_optimizer``, ``train.Evaluator`` and ``train.make_model`` are imported here too,
so older code keeps working).

``train_and_evaluate(config, workdir)`` is the whole run (the absl main in ``experiments/train.py``
only parses flags). ``config.model.kind`` picks the model kind (or ``data.kind`` implies it); the
kind gives a :class:`~rnn_jax.models.base.Problem` (model, data, batches, loss, evaluator, samples),
and :func:`run_loop` trains it. :mod:`rnn_jax.trials` drives the same loop with K trials in one
vmapped program; each run directory has its :class:`Recorder`.

A run directory holds ``config.json``, ``vocab.json`` (token data), ``corpus.json`` (the data's
fingerprint), ``metrics.jsonl`` (one JSON object per line: a training record for every step, an
evaluation record at every evaluation), ``samples.txt``, ``checkpoints/{latest,best}`` and, when
the run ends, ``result.json`` (written atomically) with ``status`` = ``completed``, ``diverged`` or
``failed``.

Starting in a directory that has a checkpoint resumes from it: parameters, optimizer state, step,
the carried hidden state and the plateau-schedule counters are restored, and the data order is a
pure function of ``(seed, step)``, so the final parameters equal those of an uninterrupted run bit
for bit (on CPU). Records that the stopped run wrote after its last checkpoint are dropped from
``metrics.jsonl`` and ``samples.txt`` on resume, since the resumed run writes them again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rnn_jax import cells as cells_lib
from rnn_jax import configs as cfg
from rnn_jax import lm as lm_lib
from rnn_jax import models as models_lib
from rnn_jax import rundir
from rnn_jax.checkpoint import RunCheckpoints, UnreadableCheckpoints
from rnn_jax.data import registry as task_registry
from rnn_jax.data.text import Vocab
from rnn_jax.errors import InputError
from rnn_jax.evaluate import Evaluator, make_eval_fn, nll_fn, pieces_protocol, task_loss_mask  # noqa: F401
from rnn_jax.models.base import Problem
from rnn_jax.models.streams import (  # noqa: F401
                                    BPTT_MODES,
                                    DATA_KINDS,
                                    LOSS_ON,
                                    LOSS_REDUCTIONS,
                                    MUSIC_PROTOCOLS,
                                    TrainStreams,
                                    append_sample,
                                    check_data_fits,
                                    load_data,
                                    make_model,
                                    stream_loss,
)
from rnn_jax.models.streams import uniform_loss as _model_uniform_loss
from rnn_jax.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule, plateau_update  # noqa: F401

DIVERGE_FACTOR = 10.0  # default of train.diverge_factor


# ----------------------------------------------------------------------------- config checks

def selectable(config) -> tuple:
    """The values ``train.select_by`` may take for this config: ``valid_loss``, and ``valid_<metric>``
    for each higher-is-better metric of its task."""
    entry = task_registry.TASKS.get(config.data.kind)
    return ("valid_loss",) + tuple(f"valid_{m}" for m in (entry.metrics if entry else ()))


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check every field the trainer reads; raise ``InputError`` naming the field and the allowed values."""
    try:
        cells_lib.parse_spec(config.cell)
    except ValueError as e:
        raise InputError(f"config.cell = {config.cell!r}: {e}") from None
    cfg.check_int("seed", config.seed, minimum=0)
    cfg.check_int("trials_per_program", config.get("trials_per_program", 1))
    m, t, o = config.model, config.train, config.optim
    for name in ("embed_size", "hidden_size", "num_layers"):
        cfg.check_int(f"model.{name}", m[name])
    cfg.check_number("model.dropout", m.dropout, 0.0, 1.0)
    for name in ("init_scale", "embed_scale", "output_scale"):
        cfg.check_number(f"model.{name}", m[name], strict=True)
    cfg.check_choice("model.impl", m.impl, ("fused", "autodiff", "reference"))
    cfg.check_choice("model.variational", m.variational, (False, True))
    if config.data.kind not in DATA_KINDS and config.data.kind not in task_registry.TASKS:
        cfg.check_choice("data.kind", config.data.kind,
                         DATA_KINDS + tuple(n for n in task_registry.names() if n not in DATA_KINDS))
    cfg.check_choice("train.select_by", t.get("select_by", "valid_loss"), selectable(config))
    cfg.check_choice("train.data_parallel", t.get("data_parallel", False), (False, True))
    check_data_parallel(config)
    for name in ("batch_size", "seq_len", "eval_batch_size", "log_every", "max_to_keep"):
        cfg.check_int(f"train.{name}", t[name])
    cfg.check_int("train.test_batch_size", t.test_batch_size, minimum=0)
    for name in ("eval_every", "checkpoint_every"):  # 0: once per epoch
        cfg.check_int(f"train.{name}", t[name], minimum=0)
    cfg.check_int("train.num_steps", t.num_steps, minimum=0)
    cfg.check_int("train.num_epochs", t.num_epochs, minimum=0)
    if t.num_steps == 0 and t.num_epochs == 0:
        raise InputError("config.train.num_steps and config.train.num_epochs are both 0: set one")
    cfg.check_int("train.sample_length", t.sample_length, minimum=0)
    cfg.check_number("train.diverge_factor", t.get("diverge_factor", DIVERGE_FACTOR))
    cfg.check_number("train.sample_temperature", t.sample_temperature, strict=True)
    cfg.check_choice("optim.name", o.name, OPTIMIZERS)
    cfg.check_number("optim.learning_rate", o.learning_rate, strict=True)
    cfg.check_number("optim.max_norm", o.max_norm, strict=True)
    cfg.check_number("optim.weight_decay", o.weight_decay)
    cfg.check_number("optim.momentum", o.momentum, 0.0, 1.0)
    for name in ("b1", "b2", "rmsprop_decay"):
        cfg.check_number(f"optim.{name}", o[name], 0.0, 1.0)
    cfg.check_number("optim.eps", o.eps, strict=True)
    s = o.schedule
    cfg.check_choice("optim.schedule.name", s.name, SCHEDULES)
    cfg.check_number("optim.schedule.decay_factor", s.decay_factor, minimum=1.0)
    cfg.check_int("optim.schedule.decay_start_epoch", s.decay_start_epoch, minimum=1)
    cfg.check_int("optim.schedule.patience", s.patience, minimum=0)
    cfg.check_int("optim.schedule.max_halvings", s.max_halvings, minimum=0)
    cfg.check_int("optim.schedule.warmup_steps", s.warmup_steps, minimum=0)
    cfg.check_number("optim.schedule.decay_begin", s.decay_begin, 0.0, 1.0)
    cfg.check_number("optim.schedule.end_fraction", s.end_fraction, 0.0)
    models_lib.for_config(config).check(config)  # the data block and the model against the cell


def make_problem(config):
    """The config's :class:`~rnn_jax.models.base.Problem` (loads or generates its data)."""
    return models_lib.for_config(config).problem(config)


# ----------------------------------------------------------------------------- steps

def uniform_loss(model) -> float:
    """See :func:`rnn_jax.models.streams.uniform_loss`; a problem gives its own."""
    return model.uniform_loss if isinstance(model, Problem) else _model_uniform_loss(model)


def diverge_bound(config, problem) -> float:
    """The training loss above which a run counts as diverged: ``train.diverge_factor`` times the
    loss of uniform predictions (a model that predicts worse than that many times chance is not
    training); ``inf`` when the factor is 0 (then only non-finite values count). ``problem`` is a
    :class:`~rnn_jax.models.base.Problem` or a stream model."""
    factor = float(config.train.get("diverge_factor", DIVERGE_FACTOR))
    return factor * uniform_loss(problem) if factor > 0 else math.inf


def step_fn(loss, max_loss: float = math.inf):
    """The training step, unjitted, with the optimizer and clip norm as arguments: ``(params,
    opt_state, carry, batch, key, optimizer, max_norm) -> (params, opt_state, carry, metrics)``.

    ``loss(params, carry, batch, key) -> (objective, (mean, carry))`` is the problem's. The incoming
    carry is a constant (``stop_gradient``): gradients flow through this batch only. The logged
    ``loss`` is the mean per scored unit. ``finite`` says whether the loss, the gradient norm and
    the new parameters are all finite and the loss is at most ``max_loss`` (see
    :func:`diverge_bound`); a run stops as diverged where it is false. Vmapped trials
    (:mod:`rnn_jax.trials`) map it over per-trial hyperparameters.
    """

    def step(params, opt_state, carry, batch, key, optimizer, max_norm):
        carry = jax.lax.stop_gradient(carry)
        (_, (mean, carry)), grads = jax.value_and_grad(loss, has_aux=True)(params, carry, batch, key)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(mean) & jnp.isfinite(grad_norm) & (mean <= max_loss)
        for leaf in jax.tree.leaves(params):
            finite &= jnp.all(jnp.isfinite(leaf))
        metrics = {"loss": mean, "grad_norm": grad_norm, "clipped": grad_norm > max_norm,
                   "learning_rate": opt_state.hyperparams["learning_rate"], "finite": finite}
        return params, opt_state, carry, metrics

    return step


def make_train_step(model: lm_lib.LanguageModel, optimizer, max_norm: float,
                    loss_reduction: str = "mean", max_loss: float = math.inf):
    """jit ``(params, opt_state, carry, inputs, targets, key, weights=None, resets=None) -> (params,
    opt_state, carry, metrics)`` of a stream model (:func:`step_fn` of
    :func:`~rnn_jax.models.streams.stream_loss`). ``weights`` (``[B, T]``, 0/1) restricts the loss
    to some targets; ``resets`` (``[B, T]``, bool) zeroes a sequence's carry before a step."""
    step = step_fn(stream_loss(model, loss_reduction), max_loss)

    @jax.jit
    def train_step(params, opt_state, carry, inputs, targets, key, weights=None, resets=None):
        batch = {"inputs": inputs, "targets": targets, "weights": weights, "resets": resets}
        return step(params, opt_state, carry, batch, key, optimizer, max_norm)

    return train_step


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress lines: steps/s and ETA over training time only (the compiling first step,
    evaluation and checkpointing excluded), and the wall clock since this process started the run."""

    def __init__(self, first_step: int, num_steps: int):
        self.first, self.total = first_step, num_steps
        self.train_time = 0.0
        self._rate_origin = None  # training seconds at the step the rate counts from
        self._mark = self._start = time.perf_counter()
        self._paused = False

    def pause(self):
        self.train_time += time.perf_counter() - self._mark
        self._paused = True

    def resume(self):
        self._mark = time.perf_counter()
        self._paused = False

    def elapsed(self) -> float:
        """Training seconds so far (while paused: up to the pause)."""
        return self.train_time + (0.0 if self._paused else time.perf_counter() - self._mark)

    def restart_rate(self, step: int) -> None:
        """Measure steps/s from ``step`` on (after the compiling first step)."""
        self.first, self._rate_origin = step, self.elapsed()

    def line(self, step: int, loss: float) -> str:
        loss_s = "?" if loss is None else f"{loss:.4f}"
        head = f"step {step}/{self.total} ({100.0 * step / self.total:.0f}%) loss {loss_s}"
        wall = _hms(time.perf_counter() - self._start)
        if self._rate_origin is None:  # the first step of this process: compiling it dominates
            return f"{head} | first step (compiling) {self.elapsed():.1f} s | elapsed {wall}"
        seconds = self.elapsed() - self._rate_origin
        rate = (step - self.first) / seconds if seconds > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        eta_s = "?" if not math.isfinite(eta) else _hms(eta)
        return f"{head} | {rate:.2f} steps/s | elapsed {wall} | ETA {eta_s}"


def _tensorboard(workdir: str, purge_step: int | None):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    # A non-finite loss is recorded as a divergence (result.json); tensorboardX's warning for each
    # such scalar would only repeat it on stderr.
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    return SummaryWriter(os.path.join(workdir, "tb"), purge_step=purge_step)


# ----------------------------------------------------------------------------- the run

class Placement:
    """Where the run's arrays live: the default device, or (``train.data_parallel``) a mesh of all
    local devices with the batch axis split across them and the parameters replicated. The jitted
    steps are unchanged: XLA partitions them from the shardings of their inputs, and the gradient's
    sum over the batch becomes an all-reduce."""

    def __init__(self, data_parallel: bool):
        self.mesh = (jax.sharding.Mesh(np.array(jax.local_devices()), ("batch",)) if data_parallel else None)

    def replicate(self, tree):
        if self.mesh is None:
            return tree
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))

    def split_batch(self, tree, axis: int = 0):
        """Split ``axis`` (the batch) of every array in ``tree`` across the devices."""
        if self.mesh is None:
            return tree
        spec = jax.sharding.PartitionSpec(*([None] * axis + ["batch"]))
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, spec))


def check_data_parallel(config) -> None:
    """With ``train.data_parallel``, every batch size must split evenly over the local devices."""
    t = config.train
    if not t.get("data_parallel", False):
        return
    n = jax.local_device_count()
    for name in ("batch_size", "eval_batch_size", "test_batch_size"):
        size = t[name] or (t.eval_batch_size if name == "test_batch_size" else 0)
        if size % n:
            raise InputError(f"config.train.{name} = {size} does not split over the {n} local devices "
                             f"of train.data_parallel=True: use a multiple of {n}")


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype), tree)


def _restore_latest(checkpoints: RunCheckpoints, params, state, *, set_aside: bool = False, log=print):
    """The newest readable latest checkpoint (see ``RunCheckpoints.restore_readable``: an unreadable
    step is skipped, and with ``set_aside`` moved aside), also one written before
    ``sched.best_select`` existed (then the best score is the best validation loss, which is what
    such runs selected by)."""
    def restore(which, params, state, step):
        try:
            return checkpoints.restore(which, _abstract(params), _abstract(state), step=step)
        except Exception as error:  # orbax reports a tree mismatch with several exception types
            legacy = {**state, "sched": {k: v for k, v in state["sched"].items() if k != "best_select"}}
            try:
                restored = checkpoints.restore(which, _abstract(params), _abstract(legacy), step=step)
            except Exception:
                raise error from None
            p, st, meta = restored
            st["sched"]["best_select"] = st["sched"]["best_valid"]
            return p, st, meta

    return checkpoints.restore_readable("latest", params, state, restore=restore, set_aside=set_aside, log=log)


def step_record(step: int, m) -> dict:
    """The ``metrics.jsonl`` record of a training step's metrics (host values)."""
    return {"step": step, "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]),
            "clipped": bool(m["clipped"]), "learning_rate": float(f"{float(m['learning_rate']):.7g}")}


def eval_record(step: int, valid_metrics: dict, word_level: bool, times: dict) -> dict:
    """The ``metrics.jsonl`` record of an evaluation."""
    valid = valid_metrics["loss"]
    record = {"step": step, "valid_loss": valid,
              **{f"valid_{k}": v for k, v in valid_metrics.items() if k != "loss"}, **times}
    if word_level:
        record["valid_perplexity"] = math.exp(min(valid, 700.0))
    return record


def run_result(status: str, step: int, num_steps: int, problem, num_params: int, last_good_loss, best: dict,
               times: dict, select_by: str, final_valid: dict | None = None, final_test: dict | None = None,
               best_test: dict | None = None) -> dict:
    """The contents of ``result.json``: ``final_*`` metrics at the last step and ``test_*`` at the
    best checkpoint (``best``: its step, validation loss and other validation metrics)."""
    result = {"status": status, "step": step, "num_steps": num_steps,
              "steps_per_epoch": problem.steps_per_epoch, "num_params": num_params,
              "final_train_loss": last_good_loss, "best_step": best["step"],
              "best_valid_loss": best["valid_loss"], **times, "level": problem.level, "select_by": select_by}
    if problem.task:
        result["task"] = problem.task
        for k, v in (best.get("metrics") or {}).items():
            result[f"best_valid_{k}"] = v
    if final_valid is not None:
        result["final_valid_loss"], result["final_test_loss"] = final_valid["loss"], final_test["loss"]
        for k in final_test:
            if k != "loss":
                result[f"final_valid_{k}"], result[f"final_test_{k}"] = final_valid[k], final_test[k]
    for k, v in (best_test or {}).items():  # the test metrics of the best checkpoint
        result[f"test_{k}"] = v
    if final_valid is not None and problem.level == "word":  # completed runs
        for k in ("final_valid_loss", "final_test_loss", "best_valid_loss", "test_loss"):
            if result.get(k) is not None:
                result[k.replace("loss", "perplexity")] = math.exp(min(result[k], 700.0))
    return result


def run_summary(config, problem, workdir: str, num_params: int, num_steps: int) -> str:
    """One line saying what a run trains: model, data, steps, optimizer."""
    m, t, o = config.model, config.train, config.optim
    kind = models_lib.kind_name(config)
    shape = f"{t.batch_size}x{t.seq_len}" if kind in ("lm", "piano") else f"{t.batch_size} examples"
    return (f"{workdir}: {config.cell} {m.num_layers}x{m.hidden_size} {kind} ({num_params:,} parameters) on "
            f"{problem.describe()}; {num_steps} steps of {shape} ({problem.steps_per_epoch} per epoch), {o.name} "
            f"lr {o.learning_rate:g}, clip {o.max_norm:g}")


def fresh_sched() -> dict:
    """The checkpointed counters of the best score and the plateau rule, before any evaluation."""
    return {"best_valid": jnp.asarray(jnp.inf, jnp.float32), "best_select": jnp.asarray(jnp.inf, jnp.float32),
            "bad_evals": jnp.zeros((), jnp.int32), "halvings": jnp.zeros((), jnp.int32)}


def fresh_state(optimizer, params, carry) -> dict:
    """A run's checkpointed state (besides its parameters) at step 0."""
    return {"step": jnp.zeros((), jnp.int32), "opt_state": optimizer.init(params), "carry": carry,
            "sched": fresh_sched()}


# ----------------------------------------------------------------------------- one run directory

class Recorder:
    """What one run directory receives while its run trains: ``metrics.jsonl``, ``samples.txt``,
    TensorBoard, checkpoints and ``result.json``, with the run's host-side record (last good loss,
    best checkpoint, best score and plateau counters). A plain run has one; vmapped trials one each.
    ``checked`` is :func:`rundir.check_run_dir`'s result, written by :meth:`open` once the resume is
    known to be valid; ``extra`` is added to every ``result.json`` (a trial's ``vmapped`` entry)."""

    def __init__(self, workdir: str, checked, max_to_keep: int, extra: dict | None = None, live: bool = True):
        self.workdir, self.checked, self.extra = workdir, checked, dict(extra or {})
        self.checkpoints = RunCheckpoints(workdir, max_to_keep) if live else None  # not live: left as it is
        self.result_path = os.path.join(workdir, "result.json")
        self.last_good = None
        self.best = {"step": None, "valid_loss": None, "metrics": {}}
        self.last_valid = (None, None)  # (step, metrics) of the latest evaluation
        self.sched = fresh_sched()
        self.result = None
        self._files = []
        self.metrics_file = self.samples_file = self.board = None

    def open(self, start: int, sched: dict, log) -> None:
        """Write the run files, drop records after ``start``, and open the append-only files."""
        rundir.write_run_files(self.workdir, *self.checked)
        losses = [r["loss"] for r in rundir.truncate_after(self.workdir, start)
                  if isinstance(r.get("loss"), (int, float))]
        self.last_good = losses[-1] if losses else None
        self.sched = dict(sched)
        if start and math.isfinite(float(sched["best_select"])):
            self.best = best_record(self.checkpoints, log)
        if os.path.exists(self.result_path):
            os.remove(self.result_path)  # the run is live again; a new result is written when it ends
        self.metrics_file = open(os.path.join(self.workdir, "metrics.jsonl"), "a", encoding="utf-8")
        self.samples_file = open(os.path.join(self.workdir, "samples.txt"), "a", encoding="utf-8")
        self.board = _tensorboard(self.workdir, purge_step=start + 1)
        self._files = [self.metrics_file, self.samples_file]

    def write(self, record: dict, flush: bool = False) -> None:
        self.metrics_file.write(json.dumps(rundir.json_safe(record)) + "\n")
        if flush:
            self.metrics_file.flush()

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.board is not None:
            for k, v in values.items():
                self.board.add_scalar(f"{prefix}/{k}", v, step)

    def sample(self, step: int, valid_loss: float, text) -> None:
        if text is not None:
            self.samples_file.write(f"{rundir.SAMPLE_HEADER}{step} (valid loss {valid_loss:.4f}) ===\n{text}\n\n")
            self.samples_file.flush()

    def finish(self, result: dict) -> None:
        self.result = {**result, **self.extra}
        rundir.write_json_atomic(self.result_path, self.result)

    def fail(self, error: BaseException, step: int, num_steps: int) -> None:
        if self.result is None:  # a diverged or completed run keeps its result
            rundir.write_json_atomic(self.result_path, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                                        "step": step, "num_steps": num_steps, **self.extra})

    def close(self, checkpoints: bool = True) -> None:
        if checkpoints:
            self.checkpoints.close()
        for f in self._files:
            f.close()
        if self.board is not None:
            self.board.close()
        self._files, self.board = [], None


# ----------------------------------------------------------------------------- one program, one run

class Single:
    """A plain run's training state as the loop drives it (a program of ``k = 1``): parameters,
    optimizer state and carry on the default device, or with ``train.data_parallel`` on a mesh
    (:class:`Placement`). :class:`rnn_jax.trials.Vmapped` is the K-trial counterpart."""

    k = 1

    def __init__(self, problem, config, num_steps: int, place: "Placement"):
        self.problem, self.config, self.place = problem, config, place
        self.batch_size = config.train.batch_size
        self.optimizer = make_optimizer(config, problem.steps_per_epoch, num_steps)
        step = step_fn(problem.loss, diverge_bound(config, problem))
        optimizer, max_norm = self.optimizer, config.optim.max_norm
        self._step = jax.jit(lambda p, o, c, b, key: step(p, o, c, b, key, optimizer, max_norm))
        init_key, self.dropout_base, self.sample_base = jax.random.split(jax.random.PRNGKey(config.seed), 3)
        self.params = problem.init(config, init_key)
        self.opt_state, self.carry, self.at = None, None, 0
        self.active = np.ones(1, bool)
        self.evaluate_one = problem.evaluator(place)
        self.uses_dropout = getattr(problem.model, "dropout", 0.0) > 0

    def fresh_state(self) -> dict:
        return fresh_state(self.optimizer, self.params, self.problem.zero_carry(self.batch_size))

    def load(self, params, state) -> None:
        self.params = self.place.replicate(params)
        self.opt_state = self.place.replicate(state["opt_state"])
        self.carry = self.place.split_batch(state["carry"])
        self.at = int(state["step"])  # the step the state is at

    def step(self, step: int):
        batch, new_epoch = self.problem.batch(self.config, step)
        if new_epoch:
            self.carry = self.place.split_batch(self.problem.zero_carry(self.batch_size))
        # no dropout, no key: saves a host dispatch per step (the arithmetic is the same)
        key = jax.random.fold_in(self.dropout_base, step) if self.uses_dropout else None
        self.params, self.opt_state, self.carry, metrics = self._step(
            self.params, self.opt_state, self.carry, self.place.split_batch(batch), key)
        self.at = step + 1
        return metrics

    def row(self, metrics, i: int) -> dict:
        return metrics

    def deactivate(self, i: int) -> None:
        self.active[i] = False

    def params_of(self, i: int):
        return self.params

    def state_of(self, i: int, step: int, sched: dict) -> dict:
        return {"step": jnp.asarray(step, jnp.int32), "opt_state": self.opt_state, "carry": self.carry,
                "sched": sched}

    def halve_learning_rate(self, i: int) -> float:
        hp = dict(self.opt_state.hyperparams)
        hp["learning_rate"] = hp["learning_rate"] * 0.5
        self.opt_state = self.opt_state._replace(hyperparams=hp)
        return float(hp["learning_rate"])

    def evaluate(self, split: str) -> list:
        return [self.evaluate_one(self.params, split)]

    def evaluate_params(self, params_list: list, split: str) -> list:
        """``split``'s metrics for given parameters per trial (``None``: not evaluated)."""
        return [None if p is None else self.evaluate_one(p, split) for p in params_list]

    def sample(self, i: int, step: int, valid_loss: float):
        return self.problem.sample(self.params, jax.random.fold_in(self.sample_base, step), step, valid_loss)


# ----------------------------------------------------------------------------- the loop

@dataclasses.dataclass(frozen=True)
class LoopContext:
    """What the loop's steps read and never change: the program, its problem and recorders, and the
    settings of the run."""

    program: object
    problem: object
    recorders: list
    config: object
    num_steps: int
    clock: object
    log: object
    num_params: int

    @property
    def select_by(self) -> str:
        return self.config.train.get("select_by", "valid_loss")

    def active(self) -> list:
        return [int(i) for i in np.flatnonzero(self.program.active)]

    def result(self, i: int, status: str, step: int, *evals) -> dict:
        rec = self.recorders[i]
        return run_result(status, step, self.num_steps, self.problem, self.num_params, rec.last_good, rec.best,
                          self.clock.times(), self.select_by, *evals)


def run_loop(program, problem, recorders: list, config, start: int, num_steps: int, clock, log) -> None:
    """Train ``program`` (K trials, ``recorders[i]`` receiving trial ``i``'s files) from step ``start``
    to ``num_steps``: steps, records, evaluations, the best score and plateau rule, checkpoints,
    divergence (a diverged trial is recorded and masked; the others go on), and the final
    evaluations and ``result.json`` of every trial that completes."""
    t, k = config.train, program.k
    eval_every = t.eval_every or problem.steps_per_epoch
    checkpoint_every = t.checkpoint_every or problem.steps_per_epoch
    ctx = LoopContext(program, problem, recorders, config, num_steps, clock, log,
                      lm_lib.num_params(program.params_of(0)))
    progress = clock.progress = Progress(start, num_steps)
    pending: list = []  # (step, device metrics) not yet written
    step = start
    while step < num_steps and program.active.any():
        pending.append((step + 1, program.step(step)))
        step += 1
        do_eval = step % eval_every == 0 or step == num_steps
        do_save = do_eval or step % checkpoint_every == 0
        if step % t.log_every == 0 or do_save or step == start + 1:
            write_step_records(ctx, pending)
            pending = []
            if not program.active.any():
                break
            losses = [recorders[i].last_good for i in ctx.active() if recorders[i].last_good is not None]
            line = progress.line(step, min(losses) if losses else None)
            log(line if k == 1 else f"{line} | {len(ctx.active())}/{k} trials")
            if step == start + 1:  # exclude the first step (compilation) from the rate
                progress.restart_rate(step)
        if not do_save:
            continue
        progress.pause()
        stop = False
        valid_all = program.evaluate("valid") if do_eval else None
        for i in ctx.active():
            if do_eval:
                stop |= record_evaluation(ctx, i, step, valid_all[i])
            recorders[i].checkpoints.save("latest", step, program.params_of(i),
                                          program.state_of(i, step, recorders[i].sched),
                                          {"step": step, "time": time.time(), **clock.times()})
        if do_eval and k > 1:
            log(f"step {step}: valid loss " + " ".join(
                f"{v['loss']:.4f}" if program.active[i] else "-" for i, v in enumerate(valid_all)))
        progress.resume()
        if stop:
            log(f"step {step}: learning rate halved {config.optim.schedule.max_halvings + 1} times without "
                "improvement; stopping")
            break
    write_step_records(ctx, pending)
    for rec in recorders:
        if rec.checkpoints is not None:
            rec.checkpoints.wait()
    finish_completed(ctx, step)


def write_step_records(ctx: LoopContext, pending: list) -> None:
    """Write the step records of ``pending`` for every active trial; a trial whose step is not finite
    is recorded as diverged at once (a resumed program skips it) and masked from then on."""
    if not pending:
        return
    values = jax.device_get([m for _, m in pending])
    for (at, _), m in zip(pending, values):
        for i in ctx.active():
            rec, row = ctx.recorders[i], ctx.program.row(m, i)
            record = step_record(at, row)
            rec.write(record)
            if bool(row["finite"]):
                rec.last_good = record["loss"]
                rec.scalars("train", {n: record[n] for n in ("loss", "grad_norm", "learning_rate")}, at)
                continue
            rec.metrics_file.flush()
            ctx.program.deactivate(i)
            rec.finish(ctx.result(i, "diverged", at))
            why = (f"diverged (loss, gradient or parameters not finite, or the loss above "
                   f"{diverge_bound(ctx.config, ctx.problem):.4g} = train.diverge_factor x the loss of uniform "
                   "predictions)")
            if ctx.program.k == 1:
                kept = rec.checkpoints.latest_step()
                kept_s = (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                          else "before any checkpoint was saved")
                ctx.log(f"step {at}: {why}; stopping, {kept_s}")
            else:
                ctx.log(f"trial {i} ({rec.workdir}): step {at}: {why}; its updates are masked from here (its "
                        "last checkpoint, if any, is kept), the others go on")
    for i in ctx.active():
        ctx.recorders[i].metrics_file.flush()


def record_evaluation(ctx: LoopContext, i: int, step: int, metrics: dict) -> bool:
    """Record trial ``i``'s validation metrics, keep its best checkpoint, apply the plateau rule;
    returns whether the plateau rule stops the run."""
    rec, valid, schedule = ctx.recorders[i], metrics["loss"], ctx.config.optim.schedule
    word_level = ctx.problem.level == "word"
    rec.last_valid = (step, metrics)
    record = eval_record(step, metrics, word_level, ctx.clock.times())
    sched = rec.sched
    select_by = ctx.select_by
    score = valid if select_by == "valid_loss" else -metrics[select_by[len("valid_"):]]
    improved = bool(score < float(sched["best_select"]))
    best_v, bad, halvings, halve, stop = plateau_update(
        float(sched["best_valid"]), int(sched["bad_evals"]), int(sched["halvings"]), valid,
        schedule.patience, schedule.max_halvings)
    if schedule.name != "plateau":
        halve = stop = False
        bad, halvings = 0, 0
    if halve:
        record["halved_learning_rate"] = ctx.program.halve_learning_rate(i)
    rec.sched = {"best_valid": jnp.asarray(best_v, jnp.float32),
                 "best_select": jnp.asarray(min(score, float(sched["best_select"])), jnp.float32),
                 "bad_evals": jnp.asarray(bad, jnp.int32), "halvings": jnp.asarray(halvings, jnp.int32)}
    rec.write(record, flush=True)
    rec.scalars("valid", {"loss": valid}, step)
    if ctx.program.k == 1:
        ctx.log(f"step {step}: valid loss {valid:.4f}"
                + (f" (perplexity {record['valid_perplexity']:.2f})" if word_level else "")
                + "".join(f", {n} {v:.4f}" for n, v in metrics.items() if n != "loss"))
    rec.sample(step, valid, ctx.program.sample(i, step, valid))
    if improved:
        extra = {n: v for n, v in metrics.items() if n != "loss"}
        rec.best = {"step": step, "valid_loss": valid, "metrics": extra}
        rec.checkpoints.save("best", step, ctx.program.params_of(i), ctx.program.state_of(i, step, rec.sched),
                             rundir.json_safe({"step": step, "valid_loss": valid, "metrics": extra}))
    return stop


def finish_completed(ctx: LoopContext, step: int) -> None:
    """The final validation and test metrics of every trial still active at ``step``, the test
    metrics of each one's best checkpoint, and their ``result.json``."""
    done, k, recorders = ctx.active(), ctx.program.k, ctx.recorders
    if not done:
        return
    final_valid = [recorders[i].last_valid[1] if recorders[i].last_valid[0] == step else None for i in range(k)]
    if any(final_valid[i] is None for i in done):
        final_valid = ctx.program.evaluate("valid")
    final_test = ctx.program.evaluate("test")
    # the test metrics at each trial's best checkpoint: its final parameters or the restored best
    best_test = [final_test[i] if recorders[i].best["step"] == step else None for i in range(k)]
    need = [i for i in done if recorders[i].best["step"] not in (None, step)]
    if need:
        chosen = [None] * k
        for i in need:
            chosen[i] = best_params(recorders[i].checkpoints, ctx.program.params_of(i), ctx.log,
                                    f"trial {i}: " if k > 1 else "")
        for i, metrics in enumerate(ctx.program.evaluate_params(chosen, "test")):
            if chosen[i] is not None:
                best_test[i] = metrics
    for i in done:
        recorders[i].finish(ctx.result(i, "completed", step, final_valid[i], final_test[i],
                                       best_test[i] if recorders[i].best["step"] is not None else None))


class Clock:
    """Cumulative seconds over all sessions of a run: wall clock, and training only."""

    def __init__(self, offsets=(0.0, 0.0)):
        self.offsets, self.started, self.progress = offsets, time.time(), None

    def times(self) -> dict:
        train_s = self.progress.elapsed() if self.progress is not None else 0.0
        return {"elapsed_s": self.offsets[0] + time.time() - self.started, "train_time_s": self.offsets[1] + train_s}


def best_params(checkpoints: RunCheckpoints, like, log, prefix: str = ""):
    """The parameters of the newest readable best checkpoint (unreadable ones set aside), or
    ``None`` (with one line) when none can be read."""
    try:
        restored = checkpoints.restore_readable("best", _abstract(like), set_aside=True, log=log)
    except UnreadableCheckpoints as e:
        log(f"{prefix}{e}; the result has no test metrics of the best checkpoint")
        return None
    return None if restored is None else restored[0]


def best_record(checkpoints: RunCheckpoints, log) -> dict:
    """``{"step", "valid_loss", "metrics"}`` of the best checkpoint, from its metadata; an
    unreadable one is said in one line and treated as none."""
    step = checkpoints.latest_step("best")
    try:
        meta = checkpoints.restore_meta("best") or {}
    except Exception as e:
        log(f"the metadata of checkpoint best/{step} cannot be read ({e.__class__.__name__}); it is "
            "not counted as the best")
        return {"step": None, "valid_loss": None, "metrics": {}}
    return {"step": step, "valid_loss": meta.get("valid_loss"), "metrics": meta.get("metrics", {})}


# ----------------------------------------------------------------------------- the run

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, log=None) -> dict:
    """Train (or resume) the run in ``workdir``; returns the contents of ``result.json``.

    The run holds the directory's lock (:mod:`rnn_jax.rundir`) for its whole life, and a second
    writer is refused. A resume is checked whole (config, data, checkpoint shapes) before any file
    is written.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    validate_config(config)
    rundir.check_workdir(workdir)
    problem = make_problem(config)
    with rundir.exclusive(workdir):
        return _train_and_evaluate(config, problem, workdir, log)


def _train_and_evaluate(config, problem, workdir: str, log) -> dict:
    t = config.train
    checked = rundir.check_run_dir(config, problem.data, workdir)
    num_steps = t.num_steps or t.num_epochs * problem.steps_per_epoch
    program = Single(problem, config, num_steps, Placement(bool(t.get("data_parallel", False))))
    state = program.fresh_state()
    recorder = Recorder(workdir, checked, t.max_to_keep)
    try:
        restored = _restore_latest(recorder.checkpoints, program.params, state, set_aside=True, log=log)
    except BaseException:
        recorder.checkpoints.close()
        raise
    params, meta = program.params, {}
    if restored is not None:
        params, state, meta = restored
        log(f"resuming {workdir} at step {int(state['step'])}")
    start = int(state["step"])
    log(run_summary(config, problem, workdir, lm_lib.num_params(params), num_steps))  # then the first compile
    clock = Clock((float(meta.get("elapsed_s", 0.0)), float(meta.get("train_time_s", 0.0))))
    program.at = start
    try:
        recorder.open(start, state["sched"], log)  # the resume is valid: now write
        program.load(params, state)
        if (config.optim.schedule.name == "plateau"
                and int(state["sched"]["halvings"]) > config.optim.schedule.max_halvings):
            num_steps = start  # the plateau rule already stopped this run
            log(f"{workdir}: stopped earlier by the plateau rule at step {start}")
        run_loop(program, problem, [recorder], config, start, num_steps, clock, log)
    except BaseException as e:
        # a failed save may also surface here; the run is recorded as failed either way
        save_error = recorder.checkpoints.close_after_failure()
        error = e if isinstance(e, Exception) else save_error
        if error is not None:
            recorder.fail(error, program.at, num_steps)
        recorder.close(checkpoints=False)
        raise
    recorder.close()
    result = recorder.result
    log(f"{result['status']}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in result.items() if "loss" in k or "perplexity" in k
                                            or "accuracy" in k))
    log(f"results: {recorder.result_path} (curves: metrics.jsonl, checkpoints: checkpoints/best and latest)")
    return result


def load_run(workdir: str, which: str = "best", *, log=None):
    """``(model, params, vocab, config)`` of a language-model run directory, from its best (else
    latest) checkpoint: the model is built from the run's own ``vocab.json`` (the data file need not
    be there). Other model kinds: :func:`load_problem`."""
    config = _read_config(workdir)
    kind = models_lib.kind_name(config)
    if kind != "lm":
        raise InputError(f"{workdir} is a {kind} run; load_run reads language-model runs (use load_problem)")
    vocab = Vocab.load(os.path.join(workdir, "vocab.json"))
    model = make_model(config, len(vocab))
    return model, _restore_params(workdir, config, model.init, which, log), vocab, config


def load_problem(workdir: str, which: str = "best", *, log=None):
    """``(problem, params, config)`` of a run directory of a generated-task kind (classifier, tagger,
    conditioned, seq2seq): the task is generated again from the config, and the parameters come from
    the best (else latest) checkpoint. Language models: :func:`load_run`."""
    config = _read_config(workdir)
    kind = models_lib.kind_name(config)
    if kind in ("lm", "piano"):
        raise InputError(f"{workdir} is a {kind} run; load_problem reads runs of generated tasks "
                         "(use load_run for language models)")
    problem = make_problem(config)
    return problem, _restore_params(workdir, config, lambda key: problem.init(config, key), which, log), config


def _read_config(workdir: str):
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: not a run directory")
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def _restore_params(workdir: str, config, init, which: str, log):
    """The parameters of the best (else latest) checkpoint; ``log`` (default: stderr) says which step
    is used when the newest cannot be read."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    params_like = jax.eval_shape(init, jax.random.PRNGKey(0))
    checkpoints = RunCheckpoints(workdir, config.train.max_to_keep)
    try:
        order = ("best", "latest") if which == "best" else ("latest", "best")
        unreadable = None
        for kind in order:  # an unreadable step is skipped (with one line), never moved: only reading here
            try:
                restored = checkpoints.restore_readable(kind, params_like, log=log)
            except UnreadableCheckpoints as e:
                unreadable = e
                continue
            if restored is not None:
                return restored[0]
    finally:
        checkpoints.close()
    if unreadable is not None:
        raise unreadable
    raise FileNotFoundError(f"{workdir} has no checkpoint yet")
