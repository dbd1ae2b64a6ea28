"""Search algorithms as pure ask/tell functions (rnn_jax.search.algorithms) and the resumable driver.

Most tests use a stub space whose "recipes" are ``{"value": k}`` (hash ``v<k>``), so that the
algorithms' logic is tested without the mutation module; one test uses the real FreeSpace.
"""

import copy
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rnn_jax.errors import InputError
from rnn_jax.search import algorithms as A
from rnn_jax.search import driver, known
from rnn_jax.search import recipe as rlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class IntSpace:
    """Recipes ``{"value": k}``, 0 <= k < size; a mutation moves k by 1..step. Real recipes (the
    Jozefowicz seeds) mutate into samples and hash by their functional hash."""

    def __init__(self, size=1000, step=5):
        self.size, self.step = size, step

    def sample(self, rng):
        return {"value": int(rng.integers(self.size))}

    def mutate(self, recipe, rng):
        if "value" not in recipe:
            return self.sample(rng)
        delta = int(rng.integers(1, self.step + 1)) * (1 if rng.random() < 0.5 else -1)
        return {"value": (recipe["value"] + delta) % self.size}

    def hash(self, recipe):
        return f"v{recipe['value']}" if "value" in recipe else "r" + rlib.functional_hash(recipe)


class SampleOnly(IntSpace):
    def mutate(self, recipe, rng):
        raise AssertionError("random search must not mutate")


def value_fitness(p):
    """Smooth in the value: best at 700."""
    return -abs(int(p["hash"][1:]) - 700) / 1000


def answer(proposals, fitness=value_fitness, fail=()):
    return [{"id": p["id"], "status": "failed" if p["id"] in fail else "ok",
             "fitness": None if p["id"] in fail else fitness(p), "metrics": {}} for p in proposals]


def run(algo, space, steps, n=1, seed=0, fitness=value_fitness, state=None):
    state = algo.init(seed) if state is None else state
    for _ in range(steps):
        state, proposals = algo.ask(state, space, n)
        state = algo.tell(state, answer(proposals, fitness))
    return state


def test_ask_and_tell_do_not_change_their_inputs():
    algos = [A.RegularizedEvolution(population=5, sample=2), A.RandomSearch(),
             A.JozefowiczProtocol(list_size=4, settings=2, reevaluate_probability=0.3)]
    space = IntSpace(size=60, step=2)
    for algo in algos:
        state = algo.init(3)
        for _ in range(12):
            before = copy.deepcopy(state)
            new, proposals = algo.ask(state, space, 3)
            assert state == before
            results = answer(proposals, jozefowicz_accuracy if isinstance(algo, A.JozefowiczProtocol)
                             else value_fitness)
            told = copy.deepcopy(results)
            before = copy.deepcopy(new)
            for p in proposals:
                p["recipe"]["mutated by the caller"] = 1  # proposals are copies
            state = algo.tell(new, results)
            assert new == before and results == told
        assert state["evaluations"] > 0
        assert json.loads(json.dumps(state)) == state  # plain JSON


def test_same_state_same_proposals_and_seeds_matter():
    algo = A.RegularizedEvolution(population=6, sample=3)
    a = run(algo, IntSpace(), 25, n=2, seed=1)
    b = run(algo, IntSpace(), 25, n=2, seed=1)
    c = run(algo, IntSpace(), 25, n=2, seed=2)
    assert a == b
    assert a["history"] != c["history"]
    # asking twice from one state gives the same proposals
    assert algo.ask(a, IntSpace(), 3) == algo.ask(a, IntSpace(), 3)


def test_regularized_evolution_samples_then_mutates_with_aging():
    P = 6
    algo = A.RegularizedEvolution(population=P, sample=3)
    space = IntSpace()
    state = algo.init(0)
    for step in range(40):
        state, (proposal,) = algo.ask(state, space, 1)
        if proposal["candidate"] < P:
            assert proposal["parent"] is None  # the first P candidates are samples
        else:
            assert proposal["parent"] in state["population"]  # parents come from the population
        previous = list(state["population"])
        state = algo.tell(state, answer([proposal]))
        cid = proposal["candidate"]
        if len(previous) < P:
            assert state["population"] == previous + [cid]
        else:  # full: the oldest leaves, whatever its fitness
            assert state["population"] == previous[1:] + [cid]
        assert len(state["population"]) == min(step + 1, P)
    assert state["evaluations"] == 40 and len(state["history"]) == 40
    # evolution climbs the smooth fitness above what the samples reached
    first = max(row[3] for row in state["history"][:P])
    assert state["best"] > first + 0.02


