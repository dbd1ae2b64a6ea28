"""Training candidates on the sweep launchers: each proposal is a set of sweep points.

A proposal (:mod:`rnn_jax.search.algorithms`) asks for one recipe trained on one task with K
hyperparameter settings. :class:`TrainingEvaluator` turns it into K points of the task's sweep,
``<search_dir>/tasks/<task>/`` (a plain sweep directory: ``sweep.json``, ``runs/<point>/``), whose
overrides are the cell, written inline as ``recipe:recipe={...}`` in its canonical form (so the run
directory alone says what was trained, and recipes that differ only in node names train the same
program), and the setting's fields. The K points differ only in trial fields (learning rate,
clip norm, init scales, seed), so the launcher trains them as K vmapped trials of one program
(``trials_per_program = K``). Points go to the local process pool (default) or to SLURM; either
way a point whose ``result.json`` says completed is never trained again, and an interrupted one
resumes from its checkpoint, which is what the search driver needs (:mod:`rnn_jax.search.driver`).

Compiled programs are cached twice: JAX's persistent compilation cache (one per task's sweep
directory, shared by the workers and across launches) serves a recurring program (a listed cell
re-evaluated, a structure seen again) without a backend compile; and the canonical form makes
equal structures the same program. Each run directory gets ``compile.json``
(:mod:`rnn_jax.sweep.compile_stats`), which :meth:`TrainingEvaluator.__call__` adds to the
results so the search can report its compile share and cache hit rate.

The fitness of a proposal is the best ``metric`` (default ``best_valid_accuracy``) over its K
trials; a trial that diverged counts with what it reached before (0 if it never evaluated); the
proposal fails only when every trial failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from rnn_jax import rundir
from rnn_jax.errors import InputError
from rnn_jax.search import recipe as rlib

__all__ = ["LAUNCHERS", "TrainingEvaluator", "cell_spec"]

LAUNCHERS = ("local", "slurm")


def cell_spec(recipe: Mapping) -> str:
    """The config's cell for a recipe: ``recipe:recipe=<canonical JSON>``."""
    return "recipe:recipe=" + rlib.to_json(rlib.canonical(recipe))


