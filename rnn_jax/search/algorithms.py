r"""Search algorithms over cell recipes, as pure ask/tell steps on a JSON state.

An algorithm is a frozen dataclass of settings with three pure methods::

    state = algo.init(seed)                       # a new search
    state, proposals = algo.ask(state, space, n)  # what to train next
    state = algo.tell(state, results)             # what came of it

Neither ``ask`` nor ``tell`` changes its argument: each returns a new state (unchanged parts are
shared with the old one, so treat states as immutable; the proposals ``ask`` returns are copies
of those it keeps in ``state["pending"]``). All randomness comes from a NumPy
``Generator`` whose bit-generator state lives in ``state["rng"]``, so the same state (and the same
space) gives the same proposals, and a state saved to JSON (:func:`save_state`) and loaded back
(:func:`load_state`) goes on exactly as if it had never left memory. :mod:`rnn_jax.search.driver`
runs the loop resumably; :mod:`rnn_jax.search.tabular` runs it in memory against a table.

Types (plain JSON-serializable dicts):

* **Proposal** ``{"id", "candidate", "recipe", "hash", "hparams", "task", "parent"}``: one
  evaluation to run. ``id`` numbers evaluations (unique), ``candidate`` numbers architectures,
  ``hash`` is the recipe's hash under the space (:func:`space_hash`, the functional hash of
  :mod:`rnn_jax.search.recipe` for real spaces), ``hparams`` is a list of K settings trained
  together as K vmapped trials (the stage's fitness is the best of them), ``task`` the task to
  train on and ``parent`` the candidate it was mutated from (``None`` for samples and seeds).
* **Result** ``{"id", "status": "ok" | "failed", "fitness", "metrics"}``: higher fitness is better
  (an accuracy, or minus a loss). A failed or diverged run has status ``"failed"`` (fitness
  ``None``) and counts as the worst fitness; an ``"ok"`` result whose fitness is not a finite
  number is taken as failed.
* **Space**: an object with ``sample(rng) -> recipe`` and ``mutate(recipe, rng) -> recipe``, and
  optionally ``hash(recipe) -> str`` (default :func:`rnn_jax.search.recipe.functional_hash`).
  :class:`FreeSpace` is the space of all valid recipes within size limits;
  :class:`rnn_jax.search.tabular.TableSpace` is the cells of a benchmark table.

State (a dict; ``cid`` is a candidate id, a string when it is a key):

============  ================================================================================
key           value
============  ================================================================================
format        version of this layout (1)
algorithm     ``{"name", "settings"}``: :meth:`describe` of the algorithm that made it
seed, rng     the ``init`` seed and the bit generator's state (``rng.bit_generator.state``)
next_id       the id of the next proposal (evaluation)
next_candidate  the id of the next candidate (architecture)
candidates    ``{cid: {"recipe", "hash", "parent", "born", "kind", "status", "results", "fitness"}}``
              ``born``: evaluations done when it was created; ``status``: ``running`` (in
              training), ``waiting`` (a duplicate of a running candidate, ``source`` names it)
              or ``done``; ``results``: ``{task: best fitness}`` (``None``: failed);
              ``source``: the candidate whose results a duplicate reused
by_hash       ``{hash: cid}``: the candidate that trains (trained) each hash
seen          ``{hash: {task: best fitness}}``: every result per hash, over all its evaluations
pending       the proposals asked and not yet told
waiting       candidates waiting for a duplicate's results
history       one row per finished evaluation: ``[evaluation_index, candidate, task, fitness, id]``
              (``id``: the proposal's; rows are in the order results were told)
curve         best-so-far candidate fitness after each evaluation (see :func:`fitness_curve`)
best          the best candidate fitness now (``None`` before any)
evaluations   trained evaluations told so far (the budget counts these)
reused        dedup hits: candidates not trained because their hash was known
population    (:class:`RegularizedEvolution`) candidate ids, oldest first
list, jobs, reference, seeded   (:class:`JozefowiczProtocol`) see that class
============  ================================================================================

Deduplication: a new candidate (sampled or mutated) whose hash some candidate already trains or
trained is not trained again. The algorithms first retry the draw up to ``max_tries`` times to
find an unseen hash; if none is found, the candidate takes the known results at once (or, while
the original is still training, when they arrive), ``reused`` counts it, and it still counts as
a step of the algorithm (for Regularized Evolution it joins the population and ages it), but not
as an evaluation. Jozefowicz re-evaluations, which train a known cell with new hyperparameters
on purpose, are evaluations.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from rnn_jax.errors import InputError
from rnn_jax.search import recipe as rlib

__all__ = [
    "FORMAT", "FreeSpace", "JozefowiczProtocol", "RandomSearch", "RegularizedEvolution", "Space", "best",
    "fitness_curve", "load_state", "save_state", "space_hash",
]

FORMAT = 1
_LISTS = ("pending", "waiting", "history", "curve", "population", "list")
_DICTS = ("candidates", "by_hash", "seen")


class Space(Protocol):
    """Where candidates come from: ``sample`` a new recipe, ``mutate`` one (``hash`` optional)."""

    def sample(self, rng: np.random.Generator) -> dict: ...

    def mutate(self, recipe: Mapping, rng: np.random.Generator) -> dict: ...


def space_hash(space, recipe: Mapping) -> str:
    """The space's ``hash(recipe)`` if it has one, else the recipe's functional hash."""
    h = getattr(space, "hash", None)
    return str(h(recipe)) if h is not None else rlib.functional_hash(recipe)


def _json(obj):
    """A JSON-native copy (tuples become lists); raises for what JSON cannot hold."""
    return json.loads(json.dumps(obj, allow_nan=False))


def _positive_int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _ratio(value, what: str, hi: float | None = None) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0
    if not ok or (hi is not None and value > hi):
        rng = f"between 0 and {hi}" if hi is not None else "a finite number >= 0"
        raise InputError(f"{what} must be {rng}, got {value!r}")
    return float(value)


def _tasks(value, what: str) -> tuple:
    value = (value,) if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) and t for t in value):
        raise InputError(f"{what} must be a non-empty list of task names, got {value!r}")
    if len(set(value)) != len(value):
        raise InputError(f"{what} lists a task twice: {list(value)!r}")
    return tuple(value)


def _rank(fitness) -> float:
    """Fitness for comparisons: ``None`` (failed, or not known) is the worst."""
    return -math.inf if fitness is None else fitness


def _better(old, new):
    """The best of two fitness values, either possibly ``None`` (failed)."""
    if old is None:
        return new
    if new is None:
        return old
    return max(old, new)


# --------------------------------------------------------------------------------------------
# The free space
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FreeSpace:
    """Every valid recipe within ``max_nodes`` nodes and ``max_states`` hidden states.

    ``sample`` is :func:`rnn_jax.search.mutate.random_recipe` with ``num_nodes`` (inclusive range)
    and ``num_states`` (choices); ``mutate`` is :func:`rnn_jax.search.mutate.mutate` under the
    limits; ``hash`` is the functional hash. ``seeds`` names known cells
    (:data:`rnn_jax.search.known.RECIPES`) that belong to the space: they are checked against the
    limits here, so that an algorithm that starts from them (:class:`JozefowiczProtocol`) can
    mutate them, and :meth:`seed_recipes` returns them. The defaults are NAS-Bench-NLP's limits
    (24 nodes, 2 states), which hold the LSTM (16 nodes)."""

    max_nodes: int = 24
    max_states: int = 2
    num_nodes: tuple = (4, 12)
    num_states: tuple = (1, 2)
    seeds: tuple = ("gru", "lstm")

    def __post_init__(self):
        from rnn_jax.search import known

        _positive_int(self.max_nodes, "FreeSpace: max_nodes")
        _positive_int(self.max_states, "FreeSpace: max_states")
        nodes = (self.num_nodes, self.num_nodes) if isinstance(self.num_nodes, int) else tuple(self.num_nodes)
        states = (self.num_states,) if isinstance(self.num_states, int) else tuple(self.num_states)
        if len(nodes) != 2 or not 1 <= nodes[0] <= nodes[1] <= self.max_nodes:
            raise InputError(f"FreeSpace: num_nodes must be a range (lo, hi) with 1 <= lo <= hi <= max_nodes="
                             f"{self.max_nodes}, got {self.num_nodes!r}")
        if not states or not all(isinstance(k, int) and 1 <= k <= self.max_states for k in states):
            raise InputError(f"FreeSpace: num_states must be choices between 1 and max_states={self.max_states},"
                             f" got {self.num_states!r}")
        seeds = (self.seeds,) if isinstance(self.seeds, str) else tuple(self.seeds)
        for name in seeds:
            if name not in known.RECIPES:
                raise InputError(f"FreeSpace: unknown seed {name!r}; known cells: {', '.join(known.RECIPES)}")
            try:
                rlib.check(known.RECIPES[name], max_nodes=self.max_nodes, max_states=self.max_states)
            except rlib.RecipeError as e:
                raise InputError(f"FreeSpace: seed {name!r} is outside the space ({e})") from None
        object.__setattr__(self, "num_nodes", nodes)
        object.__setattr__(self, "num_states", states)
        object.__setattr__(self, "seeds", seeds)

    def sample(self, rng: np.random.Generator) -> dict:
        from rnn_jax.search import mutate as mlib

        return mlib.random_recipe(rng, num_nodes=self.num_nodes, num_states=self.num_states)

    def mutate(self, recipe: Mapping, rng: np.random.Generator) -> dict:
        from rnn_jax.search import mutate as mlib

        return mlib.mutate(recipe, rng, max_nodes=self.max_nodes, max_states=self.max_states)

    def hash(self, recipe: Mapping) -> str:
        return rlib.functional_hash(recipe)

    def seed_recipes(self) -> dict:
        """``{name: recipe}`` of the seeds."""
        from rnn_jax.search import known

        return {name: copy.deepcopy(known.RECIPES[name]) for name in self.seeds}

    def describe(self) -> dict:
        """JSON identity of the space (the driver checks it on resume)."""
        return {"name": "FreeSpace", "settings": _json(dataclasses.asdict(self))}


# --------------------------------------------------------------------------------------------
# What all algorithms share
# --------------------------------------------------------------------------------------------


def _thaw(state: Mapping) -> dict:
    """A new state dict whose containers can be changed without touching ``state``.

    Lists are copied; the dicts of candidates, hashes and results are copied one level (records
    are replaced, never changed in place: :func:`_edit`); jobs are small and copied deeply."""
    s = dict(state)
    for key in _LISTS:
        if key in s:
            s[key] = list(s[key])
    for key in _DICTS:
        s[key] = dict(s[key])
    if "jobs" in s:
        s["jobs"] = copy.deepcopy(s["jobs"])
    return s


def _edit(s: dict, cid: int) -> dict:
    """The record of candidate ``cid``, replaced by a copy that may be changed."""
    rec = dict(s["candidates"][str(cid)])
    rec["results"] = dict(rec["results"])
    s["candidates"][str(cid)] = rec
    return rec


def _get_rng(s: Mapping) -> np.random.Generator:
    bit_generator = np.random.PCG64()
    bit_generator.state = s["rng"]
    return np.random.Generator(bit_generator)


def _put_rng(s: dict, rng: np.random.Generator) -> None:
    s["rng"] = _json(rng.bit_generator.state)


class _Algorithm:
    """The state handling shared by the algorithms (a mixin of the frozen dataclasses)."""

    max_tries: int

    # ---- identity and state

    def describe(self) -> dict:
        """``{"name", "settings"}``, JSON: the identity a saved state is checked against."""
        return {"name": type(self).__name__, "settings": _json(dataclasses.asdict(self))}

    def init(self, seed: int = 0) -> dict:
        """A new search state (see the module docstring for its keys)."""
        seed = _positive_int(seed, f"{type(self).__name__}.init: seed", minimum=0)
        state = {
            "format": FORMAT, "algorithm": self.describe(), "seed": seed,
            "rng": _json(np.random.PCG64(seed).state),
            "next_id": 0, "next_candidate": 0, "candidates": {}, "by_hash": {}, "seen": {},
            "pending": [], "waiting": [], "history": [], "curve": [], "best": None,
            "evaluations": 0, "reused": 0,
        }
        state.update(self._extra_state())
        return state

    def _extra_state(self) -> dict:
        return {}

    def _check_state(self, state: Mapping, where: str) -> None:
        if not isinstance(state, Mapping) or state.get("algorithm") != self.describe():
            found = state.get("algorithm") if isinstance(state, Mapping) else type(state).__name__
            raise InputError(f"{type(self).__name__}.{where}: the state belongs to {found}, not to"
                             f" {self.describe()}")

    # ---- candidates and proposals

    def _fresh(self, s: dict, space, draw: Callable[[], dict]) -> tuple[dict, str]:
        """A drawn recipe and its hash, drawing again up to ``max_tries`` times while the hash is
        known; the last draw when every one was."""
        for _ in range(self.max_tries):
            recipe = draw()
            h = space_hash(space, recipe)
            if h not in s["by_hash"]:
                break
        return recipe, h

    def _create(self, s: dict, recipe: Mapping, h: str, parent, kind: str) -> int:
        """A new candidate; a known hash reuses its results (status ``done``, or ``waiting`` while
        the candidate that trains it runs). The caller proposes ``running`` candidates and
        finishes ``done`` ones."""
        cid = s["next_candidate"]
        s["next_candidate"] = cid + 1
        rec = {"recipe": _json(recipe), "hash": h, "parent": parent, "born": s["evaluations"], "kind": kind,
               "status": "running", "results": {}, "fitness": None}
        source = s["by_hash"].get(h)
        if source is None:
            s["by_hash"][h] = cid
        else:
            s["reused"] += 1
            rec["source"] = source
            if s["candidates"][str(source)]["status"] == "done":
                rec["status"] = "done"
                rec["results"] = dict(s["seen"].get(h, {}))
            else:
                rec["status"] = "waiting"
                s["waiting"].append(cid)
        s["candidates"][str(cid)] = rec
        return cid

    def _propose(self, s: dict, cid: int, task: str, hparams: Sequence[Mapping]) -> dict:
        rec = s["candidates"][str(cid)]
        proposal = {"id": s["next_id"], "candidate": cid, "recipe": copy.deepcopy(rec["recipe"]),
                    "hash": rec["hash"], "hparams": _json(list(hparams)), "task": task, "parent": rec["parent"]}
        s["next_id"] += 1
        s["pending"].append(proposal)
        return proposal

    def _record(self, s: dict, result: Mapping) -> tuple[dict, Any]:
        """Take one result: remove its proposal from ``pending``, add a history row, keep the best
        result per (candidate, task) and per (hash, task). Returns the proposal and the fitness
        (``None`` for a failure)."""
        name = type(self).__name__
        if not isinstance(result, Mapping) or "id" not in result:
            raise InputError(f"{name}.tell: a result is a dict with 'id', 'status', 'fitness', got {result!r}")
        pid = result["id"]
        where = next((i for i, p in enumerate(s["pending"]) if p["id"] == pid), None)
        if where is None:
            ids = [p["id"] for p in s["pending"]]
            raise InputError(f"{name}.tell: result for proposal id {pid!r}, which is not pending; pending ids: {ids}")
        status = result.get("status")
        if status not in ("ok", "failed"):
            raise InputError(f"{name}.tell: result {pid}: status must be 'ok' or 'failed', got {status!r}")
        fitness = result.get("fitness")
        if status == "ok":
            ok = not isinstance(fitness, bool) and isinstance(fitness, (int, float, np.number))
            fitness = float(fitness) if ok and math.isfinite(fitness) else None
        else:
            fitness = None
        proposal = s["pending"].pop(where)
        cid, task, h = proposal["candidate"], proposal["task"], proposal["hash"]
        s["history"].append([s["evaluations"], cid, task, fitness, pid])
        s["evaluations"] += 1
        rec = _edit(s, cid)
        rec["results"][task] = _better(rec["results"].get(task), fitness)
        seen = dict(s["seen"].get(h, {}))
        seen[task] = _better(seen.get(task), fitness)
        s["seen"][h] = seen
        return proposal, fitness

    def _finish(self, s: dict, cid: int) -> None:
        rec = _edit(s, cid)
        rec["status"] = "done"
        rec["fitness"] = self._fitness(s, rec)
        if _rank(rec["fitness"]) > _rank(s["best"]):
            s["best"] = rec["fitness"]
        self._joined(s, cid)

    def _resolve_waiting(self, s: dict) -> None:
        """Duplicates whose source is done take its results (in candidate order)."""
        for cid in list(s["waiting"]):
            rec = s["candidates"][str(cid)]
            if s["candidates"][str(rec["source"])]["status"] == "done":
                s["waiting"].remove(cid)
                rec = _edit(s, cid)
                rec["results"] = dict(s["seen"].get(rec["hash"], {}))
                self._finish(s, cid)

    def _tick(self, s: dict) -> None:
        """Append the best-so-far fitness after an evaluation."""
        last = s["curve"][-1] if s["curve"] else None
        s["curve"].append(_better(last, s["best"]))

    def _check_results(self, state: Mapping, results) -> None:
        if isinstance(results, Mapping) or not isinstance(results, (list, tuple)):
            raise InputError(f"{type(self).__name__}.tell: results must be a list of result dicts, got"
                             f" {type(results).__name__}")

    # ---- hooks

    def _fitness(self, s: Mapping, rec: Mapping):
        raise NotImplementedError

    def _joined(self, s: dict, cid: int) -> None:
        pass


def _mean_fitness(tasks: Sequence[str], rec: Mapping):
    """The mean over ``tasks`` of the candidate's results; ``None`` if any failed or is missing."""
    values = [rec["results"].get(t) for t in tasks]
    if any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


