"""Everything specific to reproducing Jozefowicz, Zaremba & Sutskever (2015).

"An Empirical Exploration of Recurrent Network Architectures" (ICML 2015) trains ten recurrent
cells on the same generated and real tasks with a random hyperparameter search, and reports the
best of each. This module holds the numbers and choices that come from that paper, or that set
how this repository reproduces it, in one place:

* :data:`PAPER_TABLE1`: the published Table 1 (test accuracy on arithmetic and XML), shown next to
  our results in the tables of :mod:`rnn_jax.report`;
* :data:`PAPER_TASKS`: the tasks of those published numbers (the tables add a "(paper)" column
  for each);
* :data:`PAPER_SPACE`: the paper's random-search grid (SGD), used by :mod:`rnn_jax.sweep.hparams`;
* :class:`Preset` and :data:`PRESETS`: the sizes of a comparison (``quick``, ``laptop``,
  ``paper``), used by :mod:`rnn_jax.sweep.compare` and ``experiments/compare.py``;
* :data:`DEFAULT_CELLS`: the cells a comparison trains by default (the paper's ten, under our
  registry names).

The generated tasks themselves (arithmetic, XML, memorization) are in :mod:`rnn_jax.data.tasks`;
everything about them (vocabulary, options, metrics) comes from there, not from here.

This module imports nothing from the project, so the report (which imports no training code) and
the sweep code can both use it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

# ----------------------------------------------------------------------------- published results

# Table 1 of Jozefowicz, Zaremba & Sutskever, "An Empirical Exploration of Recurrent Network
# Architectures" (ICML 2015): test accuracy on the arithmetic and XML tasks (to three decimals);
# keys are our registry names ("rnn" is the paper's Tanh RNN).
PAPER_TABLE1 = {
    "rnn": {"arithmetic": 0.295, "xml": 0.321},
    "lstm": {"arithmetic": 0.892, "xml": 0.425},
    "lstm_f": {"arithmetic": 0.293, "xml": 0.234},
    "lstm_i": {"arithmetic": 0.751, "xml": 0.414},
    "lstm_o": {"arithmetic": 0.867, "xml": 0.421},
    "lstm_b": {"arithmetic": 0.902, "xml": 0.444},
    "gru": {"arithmetic": 0.896, "xml": 0.460},
    "mut1": {"arithmetic": 0.921, "xml": 0.475},
    "mut2": {"arithmetic": 0.897, "xml": 0.473},
    "mut3": {"arithmetic": 0.907, "xml": 0.465},
}
# The tasks of PAPER_TABLE1: the report adds a "(paper)" column for each.
PAPER_TASKS = ("arithmetic", "xml")

# ----------------------------------------------------------------------------- the search

# The paper's grid (SGD). Init: every matrix uniform in ±init_scale/sqrt(hidden).
PAPER_SPACE = {
    "init_scale": (0.3, 0.7, 1.0, 1.4, 2.0, 2.8),
    "learning_rate": (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
    "max_norm": (1.0, 2.5, 5.0, 10.0, 20.0),
    "num_layers": (1, 2, 3, 4),
}

# ----------------------------------------------------------------------------- the comparison

# The paper's ten cells, under our registry names ("rnn" is its Tanh RNN).
DEFAULT_CELLS = ("rnn", "lstm", "lstm_f", "lstm_i", "lstm_o", "lstm_b", "gru", "mut1", "mut2", "mut3")


@dataclasses.dataclass(frozen=True)
class Preset:
    """The size of a comparison (``rnn_jax.sweep.compare``): tasks, search, seeds, training length."""

    tasks: tuple
    settings: int            # N: settings per (cell, task); ignored when `fixed` is given
    seeds: int               # K: seeds of the best setting (the search run is seed 0)
    steps: int               # training steps per run (batch 20, unroll 35)
    budget: int              # parameters per model; the hidden size follows from it
    optimizer: str           # "sgd" (the paper's grid) or "adam"
    init_style: str          # "uniform" (the paper) or "lecun"
    fixed: Mapping | None    # one setting instead of a search: init_scale, learning_rate, max_norm, num_layers
    digits: int              # arithmetic: operands of up to this many digits
    distractors: int         # arithmetic: up to this many distractor letters after each character
    train_chars: int         # characters of generated training stream
    eval_every: int
    max_layers: int = 4
    negative: float = 0.0    # arithmetic: probability that an operand is negative
    extra: str = ""          # more of tasks.py's arg string, e.g. "batch=4,seq_len=10,eval_chars=600"


PRESETS = {
    # ~11 minutes on 2 cores: one fixed setting, one seed; shows the paper's main contrast. Small
    # models (80k parameters: LSTM 1x94) trained for more steps beat larger ones trained for fewer
    # in the same time (measured: XML LSTM 0.427 at 1x96/6000 steps vs 0.423 at 1x133/4500, 80 s vs 100 s).
    "quick": Preset(tasks=("arithmetic", "xml"), settings=1, seeds=1, steps=5000, budget=80_000,
                    optimizer="adam", init_style="lecun",
                    fixed={"init_scale": 1.0, "learning_rate": 3e-3, "max_norm": 5.0, "num_layers": 1},
                    digits=5, distractors=3, train_chars=1_000_000, eval_every=1000),
    # A random search on a laptop (hours): 4 settings from the paper's grid with Adam, 2 seeds.
    "laptop": Preset(tasks=("arithmetic", "xml", "memorization"), settings=4, seeds=2, steps=5000,
                     budget=80_000, optimizer="adam", init_style="uniform", fixed=None,
                     digits=5, distractors=3, train_chars=1_000_000, eval_every=1000, max_layers=2),
    # The paper's protocol, for a cluster: its SGD grid, 8-digit arithmetic with operands of either
    # sign, 100 settings, 3 seeds.
    "paper": Preset(tasks=("arithmetic", "xml", "memorization"), settings=100, seeds=3, steps=30000,
                    budget=1_000_000, optimizer="sgd", init_style="uniform", fixed=None,
                    digits=8, distractors=3, train_chars=5_000_000, eval_every=2000, negative=0.5),
}
