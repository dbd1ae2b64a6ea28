r"""Run a config file's sweep (``sweep(add)``) on this machine, or show where it stands.

    python -m experiments.sweep run --config=experiments/configs/char_lm.py \
        --arg=steps=500 --config_override=data.path=../shared/data/tinyshakespeare.txt --sweep_dir=runs/sweep1
    python -m experiments.sweep status --sweep_dir=runs/sweep1
    python -m experiments.sweep run --launcher=slurm --slurm_array_parallelism=8 ...   # a job array

Each point trains in ``<sweep_dir>/runs/<name>`` (the name is a hash of the point's overrides);
``--workers`` points run at once (default: the number of cores). Running again skips completed and
diverged points and retries failed or interrupted ones (they resume from their checkpoints).
With ``--config_override=trials_per_program=K``, points that differ only in seed, learning rate,
clip norm or init scales train K at a time as vmapped trials (``rnn_jax.trials``).

``run`` ends with one line (``3 points: 1 completed, 1 diverged, 1 failed; failed: <run dir>
(ValueError: ...); diverged: <run dir> (at step 40)``) and exits with status 1 when a point failed
or diverged. Here a diverged point is unexpected: a plain sweep asks every point to train to its
end, so a divergence (a non-finite or runaway loss) fails the sweep as a failure does, although a relaunch
does not rerun it (it would diverge again). ``--allow_diverged`` makes divergence a legitimate
outcome, as it is in a comparison (``experiments.compare``: a grid point whose learning rate is
too high diverges, and the table counts it). Data files the points read (``data.path``,
``data.dir``) are checked before anything is launched. With ``--launcher=slurm`` the command
exits once the array is submitted; when there is nothing left to submit it prints the same line.
"""

import collections
import json
import os
import sys

from absl import app, flags

from experiments import cli
from rnn_jax import sweep
from rnn_jax.errors import InputError

_CONFIG = flags.DEFINE_string("config", None, "Config file with get_config(arg) and sweep(add).")
_ARG = flags.DEFINE_string("arg", None, "The config's arg string for every point.")
_OVERRIDES = flags.DEFINE_multi_string("config_override", [], "field=value set on every point (JSON values).")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Sweep directory.")
_WORKERS = flags.DEFINE_integer("workers", None, "Parallel runs (default: the number of cores).")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "slurm"], "Where the points run.")
_PARTITION = flags.DEFINE_string("slurm_partition", "", "SLURM partition (default: the cluster's).")
_TIME = flags.DEFINE_integer("slurm_time_min", 60, "Time limit per task (minutes); at the limit a task is requeued.")
_CPUS = flags.DEFINE_integer("slurm_cpus_per_task", 2, "CPUs per task.")
_GPUS = flags.DEFINE_integer("slurm_gpus_per_task", 0, "GPUs per task.")
_MEM = flags.DEFINE_float("slurm_mem_gb", 0.0, "Memory per task in GB (0: the partition's default).")
_PARALLEL = flags.DEFINE_integer("slurm_array_parallelism", 16, "Array tasks running at once.")
_ALLOW_DIVERGED = flags.DEFINE_bool("allow_diverged", False,
                                    "Diverged points do not fail the sweep (exit 0 unless a point failed).")
flags.mark_flag_as_required("sweep_dir")


def _parse_override(text):
    key, sep, value = text.partition("=")
    if not sep:
        raise app.UsageError(f"--config_override {text!r}: expected field=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value  # a bare string


def main(argv):
    if len(argv) != 2 or argv[1] not in ("run", "status"):
        raise app.UsageError("give one command: run or status")
    if argv[1] == "status":
        try:
            states = sweep.sweep_status(_SWEEP_DIR.value)
        except FileNotFoundError as e:
            raise app.UsageError(str(e)) from None
        for name, state in sorted(states.items()):
            print(f"{name}  {state}")
        counts = collections.Counter(states.values())
        print(", ".join(f"{counts[s]} {s}" for s in sweep.local.STATES if counts[s]))
        return
    if not _CONFIG.value:
        raise app.UsageError("run needs --config")
    common = dict(_parse_override(o) for o in _OVERRIDES.value)
    try:
        points = [{**p, **common} for p in sweep.sweep_points(_CONFIG.value)]
    except InputError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    sweep.points.check_data_paths(_CONFIG.value, _ARG.value, points)  # before the sweep dir is made
    if _LAUNCHER.value == "slurm":
        from rnn_jax.sweep import slurm
        resources = slurm.SlurmResources(partition=_PARTITION.value, time_min=_TIME.value,
                                         cpus_per_task=_CPUS.value, gpus_per_task=_GPUS.value,
                                         mem_gb=_MEM.value, array_parallelism=_PARALLEL.value)
        try:
            ids = slurm.launch_slurm(_SWEEP_DIR.value, _CONFIG.value, points, base_arg=_ARG.value,
                                     resources=resources)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
        print(f"{len(ids)} task(s) submitted; follow with: python -m experiments.sweep status "
              f"--sweep_dir={_SWEEP_DIR.value}")
        if ids:
            return
        states = sweep.sweep_status(_SWEEP_DIR.value)  # nothing to submit: where the points stand
        statuses = {n: states[n] for n in dict.fromkeys(map(sweep.point_name, points)) if n in states}
    else:
        statuses = sweep.launch_local(_SWEEP_DIR.value, _CONFIG.value, points, base_arg=_ARG.value,
                                      workers=_WORKERS.value)
    line, ok = sweep.summarize(_SWEEP_DIR.value, statuses, diverged_ok=_ALLOW_DIVERGED.value)
    print(line)
    print(f"run dirs in {os.path.join(_SWEEP_DIR.value, 'runs')}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
