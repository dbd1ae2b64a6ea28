"""Fields shared by the language-model configs (see char_lm.py and word_lm.py), and the arg-string
helpers of every config here.

Arg strings: a value the user typed wins over ``runlocal`` and over a preset. ``runlocal`` (and a
preset) only change the *defaults* the arg string is parsed against (:func:`parse`), and every
size, count and rate is checked at ``get_config`` (:func:`check_int`, :func:`check_number`): a bad
value raises :class:`rnn_jax.errors.InputError` naming the arg, e.g.
``config arg hidden=-5: must be an integer >= 1``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import ml_collections

from rnn_jax.configs import parse_arg
from rnn_jax.errors import InputError


def lm_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.cell = "lstm"  # a registry name, optionally with options: "gru:reset_after=True"
    # K > 1: a sweep trains points that differ only in seed, learning rate, clip norm or init scales
    # K at a time, as vmapped trials of one jitted program (rnn_jax.trials)
    c.trials_per_program = 1
    c.model = ml_collections.ConfigDict(dict(
        embed_size=64, hidden_size=512, num_layers=2, dropout=0.0, variational=False,
        kernel_init="lecun_normal", recurrent_init="orthogonal",  # cell options (a cell spec wins)
        init_scale=1.0,      # cells: scale of the initialisers (uniform: ±init_scale/sqrt(hidden))
        embed_scale=1.0,     # embedding: uniform ±embed_scale (inputs of unit scale)
        output_scale=1.0,    # softmax weights: uniform ±output_scale/sqrt(hidden)
        impl="fused"))
    c.data = ml_collections.ConfigDict(dict(
        kind="char", path="", dir="", splits=(0.9, 0.05, 0.05), tfds_data_dir=""))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=64, seq_len=100, bptt="truncated", num_steps=1000, num_epochs=0,
        loss_reduction="mean",  # "sum_time": summed over time, averaged over the batch (Zaremba)
        eval_batch_size=64, test_batch_size=0,  # 0: same as eval_batch_size
        log_every=20, eval_every=200, checkpoint_every=200, max_to_keep=2,
        sample_length=200, sample_temperature=0.8,
        # diverged: a loss that is not finite, or above diverge_factor x the loss of uniform
        # predictions (ln V nats per token; P ln 2 per piano-roll frame); 0: only non-finite values
        diverge_factor=10.0,
        data_parallel=False))  # True: the batch split over all local devices, parameters replicated
    c.optim = ml_collections.ConfigDict(dict(
        name="adam", learning_rate=2e-3, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8, rmsprop_decay=0.9,
        weight_decay=0.0, max_norm=5.0,
        schedule=ml_collections.ConfigDict(dict(
            name="cosine", decay_factor=2.0, decay_start_epoch=4, patience=0, max_halvings=5,
            warmup_steps=0, decay_begin=0.5, end_fraction=0.0))))
    return c


# ----------------------------------------------------------------------------- arg strings

def typed_keys(arg: str | None) -> set:
    """The keys the user wrote in an arg string: ``"runlocal,steps=3"`` -> ``{"runlocal", "steps"}``."""
    return {item.partition("=")[0].strip() for item in (arg or "").split(",") if item.strip()}


def parse(arg: str | None, defaults: Mapping[str, Any], runlocal: Mapping[str, Any] = ()) -> ml_collections.ConfigDict:
    """``parse_arg(arg, **defaults)``, where ``runlocal`` (when the arg sets it) changes the
    *defaults*: a value the user typed always wins over the smoke-run size."""
    a = parse_arg(arg, **defaults)
    if a.get("runlocal") and runlocal:
        a = parse_arg(arg, **{**defaults, **dict(runlocal)})
    return a


def check_int(a, name: str, minimum: int = 1) -> None:
    """``InputError`` naming the arg unless ``a[name]`` is an integer >= ``minimum``."""
    value = a[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"config arg {name}={value!r}: must be an integer >= {minimum}")


def check_number(a, name: str, minimum: float = 0.0, maximum: float | None = None, strict: bool = False,
                 strict_max: bool = True) -> None:
    """``InputError`` naming the arg unless ``a[name]`` is a finite number in the range
    (``strict``: above ``minimum``; ``strict_max``: below ``maximum``)."""
    value = a[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > minimum if strict else value >= minimum
        if maximum is not None:
            ok = ok and (value < maximum if strict_max else value <= maximum)
    if not ok:
        lo = f"> {minimum:g}" if strict else f">= {minimum:g}"
        hi = "" if maximum is None else f" and {'<' if strict_max else '<='} {maximum:g}"
        raise InputError(f"config arg {name}={value!r}: must be a number {lo}{hi}")


# ----------------------------------------------------------------------------- example tasks

EXAMPLE_DEFAULTS = dict(cell="lstm", hidden=128, embed=32, layers=1, steps=2000, batch=64, lr=3e-3, max_norm=5.0,
                        optimizer="adam", dropout=0.0, eval_every=250, data_seed=0, seed=0, select_by="",
                        runlocal=False)
EXAMPLE_RUNLOCAL = dict(hidden=16, embed=8, steps=20, batch=8, eval_every=10)


def example_config(a, task: str, options: Mapping[str, Any], kind: str, model: Mapping[str, Any] = ()):
    """The config of a model kind trained on a registered task's example batches
    (:mod:`rnn_jax.data.registry`): ``a`` is the parsed arg string (:data:`EXAMPLE_DEFAULTS` plus the
    config's own keys), ``options`` the task's block, ``model`` the kind's model fields."""
    from rnn_jax.configs import check_choice
    from rnn_jax.data import registry

    for name in ("hidden", "embed", "layers", "steps", "batch", "eval_every"):
        check_int(a, name)
    check_int(a, "seed", minimum=0)
    check_int(a, "data_seed", minimum=0)
    check_number(a, "lr", strict=True)
    check_number(a, "max_norm", strict=True)
    check_number(a, "dropout", 0.0, 1.0)
    check_choice("optimizer", a.optimizer, ("adam", "sgd", "momentum", "rmsprop", "adagrad"))
    entry = registry.get(task)
    c = lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=a.embed, hidden_size=a.hidden, num_layers=a.layers, dropout=a.dropout,
                   embed_scale=0.1)
    c.model.kind = kind
    for name, value in dict(model).items():
        c.model[name] = value
    c.data = ml_collections.ConfigDict(dict(kind=task, path="", dir="", seed=a.data_seed))
    c.data[task] = dict(options)
    c.train.update(batch_size=a.batch, seq_len=1, bptt="full", num_steps=a.steps, eval_batch_size=256,
                   log_every=max(1, min(100, a.eval_every)), eval_every=a.eval_every, checkpoint_every=a.eval_every,
                   sample_length=1, max_to_keep=1)
    select = a.select_by or (f"valid_{entry.metrics[0]}" if entry.metrics else "valid_loss")
    check_choice("select_by", select, ("valid_loss",) + tuple(f"valid_{m}" for m in entry.metrics))
    c.train.select_by = select
    c.optim.update(name=a.optimizer, learning_rate=a.lr, max_norm=a.max_norm)
    c.optim.schedule.update(name="constant")
    return c
