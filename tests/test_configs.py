"""Config arg strings and the experiment configs."""

import math
import re

import pytest

from experiments.configs import char_lm, common, music, tasks, word_lm
from rnn_jax import cells, configs, train
from rnn_jax.errors import InputError
from rnn_jax.sweep import points


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
    assert {cells.parse_spec(a["cell"])[0] for a in added} == {"lstm", "gru", "mut1"}


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


# ----------------------------------------------------------------------------- runlocal and typed values

def _sizes(c):
    return dict(hidden=c.model.hidden_size, embed=c.model.embed_size, layers=c.model.num_layers,
                steps=c.train.num_steps, batch=c.train.batch_size, eval_batch=c.train.eval_batch_size,
                seq_len=c.train.seq_len)


@pytest.mark.parametrize("module,arg,want", [
    (char_lm, "runlocal,steps=3,hidden=64", dict(steps=3, hidden=64, embed=16, layers=1, batch=4)),
    (char_lm, "steps=3,runlocal,batch=8,layers=2,embed=24,seq_len=5",
     dict(steps=3, batch=8, eval_batch=8, layers=2, embed=24, seq_len=5, hidden=32)),
    (music, "runlocal,hidden=24,steps=2,batch=3", dict(hidden=24, embed=24, steps=2, batch=3, eval_batch=3,
                                                       seq_len=4)),
    (tasks, "task=xml,runlocal,hidden=20,steps=7,batch=2,seq_len=6",
     dict(hidden=20, embed=20, steps=7, batch=2, eval_batch=2, seq_len=6)),
    (word_lm, "runlocal,hidden=48,steps=5,batch=6", dict(hidden=48, embed=48, steps=5, batch=6, eval_batch=6,
                                                         seq_len=8, layers=2)),
    (word_lm, "preset=large,runlocal,seq_len=12", dict(hidden=32, seq_len=12, steps=20, batch=4)),
])
def test_typed_values_win_over_runlocal(module, arg, want):
    got = _sizes(module.get_config(arg))
    assert {k: got[k] for k in want} == want


def test_runlocal_typed_values_reach_the_other_fields():
    c = tasks.get_config("task=memorization,runlocal,eval_every=5,train_chars=5000,eval_chars=300,lr=0.1")
    assert (c.train.eval_every, c.train.checkpoint_every) == (5, 5)
    assert dict(c.data.num_chars) == dict(train=5000, valid=300, test=300)
    assert c.optim.learning_rate == 0.1
    c = tasks.get_config("runlocal,hidden=64")  # the uniform embedding bound follows the typed hidden size
    assert math.isclose(c.model.embed_scale, 1.0 / math.sqrt(64))
    c = music.get_config("runlocal,dropout=0.1,lr=0.01,protocol=stream")
    assert (c.model.dropout, c.optim.learning_rate, c.data.protocol) == (0.1, 0.01, "stream")
    c = word_lm.get_config("runlocal,epochs=1")  # epochs typed: trained by epochs, not runlocal's steps
    assert (c.train.num_epochs, c.train.num_steps) == (1, 0)
    c = word_lm.get_config("preset=medium,dropout=0.2,lr=0.5,max_norm=2,init=0.08")
    assert (c.model.hidden_size, c.train.seq_len, c.train.num_epochs) == (650, 35, 39)  # medium's
    assert (c.model.dropout, c.optim.learning_rate, c.optim.max_norm) == (0.2, 0.5, 2.0)  # typed
    assert math.isclose(c.model.init_scale / math.sqrt(650), 0.08) and c.model.embed_scale == 0.08
    assert c.optim.schedule.decay_factor == 1.2  # the preset's schedule


