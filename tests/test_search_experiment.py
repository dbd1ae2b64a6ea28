"""The search on the sweep launchers, end to end: evaluator, leaderboard, top recipes as cells,
resume, tabular mode, table export, and the main's errors.

One real search trains (``runlocal``: tiny models on the local pool); the rest reads files that
the tests write.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli
from experiments.configs import search as search_config
from rnn_jax import cells, layers, rundir
from rnn_jax.search import algorithms as alg
from rnn_jax.search import evaluator, known, mutate, report, tabular
from rnn_jax.search import recipe as rl
from rnn_jax.sweep import compile_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/search.py"


def _run(args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-m", "experiments.search", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------- in process


def _proposal(i, recipe, hparams=({},), task="memorization"):
    return {"id": i, "candidate": i, "recipe": recipe, "hash": rl.functional_hash(recipe),
            "hparams": list(hparams), "task": task, "parent": None}


def _evaluator(tmp_path, **kw):
    return evaluator.TrainingEvaluator(str(tmp_path), os.path.join(ROOT, "experiments/configs/tasks.py"),
                                       {"memorization": "task=memorization,runlocal"}, **kw)


def test_points_are_canonical_cells_with_trial_settings(tmp_path):
    ev = _evaluator(tmp_path)
    renamed = {("gate" if k == "r" else k): {**v, "input": ["gate" if i == "r" else i for i in v["input"]]}
               for k, v in known.GRU.items()}
    a, b = ev.points(_proposal(0, known.GRU)), ev.points(_proposal(1, renamed))
    assert a == b and len(a) == 1  # same structure: the same point, trained once
    assert a[0]["cell"].startswith("recipe:recipe=")
    assert cells.from_spec(a[0]["cell"]).graph == rl.canonical(known.GRU)
    two = ev.points(_proposal(2, known.GRU, [{"optim/learning_rate": 0.01}, {"optim.learning_rate": 0.003}]))
    assert [p["optim.learning_rate"] for p in two] == [0.01, 0.003]
    assert all(p["trials_per_program"] == 2 for p in two)
    assert len(set(ev.run_dirs(_proposal(2, known.GRU, [{"optim/learning_rate": 0.01}, {"seed": 1}])))) == 2
    with pytest.raises(ValueError, match="launcher='ssh'; allowed: local, slurm"):
        _evaluator(tmp_path, launcher="ssh")


def _fake_run(path, result, compile_info=None):
    os.makedirs(path, exist_ok=True)
    rundir.write_json_atomic(os.path.join(path, "result.json"), result)
    if compile_info:
        rundir.write_json_atomic(os.path.join(path, "compile.json"), compile_info)


def test_results_best_over_trials_and_failures(tmp_path):
    ev = _evaluator(tmp_path)
    p = _proposal(7, known.LSTM, [{"optim/learning_rate": 0.01}, {"optim/learning_rate": 0.003}, {"seed": 3}])
    dirs = ev.run_dirs(p)
    shared = {"compile_s": 2.0, "wall_s": 4.0, "cache_requests": 10, "cache_hits": 4, "trials": 3}
    _fake_run(dirs[0], {"status": "completed", "best_valid_accuracy": 0.4, "test_accuracy": 0.38}, shared)
    _fake_run(dirs[1], {"status": "diverged", "best_valid_accuracy": 0.6, "test_accuracy": 0.55}, shared)
    _fake_run(dirs[2], {"status": "failed", "error": "boom"}, shared)
    r = ev._result(p)
    assert r["status"] == "ok" and r["fitness"] == 0.6 and r["metrics"]["test_accuracy"] == 0.55
    assert r["metrics"]["statuses"] == ["completed", "diverged", "failed"]
    assert r["metrics"]["compile_s"] == 2.0  # one program, counted once
    q = _proposal(8, known.MUT3)
    _fake_run(ev.run_dirs(q)[0], {"status": "failed", "error": "ValueError: bad"})
    r = ev._result(q)
    assert r["status"] == "failed" and r["fitness"] is None and r["metrics"]["error"] == "ValueError: bad"
    assert ev._result(_proposal(9, known.RNN))["status"] == "failed"  # never ran
    summary = evaluator.compile_summary(str(tmp_path))
    assert summary["programs"] == 1 and summary["compile_share"] == 0.5 and summary["hit_rate"] == 0.4


def test_compile_stats_count_this_process():
    compile_stats.install()
    compile_stats.install()  # idempotent
    before = compile_stats.snapshot()
    jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())(jnp.arange(7.0)).block_until_ready()
    d = compile_stats.since(before)
    assert d["compile_s"] > 0 and d["backend_s"] > 0
    assert d["compile_s"] == pytest.approx(d["trace_s"] + d["lower_s"] + d["backend_s"], abs=1e-3)


def _state_with(candidates):
    s = alg.RandomSearch(tasks=("memorization",)).init(0)
    for cid, (recipe, fit) in enumerate(candidates):
        s["candidates"][str(cid)] = {"recipe": recipe, "hash": rl.functional_hash(recipe), "parent": None,
                                     "born": cid, "kind": "sample", "status": "done",
                                     "results": {"memorization": fit}, "fitness": fit}
        s["history"].append([cid, cid, "memorization", fit, cid])
        s["curve"].append(max(f for _, f in candidates[:cid + 1]))
    return s


def test_leaderboard_picture_and_top_recipes(tmp_path):
    mutant = mutate.mutate(known.GRU, np.random.default_rng(0))
    s = _state_with([(known.GRU, 0.5), (known.LSTM, 0.7), (mutant, 0.9), (known.GRU, 0.4)])
    out = report.write_report(s, str(tmp_path), hidden_size=8, top_k=2)
    rows = out["rows"]
    assert [r["fitness"] for r in rows] == [0.9, 0.7, 0.5]  # a hash once, best first
    assert [r["cell"] for r in rows] == ["", "lstm", "gru"]
    assert rows[1]["params"] == rl.num_params(known.LSTM, 8, 8)
    md = open(out["markdown"]).read()
    assert "| 2 | `" in md and "lstm" in md and "h_new_0 = o_act ⊙ c_act" in md
    assert open(out["csv"]).read().splitlines()[0].startswith("rank,candidate,hash,cell,fitness,memorization")
    assert open(out["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(out["top"]) == 2 and os.path.basename(out["top"][0]).startswith("rank1-")
    cell = cells.get("recipe", path=out["top"][0])
    assert rl.functional_hash(cell.graph) == rows[0]["hash"]
    params = cell.init(jax.random.PRNGKey(0), 4, 4)
    _, hs = layers.rnn(cell, params, jnp.ones((2, 3, 4)))
    assert hs.shape == (2, 3, 4) and bool(jnp.all(jnp.isfinite(hs)))
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_config_checks_and_defaults():
    c = search_config.get_config()
    assert c.algorithm == "jozefowicz" and c.tasks == ("arithmetic", "xml") and c.filter_task == "memorization"
    assert set(c.task_args) == {"arithmetic", "xml", "memorization"}
    assert "hidden=32" in c.task_args["memorization"] and "hidden=48" in c.task_args["xml"]
    e = search_config.get_config("algorithm=evolution,tasks=memorization,settings=2")
    assert e.filter_task == "" and len(e.hparams) == 2
    with pytest.raises(ValueError, match="algorithm"):
        search_config.get_config("algorithm=annealing")
    with pytest.raises(ValueError, match="tasks"):
        search_config.get_config("tasks=arithmetic+poetry")
    with pytest.raises(ValueError, match="budget=0"):
        search_config.get_config("budget=0")


def _table(directory, n=60, seed=0):
    """A table of known recipes and their mutants; losses fall with the number of nodes."""
    rng = np.random.default_rng(seed)
    recipes = list(known.RECIPES.values())
    while len(recipes) < n:
        recipes.append(mutate.mutate(recipes[int(rng.integers(len(recipes)))], rng))
    for r in recipes:
        loss = 5.0 - 0.05 * len(r) + 0.01 * rng.normal()
        tabular.write_log(str(directory), r, [loss + 0.3, loss], [loss + 0.3, loss + 0.02])
    return recipes


# ------------------------------------------------------------------------------- the main


def test_main_errors_are_one_line(tmp_path):
    table = tmp_path / "table"
    _table(table, n=8)
    for args, message in [
        ([f"--config={CONFIG}:table={table}", f"--search_dir={tmp_path}/a"], "Jozefowicz protocol's fitness"),
        ([f"--config={CONFIG}:runlocal", f"--search_dir={tmp_path}/b", "--compare_repeats=2"], "needs tabular mode"),
        ([f"--config={CONFIG}:algorithm=evolution,table={table}", f"--search_dir={tmp_path}/c", "--report_only"],
         "nothing to report"),
    ]:
        proc = _run(args, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_tabular_search_and_comparison(tmp_path):
    table = tmp_path / "table"
    _table(table)
    out = tmp_path / "tab"
    proc = _run([f"--config={CONFIG}:table={table},algorithm=evolution,budget=12,population=6,sample=3",
                 f"--search_dir={out}"])
    assert proc.returncode == 0, proc.stderr
    state = alg.load_state(str(out / "state.json"))
    assert state["evaluations"] == 12 and len(state["history"]) == 12  # one lookup per cell
    assert "| table |" in (out / "leaderboard.md").read_text()
    proc = _run([f"--config={CONFIG}:table={table},algorithm=evolution,budget=10,population=5,sample=2",
                 f"--search_dir={tmp_path}/cmp", "--compare_repeats=3"])
    assert proc.returncode == 0, proc.stderr
    saved = json.load(open(tmp_path / "cmp" / "regret.json"))
    assert set(saved["curves"]) == {"regularized evolution", "random search"}
    assert all(len(c) == 10 for runs in saved["curves"].values() for c in runs["regret"])
    assert (tmp_path / "cmp" / "regret.png").read_bytes()[:4] == b"\x89PNG"
    assert "mean regret" in proc.stdout


def test_search_trains_reports_resumes_and_exports(tmp_path):
    out = tmp_path / "s"
    args = [f"--search_dir={out}", "--workers=2"]
    proc = _run([f"--config={CONFIG}:runlocal,algorithm=evolution,tasks=memorization,budget=3,batch=3,"
                 "population=3,sample=2"] + args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "evaluations/hour" in proc.stdout and "cache hit rate" in proc.stdout
    state = alg.load_state(str(out / "state.json"))
    assert state["evaluations"] == 3
    summary = json.load(open(out / "summary.json"))
    assert summary["compile"]["programs"] >= 1 and summary["compile"]["compile_s"] > 0
    runs = sorted(os.listdir(out / "tasks" / "memorization" / "runs"))
    assert len(runs) == 3
    for name in runs:
        run = out / "tasks" / "memorization" / "runs" / name
        assert json.load(open(run / "result.json"))["status"] in ("completed", "diverged")  # random cells may
        assert json.load(open(run / "compile.json"))["compile_s"] > 0
    top = sorted(os.listdir(out / "top"))
    assert top and cells.get("recipe", path=str(out / "top" / top[0])).graph
    # more budget: resumes, trains only the new evaluations
    proc = _run([f"--config={CONFIG}:runlocal,algorithm=evolution,tasks=memorization,budget=5,batch=2,"
                 "population=3,sample=2"] + args)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "resuming" in proc.stdout
    state = alg.load_state(str(out / "state.json"))
    assert state["evaluations"] == 5
    assert len(os.listdir(out / "tasks" / "memorization" / "runs")) == 5
    ids = [row[4] for row in state["history"]]
    assert sorted(ids) == sorted(set(ids))
    # another algorithm's settings in the same directory are refused
    proc = _run([f"--config={CONFIG}:runlocal,algorithm=evolution,tasks=memorization,budget=5,population=4"] + args)
    assert proc.returncode == 2 and "population" in proc.stderr
    # the trainings as a NAS-Bench-NLP table, searchable in tabular mode
    proc = _run([f"--config={CONFIG}:runlocal,algorithm=evolution,tasks=memorization,budget=5,batch=2,"
                 "population=3,sample=2", *args, f"--export_table={tmp_path}/table"])
    assert proc.returncode == 0, proc.stderr
    table = tabular.load_table(str(tmp_path / "table"))
    completed = sum(json.load(open(out / "tasks" / "memorization" / "runs" / n / "result.json"))["status"]
                    == "completed" for n in os.listdir(out / "tasks" / "memorization" / "runs"))
    assert len(table) == 5 and table.counts["ok"] == completed


def test_a_found_cell_goes_into_the_comparison(tmp_path):
    from rnn_jax.jozefowicz import PRESETS
    from rnn_jax.sweep import compare

    s = _state_with([(known.MUT3, 0.9), (known.GRU, 0.5)])
    top = report.write_top(s, str(tmp_path), k=1, hidden_size=8)[0]
    spec = f"recipe:path={top}"
    assert compare.check_cells(["gru", "lstm", spec]) == ["gru", "lstm", spec]
    points = compare.search_points(PRESETS["quick"], ["mut3", spec], ["xml"])
    by_cell = {p["cell"]: p["arg"] for p in points}
    # the recipe of MUT3 has MUT3's parameters, so the budget gives it MUT3's hidden size
    assert by_cell[spec] == by_cell["mut3"]


def test_evaluator_waits_for_a_point_another_process_trains(tmp_path):
    """After a killed search restarts, a worker of the old one may still hold a point's run dir:
    the evaluation waits for its result instead of counting the point as failed."""
    import threading
    import time as time_lib

    ev = _evaluator(tmp_path, workers=1, poll_s=0.2)
    p = _proposal(0, known.GRU)
    workdir = ev.run_dirs(p)[0]
    os.makedirs(workdir)
    held = threading.Event()

    def old_worker():
        with rundir.locked(workdir):
            held.set()
            time_lib.sleep(3.0)
            rundir.write_json_atomic(os.path.join(workdir, "result.json"),
                                     {"status": "completed", "best_valid_accuracy": 0.25})

    t = threading.Thread(target=old_worker)
    t.start()
    held.wait(10)
    r = ev([p])[0]
    t.join()
    assert r["status"] == "ok" and r["fitness"] == 0.25


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL the real search (trainings on the local pool) at several moments; the resumed
    search ends with the state of one that was never stopped, and trained no point twice."""
    import signal
    import time as time_lib

    arg = (f"--config={CONFIG}:runlocal,algorithm=evolution,tasks=memorization,budget=8,batch=2,population=3,"
           "sample=2")
    ref = _run([arg, f"--search_dir={tmp_path}/ref", "--workers=2"])
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
    env["JAX_PLATFORMS"] = "cpu"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-m", "experiments.search", arg, f"--search_dir={out}",
                                 "--workers=2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        time_lib.sleep(float(rng.uniform(4.0, 12.0)))
        if proc.poll() is not None:
            break
        os.killpg(proc.pid, signal.SIGKILL)  # the search and its pool workers
        proc.wait()
        kills += 1
    final = _run([arg, f"--search_dir={out}", "--workers=2"])
    assert final.returncode == 0, final.stderr
    assert kills >= 2
    want = alg.load_state(str(tmp_path / "ref" / "state.json"))
    got = alg.load_state(str(out / "state.json"))
    for key in ("history", "candidates", "population", "evaluations", "curve"):
        assert got[key] == want[key], key
    runs = out / "tasks" / "memorization" / "runs"
    assert sorted(os.listdir(runs)) == sorted(os.listdir(tmp_path / "ref" / "tasks" / "memorization" / "runs"))
    for name in os.listdir(runs):  # each point trained to its end once: one summary line per session
        assert json.load(open(runs / name / "result.json"))["status"] in ("completed", "diverged")


def test_a_recurring_structure_is_served_by_the_compile_cache(tmp_path):
    ev = _evaluator(tmp_path, workers=1)
    first, again = (_proposal(i, known.MUT3, [{"optim/learning_rate": lr}]) for i, lr in enumerate((0.01, 0.003)))
    assert [r["status"] for r in ev([first])] == ["ok"]
    r = ev([again])[0]  # the same cell with another learning rate: another run, the same programs
    stats = json.load(open(os.path.join(ev.run_dirs(again)[0], "compile.json")))
    assert r["status"] == "ok" and stats["cache_requests"] > 0
    assert stats["cache_hits"] == stats["cache_requests"]