def test_tournament_picks_the_fittest_of_the_drawn_sample():
    algo = A.RegularizedEvolution(population=8, sample=3)
    state = run(algo, IntSpace(), 8)
    fitness = {c: state["candidates"][str(c)]["fitness"] for c in state["population"]}
    assert len(set(fitness.values())) > 1
    winners = set()
    for seed in range(30):
        drawn = np.random.default_rng(seed).choice(8, size=3, replace=False)
        members = [state["population"][int(i)] for i in drawn]
        expected = max(members, key=lambda c: fitness[c])
        assert algo.tournament(state, np.random.default_rng(seed)) == expected
        winners.add(expected)
    # the worst member can never win a tournament of 3; the best always wins when drawn
    assert min(fitness, key=fitness.get) not in winners
    full = A.RegularizedEvolution(population=8, sample=8)
    assert full.tournament(state, np.random.default_rng(0)) == max(fitness, key=fitness.get)


def test_failed_members_rank_last():
    algo = A.RegularizedEvolution(population=4, sample=4)
    state = algo.init(0)
    state, proposals = algo.ask(state, IntSpace(), 4)
    state = algo.tell(state, answer(proposals, fail={p["id"] for p in proposals[1:]}))
    assert algo.tournament(state, np.random.default_rng(0)) == proposals[0]["candidate"]
    assert state["candidates"][str(proposals[1]["candidate"])]["fitness"] is None
    assert [row[3] for row in state["history"]][1:] == [None, None, None]


def test_random_search_only_samples():
    algo = A.RandomSearch()
    state = run(algo, SampleOnly(), 20, n=2)
    assert state["evaluations"] == 40
    assert all(rec["parent"] is None for rec in state["candidates"].values())
    assert "population" not in state


def test_results_are_checked():
    algo = A.RandomSearch()
    state, proposals = algo.ask(algo.init(0), IntSpace(), 2)
    with pytest.raises(InputError, match="not pending"):
        algo.tell(state, [{"id": 99, "status": "ok", "fitness": 1.0}])
    with pytest.raises(InputError, match="status"):
        algo.tell(state, [{"id": proposals[0]["id"], "status": "done", "fitness": 1.0}])
    # a non-finite fitness counts as a failure
    state = algo.tell(state, [{"id": proposals[0]["id"], "status": "ok", "fitness": float("nan")}])
    assert state["history"][0][3] is None
    with pytest.raises(InputError, match="belongs to"):
        A.RegularizedEvolution(population=3, sample=2).ask(state, IntSpace(), 1)
    with pytest.raises(InputError, match="sample=5 is larger than population=4"):
        A.RegularizedEvolution(population=4, sample=5)


# --------------------------------------------------------------------------------------------
# Deduplication
# --------------------------------------------------------------------------------------------


def test_known_hashes_are_reused_not_trained():
    algo = A.RegularizedEvolution(population=4, sample=2, max_tries=3)
    space = IntSpace(size=8, step=1)
    state = run(algo, space, 60)
    assert state["reused"] > 0
    trained = [state["candidates"][str(row[1])]["hash"] for row in state["history"]]
    assert len(trained) == len(set(trained)) == state["evaluations"] <= 8  # each hash trained once
    reused = [rec for rec in state["candidates"].values() if "source" in rec]
    assert len(reused) == state["reused"]
    trained_candidates = {row[1] for row in state["history"]}
    for rec in reused:
        assert rec["status"] == "done"
        assert rec["results"] == state["seen"][rec["hash"]]
        assert rec["fitness"] == state["candidates"][str(rec["source"])]["fitness"]
    assert not any(int(c) in trained_candidates for c, rec in state["candidates"].items() if "source" in rec)
    # reused children join the population (they are steps of the algorithm)
    assert any("source" in state["candidates"][str(c)] for c in state["population"])


