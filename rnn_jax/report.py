r"""Plots and tables built from run directories only (``config.json``, ``metrics.jsonl``, ``result.json``).

Comparison tables in the style of Jozefowicz, Zaremba & Sutskever (ICML 2015), Table 1:

    runs = find_runs("runs/sweep")          # every directory below that holds a config.json
    comp = comparison(runs)                  # comp[cell][task] -> numbers of the best setting
    print(table_markdown(comp))
    write_report("runs/sweep")               # table.md/.tex/.csv, comparison.json, curves_<task>.png

Protocol of :func:`comparison`, per (cell, task): runs are grouped by *setting* (the config
without the seed and without fields that only change logging, checkpointing or data paths); the
search score of a setting is the validation metric (:data:`TASK_METRICS`) of its lowest-seed
completed run, and the best setting is the one with the best score (ties: the one with more
completed seeds, then the lower setting hash). ``best`` is the test metric of that lowest-seed run;
``mean`` and ``std`` are over all completed seeds of the best setting, ``std`` being the population
standard deviation (``ddof=0``, so 0 with one seed). Diverged and failed runs count as tried but are
never best; runs without a ``result.json`` are pending (still running) and are left out of the
tables.

A directory with a ``result.json`` but no ``config.json`` is a run that failed before writing its
config (a missing data file, a bad cell option): it has no cell or task, so it is in no table, but
:func:`write_report` counts it among the failed runs. When no run completed there is nothing to
tabulate: :func:`write_report` raises :class:`NoCompletedRuns`, whose message counts the run
directories by status and names the first failures, e.g. ``runs/x: 4 run directories, none
completed (4 failed: runs/p-ab12 (ValueError: ...), ...); no table``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from typing import Iterable, Sequence

from rnn_jax import rundir
from rnn_jax.errors import InputError
from rnn_jax.jozefowicz import PAPER_TABLE1, PAPER_TASKS  # the paper's Table 1; importable from here too
from rnn_jax.rundir import flatten, json_safe, read_json, read_metrics


class NoCompletedRuns(ValueError):
    """A sweep directory whose run directories hold no completed run: there is no table to make.
    The message counts the runs by status and names the first failures."""


def read_result(workdir: str) -> dict | None:
    """``result.json`` of a run directory (``None`` when it has none yet)."""
    return read_json(os.path.join(workdir, "result.json"))


def learning_curves(workdir: str):
    """``(train, valid)``: lists of ``(step, wall-clock seconds since the run began or None, loss)``.

    The seconds are the run's cumulative wall clock at each evaluation (``elapsed_s``: training,
    evaluation, checkpointing and compilation, summed over resumed sessions).
    """
    train, valid = [], []
    for r in read_metrics(workdir):
        if "valid_loss" in r:
            valid.append((r["step"], r.get("elapsed_s"), r["valid_loss"]))
        elif "loss" in r and isinstance(r["loss"], (int, float)):
            train.append((r["step"], None, r["loss"]))
    return train, valid


def plot_runs(workdirs: Sequence[str], out_path: str, labels: Sequence[str] | None = None,
              x: str = "step", smooth: int = 20, title: str | None = None) -> str:
    """One PNG with the training (thin) and validation (markers) loss of each run.

    ``x`` is ``"step"`` or ``"minutes"`` (wall-clock minutes at each evaluation; training points
    are then placed by linear interpolation between evaluations). ``smooth`` averages the
    training loss over that many steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if x not in ("step", "minutes"):
        raise ValueError(f"x must be 'step' or 'minutes', got {x!r}")
    labels = list(labels) if labels is not None else [os.path.basename(os.path.normpath(w)) for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"got {len(labels)} labels for {len(workdirs)} runs")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for workdir, label in zip(workdirs, labels):
        train, valid = learning_curves(workdir)
        if not train and not valid:
            raise ValueError(f"{workdir} has no metrics to plot")
        color = ax._get_lines.get_next_color()
        vsteps = np.array([s for s, _, _ in valid], float)
        vx = vsteps if x == "step" else np.array([(e or 0.0) / 60 for _, e, _ in valid])
        if train:
            steps = np.array([s for s, _, _ in train], float)
            losses = np.array([v for _, _, v in train])
            k = max(1, min(smooth, len(losses)))
            smoothed = np.convolve(losses, np.ones(k) / k, mode="valid")
            tx = steps[k - 1:]
            if x == "minutes":
                tx = np.interp(tx, np.concatenate([[0], vsteps]), np.concatenate([[0], vx])) if len(vx) else tx * 0
            ax.plot(tx, smoothed, color=color, lw=0.8, alpha=0.6, label=f"{label} train")
        if valid:
            ax.plot(vx, [v for _, _, v in valid], "o-", color=color, ms=3, label=f"{label} valid")
    ax.set_xlabel("training step" if x == "step" else "minutes")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


