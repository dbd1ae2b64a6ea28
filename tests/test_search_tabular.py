"""Tabular mode (rnn_jax.search.tabular): a generated NAS-Bench-NLP-style table, its space, evaluator
and the regret comparison.

The table is made here: the known cells plus mutants of them (hand-made activation variants when
the mutation module is not there), with a validation loss that grows with the L1 distance of the
cell's encoding from the LSTM's (so it is smooth under mutation), a test loss 0.05 above it, a few
diverged runs, one run with a NaN final loss, one invalid recipe, one renamed duplicate and one
malformed file.
"""

import importlib
import itertools
import json
import os

import numpy as np
import pytest

from rnn_jax.errors import InputError
from rnn_jax.search import algorithms as A
from rnn_jax.search import driver, known
from rnn_jax.search import recipe as rlib
from rnn_jax.search import tabular as T

try:
    HAVE_MUTATE = hasattr(importlib.import_module("rnn_jax.search.mutate"), "mutate")
except ImportError:
    HAVE_MUTATE = False
needs_mutate = pytest.mark.skipif(not HAVE_MUTATE, reason="rnn_jax.search.mutate has no mutate yet")

SIZE = 250
TARGET = T.encode(known.LSTM)


def synthetic_val_loss(recipe):
    h = rlib.functional_hash(recipe)
    return 4.0 + 0.05 * float(np.abs(T.encode(recipe) - TARGET).sum()) + 0.02 * int(h[:6], 16) / 16**6


def _variants():
    """Known cells with the ops of one or two activation nodes replaced (no mutation module)."""
    acts = ("activation_tanh", "activation_sigm", "activation_relu", "activation_leaky_relu", "identity")
    for base in known.RECIPES.values():
        nodes = [n for n, v in base.items() if v["op"].startswith("activation")]
        for k in (1, 2):
            for names in itertools.combinations(nodes, k):
                for ops in itertools.product(acts, repeat=k):
                    yield {n: ({**v, "op": ops[names.index(n)]} if n in names else v) for n, v in base.items()}


def make_recipes(n=SIZE, seed=0):
    recipes = {}
    for r in known.RECIPES.values():
        recipes[rlib.functional_hash(r)] = rlib.check(r)
    if HAVE_MUTATE:
        from rnn_jax.search import mutate as mlib

        rng = np.random.default_rng(seed)
        keys = list(recipes)
        while len(recipes) < n:
            child = mlib.mutate(recipes[keys[int(rng.integers(len(keys)))]], rng, max_nodes=20, max_states=2)
            h = rlib.functional_hash(child)
            if h not in recipes:
                recipes[h] = child
                keys.append(h)
    else:
        for r in _variants():
            try:
                r = rlib.check(r)
            except rlib.RecipeError:
                continue
            recipes.setdefault(rlib.functional_hash(r), r)
            if len(recipes) >= n:
                break
    return recipes


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("nasbench"))
    recipes = make_recipes()
    lstm = rlib.functional_hash(known.LSTM)
    failed = [h for h in sorted(recipes) if h != lstm][::25]
    for h, recipe in recipes.items():
        val = synthetic_val_loss(recipe)
        if h in failed[1:]:
            T.write_log(directory, recipe, [val + 1.0, float("nan")], [val + 1.0], status="diverged")
        elif h == failed[0]:  # status OK but a NaN final loss: not usable
            T.write_log(directory, recipe, [val + 1.0, float("nan")], [val + 1.0, float("nan")])
        else:
            T.write_log(directory, recipe, [val + 1.0, val], [val + 1.05, val + 0.05], epochs=2)
    # the GRU again, with renamed nodes: the same functional hash
    renamed = {("g_" + k if not k.startswith("h_new") else k): {**v, "input": [
        ("g_" + i if i in known.GRU and not i.startswith("h_new") else i) for i in v["input"]]}
        for k, v in known.GRU.items()}
    T.write_log(directory, renamed, [9.0], [9.0], status="diverged")  # an ok entry wins over a failed one
    # x unused: fails recipe.check
    T.write_log(directory, {"a": {"op": "linear", "input": ["h_prev_0"]}, "h_new_0": {"op": "activation_tanh",
                                                                                    "input": ["a"]}}, [4.0], [4.0])
    with open(os.path.join(directory, "broken.json"), "w") as f:
        f.write('{"recepie": "{}", "val_losses": [1.0], ')
    return {"dir": directory, "recipes": recipes, "failed": failed}