@pytest.mark.parametrize("module,small", [
    (char_lm, dict(hidden=32, embed=16, layers=1, steps=20, batch=4, eval_batch=4, seq_len=16)),
    (music, dict(hidden=16, embed=16, layers=1, steps=6, batch=2, eval_batch=2, seq_len=4)),
    (tasks, dict(hidden=16, embed=16, layers=1, steps=20, batch=4, eval_batch=4, seq_len=10)),
    (word_lm, dict(hidden=32, embed=32, layers=2, steps=20, batch=4, eval_batch=4, seq_len=8)),
])
def test_runlocal_alone_gives_the_smoke_settings(module, small):
    c = module.get_config("runlocal")
    assert _sizes(c) == small
    assert c.train.eval_every <= 10 and c.train.log_every <= 5
    if module is tasks:
        assert dict(c.data.num_chars) == dict(train=4000, valid=600, test=600)
        assert c.train.checkpoint_every == 10
    if module is word_lm:
        assert c.train.num_epochs == 0 and c.train.test_batch_size == 0
        assert math.isclose(c.model.init_scale, 0.1 * math.sqrt(32))


@pytest.mark.parametrize("module,arg,message", [
    (char_lm, "runlocal,hidden=-5", "hidden=-5: must be an integer >= 1"),
    (char_lm, "hidden=-5", "hidden=-5: must be an integer >= 1"),
    (char_lm, "runlocal,steps=0", "steps=0: must be an integer >= 1"),
    (char_lm, "batch=0", "batch=0: must be an integer >= 1"),
    (char_lm, "embed=-1,runlocal", "embed=-1: must be an integer >= 1"),
    (char_lm, "lr=0", "lr=0.0: must be a number > 0"),
    (char_lm, "seed=-1", "seed=-1: must be an integer >= 0"),
    (music, "runlocal,hidden=-5", "hidden=-5: must be an integer >= 1"),
    (music, "runlocal,seq_len=0", "seq_len=0: must be an integer >= 1"),
    (music, "dropout=1.0", "dropout=1.0: must be a number >= 0 and < 1"),
    (tasks, "runlocal,hidden=-5", "hidden=-5: must be an integer >= 1"),
    (tasks, "runlocal,train_chars=0", "train_chars=0: must be an integer >= 1"),
    (tasks, "runlocal,eval_every=-1", "eval_every=-1: must be an integer >= 0"),
    (tasks, "negative=1.5", "negative=1.5: must be a number >= 0 and <= 1"),
    (tasks, "max_norm=-1", "max_norm=-1.0: must be a number > 0"),
    (tasks, "lr=inf", "lr=inf: must be a number > 0"),
    (word_lm, "runlocal,hidden=-5", "hidden=-5: must be an integer >= 1"),
    (word_lm, "preset=medium,batch=0", "batch=0: must be an integer >= 1"),
    (word_lm, "preset=large,dropout=-0.1", "dropout=-0.1: must be a number >= 0 and < 1"),
    (word_lm, "runlocal,steps=0", "epochs=0 and steps=0"),
    (word_lm, "epochs=-2", "epochs=-2: must be an integer >= 0"),
])
def test_bad_values_are_refused_naming_the_arg(module, arg, message):
    with pytest.raises(InputError, match="config args? .*" + re.escape(message)):
        module.get_config(arg)


def test_common_arg_helpers():
    assert common.typed_keys(" runlocal, steps=3 ,hidden = 4,") == {"runlocal", "steps", "hidden"}
    assert common.typed_keys(None) == set()
    a = common.parse("runlocal=false,steps=3", dict(steps=10, hidden=8, runlocal=False), dict(steps=1, hidden=2))
    assert (a.steps, a.hidden, a.runlocal) == (3, 8, False)
    a = common.parse("runlocal,steps=3", dict(steps=10, hidden=8, runlocal=False), dict(steps=1, hidden=2))
    assert (a.steps, a.hidden) == (3, 2)
    with pytest.raises(InputError, match="config arg x=True: must be an integer >= 1"):
        common.check_int({"x": True}, "x")


@pytest.mark.parametrize("module", [char_lm, word_lm, music, tasks])
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_sweep_point_builds_its_cells(module, arg):
    """Each point of a config's sweep(add) has cells that fit the model's sizes (MUT1's raw input
    term needs input_size == hidden_size unless input_term=linear)."""
    path = module.__file__
    for point in points.sweep_points(path):
        c = points.point_config(path, arg, point)
        name, opts = cells.parse_spec(c.cell)
        cell = cells.get(name, **opts)
        cell.param_names(c.model.embed_size, c.model.hidden_size)  # the first layer
        cell.param_names(c.model.hidden_size, c.model.hidden_size)  # the layers above it
