"""Training: optimizer and schedules, config checks, runs, exact resume (also after SIGKILL), TBPTT."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rnn_jax import data, lm, train
from rnn_jax.checkpoint import RunCheckpoints
from tests.lm_helpers import tiny_config, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "text.txt")


def _params(workdir, which="latest"):
    model, params, vocab, config = train.load_run(workdir, which)
    return params


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------------------- optimizer

def _optim(**kw):
    c = tiny_config("x").optim
    c.update(**kw)
    return ml_collections.ConfigDict({"optim": c})


@pytest.mark.parametrize("name", train.OPTIMIZERS)
def test_every_optimizer_clips_then_steps(name):
    config = _optim(name=name, max_norm=1.0, learning_rate=0.1)
    opt = train.make_optimizer(config)
    params = {"w": jnp.zeros(4)}
    state = opt.init(params)
    grads = {"w": jnp.full(4, 5.0)}  # global norm 10 -> clipped to 1
    updates, state = opt.update(grads, state, params)
    assert np.all(np.isfinite(updates["w"])) and np.all(updates["w"] < 0)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    if name == "sgd":  # clipped gradient (norm 1) times the learning rate
        np.testing.assert_allclose(optax.tree.norm(updates), 0.1, rtol=1e-6)


def test_weight_decay_is_added_to_the_gradient():
    opt = train.make_optimizer(_optim(name="sgd", learning_rate=1.0, weight_decay=0.5, max_norm=100.0))
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.zeros(3)}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.5)


def test_zaremba_schedule_divides_each_epoch_after_the_start_epoch():
    o = _optim(learning_rate=1.0).optim
    o.schedule.update(name="zaremba", decay_factor=2.0, decay_start_epoch=4)
    schedule = train.make_schedule(o, steps_per_epoch=10)
    lrs = [float(schedule(epoch * 10 + 3)) for epoch in range(7)]
    np.testing.assert_allclose(lrs, [1, 1, 1, 1, 0.5, 0.25, 0.125])


def test_cosine_schedule_warms_up_holds_then_decays():
    o = _optim(learning_rate=2.0).optim
    o.schedule.update(name="cosine", warmup_steps=10, decay_begin=0.5, end_fraction=0.1)
    schedule = train.make_schedule(o, num_steps=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(2.0) and float(schedule(50)) == pytest.approx(2.0)
    assert float(schedule(75)) == pytest.approx(2.0 * (0.1 + 0.9 * 0.5), rel=1e-5)
    assert float(schedule(100)) == pytest.approx(0.2, rel=1e-5)


def test_plateau_halves_after_patience_and_stops_after_max_halvings():
    state = (np.inf, 0, 0)
    events = []
    for valid in [3.0, 2.0, 2.5, 2.1, 2.0, 1.9, 2.2, 2.3]:
        best, bad, halvings, halve, stop = train.plateau_update(*state, valid, patience=1, max_halvings=1)
        state = (best, bad, halvings)
        events.append((halve, stop))
    assert events == [(False, False), (False, False), (False, False), (True, False),
                      (False, False), (False, False), (False, False), (True, True)]


# ----------------------------------------------------------------------------- config checks

@pytest.mark.parametrize("field,value,message", [
    ("cell", "lsmt", "config.cell = 'lsmt'"),
    ("model.hidden_size", -4, r"model.hidden_size = -4: must be an integer >= 1"),
    ("optim.name", "adamw", "optim.name = 'adamw' is not allowed; choose one of: sgd, momentum, adam"),
    ("optim.schedule.name", "step", "optim.schedule.name = 'step' is not allowed"),
    ("train.bptt", "partial", "train.bptt = 'partial' is not allowed; choose one of: truncated, full"),
    ("model.dropout", 1.0, r"model.dropout = 1.0: must be a number >= 0.0 and < 1.0"),
    ("cell", "mut1", "input_size == hidden_size|input_term"),
])
def test_invalid_config_fails_before_anything_runs(tmp_path, corpus_path, field, value, message):
    config = tiny_config(corpus_path)
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = value
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_data_too_short_for_one_batch(tmp_path, corpus_path):
    config = tiny_config(corpus_path, seq_len=4000)
    with pytest.raises(ValueError, match=r"too few for one batch of train.batch_size=4 streams x train.seq_len=4000"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_different_config_or_vocabulary(tmp_path, corpus_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(corpus_path, num_steps=3, eval_every=3), workdir, log=lambda m: None)
    changed = tiny_config(corpus_path, num_steps=3)
    changed.model.hidden_size = 32
    with pytest.raises(ValueError, match=r"different config \(model.hidden_size: 16 -> 32\)"):
        train.train_and_evaluate(changed, workdir)
    other = tmp_path / "other.txt"
    other.write_text("xyz " * 2000, encoding="utf-8")
    with pytest.raises(ValueError, match="vocabulary"):
        train.train_and_evaluate(tiny_config(str(other), num_steps=3), workdir)
    # a resumed, finished run stays finished and says so
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "completed"


# ----------------------------------------------------------------------------- runs

def test_run_writes_metrics_samples_checkpoints_and_result(tmp_path, corpus_path):
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(tiny_config(corpus_path), str(workdir), log=lambda m: None)
    assert result["status"] == "completed" and result["step"] == 12
    saved = json.loads((workdir / "result.json").read_text())
    assert saved["status"] == "completed" and saved["best_valid_loss"] == result["best_valid_loss"]
    for key in ("final_valid_loss", "final_test_loss", "test_loss", "best_step", "num_params"):
        assert key in saved
    records = train.read_metrics(str(workdir))
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 13))  # every step is logged
    for r in records:
        if "loss" in r:
            assert set(r) == {"step", "loss", "grad_norm", "clipped", "learning_rate"}
    evals = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in evals] == [6, 12]
    samples = (workdir / "samples.txt").read_text()
    assert samples.count("=== step ") == 2 and "valid loss" in samples
    assert json.loads((workdir / "config.json").read_text())["model"]["hidden_size"] == 16
    assert data.Vocab.load(str(workdir / "vocab.json")).level == "char"
    try:
        import tensorboardX  # noqa: F401
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tb"))
    except ImportError:
        assert not (workdir / "tb").exists()
    checkpoints = RunCheckpoints(str(workdir))
    assert checkpoints.latest_step() == 12 and checkpoints.latest_step("best") is not None
    checkpoints.close()


def test_clipping_is_reported_when_the_norm_exceeds_max_norm(tmp_path, corpus_path):
    config = tiny_config(corpus_path, num_steps=4, eval_every=4)
    config.optim.max_norm = 1e-4
    train.train_and_evaluate(config, str(tmp_path / "a"), log=lambda m: None)
    records = [r for r in train.read_metrics(str(tmp_path / "a")) if "loss" in r]
    assert all(r["clipped"] and r["grad_norm"] > 1e-4 for r in records)
    config.optim.max_norm = 1e6
    train.train_and_evaluate(config, str(tmp_path / "b"), log=lambda m: None)
    records = [r for r in train.read_metrics(str(tmp_path / "b")) if "loss" in r]
    assert not any(r["clipped"] for r in records)


def test_stop_and_resume_gives_identical_parameters(tmp_path, corpus_path):
    full = tmp_path / "full"
    train.train_and_evaluate(tiny_config(corpus_path), str(full), log=lambda m: None)
    parts = tmp_path / "parts"
    train.train_and_evaluate(tiny_config(corpus_path, num_steps=5), str(parts), log=lambda m: None)
    result = train.train_and_evaluate(tiny_config(corpus_path), str(parts), log=lambda m: None)
    assert result["step"] == 12
    _assert_trees_equal(_params(str(full)), _params(str(parts)))
    a = [r for r in train.read_metrics(str(full)) if "loss" in r]
    b = [r for r in train.read_metrics(str(parts)) if "loss" in r]
    assert a == b  # the resumed run's log has no gaps or duplicates and the same numbers


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus_path):
    config = tiny_config(corpus_path, num_steps=30, checkpoint_every=2, log_every=1)
    # the learning rate ramps up to 3e38 over the run: finite for a few steps, then overflow
    config.optim.update(name="sgd", learning_rate=3e38, max_norm=1e38)
    config.optim.schedule.update(name="cosine", warmup_steps=30)
    workdir = tmp_path / "run"
    result = train.train_and_evaluate(config, str(workdir), log=lambda m: None)
    assert result["status"] == "diverged"
    assert json.loads((workdir / "result.json").read_text())["status"] == "diverged"
    last = RunCheckpoints(str(workdir))
    step = last.latest_step()
    last.close()
    assert step is not None and 0 < step < result["step"]
    params = _params(str(workdir), "latest")
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
    records = train.read_metrics(str(workdir))
    assert records[-1]["step"] == result["step"] and records[-1]["loss"] in ("nan", "inf")


# ----------------------------------------------------------------------------- SIGKILL

_CHILD = """
import sys
sys.path.insert(0, {root!r})
from rnn_jax import train
from tests.lm_helpers import tiny_config
config = tiny_config({path!r}, num_steps={steps}, checkpoint_every=2, eval_every=10, log_every=1)
train.train_and_evaluate(config, {workdir!r}, log=lambda m: print(m, flush=True))
"""


def _run_killed(workdir, corpus_path, steps, kills, seed):
    rng = np.random.default_rng(seed)
    code = _CHILD.format(root=ROOT, path=corpus_path, steps=steps, workdir=str(workdir))
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done_kills = 0
    while True:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        if done_kills < kills:
            # kill after a random number of completed steps past the first one it prints
            target = int(rng.integers(2, 8))
            seen = 0
            for line in proc.stdout:
                if line.startswith("step ") and "/" in line.split()[1]:
                    seen += 1
                    if seen >= target:
                        break
            time.sleep(float(rng.uniform(0, 0.05)))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done_kills += 1
            if (workdir / "result.json").exists() and json.loads((workdir / "result.json").read_text())["status"] == "completed":
                break
            continue
        proc.stdout.read()
        assert proc.wait() == 0
        break
    return done_kills


@pytest.mark.parametrize("kills", [pytest.param(2), pytest.param(5, marks=pytest.mark.slow)])
def test_sigkill_and_resume_gives_identical_parameters(tmp_path, corpus_path, kills):
    steps = 24
    reference = tmp_path / "reference"
    train.train_and_evaluate(tiny_config(corpus_path, num_steps=steps, checkpoint_every=2,
                                         eval_every=10, log_every=1), str(reference), log=lambda m: None)
    killed = tmp_path / "killed"
    assert _run_killed(killed, corpus_path, steps, kills, seed=kills) >= 1
    assert json.loads((killed / "result.json").read_text())["status"] == "completed"
    _assert_trees_equal(_params(str(reference)), _params(str(killed)))
    a = [r for r in train.read_metrics(str(reference)) if "loss" in r]
    b = [r for r in train.read_metrics(str(killed)) if "loss" in r]
    assert a == b


# ----------------------------------------------------------------------------- TBPTT

def _alternating_text(n, seed=0):
    """Segments in which two random letters alternate (``cdcdcd``): predicting the next letter
    needs the one before the current one, which at a chunk start is in the previous chunk."""
    rng = np.random.default_rng(seed)
    letters = "abcdefgh"
    out = []
    while len(out) < n:
        a, b = rng.choice(len(letters), 2, replace=False)
        out.extend([letters[a], letters[b]] * int(rng.integers(20, 40)))
    return "".join(out[:n])


def test_tbptt_carry_is_carried_across_chunks(tmp_path):
    path = tmp_path / "alt.txt"
    path.write_text(_alternating_text(40000), encoding="utf-8")
    losses = {}
    for mode in ("truncated", "full"):
        config = tiny_config(str(path), num_steps=400, seq_len=4, batch_size=16, eval_every=400,
                             checkpoint_every=400, log_every=100, sample_length=0, bptt=mode)
        config.cell = "gru"
        config.model.update(num_layers=1, hidden_size=32)
        config.optim.learning_rate = 2e-2
        train.train_and_evaluate(config, str(tmp_path / mode), log=lambda m: None)
        records = [r["loss"] for r in train.read_metrics(str(tmp_path / mode)) if "loss" in r]
        losses[mode] = float(np.mean(records[-50:]))
    # Without a carried state the first target of every 4-step chunk is a guess among 7 letters:
    # at least ln(7)/4 nats per character. Carrying the state across chunks gets below that.
    floor = np.log(7) / 4
    assert losses["full"] > floor
    assert losses["truncated"] < floor - 0.15, losses
