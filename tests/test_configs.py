"""Config arg strings and the experiment configs."""

import math

import pytest

from experiments.configs import char_lm, word_lm
from rnn_jax import configs, train


def test_parse_arg_types_and_errors():
    c = configs.parse_arg("cell=gru,hidden=128,lr=0.5,runlocal", cell="lstm", hidden=512, lr=1e-3,
                          runlocal=False)
    assert (c.cell, c.hidden, c.lr, c.runlocal) == ("gru", 128, 0.5, True)
    assert isinstance(c.hidden, int) and isinstance(c.lr, float)
    assert configs.parse_arg("", cell="lstm").cell == "lstm"
    with pytest.raises(ValueError, match="unknown config arg 'hiden'; allowed: cell, hidden"):
        configs.parse_arg("hiden=3", cell="lstm", hidden=1)
    with pytest.raises(ValueError, match="hidden='big': expected an integer"):
        configs.parse_arg("hidden=big", hidden=1)
    with pytest.raises(ValueError, match="needs a value"):
        configs.parse_arg("hidden", hidden=1)
    with pytest.raises(ValueError, match="expected a boolean"):
        configs.parse_arg("runlocal=maybe", runlocal=False)


def test_char_lm_config():
    c = char_lm.get_config("cell=gru:reset_after=True,hidden=256,layers=1")
    assert c.cell == "gru:reset_after=True"
    assert (c.model.hidden_size, c.model.num_layers) == (256, 1)
    c.data.path = "x.txt"
    train.validate_config(c)
    small = char_lm.get_config("runlocal")
    assert small.model.hidden_size < 64 and small.train.num_steps <= 50
    added = []
    char_lm.sweep(lambda **kw: added.append(kw))
    assert {a["cell"] for a in added} == {"lstm", "gru", "mut1"}


@pytest.mark.parametrize("preset,hidden,unroll,dropout,epochs", [
    ("small", 200, 20, 0.0, 13), ("medium", 650, 35, 0.5, 39), ("large", 1500, 35, 0.65, 55)])
def test_word_lm_presets_follow_zaremba(preset, hidden, unroll, dropout, epochs):
    c = word_lm.get_config(f"preset={preset}")
    assert c.model.hidden_size == c.model.embed_size == hidden
    assert c.model.num_layers == 2 and c.train.batch_size == 20
    assert c.train.seq_len == unroll and c.model.dropout == dropout and c.train.num_epochs == epochs
    assert c.optim.name == "sgd" and c.optim.learning_rate == 1.0
    assert c.optim.schedule.name == "zaremba"
    # uniform init bound: init_scale / sqrt(hidden) = the paper's absolute bound
    bound = {"small": 0.1, "medium": 0.05, "large": 0.04}[preset]
    assert math.isclose(c.model.init_scale / math.sqrt(hidden), bound)
    c.data.dir = "ptb"
    train.validate_config(c)


def test_word_lm_unknown_preset():
    with pytest.raises(ValueError, match="preset = 'huge' is not allowed; choose one of: small, medium, large"):
        word_lm.get_config("preset=huge")