def test_duplicates_of_running_candidates_wait_for_their_results():
    algo = A.RandomSearch(max_tries=1)
    space = IntSpace(size=2)
    state, proposals = algo.ask(algo.init(0), space, 6)
    assert len(proposals) == 2 and len({p["hash"] for p in proposals}) == 2  # two values exist
    waiting = list(state["waiting"])
    assert waiting and all(state["candidates"][str(c)]["status"] == "waiting" for c in waiting)
    state = algo.tell(state, answer(proposals, lambda p: {"v0": 0.25, "v1": 0.75}[p["hash"]]))
    assert state["waiting"] == [] and state["evaluations"] == 2
    for c in waiting:
        rec = state["candidates"][str(c)]
        assert rec["status"] == "done" and rec["fitness"] == {"v0": 0.25, "v1": 0.75}[rec["hash"]]
    # the space is exhausted: nothing new to propose
    state, proposals = algo.ask(state, space, 1)
    assert proposals == []


# --------------------------------------------------------------------------------------------
# Jozefowicz et al.
# --------------------------------------------------------------------------------------------

GRU_HASH = "r" + rlib.functional_hash(known.GRU)
GRU_ACC = {"memorization": 1.0, "arithmetic": 0.8, "xml": 0.5}
LSTM_ACC = {"memorization": 1.0, "arithmetic": 0.72, "xml": 0.45}


def jozefowicz_accuracy(p):
    """Seeds: fixed accuracies; values: memorization k/100 (mod 1), tasks a smooth bump."""
    if p["hash"] == GRU_HASH:
        return GRU_ACC[p["task"]]
    if not p["hash"].startswith("v"):
        return LSTM_ACC[p["task"]]
    k = int(p["hash"][1:])
    if p["task"] == "memorization":
        return (k % 100) / 100
    scale = GRU_ACC[p["task"]] * (1.0 if p["task"] == "arithmetic" else 1.1)
    return scale * (1 - abs(k % 50 - 40) / 50)


def test_jozefowicz_seeds_first_then_stages_with_cutoffs():
    algo = A.JozefowiczProtocol(list_size=5, settings=3, reevaluate_probability=0.0)
    space = IntSpace(size=1000, step=10)
    state, proposals = algo.ask(algo.init(0), space, 10)
    # only the seeds, on the filter task and every task, before anything else
    assert sorted((p["candidate"], p["task"]) for p in proposals) == sorted(
        (c, t) for c in (0, 1) for t in ("memorization", "arithmetic", "xml"))
    assert state["reference"] == 0
    state = algo.tell(state, answer(proposals, jozefowicz_accuracy))
    assert state["candidates"]["0"]["fitness"] == 1.0
    assert state["candidates"]["1"]["fitness"] == pytest.approx(min(0.72 / 0.8, 0.45 / 0.5))
    for _ in range(40):
        state, proposals = algo.ask(state, space, 3)
        # one stage at a time per new candidate
        assert len({p["candidate"] for p in proposals}) == len(proposals)
        state = algo.tell(state, answer(proposals, jozefowicz_accuracy))
    stages = {}
    for _, cid, task, fitness, _ in state["history"]:
        stages.setdefault(cid, []).append((task, fitness))
    checked = {"filtered": 0, "stopped": 0, "complete": 0}
    for cid, done in stages.items():
        if cid < 2:
            continue
        assert [t for t, _ in done] == ["memorization", "arithmetic", "xml"][:len(done)]  # in order
        acc = dict(done)
        rec = state["candidates"][str(cid)]
        if len(done) < 3 and rec["status"] == "done":
            last, value = done[-1]
            bar = 0.5 if last == "memorization" else 0.9
            assert value < bar * GRU_ACC[last]  # stopped exactly when below the bar
            assert rec["stopped"] == last
            assert rec["fitness"] <= -1  # below every complete candidate
            checked["filtered" if last == "memorization" else "stopped"] += 1
        for task, value in done[:-1]:
            bar = 0.5 if task == "memorization" else 0.9
            assert value >= bar * GRU_ACC[task]  # went on only above the bar
        if len(done) == 3:
            assert rec["fitness"] == pytest.approx(min(acc["arithmetic"] / 0.8, acc["xml"] / 0.5))
            checked["complete"] += 1
    assert all(checked.values()), checked
    # the list: at most list_size, best first, one per hash
    fits = [state["candidates"][str(c)]["fitness"] for c in state["list"]]
    assert len(state["list"]) == 5 and fits == sorted(fits, reverse=True)
    done_fits = sorted((r["fitness"] for r in state["candidates"].values() if r["status"] == "done"), reverse=True)
    assert fits == done_fits[:5]
    # an early stop after arithmetic ranks above one filtered out on memorization
    stopped = [r["fitness"] for r in state["candidates"].values() if r.get("stopped") == "arithmetic"]
    filtered = [r["fitness"] for r in state["candidates"].values() if r.get("stopped") == "memorization"]
    assert min(stopped) > max(filtered)