# --------------------------------------------------------------------------------------------
# Random search
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RandomSearch(_Algorithm):
    """``space.sample`` every time: the baseline.

    Each candidate is evaluated on every task of ``tasks`` (one proposal per task, all at once)
    with the fixed ``hparams`` (a list of K settings; default one empty setting, the task's own
    defaults); its fitness is the mean over tasks (``None`` if any failed). ``ask(n)`` adds
    candidates until it has at least ``n`` proposals, so with T tasks it may return up to
    ``n + T - 1``. ``max_tries``: draws per candidate to find an unseen hash."""

    tasks: tuple = ("memorization",)
    hparams: tuple = ({},)
    max_tries: int = 20

    def __post_init__(self):
        _check_common(self)

    def ask(self, state: Mapping, space, n: int = 1) -> tuple[dict, list[dict]]:
        """``n`` proposals of new samples (see the class docstring)."""
        self._check_state(state, "ask")
        n = _positive_int(n, "RandomSearch.ask: n")
        s = _thaw(state)
        rng = _get_rng(s)
        out: list[dict] = []
        for _ in range(_guard(n)):
            if len(out) >= n:
                break
            recipe, h = self._fresh(s, space, lambda: space.sample(rng))
            out += _start(self, s, self._create(s, recipe, h, None, "sample"))
        _put_rng(s, rng)
        return s, copy.deepcopy(out)

    def tell(self, state: Mapping, results: Sequence[Mapping]) -> dict:
        """Record results; a candidate is done when all its tasks are."""
        return _tell_all_tasks(self, state, results)

    def _fitness(self, s, rec):
        return _mean_fitness(self.tasks, rec)


