"""A run directory nothing can corrupt: one writer, failed saves that end the process, resumes
checked before anything is written, unreadable checkpoints passed over, divergence that is not NaN,
progress lines, Ctrl-C during the first compile."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from rnn_jax import rundir, train
from rnn_jax.errors import InputError
from tests.lm_helpers import tiny_config, write_corpus
from tests.trees import assert_records_close, assert_trees_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
QUIET = dict(log=lambda m: None)


def _files(workdir) -> dict:
    """Every file under ``workdir`` (the lock file aside) with its bytes."""
    out = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            if name != rundir.LOCK_NAME:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, workdir)] = f.read()
    return out


def _latest_params(workdir):
    return train.load_run(str(workdir), "latest", **QUIET)[1]


# ----------------------------------------------------------------------------- one writer

def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_does_not_block(tmp_path):
    config = tiny_config(write_corpus(tmp_path / "text.txt"), num_steps=6, sample_length=0)
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir), **QUIET)
    before = _files(workdir)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from rnn_jax import rundir
        with rundir.exclusive({str(workdir)!r}):
            print("held", flush=True)
            time.sleep(120)
        """)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        config.train.num_steps = 9
        with pytest.raises(rundir.RunDirBusy, match=rf"in use by another run \(pid {holder.pid} on "):
            train.train_and_evaluate(config, str(workdir), **QUIET)
        assert _files(workdir) == before  # nothing truncated, nothing rewritten
    finally:
        holder.kill()  # SIGKILL: the kernel releases its flock
        holder.wait()
    result = train.train_and_evaluate(config, str(workdir), **QUIET)
    assert result["status"] == "completed" and result["step"] == 9
    steps = [r["step"] for r in rundir.read_metrics(str(workdir)) if "loss" in r]
    assert steps == list(range(1, 10))


