"""Plots from run directories."""

import json

import pytest

from rnn_jax import report


def _fake_run(path, n=30):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, n + 1):
            f.write(json.dumps({"step": step, "loss": 3.0 / step, "grad_norm": 1.0, "clipped": False,
                                "learning_rate": 0.1}) + "\n")
            if step % 10 == 0:
                f.write(json.dumps({"step": step, "valid_loss": 3.5 / step, "elapsed_s": step * 2.0}) + "\n")
        f.write('{"step": 31, "loss"')  # a torn last line (killed writer) is skipped
    return str(path)


def test_learning_curves_and_plot(tmp_path):
    run = _fake_run(tmp_path / "a")
    train, valid = report.learning_curves(run)
    assert len(train) == 30 and [s for s, _, _ in valid] == [10, 20, 30]
    for x in ("step", "minutes"):
        out = report.plot_runs([run, _fake_run(tmp_path / f"b{x}")], str(tmp_path / f"{x}.png"), x=x)
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="x must be 'step' or 'minutes'"):
        report.plot_runs([run], str(tmp_path / "c.png"), x="epochs")
    with pytest.raises(ValueError, match="got 2 labels for 1 runs"):
        report.plot_runs([run], str(tmp_path / "c.png"), labels=["a", "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no metrics"):
        report.plot_runs([str(tmp_path / "empty")], str(tmp_path / "d.png"))


# ----------------------------------------------------------------------------- comparison tables

import csv  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(cell, task, seed=0, lr=0.5, log_every=100, data_path=""):
    return {"seed": seed, "cell": cell,
            "model": {"hidden_size": 128, "num_layers": 1, "init_scale": 1.0},
            "data": {"kind": task, "path": data_path, "seed": 0},
            "optim": {"name": "sgd", "learning_rate": lr, "max_norm": 5.0},
            "train": {"num_steps": 100, "log_every": log_every, "eval_every": 50}}


def _write_run(path, config, result=None, curve=(0.3, 0.5)):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    if result is not None:
        (path / "result.json").write_text(json.dumps(result))
    with open(path / "metrics.jsonl", "w") as f:
        for i, v in enumerate(curve):
            step = 50 * (i + 1)
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "grad_norm": 1.0}) + "\n")
            f.write(json.dumps({"step": step, "valid_loss": 2.0 - v, "valid_accuracy": v,
                                "elapsed_s": float(step)}) + "\n")


def _task_result(valid, test, answer=None, status="completed", predictable=None):
    r = {"status": status, "step": 100, "best_step": 100, "best_valid_loss": 1.0 - valid,
         "test_loss": 1.0 - test, "best_valid_accuracy": valid, "test_accuracy": test}
    if answer is not None:
        r.update(best_valid_answer_accuracy=answer, test_answer_accuracy=answer)
    if predictable is not None:
        r.update(best_valid_predictable_accuracy=predictable, test_predictable_accuracy=predictable)
    return r


