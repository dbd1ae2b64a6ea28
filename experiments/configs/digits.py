r"""Many-to-one: sequence classification (``model.kind = "classifier"``).

    python -m experiments.train --config=experiments/configs/digits.py --workdir=runs/digits_row
    python -m experiments.train --config=experiments/configs/digits.py:mode=pixel,steps=3000 --workdir=runs/digits_pixel
    python -m experiments.train --config=experiments/configs/digits.py:task=parity,max_len=50 --workdir=runs/parity

Tasks: ``digits`` (scikit-learn's 8x8 handwritten digits, no download: read row by row, 8 steps of 8
pixels, or pixel by pixel, 64 steps of 1; the fixed 1257/270/270 split of rnn_jax.data.digits),
``parity`` (XOR of a bit string) and ``brackets`` (is a bracket string balanced), with lengths
``min_len..max_len``. The final state at each sequence's last valid step goes into a softmax
(``pool=mean``: the mean over valid steps); full BPTT over padded batches. The best checkpoint is
the one with the best validation accuracy.

Arg string (``min_len=0``: 1 for parity, 2 for brackets): ``task=digits,mode=row,min_len=0,
max_len=20,cell=lstm,hidden=128,embed=32,layers=1,pool=last,steps=2000,batch=64,lr=0.003,max_norm=5,optimizer=adam,dropout=0,eval_every=250,
data_seed=0,seed=0,runlocal``.
"""

from experiments.configs import common
from rnn_jax.configs import check_choice

TASKS = ("digits", "parity", "brackets")
DEFAULTS = dict(common.EXAMPLE_DEFAULTS, task="digits", mode="row", min_len=0, max_len=20, pool="last")
RUNLOCAL = dict(common.EXAMPLE_RUNLOCAL, max_len=8)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("task", a.task, TASKS)
    check_choice("pool", a.pool, ("last", "mean"))
    if a.task == "digits":
        check_choice("mode", a.mode, ("row", "pixel"))
        options = {"mode": a.mode}
    else:
        common.check_int(a, "max_len")
        common.check_int(a, "min_len", minimum=0)
        low = a.min_len or (2 if a.task == "brackets" else 1)
        options = {"min_len": low, "max_len": a.max_len}
    return common.example_config(a, a.task, options, "classifier", {"pool": a.pool})


def sweep(add):
    for cell in ("rnn", "lstm", "gru", "mut1"):
        add(cell=cell)
