r"""Search over recurrent cells: ``python -m experiments.search --config=CONFIG[:ARGS] --search_dir=DIR``.

    python -m experiments.search --config=experiments/configs/search.py:runlocal --search_dir=runs/search_smoke
    python -m experiments.search --config=experiments/configs/search.py --search_dir=runs/search
    python -m experiments.search --config=experiments/configs/search.py --search_dir=runs/search --launcher=slurm
    python -m experiments.search --config=experiments/configs/search.py:table=DIR,algorithm=evolution \
        --search_dir=runs/tabular --compare_repeats=20

The search state is ``<search_dir>/state.json``, saved atomically after every step: running the
same command again (after an interrupt, even ``kill -9``) resumes it, and no evaluation is lost or
trained twice (each is a sweep point under ``<search_dir>/tasks/<task>/runs/``, skipped once
completed). ``--config.budget=N`` extends a finished search. When the search ends (or with
``--report_only``) it writes ``leaderboard.md``, ``leaderboard.csv``, ``fitness.png`` and the best
recipes as ``top/rank<r>-<hash>.json``, which ``cells.get("recipe", path=...)`` reads, so a found
cell goes into a comparison as ``--cells=gru,lstm,recipe:path=<search_dir>/top/rank1-<hash>.json``.
``summary.json`` adds the throughput and the compile share and cache hit rate of the trainings.

Tabular mode (``table=DIR`` in the arg string: a directory of NAS-Bench-NLP logs) looks the
candidates up instead of training them; ``--compare_repeats=R`` then runs regularized evolution
and random search R times each on the table and writes ``regret.png`` and ``regret.json``.
``--export_table=DIR`` writes this search's trainings on its first task (the filter task for the
Jozefowicz protocol) as such a table.
"""

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from rnn_jax.errors import InputError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Search config (experiments/configs/search.py[:args]).",
                                          lock_config=True)
_DIR = flags.DEFINE_string("search_dir", None, "Search directory (created; resumed when it has a state).")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "Where the trainings run.")
_WORKERS = flags.DEFINE_integer("workers", None, "Parallel trainings on the local pool (default: the cores).")
_PARTITION = flags.DEFINE_string("slurm_partition", "", "SLURM partition (default: the cluster's).")
_TIME = flags.DEFINE_integer("slurm_time_min", 60, "Time limit per SLURM task (minutes).")
_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 2, "CPUs per SLURM task.")
_PARALLEL = flags.DEFINE_integer("slurm_array_parallelism", 16, "SLURM array tasks running at once.")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Write the leaderboard from the saved state; train nothing.")
_COMPARE = flags.DEFINE_integer("compare_repeats", 0, "Tabular mode: regularized evolution vs random search, "
                                "this many repeats each (0: run the configured search once).")
_EXPORT = flags.DEFINE_string("export_table", "", "Write this search's trainings as NAS-Bench-NLP logs here.")
flags.mark_flags_as_required(["config", "search_dir"])

# In tabular mode a cell is one lookup: the algorithms see one task, the table.
TABLE_TASKS = ("table",)
TASKS_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tasks.py")


def _plain(value):
    return json.loads(json.dumps(value.to_dict() if hasattr(value, "to_dict") else value, default=list))


def make_algorithm(c, tasks=None):
    """The config's algorithm; ``tasks`` replaces ``c.tasks`` (tabular mode has one: the table)."""
    from rnn_jax.search import algorithms as alg
    tasks = tuple(tasks or c.tasks)
    if c.algorithm == "jozefowicz":
        j = _plain(c.jozefowicz)
        return alg.JozefowiczProtocol(list_size=j["list_size"], tasks=tasks,
                                      filter_task=c.filter_task or None, filter_ratio=j["filter_ratio"],
                                      stage_ratio=j["stage_ratio"],
                                      reevaluate_probability=j["reevaluate_probability"],
                                      settings=j["settings"], hparam_space=_plain(c.hparam_space))
    hparams = tuple(_plain(list(c.hparams)))
    if c.algorithm == "evolution":
        e = _plain(c.evolution)
        return alg.RegularizedEvolution(population=e["population"], sample=e["sample"], tasks=tasks,
                                        hparams=hparams)
    return alg.RandomSearch(tasks=tasks, hparams=hparams)


