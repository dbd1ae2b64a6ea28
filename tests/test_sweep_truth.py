"""Sweeps that tell the truth: exit statuses and summaries of `experiments.sweep run`, data paths
checked before a launch, and reports of sweeps where nothing completed."""

import json
import os
import subprocess
import sys

import pytest

from rnn_jax import report, sweep
from rnn_jax.errors import InputError
from rnn_jax.sweep import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}

# the README's char_lm sweep (lstm, gru, mut1), plus a point that fails and one that diverges
CHAR_SWEEP = '''
from experiments.configs.char_lm import get_config, sweep as char_sweep


def sweep(add):
    char_sweep(add)
    add(cell="no_such_cell")
    add(**{"optim.name": "sgd", "optim.learning_rate": 1e38})  # an update past float32's range
'''


def _text(path):
    words = "the quick brown fox jumps over the lazy dog while seven wizards quietly hex jolly boxers".split()
    path.write_text("\n".join(" ".join(words[(i + j) % len(words)] for j in range(9)) for i in range(80)))
    return str(path)


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_sweep_run_exits_1_with_a_summary_and_the_readme_sweep_trains_every_cell(tmp_path):
    """One sweep of 5 points (README char_lm sweep at smoke size + a failing and a diverging point):
    the mut1 point trains, the sweep exits 1 naming the failed and diverged run dirs; the report
    of the same sweep makes its table and names the failure."""
    config = tmp_path / "char_sweep.py"
    config.write_text(CHAR_SWEEP)
    sweep_dir = tmp_path / "sweep"
    data = _text(tmp_path / "tiny.txt")
    out = _run("experiments.sweep", "run", f"--config={config}", "--arg=runlocal,steps=3", "--workers=2",
               f"--config_override=data.path={data}", f"--sweep_dir={sweep_dir}")
    assert out.returncode == 1, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("5 points:")]
    assert line, out.stdout
    line = line[0]
    assert line.startswith("5 points: 3 completed, 1 diverged, 1 failed; failed: "), line
    failed = sweep.run_dir(str(sweep_dir), sweep.point_name({"cell": "no_such_cell", "data.path": data}))
    assert f"failed: {failed} (InputError: " in line and "no_such_cell" in line
    diverged = sweep.run_dir(str(sweep_dir), sweep.point_name(
        {"optim.name": "sgd", "optim.learning_rate": 1e38, "data.path": data}))
    assert f"; diverged: {diverged} (at step " in line
    status = sweep.sweep_status(str(sweep_dir))
    mut1 = sweep.point_name({"cell": "mut1:input_term=linear", "data.path": data})
    assert status[mut1] == "completed"  # embed 16 != hidden 32: the linear input term fits any sizes

    rep = _run("experiments.report", f"--sweep_dir={sweep_dir}", timeout=120)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "| mut1:input_term=linear |" in rep.stdout
    assert f"1 run(s) failed: {os.path.relpath(failed, sweep_dir)} (InputError: " in rep.stdout


TWO_POINTS = '''
from experiments.configs.tasks import get_config


def sweep(add):
    add(seed=0)
    add(seed=1)
'''