def test_jozefowicz_reevaluations_draw_new_settings_and_update_fitness():
    space_h = {"learning_rate": [0.1, 0.2, 0.5, 1.0], "init_scale": [0.5, 1.0, 2.0]}
    algo = A.JozefowiczProtocol(list_size=10, settings=3, reevaluate_probability=1.0, hparam_space=space_h)
    space = IntSpace()
    state, proposals = algo.ask(algo.init(1), space, 6)
    state = algo.tell(state, answer(proposals, jozefowicz_accuracy))
    improved = {}
    for _ in range(6):
        state, proposals = algo.ask(state, space, 2)
        for p in proposals:
            assert p["candidate"] in (0, 1) and p["task"] in ("arithmetic", "xml")  # a listed cell, no filter
            assert len(p["hparams"]) == 3
            for h in p["hparams"]:
                assert set(h) == set(space_h) and all(h[k] in space_h[k] for k in h)
        # better accuracy for the LSTM on arithmetic: its fitness must follow
        state = algo.tell(state, answer(proposals, lambda p: jozefowicz_accuracy(p) + (
            0.05 if p["candidate"] == 1 and p["task"] == "arithmetic" else 0.0)))
        improved = state["candidates"]["1"]["results"]
    assert improved["arithmetic"] == pytest.approx(0.77)
    assert state["candidates"]["1"]["fitness"] == pytest.approx(min(0.77 / 0.8, 0.45 / 0.5))
    # settings tried on one cell and task never repeat while untried ones are left (12 in all)
    for cid in ("0", "1"):
        for task, tried in state["candidates"][cid]["tried"].items():
            keys = [json.dumps(h, sort_keys=True) for h in tried]
            assert len(set(keys[:12])) == min(len(keys), 12)
    assert state["evaluations"] == 6 + 12 and state["reused"] == 0 and state["next_candidate"] == 2


def test_jozefowicz_reference_improvement_rescales_everyone():
    algo = A.JozefowiczProtocol(list_size=10, settings=1, reevaluate_probability=1.0)
    state, proposals = algo.ask(algo.init(0), IntSpace(), 6)
    state = algo.tell(state, answer(proposals, jozefowicz_accuracy))
    assert state["candidates"]["1"]["fitness"] == pytest.approx(0.9)
    # the GRU re-evaluated reaches a better xml accuracy: the LSTM's ratio falls
    for _ in range(20):
        state, proposals = algo.ask(state, IntSpace(), 1)
        state = algo.tell(state, answer(proposals, lambda p: 0.6 if p["hash"] == GRU_HASH and p["task"] == "xml"
                                        else jozefowicz_accuracy(p)))
        if state["candidates"]["0"]["results"]["xml"] == 0.6:
            break
    assert state["candidates"]["0"]["results"]["xml"] == 0.6
    assert state["candidates"]["1"]["fitness"] == pytest.approx(0.45 / 0.6)
    assert state["candidates"]["0"]["fitness"] == pytest.approx(1.0)
    assert state["list"] == [0, 1]


# --------------------------------------------------------------------------------------------
# State helpers, files, the real space
# --------------------------------------------------------------------------------------------