def _tell_all_tasks(algo, state: Mapping, results: Sequence[Mapping]) -> dict:
    """``tell`` of the algorithms that evaluate a candidate on all of ``algo.tasks`` at once: each
    result is recorded, and a candidate with a result on every task is finished."""
    algo._check_state(state, "tell")
    algo._check_results(state, results)
    s = _thaw(state)
    for result in results:
        proposal, _ = algo._record(s, result)
        cid = proposal["candidate"]
        if all(t in s["candidates"][str(cid)]["results"] for t in algo.tasks):
            algo._finish(s, cid)
        algo._resolve_waiting(s)
        algo._tick(s)
    return s


def _check_common(algo) -> None:
    """Normalise and check ``tasks``, ``hparams`` and ``max_tries`` (RandomSearch and RE)."""
    name = type(algo).__name__
    object.__setattr__(algo, "tasks", _tasks(algo.tasks, f"{name}: tasks"))
    hparams = algo.hparams
    if isinstance(hparams, Mapping) or not isinstance(hparams, (list, tuple)) or not hparams or \
            not all(isinstance(h, Mapping) for h in hparams):
        raise InputError(f"{name}: hparams must be a non-empty list of settings (dicts), got {hparams!r}")
    try:
        object.__setattr__(algo, "hparams", tuple(_json(dict(h)) for h in hparams))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: hparams must be JSON values ({e})") from None
    _positive_int(algo.max_tries, f"{name}: max_tries")


