r"""Polyphonic music: piano rolls in the Boulanger-Lewandowski et al. (2012) format.

    python -m experiments.train --config=experiments/configs/music.py \
        --config.data.path=/path/to/JSB_Chorales.pickle --workdir=runs/jsb_lstm

``data.path`` is a JSON or pickle file holding ``{"train": [...], "valid": [...], "test": [...]}``:
each split a list of sequences, each sequence a list of time steps, each step a list of active
MIDI pitch numbers (JSB Chorales, Nottingham, MuseData, Piano-midi.de). Pickles are read with a
restricted unpickler that accepts only lists, tuples, dicts, strings and numbers. Sequences are
concatenated into one stream (hidden state carried, as for every task here); the model reads
multi-hot frames and predicts the next frame with one sigmoid per pitch. The metric is the NLL per
time step (summed over notes), the number these papers report.

Arg string: ``cell=gru,hidden=128,layers=1,steps=2000,lr=1e-3,runlocal``.
"""

from experiments.configs import common
from rnn_jax.configs import parse_arg


def get_config(arg=None):
    a = parse_arg(arg, cell="lstm", hidden=128, layers=1, steps=2000, batch=20, seq_len=35,
                  lr=1e-3, dropout=0.0, seed=0, runlocal=False)
    c = common.lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=a.hidden, hidden_size=a.hidden, num_layers=a.layers, dropout=a.dropout,
                   embed_scale=0.1)
    c.data.update(kind="music", path="")
    c.train.update(batch_size=a.batch, seq_len=a.seq_len, eval_batch_size=a.batch, num_steps=a.steps,
                   log_every=100, eval_every=500, checkpoint_every=500, sample_length=0)
    c.optim.update(name="adam", learning_rate=a.lr, max_norm=5.0)
    c.optim.schedule.update(name="constant")
    if a.runlocal:
        c.model.update(embed_size=16, hidden_size=16)
        c.train.update(batch_size=2, seq_len=4, eval_batch_size=2, num_steps=6, log_every=2,
                       eval_every=3, checkpoint_every=3)
    return c


def sweep(add):
    for cell in ("lstm", "gru", "mut1"):
        add(cell=cell)
