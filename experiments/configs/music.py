r"""Polyphonic music: piano rolls in the Boulanger-Lewandowski et al. (2012) format.

    python -m experiments.train --config=experiments/configs/music.py \
        --config.data.path=/path/to/JSB_Chorales.pickle --workdir=runs/jsb_lstm

``data.path`` is a JSON or pickle file holding ``{"train": [...], "valid": [...], "test": [...]}``:
each split a list of pieces, each piece a list of time steps, each step the MIDI pitches sounding
(JSB Chorales, Nottingham, MuseData, Piano-midi.de; NumPy-dumped pickles too). The model reads
multi-hot frames and predicts the next frame with one sigmoid per pitch; the metric is the NLL per
frame (nats, summed over the notes), the number the papers report.

The protocol is the papers' (``data.protocol = "pieces"``): pieces are independent sequences.
Training lanes hold whole pieces and the carry is reset to zero at every piece start; valid and
test pieces are each scored from the zero state, and the reported NLL is the mean over all
predicted frames of the split (frames 2..n of each piece, as in Bai et al.'s (2018) code).
``data.protocol = "stream"`` concatenates the pieces into one stream with the state carried
across them instead (the LM protocol of the other tasks).

The defaults (a 1x200 LSTM, about 340k parameters over the file's pitch range, dropout 0.3 on the non-recurrent
connections, Adam 1e-3, 8 lanes of 100 frames, 3000 steps with the best checkpoint chosen by
validation NLL) are sized after Bai et al. (2018), whose LSTM of about 300k parameters reached a
JSB test NLL of 8.45; Chung et al. (2014) report 8.67 (LSTM) and 8.54 (GRU) with about 20k. See
the README for what to expect and the time it takes.

Arg string: ``cell=gru,hidden=128,layers=1,steps=2000,lr=1e-3,dropout=0.3,protocol=stream,runlocal``.
``runlocal`` shrinks the run to a smoke test; a value typed in the arg string wins over it. Sizes,
steps, batch, learning rate and dropout are checked here (``hidden=-5`` is refused, naming the arg).
"""

from experiments.configs import common

DEFAULTS = dict(cell="lstm", hidden=200, layers=1, steps=3000, batch=8, seq_len=100, lr=1e-3, dropout=0.3,
                seed=0, protocol="pieces", runlocal=False)
RUNLOCAL = dict(hidden=16, steps=6, batch=2, seq_len=4)  # defaults of a smoke run


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    for name in ("hidden", "layers", "steps", "batch", "seq_len"):
        common.check_int(a, name)
    common.check_int(a, "seed", minimum=0)
    common.check_number(a, "lr", strict=True)
    common.check_number(a, "dropout", 0.0, 1.0)
    c = common.lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=a.hidden, hidden_size=a.hidden, num_layers=a.layers, dropout=a.dropout,
                   embed_scale=0.1)
    c.data.update(kind="music", path="", protocol=a.protocol)
    c.train.update(batch_size=a.batch, seq_len=a.seq_len, eval_batch_size=a.batch, num_steps=a.steps,
                   log_every=50, eval_every=100, checkpoint_every=100, sample_length=0)
    c.optim.update(name="adam", learning_rate=a.lr, max_norm=5.0)
    c.optim.schedule.update(name="constant")
    if a.runlocal:
        c.train.update(log_every=2, eval_every=3, checkpoint_every=3)
    return c


def sweep(add):
    for cell in ("lstm", "gru", "mut1"):
        add(cell=cell)
