"""Sweeps: point names, overrides, the hyperparameter search, the local launcher, a micro comparison."""

import json
import os
import subprocess
import sys

import pytest

from rnn_jax import jozefowicz, report, sweep
from rnn_jax.sweep import compare, hparams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_CONFIG = os.path.join(ROOT, "experiments", "configs", "tasks.py")


def test_point_names_are_stable_and_expand_dedupes():
    a = {"cell": "lstm", "optim.learning_rate": 0.5}
    assert sweep.point_name(a) == sweep.point_name(dict(reversed(list(a.items()))))
    assert sweep.point_name(a) != sweep.point_name({**a, "seed": 1})
    # the name is a pure function of the overrides' canonical JSON (a regression guard)
    assert sweep.point_name({"cell": "gru"}) == "p-" + __import__("hashlib").sha256(
        b'{"cell":"gru"}').hexdigest()[:12]

    def fn(add):
        for cell in ("lstm", "gru", "lstm"):
            add(cell=cell)

    assert sweep.expand(fn) == [{"cell": "lstm"}, {"cell": "gru"}]
    with pytest.raises(ValueError, match="JSON"):
        sweep.point_name({"x": object()})


def test_overrides_apply_and_name_bad_fields():
    config = sweep.point_config(TASKS_CONFIG, None, {"arg": "task=xml,hidden=32", "cell": "gru",
                                                     "optim.learning_rate": 0.25})
    assert (config.data.kind, config.model.hidden_size, config.cell) == ("xml", 32, "gru")
    assert config.optim.learning_rate == 0.25
    with pytest.raises(ValueError, match="no field 'learning_rat'.*learning_rate"):
        sweep.point_config(TASKS_CONFIG, None, {"optim.learning_rat": 1.0})
    with pytest.raises(ValueError, match="has no section 'optimizer'"):
        sweep.point_config(TASKS_CONFIG, None, {"optimizer.name": "sgd"})
    points = sweep.sweep_points(TASKS_CONFIG)
    assert {p["data.kind"] for p in points} == {"arithmetic", "xml"}


