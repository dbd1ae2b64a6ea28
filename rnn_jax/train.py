"""Training language models: jitted steps, truncated BPTT, the loop, runs that resume exactly.

The optimizer and schedules are :mod:`rnn_jax.optim`'s, evaluation is :mod:`rnn_jax.evaluate`'s,
and the run directory's files and lock are :mod:`rnn_jax.rundir`'s (their names are imported here
too, so ``train.make_optimizer`` and ``train.Evaluator`` keep working).

``train_and_evaluate(config, workdir)`` is the whole run (the absl main in ``experiments/train.py``
only parses flags). A run directory holds ``config.json``, ``vocab.json``, ``metrics.jsonl`` (one
JSON object per line: a training record for every step, an evaluation record at every
evaluation), ``samples.txt``, ``checkpoints/{latest,best}`` and, when the run ends,
``result.json`` (written atomically) with ``status`` = ``completed``, ``diverged`` or ``failed``.

Starting in a directory that has a checkpoint resumes from it: parameters, optimizer state, step,
the carried hidden state and the plateau-schedule counters are restored, and the data order is a
pure function of ``(seed, step)``, so the final parameters equal those of an uninterrupted run bit
for bit (on CPU). Records that the stopped run wrote after its last checkpoint are dropped from
``metrics.jsonl`` and ``samples.txt`` on resume, since the resumed run writes them again.
"""

from __future__ import annotations

import json
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
from rnn_jax import data as data_lib
from rnn_jax import lm as lm_lib
from rnn_jax import piano as piano_lib
from rnn_jax import rundir, sampling
from rnn_jax.checkpoint import RunCheckpoints, UnreadableCheckpoints
from rnn_jax.data import music as music_lib
from rnn_jax.errors import InputError
from rnn_jax.evaluate import Evaluator, make_eval_fn, nll_fn, pieces_protocol, task_loss_mask  # noqa: F401
from rnn_jax.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule, plateau_update  # noqa: F401

BPTT_MODES = ("truncated", "full")
LOSS_REDUCTIONS = ("mean", "sum_time")
DATA_KINDS = ("char", "ptb", "music") + data_lib.TASKS
LOSS_ON = ("all", "scored")
MUSIC_PROTOCOLS = ("pieces", "stream")
DIVERGE_FACTOR = 10.0  # default of train.diverge_factor
SELECT_BY = ("valid_loss", "valid_accuracy")
# ----------------------------------------------------------------------------- config checks