def _ptb_result(valid_loss, test_ppl):
    return {"status": "completed", "step": 100, "best_step": 100, "best_valid_loss": valid_loss,
            "test_loss": 4.0, "best_valid_perplexity": 90.0, "test_perplexity": test_ppl}


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    runs = root / "runs"
    (root).mkdir()
    (root / "sweep.json").write_text("{not read")
    # lstm / arithmetic: setting A (lr 0.5) with 3 seeds + a pending 4th; B (lr 0.1) has the best
    # test accuracy and a higher-seed valid score but a worse lowest-seed valid score; C diverged
    # with the best valid score; D failed
    _write_run(runs / "lstm_a_s0", _config("lstm", "arithmetic", 0, 0.5, log_every=7),
               _task_result(0.80, 0.70, answer=0.50), curve=(0.4, 0.8))
    _write_run(runs / "lstm_a_s1", _config("lstm", "arithmetic", 1, 0.5),
               _task_result(0.82, 0.74, answer=0.60))
    _write_run(runs / "extra" / "deep" / "lstm_a_s2", _config("lstm", "arithmetic", 2, 0.5),
               _task_result(0.79, 0.78, answer=0.70))
    _write_run(runs / "lstm_a_s3", _config("lstm", "arithmetic", 3, 0.5))  # pending: no result.json
    _write_run(runs / "lstm_b_s0", _config("lstm", "arithmetic", 0, 0.1), _task_result(0.70, 0.95))
    _write_run(runs / "lstm_b_s1", _config("lstm", "arithmetic", 1, 0.1), _task_result(0.99, 0.99))
    _write_run(runs / "lstm_c_s0", _config("lstm", "arithmetic", 0, 1.0),
               {**_task_result(0.99, 0.99), "status": "diverged", "test_loss": "nan"})
    _write_run(runs / "lstm_d_s0", _config("lstm", "arithmetic", 0, 2.0),
               {"status": "failed", "error": "OOM", "step": 3})
    # gru / arithmetic: two settings with the same valid score (tie: the lower hash wins), 1 seed
    _write_run(runs / "gru_a", _config("gru", "arithmetic", 0, 0.5), _task_result(0.90, 0.88, answer=0.4))
    _write_run(runs / "gru_b", _config("gru", "arithmetic", 0, 0.25), _task_result(0.90, 0.86, answer=0.3))
    # a cell spec with options: the paper column matches on the name before ":"
    _write_run(runs / "mut1_lin", _config("mut1:input_term=linear", "arithmetic"), _task_result(0.93, 0.91))
    # xml: lstm completed; lstm_f only diverged
    _write_run(runs / "lstm_xml", _config("lstm", "xml"), _task_result(0.45, 0.44, predictable=0.6))
    _write_run(runs / "lstm_f_xml", _config("lstm_f", "xml"), {"status": "diverged", "best_valid_loss": "inf"})
    # ptb (lower is better): setting X has the better test perplexity, Y the better valid loss,
    # Z a nan valid loss (never best)
    _write_run(runs / "ptb_x", _config("lstm", "ptb", 0, 1.0), _ptb_result(4.5, 100.0))
    _write_run(runs / "ptb_y0", _config("lstm", "ptb", 0, 0.7), _ptb_result(4.4, 120.0))
    _write_run(runs / "ptb_y1", _config("lstm", "ptb", 1, 0.7), _ptb_result(4.6, 130.0))
    _write_run(runs / "ptb_z", _config("lstm", "ptb", 0, 0.3), _ptb_result("nan", 50.0))
    return str(root)


def test_find_runs_and_settings(sweep):
    runs = report.find_runs(sweep)
    assert len(runs) == 17  # nested run dirs found, sweep.json ignored
    by_name = {os.path.basename(r.workdir): r for r in runs}
    a0, a1, a2 = by_name["lstm_a_s0"], by_name["lstm_a_s1"], by_name["lstm_a_s2"]
    # seed and log_every do not change the setting; the learning rate and the data file do
    assert a0.setting == a1.setting == a2.setting == by_name["lstm_a_s3"].setting
    assert (report.setting_of(_config("lstm", "arithmetic", 0, 0.5, log_every=7))
            == report.setting_of(_config("lstm", "arithmetic", 5, 0.5)))
    assert (report.setting_of(_config("lstm", "arithmetic", 0, 0.5, data_path="/jsb.pkl"))
            != report.setting_of(_config("lstm", "arithmetic", 0, 0.5, data_path="/nottingham.pkl")))
    assert a0.setting != by_name["lstm_b_s0"].setting
    assert (a2.cell, a2.task, a2.seed) == ("lstm", "arithmetic", 2)
    assert by_name["lstm_a_s3"].result is None and by_name["lstm_a_s3"].status == "pending"
    assert report.setting_of(_config("lstm", "xml", seed=5)) == report.setting_of(_config("lstm", "xml"))
    with pytest.raises(ValueError, match="not a directory"):
        report.find_runs(os.path.join(sweep, "nope"))