# ----------------------------------------------------------------------------- comparison tables

# Fields that do not change what a run computes, left out of a run's setting with the top-level
# ``seed``. The data paths are kept: runs on different files (JSB vs Nottingham) are different settings.
NON_EXPERIMENT_FIELDS = rundir.NON_EXPERIMENT_FIELDS  # logging and execution fields (rundir.FIELD_KINDS)

CANONICAL_CELLS = ("rnn", "lstm", "lstm_f", "lstm_i", "lstm_o", "lstm_b", "gru", "mut1", "mut2", "mut3")
CANONICAL_TASKS = ("arithmetic", "xml", "memorization", "ptb", "music", "char")


@dataclasses.dataclass(frozen=True)
class TaskMetric:
    """How a task is scored: ``test`` (and optional ``second``) are ``result.json`` keys shown in
    the tables; ``valid`` is the ``result.json`` key that chooses the best setting; ``curve`` is the
    ``metrics.jsonl`` key plotted against the step."""
    test: str
    valid: str
    higher_is_better: bool
    valid_higher_is_better: bool
    curve: str
    label: str
    second: str | None = None
    second_label: str | None = None
    decimals: int = 3


_ACC = dict(valid="best_valid_accuracy", higher_is_better=True, valid_higher_is_better=True,
            curve="valid_accuracy")
_LOSS = dict(valid="best_valid_loss", higher_is_better=False, valid_higher_is_better=False,
             curve="valid_loss")
TASK_METRICS = {
    "arithmetic": TaskMetric(test="test_accuracy", label="acc", second="test_answer_accuracy",
                             second_label="answer acc", **_ACC),
    "xml": TaskMetric(test="test_accuracy", label="acc", second="test_predictable_accuracy",
                      second_label="predictable acc", **_ACC),
    "memorization": TaskMetric(test="test_accuracy", label="acc", **_ACC),
    "ptb": TaskMetric(test="test_perplexity", label="test ppl", decimals=2, **_LOSS),
    "music": TaskMetric(test="test_loss", label="test NLL/step", **_LOSS),
    "char": TaskMetric(test="test_loss", label="test loss", **_LOSS),
}
DEFAULT_METRIC = TaskMetric(test="test_loss", label="test loss", **_LOSS)  # tasks not listed above


def task_metric(task: str) -> TaskMetric:
    """The table metric of ``task``: listed above, or a registered task's first higher-is-better
    metric (:mod:`rnn_jax.data.registry`; e.g. ``sequence_accuracy`` for seq2seq tasks)."""
    if task in TASK_METRICS:
        return TASK_METRICS[task]
    from rnn_jax.data import registry

    entry = registry.TASKS.get(task)
    if entry is None or not entry.metrics:
        return DEFAULT_METRIC
    first, second = entry.metrics[0], (entry.metrics[1] if len(entry.metrics) > 1 else None)
    short = {"accuracy": "acc", "sequence_accuracy": "seq acc", "token_accuracy": "token acc"}
    return TaskMetric(test=f"test_{first}", label=short.get(first, first),
                      second=f"test_{second}" if second else None,
                      second_label=short.get(second, second) if second else None,
                      valid=f"best_valid_{first}", higher_is_better=True, valid_higher_is_better=True,
                      curve=f"valid_{first}")