def test_a_relaunch_of_a_finished_sweep_with_a_diverged_point(tmp_path):
    """Nothing left to train (so no worker starts): exit 1 for the diverged point, 0 with --allow_diverged."""
    config = tmp_path / "two.py"
    config.write_text(TWO_POINTS)
    sweep_dir = tmp_path / "sweep"
    arg = "task=memorization,runlocal"
    a, b = sweep.record_sweep(str(sweep_dir), str(config), arg, [{"seed": 0}, {"seed": 1}])
    _write(sweep_dir / "runs" / a / "result.json", {"status": "completed", "step": 20})
    _write(sweep_dir / "runs" / b / "result.json", {"status": "diverged", "step": 3})
    cmd = ("experiments.sweep", "run", f"--config={config}", f"--arg={arg}", f"--sweep_dir={sweep_dir}")
    out = _run(*cmd, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert f"2 points: 1 completed, 1 diverged; diverged: {sweep_dir}/runs/{b} (at step 3)" in out.stdout
    out = _run(*cmd, "--allow_diverged", timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 points: 1 completed, 1 diverged\n" in out.stdout


def test_summary_line_and_verdict(tmp_path):
    sweep_dir = str(tmp_path)
    _write(tmp_path / "runs" / "p-a" / "result.json", {"status": "completed", "step": 10})
    _write(tmp_path / "runs" / "p-b" / "result.json", {"status": "failed", "error": "ValueError: bad\ntrace"})
    _write(tmp_path / "runs" / "p-c" / "result.json", {"status": "diverged", "step": 7})
    statuses = {"p-a": "completed", "p-b": "failed", "p-c": "diverged"}
    line, ok = sweep.summarize(sweep_dir, statuses)
    b, c = sweep.run_dir(sweep_dir, "p-b"), sweep.run_dir(sweep_dir, "p-c")
    assert line == (f"3 points: 1 completed, 1 diverged, 1 failed; failed: {b} (ValueError: bad); "
                    f"diverged: {c} (at step 7)")
    assert not ok
    line, ok = sweep.summarize(sweep_dir, statuses, diverged_ok=True)  # a comparison: divergence is an outcome
    assert line.endswith("failed: " + f"{b} (ValueError: bad)") and not ok
    assert sweep.summarize(sweep_dir, {"p-a": "completed", "p-c": "diverged"}, diverged_ok=True)[1]
    assert not sweep.summarize(sweep_dir, {"p-a": "completed", "p-c": "diverged"})[1]
    assert sweep.summarize(sweep_dir, {"p-a": "completed", "p-x": "running"}) == (
        "2 points: 1 completed, 1 running", True)
    many = {f"p-{i}": "failed" for i in range(5)}
    line, ok = sweep.summarize(sweep_dir, many, show=2)
    assert line.startswith("5 points: 5 failed; failed: ") and line.endswith(" and 3 more") and not ok
    assert "(no error recorded)" in line


# ----------------------------------------------------------------------------- data paths before a launch

def test_compare_data_paths_are_checked_naming_the_flag(tmp_path):
    missing = str(tmp_path / "nope.pickle")
    with pytest.raises(InputError, match=f"--music_path={missing}: no such file"):
        compare.check_tasks(["xml", "music"], {"music": missing})
    with pytest.raises(InputError, match=f"--music_path={tmp_path}: is a directory, not a file"):
        compare.check_tasks(["music"], {"music": str(tmp_path)})
    rolls = tmp_path / "rolls.json"
    rolls.write_text("{}")
    assert compare.check_tasks(["music"], {"music": str(rolls)}) == ["music"]
    with pytest.raises(InputError, match=f"--ptb_dir={rolls}: is a file, not a directory"):
        compare.check_tasks(["ptb"], {"ptb": str(rolls)})
    with pytest.raises(InputError, match=f"--ptb_dir={tmp_path / 'x'}: no such directory"):
        compare.check_tasks(["ptb"], {"ptb": str(tmp_path / "x")})
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(InputError, match=r"--ptb_dir=.*ptb: the directory lacks ptb.valid.txt, ptb.test.txt"):
        compare.check_tasks(["ptb"], {"ptb": str(ptb)})
    (ptb / "ptb.valid.txt").write_text("a b\n")
    (ptb / "ptb.test.txt").mkdir()
    with pytest.raises(InputError, match=r"--ptb_dir=.*ptb.test.txt: is a directory"):
        compare.check_tasks(["ptb"], {"ptb": str(ptb)})
    # a path of a task not run is not read
    assert compare.check_tasks(["xml"], {"music": missing}) == ["xml"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_music_file_is_refused(tmp_path):
    rolls = tmp_path / "rolls.json"
    rolls.write_text("{}")
    rolls.chmod(0)
    with pytest.raises(InputError, match=f"--music_path={rolls}: cannot be read"):
        compare.check_tasks(["music"], {"music": str(rolls)})


def test_mains_check_data_paths_before_making_the_sweep_dir(tmp_path):
    missing = str(tmp_path / "JSB.pickle")
    out = _run("experiments.compare", "--tasks=music", "--cells=rnn", "--steps=2", f"--music_path={missing}",
               f"--sweep_dir={tmp_path / 'cmp'}", timeout=120)
    assert out.returncode != 0 and f"--music_path={missing}: no such file" in out.stderr, out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "cmp")
    out = _run("experiments.sweep", "run", "--config=experiments/configs/char_lm.py", "--arg=runlocal",
               f"--config_override=data.path={tmp_path}", f"--sweep_dir={tmp_path / 'sw'}", timeout=120)
    assert out.returncode != 0 and f"data.path={tmp_path}: is a directory, not a file" in out.stderr, \
        out.stderr[-2000:]
    assert not os.path.exists(tmp_path / "sw")


def test_a_comparison_whose_runs_all_failed_exits_1_and_says_so(tmp_path):
    rolls = tmp_path / "rolls.json"
    rolls.write_text("[1, 2]")  # readable, but not piano rolls: the run fails in its worker
    sweep_dir = tmp_path / "cmp"
    out = _run("experiments.compare", "--tasks=music", "--cells=rnn", "--steps=2", "--workers=1",
               f"--music_path={rolls}", f"--sweep_dir={sweep_dir}", timeout=180)
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"{sweep_dir}: 1 run directory, none completed (1 failed: runs/p-" in out.stderr
    assert "no table" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout.splitlines()[-1].startswith(f"1 point: 1 failed; failed: {sweep_dir}/runs/p-")


def test_sweep_data_path_checks(tmp_path):
    char = os.path.join(ROOT, "experiments", "configs", "char_lm.py")
    with pytest.raises(InputError, match=r"data.path is empty"):
        sweep.points.check_data_paths(char, "runlocal", [{"cell": "gru"}])
    with pytest.raises(InputError, match=r"sweep point p-\w+: data.path=.*nope.txt: no such file"):
        sweep.points.check_data_paths(char, "runlocal", [{"data.path": str(tmp_path / "nope.txt")}])
    with pytest.raises(InputError, match=r"^config arg hidden=-5: must be an integer >= 1$"):
        sweep.points.check_data_paths(char, "runlocal,hidden=-5", [{"data.path": "x"}])
    with pytest.raises(InputError, match=r"^sweep point p-\w+ \(arg='runlocal,batch=0'\): config arg batch=0"):
        sweep.points.check_data_paths(char, None, [{"data.path": "x", "arg": "runlocal,batch=0"}])
    text = tmp_path / "t.txt"
    text.write_text("abc")
    sweep.points.check_data_paths(char, "runlocal", [{"data.path": str(text)}, {"data.path": "tfds:foo"}])
    tasks = os.path.join(ROOT, "experiments", "configs", "tasks.py")
    sweep.points.check_data_paths(tasks, "runlocal", [{"cell": "gru"}])  # generated data: nothing to read
    with pytest.raises(InputError, match=r"data.dir=.*: is a file, not a directory"):
        sweep.points.check_data_paths(tasks, f"task=ptb,data_path={text}", [{"cell": "gru"}])


# ----------------------------------------------------------------------------- reports of sweeps without a table

def _config(cell):
    return {"seed": 0, "cell": cell, "model": {"hidden_size": 8}, "data": {"kind": "char", "path": "x"},
            "train": {"num_steps": 3}}


def test_a_report_of_a_sweep_where_nothing_completed_says_so(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write(runs / "p-a" / "config.json", _config("mut1"))
    _write(runs / "p-a" / "result.json", {"status": "failed", "error": "ValueError: mut1 adds the raw input x"})
    _write(runs / "p-b" / "result.json", {"status": "failed", "error": "FileNotFoundError: no x.txt"})  # no config
    _write(runs / "p-c" / "config.json", _config("gru"))
    _write(runs / "p-c" / "result.json", {"status": "diverged", "step": 2})
    _write(runs / "p-d" / "config.json", _config("lstm"))  # pending
    sweep_dir = str(tmp_path / "s")
    with pytest.raises(report.NoCompletedRuns) as e:
        report.write_report(sweep_dir)
    assert str(e.value) == (f"{sweep_dir}: 4 run directories, none completed (2 failed, 1 diverged, 1 pending; "
                            "failed: runs/p-a (ValueError: mut1 adds the raw input x), runs/p-b "
                            "(FileNotFoundError: no x.txt)); no table")
    assert not os.path.exists(os.path.join(sweep_dir, "report"))

    only_failed = tmp_path / "f"
    for i in range(4):
        _write(only_failed / "runs" / f"p-{i}" / "result.json", {"status": "failed", "error": f"OSError: {i}"})
    with pytest.raises(report.NoCompletedRuns, match=r"f: 4 run directories, none completed \(4 failed: "
                                                     r"runs/p-0 \(OSError: 0\), .* and 1 more\); no table"):
        report.write_report(str(only_failed))
    proc = _run("experiments.report", f"--sweep_dir={only_failed}", timeout=120)
    assert proc.returncode == 1 and "4 run directories, none completed (4 failed: " in proc.stderr, proc.stderr
    assert proc.stdout == ""
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no run directories"):
        report.write_report(str(tmp_path / "empty"))