def test_comparison(sweep):
    comp = report.comparison(report.find_runs(sweep))
    e = comp["lstm"]["arithmetic"]
    # chosen by the lowest-seed valid accuracy (0.80), not by test accuracy (B: 0.95) and not by
    # the diverged setting C (valid 0.99)
    assert e["best_workdir"].endswith("lstm_a_s0") and e["best_seed"] == 0
    assert e["best"] == pytest.approx(0.70) and e["best_valid"] == pytest.approx(0.80)
    assert e["mean"] == pytest.approx(0.74) and e["n"] == 3 and e["seeds"] == [0, 1, 2]
    assert e["std"] == pytest.approx(math.sqrt((0.04 ** 2 * 2) / 3))  # population std
    assert e["second_best"] == pytest.approx(0.5) and e["second_mean"] == pytest.approx(0.6)
    assert (e["settings"], e["completed"], e["diverged"], e["failed"], e["pending"]) == (4, 5, 1, 1, 1)
    assert e["paper"] == pytest.approx(0.892) and e["best_varied"] == {"optim.learning_rate": 0.5}
    g = comp["gru"]["arithmetic"]
    assert g["std"] == 0.0 and g["n"] == 1
    assert g["best_setting"] == min(report.setting_of(_config("gru", "arithmetic", 0, lr)) for lr in (0.5, 0.25))
    assert comp["mut1:input_term=linear"]["arithmetic"]["paper"] == pytest.approx(0.921)
    x = comp["lstm"]["xml"]
    assert x["best"] == pytest.approx(0.44) and x["second_best"] == pytest.approx(0.6)
    f = comp["lstm_f"]["xml"]
    assert f["best"] is None and f["n"] == 0 and f["diverged"] == 1 and f["settings"] == 1
    p = comp["lstm"]["ptb"]
    assert p["metric"] == "test_perplexity" and not p["higher_is_better"]
    assert p["best"] == pytest.approx(120.0) and p["best_valid"] == pytest.approx(4.4)
    assert p["mean"] == pytest.approx(125.0) and p["std"] == pytest.approx(5.0) and p["settings"] == 3
    assert p["paper"] is None


def test_tables(sweep):
    comp = report.comparison(report.find_runs(sweep))
    md = report.table_markdown(comp)
    lines = md.splitlines()
    assert lines[0].startswith("| cell | arithmetic acc | arithmetic answer acc | arithmetic (paper) | xml acc")
    assert "ptb test ppl" in lines[0]
    rows = [ln.split(" | ")[0].lstrip("| ") for ln in lines[2:6]]
    assert rows == ["lstm", "lstm_f", "gru", "mut1:input_term=linear"]  # canonical order
    lstm_row = lines[2]
    assert "0.700 (0.740 ± 0.033, n=3)" in lstm_row and "| 0.892 |" in lstm_row and "| 0.425 |" in lstm_row
    assert "120.00 (125.00 ± 5.00, n=2)" in lstm_row
    assert lines[3].split(" | ")[1] == "–" and "| 0.234 |" in lines[3]  # lstm_f: paper number only
    assert "4 settings, 5 completed, 1 diverged, 1 failed" in md
    md2 = report.table_markdown(comp, tasks=["xml", "music"], cells=["rnn", "gru", "lstm"], counts=False)
    lines = md2.splitlines()
    assert lines[0] == ("| cell | xml acc | xml predictable acc | xml (paper) | music test NLL/step |")
    assert lines[2] == "| rnn | – | – | 0.321 | – |"
    assert [ln.split(" | ")[0] for ln in lines[2:5]] == ["| rnn", "| gru", "| lstm"]

    tex = report.table_latex(comp)
    assert tex.startswith(r"\begin{tabular}{l") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"lstm\_f & --" in tex and r"0.700 (0.740 $\pm$ 0.033, n=3)" in tex
    assert re.search(r"(?<!\\)_", tex) is None  # every underscore escaped

    rows = list(csv.DictReader(io.StringIO(report.table_csv(comp))))
    assert [(r["cell"], r["task"]) for r in rows] == [
        ("lstm", "arithmetic"), ("lstm", "xml"), ("lstm", "ptb"), ("lstm_f", "xml"), ("gru", "arithmetic"),
        ("mut1:input_term=linear", "arithmetic")]
    r = rows[0]
    assert float(r["best"]) == pytest.approx(0.70)
    assert float(r["std"]) == pytest.approx(comp["lstm"]["arithmetic"]["std"])
    assert (int(r["n"]), r["seeds"], int(r["diverged"]), int(r["failed"]), int(r["pending"])) == (3, "0 1 2", 1, 1, 1)
    assert float(r["paper"]) == 0.892 and json.loads(r["best_varied"]) == {"optim.learning_rate": 0.5}
    assert rows[3]["best"] == "" and rows[2]["paper"] == ""


