"""Vmapped trials: K settings as one program equal K separate runs; divergence is masked; resume."""

import json
import os

import numpy as np
import pytest

from experiments.configs import tasks as tasks_config
from rnn_jax import rundir, sweep, train, trials
from rnn_jax.checkpoint import RunCheckpoints
from rnn_jax.sweep import local
from tests.trees import assert_records_close

BASE = "task=memorization,runlocal,optimizer=sgd"
# differ in seed, learning rate, clip norm and init scales; the last one diverges at step 2 (its loss
# passes train.diverge_factor x ln V; the update past float32's range makes it non-finite at step 3)
ARGS = (",lr=0.5,seed=0", ",lr=1.0,seed=1,init=0.5,max_norm=1.0", ",lr=1e38,seed=2")
TIMES = ("elapsed_s", "train_time_s")


def _configs(steps):
    configs = [tasks_config.get_config(BASE + a) for a in ARGS]
    for c in configs:
        c.train.num_steps = steps
    return configs


def _close(a, b, where):
    """Equal records up to float32 rounding (wall-clock times excepted)."""
    assert set(a) == set(b), where
    for key in a:
        if key in TIMES:
            continue
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (where, key)
        else:
            assert a[key] == b[key], (where, key)


def _latest_params(workdir):
    ck = RunCheckpoints(str(workdir))
    step = ck.latest_step()
    ck.close()
    return step, train.load_run(str(workdir), which="latest")[1]


def test_vmapped_trials_equal_separate_runs_and_resume(tmp_path):
    vdirs = [tmp_path / f"trial{i}" for i in range(3)]

    def crash_on_divergence(msg):
        if ": diverged (" in msg:
            raise RuntimeError("killed")

    # the process dies right after trial 2 diverges: its result is already written, the others fail
    with pytest.raises(RuntimeError, match="killed"):
        trials.train_trials(_configs(10), vdirs, log=crash_on_divergence)
    statuses = [json.load(open(d / "result.json"))["status"] for d in vdirs]
    assert statuses == ["failed", "failed", "diverged"]
    diverged_mtime = os.path.getmtime(vdirs[2] / "result.json")
    logs = []
    first = trials.train_trials(_configs(10), vdirs, log=logs.append)  # stops at step 10 ...
    assert [r["status"] for r in first] == ["completed", "completed", "diverged"]
    assert not any(": diverged (" in m for m in logs)  # trial 2 was not run again
    logs.clear()
    results = trials.train_trials(_configs(20), vdirs, log=logs.append)  # ... and resumes to 20
    assert any("resuming 2 trials at step 10" in m for m in logs)  # the diverged one stays so
    assert os.path.getmtime(vdirs[2] / "result.json") == diverged_mtime
    results[2]["num_steps"] = 20  # it was recorded by the 10-step program
    for i, config in enumerate(_configs(20)):
        single = train.train_and_evaluate(config, str(tmp_path / f"single{i}"), log=lambda m: None)
        vm = results[i]
        assert vm.pop("vmapped") == {"trials": 3, "index": i}
        _close(vm, single, f"result {i}")
        assert json.load(open(vdirs[i] / "result.json"))["vmapped"]["index"] == i
        assert_records_close(rundir.read_metrics(str(vdirs[i])), rundir.read_metrics(str(tmp_path / f"single{i}")),
                             rtol=1e-5, atol=1e-6, ignore=TIMES, what=f"metrics {i}")
        if single["status"] == "completed":
            (sa, pa), (sb, pb) = _latest_params(vdirs[i]), _latest_params(tmp_path / f"single{i}")
            assert sa == sb == 20
            train.jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), pa, pb)
    # step 2: its loss is finite but above train.diverge_factor x ln V there (NaN would come at step 3)
    assert results[2]["status"] == "diverged" and results[2]["step"] == 2
    assert results[0]["best_valid_loss"] != results[1]["best_valid_loss"]  # really different trials


def test_trials_must_share_the_program(tmp_path):
    a, b = _configs(5)[:2]
    b.model.hidden_size = 32
    with pytest.raises(ValueError, match=r"trial 1 differs from trial 0 in model.hidden_size: 16 vs 32.*"
                                         r"only in seed, optim.learning_rate"):
        trials.train_trials([a, b], [tmp_path / "a", tmp_path / "b"])
    a, b = _configs(5)[:2]
    with pytest.raises(ValueError, match="each trial needs its own"):
        trials.train_trials([a, b], [tmp_path / "a", tmp_path / "a"])
    for c in (a, b):
        c.optim.schedule.name = "plateau"
    with pytest.raises(ValueError, match="'plateau' cannot run as vmapped trials"):
        trials.train_trials([a, b], [tmp_path / "a", tmp_path / "b"])
    assert not os.path.exists(tmp_path / "a")  # nothing written


def test_sweep_groups_points_into_programs(tmp_path):
    config_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "experiments", "configs", "tasks.py")
    base = {"arg": BASE, "trials_per_program": 2}
    points = {"a": {**base, "seed": 0}, "b": {**base, "seed": 1, "optim.learning_rate": 0.1},
              "c": {**base, "seed": 2}, "d": {**base, "cell": "gru"},
              "e": {"arg": BASE}, "f": {**base, "model.hidden_size": 8}}
    assert local.programs(config_path, None, points) == [["e"], ["a", "b"], ["c"], ["d"], ["f"]]
    # how a point runs is not part of its name: the same run dir with or without vmapped trials
    assert sweep.point_name(points["a"]) == sweep.point_name({"arg": BASE, "seed": 0})
    with pytest.raises(ValueError, match=r"trials_per_program = 0: must be an integer >= 1"):
        local.programs(config_path, None, {"g": {**base, "trials_per_program": 0}})


def test_dropout_random_windows_and_a_schedule_match_separate_runs(tmp_path):
    """Per-trial dropout keys, per-trial (seeded) training windows and a traced schedule."""
    configs = [tasks_config.get_config("task=memorization,runlocal,optimizer=adam" + a)
               for a in (",lr=0.01,seed=0", ",lr=0.003,seed=1,max_norm=0.5")]
    for c in configs:
        c.model.dropout = 0.3
        c.train.update(bptt="full", num_steps=6, eval_every=3, checkpoint_every=3)
        c.optim.schedule.update(name="cosine", warmup_steps=2)
    results = trials.train_trials(configs, [tmp_path / "t0", tmp_path / "t1"], log=lambda m: None)
    for i, config in enumerate(configs):
        single = train.train_and_evaluate(config, str(tmp_path / f"s{i}"), log=lambda m: None)
        results[i].pop("vmapped")
        _close(results[i], single, f"result {i}")
        assert_records_close(rundir.read_metrics(str(tmp_path / f"t{i}")), rundir.read_metrics(str(tmp_path / f"s{i}")),
                             rtol=1e-5, atol=1e-6, ignore=TIMES, what=f"metrics {i}")