def _guard(n: int) -> int:
    """The most candidates one ``ask`` creates: a space whose every draw is known (exhausted)
    gives reused candidates only, and ``ask`` returns what it has after this many."""
    return 4 * n + 20


def _start(algo, s: dict, cid: int) -> list[dict]:
    """Proposals for a new candidate on every task, or none if it reused known results."""
    rec = s["candidates"][str(cid)]
    if rec["status"] == "done":
        algo._finish(s, cid)
    if rec["status"] != "running":
        return []
    return [algo._propose(s, cid, task, algo.hparams) for task in algo.tasks]


# --------------------------------------------------------------------------------------------
# Regularized evolution
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RegularizedEvolution(_Algorithm):
    """Regularized (aging) evolution, Real, Aggarwal, Huang & Le (2019).

    The first ``population`` candidates (P) are ``space.sample``. After that each child is
    ``space.mutate(parent)``, where the parent is the fittest of ``sample`` (S) members drawn
    uniformly without replacement from the population (all of them while it has fewer than S;
    ties go to the first drawn; failed members rank last). When a candidate's results are all
    told it joins the population, and once the population has more than P members the oldest
    (the first to join) is removed, whatever its fitness. With batched asks (``n > 1``, or
    asking before the previous results are told) parents come from the population as it is at
    that time; when the population is still empty, children are samples.

    Defaults: P = 100, S = 25, the values of Real et al.'s main experiments; for the small
    budgets of tabular benchmarks smaller values (P ~ 20-50, S ~ 5-10) adapt sooner.

    Tasks and hparams are as in :class:`RandomSearch` (fitness: mean over ``tasks``). A duplicate
    (see the module docstring) joins the population with the known results, which ages it as a
    trained child would. ``state["population"]`` lists candidate ids, oldest first."""

    population: int = 100
    sample: int = 25
    tasks: tuple = ("memorization",)
    hparams: tuple = ({},)
    max_tries: int = 20

    def __post_init__(self):
        _positive_int(self.population, "RegularizedEvolution: population")
        _positive_int(self.sample, "RegularizedEvolution: sample")
        if self.sample > self.population:
            raise InputError(f"RegularizedEvolution: sample={self.sample} is larger than population="
                             f"{self.population}; the tournament draws sample members of the population")
        _check_common(self)

    def _extra_state(self) -> dict:
        return {"population": []}

    def ask(self, state: Mapping, space, n: int = 1) -> tuple[dict, list[dict]]:
        """Proposals for new candidates until there are at least ``n`` (see the class docstring)."""
        self._check_state(state, "ask")
        n = _positive_int(n, "RegularizedEvolution.ask: n")
        s = _thaw(state)
        rng = _get_rng(s)
        out: list[dict] = []
        for _ in range(_guard(n)):
            if len(out) >= n:
                break
            if s["next_candidate"] < self.population or not s["population"]:
                recipe, h = self._fresh(s, space, lambda: space.sample(rng))
                parent = None
            else:
                parent = self.tournament(s, rng)
                parent_recipe = s["candidates"][str(parent)]["recipe"]
                recipe, h = self._fresh(s, space, lambda: space.mutate(parent_recipe, rng))
            out += _start(self, s, self._create(s, recipe, h, parent, "sample" if parent is None else "child"))
        _put_rng(s, rng)
        return s, copy.deepcopy(out)

    def tournament(self, state: Mapping, rng: np.random.Generator) -> int:
        """The fittest of ``sample`` members drawn without replacement from the population."""
        pop = state["population"]
        drawn = rng.choice(len(pop), size=min(self.sample, len(pop)), replace=False)
        members = [pop[int(i)] for i in drawn]
        return max(members, key=lambda c: _rank(state["candidates"][str(c)]["fitness"]))

    def tell(self, state: Mapping, results: Sequence[Mapping]) -> dict:
        """Record results; a finished candidate joins the population and the oldest leaves."""
        return _tell_all_tasks(self, state, results)

    def _fitness(self, s, rec):
        return _mean_fitness(self.tasks, rec)

    def _joined(self, s: dict, cid: int) -> None:
        s["population"].append(cid)
        while len(s["population"]) > self.population:
            s["population"].pop(0)


