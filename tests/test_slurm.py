"""The SLURM launcher against a real cluster (``launch/slurm_up.sh``; `.ci/run` starts one).

Skipped where ``sbatch`` is absent or no cluster answers.
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from rnn_jax import sweep
from rnn_jax.sweep import compare, slurm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "configs", "tasks.py")


def _cluster_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


pytestmark = pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (see launch/slurm_up.sh)")

MICRO = compare.Preset(tasks=("memorization",), settings=2, seeds=1, steps=12, budget=4000,
                       optimizer="adam", init_style="lecun", fixed=None, digits=3, distractors=1,
                       train_chars=3000, eval_every=6, max_layers=1,
                       extra="batch=4,seq_len=10,eval_chars=500")
RESOURCES = slurm.SlurmResources(time_min=10, cpus_per_task=1, array_parallelism=2)


def _wait(sweep_dir, timeout=400):
    start = time.time()
    while time.time() - start < timeout:
        states = sweep.sweep_status(sweep_dir)
        if all(s in ("completed", "diverged", "failed") for s in states.values()):
            return states
        time.sleep(2)
    raise AssertionError(f"sweep not finished after {timeout} s: {sweep.sweep_status(sweep_dir)}")


def _result(sweep_dir, point):
    with open(os.path.join(sweep.run_dir(sweep_dir, sweep.point_name(point)), "result.json")) as f:
        return json.load(f)


def test_array_sweep_equals_local_and_relaunch_submits_nothing(tmp_path):
    points = compare.search_points(MICRO, ["rnn", "lstm"], ["memorization"])
    remote, here = str(tmp_path / "slurm"), str(tmp_path / "local")
    ids = slurm.launch_slurm(remote, CONFIG, points, resources=RESOURCES, log=lambda m: None)
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array
    assert slurm.launch_slurm(remote, CONFIG, points, resources=RESOURCES, log=lambda m: None) == []
    sweep.launch_local(here, CONFIG, points, workers=2, compile_cache=False, log=lambda m: None)
    assert set(_wait(remote).values()) == {"completed"}
    for p in points:
        a, b = _result(remote, p), _result(here, p)
        for key in ("final_train_loss", "best_valid_accuracy", "test_accuracy", "best_step"):
            assert a[key] == b[key], (key, a[key], b[key])
    assert slurm.launch_slurm(remote, CONFIG, points, resources=RESOURCES, log=lambda m: None) == []


def test_a_preempted_task_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path):
    long = compare.dataclasses.replace(MICRO, steps=150, eval_every=20, settings=1)
    point = compare.search_points(long, ["lstm"], ["memorization"])[0]
    remote = str(tmp_path / "slurm")
    [job_id] = slurm.launch_slurm(remote, CONFIG, [point], resources=RESOURCES, log=lambda m: None)
    workdir = sweep.run_dir(remote, sweep.point_name(point))
    start = time.time()
    while True:  # wait for a checkpoint, then preempt
        metrics = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(metrics) and sum(1 for line in open(metrics) if "valid_loss" in line) >= 2:
            break
        assert time.time() - start < 300, "the task never reached its second evaluation"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    assert _wait(remote)[sweep.point_name(point)] == "completed"
    log = open(os.path.join(workdir, "log.txt")).read()
    assert "resuming" in log  # the requeued task continued from the checkpoint
    here = str(tmp_path / "local")
    sweep.launch_local(here, CONFIG, [point], workers=1, compile_cache=False, log=lambda m: None)
    a, b = _result(remote, point), _result(here, point)
    for key in ("final_train_loss", "best_valid_accuracy", "test_accuracy"):
        assert a[key] == b[key], (key, a[key], b[key])


def test_search_evaluates_candidates_on_the_cluster(tmp_path):
    """The architecture search's evaluator on SLURM: the same results as on the local pool."""
    from rnn_jax.search import evaluator, known
    from rnn_jax.search import recipe as rl

    args = {"memorization": "task=memorization,runlocal"}
    proposals = [{"id": i, "candidate": i, "recipe": r, "hash": rl.functional_hash(r), "hparams": hp,
                  "task": "memorization", "parent": None}
                 for i, (r, hp) in enumerate([(known.GRU, [{}]),
                                              (known.MUT3, [{"optim/learning_rate": 0.01}, {"seed": 1}])])]
    remote = evaluator.TrainingEvaluator(str(tmp_path / "slurm"), CONFIG, args, launcher="slurm",
                                         resources=RESOURCES, poll_s=1.0, log=lambda m: None)
    here = evaluator.TrainingEvaluator(str(tmp_path / "local"), CONFIG, args, workers=1, log=lambda m: None)
    got, want = remote(proposals), here(proposals)
    assert [r["status"] for r in got] == ["ok", "ok"]
    assert [r["fitness"] for r in got] == [r["fitness"] for r in want]
    assert remote(proposals)[1]["metrics"]["statuses"] == ["completed", "completed"]  # nothing resubmitted
