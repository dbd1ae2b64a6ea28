"""The Jozefowicz et al. (2015) comparison as sweep points: search, pick the best, rerun with seeds.

Stage 1 (search): for every task and cell, the same ``N`` settings (drawn once from the preset's
space, or the preset's fixed setting), seed 0, hidden size from the parameter budget.
Stage 2 (seeds): for every (cell, task), the setting with the best validation metric is trained
again with seeds ``1..K-1``. Both stages are points of one sweep directory over
``experiments/configs/tasks.py``; tables come from its run directories (``rnn_jax.report``).
The presets (:data:`PRESETS`) and the default cells are in :mod:`rnn_jax.jozefowicz`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Mapping, Sequence

from rnn_jax import cells as cells_lib
from rnn_jax.data import registry
from rnn_jax.data import tasks as tasks_lib
from rnn_jax.errors import InputError
from rnn_jax.jozefowicz import DEFAULT_CELLS, PRESETS, Preset  # noqa: F401 (importable from here too)
from rnn_jax.sweep import hparams
from rnn_jax.sweep import points as points_lib

# the Jozefowicz streams, the file-based LM tasks, then every registered task of another model kind
# every registered example task except karpathy (it reads the user's dataset: train it with caption.py)
EXAMPLE_TASKS = tuple(name for name in registry.names() if registry.get(name).model_kind != "lm" and name != "karpathy")
TASKS = tasks_lib.TASKS + ("ptb", "music") + EXAMPLE_TASKS


def check_cells(cells: Sequence[str]) -> list:
    out = []
    for spec in cells:
        try:
            cells_lib.parse_spec(spec)
        except ValueError as e:
            raise InputError(f"cell {spec!r}: {e}") from None
        out.append(spec)
    if not out:
        raise InputError("no cells given")
    return out


def check_tasks(tasks: Sequence[str], data_paths: Mapping[str, str]) -> list:
    """The tasks, checked: known, not repeated, and the data path of each that reads files given
    and readable (:func:`check_data_paths`); ``InputError`` otherwise."""
    out = []
    for task in tasks:
        if task not in TASKS or task in out:
            raise InputError(f"unknown or repeated task {task!r}; choose from {', '.join(TASKS)}")
        if task in ("ptb", "music") and not data_paths.get(task):
            raise InputError(f"task {task!r} reads files: give its data path ({DATA_FLAGS[task]})")
        out.append(task)
    if not out:
        raise InputError("no tasks given")
    check_data_paths(out, data_paths)
    return out


DATA_FLAGS = {"ptb": "--ptb_dir", "music": "--music_path"}


def check_data_paths(tasks: Sequence[str], data_paths: Mapping[str, str]) -> None:
    """Before anything is launched: the data path of every task that reads files exists and is
    readable (``--ptb_dir``: a directory with ``ptb.{train,valid,test}.txt``; ``--music_path``: a
    file). Raises ``InputError`` naming the flag and the path."""
    for task in tasks:
        path = data_paths.get(task)
        if task == "ptb" and path:
            points_lib.check_ptb_dir(DATA_FLAGS[task], path)
        elif task == "music" and path:
            points_lib.check_data_file(DATA_FLAGS[task], path)


def check_sweep_dir(sweep_dir: str, preset: Preset) -> None:
    """Record the preset in ``<sweep_dir>/compare.json``; refuse a directory made with another one
    (its runs would mix into the table). Cells and tasks may differ: the table lists the asked ones."""
    path = os.path.join(sweep_dir, "compare.json")
    mine = json.loads(json.dumps(dataclasses.asdict(preset)))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise InputError(f"{sweep_dir} holds a comparison made with other settings ({', '.join(diff)}"
                             f" differ); use another --sweep_dir")
        return
    os.makedirs(sweep_dir, exist_ok=True)
    tmp = path + f".tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(mine, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def settings_for(preset: Preset, seed: int = 0) -> list:
    if preset.fixed is not None:
        return [dict(preset.fixed)]
    space = hparams.search_space(preset.optimizer, preset.max_layers)
    return hparams.sample_settings(seed, preset.settings, space)


@functools.lru_cache(maxsize=None)
def task_vocab_size(task: str) -> int:
    """The vocabulary size of a generated task (``rnn_jax.data.tasks``), from the task itself: the
    vocabulary of a tiny corpus of it (one block of examples per split, milliseconds). A task's
    vocabulary is its character set, the same for every option value (digits, distractors, ...),
    so this is the size a run of the task writes to its ``vocab.json``."""
    return len(tasks_lib.task_corpus(task, num_chars={split: 1 for split in tasks_lib.SPLITS}).vocab)


@functools.lru_cache(maxsize=None)
def example_input_size(task: str) -> int:
    """For the parameter budget of a registered example task: its input vocabulary (token inputs),
    else its feature size, from the task object with default options."""
    obj = registry.make(task)
    size = getattr(obj, "vocab_size", None) or getattr(obj, "input_size", None)
    if size is None and hasattr(obj, "vocab"):
        size = len(obj.vocab)
    return int(size or 1)


def _vocab_size(task: str, data_paths: Mapping[str, str]) -> int:
    if task in tasks_lib.TASKS:
        return task_vocab_size(task)
    if task in EXAMPLE_TASKS:
        return example_input_size(task)
    if task == "ptb":
        return 10_000
    return 88  # piano range; the budget is approximate for music


def _fmt(x) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def point(preset: Preset, task: str, cell: str, setting: Mapping, seed: int,
          data_paths: Mapping[str, str]) -> dict:
    """The sweep point (``arg`` of experiments/configs/tasks.py, and ``cell``) of one run."""
    if task in ("ptb", "music"):
        path = os.path.abspath(data_paths[task])
        if "," in path or "=" in path:
            raise InputError(f"the {task} data path {path!r} contains ',' or '=': the config arg "
                             f"string cannot carry it; move or link the data to a plain path")
    try:
        hidden = hparams.hidden_for_budget(cell, int(setting["num_layers"]), _vocab_size(task, data_paths),
                                           preset.budget)
    except ValueError as e:
        raise InputError(f"task {task}: {e}; raise the parameter budget (--budget)") from None
    arg = [f"task={task}", f"hidden={hidden}", f"layers={setting['num_layers']}",
           f"init={_fmt(float(setting['init_scale']))}", f"lr={_fmt(float(setting['learning_rate']))}",
           f"max_norm={_fmt(float(setting['max_norm']))}", f"optimizer={preset.optimizer}",
           f"init_style={preset.init_style}", f"steps={preset.steps}", f"eval_every={preset.eval_every}",
           f"train_chars={preset.train_chars}", f"digits={preset.digits}",
           f"distractors={preset.distractors}", f"negative={_fmt(float(preset.negative))}",
           f"seed={seed}"]
    if task in ("ptb", "music"):
        arg.append(f"data_path={path}")
    if preset.extra:
        arg.append(preset.extra)
    return {"arg": ",".join(arg), "cell": cell}


def search_points(preset: Preset, cells: Sequence[str], tasks: Sequence[str],
                  data_paths: Mapping[str, str] | None = None, settings_seed: int = 0) -> list:
    """Stage 1: every task × cell × setting (the same settings for every cell), seed 0."""
    data_paths = dict(data_paths or {})
    settings = settings_for(preset, settings_seed)
    return [point(preset, task, cell, s, 0, data_paths) for task in tasks for cell in cells for s in settings]


def describe(p: Mapping) -> str:
    arg = dict(item.split("=", 1) for item in p["arg"].split(","))
    return (f"{p['cell']} on {arg['task']}: {arg['layers']}x{arg['hidden']}, lr {arg['lr']}, "
            f"init {arg['init']}, clip {arg['max_norm']}, seed {arg['seed']}")


def _score(result: Mapping) -> float | None:
    """Higher is better: validation accuracy for generated tasks, minus validation loss otherwise."""
    if not result or result.get("status") != "completed":
        return None
    select = result.get("select_by") or "valid_loss"
    if select != "valid_loss":  # an accuracy: valid_accuracy, valid_sequence_accuracy, ...
        v = result.get(f"best_{select}")
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    v = result.get("best_valid_loss")
    return -float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def seed_points(search: Sequence[Mapping], results: Mapping[str, Mapping], seeds: int) -> list:
    """Stage 2: seeds ``1..seeds-1`` of each (cell, task)'s best search point.

    ``results`` maps a point's canonical name (``rnn_jax.sweep.point_name``) to its result.json.
    """
    from rnn_jax.sweep.points import point_name
    best: dict = {}
    for p in search:
        score = _score(results.get(point_name(p)))
        if score is None:
            continue
        task = dict(item.split("=", 1) for item in p["arg"].split(","))["task"]
        key = (p["cell"], task)
        if key not in best or score > best[key][0]:
            best[key] = (score, p)
    out = []
    for _, p in best.values():
        for seed in range(1, seeds):
            arg = ",".join(f"seed={seed}" if item.startswith("seed=") else item for item in p["arg"].split(","))
            out.append({"arg": arg, "cell": p["cell"]})
    return out


def read_results(sweep_dir: str, points: Sequence[Mapping]) -> dict:
    from rnn_jax.sweep.points import point_name
    out = {}
    for p in points:
        name = point_name(p)
        try:
            with open(os.path.join(sweep_dir, "runs", name, "result.json"), encoding="utf-8") as f:
                out[name] = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    return out