def test_search_settings_are_shared_and_hidden_fits_the_budget():
    space = hparams.search_space("sgd")
    assert space["learning_rate"] == (0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
    s1, s2 = hparams.sample_settings(7, 5, space), hparams.sample_settings(7, 5, space)
    assert s1 == s2 and len({json.dumps(s) for s in s1}) > 1
    for cell in ("rnn", "lstm", "mut1"):
        h = hparams.hidden_for_budget(cell, 2, 40, 50_000)
        assert hparams.count_params(cell, h, 2, 40) <= 50_000 < hparams.count_params(cell, h + 1, 2, 40)
    assert hparams.hidden_for_budget("rnn", 1, 40, 50_000) > hparams.hidden_for_budget("lstm", 1, 40, 50_000)
    with pytest.raises(ValueError, match="too small"):
        hparams.hidden_for_budget("lstm", 4, 40, 100)
    # every cell gets the same settings in the comparison
    preset = compare.Preset(tasks=("xml",), settings=3, seeds=1, steps=10, budget=20_000, optimizer="sgd",
                            init_style="uniform", fixed=None, digits=3, distractors=1,
                            train_chars=1000, eval_every=5, max_layers=2)
    pts = compare.search_points(preset, ["rnn", "gru"], ["xml"])
    strip = lambda p: [x for x in p["arg"].split(",") if not x.startswith("hidden=")]
    assert [strip(p) for p in pts[:3]] == [strip(p) for p in pts[3:]]
    with pytest.raises(ValueError, match="unknown or repeated task 'sorting'"):
        compare.check_tasks(["sorting"], {})
    with pytest.raises(ValueError, match="--ptb_dir"):
        compare.check_tasks(["ptb"], {})
    with pytest.raises(ValueError, match="grid's size"):
        hparams.sample_settings(0, 10_000, space)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        sweep.launch_local("/nonexistent", TASKS_CONFIG, [], workers=0)



def test_the_paper_constants_live_in_jozefowicz_and_stay_importable_where_they_were():
    assert report.PAPER_TABLE1 is jozefowicz.PAPER_TABLE1 and report.PAPER_TASKS is jozefowicz.PAPER_TASKS
    assert hparams.PAPER_SPACE is jozefowicz.PAPER_SPACE
    assert compare.PRESETS is jozefowicz.PRESETS and compare.Preset is jozefowicz.Preset
    assert compare.DEFAULT_CELLS is jozefowicz.DEFAULT_CELLS
    assert set(jozefowicz.PAPER_TABLE1) == set(jozefowicz.DEFAULT_CELLS)


def test_the_vocabulary_size_of_a_generated_task_is_the_one_its_run_builds():
    """The hidden size of a point follows from the vocabulary the trainer builds for the task
    (``train.load_data(config.data)``), for the default options and for every preset's."""
    from experiments.configs.tasks import get_config
    from rnn_jax import train

    sizes = {}
    for task in compare.tasks_lib.TASKS:
        sizes[task] = len(train.load_data(get_config(f"task={task},runlocal").data).vocab)
        assert compare.task_vocab_size(task) == compare._vocab_size(task, {}) == sizes[task]
    assert sizes == {"arithmetic": 40, "xml": 29, "memorization": 28}  # the tables do not change
    for name, preset in sorted(jozefowicz.PRESETS.items()):
        setting = compare.settings_for(preset)[0]
        for task in preset.tasks:
            p = compare.point(preset, task, "lstm", setting, 0, {})
            config = sweep.point_config(TASKS_CONFIG, None, p)  # the run's own config, data made small
            config.data.num_chars.update(train=4000, valid=600, test=600)
            vocab_size = len(train.load_data(config.data).vocab)
            assert vocab_size == sizes[task], (name, task)
            hidden = hparams.hidden_for_budget("lstm", setting["num_layers"], vocab_size, preset.budget)
            assert f"hidden={hidden}," in p["arg"], (name, task)


MICRO = compare.Preset(tasks=("memorization",), settings=2, seeds=2, steps=12, budget=4000,
                       optimizer="adam", init_style="lecun", fixed=None, digits=3, distractors=1,
                       train_chars=3000, eval_every=6, max_layers=1,
                       extra="batch=4,seq_len=10,eval_chars=500")


def test_micro_comparison_end_to_end(tmp_path):
    """2 cells x 1 task x 2 settings, the best rerun with a second seed, a failed and a diverged
    point recorded while the sweep goes on, a relaunch that skips what is done, and the table."""
    sweep_dir = str(tmp_path / "sweep")
    search = compare.search_points(MICRO, ["rnn", "lstm"], ["memorization"])
    assert len(search) == 4
    broken = {"arg": search[0]["arg"], "cell": "no_such_cell"}
    exploding = {**search[0], "optim.name": "sgd", "optim.learning_rate": 1e38}  # an update past float32's range
    logs = []
    statuses = sweep.launch_local(sweep_dir, TASKS_CONFIG, search + [broken, exploding], workers=2,
                                  compile_cache=False, log=logs.append)
    names = [sweep.point_name(p) for p in search]
    assert [statuses[n] for n in names] == ["completed"] * 4
    assert statuses[sweep.point_name(broken)] == "failed"
    assert statuses[sweep.point_name(exploding)] == "diverged"
    failed = json.load(open(os.path.join(sweep.run_dir(sweep_dir, sweep.point_name(broken)), "result.json")))
    assert "no_such_cell" in failed["error"]
    assert any("[6/6]" in line for line in logs)

    reruns = compare.seed_points(search, compare.read_results(sweep_dir, search), MICRO.seeds)
    assert len(reruns) == 2 and all("seed=1" in p["arg"] for p in reruns)
    statuses = sweep.launch_local(sweep_dir, TASKS_CONFIG, reruns, workers=2, compile_cache=True,
                                  log=logs.append)
    assert set(statuses.values()) == {"completed"}
    assert os.listdir(os.path.join(sweep_dir, "jax_cache"))  # the workers got the cache's environment

    # relaunch: completed and diverged points are skipped, the failed one runs (and fails) again
    mtimes = {n: os.path.getmtime(os.path.join(sweep.run_dir(sweep_dir, n), "result.json")) for n in names}
    logs.clear()
    statuses = sweep.launch_local(sweep_dir, TASKS_CONFIG, search + [broken, exploding], workers=1,
                                  compile_cache=False, log=logs.append)
    assert "5 done, 1 to run" in logs[0]
    assert mtimes == {n: os.path.getmtime(os.path.join(sweep.run_dir(sweep_dir, n), "result.json")) for n in names}
    status = sweep.sweep_status(sweep_dir)
    assert sorted(status.values()).count("completed") == 6 and len(status) == 8

    out = report.write_report(sweep_dir, cells=["rnn", "lstm"], tasks=["memorization"])
    comp = out["comparison"]
    for cell in ("rnn", "lstm"):
        entry = comp[cell]["memorization"]
        assert entry["n"] == 2 and entry["settings"] >= 2
    assert comp["rnn"]["memorization"]["diverged"] == 1
    assert "| rnn" in out["markdown"] and "memorization" in out["markdown"]
    assert os.path.exists(out["table_csv"]) and os.path.exists(out["table_tex"])


def test_compare_and_sweep_mains(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "experiments.compare", "--preset=quick", "--dry_run",
                          "--cells=rnn,gru", f"--sweep_dir={tmp_path}"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "2 cells x 2 tasks x 1 setting(s) = 4 runs" in out.stdout
    assert out.stdout.count("gru on ") == 2
    bad = subprocess.run([sys.executable, "-m", "experiments.compare", "--dry_run", "--cells=lstm,nope"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nope" in bad.stderr
    # status of a recorded sweep, read from its run dirs only
    sweep.record_sweep(str(tmp_path / "s"), TASKS_CONFIG, None, [{"cell": "gru"}, {"cell": "lstm"}])
    st = subprocess.run([sys.executable, "-m", "experiments.sweep", "status", f"--sweep_dir={tmp_path / 's'}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert st.returncode == 0, st.stderr
    assert st.stdout.strip().endswith("2 pending") and sweep.point_name({"cell": "gru"}) in st.stdout


def test_a_comparison_dir_refuses_other_settings(tmp_path):
    compare.check_sweep_dir(str(tmp_path), MICRO)
    compare.check_sweep_dir(str(tmp_path), MICRO)  # the same preset: fine
    other = compare.dataclasses.replace(MICRO, steps=99)
    with pytest.raises(ValueError, match=r"other settings \(steps differ\)"):
        compare.check_sweep_dir(str(tmp_path), other)
    with pytest.raises(ValueError, match="contains ',' or '='"):
        compare.point(MICRO, "ptb", "lstm", {"num_layers": 1, "init_scale": 1.0, "learning_rate": 0.1,
                                             "max_norm": 5.0}, 0, {"ptb": "/data/a,b"})


def test_compare_main_trains_and_prints_the_table(tmp_path):
    """The README's main command, shrunk: one cell, one task, a few steps."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "experiments.compare", "--preset=quick", "--cells=rnn",
                          "--tasks=memorization", "--steps=4", "--workers=1", f"--sweep_dir={tmp_path}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| cell | memorization acc |" in out.stdout and "| rnn | " in out.stdout
    assert os.path.exists(tmp_path / "report" / "table.csv")
    again = subprocess.run([sys.executable, "-m", "experiments.compare", "--preset=quick", "--cells=rnn",
                            "--tasks=memorization", "--steps=5", f"--sweep_dir={tmp_path}"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "other settings (steps differ)" in again.stderr


KILL_CONFIG = '''
from experiments.configs.tasks import get_config


def sweep(add):
    for seed in range(4):
        add(seed=seed)
'''


def test_killing_the_launcher_mid_sweep_and_relaunching_completes_every_point_once(tmp_path):
    """SIGKILL the launcher and its workers while points train; the relaunch finishes the
    sweep: every point completes exactly once, none lost, none trained twice."""
    import signal
    import time

    config_path = tmp_path / "kill_config.py"
    config_path.write_text(KILL_CONFIG)
    sweep_dir = tmp_path / "sweep"
    steps = 200
    cmd = [sys.executable, "-m", "experiments.sweep", "run", f"--config={config_path}",
           "--arg=task=memorization,runlocal,optimizer=adam,lr=0.01", f"--sweep_dir={sweep_dir}",
           "--workers=2", f"--config_override=train.num_steps={steps}",
           "--config_override=train.checkpoint_every=10", "--config_override=train.eval_every=50"]
    env = {**os.environ, "PYTHONPATH": ROOT}
    launcher_log = open(tmp_path / "launcher.log", "w")  # a file, not a pipe nobody reads
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=launcher_log,
                                start_new_session=True)
    names = [sweep.point_name({"seed": s, **{"train.num_steps": steps, "train.checkpoint_every": 10,
                                               "train.eval_every": 50}}) for s in range(4)]

    def interrupted(name):  # a checkpoint, no result yet
        d = sweep.run_dir(str(sweep_dir), name)
        ck = os.path.join(d, "checkpoints", "latest")
        return (not os.path.exists(os.path.join(d, "result.json")) and os.path.isdir(ck)
                and any(e.isdigit() for e in os.listdir(ck)))

    def done(name):  # the result and the log's last line are both written
        d = sweep.run_dir(str(sweep_dir), name)
        log = os.path.join(d, "log.txt")
        return (os.path.exists(os.path.join(d, "result.json")) and os.path.exists(log)
                and "completed: " in open(log).read())

    deadline = time.time() + 240
    try:
        while time.time() < deadline and launcher.poll() is None:
            if any(map(done, names)) and any(map(interrupted, names)):
                break
            time.sleep(0.05)
        assert launcher.poll() is None, ("the sweep ended before it could be killed: "
                                         + (tmp_path / "launcher.log").read_text()[-2000:])
        assert time.time() < deadline, "no point was ever caught mid-run"
    finally:
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its workers, as a lost job would be
        launcher.wait()
        launcher_log.close()
    before = {n: os.path.getmtime(os.path.join(sweep.run_dir(str(sweep_dir), n), "result.json"))
              for n in names if done(n)}
    assert 1 <= len(before) < 4

    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(before)} done, {4 - len(before)} to run" in again.stderr
    assert sweep.sweep_status(str(sweep_dir)) == {n: "completed" for n in names}
    resumed = 0
    for name in names:
        d = sweep.run_dir(str(sweep_dir), name)
        if name in before:  # finished before the kill: not run again
            assert os.path.getmtime(os.path.join(d, "result.json")) == before[name]
        log = open(os.path.join(d, "log.txt")).read()
        assert log.count("completed: ") == 1, name  # one end of training per point
        resumed += "resuming" in log
        records = [json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))]
        train_steps = [r["step"] for r in records if "loss" in r]
        eval_steps = [r["step"] for r in records if "valid_loss" in r]
        assert train_steps == list(range(1, steps + 1)), name  # every step once, in order
        assert eval_steps == [50, 100, 150, 200], name
        assert json.load(open(os.path.join(d, "result.json")))["step"] == steps
    assert resumed >= 1  # at least one point was cut mid-run and resumed from its checkpoint