def test_best_and_fitness_curve():
    algo = A.RegularizedEvolution(population=5, sample=2)
    state = run(algo, IntSpace(size=60, step=2), 30)
    curve = A.fitness_curve(state)
    assert len(curve) == state["evaluations"] >= 25
    assert all(b >= a for a, b in zip(curve, curve[1:])) and curve[-1] == state["best"]
    top = A.best(state, 3)
    assert [t["fitness"] for t in top] == sorted((t["fitness"] for t in top), reverse=True)
    assert top[0]["fitness"] == state["best"] and len({t["hash"] for t in top}) == 3


def test_save_and_load_round_trip(tmp_path):
    algo = A.RegularizedEvolution(population=5, sample=2)
    state = run(algo, IntSpace(), 12, n=2)
    state, pending = algo.ask(state, IntSpace(), 2)
    path = tmp_path / "state.json"
    A.save_state(path, state)
    loaded = A.load_state(path, algo)
    assert loaded == state
    # going on from the loaded state is going on from memory
    assert run(algo, IntSpace(), 5, state=algo.tell(loaded, answer(pending))) == \
        run(algo, IntSpace(), 5, state=algo.tell(state, answer(pending)))
    other = A.RegularizedEvolution(population=6, sample=2)
    with pytest.raises(InputError, match=r"population.: 5.*population.: 6"):
        A.load_state(path, other)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        A.load_state(tmp_path / "bad.json")


def test_driver_refuses_a_state_of_other_settings(tmp_path):
    path = str(tmp_path / "search.json")
    logs = []

    def evaluate(proposals):
        return answer(proposals)

    first = driver.run_search(A.RandomSearch(), IntSpace(), evaluate, path, budget=5, log=logs.append, log_every=2)
    assert first["evaluations"] == 5 and any("5/5 evaluations" in m for m in logs)
    with pytest.raises(InputError, match="RegularizedEvolution.*RandomSearch|RandomSearch.*RegularizedEvolution"):
        driver.run_search(A.RegularizedEvolution(population=3, sample=2), IntSpace(), evaluate, path, budget=5,
                          log=logs.append)
    with pytest.raises(InputError, match="seed 0.*seed 1"):
        driver.run_search(A.RandomSearch(), IntSpace(), evaluate, path, budget=5, seed=1, log=logs.append)
    # the same settings resume: a larger budget goes on from 5
    more = driver.run_search(A.RandomSearch(), IntSpace(), evaluate, path, budget=8, log=logs.append)
    assert more["evaluations"] == 8 and more["history"][:5] == first["history"]


def test_free_space_with_the_real_mutations():
    mutate = pytest.importorskip("rnn_jax.search.mutate")
    if not hasattr(mutate, "mutate") or not hasattr(mutate, "random_recipe"):
        pytest.skip("rnn_jax.search.mutate has no mutate/random_recipe yet")
    space = A.FreeSpace(max_nodes=20, max_states=2, num_nodes=(4, 8))
    algo = A.RegularizedEvolution(population=4, sample=2)

    def size_fitness(p):  # prefer cells of about 10 nodes
        return -abs(len(p["recipe"]) - 10)

    state = run(algo, space, 12, n=2, fitness=size_fitness)
    assert state["evaluations"] >= 24
    for rec in state["candidates"].values():
        recipe = rlib.check(rec["recipe"], max_nodes=20, max_states=2)
        assert rec["hash"] == rlib.functional_hash(recipe)
        if rec["parent"] is not None and "source" not in rec:
            assert rec["hash"] != state["candidates"][str(rec["parent"])]["hash"]
    assert set(space.seed_recipes()) == {"gru", "lstm"}
    with pytest.raises(InputError, match="lstm"):
        A.FreeSpace(max_nodes=12)  # the LSTM (16 nodes) would not fit


# --------------------------------------------------------------------------------------------
# The driver survives SIGKILL
# --------------------------------------------------------------------------------------------