def validate_config(config: ml_collections.ConfigDict) -> None:
    """Check every field the trainer reads; raise ``ValueError`` naming the field and the allowed values."""
    try:
        cells_lib.parse_spec(config.cell)
    except ValueError as e:
        raise InputError(f"config.cell = {config.cell!r}: {e}") from None
    cfg.check_int("seed", config.seed, minimum=0)
    cfg.check_int("trials_per_program", config.get("trials_per_program", 1))
    m, t, o, d = config.model, config.train, config.optim, config.data
    for name in ("embed_size", "hidden_size", "num_layers"):
        cfg.check_int(f"model.{name}", m[name])
    cfg.check_number("model.dropout", m.dropout, 0.0, 1.0)
    for name in ("init_scale", "embed_scale", "output_scale"):
        cfg.check_number(f"model.{name}", m[name], strict=True)
    cfg.check_choice("model.impl", m.impl, ("fused", "autodiff", "reference"))
    cfg.check_choice("model.variational", m.variational, (False, True))
    cfg.check_choice("data.kind", d.kind, DATA_KINDS)
    if d.kind == "char" and not d.path:
        raise InputError("config.data.path is empty: give a UTF-8 text file (or tfds:NAME)")
    if d.kind == "music" and not d.path:
        raise InputError("config.data.path is empty: give a JSON or pickle file of piano rolls "
                         "({'train': [...], 'valid': [...], 'test': [...]})")
    if d.kind == "music":
        cfg.check_choice("data.protocol", d.get("protocol", "pieces"), MUSIC_PROTOCOLS)
        if pieces_protocol(config) and t.bptt != "truncated":
            raise InputError("config.train.bptt = 'full' draws windows across piece boundaries; with "
                             "data.protocol = 'pieces' use train.bptt = 'truncated' (each piece is "
                             "trained from the zero state)")
    if d.kind == "ptb" and not d.dir:
        raise InputError("config.data.dir is empty: give the directory with ptb.{train,valid,test}.txt")
    if d.kind in data_lib.TASKS:
        cfg.check_int("data.seed", d.get("seed", 0), minimum=0)
        cfg.check_choice("data.loss_on", d.get("loss_on", "scored"), LOSS_ON)
        sizes = d.get("num_chars")
        if sizes is None or any(split not in sizes for split in ("train", "valid", "test")):
            raise InputError(f"config.data.num_chars must give the train, valid and test sizes (in "
                             f"characters) of the generated {d.kind} stream; see experiments/configs/tasks.py")
        for split in ("train", "valid", "test"):
            cfg.check_int(f"data.num_chars.{split}", sizes[split])
        try:
            data_lib.tasks.check_options(d.kind, d.get(d.kind) or {})
        except ValueError as e:
            raise InputError(f"config.data.{d.kind}: {e}") from None
    cfg.check_choice("train.select_by", t.get("select_by", "valid_loss"), SELECT_BY)
    cfg.check_choice("train.data_parallel", t.get("data_parallel", False), (False, True))
    check_data_parallel(config)
    if t.get("select_by", "valid_loss") == "valid_accuracy" and d.kind not in data_lib.TASKS:
        raise InputError(f"config.train.select_by = 'valid_accuracy' needs a task with an accuracy "
                         f"(data.kind one of {', '.join(data_lib.TASKS)}), not {d.kind!r}")
    for name in ("batch_size", "seq_len", "eval_batch_size", "log_every", "max_to_keep"):
        cfg.check_int(f"train.{name}", t[name])
    cfg.check_int("train.test_batch_size", t.test_batch_size, minimum=0)
    cfg.check_choice("train.loss_reduction", t.loss_reduction, LOSS_REDUCTIONS)
    for name in ("eval_every", "checkpoint_every"):  # 0: once per epoch
        cfg.check_int(f"train.{name}", t[name], minimum=0)
    cfg.check_int("train.num_steps", t.num_steps, minimum=0)
    cfg.check_int("train.num_epochs", t.num_epochs, minimum=0)
    if t.num_steps == 0 and t.num_epochs == 0:
        raise InputError("config.train.num_steps and config.train.num_epochs are both 0: set one")
    cfg.check_int("train.sample_length", t.sample_length, minimum=0)
    cfg.check_number("train.diverge_factor", t.get("diverge_factor", DIVERGE_FACTOR))
    cfg.check_number("train.sample_temperature", t.sample_temperature, strict=True)
    cfg.check_choice("train.bptt", t.bptt, BPTT_MODES)
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
    try:  # cell options against sizes (MUT input terms, ...), without compiling anything
        jax.eval_shape(make_model(config, 2).init, jax.random.PRNGKey(0))
    except ValueError as e:
        raise InputError(f"config.cell = {config.cell!r} with model.embed_size={m.embed_size}, "
                         f"model.hidden_size={m.hidden_size}: {e}") from None


def load_data(data) -> data_lib.Corpus:
    """The corpus of a config's ``data`` block: a text corpus, or a generated task stream.

    A task's options are in the block named after it (``data.arithmetic.max_digits``, ...).
    """
    if data.kind == "music":
        return music_lib.piano_rolls(data.path)
    if data.kind in data_lib.TASKS:
        return data_lib.task_corpus(data.kind, seed=data.get("seed", 0), num_chars=dict(data.num_chars),
                                    **dict(data.get(data.kind) or {}))
    return data_lib.load_corpus(data)