# --------------------------------------------------------------------------------------------
# Jozefowicz, Zaremba & Sutskever (2015)
# --------------------------------------------------------------------------------------------


def _paper_space() -> dict:
    from rnn_jax.jozefowicz import PAPER_SPACE

    return {k: list(v) for k, v in PAPER_SPACE.items()}


@dataclasses.dataclass(frozen=True)
class JozefowiczProtocol(_Algorithm):
    """The architecture search of Jozefowicz, Zaremba & Sutskever (2015), "An Empirical
    Exploration of Recurrent Network Architectures".

    A list of the best architectures (``state["list"]``, candidate ids, best first, at most
    ``list_size``) starts with the ``seeds`` (known cells; ``reference``, the GRU, is one). The
    seeds are trained first, on ``filter_task`` and on every task of ``tasks``, without
    cut-offs; nothing else is proposed until all of them are done. The reference's best accuracy
    on each task is the yardstick. After that, each step picks a listed architecture uniformly
    and, with probability ``reevaluate_probability``, re-evaluates it on every task with
    ``settings`` (K) new hyperparameter settings drawn from ``hparam_space`` (``{name:
    choices}``, each value uniform among its choices; settings already tried on that cell and
    task are avoided while possible); otherwise it mutates it into a new candidate.

    A new candidate goes through stages, one at a time (the next stage is proposed only after the
    previous one is told): first ``filter_task`` (memorization), which it passes if its accuracy
    is at least ``filter_ratio`` × the reference's; then each task in turn, going on only while
    its accuracy is at least ``stage_ratio`` × the reference's. A failed stage stops it. Every
    proposal carries K settings drawn from ``hparam_space``; the stage's result is the best of
    them. ``ask(n)`` returns up to ``n`` proposals: stages of candidates already in progress
    first, then new steps; several candidates can be in flight at once.

    Fitness (higher is better), with ``r_t`` = accuracy on task t ÷ the reference's best
    accuracy on t:

    * a candidate with a result on every task: ``min_t r_t`` (≥ 0). It may be below
      ``stage_ratio`` if it fell short on the last task only.
    * a candidate that stopped early: ``min(r, 1) - 1 - m``, where ``m`` ≥ 1 is the number of
      tasks without a result and ``r`` the min of ``r_t`` over the tasks it completed (its
      filter ratio if none; 0 if that failed too). This lies in [-1 - m, -m], below every
      complete candidate, and ranks candidates that got further above those that stopped sooner.

    Where the reference has no positive accuracy on a task (it failed), ``r_t`` is the raw
    accuracy. Re-evaluations keep the best accuracy per task and update the fitness; when the
    reference itself improves, every fitness is recomputed and the list re-sorted. The list holds
    one candidate per hash (a duplicate is recorded but not listed twice) and drops the worst
    beyond ``list_size``.

    Defaults: ``list_size=100`` and the GRU/LSTM seeds and GRU reference follow the paper;
    ``tasks=("arithmetic", "xml")`` are its generated tasks that this project has (the paper also
    used Penn Treebank); the memorization filter and the per-task 90 % of GRU bar follow the
    paper's procedure as we read it, but ``filter_ratio=0.5`` is ours: it discards cells that
    cannot learn the easy task at all while leaving the graded judgement to the real tasks.
    ``reevaluate_probability=0.2`` and ``settings=4`` are ours (the paper does not tie us to
    numbers here): a fifth of the steps refine the estimates of listed cells, and K=4 vmapped
    trials cost about one run on an accelerator while one setting is a noisy verdict.
    ``hparam_space`` defaults to the paper's grid (:data:`rnn_jax.jozefowicz.PAPER_SPACE`).

    Extra state: ``list``; ``jobs`` (``{"candidate", "kind": "seed" | "new" | "reeval",
    "stages": [tasks left], "in_flight": [proposal ids]}``); ``reference`` (the reference's
    candidate id); ``seeded`` (seeds created, on the first ``ask``: candidates 0, 1, ...);
    ``ready`` (all seeds done). Candidate records add
    ``tried`` (``{task: [settings]}``) and, when stopped early, ``stopped`` (the task)."""

    list_size: int = 100
    tasks: tuple = ("arithmetic", "xml")
    filter_task: str | None = "memorization"
    filter_ratio: float = 0.5
    stage_ratio: float = 0.9
    reevaluate_probability: float = 0.2
    settings: int = 4
    hparam_space: Mapping = dataclasses.field(default_factory=_paper_space)
    seeds: tuple = ("gru", "lstm")
    reference: str = "gru"
    max_tries: int = 20

    def __post_init__(self):
        from rnn_jax.search import known

        name = "JozefowiczProtocol"
        _positive_int(self.list_size, f"{name}: list_size")
        _positive_int(self.settings, f"{name}: settings")
        _positive_int(self.max_tries, f"{name}: max_tries")
        object.__setattr__(self, "tasks", _tasks(self.tasks, f"{name}: tasks"))
        if self.filter_task is not None:
            if not isinstance(self.filter_task, str) or not self.filter_task:
                raise InputError(f"{name}: filter_task must be a task name or None, got {self.filter_task!r}")
            if self.filter_task in self.tasks:
                raise InputError(f"{name}: filter_task {self.filter_task!r} is also in tasks {list(self.tasks)}")
        _ratio(self.filter_ratio, f"{name}: filter_ratio")
        _ratio(self.stage_ratio, f"{name}: stage_ratio")
        _ratio(self.reevaluate_probability, f"{name}: reevaluate_probability", hi=1.0)
        space = self.hparam_space
        if not isinstance(space, Mapping) or not all(
                isinstance(k, str) and isinstance(v, (list, tuple)) and v for k, v in space.items()):
            raise InputError(f"{name}: hparam_space must map names to non-empty lists of choices, got {space!r}")
        object.__setattr__(self, "hparam_space", _json({k: list(v) for k, v in space.items()}))
        seeds = _tasks(self.seeds, f"{name}: seeds")
        for seed in seeds:
            if seed not in known.RECIPES:
                raise InputError(f"{name}: unknown seed {seed!r}; known cells: {', '.join(known.RECIPES)}")
        if self.reference not in seeds:
            raise InputError(f"{name}: reference {self.reference!r} must be one of the seeds {list(seeds)}")
        object.__setattr__(self, "seeds", seeds)

    def _extra_state(self) -> dict:
        return {"list": [], "jobs": [], "reference": None, "seeded": False, "ready": False}

    # ---- ask

    def ask(self, state: Mapping, space, n: int = 1) -> tuple[dict, list[dict]]:
        """Up to ``n`` proposals: seed stages, then stages of candidates in progress, then new
        steps (re-evaluations or mutants) once the seeds are done."""
        from rnn_jax.search import known

        self._check_state(state, "ask")
        n = _positive_int(n, "JozefowiczProtocol.ask: n")
        s = _thaw(state)
        rng = _get_rng(s)
        out: list[dict] = []
        if not s["seeded"]:
            s["seeded"] = True
            first = [self.filter_task] if self.filter_task else []
            for seed in self.seeds:
                recipe = known.RECIPES[seed]
                cid = self._create(s, recipe, space_hash(space, recipe), None, "seed")
                if seed == self.reference:
                    s["reference"] = cid
                if s["candidates"][str(cid)]["status"] == "running":
                    s["jobs"].append({"candidate": cid, "kind": "seed", "stages": first + list(self.tasks),
                                      "in_flight": []})
        for job in s["jobs"]:
            self._issue(s, job, rng, out, n)
        if self._ready(s):
            for _ in range(_guard(n)):
                if len(out) >= n:
                    break
                job = self._step(s, space, rng)
                if job is not None:
                    self._issue(s, job, rng, out, n)
        _put_rng(s, rng)
        return s, copy.deepcopy(out)

    def _ready(self, s: dict) -> bool:
        """All seeds are done (the reference's accuracies are known); remembered once true."""
        if not s["ready"]:
            s["ready"] = all(s["candidates"][str(c)]["status"] == "done" for c in range(len(self.seeds)))
        return s["ready"]

    def _step(self, s: dict, space, rng: np.random.Generator) -> dict | None:
        """One step of the search: a re-evaluation job, or a mutant (a job, or None if reused)."""
        pick = s["list"][int(rng.integers(len(s["list"])))]
        if rng.random() < self.reevaluate_probability:
            job = {"candidate": pick, "kind": "reeval", "stages": list(self.tasks), "in_flight": []}
            s["jobs"].append(job)
            return job
        parent_recipe = s["candidates"][str(pick)]["recipe"]
        recipe, h = self._fresh(s, space, lambda: space.mutate(parent_recipe, rng))
        cid = self._create(s, recipe, h, pick, "new")
        status = s["candidates"][str(cid)]["status"]
        if status == "done":
            self._finish(s, cid)
        if status != "running":
            return None
        first = [self.filter_task] if self.filter_task else []
        job = {"candidate": cid, "kind": "new", "stages": first + list(self.tasks), "in_flight": []}
        s["jobs"].append(job)
        return job

    def _issue(self, s: dict, job: dict, rng, out: list, n: int) -> None:
        """Propose the job's next stages while slots are left; a new candidate has one at a time."""
        while len(out) < n and job["stages"] and (job["kind"] != "new" or not job["in_flight"]):
            task = job["stages"].pop(0)
            proposal = self._propose(s, job["candidate"], task, self._draw_hparams(s, job["candidate"], task, rng))
            job["in_flight"].append(proposal["id"])
            out.append(proposal)

    def _draw_hparams(self, s: dict, cid: int, task: str, rng: np.random.Generator) -> list[dict]:
        """K settings from ``hparam_space``, avoiding those tried on (cid, task) while possible."""
        if not self.hparam_space:
            return [{}]
        rec = _edit(s, cid)
        tried = dict(rec.get("tried", {}))
        done = list(tried.get(task, []))
        keys = {json.dumps(h, sort_keys=True) for h in done}
        out = []
        for _ in range(self.settings):
            for _attempt in range(50):
                setting = {k: v[int(rng.integers(len(v)))] for k, v in sorted(self.hparam_space.items())}
                key = json.dumps(setting, sort_keys=True)
                if key not in keys:
                    break
            keys.add(key)
            done.append(setting)
            out.append(setting)
        tried[task] = done
        rec["tried"] = tried
        return out

    # ---- tell

    def tell(self, state: Mapping, results: Sequence[Mapping]) -> dict:
        """Record results: apply the cut-offs, finish jobs, update fitnesses and the list."""
        self._check_state(state, "tell")
        self._check_results(state, results)
        s = _thaw(state)
        for result in results:
            proposal, fitness = self._record(s, result)
            cid, task = proposal["candidate"], proposal["task"]
            job = next(j for j in s["jobs"] if proposal["id"] in j["in_flight"])
            job["in_flight"].remove(proposal["id"])
            if job["kind"] == "new" and not self._passes(s, task, fitness):
                job["stages"] = []
                _edit(s, cid)["stopped"] = task
            if not job["stages"] and not job["in_flight"]:
                s["jobs"].remove(job)
                if job["kind"] != "reeval":
                    self._finish(s, cid)
            if cid == s["reference"]:
                self._recompute(s)
            elif job["kind"] == "reeval":
                rec = _edit(s, cid)
                rec["fitness"] = self._fitness(s, rec)
                s["best"] = _better(s["best"], rec["fitness"])
                self._joined(s, cid)
            self._resolve_waiting(s)
            self._tick(s)
        return s

    def _ref(self, s: Mapping, task: str) -> float:
        ref = s["candidates"][str(s["reference"])]["results"].get(task) if s["reference"] is not None else None
        return ref if ref is not None and ref > 0 else 1.0

    def _passes(self, s: Mapping, task: str, fitness) -> bool:
        if fitness is None:
            return False
        bar = self.filter_ratio if task == self.filter_task else self.stage_ratio
        return fitness >= bar * self._ref(s, task)

    def _fitness(self, s, rec):
        results = rec["results"]
        ratios = [results[t] / self._ref(s, t) for t in self.tasks if results.get(t) is not None]
        if len(ratios) == len(self.tasks):
            return float(min(ratios))
        missing = len(self.tasks) - len(ratios)
        if ratios:
            r = min(ratios)
        elif self.filter_task and results.get(self.filter_task) is not None:
            r = results[self.filter_task] / self._ref(s, self.filter_task)
        else:
            r = 0.0
        return float(min(max(r, 0.0), 1.0) - 1.0 - missing)

    def _joined(self, s: dict, cid: int) -> None:
        """Put a finished (or re-evaluated) candidate in the list unless its hash is listed."""
        h = s["candidates"][str(cid)]["hash"]
        if cid not in s["list"] and not any(s["candidates"][str(c)]["hash"] == h for c in s["list"]):
            s["list"].append(cid)
        self._sort_list(s)

    def _sort_list(self, s: dict) -> None:
        s["list"] = sorted(s["list"], key=lambda c: (-_rank(s["candidates"][str(c)]["fitness"]), c))[:self.list_size]

    def _recompute(self, s: dict) -> None:
        """Every done candidate's fitness from its results (after the reference changed)."""
        best = None
        for key, rec in list(s["candidates"].items()):
            if rec["status"] == "done":
                rec = _edit(s, int(key))
                rec["fitness"] = self._fitness(s, rec)
                best = _better(best, rec["fitness"])
        s["best"] = best
        self._sort_list(s)