@pytest.fixture(scope="module")
def table(table_dir):
    return T.load_table(table_dir["dir"], on_error="skip")


def test_load_table_counts_and_lookups(table_dir, table):
    with pytest.raises(InputError, match="broken.json"):
        T.load_table(table_dir["dir"])
    n = len(table_dir["recipes"])
    c = table.counts
    assert c == {"files": n + 3, "entries": n, "ok": n - len(table_dir["failed"]), "failed": len(table_dir["failed"]),
                 "invalid": 1, "malformed": 1, "duplicates": 1}
    assert len(table) == n and sorted(os.path.basename(f) for f, _ in table.skipped)[0] != ""
    assert any("broken.json" in f and "malformed" in why for f, why in table.skipped)
    entry = table.lookup(known.LSTM)
    val = synthetic_val_loss(known.LSTM)
    assert entry["ok"] and entry["val_loss"] == pytest.approx(val) and entry["fitness"] == pytest.approx(-val)
    assert entry["test_loss"] == pytest.approx(val + 0.05)
    gru = table.lookup(known.GRU)
    assert gru["ok"] and gru["val_loss"] == pytest.approx(synthetic_val_loss(known.GRU))  # not the failed copy
    nan_entry = table[table_dir["failed"][0]]
    assert nan_entry["status"] == "OK" and not nan_entry["ok"] and nan_entry["fitness"] is None
    assert all(table[h]["status"] == "diverged" for h in table_dir["failed"][1:])
    assert table.min_test_loss == pytest.approx(min(
        synthetic_val_loss(r) + 0.05 for h, r in table_dir["recipes"].items() if h not in table_dir["failed"]))
    assert "malformed" in table.summary()