def check_data_fits(config, corpus: data_lib.Corpus) -> None:
    t = config.train
    if pieces_protocol(config):
        for split in ("train", "valid", "test"):
            lengths = np.diff(np.append(corpus.starts[split], len(corpus.split(split))))
            if not (lengths >= 2).any():
                raise InputError(f"the {split} split has no piece of two frames or more "
                                 f"({len(lengths)} pieces): nothing to predict with "
                                 f"data.protocol = 'pieces'")
        return
    need = t.batch_size * t.seq_len + 1
    if len(corpus.train) < need:
        raise InputError(
            f"the training split has {len(corpus.train)} tokens, too few for one batch of "
            f"train.batch_size={t.batch_size} streams x train.seq_len={t.seq_len} (needs {need}); "
            f"lower train.seq_len or train.batch_size, or use more data")
    for split, field, size in (("valid", "eval_batch_size", t.eval_batch_size),
                               ("test", "test_batch_size" if t.test_batch_size else "eval_batch_size",
                                t.test_batch_size or t.eval_batch_size)):
        n = len(corpus.split(split))
        if n < size + 1:
            raise InputError(f"the {split} split has {n} tokens, too few for "
                             f"train.{field}={size} streams (needs {size + 1}); lower it or "
                             f"change data.splits")


# ----------------------------------------------------------------------------- model and steps

def make_model(config, vocab_size: int):
    """The config's model: a :class:`LanguageModel` over ``vocab_size`` tokens, or for
    ``data.kind = "music"`` a :class:`PianoRollModel` over ``vocab_size`` pitches."""
    m = config.model
    cell = cells_lib.from_spec(config.cell, init_scale=m.init_scale, kernel_init=m.kernel_init,
                               recurrent_init=m.recurrent_init)
    if config.data.kind == "music":
        return piano_lib.PianoRollModel(cell, vocab_size, m.embed_size, m.hidden_size, m.num_layers,
                                        dropout=m.dropout, variational=m.variational,
                                        embed_scale=m.embed_scale, output_scale=m.output_scale, impl=m.impl)
    return lm_lib.LanguageModel(cell, vocab_size, m.embed_size, m.hidden_size, m.num_layers,
                                dropout=m.dropout, variational=m.variational,
                                embed_scale=m.embed_scale, output_scale=m.output_scale, impl=m.impl)


def uniform_loss(model) -> float:
    """The training loss of uniform predictions: ``ln V`` nats per token for a softmax over ``V``
    tokens, ``P ln 2`` per frame for ``P`` independent notes."""
    if isinstance(model, piano_lib.PianoRollModel):
        return model.num_pitches * math.log(2.0)
    return math.log(model.vocab_size)


def diverge_bound(config, model) -> float:
    """The training loss above which a run counts as diverged: ``train.diverge_factor`` times
    :func:`uniform_loss` (a model that predicts worse than that many times chance is not training);
    ``inf`` when the factor is 0 (then only non-finite values count)."""
    factor = float(config.train.get("diverge_factor", DIVERGE_FACTOR))
    return factor * uniform_loss(model) if factor > 0 else math.inf


def make_train_step(model: lm_lib.LanguageModel, optimizer, max_norm: float,
                    loss_reduction: str = "mean", max_loss: float = math.inf):
    """jit ``(params, opt_state, carry, inputs, targets, key, weights=None, resets=None) -> (params,
    opt_state, carry, metrics)``.

    The incoming carry is a constant (``stop_gradient``): gradients flow through this chunk only.
    ``weights`` (``[B, T]``, 0/1) restricts the loss to some targets (a task's scored positions).
    ``resets`` (``[B, T]``, bool) zeroes a sequence's carry before a step (piece starts).
    The differentiated loss is the mean NLL per token (``loss_reduction="mean"``) or, as in
    Zaremba et al.'s code, summed over time and averaged over the batch (``"sum_time"``); the
    logged ``loss`` is always the mean per token. ``finite`` says whether the loss, the gradient
    norm and the new parameters are all finite and the loss is at most ``max_loss`` (see
    :func:`diverge_bound`); a run stops as diverged where it is false.
    """
    step = train_step_fn(model, loss_reduction, max_loss)

    @jax.jit
    def train_step(params, opt_state, carry, inputs, targets, key, weights=None, resets=None):
        return step(params, opt_state, carry, inputs, targets, key, weights, optimizer, max_norm, resets)

    return train_step


