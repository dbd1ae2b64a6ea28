"""The resumable search loop: ask, save, evaluate, tell, save.

:func:`run_search` drives an algorithm of :mod:`rnn_jax.search.algorithms` with a state file::

    state = load_state(path) if path exists else algorithm.init(seed)
    while state["evaluations"] < budget:
        proposals = state["pending"] or ask(state, space, batch), saved with them pending
        results = evaluate(proposals)
        state = tell(state, results), saved

Every change of the state is written atomically (:func:`rnn_jax.search.algorithms.save_state`)
before the next step acts on it, so a process killed at any point (SIGKILL included) finds on
restart either the state before an ``ask`` (and asks again, drawing the same proposals from the
same saved generator state), or the proposals pending (and evaluates them again), or the state
after the ``tell``. The evaluator makes the second case cheap and exact: ``evaluate`` must be
*idempotent per proposal id*. The real evaluator (:mod:`rnn_jax.search.evaluator`) trains each
proposal as sweep points, in run directories named by a hash of what they train (the cell, the
task's config, the setting), skips those already completed, waits for one that a killed search's
worker is still training, and resumes an interrupted one from its checkpoint, so no evaluation is
lost or repeated and the final state equals that of an uninterrupted run. (A re-evaluation that
draws a setting already trained gets the stored result: the same training, not a new one.)

:func:`run_in_memory` is the same loop without files (tabular benchmarks).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Sequence

from rnn_jax.errors import InputError
from rnn_jax.search import algorithms as alg

__all__ = ["run_in_memory", "run_search", "step"]

Evaluate = Callable[[Sequence[Mapping]], Sequence[Mapping]]


def _check_budget(budget, batch) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise InputError(f"search: budget must be an integer >= 0 (evaluations), got {budget!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"search: batch must be an integer >= 1 (proposals per step), got {batch!r}")


def _describe_space(space):
    describe = getattr(space, "describe", None)
    return describe() if describe is not None else None


def _evaluate(evaluate: Evaluate, proposals: Sequence[Mapping]) -> list[dict]:
    """``evaluate(proposals)``, checked to give one result per proposal, in proposal order."""
    results = list(evaluate([dict(p) for p in proposals]))
    by_id = {}
    for r in results:
        if not isinstance(r, Mapping) or "id" not in r:
            raise InputError(f"search: the evaluator returned {r!r}; a result is a dict with 'id', 'status',"
                             f" 'fitness', 'metrics'")
        by_id[r["id"]] = r
    asked = [p["id"] for p in proposals]
    if sorted(by_id) != sorted(asked) or len(results) != len(asked):
        raise InputError(f"search: the evaluator returned results for ids {[r['id'] for r in results]}, but was"
                         f" asked for {asked}: it must return one result per proposal")
    return [by_id[i] for i in asked]


def step(algorithm, space, evaluate: Evaluate, state: Mapping, n: int,
         save: Callable[[Mapping], None] | None = None) -> tuple[dict, int]:
    """One step: evaluate the pending proposals, or ask for ``n`` and evaluate those; then tell.
    ``save`` (if given) is called with the state after ``ask`` and after ``tell``. Returns the new
    state and the number of proposals evaluated (0 when the algorithm proposed nothing: the space
    is exhausted)."""
    proposals = state["pending"]
    if not proposals:
        state, proposals = algorithm.ask(state, space, n)
        if save is not None:
            save(state)
        if not proposals:
            return state, 0
    results = _evaluate(evaluate, proposals)
    state = algorithm.tell(state, results)
    if save is not None:
        save(state)
    return state, len(results)


def run_in_memory(algorithm, space, evaluate: Evaluate, *, budget: int, batch: int = 1, seed: int = 0,
                  state: Mapping | None = None) -> dict:
    """:func:`run_search` without a file: from ``state`` (default ``algorithm.init(seed)``) until
    ``budget`` evaluations, or until the algorithm proposes nothing new."""
    _check_budget(budget, batch)
    state = algorithm.init(seed) if state is None else state
    while state["evaluations"] < budget:
        state, done = step(algorithm, space, evaluate, state, min(batch, budget - state["evaluations"]))
        if not done:
            break
    return state


def _progress(state: Mapping, budget: int, start_time: float, start_evals: int) -> str:
    hours = (time.time() - start_time) / 3600.0
    rate = (state["evaluations"] - start_evals) / hours if hours > 0 else 0.0
    best = state.get("best")
    best_text = "none yet" if best is None else f"{best:.4g}"
    return (f"search: {state['evaluations']}/{budget} evaluations, best fitness {best_text},"
            f" {rate:.1f} evaluations/hour, {state['reused']} reused")


def run_search(algorithm, space, evaluate: Evaluate, state_path: str, *, budget: int, batch: int = 1,
               seed: int = 0, log: Callable[[str], None] = print, log_every: int = 10) -> dict:
    """Run (or resume) a search until ``budget`` evaluations; returns the final state.

    ``state_path`` is the state file: when it exists the search resumes from it, after checking
    that it was made by the same algorithm settings (:meth:`describe`), the same ``seed`` and, for
    spaces with ``describe()``, the same space; a mismatch raises :class:`InputError` naming both.
    Each step asks for ``min(batch, budget - evaluations)`` proposals, saves the state with them
    pending, calls ``evaluate(proposals) -> results`` (which must be idempotent per proposal id,
    see the module docstring), tells the results and saves again. A step that proposes nothing
    (an exhausted space) ends the search early. Progress goes to ``log`` every ``log_every``
    evaluations and at the end: evaluations done / budget, best fitness, evaluations per hour
    (of this process), dedup hits."""
    _check_budget(budget, batch)
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
        raise InputError(f"run_search: log_every must be an integer >= 1, got {log_every!r}")
    state_path = os.fspath(state_path)
    space_id = _describe_space(space)
    if os.path.exists(state_path):
        state = alg.load_state(state_path, algorithm)
        if state.get("seed") != seed:
            raise InputError(f"{state_path} holds a search started with seed {state.get('seed')!r}, but this search"
                             f" has seed {seed!r}: pass the same seed to resume it, or use another state file")
        if space_id is not None and state.get("space") not in (None, space_id):
            raise InputError(f"{state_path} holds a search over the space {state.get('space')!r}, but this search"
                             f" is over {space_id!r}: use the same space to resume it, or another state file")
        log(f"search: resuming {state_path}: {state['evaluations']} evaluations done,"
            f" {len(state['pending'])} pending")
    else:
        os.makedirs(os.path.dirname(os.path.abspath(state_path)), exist_ok=True)
        state = algorithm.init(seed)
        if space_id is not None:
            state["space"] = space_id
        alg.save_state(state_path, state)
        log(f"search: new search in {state_path} ({algorithm.describe()['name']}, budget {budget})")

    def save(s):
        alg.save_state(state_path, s)

    start_time, start_evals = time.time(), state["evaluations"]
    logged = state["evaluations"]
    while state["evaluations"] < budget:
        state, done = step(algorithm, space, evaluate, state, min(batch, budget - state["evaluations"]), save)
        if not done:
            log(f"search: the algorithm proposed nothing new (the space looks exhausted); stopping at"
                f" {state['evaluations']}/{budget} evaluations")
            break
        if state["evaluations"] - logged >= log_every:
            logged = state["evaluations"]
            log(_progress(state, budget, start_time, start_evals))
    if state["evaluations"] != logged:
        log(_progress(state, budget, start_time, start_evals))
    return state
