"""Model kinds by name (``config.model.kind``): what the one training loop trains.

A *model kind* turns a config into a :class:`Problem` (defined in :mod:`rnn_jax.models.base`): the
model, its data, a training batch per step, the loss of a batch, an evaluator and a sample for
``samples.txt``. The loop in :mod:`rnn_jax.train` (plain runs and vmapped trials alike) knows only
that interface, so a new kind is a new module with a ``KIND`` object and one entry below; the loop
does not change.

=============  =====================================================  ==============================
kind           process type (cs231n lecture 10)                        data (``config.data.kind``)
=============  =====================================================  ==============================
``lm``         many-to-many, synced, over one stream (truncated BPTT)  ``char``, ``ptb``, stream tasks
``piano``      many-to-many over piano rolls (Bernoulli per note)      ``music``
``classifier`` many-to-one: a label per sequence                       ``digits``, ``parity``, ...
``tagger``     many-to-many, synced: a label per step                  ``bracket_depth``
``conditioned`` one-to-many: a sequence from a vector                  ``digit_rows``, ``spell``
``seq2seq``    many-to-many through an encoder and a decoder           ``reverse``, ``sort``, ``addition``
``caption``    one-to-many from an image: CNN, then a decoder that     ``digit_scenes``, ``karpathy``
               is conditioned on it or attends to its regions
``vqa``        an image and a question to an answer (attention)        ``sort_of_clevr``
=============  =====================================================  ==============================

``config.model.kind`` may be left out (or empty): the kind then follows from ``data.kind``
(:func:`kind_name`), so configs written before kinds existed still mean what they meant.
"""

from __future__ import annotations

import importlib

from rnn_jax.errors import InputError

# name -> module holding its KIND (imported on first use)
KINDS = {
    "lm": "rnn_jax.models.streams",
    "piano": "rnn_jax.models.streams",
    "classifier": "rnn_jax.models.classifier",
    "tagger": "rnn_jax.models.tagger",
    "conditioned": "rnn_jax.models.conditioned",
    "seq2seq": "rnn_jax.models.seq2seq",
    "caption": "rnn_jax.models.captioner",
    "vqa": "rnn_jax.models.vqa",
}


def names() -> tuple:
    return tuple(KINDS)


def kind_name(config) -> str:
    """``config.model.kind``, or the kind that ``data.kind`` implies when it is empty."""
    kind = config.model.get("kind", "") or ""
    if kind:
        if kind not in KINDS:
            raise InputError(f"config.model.kind = {kind!r}: must be one of {', '.join(map(repr, KINDS))}")
        return kind
    data_kind = config.data.kind
    if data_kind == "music":
        return "piano"
    from rnn_jax.data import registry  # the task registry names the kind of each generated task

    entry = registry.TASKS.get(data_kind)
    return entry.model_kind if entry is not None else "lm"


def get(name: str):
    """The ``KIND`` object of model kind ``name``."""
    if name not in KINDS:
        raise InputError(f"model kind {name!r}: must be one of {', '.join(map(repr, KINDS))}")
    module = importlib.import_module(KINDS[name])
    kinds = getattr(module, "KINDS", None)
    return kinds[name] if kinds is not None else module.KIND


def for_config(config):
    """The ``KIND`` object that trains ``config``."""
    return get(kind_name(config))
