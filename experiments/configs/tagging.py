r"""Synced many-to-many: a label for every input step (``model.kind = "tagger"``).

    python -m experiments.train --config=experiments/configs/tagging.py --workdir=runs/depth

Task ``bracket_depth``: a string of brackets (and, with ``distractors=N``, letters among them); the
label after each character is the nesting depth so far, clipped at ``max_depth``, or "unbalanced"
once a prefix has closed more than it opened (rnn_jax.data.tagging_tasks). Metrics: per-step
accuracy and whole-sequence accuracy; the best checkpoint is the one with the best validation
accuracy.

Arg string: ``min_len=2,max_len=20,max_depth=4,distractors=0,bidirectional=False,cell=lstm,hidden=128,
embed=32,steps=2000,batch=64,lr=0.003,max_norm=5,eval_every=250,data_seed=0,seed=0,runlocal``.
"""

from experiments.configs import common
from rnn_jax.configs import check_choice

DEFAULTS = dict(common.EXAMPLE_DEFAULTS, task="bracket_depth", min_len=2, max_len=20, max_depth=4, distractors=0,
                bidirectional=False)
RUNLOCAL = dict(common.EXAMPLE_RUNLOCAL, max_len=8)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("task", a.task, ("bracket_depth",))
    check_choice("bidirectional", a.bidirectional, (False, True))
    for name in ("min_len", "max_len", "max_depth"):
        common.check_int(a, name)
    common.check_int(a, "distractors", minimum=0)
    options = {"min_len": a.min_len, "max_len": a.max_len, "max_depth": a.max_depth, "distractors": a.distractors}
    if a.runlocal:
        options.update(valid_size=64, test_size=64)
    return common.example_config(a, a.task, options, "tagger", {"bidirectional": a.bidirectional})


def sweep(add):
    for cell in ("rnn", "lstm", "gru"):
        add(cell=cell)
