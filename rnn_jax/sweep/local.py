"""The local launcher: a process pool that trains sweep points, one run directory each.

Layout of a sweep directory::

    <sweep_dir>/sweep.json             the config file, base arg and every point launched so far
    <sweep_dir>/runs/<point-name>/     a run directory (see rnn_jax.train), plus overrides.json and log.txt

The sweep directory alone says what has run: a point is done when its ``result.json`` says
``completed`` or ``diverged`` (deterministic: re-running would diverge again); ``failed`` points
and points without a result run again on the next launch. A point holds an exclusive lock on its
run directory while it trains, so two launchers on one sweep never train the same point at once.

:func:`summarize` turns the statuses of a launch into one line and a verdict: a *failed* point
always fails the sweep; a *diverged* point fails it too unless ``diverged_ok`` (a comparison's grid
point whose learning rate is too high diverges legitimately; a plain sweep expects every point to
train to its end). Points held by another launcher (``running``) fail nothing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
import time
import traceback
import uuid
from typing import Any, Callable, Mapping, Sequence

from rnn_jax import rundir
from rnn_jax.errors import InputError
from rnn_jax.sweep import compile_stats
from rnn_jax.sweep import points as points_lib

DONE = ("completed", "diverged")
STATES = ("pending", "started", "running", "completed", "diverged", "failed")


def run_dir(sweep_dir: str, name: str) -> str:
    return os.path.join(sweep_dir, "runs", name)


def _locked(workdir: str, wait_s: float = 0.0, name: str = ".lock"):
    """Hold ``<workdir>/<name>`` exclusively; yields False when another process still holds it
    after ``wait_s`` seconds. The run directory's lock is the trainer's own (:mod:`rnn_jax.rundir`):
    the trainer a worker calls takes it again, and any other writer is refused."""
    return rundir.locked(workdir, wait_s, name=name)


def point_state(workdir: str) -> str:
    """pending (no run dir), running (locked by a live process), started (stopped before the end),
    or the status in result.json."""
    if not os.path.isdir(workdir):
        return "pending"
    result = rundir.read_json(os.path.join(workdir, "result.json"))
    if result is not None and result.get("status") in ("completed", "diverged", "failed"):
        return result["status"]
    with _locked(workdir) as got:
        if not got:
            return "running"
    return "started" if os.path.exists(os.path.join(workdir, "config.json")) else "pending"


def run_point(config_path: str, base_arg: str | None, overrides: Mapping[str, Any], workdir: str) -> dict:
    """Train one point in ``workdir`` (resuming it if it has a checkpoint); never raises.

    Returns ``{"status": ..., "skipped": bool, ...}``; the training log goes to ``workdir/log.txt``.
    """
    return run_program(config_path, base_arg, [overrides], [workdir])[0]


def _logger(files):
    def log(msg):
        for f in files:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
            f.flush()
    return log


def run_program(config_path: str, base_arg: str | None, overrides: Sequence[Mapping[str, Any]],
                workdirs: Sequence[str]) -> list:
    """Train points as one program: one point alone, or several as vmapped trials
    (:mod:`rnn_jax.trials`); never raises. Points that are done, or locked by another process,
    are skipped. Returns one ``{"status": ..., "skipped": bool, ...}`` per point; each point's
    log goes to its ``log.txt``.
    """
    results: list = [None] * len(workdirs)
    with contextlib.ExitStack() as stack:
        live = []
        for i, workdir in enumerate(workdirs):
            if not stack.enter_context(_locked(workdir, wait_s=5.0)):  # `status` may hold it a moment
                results[i] = {"status": "running", "skipped": True}
                continue
            result = rundir.read_json(os.path.join(workdir, "result.json"))
            if result is not None and result.get("status") in DONE:
                results[i] = {**result, "skipped": True}
                continue
            rundir.write_json_atomic(os.path.join(workdir, "overrides.json"), dict(overrides[i]))
            live.append(i)
        if not live:
            return results
        files = [stack.enter_context(open(os.path.join(workdirs[i], "log.txt"), "a", encoding="utf-8"))
                 for i in live]
        log = _logger(files)
        compile_stats.install()
        counted, started = compile_stats.snapshot(), time.time()
        stack.callback(_write_compile_stats, [workdirs[i] for i in live], counted, started)
        try:
            from rnn_jax import train as train_lib  # imported here: workers start light
            configs = [points_lib.point_config(config_path, base_arg, overrides[i]) for i in live]
            if len(live) == 1:
                out = [train_lib.train_and_evaluate(configs[0], workdirs[live[0]], log=log)]
            else:
                from rnn_jax import trials
                out = trials.train_trials(configs, [workdirs[i] for i in live], log=log)
            for i, result in zip(live, out):
                results[i] = {**result, "skipped": False}
        except Exception as e:  # the sweep goes on; the points are recorded as failed
            log(traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
            for i in live:
                path = os.path.join(workdirs[i], "result.json")
                result = rundir.read_json(path)
                if result is not None and result.get("status") in DONE:  # a trial that ended first
                    results[i] = {**result, "skipped": False}
                    continue
                if result is None or result.get("status") != "failed":
                    rundir.write_json_atomic(path, {"status": "failed", "error": error})
                results[i] = {"status": "failed", "error": error, "skipped": False}
    return results


def _write_compile_stats(workdirs, counted: dict, started: float) -> None:
    """``compile.json`` in each run dir of a program (see :mod:`rnn_jax.sweep.compile_stats`)."""
    stats = {**compile_stats.since(counted), "wall_s": round(time.time() - started, 3), "trials": len(workdirs),
             "program": uuid.uuid4().hex[:12]}  # the trials of one program share the record
    for workdir in workdirs:
        try:
            rundir.write_json_atomic(os.path.join(workdir, "compile.json"), stats)
        except OSError:  # a statistic is not worth failing a point over
            pass


def programs(config_path: str, base_arg: str | None, points: Mapping[str, Mapping[str, Any]]) -> list:
    """Group the named ``points`` into programs (lists of names). Points whose config sets
    ``trials_per_program = K > 1`` and that differ only in :data:`rnn_jax.trials.TRIAL_FIELDS`
    train K at a time as vmapped trials; every other point (also one whose schedule or placement
    cannot be vmapped: the plateau schedule, data parallel) is a program of its own."""
    singles, groups = [], {}
    for name, overrides in points.items():
        try:
            config = points_lib.point_config(config_path, base_arg, overrides)
            k = config.get("trials_per_program", 1)
        except Exception:  # a broken point fails in its worker, where the error is recorded
            k = 1
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"point {name}: config.trials_per_program = {k!r}: must be an integer >= 1")
        if k > 1:
            from rnn_jax import trials
            try:
                trials.check_trials([config])  # plateau schedule, data parallel: run alone
            except ValueError:
                k = 1
        if k == 1:
            singles.append([name])
            continue
        groups.setdefault((k, trials.program_key(config)), []).append(name)
    out = singles
    for (k, _), names in groups.items():
        out.extend(names[i:i + k] for i in range(0, len(names), k))
    return out


def _worker_env(cache_dir: str | None) -> dict:
    env = {}
    if cache_dir:  # compiled programs are shared between workers and launches
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


@contextlib.contextmanager
def _environ(values: Mapping[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_sweep(sweep_dir: str, config_path: str, base_arg: str | None, points: Sequence[Mapping]) -> list:
    """Add ``points`` to ``sweep.json`` (creating it); returns their names."""
    os.makedirs(os.path.join(sweep_dir, "runs"), exist_ok=True)
    path = os.path.join(sweep_dir, "sweep.json")
    with _locked(sweep_dir, wait_s=60.0, name=".sweep.lock") as got:  # concurrent launchers
        if not got:
            raise RuntimeError(f"{sweep_dir}/.sweep.lock is held by another process for more than a minute")
        saved = (rundir.read_json(path, strict=True)
                 or {"config": os.path.abspath(config_path), "arg": base_arg, "points": {}})
        if saved.get("config") != os.path.abspath(config_path) or saved.get("arg") != base_arg:
            raise InputError(f"{sweep_dir} holds a sweep of config {saved.get('config')} with arg "
                             f"{saved.get('arg')!r}; this launch is {os.path.abspath(config_path)} with "
                             f"{base_arg!r}. Use another sweep_dir.")
        names = []
        for p in points:
            name = points_lib.point_name(p)
            saved["points"][name] = dict(p)
            names.append(name)
        rundir.write_json_atomic(path, saved)
    return names


def sweep_status(sweep_dir: str) -> dict:
    """``{name: state}`` for every point recorded in ``sweep.json``."""
    saved = rundir.read_json(os.path.join(sweep_dir, "sweep.json"), strict=True)
    if saved is None:
        raise FileNotFoundError(f"{sweep_dir} has no sweep.json: not a sweep directory")
    return {name: point_state(run_dir(sweep_dir, name)) for name in saved["points"]}


def _first_line(text, limit: int = 160) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[:limit - 3] + "..."


def summarize(sweep_dir: str, statuses: Mapping[str, str], *, diverged_ok: bool = False,
              show: int = 3) -> tuple[str, bool]:
    """``(line, ok)`` for the ``{name: status}`` of a launch.

    ``line`` counts the points by status and names the failed ones (and the diverged ones, unless
    ``diverged_ok``) with their run directory and error, e.g. ``3 points: 1 completed, 1 diverged,
    1 failed; failed: runs/p-ab12 (ValueError: ...); diverged: runs/p-cd34 (at step 12)``; at most
    ``show`` of each are named. ``ok`` is False when a point failed, or diverged and not ``diverged_ok``.
    """
    counts: dict = {}
    for status in statuses.values():
        counts[status] = counts.get(status, 0) + 1
    order = [s for s in ("completed", "diverged", "failed", "running", "started", "pending") if s in counts]
    order += sorted(s for s in counts if s not in order)
    n = len(statuses)
    line = f"{n} point{'' if n == 1 else 's'}: " + (", ".join(f"{counts[s]} {s}" for s in order) or "none")
    bad = ["failed"] + ([] if diverged_ok else ["diverged"])
    for status in bad:
        names = sorted(name for name, st in statuses.items() if st == status)
        if not names:
            continue
        shown = []
        for name in names[:show]:
            result = rundir.read_json(os.path.join(run_dir(sweep_dir, name), "result.json")) or {}
            if status == "failed":
                why = _first_line(result.get("error") or "no error recorded")
            else:
                why = f"at step {result['step']}" if isinstance(result.get("step"), int) else "diverged"
            shown.append(f"{run_dir(sweep_dir, name)} ({why})")
        more = f" and {len(names) - show} more" if len(names) > show else ""
        line += f"; {status}: " + ", ".join(shown) + more
    return line, not any(counts.get(s) for s in bad)


def launch_local(sweep_dir: str, config_path: str, points: Sequence[Mapping[str, Any]], *,
                 base_arg: str | None = None, workers: int | None = None, compile_cache: bool = True,
                 log: Callable[[str], None] | None = None, describe: Callable[[Mapping], str] | None = None) -> dict:
    """Run every point not yet done, ``workers`` at a time (default: the number of cores).

    Returns ``{name: status}`` for all the given points. A point that fails (or whose worker
    process dies) is recorded as failed and the others go on.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    describe = describe or (lambda p: ", ".join(f"{k}={v}" for k, v in p.items()))
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    names = record_sweep(sweep_dir, config_path, base_arg, points)
    by_name = dict(zip(names, points))
    statuses = {}
    todo = []
    for name in dict.fromkeys(names):
        state = point_state(run_dir(sweep_dir, name))
        if state in DONE:
            statuses[name] = state
        else:
            todo.append(name)
    log(f"sweep {sweep_dir}: {len(by_name)} points, {len(statuses)} done, {len(todo)} to run "
        f"with {min(workers, max(len(todo), 1))} worker(s)")
    if not todo:
        return statuses
    cache = os.path.join(sweep_dir, "jax_cache") if compile_cache else None
    todo = programs(config_path, base_arg, {name: by_name[name] for name in todo})
    started = time.time()
    finished, total = 0, sum(map(len, todo))
    attempts = {tuple(program): 0 for program in todo}
    while todo:
        ctx = multiprocessing.get_context("spawn")
        pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx)
        futures = {}
        # workers start inside submit(): they inherit this environment (the compilation cache)
        with _environ(_worker_env(cache)):
            for program in todo:
                attempts[tuple(program)] += 1
                futures[pool.submit(run_program, config_path, base_arg, [by_name[n] for n in program],
                                    [run_dir(sweep_dir, n) for n in program])] = program
        retry = []
        for future in concurrent.futures.as_completed(futures):
            program = futures[future]
            try:
                outs = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                if attempts[tuple(program)] < 2:
                    retry.append(program)
                    continue
                outs = []
                for name in program:
                    out = {"status": "failed", "error": "the worker process died"}
                    result_path = os.path.join(run_dir(sweep_dir, name), "result.json")
                    if rundir.read_json(result_path) is None:
                        os.makedirs(os.path.dirname(result_path), exist_ok=True)
                        rundir.write_json_atomic(result_path, out)
                    outs.append(out)
            for name, out in zip(program, outs):
                statuses[name] = out["status"]
                finished += 1
                elapsed = time.time() - started
                summary = ", ".join(f"{k}={out[k]:.4f}" for k in ("best_valid_accuracy", "best_valid_loss")
                                    if isinstance(out.get(k), float))
                eta = elapsed / finished * (total - finished - sum(map(len, retry)))
                trial = f", vmapped with {len(program) - 1} other(s)" if len(program) > 1 else ""
                log(f"[{finished}/{total}] {name} ({describe(by_name[name])}{trial}): {out['status']}"
                    + (f" {summary}" if summary else "") + (f" ({out.get('error')})" if out.get("error") else "")
                    + f"; {elapsed / 60:.1f} min elapsed, ~{eta / 60:.1f} min left")
        pool.shutdown(wait=True, cancel_futures=True)
        todo = retry
    return statuses