@dataclasses.dataclass
class TrainingEvaluator:
    """Trains proposals as sweep points. ``task_args[task]`` is the base arg string of
    ``config_path`` (the tasks config) for that task, e.g. ``"task=memorization,hidden=32,..."``.

    ``launcher="slurm"`` submits the points as a job array (``resources``: a
    :class:`rnn_jax.sweep.slurm.SlurmResources`) and polls the run directories every ``poll_s``
    seconds until they are done. Points that end without a result are launched again, up to
    ``attempts`` launches in all (see :meth:`_launch`).
    """

    search_dir: str
    config_path: str
    task_args: Mapping[str, str]
    launcher: str = "local"
    workers: int | None = None
    resources: Any = None
    poll_s: float = 10.0
    attempts: int = 3
    metric: str = "best_valid_accuracy"
    log: Callable[[str], None] | None = None

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise InputError(f"launcher={self.launcher!r}; allowed: {', '.join(LAUNCHERS)}")
        if not os.path.isfile(self.config_path):
            raise FileNotFoundError(f"config file {self.config_path} does not exist")
        self.config_path = os.path.abspath(self.config_path)

    # ---- points ---------------------------------------------------------------------------

    def sweep_dir(self, task: str) -> str:
        return os.path.join(self.search_dir, "tasks", task)

    def points(self, proposal: Mapping) -> list[dict]:
        """The K sweep points of a proposal (overrides of the task's config). A setting's keys are
        config fields, written ``optim.learning_rate`` or ``optim/learning_rate`` (ConfigDict
        keys cannot hold dots)."""
        settings = list(proposal.get("hparams") or [{}])
        spec = cell_spec(proposal["recipe"])
        out = []
        for setting in settings:
            point = {"cell": spec, **{k.replace("/", "."): v for k, v in setting.items()}}
            if len(settings) > 1:
                point["trials_per_program"] = len(settings)
            out.append(point)
        return out

    def run_dirs(self, proposal: Mapping) -> list[str]:
        from rnn_jax.sweep import points as points_lib
        sweep = self.sweep_dir(proposal["task"])
        return [os.path.join(sweep, "runs", points_lib.point_name(p)) for p in self.points(proposal)]

    # ---- evaluation -----------------------------------------------------------------------

    def __call__(self, proposals: Sequence[Mapping]) -> list[dict]:
        log = self.log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        by_task: dict[str, list] = {}
        for p in proposals:
            if p["task"] not in self.task_args:
                raise InputError(f"proposal {p['id']} asks for task {p['task']!r}, which the search config"
                                 f" does not set up; its tasks: {', '.join(self.task_args)}")
            by_task.setdefault(p["task"], []).extend(self.points(p))
        for task, points in by_task.items():
            unique = list({json.dumps(p, sort_keys=True): p for p in points}.values())
            self._launch(task, unique, log)
        return [self._result(p) for p in proposals]

    def _launch(self, task: str, points: list, log) -> None:
        """Train ``points`` until each is done (completed, diverged) or failed in this launch.

        A point another process still trains (a worker of a search that was killed and restarted
        at once holds its run directory's lock) is waited for; a point that did not run (a SLURM
        job that died without a result: time limit, ``scancel``, a lost node) is launched again,
        up to ``attempts`` times, after which :meth:`_result` counts it as failed."""
        from rnn_jax.sweep import local
        from rnn_jax.sweep import points as points_lib
        sweep = self.sweep_dir(task)
        dirs = {points_lib.point_name(p): local.run_dir(sweep, points_lib.point_name(p)) for p in points}
        todo = list(points)
        for attempt in range(self.attempts):
            submitted = time.time()
            if self.launcher == "local":
                local.launch_local(sweep, self.config_path, todo, base_arg=self.task_args[task],
                                   workers=self.workers, log=lambda msg: None)  # the search logs its own
            else:
                from rnn_jax.sweep import slurm
                slurm.launch_slurm(sweep, self.config_path, todo, base_arg=self.task_args[task],
                                   resources=self.resources or slurm.SlurmResources(), log=log)
            self._wait([dirs[points_lib.point_name(p)] for p in todo], task, log)
            todo = [p for p in todo if not self._finished(dirs[points_lib.point_name(p)], submitted)]
            if not todo:
                return
            log(f"{task}: {len(todo)} point(s) ended without a result; launching them again"
                f" ({attempt + 2} of {self.attempts})" if attempt + 1 < self.attempts else
                f"{task}: {len(todo)} point(s) ended without a result after {self.attempts} launches;"
                f" counted as failed")

    def _finished(self, workdir: str, since: float) -> bool:
        """Done, or failed after ``since`` (an older failure is the one a relaunch retries)."""
        from rnn_jax.sweep import local
        state = local.point_state(workdir)
        if state in local.DONE:
            return True
        if state == "failed":
            try:
                return os.path.getmtime(os.path.join(workdir, "result.json")) >= since - 1.0
            except OSError:
                return False
        return False

    def _wait(self, dirs: list, task: str, log) -> None:
        """Poll until no point is being trained (locked) or, on SLURM, queued."""
        from rnn_jax.sweep import local
        waited = time.time()
        while True:
            busy = [d for d in dirs if local.point_state(d) == "running" or (self.launcher == "slurm"
                                                                               and self._queued(d))]
            if not busy:
                return
            if time.time() - waited > 600:
                log(f"{task}: waiting for {len(busy)} of {len(dirs)} points ({self.sweep_dir(task)})")
                waited = time.time()
            time.sleep(self.poll_s)

    def _queued(self, workdir: str) -> bool:
        from rnn_jax.sweep import local, slurm
        return slurm._queued(workdir) and local.point_state(workdir) not in local.DONE

    def _result(self, proposal: Mapping) -> dict:
        dirs = self.run_dirs(proposal)
        results = [rundir.read_json(os.path.join(d, "result.json")) or {"status": "failed"} for d in dirs]
        statuses = [r.get("status", "failed") for r in results]
        scores = []
        for r in results:
            if r.get("status") in ("completed", "diverged"):
                v = r.get(self.metric)
                scores.append(float(v) if isinstance(v, (int, float)) else 0.0)
            else:
                scores.append(None)
        compile_info = [rundir.read_json(os.path.join(d, "compile.json")) for d in dirs]
        metrics: dict[str, Any] = {"statuses": statuses, "run_dirs": dirs, "scores": scores}
        stats = [c for c in compile_info if c]
        if stats:
            # a program's numbers are written to each of its trials: count each program once
            first = {c.get("program") or json.dumps(c, sort_keys=True): c for c in stats}.values()
            for key in ("compile_s", "wall_s", "cache_requests", "cache_hits"):
                metrics[key] = round(sum(float(c.get(key, 0)) for c in first), 4)
        if all(s is None for s in scores):
            errors = [r.get("error") for r in results if r.get("error")]
            return {"id": proposal["id"], "status": "failed", "fitness": None,
                    "metrics": {**metrics, "error": errors[0] if errors else "no result"}}
        best = max(range(len(scores)), key=lambda i: -1.0 if scores[i] is None else scores[i])
        for key in ("test_accuracy", "best_valid_loss", "num_params"):
            if key in results[best]:
                metrics[key] = results[best][key]
        metrics["best_setting"] = best
        return {"id": proposal["id"], "status": "ok", "fitness": scores[best], "metrics": metrics}


