r"""Tabular mode: search algorithms against NAS-Bench-NLP's training logs instead of training.

NAS-Bench-NLP (Klyuchnikov et al. 2020) published one JSON log per trained cell: ``recepie`` (the
recipe, as a JSON *string*), ``val_losses`` and ``test_losses`` (per epoch) and ``status``
(``"OK"`` for a finished run). With those logs a search "evaluates" a cell by looking it up, so
algorithms can be compared over many repeats in seconds.

* :func:`load_table` reads a directory of logs into a :class:`Table`, indexed by the recipes'
  functional hashes (:func:`rnn_jax.search.recipe.functional_hash`); :func:`write_log` writes
  one log in the same format (for tests, and to export this project's own evaluations).
* :class:`TableSpace` is a search space restricted to the table; :class:`TableEvaluator`
  evaluates proposals by lookup (fitness = minus the final validation loss).
* :func:`compare` runs algorithms many times through the same ask/tell code as the real search
  (:func:`rnn_jax.search.driver.run_in_memory`) and returns regret curves;
  :func:`plot_regret` draws them.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from rnn_jax import rundir
from rnn_jax.errors import InputError
from rnn_jax.rundir import write_json_atomic
from rnn_jax.search import recipe as rlib

__all__ = ["Table", "TableEvaluator", "TableSpace", "compare", "encode", "load_table", "plot_regret",
           "regret_curve", "write_log"]


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


class Table:
    """The entries of a directory of logs, one per functional hash.

    ``entries[hash]`` is ``{"hash", "recipe", "status", "ok", "val_loss", "test_loss",
    "fitness", "file"}``: ``val_loss``/``test_loss`` are the final (last epoch) losses (``None``
    when the lists are empty); ``ok`` is true for status ``"OK"`` with finite final losses;
    ``fitness`` is ``-val_loss`` for ok entries, ``None`` otherwise. ``counts`` has ``files``,
    ``entries``, ``ok``, ``failed`` (entries not ok), ``invalid`` (recipes that fail
    :func:`rnn_jax.search.recipe.check`, skipped), ``malformed`` (unreadable files, skipped with
    ``on_error="skip"``) and ``duplicates`` (files whose hash another file already gave: an ok
    entry is kept over a failed one, else the first file in name order). ``skipped`` lists
    ``(file, reason)`` for invalid and malformed files."""

    def __init__(self, directory: str, entries: Mapping[str, dict], counts: Mapping[str, int],
                 skipped: Sequence[tuple[str, str]] = ()):
        self.directory = directory
        self.entries = dict(entries)
        self.counts = dict(counts)
        self.skipped = list(skipped)
        self.hashes = tuple(sorted(self.entries))
        ok = [e for e in self.entries.values() if e["ok"]]
        self.min_test_loss = min((e["test_loss"] for e in ok), default=None)
        self.max_test_loss = max((e["test_loss"] for e in ok), default=None)
        self.max_nodes = max((len(e["recipe"]) for e in self.entries.values()), default=0)
        self.max_states = max((rlib.num_states(e["recipe"]) for e in self.entries.values()), default=0)
        # structure hash -> functional hash: a cheap first test of membership (TableSpace.mutate)
        self.by_structure = {rlib.structure_hash(self.entries[h]["recipe"]): h for h in self.hashes}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, h) -> bool:
        return h in self.entries

    def __getitem__(self, h) -> dict:
        return self.entries[h]

    def lookup(self, recipe: Mapping) -> dict | None:
        """The entry of a recipe (by functional hash), or ``None``."""
        return self.entries.get(rlib.functional_hash(recipe))

    def fingerprint(self) -> str:
        """12 hex digits identifying the table's content (hashes and final losses)."""
        text = json.dumps([[h, self.entries[h]["status"], self.entries[h]["val_loss"], self.entries[h]["test_loss"]]
                           for h in self.hashes])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def summary(self) -> str:
        c = self.counts
        return (f"{self.directory}: {c['files']} files, {c['entries']} cells ({c['ok']} ok, {c['failed']} failed),"
                f" {c['invalid']} invalid recipes, {c['malformed']} malformed files, {c['duplicates']} duplicates")