def test_a_sweep_worker_and_its_trainer_share_the_lock_and_name_the_holder(tmp_path):
    workdir = str(tmp_path / "point")
    with rundir.locked(workdir) as got:  # the sweep worker's hold: no record
        assert got
        with rundir.exclusive(workdir):  # the trainer it calls takes the same lock again
            assert rundir.holder(workdir)["pid"] == os.getpid()
    with rundir.locked(workdir) as got:  # released by both
        assert got


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    config = tiny_config(write_corpus(tmp_path / "text.txt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        train.train_and_evaluate(config, str(tmp_path / "file"), **QUIET)


# ----------------------------------------------------------------------------- a failed save

FAILING_SAVE = textwrap.dedent("""
    import pathlib, shutil, sys
    import orbax.checkpoint as ocp
    from rnn_jax import train
    from tests.lm_helpers import tiny_config, write_corpus
    workdir = pathlib.Path(sys.argv[1])
    config = tiny_config(write_corpus(workdir.parent / "text.txt"), num_steps=40, eval_every=20,
                         checkpoint_every=10, sample_length=0)
    original, calls = ocp.CheckpointManager.save, []
    def save(self, step, *args, **kwargs):  # the disk goes away under the second save of latest/
        if str(self.directory).endswith("latest"):
            calls.append(step)
            if len(calls) == 2:
                self.wait_until_finished()
                shutil.move(str(self.directory), str(self.directory) + ".gone")
                open(str(self.directory), "w").close()
        return original(self, step, *args, **kwargs)
    ocp.CheckpointManager.save = save
    train.train_and_evaluate(config, str(workdir), log=lambda m: None)
""")


def test_a_failed_save_records_the_failure_and_the_process_ends(tmp_path):
    workdir = tmp_path / "run"
    start = time.time()
    # before the fix the interpreter waited at exit for orbax's threads (a 20-minute deadline)
    out = subprocess.run([sys.executable, "-c", FAILING_SAVE, str(workdir)], env=ENV, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode != 0, out.stderr[-2000:]
    assert time.time() - start < 120
    result = json.loads((workdir / "result.json").read_text())
    assert result["status"] == "failed" and "Not a directory" in result["error"], result


# ----------------------------------------------------------------------------- resumes checked first

def test_a_resume_is_checked_whole_before_anything_is_written(tmp_path):
    config = tiny_config(write_corpus(tmp_path / "text.txt"), num_steps=6, sample_length=0)
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir), **QUIET)
    other = tiny_config(config.data.path, num_steps=9, sample_length=0)
    other.model.hidden_size = 24
    # config.json lost: what the checkpoints belong to is unknown
    os.remove(workdir / "config.json")
    before = _files(workdir)
    with pytest.raises(InputError, match="has checkpoints but no config.json"):
        train.train_and_evaluate(other, str(workdir), **QUIET)
    assert _files(workdir) == before
    # a config.json that matches the new config, next to checkpoints of the old model
    (workdir / "config.json").write_text(other.to_json_best_effort())
    before = _files(workdir)
    mismatch = r"saved by another model than this config's .*saved \(16, 16\), config \(24, 24\)"
    with pytest.raises(InputError, match=mismatch):
        train.train_and_evaluate(other, str(workdir), **QUIET)
    assert _files(workdir) == before
    # a corrupt config.json
    (workdir / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json is not valid JSON"):
        train.train_and_evaluate(config, str(workdir), **QUIET)
    # the original config, put back, resumes
    (workdir / "config.json").write_text(config.to_json_best_effort())
    config.train.num_steps = 9
    assert train.train_and_evaluate(config, str(workdir), **QUIET)["step"] == 9


# ----------------------------------------------------------------------------- unreadable checkpoints

def _truncate_a_data_file(step_dir):
    data = os.path.join(step_dir, "params", "d")
    name = sorted(os.listdir(data))[0]
    with open(os.path.join(data, name), "r+b") as f:
        f.truncate(10)


def test_resume_and_sampling_pass_over_an_unreadable_checkpoint(tmp_path, capfd):
    path = write_corpus(tmp_path / "text.txt")
    reference = tmp_path / "reference"
    train.train_and_evaluate(tiny_config(path, num_steps=12, sample_length=0), str(reference), **QUIET)
    workdir = tmp_path / "run"
    config = tiny_config(path, num_steps=9, sample_length=0, max_to_keep=2)  # keeps steps 6 and 9
    train.train_and_evaluate(config, str(workdir), **QUIET)
    latest = workdir / "checkpoints" / "latest"
    _truncate_a_data_file(latest / "9")
    # reading only: sampling falls back to step 6 and says so, moving nothing
    lines = []
    params = train.load_run(str(workdir), "latest", log=lines.append)[1]
    assert len(lines) == 1 and lines[0].startswith("checkpoint latest/9 is unreadable (") \
        and lines[0].endswith("; using step 6"), lines
    assert (latest / "9").is_dir()
    assert "Event loop is closed" not in capfd.readouterr().err
    jax.tree.map(lambda x: np.asarray(x), params)
    # the writer falls back too, keeps the bad step aside, and ends as an uninterrupted run would
    config.train.num_steps = 12
    lines = []
    result = train.train_and_evaluate(config, str(workdir), log=lines.append)
    assert result["status"] == "completed" and result["step"] == 12
    assert any(line.startswith("checkpoint latest/9 is unreadable") and "moved to" in line
               and line.endswith("using step 6") for line in lines), lines
    assert (workdir / "checkpoints" / "unreadable" / "latest-9" / "params").is_dir()
    assert_trees_close(_latest_params(workdir), _latest_params(reference), what="params")
    ignore = ("elapsed_s", "train_time_s")
    assert_records_close(rundir.read_metrics(str(workdir)), rundir.read_metrics(str(reference)), ignore=ignore)


def test_checkpoints_that_all_cannot_be_read_stop_the_resume_and_stay(tmp_path):
    config = tiny_config(write_corpus(tmp_path / "text.txt"), num_steps=6, sample_length=0, max_to_keep=2)
    workdir = tmp_path / "run"
    train.train_and_evaluate(config, str(workdir), **QUIET)
    latest = workdir / "checkpoints" / "latest"
    for step in ("3", "6"):
        _truncate_a_data_file(latest / step)
    config.train.num_steps = 9
    with pytest.raises(InputError, match=r"none of the 2 checkpoint\(s\) in latest/ can be read .* aside to start"):
        train.train_and_evaluate(config, str(workdir), **QUIET)
    assert sorted(os.listdir(latest)) == ["3", "6"]  # nothing moved, nothing restarted
    assert max(r["step"] for r in rundir.read_metrics(str(workdir))) == 6


def test_vmapped_trials_pass_over_an_unreadable_checkpoint(tmp_path):
    from experiments.configs import tasks as tasks_config
    from rnn_jax import trials

    def configs(steps):
        out = [tasks_config.get_config(f"task=memorization,runlocal,optimizer=sgd,lr=0.5,seed={i}") for i in (0, 1)]
        for c in out:
            c.train.update(num_steps=steps, checkpoint_every=3, eval_every=3, max_to_keep=2)
        return out

    dirs = [tmp_path / "t0", tmp_path / "t1"]
    trials.train_trials(configs(6), dirs, **QUIET)
    _truncate_a_data_file(dirs[1] / "checkpoints" / "latest" / "6")
    lines = []
    results = trials.train_trials(configs(9), dirs, log=lines.append)
    assert [r["status"] for r in results] == ["completed", "completed"]
    assert any(line.startswith("checkpoint latest/6 is unreadable") for line in lines), lines
    assert any("newest readable checkpoints are at different steps [6, 3]: all trials start over" in line
               for line in lines), lines
    assert (dirs[1] / "checkpoints" / "unreadable" / "latest-6").is_dir()
    fresh = [tmp_path / "f0", tmp_path / "f1"]
    trials.train_trials(configs(9), fresh, **QUIET)
    for d, f in zip(dirs, fresh):
        assert_trees_close(_latest_params(d), _latest_params(f), what=f"params of {d.name}")


# ----------------------------------------------------------------------------- divergence

def test_a_loss_far_above_chance_is_divergence_even_when_finite(tmp_path):
    config = tiny_config(write_corpus(tmp_path / "text.txt"), num_steps=6, sample_length=0)
    config.train.diverge_factor = 0.5  # the first loss, about ln V, is already above half of ln V
    lines = []
    result = train.train_and_evaluate(config, str(tmp_path / "run"), log=lines.append)
    assert result["status"] == "diverged" and result["step"] == 1
    record = rundir.read_metrics(str(tmp_path / "run"))[-1]
    assert np.isfinite(record["loss"]) and record["loss"] > 0.5 * np.log(11)
    assert any("diverged" in line and "before any checkpoint was saved" in line for line in lines), lines
    assert "last good checkpoint" not in " ".join(lines)
    # Adam at a learning rate of 1e6: diverged, not completed
    config = tiny_config(config.data.path, num_steps=30, sample_length=0)
    config.optim.learning_rate = 1e6
    assert train.train_and_evaluate(config, str(tmp_path / "adam"), **QUIET)["status"] == "diverged"
    config.train.diverge_factor = -1.0
    with pytest.raises(InputError, match="train.diverge_factor"):
        train.validate_config(config)


# ----------------------------------------------------------------------------- progress

def test_progress_excludes_the_compiling_first_step_and_shows_elapsed_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(train.time, "perf_counter", lambda: now[0])
    progress = train.Progress(0, 1000)
    now[0] += 30.0  # the first step compiles for 30 s
    first = progress.line(1, 4.2)
    assert "first step (compiling) 30.0 s" in first and "elapsed 0:00:30" in first and "ETA" not in first
    progress.restart_rate(1)
    now[0] += 9.9  # then 99 steps at 10 steps/s
    line = progress.line(100, 3.0)
    assert "10.00 steps/s" in line and "elapsed 0:00:40" in line and "ETA 0:01:30" in line


# ----------------------------------------------------------------------------- Ctrl-C

# ``python -m MODULE ARGS`` with SIGINT raising KeyboardInterrupt, as an interactive shell starts a
# command: a child inherits an ignored SIGINT, and a non-interactive shell starts its background
# jobs (``cmd &``) with SIGINT ignored, so a suite launched that way saw every run ignore SIGINT.
_MAIN = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def test_ctrl_c_during_the_first_compile_exits_130(tmp_path):
    path = write_corpus(tmp_path / "text.txt")
    proc = subprocess.Popen(
        [sys.executable, "-c", _MAIN, "experiments.train", "--config=experiments/configs/char_lm.py:runlocal",
         f"--config.data.path={path}", "--config.model.hidden_size=256", "--config.model.num_layers=2",
         f"--workdir={tmp_path / 'run'}"], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()  # the run's summary, printed before the first step compiles
    assert "parameters" in line, line
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
