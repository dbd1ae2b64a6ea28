r"""Character-level language model on any UTF-8 text file.

    python -m experiments.train --config=experiments/configs/char_lm.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare_lstm

On tinyshakespeare (split 90/5/5 by position) the default 2x512 LSTM reaches a validation loss of
about 1.4 nats/char in 20 minutes on a 2-core CPU (see the README for the measured curve).

Arg string: ``cell=gru,hidden=256,layers=1,embed=64,steps=500,runlocal``. ``runlocal`` shrinks
everything to a smoke run of a few seconds. Any field can be overridden with ``--config.x=y``.
"""

from experiments.configs import common
from rnn_jax.configs import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, cell="lstm", hidden=512, layers=2, embed=64, steps=1250, batch=32,
                  seq_len=100, lr=2e-3, seed=0, runlocal=False)
    c = common.lm_config()
    c.seed = a.seed
    c.cell = a.cell
    c.model.hidden_size, c.model.num_layers, c.model.embed_size = a.hidden, a.layers, a.embed
    c.train.num_steps, c.train.batch_size, c.train.seq_len = a.steps, a.batch, a.seq_len
    c.train.eval_batch_size = a.batch
    c.train.eval_every = c.train.checkpoint_every = 250
    c.optim.learning_rate = a.lr
    if a.runlocal:
        c.model.hidden_size, c.model.embed_size, c.model.num_layers = 32, 16, 1
        c.train.update(batch_size=4, seq_len=16, eval_batch_size=4, num_steps=20, log_every=5,
                       eval_every=10, checkpoint_every=10, sample_length=40)
    return c


def sweep(add):
    for cell in ("lstm", "gru", "mut1"):
        add(cell=cell)
