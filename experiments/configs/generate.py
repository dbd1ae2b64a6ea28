r"""One-to-many: a sequence generated from a vector (``model.kind = "conditioned"``).

    python -m experiments.train --config=experiments/configs/generate.py --workdir=runs/digit_rows
    python -m experiments.train --config=experiments/configs/generate.py:task=spell --workdir=runs/spell
    python -m experiments.process_figures --what=digits --run=runs/digit_rows   # a PNG grid per class

The lecture's ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v)`` for any registered cell: ``v`` enters
every step as part of the input (``condition=input``), sets the initial state (``init``), or both
(``both``, the default); rnn_jax.models.conditioned. Tasks: ``digit_rows`` (draw an 8x8 digit of a
given class row by row, a Bernoulli per pixel; the metric is the NLL per row) and ``spell`` (the
English words of a number ``0..max_value``, e.g. 342 -> "three hundred forty-two"; held-out numbers;
token and whole-sequence accuracy of greedy-decoded output).

Arg string: ``task=digit_rows,max_value=999,condition=both,cell=lstm,hidden=128,embed=32,layers=1,
steps=2000,batch=64,lr=0.003,max_norm=5,eval_every=250,data_seed=0,seed=0,runlocal``.
"""

from experiments.configs import common
from rnn_jax.configs import check_choice

TASKS = ("digit_rows", "spell")
DEFAULTS = dict(common.EXAMPLE_DEFAULTS, task="digit_rows", max_value=999, condition="both")
RUNLOCAL = dict(common.EXAMPLE_RUNLOCAL, max_value=99)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("task", a.task, TASKS)
    check_choice("condition", a.condition, ("both", "input", "init"))
    options = {}
    if a.task == "spell":
        common.check_int(a, "max_value")
        options["max_value"] = a.max_value
    return common.example_config(a, a.task, options, "conditioned", {"condition": a.condition})


def sweep(add):
    for condition in ("both", "input", "init"):
        for cell in ("rnn", "lstm", "gru"):
            add(cell=cell, condition=condition)