# ----------------------------------------------------------------------------- reading the runs back


def _run_dirs(search_dir: str, task: str | None = None) -> list[str]:
    import glob
    pattern = os.path.join(search_dir, "tasks", task or "*", "runs", "*")
    return sorted(d for d in glob.glob(pattern) if os.path.isdir(d))


def compile_summary(search_dir: str) -> dict:
    """Compile cost over every program the search trained (each ``compile.json`` once per
    program: vmapped trials share theirs): ``programs``, ``compile_s``, ``wall_s``,
    ``compile_share`` (compile ÷ wall), ``cache_requests``, ``cache_hits``, ``hit_rate``."""
    programs = {}
    for d in _run_dirs(search_dir):
        c = rundir.read_json(os.path.join(d, "compile.json"))
        if c:
            programs[c.get("program") or json.dumps(c, sort_keys=True)] = c
    out = {"programs": len(programs)}
    for key in ("compile_s", "wall_s", "cache_requests", "cache_hits"):
        out[key] = round(sum(float(c.get(key, 0)) for c in programs.values()), 3)
    out["compile_share"] = round(out["compile_s"] / out["wall_s"], 4) if out["wall_s"] else None
    out["hit_rate"] = round(out["cache_hits"] / out["cache_requests"], 4) if out["cache_requests"] else None
    return out


def export_table(search_dir: str, task: str, out_dir: str) -> dict:
    """The search's runs on ``task`` as NAS-Bench-NLP logs (:func:`rnn_jax.search.tabular.write_log`):
    one log per recipe (its best run by validation loss), ``val_losses = [best_valid_loss]``,
    ``test_losses = [test_loss]``, status ``OK`` for completed runs and ``failed`` otherwise.
    Returns counts. The table can then be searched in tabular mode."""
    from rnn_jax import cells as cells_lib
    from rnn_jax.search import tabular

    best: dict[str, tuple] = {}
    for d in _run_dirs(search_dir, task):
        config = rundir.read_json(os.path.join(d, "config.json"))
        result = rundir.read_json(os.path.join(d, "result.json"))
        if not config or not result or not str(config.get("cell", "")).startswith("recipe:"):
            continue
        name, opts = cells_lib.parse_spec(config["cell"])
        recipe = cells_lib.get(name, **opts).graph
        ok = result.get("status") == "completed" and isinstance(result.get("best_valid_loss"), float)
        val = result.get("best_valid_loss") if ok else None
        test = result.get("test_loss", result.get("final_test_loss")) if ok else None
        h = rlib.structure_hash(recipe)
        if h not in best or (ok and (best[h][1] is None or val < best[h][1])):
            best[h] = (recipe, val, test, ok)
    os.makedirs(out_dir, exist_ok=True)
    counts = {"logs": 0, "ok": 0}
    for h, (recipe, val, test, ok) in sorted(best.items()):
        tabular.write_log(out_dir, recipe, [val] if ok else [], [test] if ok and test is not None else [],
                          status="OK" if ok else "failed")
        counts["logs"] += 1
        counts["ok"] += int(ok)
    return counts
