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

Arg string: ``preset=medium,cell=gru,runlocal``.
"""

import math

from experiments.configs import common
from rnn_jax.configs import check_choice, parse_arg

PRESETS = {
    # hidden, unroll, init, dropout, epochs, decay factor, decay start epoch, max norm
    "small": (200, 20, 0.1, 0.0, 13, 2.0, 4, 5.0),
    "medium": (650, 35, 0.05, 0.5, 39, 1.2, 6, 5.0),
    "large": (1500, 35, 0.04, 0.65, 55, 1.15, 14, 10.0),
}


def get_config(arg=None):
    a = parse_arg(arg, preset="small", cell="lstm", seed=0, runlocal=False)
    check_choice("preset", a.preset, PRESETS)
    hidden, unroll, init, dropout, epochs, factor, start, max_norm = PRESETS[a.preset]
    c = common.lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=hidden, hidden_size=hidden, num_layers=2, dropout=dropout,
                   kernel_init="uniform", recurrent_init="uniform",
                   init_scale=init * math.sqrt(hidden), embed_scale=init,
                   output_scale=init * math.sqrt(hidden))
    c.data.update(kind="ptb", path="")
    # Zaremba's code sums the loss over the unrolled steps (averaged over the batch) and evaluates
    # the test set as one stream.
    c.train.update(batch_size=20, seq_len=unroll, eval_batch_size=20, test_batch_size=1,
                   loss_reduction="sum_time", num_steps=0,
                   num_epochs=epochs, log_every=100, eval_every=1000, checkpoint_every=1000,
                   sample_length=30, sample_temperature=1.0)
    c.optim.update(name="sgd", learning_rate=1.0, max_norm=max_norm)
    c.optim.schedule.update(name="zaremba", decay_factor=factor, decay_start_epoch=start)
    if a.runlocal:
        c.model.update(embed_size=32, hidden_size=32, init_scale=0.1 * math.sqrt(32),
                       output_scale=0.1 * math.sqrt(32))
        c.train.update(batch_size=4, seq_len=8, eval_batch_size=4, test_batch_size=0, num_epochs=0, num_steps=20,
                       log_every=5, eval_every=10, checkpoint_every=10)
    return c


def sweep(add):
    for cell in ("lstm", "gru", "mut1:input_term=linear"):
        add(cell=cell)