def setting_of(config: dict) -> str:
    """Short stable hash of ``config`` without ``seed`` and :data:`NON_EXPERIMENT_FIELDS`
    (sha256 of the canonical JSON of the flattened config, first 12 hex digits)."""
    flat = {k: v for k, v in flatten(config).items() if k != "seed" and k not in NON_EXPERIMENT_FIELDS}
    text = json.dumps(flat, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def base_cell(spec: str) -> str:
    """``"mut1:input_term=linear"`` -> ``"mut1"``."""
    return str(spec).partition(":")[0].strip()


def _num(v) -> float | None:
    """A ``result.json`` value as a float (strings "nan"/"inf" included); None when absent."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


def _finite(v) -> bool:
    return v is not None and math.isfinite(v)


@dataclasses.dataclass
class Run:
    """One run directory: its config, its ``result.json`` (None while pending or running)."""
    workdir: str
    config: dict
    result: dict | None
    cell: str
    task: str
    seed: int
    setting: str

    @property
    def status(self) -> str:
        if self.result is None:
            return "pending"
        return str(self.result.get("status", "failed"))


def _run_dirs(sweep_dir: str):
    """``(path, has_config)`` of every directory at or below ``sweep_dir`` holding a
    ``config.json`` or a ``result.json``, without descending into one."""
    if not os.path.isdir(sweep_dir):
        raise InputError(f"{sweep_dir} is not a directory")
    for root, dirs, files in os.walk(sweep_dir):
        dirs.sort()
        if "config.json" in files or "result.json" in files:
            dirs[:] = []  # checkpoints and other subdirectories of a run are not runs
            yield root, "config.json" in files


def find_unconfigured(sweep_dir: str) -> list[tuple[str, dict]]:
    """``(workdir, result)`` of the runs that stopped before writing their ``config.json``: a
    directory at or below ``sweep_dir`` with a ``result.json`` (a failure, usually) and no config."""
    out = []
    for root, has_config in _run_dirs(sweep_dir):
        if not has_config:
            result = read_json(os.path.join(root, "result.json"))
            out.append((root, result if isinstance(result, dict) else {"status": "failed"}))
    return sorted(out)


def find_runs(sweep_dir: str) -> list[Run]:
    """Every directory at or below ``sweep_dir`` that holds a ``config.json`` (not descending into
    a run directory), sorted by path. ``sweep.json`` and other files are ignored; a run whose
    ``result.json`` is missing (or unreadable) has ``result=None`` (pending/running)."""
    runs = []
    for root, has_config in _run_dirs(sweep_dir):
        if not has_config:
            continue
        config = read_json(os.path.join(root, "config.json"))
        if not isinstance(config, dict):
            continue  # a torn or foreign config.json
        flat = flatten(config)
        result = read_json(os.path.join(root, "result.json"))
        result = result if isinstance(result, dict) else None
        task = flat.get("data.kind") or (result or {}).get("task") or "unknown"
        seed = flat.get("seed", 0)
        runs.append(Run(workdir=root, config=config, result=result, cell=str(flat.get("cell", "unknown")).strip(),
                        task=str(task), seed=int(seed) if isinstance(seed, (int, float)) else 0,
                        setting=setting_of(config)))
    return sorted(runs, key=lambda r: r.workdir)


def _cell_key(spec: str):
    base = base_cell(spec)
    rank = CANONICAL_CELLS.index(base) if base in CANONICAL_CELLS else len(CANONICAL_CELLS)
    return (rank, base if rank == len(CANONICAL_CELLS) else "", spec)


def _task_key(task: str):
    rank = CANONICAL_TASKS.index(task) if task in CANONICAL_TASKS else len(CANONICAL_TASKS)
    return (rank, task)


def _stats(values: list[float]):
    """``(mean, population std, n)``; None, None, 0 without values."""
    if not values:
        return None, None, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if all(map(math.isfinite, values)) else math.nan
    return mean, (0.0 if len(values) == 1 and math.isfinite(mean) else std), len(values)


def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def comparison(runs: Iterable[Run]) -> dict:
    """``comp[cell][task]`` -> a dict per (cell, task) that has at least one finished run.

    Keys: ``metric`` (result key of the test metric), ``higher_is_better``, ``best`` (test metric
    of the lowest-seed completed run of the best setting), ``mean``/``std``/``n``/``seeds`` (over
    the completed seeds of the best setting; ``std`` with ``ddof=0``), ``second_metric`` and
    ``second_best``/``second_mean``/``second_std``/``second_n``, ``select_metric`` and
    ``best_valid`` (the search score), ``best_setting``, ``best_workdir``, ``best_seed``,
    ``best_varied`` (the best setting's values of the config fields that differ between the
    settings tried), ``settings`` (number tried: finished runs of any status), ``completed``,
    ``diverged``, ``failed``, ``pending``, ``paper`` (Table 1 of the paper, or None).
    Numbers are None where missing. With several completed runs of the same setting and seed,
    the first by path is used.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.cell, r.task), []).append(r)
    comp: dict[str, dict[str, dict]] = {}
    for (cell, task) in sorted(groups, key=lambda ct: (_cell_key(ct[0]), _task_key(ct[1]))):
        group = sorted(groups[(cell, task)], key=lambda r: (r.seed, r.workdir))
        finished = [r for r in group if r.result is not None]
        if not finished:
            continue  # only pending runs: nothing to report yet
        m = task_metric(task)
        completed = [r for r in finished if r.status == "completed"]
        by_setting: dict[str, dict[int, Run]] = {}
        for r in completed:
            by_setting.setdefault(r.setting, {}).setdefault(r.seed, r)
        best_setting, best_score = None, None
        for setting in sorted(by_setting):
            first = by_setting[setting][min(by_setting[setting])]
            score = _num(first.result.get(m.valid))
            if not _finite(score):
                continue
            tie_wins = (best_score is not None and score == best_score
                        and len(by_setting[setting]) > len(by_setting[best_setting]))
            if best_score is None or _better(score, best_score, m.valid_higher_is_better) or tie_wins:
                # ties: the setting with more seeds (the one a comparison reran), then the lower hash
                best_setting, best_score = setting, score
        entry = dict(cell=cell, task=task, metric=m.test, higher_is_better=m.higher_is_better,
                     second_metric=m.second, select_metric=m.valid,
                     select_higher_is_better=m.valid_higher_is_better, best=None, mean=None, std=None,
                     n=0, seeds=[], second_best=None, second_mean=None, second_std=None, second_n=0,
                     best_valid=best_score, best_setting=best_setting, best_workdir=None, best_seed=None,
                     best_varied={}, settings=len({r.setting for r in finished}),
                     completed=len(completed), diverged=sum(r.status == "diverged" for r in finished),
                     failed=sum(r.status not in ("completed", "diverged") for r in finished),
                     pending=len(group) - len(finished),
                     paper=PAPER_TABLE1.get(base_cell(cell), {}).get(task))
        if best_setting is not None:
            seeds = by_setting[best_setting]
            chosen = [seeds[s] for s in sorted(seeds)]
            lead = chosen[0]
            entry.update(best_workdir=lead.workdir, best_seed=lead.seed, seeds=sorted(seeds))
            entry["best"] = _num(lead.result.get(m.test))
            values = [v for v in (_num(r.result.get(m.test)) for r in chosen) if v is not None]
            entry["mean"], entry["std"], entry["n"] = _stats(values)
            if m.second:
                entry["second_best"] = _num(lead.result.get(m.second))
                values = [v for v in (_num(r.result.get(m.second)) for r in chosen) if v is not None]
                entry["second_mean"], entry["second_std"], entry["second_n"] = _stats(values)
            flats = {}
            for r in finished:
                flats.setdefault(r.setting, {k: v for k, v in flatten(r.config).items()
                                             if k != "seed" and k not in NON_EXPERIMENT_FIELDS})
            keys = set().union(*flats.values())
            varied = sorted(k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str)
                                                    for f in flats.values()}) > 1)
            entry["best_varied"] = {k: flats[best_setting].get(k) for k in varied}
        comp.setdefault(cell, {})[task] = entry
    return comp


