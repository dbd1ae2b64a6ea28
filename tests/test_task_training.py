"""Training on generated tasks (masked loss, accuracies, selection by accuracy) and on piano rolls."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import music as music_config
from experiments.configs import tasks as tasks_config
from rnn_jax import train
from rnn_jax.data import music


def test_arithmetic_run_reports_accuracies_and_selects_by_accuracy(tmp_path):
    config = tasks_config.get_config("task=arithmetic,runlocal,digits=3,distractors=1,optimizer=adam,lr=0.01")
    result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda m: None)
    assert result["status"] == "completed" and result["task"] == "arithmetic"
    assert result["select_by"] == "valid_accuracy"
    for key in ("best_valid_accuracy", "best_valid_answer_accuracy", "test_accuracy",
                "test_answer_accuracy", "final_valid_accuracy"):
        assert 0.0 <= result[key] <= 1.0, key
    evals = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if "valid_loss" in line]
    assert [e["step"] for e in evals] == [10, 20]
    best = max(evals, key=lambda e: e["valid_accuracy"])  # ties: the first
    assert result["best_step"] == best["step"]
    assert result["best_valid_accuracy"] == pytest.approx(best["valid_accuracy"])


def test_loss_counts_only_scored_targets():
    config = tasks_config.get_config("task=memorization,runlocal")
    model = train.make_model(config, 28)
    optimizer = train.make_optimizer(config)
    step = train.make_train_step(model, optimizer, 5.0)
    params = model.init(jax.random.PRNGKey(0))
    state = optimizer.init(params)
    carry = model.zero_carry(4)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 28, (4, 10)).astype(np.int32)
    y = rng.integers(0, 28, (4, 10)).astype(np.int32)
    w = (rng.random((4, 10)) < 0.4).astype(np.float32)
    y2 = np.where(w > 0, y, (y + 1) % 28)  # change only the unscored targets
    out1 = step(params, state, carry, x, y, None, w)
    out2 = step(params, state, carry, x, y2, None, w)
    assert float(out1[3]["loss"]) == pytest.approx(float(out2[3]["loss"]), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), out1[0], out2[0])
    out3 = step(params, state, carry, x, y2, None, None)  # unweighted: the change shows
    assert float(out3[3]["loss"]) != pytest.approx(float(out1[3]["loss"]), rel=1e-6)


def test_task_config_errors_name_the_field(tmp_path):
    config = tasks_config.get_config("task=arithmetic,runlocal")
    config.data.arithmetic.max_digits = 0
    with pytest.raises(ValueError, match=r"config.data.arithmetic: arithmetic option max_digits=0"):
        train.train_and_evaluate(config, str(tmp_path / "a"))
    config = tasks_config.get_config("task=xml,runlocal")
    config.data.loss_on = "answers"
    with pytest.raises(ValueError, match=r"config.data.loss_on = 'answers'.*all, scored"):
        train.train_and_evaluate(config, str(tmp_path / "b"))
    with pytest.raises(ValueError, match="init_style"):
        tasks_config.get_config("init_style=xavier")
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_music_run_reports_nll_per_time_step(tmp_path):
    rng = np.random.default_rng(0)

    def seqs(n):
        return [[sorted({int(p) for p in rng.integers(50, 58, rng.integers(0, 4))})
                 for _ in range(rng.integers(15, 30))] for _ in range(n)]

    path = str(tmp_path / "rolls.json")
    music.save_json(path, {"train": seqs(8), "valid": seqs(3), "test": seqs(3)})
    config = music_config.get_config("runlocal")
    config.data.path = path
    result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda m: None)
    assert result["status"] == "completed" and result["level"] == "frame"
    pitches = music.piano_rolls(path).num_pitches
    # NLL per time step, summed over notes: about P*ln2 at the start, lower after training
    assert 0 < result["test_loss"] < pitches * np.log(2) + 0.5
    assert not os.path.exists(tmp_path / "run" / "vocab.json")
    config.data.path = ""
    with pytest.raises(ValueError, match="config.data.path is empty.*piano rolls"):
        train.train_and_evaluate(config, str(tmp_path / "other"))


def test_resumes_a_checkpoint_written_before_best_select_existed(tmp_path):
    import shutil

    from rnn_jax.checkpoint import RunCheckpoints
    from tests.lm_helpers import tiny_config, write_corpus
    config = tiny_config(write_corpus(tmp_path / "text.txt"), num_steps=6, eval_every=3, checkpoint_every=3,
                         sample_length=0)
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    train.train_and_evaluate(config, old, log=lambda m: None)
    # a run dir as an earlier version left it: the same files, a state without sched.best_select
    os.makedirs(new)
    for name in ("config.json", "vocab.json", "corpus.json"):
        shutil.copy(os.path.join(old, name), new)
    model = train.make_model(config, len(json.load(open(os.path.join(old, "vocab.json")))["symbols"]))
    params = model.init(jax.random.PRNGKey(0))
    ckpt = RunCheckpoints(old)
    p, state, meta = train._restore_latest(ckpt, params, {
        "step": 0, "opt_state": train.make_optimizer(config).init(params), "carry": model.zero_carry(4),
        "sched": {"best_valid": 0.0, "best_select": 0.0, "bad_evals": 0, "halvings": 0}})
    ckpt.close()
    del state["sched"]["best_select"]
    legacy = RunCheckpoints(new)
    legacy.save("latest", 6, p, state, meta)
    legacy.close()
    config.train.num_steps = 9
    result = train.train_and_evaluate(config, new, log=lambda m: None)
    assert result["status"] == "completed" and result["step"] == 9