def _compare(c, table, out_dir):
    from rnn_jax.search import algorithms as alg
    from rnn_jax.search import tabular
    e = _plain(c.evolution)
    algos = {"regularized evolution": alg.RegularizedEvolution(population=e["population"], sample=e["sample"],
                                                               tasks=TABLE_TASKS),
             "random search": alg.RandomSearch(tasks=TABLE_TASKS)}
    started = time.time()
    curves = tabular.compare(table, algos, repeats=_COMPARE.value, budget=c.budget, seed=c.seed)
    png = tabular.plot_regret(curves, os.path.join(out_dir, "regret.png"),
                              f"a table of {len(table)} cells ({table.counts.get('ok', len(table))} trained to"
                              f" the end), {_COMPARE.value} repeats each")
    out = {"table": table.directory, "entries": len(table), "budget": c.budget, "repeats": _COMPARE.value,
           "seconds": round(time.time() - started, 1), "curves": curves}
    from rnn_jax import rundir
    rundir.write_json_atomic(os.path.join(out_dir, "regret.json"), out)
    for name, runs in curves.items():
        final = [r[-1] for r in runs["regret"]]
        half = [r[len(r) // 4] for r in runs["regret"]]
        print(f"{name}: mean regret {sum(half) / len(half):.4f} after {len(runs['regret'][0]) // 4 + 1}"
              f" evaluations, {sum(final) / len(final):.4f} after {c.budget}"
              f" ({sum(runs['fallbacks'])} nearest-entry fallbacks)")
    print(f"regret curves: {png} ({out['seconds']} s)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from rnn_jax import rundir
    from rnn_jax.search import algorithms as alg
    from rnn_jax.search import driver, evaluator, report, tabular

    c, search_dir = _CONFIG.value, _DIR.value
    state_path = os.path.join(search_dir, "state.json")
    if _EXPORT.value:
        task = c.filter_task or c.tasks[0]
        counts = evaluator.export_table(search_dir, task, _EXPORT.value)
        print(f"{counts['logs']} logs ({counts['ok']} ok) of task {task} written to {_EXPORT.value}")
        return
    if c.table and c.algorithm == "jozefowicz":
        raise InputError("table=...: the Jozefowicz protocol's fitness is a ratio of accuracies to GRU's, while a "
                         "table gives losses; use algorithm=evolution or algorithm=random in tabular mode")
    os.makedirs(search_dir, exist_ok=True)
    if c.table:
        table = tabular.load_table(c.table)
        print(f"table {c.table}: {table.summary()}")
        if _COMPARE.value:
            return _compare(c, table, search_dir)
        space, evaluate = tabular.TableSpace(table), tabular.TableEvaluator(table)
    else:
        if _COMPARE.value:
            raise InputError("--compare_repeats needs tabular mode (table=DIR in the config's arg string)")
        space = alg.FreeSpace(**{k: tuple(v) if isinstance(v, list) else v for k, v in _plain(c.space).items()},
                              seeds=("gru", "lstm"))
        resources = None
        if _LAUNCHER.value == "slurm":
            from rnn_jax.sweep import slurm
            resources = slurm.SlurmResources(partition=_PARTITION.value, time_min=_TIME.value,
                                             cpus_per_task=_CPUS.value, array_parallelism=_PARALLEL.value)
        evaluate = evaluator.TrainingEvaluator(search_dir, TASKS_CONFIG, _plain(c.task_args), launcher=_LAUNCHER.value,
                                               workers=_WORKERS.value, resources=resources)
    algorithm = make_algorithm(c, TABLE_TASKS if c.table else None)
    started = time.time()
    if _REPORT_ONLY.value:
        if not os.path.exists(state_path):
            raise FileNotFoundError(f"{state_path} does not exist: nothing to report")
        state = alg.load_state(state_path, algorithm)
    else:
        before = alg.load_state(state_path, algorithm)["evaluations"] if os.path.exists(state_path) else 0
        state = driver.run_search(algorithm, space, evaluate, state_path, budget=c.budget, batch=c.batch,
                                  seed=c.seed, log=lambda m: print(m, flush=True))
    paths = report.write_report(state, search_dir, hidden_size=c.hidden, top_k=c.top,
                                title=f"{c.algorithm} search, {state['evaluations']} evaluations")
    summary = {"algorithm": c.algorithm, "evaluations": state["evaluations"], "reused": state["reused"],
               "candidates": len(state["candidates"]), "best_fitness": state.get("best")}
    if not _REPORT_ONLY.value:
        hours = (time.time() - started) / 3600
        done = state["evaluations"] - before
        summary.update(session_evaluations=done, session_seconds=round(hours * 3600, 1),
                       evaluations_per_hour=round(done / hours, 1) if hours > 0 and done else None)
    if not c.table:
        summary["compile"] = evaluator.compile_summary(search_dir)
    if _REPORT_ONLY.value:  # keep the last session's throughput
        previous = rundir.read_json(os.path.join(search_dir, "summary.json")) or {}
        summary.update({k: v for k, v in previous.items() if k.startswith(("session_", "evaluations_per_hour"))})
    rundir.write_json_atomic(os.path.join(search_dir, "summary.json"), summary)
    shown = TABLE_TASKS if c.table else tuple(c.tasks) + ((c.filter_task,) if c.filter_task else ())
    print(report.markdown(paths["rows"][:5], sorted({t for r in paths["rows"] for t in r if t in shown})), end="")
    line = f"{state['evaluations']} evaluations, {state['reused']} duplicates reused"
    if summary.get("evaluations_per_hour"):
        line += (f", {summary['evaluations_per_hour']:.0f} evaluations/hour"
                 f" {'in its last session' if _REPORT_ONLY.value else 'this session'}")
    comp = summary.get("compile")
    if comp and comp.get("wall_s"):
        hit = f"{comp['hit_rate']:.0%}" if comp.get("hit_rate") is not None else "n/a"
        line += f"; compile {comp['compile_share']:.0%} of training wall time, cache hit rate {hit}"
    print(line)
    print(f"leaderboard: {paths['markdown']}; fitness: {paths['png']}; best recipes: "
          f"{os.path.join(search_dir, 'top')}")
    if not paths["rows"]:
        sys.exit("no candidate finished its evaluation")


if __name__ == "__main__":
    cli.run(main)