def train_step_fn(model: lm_lib.LanguageModel, loss_reduction: str = "mean", max_loss: float = math.inf):
    """The step of :func:`make_train_step`, unjitted and with the optimizer and clip norm as
    arguments: ``(params, opt_state, carry, inputs, targets, key, weights, optimizer, max_norm,
    resets=None)``. Vmapped trials (:mod:`rnn_jax.trials`) map it over per-trial hyperparameters."""
    cfg.check_choice("train.loss_reduction", loss_reduction, LOSS_REDUCTIONS)
    nll = nll_fn(model)

    def loss_fn(params, carry, inputs, targets, key, weights, resets):
        logits, carry = model.apply(params, carry, inputs, dropout_key=key, resets=resets)
        total, count = nll(logits, targets, weights)
        mean = total / jnp.maximum(count, 1.0)
        objective = mean * inputs.shape[1] if loss_reduction == "sum_time" else mean
        return objective, (mean, carry)

    def step(params, opt_state, carry, inputs, targets, key, weights, optimizer, max_norm, resets=None):
        carry = jax.lax.stop_gradient(carry)
        (_, (loss, carry)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, carry, inputs, targets, key, weights, resets)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (loss <= max_loss)
        for leaf in jax.tree.leaves(params):
            finite &= jnp.all(jnp.isfinite(leaf))
        metrics = {"loss": loss, "grad_norm": grad_norm, "clipped": grad_norm > max_norm,
                   "learning_rate": opt_state.hyperparams["learning_rate"], "finite": finite}
        return params, opt_state, carry, metrics

    return step


class TrainStreams:
    """The training split laid out for truncated BPTT, for plain runs and vmapped trials alike:
    ``batch_size`` contiguous streams of the token (or frame) stream, or, with the per-piece
    protocol (:func:`pieces_protocol`), whole pieces packed into lanes (:class:`data.Lanes`) with
    the carry reset at every piece start and no target across pieces.

    ``batch(step)`` gives ``(inputs, targets, weights, resets, new_epoch)``; ``weights`` and
    ``resets`` are ``None`` where every target counts and nothing resets.
    """

    def __init__(self, config, corpus, loss_mask: dict):
        t = config.train
        self.seq_len = t.seq_len
        if pieces_protocol(config):
            lanes = data_lib.Lanes.from_pieces(corpus.train, corpus.starts["train"], t.batch_size,
                                               pad_to=t.seq_len)
            self.streams, self.weights, self.resets = lanes, lanes.weights_BxS, lanes.resets_BxS
        else:
            self.streams = data_lib.Streams.from_tokens(corpus.train, t.batch_size)
            self.weights = data_lib.stream_weights(loss_mask["train"], t.batch_size) if loss_mask else None
            self.resets = None
        # one pass over the training data; random windows (train.bptt = "full") count the same
        self.steps_per_epoch = self.streams.length // t.seq_len

    def batch(self, step: int):
        inputs, targets, new_epoch = data_lib.tbptt_batch(self.streams, step, self.seq_len)
        weights, resets = (None if a is None else data_lib.batches.tbptt_chunk(a, step, self.seq_len)
                           for a in (self.weights, self.resets))
        return inputs, targets, weights, resets, new_epoch


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