def _columns(comp: dict, tasks, cells, second: bool):
    if tasks is None:
        tasks = sorted({t for per_task in comp.values() for t in per_task}, key=_task_key)
    if cells is None:
        cells = sorted(comp, key=_cell_key)
    cols = []  # (task, kind): kind in "main", "second", "paper"
    for task in tasks:
        m = task_metric(task)
        cols.append((task, "main"))
        if second and m.second:
            cols.append((task, "second"))
        if task in PAPER_TASKS:
            cols.append((task, "paper"))
    return list(tasks), list(cells), cols


def _header(task: str, kind: str) -> str:
    m = task_metric(task)
    return {"main": f"{task} {m.label}", "second": f"{task} {m.second_label}", "paper": f"{task} (paper)"}[kind]


def _fmt(x, d: int) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _cell_text(comp: dict, cell: str, task: str, kind: str, pm: str = "±") -> str:
    m = task_metric(task)
    if kind == "paper":
        paper = PAPER_TABLE1.get(base_cell(cell), {}).get(task)
        return _fmt(paper, 3)
    e = comp.get(cell, {}).get(task)
    if e is None:
        return "–"
    best, mean, std, n = ((e["best"], e["mean"], e["std"], e["n"]) if kind == "main"
                          else (e["second_best"], e["second_mean"], e["second_std"], e["second_n"]))
    if n == 0 and best is None:
        return "–"
    d = m.decimals
    if n < 2:  # one seed: no spread to show
        return f"{_fmt(best, d)} (n={n})"
    return f"{_fmt(best, d)} ({_fmt(mean, d)} {pm} {_fmt(std, d)}, n={n})"