def test_write_report_and_curves(sweep, tmp_path):
    out = report.write_report(sweep)
    out_dir = os.path.join(sweep, "report")
    for name in ("table.md", "table.tex", "table.csv", "comparison.json"):
        assert os.path.exists(os.path.join(out_dir, name))
    assert out["table_md"] == os.path.join(out_dir, "table.md")
    with open(out["table_md"], encoding="utf-8") as f:
        assert f.read() == out["markdown"]
    with open(out["comparison_json"], encoding="utf-8") as f:
        data = json.loads(f.read(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert data["comparison"]["lstm"]["arithmetic"]["n"] == 3 and len(data["pending"]) == 1
    assert sorted(os.path.basename(p) for p in out["curves"]) == [
        "curves_arithmetic.png", "curves_ptb.png", "curves_xml.png"]
    for p in out["curves"]:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(out_dir) if ".tmp" in n]
    # the report dir holds no config.json: a second report sees the same runs
    assert len(report.find_runs(sweep)) == 17
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no run directories"):
        report.write_report(str(tmp_path / "empty"))


def test_report_main(sweep, tmp_path):
    from experiments import report as report_main

    with pytest.raises(ValueError, match="is not a directory"):
        report_main.make_report(str(tmp_path / "nope"))
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "experiments.report", f"--sweep_dir={sweep}",
                           f"--out_dir={out_dir}", "--cells=gru,lstm", "--tasks=arithmetic"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "| cell | arithmetic acc | arithmetic answer acc | arithmetic (paper) |"
    assert lines[2].startswith("| gru | 0.880 (n=1) |") and lines[3].startswith("| lstm | 0.700")
    assert sorted(os.listdir(out_dir)) == ["comparison.json", "curves_arithmetic.png", "table.csv",
                                           "table.md", "table.tex"]


def test_one_table_of_field_kinds_decides_settings_resumes_trials_and_point_names(tmp_path):
    from rnn_jax import rundir, trials
    from rnn_jax.errors import InputError
    from rnn_jax.sweep import points
    from tests.lm_helpers import tiny_config

    config = json.loads(tiny_config("x.txt").to_json_best_effort())
    base = report.setting_of(config)
    for field, value in (("train.log_every", 7), ("train.diverge_factor", 3.0), ("trials_per_program", 4),
                         ("seed", 5)):
        changed = json.loads(json.dumps(config))
        section, _, name = field.rpartition(".")
        (changed[section] if section else changed)[name] = value
        assert report.setting_of(changed) == base, field  # the same setting
    for field in ("model.hidden_size", "train.data_parallel", "train.num_steps", "data.path"):
        changed = json.loads(json.dumps(config))
        section, name = field.split(".")
        changed[section][name] = "other"
        assert report.setting_of(changed) != base, field  # another setting
    # the resume rule, the trials' program key and the point names read the same table
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    resumed = tiny_config("x.txt", log_every=7, num_steps=99)
    rundir.check_config_file(resumed, str(workdir))  # logging and length fields may change
    resumed.model.hidden_size = 32
    with pytest.raises(InputError, match="model.hidden_size: 16 -> 32"):
        rundir.check_config_file(resumed, str(workdir))
    a, b = tiny_config("x.txt"), tiny_config("x.txt")
    b.optim.learning_rate, b.seed = 0.5, 3
    assert trials.program_key(a) == trials.program_key(b)  # trials of one program
    b.model.hidden_size = 32
    assert trials.program_key(a) != trials.program_key(b)
    assert points.point_name({"cell": "gru", "trials_per_program": 8}) == points.point_name({"cell": "gru"})
