r"""Compare recurrent cells as Jozefowicz, Zaremba & Sutskever (2015) did, and print the table.

    python -m experiments.compare --preset=quick                   # ~11 min on 2 cores, no data files
    python -m experiments.compare --preset=paper --sweep_dir=...   # the paper's protocol (a cluster)

Every (cell, task) is trained on one continuous stream (batch 20, unroll 35, hidden state carried)
with the same settings for every cell; the best setting by validation metric is rerun with
``--seeds`` seeds; the table (Markdown, LaTeX, CSV) and learning curves are written to
``<sweep_dir>/report`` from the run directories. Re-running skips finished points, so an
interrupted comparison continues where it stopped.

The data paths (``--ptb_dir``, ``--music_path``) of the chosen tasks are checked before anything is
launched or any directory is made. The command ends with one line counting the runs
(``12 points: 10 completed, 1 diverged, 1 failed; failed: <run dir> (ValueError: ...)``) and exits
with status 1 when a run failed or when no run completed (no table). A diverged run does not fail
a comparison: divergence is a legitimate outcome of a grid point (too high a learning rate), and
the table counts it; ``experiments.sweep run`` treats it as a failure instead.
"""

import dataclasses
import os
import sys
import time

from absl import app, flags

from experiments import cli
from rnn_jax import jozefowicz, report, sweep
from rnn_jax.errors import InputError
from rnn_jax.sweep import compare

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tasks.py")

_PRESET = flags.DEFINE_enum("preset", "quick", list(jozefowicz.PRESETS), "Protocol size (see rnn_jax/jozefowicz.py).")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Sweep directory (default runs/compare_<preset>).")
_CELLS = flags.DEFINE_list("cells", list(jozefowicz.DEFAULT_CELLS), "Cells (registry names, options after ':').")
_TASKS = flags.DEFINE_list("tasks", None, "Tasks (default: the preset's): arithmetic, xml, memorization, ptb, music.")
_SETTINGS = flags.DEFINE_integer("settings", None,
                                 "N: hyperparameter settings per cell and task (default: the preset's).")
_SEEDS = flags.DEFINE_integer("seeds", None, "K: seeds of the best setting (default: the preset's).")
_STEPS = flags.DEFINE_integer("steps", None, "Training steps per run (default: the preset's).")
_BUDGET = flags.DEFINE_integer("budget", None, "Parameters per model (default: the preset's); the hidden size follows.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", None, ["sgd", "adam"], "Optimizer (default: the preset's).")
_WORKERS = flags.DEFINE_integer("workers", None, "Parallel runs (default: the number of cores).")
_PTB_DIR = flags.DEFINE_string("ptb_dir", None, "Directory with ptb.{train,valid,test}.txt (task ptb).")
_MUSIC = flags.DEFINE_string("music_path", None, "Piano-roll JSON or pickle file (task music).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the points and exit.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    preset = jozefowicz.PRESETS[_PRESET.value]
    changes = {}
    if _SETTINGS.value is not None:
        changes.update(settings=_SETTINGS.value, fixed=None)
    for name, flag in (("seeds", _SEEDS), ("steps", _STEPS), ("optimizer", _OPTIMIZER), ("budget", _BUDGET)):
        if flag.value is not None:
            changes[name] = flag.value
    for name in ("settings", "seeds", "steps", "budget"):
        if name in changes and changes[name] < 1:
            raise InputError(f"--{name}={changes[name]}: must be an integer >= 1")
    if changes:
        preset = dataclasses.replace(preset, **changes)
    data_paths = {"ptb": _PTB_DIR.value, "music": _MUSIC.value}
    sweep_dir = _SWEEP_DIR.value or os.path.join("runs", f"compare_{_PRESET.value}")
    try:  # every check before anything is launched or made
        cells = compare.check_cells(_CELLS.value)
        tasks = compare.check_tasks(_TASKS.value or list(preset.tasks), data_paths)  # data paths too
        search = compare.search_points(preset, cells, tasks, data_paths)
        if not _DRY_RUN.value:
            compare.check_sweep_dir(sweep_dir, preset)
    except InputError:
        raise  # one line (experiments.cli)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print(f"{len(cells)} cells x {len(tasks)} tasks x {len(search) // (len(cells) * len(tasks))} "
          f"setting(s) = {len(search)} runs of {preset.steps} steps, then {preset.seeds - 1} more "
          f"seed(s) of each best setting; sweep dir {sweep_dir}", flush=True)
    if _DRY_RUN.value:
        for p in search:
            print(f"{sweep.point_name(p)}  {compare.describe(p)}")
        return
    started = time.time()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    statuses = sweep.launch_local(sweep_dir, CONFIG, search, workers=_WORKERS.value, log=log,
                                  describe=compare.describe)
    if preset.seeds > 1:
        reruns = compare.seed_points(search, compare.read_results(sweep_dir, search), preset.seeds)
        statuses.update(sweep.launch_local(sweep_dir, CONFIG, reruns, workers=_WORKERS.value, log=log,
                                           describe=compare.describe))
    line, ok = sweep.summarize(sweep_dir, statuses, diverged_ok=True)
    minutes = (time.time() - started) / 60
    try:
        out = report.write_report(sweep_dir, cells=cells, tasks=tasks)
    except report.NoCompletedRuns as e:
        print(e, file=sys.stderr, flush=True)
        print(f"{minutes:.1f} min\n{line}")
        sys.exit(1)
    print(out["markdown"])
    print(f"\n{minutes:.1f} min; tables and curves in {os.path.join(sweep_dir, 'report')}")
    print(line)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