def _notes(tasks: Sequence[str]) -> str:
    lower = [t for t in tasks if not task_metric(t).higher_is_better]
    text = ("Test metric of each cell's best setting (chosen by the validation metric of its lowest-seed "
            "run): best (mean ± std over the completed seeds of that setting, n seeds); std is the "
            "population std (ddof=0); with one seed only n is shown. Paper: Table 1 of Jozefowicz, "
            "Zaremba & Sutskever (ICML 2015), for arithmetic and XML only.")
    if lower:
        text += f" Lower is better for {', '.join(lower)}; higher for the accuracies."
    return text


def table_markdown(comp: dict, tasks: Sequence[str] | None = None, cells: Sequence[str] | None = None,
                   second: bool = True, counts: bool = True) -> str:
    """Rows = cells, columns = tasks (plus the second metric and the paper's number where there is
    one); each entry ``best (mean ± std, n=K)``; "–" where missing. With ``counts``, a second table
    gives the settings tried and the diverged and failed runs of each (cell, task)."""
    tasks, cells, cols = _columns(comp, tasks, cells, second)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| cell | " + " | ".join(esc(_header(t, k)) for t, k in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for cell in cells:
        lines.append(f"| {esc(cell)} | " + " | ".join(_cell_text(comp, cell, t, k) for t, k in cols) + " |")
    text = "\n".join(lines) + "\n\n" + _notes(tasks) + "\n"
    if counts:
        lines = ["| cell | " + " | ".join(esc(t) for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
        for cell in cells:
            row = []
            for task in tasks:
                e = comp.get(cell, {}).get(task)
                plural = "" if e is None or e["settings"] == 1 else "s"
                row.append("–" if e is None else
                           f"{e['settings']} setting{plural}, {e['completed']} completed, "
                           f"{e['diverged']} diverged, {e['failed']} failed")
            lines.append(f"| {esc(cell)} | " + " | ".join(row) + " |")
        text += "\nRuns per cell and task:\n\n" + "\n".join(lines) + "\n"
    return text


def _tex(s: str) -> str:
    out = []
    for ch in str(s):
        if ch == "\\":
            out.append(r"\textbackslash{}")
        elif ch in "&%$#_{}":
            out.append("\\" + ch)
        elif ch == "~":
            out.append(r"\textasciitilde{}")
        elif ch == "^":
            out.append(r"\textasciicircum{}")
        elif ch == "–":
            out.append("--")
        else:
            out.append(ch)
    return "".join(out)


def table_latex(comp: dict, tasks: Sequence[str] | None = None, cells: Sequence[str] | None = None,
                second: bool = True) -> str:
    """The table of :func:`table_markdown` (without the counts) as a LaTeX ``tabular``."""
    tasks, cells, cols = _columns(comp, tasks, cells, second)
    lines = [r"\begin{tabular}{l" + "c" * len(cols) + "}", r"\hline",
             "cell & " + " & ".join(_tex(_header(t, k)) for t, k in cols) + r" \\", r"\hline"]
    for cell in cells:
        entries = [_tex(_cell_text(comp, cell, t, k, pm="PLUSMINUS")).replace("PLUSMINUS", r"$\pm$")
                   for t, k in cols]
        lines.append(_tex(cell) + " & " + " & ".join(entries) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("cell", "task", "metric", "higher_is_better", "best", "mean", "std", "n", "seeds",
              "second_metric", "second_best", "second_mean", "second_std", "second_n", "select_metric",
              "best_valid", "settings", "completed", "diverged", "failed", "pending", "paper",
              "best_setting", "best_seed", "best_workdir", "best_varied")


def table_csv(comp: dict, tasks: Sequence[str] | None = None, cells: Sequence[str] | None = None) -> str:
    """One row per (cell, task) present in ``comp`` (columns :data:`CSV_FIELDS`), all numbers in
    full precision; empty where missing; ``seeds`` space-separated, ``best_varied`` as JSON."""
    tasks, cells, _ = _columns(comp, tasks, cells, second=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        for task in tasks:
            e = comp.get(cell, {}).get(task)
            if e is None:
                continue
            row = {k: ("" if e.get(k) is None else e.get(k)) for k in CSV_FIELDS}
            row["seeds"] = " ".join(map(str, e["seeds"]))
            row["best_varied"] = json.dumps(e["best_varied"], sort_keys=True, default=str)
            for k in ("best", "mean", "std", "second_best", "second_mean", "second_std", "best_valid", "paper"):
                if e.get(k) is not None:
                    row[k] = repr(float(e[k]))
            writer.writerow(row)
    return buf.getvalue()


def plot_task_curves(runs: Sequence[Run], comp: dict, out_dir: str, tasks: Sequence[str] | None = None,
                     cells: Sequence[str] | None = None) -> list[str]:
    """For each task, ``<out_dir>/curves_<task>.png``: the validation metric (``valid_accuracy``
    for the generated tasks, else ``valid_loss``) against the step, one line per cell, of the
    lowest-seed run of the cell's best setting. Tasks without any point get no file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, cells, _ = _columns(comp, tasks, cells, second=False)
    by_dir = {r.workdir: r for r in runs}
    paths = []
    for task in tasks:
        m = task_metric(task)
        lines = []
        for cell in cells:
            e = comp.get(cell, {}).get(task)
            if e is None or e["best_workdir"] is None:
                continue
            run = by_dir.get(e["best_workdir"])
            workdir = run.workdir if run is not None else e["best_workdir"]
            pts = [(r["step"], _num(r[m.curve])) for r in read_metrics(workdir)
                   if m.curve in r and isinstance(r.get("step"), (int, float))]
            pts = [(s, v) for s, v in pts if v is not None]
            if pts:
                lines.append((cell, e["best_seed"], pts))
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for cell, seed, pts in lines:
            ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", ms=3, label=cell)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"validation {m.curve.replace('valid_', '')}")
        ax.set_title(f"{task}: best setting of each cell (lowest seed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"curves_{task}.png")
        rundir.save_figure_atomic(fig, path)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(sweep_dir: str, out_dir: str | None = None, tasks: Sequence[str] | None = None,
                 cells: Sequence[str] | None = None) -> dict:
    """Builds everything from the run directories below ``sweep_dir`` and writes, each file
    atomically, into ``out_dir`` (default ``<sweep_dir>/report``): ``table.md``, ``table.tex``,
    ``table.csv``, ``comparison.json`` (strict JSON: non-finite numbers as strings; every
    (cell, task), not filtered) and ``curves_<task>.png``. ``tasks``/``cells`` order and filter the
    tables and plots. Returns ``{"markdown", "table_md", "table_tex", "table_csv",
    "comparison_json", "curves", "comparison"}`` (file paths, the Markdown text, the comparison).
    The result also has ``failed``: ``(workdir, error)`` of every failed run, those without a
    config included. Raises ``InputError`` when there is no run directory and
    :class:`NoCompletedRuns` when no run completed."""
    runs = find_runs(sweep_dir)
    early = find_unconfigured(sweep_dir)
    if not runs and not early:
        raise InputError(f"no run directories (directories with a config.json) under {sweep_dir}")
    failed = failed_runs(runs, early)
    if not any(r.status == "completed" for r in runs):
        raise NoCompletedRuns(no_table_message(sweep_dir, runs, early))
    out_dir = out_dir or os.path.join(sweep_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    comp = comparison(runs)
    markdown = table_markdown(comp, tasks=tasks, cells=cells)
    paths = {"table_md": os.path.join(out_dir, "table.md"), "table_tex": os.path.join(out_dir, "table.tex"),
             "table_csv": os.path.join(out_dir, "table.csv"),
             "comparison_json": os.path.join(out_dir, "comparison.json")}
    rundir.write_text_atomic(paths["table_md"], markdown)
    rundir.write_text_atomic(paths["table_tex"], table_latex(comp, tasks=tasks, cells=cells))
    rundir.write_text_atomic(paths["table_csv"], table_csv(comp, tasks=tasks, cells=cells))
    pending = [r.workdir for r in runs if r.result is None]
    rundir.write_text_atomic(paths["comparison_json"],
                       json.dumps(json_safe({"sweep_dir": sweep_dir, "num_runs": len(runs), "pending": pending,
                                              "failed": [w for w, _ in failed], "comparison": comp}),
                                  indent=2, sort_keys=True, allow_nan=False) + "\n")
    curves = plot_task_curves(runs, comp, out_dir, tasks=tasks, cells=cells)
    return {"markdown": markdown, **paths, "curves": curves, "comparison": comp, "failed": failed}


def _error_line(result: dict | None) -> str:
    text = str((result or {}).get("error") or "no error recorded").strip()
    line = text.splitlines()[0] if text else "no error recorded"
    return line if len(line) <= 160 else line[:157] + "..."


def failed_runs(runs: Sequence[Run], early: Sequence[tuple[str, dict]] = ()) -> list[tuple[str, str]]:
    """``(workdir, first line of the error)`` of the failed runs (status neither completed,
    diverged nor pending), those that stopped before writing a config (``early``) included."""
    out = [(r.workdir, _error_line(r.result)) for r in runs
           if r.result is not None and r.status not in ("completed", "diverged")]
    out += [(w, _error_line(res)) for w, res in early if res.get("status") not in ("completed", "diverged")]
    return sorted(out)


def no_table_message(sweep_dir: str, runs: Sequence[Run], early: Sequence[tuple[str, dict]] = (),
                     show: int = 3) -> str:
    """``<sweep_dir>: N run directories, none completed (3 failed, 1 pending; failed: runs/p-x
    (ValueError: ...), ...); no table``."""
    statuses = [r.status for r in runs] + [str(res.get("status", "failed")) for _, res in early]
    counts: dict = {}
    for st in statuses:
        st = st if st in ("completed", "diverged", "pending") else "failed"
        counts[st] = counts.get(st, 0) + 1
    what = ", ".join(f"{counts[st]} {st}" for st in ("failed", "diverged", "pending") if st in counts)
    failed = failed_runs(runs, early)
    if failed:
        shown = ", ".join(f"{os.path.relpath(w, sweep_dir)} ({e})" for w, e in failed[:show])
        more = f" and {len(failed) - show} more" if len(failed) > show else ""
        what = (f"{len(failed)} failed: {shown}{more}" if what == f"{len(failed)} failed"
                else f"{what}; failed: {shown}{more}")
    n = len(statuses)
    return f"{sweep_dir}: {n} run director{'y' if n == 1 else 'ies'}, none completed ({what}); no table"
