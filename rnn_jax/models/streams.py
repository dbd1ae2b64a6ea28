"""The stream kinds: ``lm`` (a language model over one token stream: characters, PTB words or a
generated Jozefowicz task) and ``piano`` (piano rolls, a Bernoulli per note).

Both train with truncated BPTT over contiguous streams, the carry passed from batch to batch
(:class:`TrainStreams`), or on random windows from the zero state (``train.bptt = "full"``); the
per-piece music protocol packs whole pieces into lanes and resets the carry at every piece start.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import configs as cfg
from rnn_jax import data as data_lib
from rnn_jax import lm as lm_lib
from rnn_jax import piano as piano_lib
from rnn_jax import rundir, sampling
from rnn_jax.data import music as music_lib
from rnn_jax.errors import InputError
from rnn_jax.evaluate import Evaluator, nll_fn, pieces_protocol, task_loss_mask
from rnn_jax.models.base import Problem, make_cell

BPTT_MODES = ("truncated", "full")
LOSS_REDUCTIONS = ("mean", "sum_time")
DATA_KINDS = ("char", "ptb", "music") + data_lib.TASKS
LOSS_ON = ("all", "scored")
MUSIC_PROTOCOLS = ("pieces", "stream")


def check_config(config, kind: str) -> None:
    """The data block of a stream run, and its model's sizes against the cell."""
    d, t = config.data, config.train
    allowed = ("music",) if kind == "piano" else tuple(k for k in DATA_KINDS if k != "music")
    if d.kind not in allowed:
        raise InputError(f"config.data.kind = {d.kind!r} cannot be trained by model.kind = {kind!r}; it trains "
                         f"{', '.join(map(repr, allowed))}")
    cfg.check_choice("train.bptt", t.bptt, BPTT_MODES)
    cfg.check_choice("train.loss_reduction", t.loss_reduction, LOSS_REDUCTIONS)
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
    m = config.model
    try:  # cell options against sizes (MUT input terms, ...), without compiling anything
        jax.eval_shape(make_model(config, 2).init, jax.random.PRNGKey(0))
    except ValueError as e:
        raise InputError(f"config.cell = {config.cell!r} with model.embed_size={m.embed_size}, "
                         f"model.hidden_size={m.hidden_size}: {e}") from None


def load_data(data) -> data_lib.Corpus:
    """The corpus of a config's ``data`` block: a text corpus, piano rolls, or a generated task stream.

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


def make_model(config, vocab_size: int):
    """The config's model: a :class:`LanguageModel` over ``vocab_size`` tokens, or for
    ``data.kind = "music"`` a :class:`PianoRollModel` over ``vocab_size`` pitches."""
    m = config.model
    cell = make_cell(config)
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


def stream_loss(model, loss_reduction: str = "mean"):
    """``loss(params, carry, batch, key) -> (objective, (mean, carry))`` of a stream model on a batch
    ``{"inputs", "targets", "weights", "resets"}`` (``weights``/``resets`` may be ``None``): the mean
    NLL per scored target, and as the objective that mean or, as in Zaremba et al.'s code, the mean
    summed over time (``loss_reduction = "sum_time"``)."""
    cfg.check_choice("train.loss_reduction", loss_reduction, LOSS_REDUCTIONS)
    nll = nll_fn(model)

    def loss(params, carry, batch, key):
        inputs = batch["inputs"]
        logits, carry = model.apply(params, carry, inputs, dropout_key=key, resets=batch.get("resets"))
        total, count = nll(logits, batch["targets"], batch.get("weights"))
        mean = total / jnp.maximum(count, 1.0)
        objective = mean * inputs.shape[1] if loss_reduction == "sum_time" else mean
        return objective, (mean, carry)

    return loss


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


def append_sample(f, model, params, corpus, train_config, sample_base, step: int, valid_loss: float) -> None:
    """Append a sample (``train.sample_length`` tokens after the first validation token) to the
    open ``samples.txt`` ``f``; nothing for piano rolls or when ``sample_length`` is 0."""
    text = sample_text(model, params, corpus, train_config, jax.random.fold_in(sample_base, step))
    if text is not None:
        f.write(f"{rundir.SAMPLE_HEADER}{step} (valid loss {valid_loss:.4f}) ===\n{text}\n\n")
        f.flush()


def sample_text(model, params, corpus, train_config, key) -> str | None:
    """``train.sample_length`` tokens sampled after the first validation token, decoded; ``None`` for
    piano rolls or when ``sample_length`` is 0."""
    if not train_config.sample_length or getattr(corpus, "vocab", None) is None:
        return None
    prime = corpus.valid[:1]
    tokens = sampling.sample(model, params, jnp.asarray(prime), key, length=train_config.sample_length,
                             temperature=float(train_config.sample_temperature))
    return corpus.vocab.decode(np.concatenate([prime, np.asarray(tokens[0])]))


class StreamProblem(Problem):
    """A stream kind's problem (see :mod:`rnn_jax.models.base`)."""

    def __init__(self, config, corpus):
        t = config.train
        self.config, self.data, self.corpus = config, corpus, corpus
        self.vocab = getattr(corpus, "vocab", None)
        self.level = self.vocab.level if self.vocab is not None else "frame"
        self.task = corpus.task if isinstance(corpus, data_lib.TaskCorpus) else None
        self.metrics = ("accuracy",) if self.task else ()
        self.loss_mask = task_loss_mask(config, corpus)
        self.streams = TrainStreams(config, corpus, self.loss_mask)
        self.steps_per_epoch = self.streams.steps_per_epoch
        self.size = len(self.vocab) if self.vocab is not None else corpus.num_pitches
        self.model = make_model(config, self.size)
        self.uniform_loss = uniform_loss(self.model)
        self.seed_batches = t.bptt == "full"
        self.loss = stream_loss(self.model, t.loss_reduction)

    def describe(self) -> str:
        d = self.config.data
        music = f"piano rolls of {d.path} ({d.get('protocol', 'pieces')} protocol)"
        return {"char": f"characters of {d.path}", "ptb": f"PTB words in {d.dir}",
                "music": music}.get(d.kind, f"{d.kind} task")

    def init(self, config, key):
        return make_model(config, self.size).init(key)

    def zero_carry(self, batch_size: int):
        return self.model.zero_carry(batch_size)

    def batch(self, config, step: int):
        t = config.train
        if t.bptt == "truncated":
            inputs, targets, weights, resets, new_epoch = self.streams.batch(step)
        else:
            window = data_lib.window_batch(self.corpus.train, config.seed, step, t.batch_size, t.seq_len,
                                           mask=self.loss_mask.get("train"))
            inputs, targets = window[:2]
            weights, resets, new_epoch = (window[2] if len(window) == 3 else None), None, True
        return {"inputs": inputs, "targets": targets, "weights": weights, "resets": resets}, new_epoch

    def evaluator(self, place=None, trials: bool = False):
        return Evaluator(self.model, self.config, self.corpus, self.loss_mask, place, trials=trials)

    def sample(self, params, key, step: int, valid_loss: float):
        return sample_text(self.model, params, self.corpus, self.config.train, key)


class StreamKind:
    """``lm`` or ``piano``."""

    def __init__(self, name: str):
        self.name = name

    def check(self, config) -> None:
        check_config(config, self.name)

    def problem(self, config) -> StreamProblem:
        corpus = load_data(config.data)
        check_data_fits(config, corpus)
        return StreamProblem(config, corpus)


KINDS = {"lm": StreamKind("lm"), "piano": StreamKind("piano")}