# --------------------------------------------------------------------------------------------
# Reading a state
# --------------------------------------------------------------------------------------------


def best(state: Mapping, k: int = 1) -> list[dict]:
    """The top ``k`` finished candidates by fitness (ties: the earlier), one per hash, each its
    record with ``"candidate"`` (its id) added; failed candidates (fitness ``None``) are left out."""
    done = [(int(cid), rec) for cid, rec in state["candidates"].items()
            if rec["status"] == "done" and rec["fitness"] is not None]
    done.sort(key=lambda item: (-item[1]["fitness"], item[0]))
    out, hashes = [], set()
    for cid, rec in done:
        if rec["hash"] in hashes:
            continue
        hashes.add(rec["hash"])
        out.append({"candidate": cid, **copy.deepcopy(rec)})
        if len(out) == k:
            break
    return out


def fitness_curve(state: Mapping) -> list:
    """Best-so-far candidate fitness after each evaluation (``None`` before the first finished
    candidate): entry i is the best fitness of any finished candidate once i + 1 evaluations had
    been told; it never decreases (with Jozefowicz a better reference can lower the fitnesses
    themselves, which the curve does not undo)."""
    return list(state["curve"])


def save_state(path: str, state: Mapping) -> None:
    """Write the state to ``path`` atomically (temporary file, fsync, rename).

    Keys keep their order (no sorting), so a loaded state is the state in memory, key order
    included: recipes are dicts whose node order the mutations draw from, and a search resumed
    from the file must draw what the uninterrupted one drew."""
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=1, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: str, algorithm=None) -> dict:
    """The state saved in ``path``. With ``algorithm``, an :class:`InputError` naming both when the
    state belongs to another algorithm or other settings."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except ValueError as e:
        raise InputError(f"{path} is not a search state: invalid JSON ({e}); fix or remove it") from None
    if not isinstance(state, dict) or "algorithm" not in state or "candidates" not in state:
        raise InputError(f"{path} is not a search state (no 'algorithm' and 'candidates' keys)")
    if state.get("format") != FORMAT:
        raise InputError(f"{path}: search state format {state.get('format')!r}; this version reads format {FORMAT}")
    if algorithm is not None and state["algorithm"] != algorithm.describe():
        raise InputError(f"{path} holds a search by {json.dumps(state['algorithm'], sort_keys=True)}, but this search"
                         f" is {json.dumps(algorithm.describe(), sort_keys=True)}: use the same algorithm and"
                         f" settings to resume it, or another state file for a new search")
    return state
