"""Small corpora and configs for the training tests (tiny shapes: compiles dominate)."""

import numpy as np

from experiments.configs import common


def write_corpus(path, n=6000, seed=0):
    """A learnable text: words from a small lexicon, separated by spaces and newlines."""
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "off"]
    out = []
    while sum(len(w) + 1 for w in out) < n:
        out.append(words[rng.integers(len(words))])
    text = " ".join(out)
    text = "\n".join(text[i:i + 60] for i in range(0, len(text), 60))
    path.write_text(text, encoding="utf-8")
    return str(path)


def tiny_config(data_path, **train):
    c = common.lm_config()
    c.cell = "lstm"
    c.model.update(embed_size=8, hidden_size=16, num_layers=2)
    c.data.path = data_path
    c.train.update(batch_size=4, seq_len=8, eval_batch_size=4, num_steps=12, log_every=4,
                   eval_every=6, checkpoint_every=3, sample_length=20)
    c.train.update(**train)
    c.optim.learning_rate = 1e-2
    c.optim.schedule.name = "constant"
    return c
