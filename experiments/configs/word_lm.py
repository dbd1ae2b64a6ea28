r"""Word-level language model on Penn Treebank-format files (Zaremba, Sutskever & Vinyals, 2014).

    python -m experiments.train --config=experiments/configs/word_lm.py:preset=small \
        --config.data.dir=/path/to/ptb --workdir=runs/ptb_small

``data.dir`` holds ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt`` (one sentence per line,
``<unk>`` already in the text; ``<eos>`` is appended at each line end). Presets reproduce the
paper's settings (2 layers, batch 20, SGD with learning rate 1, uniform init, TBPTT with carried
state); the paper reports test perplexity 114.5 (small), 82.7 (medium) and 78.4 (large):

=======  ======  ======  =======  =======  ======  ================  =========
preset   hidden  unroll  init     dropout  epochs  lr decay          max norm
=======  ======  ======  =======  =======  ======  ================  =========
small    200     20      ±0.1     0        13      /2 after 4        5
medium   650     35      ±0.05    0.5      39      /1.2 after 6      5
large    1500    35      ±0.04    0.65     55      /1.15 after 14    10
=======  ======  ======  =======  =======  ======  ================  =========

Arg string: ``preset=medium,cell=gru,hidden=300,layers=2,batch=20,seq_len=35,dropout=0.5,epochs=39,
steps=0,lr=1.0,init=0.05,max_norm=5,seed=0,runlocal``. The preset (and ``runlocal``, which shrinks
the model and trains 20 steps) give the defaults; a value typed in the arg string wins over both
(``preset=medium,dropout=0.2`` keeps medium's other settings). ``init`` is the absolute bound of the
uniform initialisation; ``steps`` > 0 trains that many steps instead of ``epochs`` (typing
``epochs`` alone under ``runlocal`` trains epochs). Values are checked here (``hidden=-5`` is
refused, naming the arg).
"""

import math

from experiments.configs import common
from rnn_jax.configs import check_choice, parse_arg
from rnn_jax.errors import InputError

PRESETS = {
    # hidden, unroll, init, dropout, epochs, decay factor, decay start epoch, max norm
    "small": (200, 20, 0.1, 0.0, 13, 2.0, 4, 5.0),
    "medium": (650, 35, 0.05, 0.5, 39, 1.2, 6, 5.0),
    "large": (1500, 35, 0.04, 0.65, 55, 1.15, 14, 10.0),
}
DEFAULTS = dict(preset="small", cell="lstm", hidden=200, layers=2, batch=20, seq_len=20, dropout=0.0,
                epochs=13, steps=0, lr=1.0, init=0.1, max_norm=5.0, seed=0, runlocal=False)
RUNLOCAL = dict(hidden=32, batch=4, seq_len=8, epochs=0, steps=20, init=0.1)  # defaults of a smoke run


def _defaults(preset: str) -> dict:
    hidden, unroll, init, dropout, epochs, _, _, max_norm = PRESETS[preset]
    return {**DEFAULTS, "preset": preset, "hidden": hidden, "seq_len": unroll, "init": init,
            "dropout": dropout, "epochs": epochs, "max_norm": max_norm}


def get_config(arg=None):
    preset = parse_arg(arg, **DEFAULTS).preset
    check_choice("preset", preset, PRESETS)
    runlocal = dict(RUNLOCAL)
    if "epochs" in common.typed_keys(arg) and "steps" not in common.typed_keys(arg):
        runlocal.pop("steps")  # epochs typed under runlocal: train epochs, not runlocal's steps
    a = common.parse(arg, _defaults(preset), runlocal)
    for name in ("hidden", "layers", "batch", "seq_len"):
        common.check_int(a, name)
    for name in ("epochs", "steps", "seed"):
        common.check_int(a, name, minimum=0)
    if a.epochs == 0 and a.steps == 0:
        raise InputError("config args epochs=0 and steps=0: set one of them >= 1")
    common.check_number(a, "dropout", 0.0, 1.0)
    for name in ("lr", "init", "max_norm"):
        common.check_number(a, name, strict=True)
    _, _, _, _, _, factor, start, _ = PRESETS[preset]
    hidden = a.hidden
    c = common.lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=hidden, hidden_size=hidden, num_layers=a.layers, dropout=a.dropout,
                   kernel_init="uniform", recurrent_init="uniform",
                   init_scale=a.init * math.sqrt(hidden), embed_scale=a.init,
                   output_scale=a.init * math.sqrt(hidden))
    c.data.update(kind="ptb", path="")
    # Zaremba's code sums the loss over the unrolled steps (averaged over the batch) and evaluates
    # the test set as one stream.
    c.train.update(batch_size=a.batch, seq_len=a.seq_len, eval_batch_size=a.batch, test_batch_size=1,
                   loss_reduction="sum_time", num_steps=a.steps,
                   num_epochs=a.epochs, log_every=100, eval_every=1000, checkpoint_every=1000,
                   sample_length=30, sample_temperature=1.0)
    c.optim.update(name="sgd", learning_rate=a.lr, max_norm=a.max_norm)
    c.optim.schedule.update(name="zaremba", decay_factor=factor, decay_start_epoch=start)
    if a.runlocal:
        c.train.update(test_batch_size=0, log_every=5, eval_every=10, checkpoint_every=10)
    return c


def sweep(add):
    # embed_size == hidden_size here, so any MUT1 input term fits
    for cell in ("lstm", "gru", "mut1:input_term=linear"):
        add(cell=cell)
