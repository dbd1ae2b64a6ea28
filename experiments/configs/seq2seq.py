r"""Many-to-many through an encoder and a decoder (``model.kind = "seq2seq"``).

    python -m experiments.train --config=experiments/configs/seq2seq.py --workdir=runs/reverse_bahdanau
    python -m experiments.train --config=experiments/configs/seq2seq.py:attention=none,steps=20000 \
        --workdir=runs/reverse_none
    python -m experiments.train --config=experiments/configs/seq2seq.py:task=addition,min_len=1,max_len=5 \
        --workdir=runs/addition

Tasks: ``reverse`` and ``sort`` (``min_len..max_len`` symbols of the first ``symbols`` letters) and
``addition`` (``a+b`` with operands of ``min_len..max_len`` digits); sources are split into
train/valid/test by a hash, so evaluation sources are never trained on. The cell (any registered
one) is the encoder and the decoder; ``attention`` is ``bahdanau`` (additive), ``luong``
(dot-product) or ``none``; teacher forcing in training; the metrics are token and whole-sequence
accuracy of greedy-decoded output (never teacher-forced), and the best checkpoint is the one with
the best validation sequence accuracy.

Arg string: ``task=reverse,min_len=5,max_len=20,symbols=10,attention=bahdanau,bridge=learned,
cell=lstm,hidden=128,embed=32,steps=2000,batch=64,lr=0.003,max_norm=5,eval_every=250,data_seed=0,
seed=0,runlocal``.
"""

from experiments.configs import common
from rnn_jax.configs import check_choice

TASKS = ("reverse", "sort", "addition")
DEFAULTS = dict(common.EXAMPLE_DEFAULTS, task="reverse", min_len=5, max_len=20, symbols=10, attention="bahdanau",
                bridge="learned")
RUNLOCAL = dict(common.EXAMPLE_RUNLOCAL, min_len=2, max_len=6)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("task", a.task, TASKS)
    check_choice("attention", a.attention, ("bahdanau", "luong", "none"))
    check_choice("bridge", a.bridge, ("learned", "zero"))
    for name in ("min_len", "max_len", "symbols"):
        common.check_int(a, name)
    options = {"min_len": a.min_len, "max_len": a.max_len}
    if a.task != "addition":
        options["num_symbols"] = a.symbols
    if a.runlocal:
        options.update(valid_size=64, test_size=64)
    return common.example_config(a, a.task, options, "seq2seq", {"attention": a.attention, "bridge": a.bridge})


def sweep(add):
    for attention in ("bahdanau", "none"):
        for cell in ("lstm", "gru"):
            add(cell=cell, attention=attention)