def test_load_table_errors_and_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        T.load_table(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no \\*.json"):
        T.load_table(tmp_path / "empty")
    (tmp_path / "file.json").write_text("{}")
    with pytest.raises(NotADirectoryError):
        T.load_table(tmp_path / "file.json")
    logs = tmp_path / "logs"
    path = T.write_log(logs, known.RNN, [5.0, 4.5], [5.1, 4.6], epochs=2)
    data = json.loads(open(path).read())
    assert isinstance(data["recepie"], str) and json.loads(data["recepie"]) == known.RNN and data["epochs"] == 2
    with open(logs / "dict.json", "w") as f:  # the recipe as an object, NaN written by Python
        json.dump({"recepie": known.GRU, "val_losses": [5.0, float("nan")], "test_losses": [], "status": "OK"}, f)
    with open(logs / "nokey.json", "w") as f:
        json.dump({"val_losses": [1.0], "status": "OK"}, f)
    with pytest.raises(InputError, match="nokey.json.*recepie"):
        T.load_table(logs)
    os.remove(logs / "nokey.json")
    t = T.load_table(logs)
    assert t.counts["ok"] == 1 and t.counts["failed"] == 1
    assert t.lookup(known.RNN)["fitness"] == -4.5 and not t.lookup(known.GRU)["ok"]


@needs_mutate
def test_table_space_stays_in_the_table(table):
    space = T.TableSpace(table, max_tries=5)
    rng = np.random.default_rng(0)
    samples = [space.hash(space.sample(rng)) for _ in range(100)]
    assert all(h in table for h in samples) and len(set(samples)) > 50
    calls = 0
    for h in samples[:40]:
        child = space.mutate(table[h]["recipe"], rng)
        calls += 1
        assert rlib.functional_hash(child) in table and rlib.functional_hash(child) != h
    assert space.hits + space.fallbacks == calls and space.hits > 0 and space.fallbacks > 0
    # deterministic given the generator
    again = T.TableSpace(table, max_tries=5)
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [space.mutate(table[h]["recipe"], r1) for h in samples[:10]] == \
        [again.mutate(table[h]["recipe"], r2) for h in samples[:10]]
    # the fallback: the nearest entry, the parent left out
    lstm = table.lookup(known.LSTM)
    near = space.nearest(known.LSTM, exclude=lstm["hash"])
    distances = {h: np.abs(T.encode(table[h]["recipe"]) - TARGET).sum() for h in table.hashes if h != lstm["hash"]}
    assert np.abs(T.encode(near) - TARGET).sum() == min(distances.values())
    assert space.nearest(known.LSTM)["h_new_1"] == known.LSTM["h_new_1"]  # itself when not excluded


def test_table_evaluator(table_dir, table):
    evaluator = T.TableEvaluator(table)
    lstm = table.lookup(known.LSTM)
    failed = table[table_dir["failed"][1]]
    proposals = [{"id": 0, "recipe": known.LSTM, "hash": lstm["hash"]},
                 {"id": 1, "recipe": failed["recipe"], "hash": "not-a-hash"},  # found by its recipe
                 {"id": 2, "recipe": {"h_new_0": {"op": "linear", "input": ["x", "h_prev_0"]}}, "hash": "x"}]
    ok, bad, missing = evaluator(proposals)
    assert ok == {"id": 0, "status": "ok", "fitness": lstm["fitness"],
                  "metrics": {"val_loss": lstm["val_loss"], "test_loss": lstm["test_loss"], "status": "OK"}}
    assert bad["status"] == "failed" and bad["fitness"] is None and bad["metrics"]["status"] == "diverged"
    assert missing["status"] == "failed" and missing["metrics"]["reason"] == "not in the table"
    assert evaluator.lookups == 3


@needs_mutate
def test_compare_gives_regret_curves(table, tmp_path):
    P, repeats, budget = 8, 6, 25
    algos = {"evolution": A.RegularizedEvolution(population=P, sample=4, tasks=("nas",), max_tries=3),
             "random": A.RandomSearch(tasks=("nas",), max_tries=3)}
    out = T.compare(table, algos, repeats=repeats, budget=budget, seed=0, max_tries=3)
    assert set(out) == set(algos)
    worst = table.max_test_loss - table.min_test_loss
    for name, runs in out.items():
        regret = np.array(runs["regret"])
        assert regret.shape == (repeats, budget) and all(0 < e <= budget for e in runs["evaluations"])
        assert (regret >= 0).all() and (regret <= worst + 1e-12).all()
        assert (np.diff(regret, axis=1) <= 1e-12).all()  # test loss ranks like validation loss here
        assert regret[:, -1].mean() < regret[:, 0].mean()
    # random search always finds unseen cells in 250; evolution may stall once every mutation and
    # fallback lands on a cell it has seen (its curve then stays flat)
    assert out["random"]["evaluations"] == [budget] * repeats
    # paired seeds: both algorithms sample the same first P cells
    assert np.array_equal(np.array(out["evolution"]["regret"])[:, :P], np.array(out["random"]["regret"])[:, :P])
    assert sum(out["random"]["fallbacks"]) == 0 and sum(out["evolution"]["hits"] + out["evolution"]["fallbacks"]) > 0
    path = tmp_path / "regret.png"
    assert T.plot_regret(out, str(path), "evolution vs random") == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert os.listdir(tmp_path) == ["regret.png"]  # no temporary file left


@needs_mutate
def test_evolution_exploits_a_smooth_table(table):
    """Robust form of "evolution is not worse than random here": after the initial samples, the
    cells evolution evaluates are better on average than random ones (paired over seeds)."""
    P, budget = 8, 30
    algos = {"evolution": A.RegularizedEvolution(population=P, sample=4, tasks=("nas",), max_tries=3),
             "random": A.RandomSearch(tasks=("nas",), max_tries=3)}
    means = {}
    for name, algo in algos.items():
        means[name] = []
        for seed in range(6):
            state = driver.run_in_memory(algo, T.TableSpace(table, max_tries=3), T.TableEvaluator(table),
                                         budget=budget, seed=seed)
            later = [row[3] for row in state["history"][P:] if row[3] is not None]
            means[name].append(np.mean(later))
    evolution, random = np.array(means["evolution"]), np.array(means["random"])
    assert evolution.mean() > random.mean() + 0.1
    assert (evolution > random).sum() >= 4


def test_regret_of_an_exhausted_table(tmp_path):
    """Random search over 5 cells with a budget of 8 sees all of them and stops: regret 0."""
    for i, name in enumerate(("rnn", "gru", "lstm", "mut1", "mut2")):
        T.write_log(tmp_path, known.RECIPES[name], [5.0 - i], [5.2 - i])
    table = T.load_table(tmp_path)
    out = T.compare(table, {"random": A.RandomSearch(tasks=("nas",), max_tries=50)}, repeats=3, budget=8)
    for curve in out["random"]["regret"]:
        assert len(curve) == 8 and curve[-1] == 0.0 and curve[0] >= 0
    assert out["random"]["evaluations"] == [5, 5, 5]
