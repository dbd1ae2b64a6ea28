"""Optimizers and learning-rate schedules: ``optax`` chains built from a config's ``optim`` block.

``make_optimizer(config)`` is ``clip_by_global_norm(max_norm)`` -> [weight decay] -> sgd | momentum |
adam | rmsprop | adagrad, with the schedule ``constant``, ``zaremba``, ``plateau`` (halved by the
training loop through :func:`plateau_update`) or ``cosine``.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from rnn_jax import configs as cfg
from rnn_jax.errors import InputError

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "zaremba", "plateau", "cosine")


def make_schedule(optim, steps_per_epoch: int = 1, num_steps: int = 1, learning_rate=None):
    """The learning-rate schedule ``step -> lr`` (``plateau`` is constant here; the loop halves it).

    ``learning_rate`` (default ``optim.learning_rate``) may be a traced scalar: vmapped trials
    build one optimizer per trial inside the jitted program.
    """
    lr = float(optim.learning_rate) if learning_rate is None else learning_rate
    s = optim.schedule
    if s.name in ("constant", "plateau"):
        return lr
    if s.name == "zaremba":
        # Divide by decay_factor at the start of every epoch after epoch decay_start_epoch (1-based).
        def schedule(step):
            epoch = step // steps_per_epoch + 1
            return lr * jnp.asarray(s.decay_factor, jnp.float32) ** -jnp.maximum(
                epoch - s.decay_start_epoch, 0).astype(jnp.float32)
        return schedule
    if s.name == "cosine":
        warmup = min(int(s.warmup_steps), num_steps)
        begin = max(warmup, int(round(s.decay_begin * num_steps)))
        parts = [optax.linear_schedule(0.0, lr, warmup)] if warmup else []
        boundaries = [warmup] if warmup else []
        if begin > warmup:
            parts.append(optax.constant_schedule(lr))
            boundaries.append(begin)
        parts.append(optax.cosine_decay_schedule(lr, max(num_steps - begin, 1), alpha=s.end_fraction))
        return optax.join_schedules(parts, boundaries) if boundaries else parts[0]
    raise InputError(f"config.optim.schedule.name = {s.name!r}; choose one of {', '.join(SCHEDULES)}")


def make_optimizer(config, steps_per_epoch: int = 1, num_steps: int = 1, *, learning_rate=None,
                   max_norm=None) -> optax.GradientTransformation:
    """``clip_by_global_norm(max_norm)`` -> [weight decay] -> optimizer with the schedule.

    ``learning_rate`` and ``max_norm`` default to the config's; they may be traced scalars (one
    optimizer per vmapped trial, see :mod:`rnn_jax.trials`).

    Weight decay is coupled L2 (``optax.add_decayed_weights`` adds ``weight_decay · params`` to the
    clipped gradient before the optimizer), on every parameter, embeddings and biases included.

    The chain is wrapped in ``optax.inject_hyperparams`` so the state holds the current learning
    rate (``opt_state.hyperparams["learning_rate"]``), which the loop logs and the plateau
    schedule changes.
    """
    o = config.optim if "optim" in config else config
    cfg.check_choice("optim.name", o.name, OPTIMIZERS)

    def chain(learning_rate):
        base = {
            "sgd": lambda: optax.sgd(learning_rate),
            "momentum": lambda: optax.sgd(learning_rate, momentum=o.momentum),
            "adam": lambda: optax.adam(learning_rate, b1=o.b1, b2=o.b2, eps=o.eps),
            "rmsprop": lambda: optax.rmsprop(learning_rate, decay=o.rmsprop_decay, eps=o.eps),
            "adagrad": lambda: optax.adagrad(learning_rate, eps=o.eps),
        }[o.name]()
        parts = [optax.clip_by_global_norm(o.max_norm if max_norm is None else max_norm)]
        if o.weight_decay:
            parts.append(optax.add_decayed_weights(o.weight_decay))
        # One flat vector for all parameters: a few large fused kernels instead of several per
        # parameter array, which cuts the XLA compile time of a training step by about 1 s.
        return optax.flatten(optax.chain(*parts, base))

    return optax.inject_hyperparams(chain)(
        learning_rate=make_schedule(o, steps_per_epoch, num_steps, learning_rate))


def plateau_update(best: float, bad_evals: int, halvings: int, valid: float, patience: int,
                   max_halvings: int):
    """Jozefowicz-style plateau schedule after one evaluation.

    Returns ``(best, bad_evals, halvings, halve, stop)``: the learning rate is halved when the
    validation loss has not improved for more than ``patience`` evaluations, and the run stops once
    it has been halved more than ``max_halvings`` times.
    """
    if valid < best:
        return valid, 0, halvings, False, False
    bad_evals += 1
    if bad_evals <= patience:
        return best, bad_evals, halvings, False, False
    halvings += 1
    return best, 0, halvings, True, halvings > max_halvings
