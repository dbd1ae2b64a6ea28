r"""Character-level language model on any UTF-8 text file.

    python -m experiments.train --config=experiments/configs/char_lm.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare_lstm

On tinyshakespeare (split 90/5/5 by position) the default 2x512 LSTM reaches a validation loss of
about 1.4 nats/char in 20 minutes on a 2-core CPU (see the README for the measured curve).

Arg string: ``cell=gru,hidden=256,layers=1,embed=64,steps=500,runlocal``. ``runlocal`` shrinks
everything to a smoke run of a few seconds; a value typed in the arg string wins over it
(``runlocal,steps=3`` trains 3 steps of the smoke model). Sizes, steps, batch and learning rate
are checked here (``hidden=-5`` is refused, naming the arg). Any field can be overridden with
``--config.x=y``.

The sweep (``sweep(add)``) trains LSTM, GRU and MUT1 with the same settings. MUT1 adds the raw
input to hidden-size terms, so with an embedding smaller than the hidden size it uses
``input_term=linear`` (a learned projection of the input), as in the README's comparison.
"""

from experiments.configs import common

DEFAULTS = dict(cell="lstm", hidden=512, layers=2, embed=64, steps=1250, batch=32, seq_len=100, lr=2e-3,
                seed=0, runlocal=False)
RUNLOCAL = dict(hidden=32, embed=16, layers=1, steps=20, batch=4, seq_len=16)  # defaults of a smoke run


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    for name in ("hidden", "layers", "embed", "steps", "batch", "seq_len"):
        common.check_int(a, name)
    common.check_int(a, "seed", minimum=0)
    common.check_number(a, "lr", strict=True)
    c = common.lm_config()
    c.seed = a.seed
    c.cell = a.cell
    c.model.hidden_size, c.model.num_layers, c.model.embed_size = a.hidden, a.layers, a.embed
    c.train.num_steps, c.train.batch_size, c.train.seq_len = a.steps, a.batch, a.seq_len
    c.train.eval_batch_size = a.batch
    c.train.eval_every = c.train.checkpoint_every = 250
    c.optim.learning_rate = a.lr
    if a.runlocal:
        c.train.update(log_every=5, eval_every=10, checkpoint_every=10, sample_length=40)
    return c


def sweep(add):
    # embed (64) != hidden (512): MUT1's raw input term needs a learned projection
    for cell in ("lstm", "gru", "mut1:input_term=linear"):
        add(cell=cell)