def run_result(status: str, step: int, num_steps: int, steps_per_epoch: int, num_params: int,
               last_good_loss, best: dict, times: dict, vocab, select_by: str, corpus,
               final_valid: dict | None = None, final_test: dict | None = None,
               best_test: dict | None = None) -> dict:
    """The contents of ``result.json``: ``final_*`` metrics at the last step and ``test_*`` at the
    best checkpoint (``best``: its step, validation loss and other validation metrics)."""
    result = {"status": status, "step": step, "num_steps": num_steps,
              "steps_per_epoch": steps_per_epoch, "num_params": num_params,
              "final_train_loss": last_good_loss, "best_step": best["step"],
              "best_valid_loss": best["valid_loss"], **times,
              "level": vocab.level if vocab is not None else "frame",
              "select_by": select_by}
    if isinstance(corpus, data_lib.TaskCorpus):
        result["task"] = corpus.task
        for k, v in (best.get("metrics") or {}).items():
            result[f"best_valid_{k}"] = v
    if final_valid is not None:
        result["final_valid_loss"], result["final_test_loss"] = final_valid["loss"], final_test["loss"]
        for k in final_test:
            if k != "loss":
                result[f"final_valid_{k}"], result[f"final_test_{k}"] = final_valid[k], final_test[k]
    for k, v in (best_test or {}).items():  # the test metrics of the best checkpoint
        result[f"test_{k}"] = v
    if final_valid is not None and vocab is not None and vocab.level == "word":  # completed runs
        for k in ("final_valid_loss", "final_test_loss", "best_valid_loss", "test_loss"):
            if result.get(k) is not None:
                result[k.replace("loss", "perplexity")] = math.exp(min(result[k], 700.0))
    return result


def append_sample(f, model, params, corpus, train_config, sample_base, step: int, valid_loss: float) -> None:
    """Append a sample (``train.sample_length`` tokens after the first validation token) to the
    open ``samples.txt`` ``f``; nothing for piano rolls or when ``sample_length`` is 0."""
    if not train_config.sample_length or getattr(corpus, "vocab", None) is None:
        return
    prime = corpus.valid[:1]
    tokens = sampling.sample(model, params, jnp.asarray(prime), jax.random.fold_in(sample_base, step),
                             length=train_config.sample_length,
                             temperature=float(train_config.sample_temperature))
    text = corpus.vocab.decode(np.concatenate([prime, np.asarray(tokens[0])]))
    f.write(f"{rundir.SAMPLE_HEADER}{step} (valid loss {valid_loss:.4f}) ===\n{text}\n\n")
    f.flush()