SCRIPT = textwrap.dedent('''
    """A search with a fake evaluator that behaves like run directories."""
    import hashlib, json, os, sys, time

    from rnn_jax.search import algorithms as A, driver

    work, budget = sys.argv[1], int(sys.argv[2])
    done_dir = os.path.join(work, "done")
    os.makedirs(done_dir, exist_ok=True)
    log_path = os.path.join(work, "trainings.log")


    class Space:
        def sample(self, rng):
            return {"value": int(rng.integers(0, 500))}

        def mutate(self, recipe, rng):
            return {"value": (recipe["value"] + int(rng.integers(-7, 8))) % 500}

        def hash(self, recipe):
            return "v%d" % recipe["value"]


    def trained():
        if not os.path.exists(log_path):
            return set()
        with open(log_path) as f:
            return {int(line) for line in f if line.strip()}


    def evaluate(proposals):
        results = []
        for p in proposals:
            marker = os.path.join(done_dir, "%d.json" % p["id"])
            if os.path.exists(marker):  # completed: the stored result, not recounted
                with open(marker) as f:
                    results.append(json.load(f))
                continue
            if p["id"] not in trained():  # otherwise it finished and was killed before its marker:
                time.sleep(0.01)           # a checkpointed run resumes at its end, without training
                with open(log_path, "a") as f:
                    f.write("%d\\n" % p["id"])
                    f.flush()
                    os.fsync(f.fileno())
            digest = int(hashlib.sha256(p["hash"].encode()).hexdigest()[:8], 16)
            result = {"id": p["id"], "status": "ok", "fitness": digest / 2**32 - abs(int(p["hash"][1:]) - 300) / 500,
                      "metrics": {}}
            tmp = marker + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
            results.append(result)
        return results


    algo = A.RegularizedEvolution(population=6, sample=3)
    driver.run_search(algo, Space(), evaluate, os.path.join(work, "state.json"), budget=budget, batch=3, seed=7,
                      log=lambda m: print(m, flush=True), log_every=5)
''')


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(line) for line in f if line.strip()]


def test_driver_resumes_after_sigkill_without_losing_or_repeating(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu"}
    budget = 45

    def start(work):
        work.mkdir(exist_ok=True)
        return subprocess.Popen([sys.executable, str(script), str(work), str(budget)], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    clean = tmp_path / "clean"
    proc = start(clean)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out

    work = tmp_path / "killed"
    rng = random.Random(0)
    killed_mid_run = 0
    for _ in range(5):
        proc = start(work)
        target = len(_lines(work / "trainings.log")) + rng.randint(1, 8)
        deadline = time.time() + 30
        while proc.poll() is None and len(_lines(work / "trainings.log")) < target and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        if proc.poll() is None:
            killed_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert killed_mid_run >= 3
    proc = start(work)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "resuming" in out

    final = json.loads((work / "state.json").read_text())
    reference = json.loads((clean / "state.json").read_text())
    trained = _lines(work / "trainings.log")
    ids = [row[4] for row in final["history"]]
    assert final["evaluations"] == len(ids) == budget
    assert sorted(trained) == sorted(ids) and len(set(trained)) == len(trained)  # each once, none missing
    markers = [name for name in os.listdir(work / "done") if name.endswith(".json")]
    assert sorted(int(name.split(".")[0]) for name in markers) == sorted(ids)
    assert final == reference  # history, population, fitnesses: all as in one uninterrupted run
    assert final["population"] == reference["population"] and len(final["population"]) == 6


def test_a_state_reloaded_from_its_file_goes_on_as_in_memory(tmp_path):
    """Mutations draw nodes in the recipe's key order: the saved state must keep that order."""
    space = A.FreeSpace(max_nodes=16, num_nodes=(4, 8))
    algo = A.RegularizedEvolution(population=3, sample=2)

    def fitness(p):
        return {"id": p["id"], "status": "ok", "fitness": int(p["hash"][:4], 16) / 65536.0, "metrics": {}}

    def run(reload: bool):
        state = algo.init(5)
        for _ in range(8):
            state, props = algo.ask(state, space, 2)
            if reload:
                A.save_state(str(tmp_path / "s.json"), state)
                state = A.load_state(str(tmp_path / "s.json"), algo)
            state = algo.tell(state, [fitness(p) for p in props])
        return state

    assert run(True)["history"] == run(False)["history"]