def _losses(value, name: str, where: str) -> list[float]:
    """A list of losses; numbers, or strings such as ``"nan"`` (strict JSON writers' NaN)."""
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list of numbers, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise ValueError(f"{name} holds {v!r}, not a number")
        try:
            out.append(float(v))
        except ValueError:
            raise ValueError(f"{name} holds {v!r}, not a number") from None
    return out


def _read_log(path: str) -> tuple[object, str, list[float], list[float]]:
    """``(recipe, status, val_losses, test_losses)`` of one log; ValueError says what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a log is a JSON object, got {type(data).__name__}")
    key = "recepie" if "recepie" in data else "recipe" if "recipe" in data else None
    if key is None:
        raise ValueError("no 'recepie' (the recipe) in the log")
    recipe = data[key]
    if isinstance(recipe, str):
        try:
            recipe = json.loads(recipe)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{key}' is a string but not valid JSON ({e})") from None
    status = data.get("status")
    if not isinstance(status, str):
        raise ValueError(f"'status' must be a string (\"OK\" for a finished run), got {status!r}")
    losses = {}
    for name in ("val_losses", "test_losses"):
        if name in data:
            losses[name] = _losses(data[name], name, path)
        elif status == "OK":
            raise ValueError(f"status is OK but '{name}' is missing")
        else:
            losses[name] = []
    return recipe, status, losses["val_losses"], losses["test_losses"]


def load_table(directory: str, *, on_error: str = "raise") -> Table:
    """Every ``*.json`` log in ``directory`` as a :class:`Table` (see there for the counts).

    A recipe that fails :func:`rnn_jax.search.recipe.check` is skipped and counted as invalid.
    A file that is not a log (not JSON, no recipe, losses that are not lists of numbers, ...)
    raises an :class:`InputError` naming the file, or with ``on_error="skip"`` is skipped and
    counted as malformed. A missing directory raises ``FileNotFoundError``; one without logs, an
    :class:`InputError`."""
    if on_error not in ("raise", "skip"):
        raise InputError(f"load_table: on_error must be 'raise' or 'skip', got {on_error!r}")
    directory = os.fspath(directory)
    if not os.path.exists(directory):
        raise FileNotFoundError(f"load_table: table directory {directory} does not exist")
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"load_table: {directory} is a file; give the directory of NAS-Bench-NLP logs")
    files = sorted(glob.glob(os.path.join(glob.escape(directory), "*.json")))
    if not files:
        raise InputError(f"load_table: no *.json logs in {directory}; give the directory of NAS-Bench-NLP"
                         f" training logs")
    counts = {"files": len(files), "entries": 0, "ok": 0, "failed": 0, "invalid": 0, "malformed": 0,
              "duplicates": 0}
    entries: dict[str, dict] = {}
    skipped = []
    for path in files:
        try:
            raw, status, val, test = _read_log(path)
        except (OSError, ValueError) as e:
            if on_error == "raise":
                raise InputError(f"load_table: {path} is not a NAS-Bench-NLP log: {e}") from None
            counts["malformed"] += 1
            skipped.append((path, f"malformed: {e}"))
            continue
        try:
            recipe = rlib.check(raw, origin=os.path.basename(path))
        except rlib.RecipeError as e:
            counts["invalid"] += 1
            skipped.append((path, f"invalid recipe: {e}"))
            continue
        h = rlib.functional_hash(recipe)
        val_loss = val[-1] if val else None
        test_loss = test[-1] if test else None
        ok = (status == "OK" and val_loss is not None and test_loss is not None
              and math.isfinite(val_loss) and math.isfinite(test_loss))
        entry = {"hash": h, "recipe": recipe, "status": status, "ok": ok,
                 "val_loss": val_loss if val_loss is None or math.isfinite(val_loss) else None,
                 "test_loss": test_loss if test_loss is None or math.isfinite(test_loss) else None,
                 "fitness": -val_loss if ok else None, "file": os.path.basename(path)}
        if h in entries:
            counts["duplicates"] += 1
            if entries[h]["ok"] or not ok:
                continue
        entries[h] = entry
    counts["entries"] = len(entries)
    counts["ok"] = sum(e["ok"] for e in entries.values())
    counts["failed"] = counts["entries"] - counts["ok"]
    if not entries:
        raise InputError(f"load_table: no usable log in {directory} ({counts['files']} files: {counts['invalid']}"
                         f" invalid recipes, {counts['malformed']} malformed)")
    return Table(directory, entries, counts, skipped)


def write_log(directory: str, recipe: Mapping, val_losses: Sequence[float], test_losses: Sequence[float],
              status: str = "OK", **extra) -> str:
    """Write one NAS-Bench-NLP-style log (``recepie`` as a JSON string, the losses, ``status`` and
    ``extra`` keys) into ``directory`` (created if missing), atomically; returns its path. The
    file is named by a digest of the recipe's JSON and the status, so the same cell written twice
    with the same status replaces its log. The recipe is not checked (tests write invalid ones)."""
    os.makedirs(directory, exist_ok=True)
    text = json.dumps(recipe, sort_keys=True)
    name = hashlib.sha256(f"{text}\n{status}".encode()).hexdigest()[:16]
    path = os.path.join(directory, f"{name}.json")
    record = {**extra, "recepie": text, "val_losses": [float(v) for v in val_losses],
              "test_losses": [float(v) for v in test_losses], "status": status}
    write_json_atomic(path, record)
    return path


# --------------------------------------------------------------------------------------------
# Space and evaluator
# --------------------------------------------------------------------------------------------

_OPS = tuple(rlib.OPS)
_SOURCE_KINDS = ("x", "h_prev") + _OPS


def encode(recipe: Mapping) -> np.ndarray:
    """The vector that :class:`TableSpace`'s fallback compares recipes by (L1 distance).

    Counts of nodes per op (11), counts of edges per (source kind, consumer op), where the source
    kind is ``x``, ``h_prev`` (any ``h_prev_i``) or the op of the source node (13 × 11), and the
    number of hidden states: a structural fingerprint that mutations change a little (one op
    replaced moves a handful of counts)."""
    n_ops = len(_OPS)
    v = np.zeros(n_ops + len(_SOURCE_KINDS) * n_ops + 1)
    for node in recipe.values():
        j = _OPS.index(node["op"])
        v[j] += 1
        for src in node["input"]:
            if src == "x":
                kind = "x"
            elif src.startswith("h_prev_"):
                kind = "h_prev"
            else:
                kind = recipe[src]["op"]
            v[n_ops + _SOURCE_KINDS.index(kind) * n_ops + j] += 1
    v[-1] = rlib.num_states(recipe)
    return v


class TableSpace:
    """The cells of a :class:`Table` as a search space.

    ``sample`` draws an entry uniformly. ``mutate`` applies up to ``max_tries`` mutations
    (:func:`rnn_jax.search.mutate.mutate`, under the table's largest node and state counts) to the
    parent until one lands on a table entry other than the parent (``hits`` counts these; a
    mutant is looked up by structure hash, which is cheap, so one that matches an entry only
    functionally is not a hit). If none does, it returns the entry nearest to the last mutant
    under the L1 distance of :func:`encode` (ties broken uniformly with ``rng``), the parent
    excluded, and counts a ``fallback``. Both return the table's own recipe. ``hash`` is the
    functional hash (cached per recipe JSON; the table's recipes are known from the start). The
    counters and the cache are bookkeeping only: results depend on the ``rng`` passed in."""

    def __init__(self, table: Table, max_tries: int = 20):
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise InputError(f"TableSpace: max_tries must be an integer >= 1, got {max_tries!r}")
        self.table = table
        self.max_tries = max_tries
        self.hits = 0
        self.fallbacks = 0
        self._hashes = list(table.hashes)
        self._features = np.stack([encode(table[h]["recipe"]) for h in self._hashes])
        self._cache = {rlib.to_json(table[h]["recipe"]): h for h in self._hashes}

    def hash(self, recipe: Mapping) -> str:
        key = rlib.to_json(recipe)
        h = self._cache.get(key)
        if h is None:
            h = self._cache[key] = rlib.functional_hash(recipe)
        return h

    def sample(self, rng: np.random.Generator) -> dict:
        return copy.deepcopy(self.table[self._hashes[int(rng.integers(len(self._hashes)))]]["recipe"])

    def mutate(self, recipe: Mapping, rng: np.random.Generator) -> dict:
        from rnn_jax.search import mutate as mlib

        parent = self.hash(recipe)
        last = recipe
        for _ in range(self.max_tries):
            try:
                child = mlib.mutate(recipe, rng, max_nodes=max(self.table.max_nodes, len(recipe)),
                                    max_states=max(self.table.max_states, rlib.num_states(recipe)))
            except mlib.MutationError:
                break
            h = self.table.by_structure.get(rlib.structure_hash(child))
            if h is not None and h != parent:
                self.hits += 1
                return copy.deepcopy(self.table[h]["recipe"])
            last = child
        self.fallbacks += 1
        return self.nearest(last, rng, exclude=parent)

    def nearest(self, recipe: Mapping, rng: np.random.Generator | None = None, exclude: str | None = None) -> dict:
        """The table recipe nearest to ``recipe`` under :func:`encode`'s L1 distance, ``exclude``
        (a hash) left out unless it is the only entry; ties are broken uniformly with ``rng``
        (without one: the first hash in sorted order)."""
        distance = np.abs(self._features - encode(recipe)).sum(axis=1)
        if exclude is not None and len(self._hashes) > 1 and exclude in self.table:
            distance[self._hashes.index(exclude)] = np.inf
        nearest = np.flatnonzero(distance == distance.min())
        pick = nearest[int(rng.integers(len(nearest)))] if rng is not None and len(nearest) > 1 else nearest[0]
        return copy.deepcopy(self.table[self._hashes[int(pick)]]["recipe"])

    def describe(self) -> dict:
        return {"name": "TableSpace", "entries": len(self.table), "fingerprint": self.table.fingerprint(),
                "max_tries": self.max_tries}


class TableEvaluator:
    """Evaluates proposals by table lookup: ``evaluate(proposals) -> results`` (also callable).

    An ok entry gives ``{"status": "ok", "fitness": -val_loss, "metrics": {"val_loss",
    "test_loss", "status"}}``; an entry whose run failed, or a recipe not in the table, gives
    status ``"failed"``. The proposal's ``hash`` is looked up first, then the functional hash of
    its recipe. ``lookups`` counts evaluations."""

    def __init__(self, table: Table):
        self.table = table
        self.lookups = 0

    def evaluate(self, proposals: Sequence[Mapping]) -> list[dict]:
        return [self._one(p) for p in proposals]

    __call__ = evaluate

    def _one(self, proposal: Mapping) -> dict:
        self.lookups += 1
        h = proposal.get("hash")
        if h not in self.table:
            try:
                h = rlib.functional_hash(proposal["recipe"])
            except rlib.RecipeError:
                h = None
        if h not in self.table:
            return {"id": proposal["id"], "status": "failed", "fitness": None,
                    "metrics": {"reason": "not in the table"}}
        entry = self.table[h]
        metrics = {"val_loss": entry["val_loss"], "test_loss": entry["test_loss"], "status": entry["status"]}
        if not entry["ok"]:
            return {"id": proposal["id"], "status": "failed", "fitness": None, "metrics": metrics}
        return {"id": proposal["id"], "status": "ok", "fitness": entry["fitness"], "metrics": metrics}


# --------------------------------------------------------------------------------------------
# Comparing algorithms
# --------------------------------------------------------------------------------------------


def regret_curve(table: Table, state: Mapping, budget: int) -> list[float]:
    """Regret after n = 1 .. ``budget`` evaluations of a search over ``table``.

    Regret after n = test loss of the cell with the best validation fitness among the first n
    evaluations (the incumbent a practitioner would pick) − the table's minimum test loss over ok
    entries. Before any successful evaluation it is the worst possible (the largest test loss −
    the smallest). A search that stopped early (exhausted table) keeps its last value. The
    curve never increases when test and validation losses rank the cells alike; on real data a
    better-validated incumbent can test worse, so it can rise."""
    best_test, worst = table.min_test_loss, table.max_test_loss
    if best_test is None:
        raise InputError(f"regret_curve: the table {table.directory} has no ok entry to measure regret against")
    current, best_val, curve = worst - best_test, -math.inf, []
    for row in state["history"][:budget]:
        fitness = row[3]
        if fitness is not None and fitness > best_val:
            h = state["candidates"][str(row[1])]["hash"]
            if h in table and table[h]["ok"]:
                best_val = fitness
                current = table[h]["test_loss"] - best_test
        curve.append(float(current))
    curve += [float(current)] * (budget - len(curve))
    return curve


def compare(table: Table, algorithms: Mapping[str, object], *, repeats: int = 20, budget: int = 100,
            seed: int = 0, batch: int = 1, max_tries: int = 20) -> dict:
    """Run each algorithm ``repeats`` times over ``table`` and return its regret curves.

    Repeat r of every algorithm starts from ``algorithm.init(seed + r)`` (paired seeds) and runs
    ``budget`` evaluations through :func:`rnn_jax.search.driver.run_in_memory` with a fresh
    :class:`TableSpace` (``max_tries``) and :class:`TableEvaluator`: the same ask/tell code as a
    real search, in memory. Returns ``{name: {"regret": [[float] * budget] * repeats,
    "evaluations": [...], "reused": [...], "fallbacks": [...], "hits": [...]}}`` (one value per
    repeat; see :func:`regret_curve`). A run whose algorithm proposes nothing new (every draw
    already seen: regularized evolution can stall so in a small table once its population holds
    copies of a few cells) ends early: its ``evaluations`` is below ``budget`` and its curve stays
    flat from there. Algorithms whose fitness is a ratio to a reference
    (:class:`~rnn_jax.search.algorithms.JozefowiczProtocol`) expect accuracies, not the table's
    negative losses; compare evolution and random search here."""
    from rnn_jax.search.driver import run_in_memory

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InputError(f"compare: repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise InputError(f"compare: budget must be an integer >= 1, got {budget!r}")
    out = {}
    for name, algorithm in algorithms.items():
        runs = {"regret": [], "evaluations": [], "reused": [], "fallbacks": [], "hits": []}
        for r in range(repeats):
            space = TableSpace(table, max_tries=max_tries)
            state = run_in_memory(algorithm, space, TableEvaluator(table), budget=budget, batch=batch, seed=seed + r)
            runs["regret"].append(regret_curve(table, state, budget))
            runs["evaluations"].append(state["evaluations"])
            runs["reused"].append(state["reused"])
            runs["fallbacks"].append(space.fallbacks)
            runs["hits"].append(space.hits)
        out[name] = runs
    return out


def plot_regret(curves: Mapping, path: str, title: str = "") -> str:
    """Mean regret ± standard error over repeats against the number of evaluations, one line per
    algorithm; ``curves`` is :func:`compare`'s output or ``{name: [[regret] * budget] * repeats}``.
    The y axis is logarithmic when the means are positive and span more than a factor of 10. The
    PNG is drawn with matplotlib's Agg canvas (no pyplot state) and written atomically; returns
    ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=130)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    means = []
    for name, data in curves.items():
        arr = np.asarray(data["regret"] if isinstance(data, Mapping) else data, dtype=float)
        if arr.ndim != 2 or arr.size == 0:
            raise InputError(f"plot_regret: {name!r}: regret must be a non-empty list of curves"
                             f" (repeats x evaluations)")
        x = np.arange(1, arr.shape[1] + 1)
        mean = arr.mean(axis=0)
        se = arr.std(axis=0, ddof=1) / np.sqrt(arr.shape[0]) if arr.shape[0] > 1 else np.zeros_like(mean)
        line, = ax.plot(x, mean, lw=2, label=f"{name} ({arr.shape[0]} runs)")
        ax.fill_between(x, mean - se, mean + se, color=line.get_color(), alpha=0.2, lw=0)
        means.append(mean)
    allm = np.concatenate(means) if means else np.zeros(1)
    if np.all(allm > 0) and allm.max() / allm.min() > 10:
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("evaluations")
    ax.set_ylabel("regret (test loss − best in table)")
    ax.set_title(title or "regret: incumbent by validation loss, mean ± s.e.")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    return rundir.save_figure_atomic(fig, path)