def run_summary(config, workdir: str, num_params: int, num_steps: int, steps_per_epoch: int) -> str:
    """One line saying what a run trains: model, data, steps, optimizer."""
    m, d, t, o = config.model, config.data, config.train, config.optim
    data = {"char": f"characters of {d.path}", "ptb": f"PTB words in {d.dir}",
            "music": f"piano rolls of {d.path} ({d.get('protocol', 'pieces')} protocol)"}.get(d.kind, f"{d.kind} task")
    return (f"{workdir}: {config.cell} {m.num_layers}x{m.hidden_size} ({num_params:,} parameters) on {data}; "
            f"{num_steps} steps of {t.batch_size}x{t.seq_len} ({steps_per_epoch} per epoch), {o.name} "
            f"lr {o.learning_rate:g}, clip {o.max_norm:g}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, log=None) -> dict:
    """Train (or resume) the run in ``workdir``; returns the contents of ``result.json``.

    The run holds the directory's lock (:mod:`rnn_jax.rundir`) for its whole life, and a second
    writer is refused. A resume is checked whole (config, data, checkpoint shapes) before any file
    is written.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    validate_config(config)
    rundir.check_workdir(workdir)
    corpus = load_data(config.data)
    check_data_fits(config, corpus)
    with rundir.exclusive(workdir):
        return _train_and_evaluate(config, corpus, workdir, log)


def _train_and_evaluate(config, corpus, workdir: str, log) -> dict:
    t = config.train
    config_json, fingerprint, vocab = rundir.check_run_dir(config, corpus, workdir)

    loss_mask = task_loss_mask(config, corpus)
    train_data = TrainStreams(config, corpus, loss_mask)
    steps_per_epoch = train_data.steps_per_epoch
    num_steps = t.num_steps or t.num_epochs * steps_per_epoch
    eval_every = t.eval_every or steps_per_epoch
    checkpoint_every = t.checkpoint_every or steps_per_epoch
    model = make_model(config, len(vocab) if vocab is not None else corpus.num_pitches)
    optimizer = make_optimizer(config, steps_per_epoch, num_steps)
    max_loss = diverge_bound(config, model)
    train_step = make_train_step(model, optimizer, config.optim.max_norm, t.loss_reduction, max_loss)
    word_level = vocab is not None and vocab.level == "word"
    select_by = t.get("select_by", "valid_loss")

    key = jax.random.PRNGKey(config.seed)
    init_key, dropout_base, sample_base = jax.random.split(key, 3)
    params = model.init(init_key)
    state = {"step": jnp.zeros((), jnp.int32), "opt_state": optimizer.init(params),
             "carry": model.zero_carry(t.batch_size),
             "sched": {"best_valid": jnp.asarray(jnp.inf, jnp.float32),
                       "best_select": jnp.asarray(jnp.inf, jnp.float32),
                       "bad_evals": jnp.zeros((), jnp.int32), "halvings": jnp.zeros((), jnp.int32)}}
    log(run_summary(config, workdir, lm_lib.num_params(params), num_steps, steps_per_epoch))
    checkpoints = RunCheckpoints(workdir, t.max_to_keep)
    result_path = os.path.join(workdir, "result.json")
    try:
        restored = _restore_latest(checkpoints, params, state, set_aside=True, log=log)
    except BaseException:
        checkpoints.close()
        raise
    rundir.write_run_files(workdir, config_json, fingerprint, vocab)  # the resume is valid: now write
    if restored is not None:
        params, state, meta = restored
        start = int(state["step"])
        time_offsets = (float(meta.get("elapsed_s", 0.0)), float(meta.get("train_time_s", 0.0)))
        log(f"resuming {workdir} at step {start}")
    else:
        start = 0
        time_offsets = (0.0, 0.0)
    losses = [r["loss"] for r in rundir.truncate_after(workdir, start)
              if isinstance(r.get("loss"), (int, float))]
    if os.path.exists(result_path):
        os.remove(result_path)  # the run is live again; a new result is written when it ends
    place = Placement(bool(t.get("data_parallel", False)))
    params = place.replicate(params)
    state = {**state, "opt_state": place.replicate(state["opt_state"]),
             "carry": place.split_batch(state["carry"]), "sched": state["sched"]}

    eval_metrics = Evaluator(model, config, corpus, loss_mask, place)
    metrics_file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    samples_file = open(os.path.join(workdir, "samples.txt"), "a", encoding="utf-8")
    tb = _tensorboard(workdir, purge_step=start + 1)
    progress = Progress(start, num_steps)
    pending: list = []
    last_good_loss = losses[-1] if losses else None
    started = time.time()
    status = "completed"
    last_valid = (None, None, None)  # (step, loss, metrics) of the latest evaluation
    best = {"step": None, "valid_loss": None, "metrics": {}}
    if restored is not None and math.isfinite(float(state["sched"]["best_select"])):
        best = best_record(checkpoints, log)

    def flush() -> bool:
        """Write pending step records; False when a loss is not finite."""
        nonlocal last_good_loss
        if not pending:
            return True
        values = jax.device_get([m for _, m in pending])
        ok = True
        for (step, _), m in zip(pending, values):
            record = step_record(step, m)
            if not bool(m["finite"]):
                ok = False
                state["step"] = jnp.asarray(step, jnp.int32)  # the result names the step that diverged
                metrics_file.write(json.dumps(rundir.json_safe(record)) + "\n")
                break
            last_good_loss = record["loss"]
            metrics_file.write(json.dumps(record) + "\n")
            if tb is not None:
                for k in ("loss", "grad_norm", "learning_rate"):
                    tb.add_scalar(f"train/{k}", record[k], step)
        metrics_file.flush()
        pending.clear()
        return ok

    def write_sample(step: int, valid_loss: float, p) -> None:
        append_sample(samples_file, model, p, corpus, t, sample_base, step, valid_loss)

    def times() -> dict:
        """Cumulative seconds over all sessions of this run: wall clock, and training only."""
        return {"elapsed_s": time_offsets[0] + time.time() - started,
                "train_time_s": time_offsets[1] + progress.elapsed()}

    def save(step: int) -> None:
        meta = {"step": step, "time": time.time(), **times()}
        checkpoints.save("latest", step, params, state, meta)

    if (config.optim.schedule.name == "plateau"
            and int(state["sched"]["halvings"]) > config.optim.schedule.max_halvings):
        num_steps = start  # the plateau rule already stopped this run
        log(f"{workdir}: stopped earlier by the plateau rule at step {start}")

    try:
        step = start
        while step < num_steps:
            resets = None
            if t.bptt == "truncated":
                inputs, targets, weights, resets, new_epoch = train_data.batch(step)
                carry = place.split_batch(model.zero_carry(t.batch_size)) if new_epoch else state["carry"]
            else:
                batch = data_lib.window_batch(corpus.train, config.seed, step, t.batch_size, t.seq_len,
                                              mask=loss_mask.get("train"))
                inputs, targets = batch[:2]
                weights = batch[2] if len(batch) == 3 else None
                carry = place.split_batch(model.zero_carry(t.batch_size))
            # no dropout, no key: saves a host dispatch per step (the arithmetic is the same)
            dropout_key = jax.random.fold_in(dropout_base, step) if model.dropout > 0 else None
            inputs, targets, weights, resets = place.split_batch((inputs, targets, weights, resets))
            params, opt_state, carry, metrics = train_step(
                params, state["opt_state"], carry, inputs, targets, dropout_key, weights, resets)
            step += 1
            state = {**state, "step": jnp.asarray(step, jnp.int32), "opt_state": opt_state, "carry": carry}
            pending.append((step, metrics))
            last = step == num_steps
            do_eval = step % eval_every == 0 or last
            do_save = do_eval or step % checkpoint_every == 0
            if step % t.log_every == 0 or do_save or step == start + 1:
                if not flush():
                    status = "diverged"
                    kept = checkpoints.latest_step()
                    log(f"step {int(state['step'])}: diverged (loss, gradient or parameters not finite, or the "
                        f"loss above {max_loss:.4g} = train.diverge_factor x the loss of uniform predictions); "
                        "stopping, " + (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                                        else "before any checkpoint was saved"))
                    break
                log(progress.line(step, last_good_loss))
                if step == start + 1:  # exclude the first step (compilation) from the rate
                    progress.restart_rate(step)
            if not do_save:
                continue
            progress.pause()
            stop = False
            if do_eval:
                valid_metrics = eval_metrics(params, "valid")
                valid = valid_metrics["loss"]
                last_valid = (step, valid, valid_metrics)
                record = eval_record(step, valid_metrics, word_level, times())
                sched = state["sched"]
                score = -valid_metrics["accuracy"] if select_by == "valid_accuracy" else valid
                improved = bool(score < float(sched["best_select"]))
                best_v, bad, halvings, halve, stop = plateau_update(
                    float(sched["best_valid"]), int(sched["bad_evals"]), int(sched["halvings"]), valid,
                    config.optim.schedule.patience, config.optim.schedule.max_halvings)
                if config.optim.schedule.name != "plateau":
                    halve = stop = False
                    bad, halvings = 0, 0
                if halve:
                    hp = dict(state["opt_state"].hyperparams)
                    hp["learning_rate"] = hp["learning_rate"] * 0.5
                    state["opt_state"] = state["opt_state"]._replace(hyperparams=hp)
                    record["halved_learning_rate"] = float(hp["learning_rate"])
                sched = {"best_valid": jnp.asarray(best_v, jnp.float32),
                         "best_select": jnp.asarray(min(score, float(sched["best_select"])), jnp.float32),
                         "bad_evals": jnp.asarray(bad, jnp.int32), "halvings": jnp.asarray(halvings, jnp.int32)}
                state["sched"] = sched
                metrics_file.write(json.dumps(rundir.json_safe(record)) + "\n")
                metrics_file.flush()
                if tb is not None:
                    tb.add_scalar("valid/loss", valid, step)
                log(f"step {step}: valid loss {valid:.4f}"
                    + (f" (perplexity {record['valid_perplexity']:.2f})" if word_level else "")
                    + "".join(f", {k} {v:.4f}" for k, v in valid_metrics.items() if k != "loss"))
                write_sample(step, valid, params)
                if improved:
                    extra = {k: v for k, v in valid_metrics.items() if k != "loss"}
                    best = {"step": step, "valid_loss": valid, "metrics": extra}
                    checkpoints.save("best", step, params, state,
                                     rundir.json_safe({"step": step, "valid_loss": valid, "metrics": extra}))
            save(step)
            progress.resume()
            if stop:
                log(f"step {step}: learning rate halved {config.optim.schedule.max_halvings + 1} times "
                    f"without improvement; stopping")
                break
        flush()
        checkpoints.wait()
    except BaseException as e:
        # a failed save may also surface here; the run is recorded as failed either way
        save_error = checkpoints.close_after_failure()
        metrics_file.close()
        samples_file.close()
        if tb is not None:
            tb.close()
        if isinstance(e, Exception) or save_error is not None:
            error = e if isinstance(e, Exception) else save_error
            rundir.write_json_atomic(result_path, {"status": "failed", "error": f"{type(error).__name__}: {error}",
                                            "step": int(state["step"]), "num_steps": num_steps})
        raise

    final_valid = final_test = test = None
    if status == "completed":
        final_step = int(state["step"])
        final_valid = (last_valid[2] if last_valid[0] == final_step else eval_metrics(params, "valid"))
        final_test = eval_metrics(params, "test")
        if best["step"] == final_step:
            test = final_test
        elif best["step"] is not None:
            test = best_test_metrics(checkpoints, params, eval_metrics, log)
    result = run_result(status, int(state["step"]), num_steps, steps_per_epoch, lm_lib.num_params(params),
                        last_good_loss, best, times(), vocab, select_by, corpus,
                        final_valid, final_test, test)
    metrics_file.close()
    samples_file.close()
    if tb is not None:
        tb.close()
    checkpoints.close()
    rundir.write_json_atomic(result_path, result)
    log(f"{status}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in result.items() if "loss" in k or "perplexity" in k))
    log(f"results: {result_path} (curves: metrics.jsonl, checkpoints: checkpoints/best and latest)")
    return result


def best_test_metrics(checkpoints: RunCheckpoints, params, evaluate, log) -> dict | None:
    """The test metrics of the newest readable best checkpoint (unreadable ones set aside), or
    ``None`` (with one line) when none can be read."""
    try:
        restored = checkpoints.restore_readable("best", _abstract(params), set_aside=True, log=log)
    except UnreadableCheckpoints as e:
        log(f"{e}; the result has no test metrics of the best checkpoint")
        return None
    return None if restored is None else evaluate(restored[0], "test")


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


def load_run(workdir: str, which: str = "best", *, log=None):
    """``(model, params, vocab, config)`` of a run directory, from its best (else latest) checkpoint;
    ``log`` (default: stderr) says which step is used when the newest cannot be read."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} has no config.json: not a run directory")
    with open(path, encoding="utf-8") as f:
        config = ml_collections.ConfigDict(json.load(f))
    if config.data.kind == "music":
        raise InputError(f"{workdir} is a piano-roll run; load_run reads language-model runs")
    vocab = data_lib.Vocab.load(os.path.join(workdir, "vocab.json"))
    model = make_model(config, len(vocab))
    params_like = jax.eval_shape(model.init, jax.random.PRNGKey(0))
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
                return model, restored[0], vocab, config
    finally:
        checkpoints.close()
    if unreadable is not None:
        raise unreadable
    raise FileNotFoundError(f"{workdir} has no checkpoint yet")
