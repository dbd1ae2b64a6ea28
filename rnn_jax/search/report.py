"""What a search found: leaderboard (Markdown and CSV), fitness picture, top recipes as cells.

Everything here reads the search state (:mod:`rnn_jax.search.algorithms`) only::

    <out_dir>/leaderboard.md     rank, hash, fitness, fitness per task, parameters, nodes, equations
    <out_dir>/leaderboard.csv    the same, one row per candidate
    <out_dir>/fitness.png        each evaluation's fitness and the best so far, against evaluations
    <out_dir>/top/rank<r>-<hash>.json   the best recipes now: cells.get("recipe", path=...) reads them
    <out_dir>/cells/<hash>.json         the same recipes under stable names (for configs)

A row names the hand-written cell it computes (``gru``, ``lstm``, ...) when its functional hash is
that of the cell's recipe (:mod:`rnn_jax.search.known`).
"""

from __future__ import annotations

import csv
import io
import os
from typing import Mapping, Sequence

from rnn_jax import rundir
from rnn_jax.search import known
from rnn_jax.search import recipe as rlib

__all__ = ["leaderboard", "plot_fitness", "write_report", "write_top"]


def _known_hashes() -> dict:
    return {rlib.functional_hash(r): name for name, r in known.RECIPES.items()}


def _rank_key(c: Mapping):
    f = c.get("fitness")
    return -(f if isinstance(f, (int, float)) else float("-inf"))


def leaderboard(state: Mapping, *, hidden_size: int, tasks: Sequence[str] | None = None) -> list[dict]:
    """One row per evaluated candidate (duplicates of a hash once), best first."""
    names = _known_hashes()
    cands = [(int(cid), c) for cid, c in state.get("candidates", {}).items()
             if c.get("status") == "done" and c.get("results")]
    seen, rows = set(), []
    for cid, c in sorted(cands, key=lambda ic: (_rank_key(ic[1]), ic[0])):
        if c["hash"] in seen:
            continue
        seen.add(c["hash"])
        recipe = c["recipe"]
        task_list = tasks or sorted(c["results"])
        rows.append({
            "rank": len(rows) + 1, "candidate": cid, "hash": c["hash"], "cell": names.get(c["hash"], ""),
            "fitness": c.get("fitness"),
            **{f"{t}": c["results"].get(t) for t in task_list},
            "params": rlib.num_params(recipe, hidden_size, hidden_size), "nodes": len(recipe),
            "states": rlib.num_states(recipe), "parent": c.get("parent"),
            "equations": "; ".join(_equation_lines(recipe)),
        })
    return rows


def _equation_lines(recipe) -> list[str]:
    from rnn_jax.search import render
    return [" ".join(line.split()) for line in render.equation_lines(recipe)]


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown(rows: Sequence[Mapping], tasks: Sequence[str], top: int = 20) -> str:
    head = ["rank", "hash", "cell", "fitness", *tasks, "params", "nodes", "equations"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows[:top]:
        eq = r["equations"].replace("|", "\\|")
        lines.append("| " + " | ".join([str(r["rank"]), f"`{r['hash']}`", r["cell"] or "", _fmt(r["fitness"]),
                                         *(_fmt(r.get(t)) for t in tasks), str(r["params"]), str(r["nodes"]),
                                         f"<sub>{eq}</sub>"]) + " |")
    return "\n".join(lines) + "\n"


def write_top(state: Mapping, out_dir: str, *, k: int = 5, hidden_size: int = 32) -> list[str]:
    """The ``k`` best recipes as ``top/rank<r>-<hash>.json`` (the current ranking: rank files of
    an earlier report are removed) and ``cells/<hash>.json`` (the same content, never removed or
    changed: the path to put in a config). Returns the ``top`` paths.

    The file's ``recipe`` is the canonical form, the one the search trained, so its parameter
    names match the checkpoints in the search's run directories; ``recipe_as_found`` keeps the
    node names of the search."""
    import glob
    rows = leaderboard(state, hidden_size=hidden_size)[:k]
    top, stable = os.path.join(out_dir, "top"), os.path.join(out_dir, "cells")
    os.makedirs(top, exist_ok=True)
    os.makedirs(stable, exist_ok=True)
    paths = []
    for r in rows:
        c = state["candidates"][str(r["candidate"])]
        canon = rlib.canonical(c["recipe"])
        record = {"recipe": canon, "hash": r["hash"], "fitness": r["fitness"], "results": c["results"],
                  "cell": r["cell"] or None, "equations": _equation_lines(canon), "recipe_as_found": c["recipe"]}
        path = os.path.join(top, f"rank{r['rank']}-{r['hash']}.json")
        rundir.write_json_atomic(path, record)
        cell_path = os.path.join(stable, f"{r['hash']}.json")
        if not os.path.exists(cell_path):
            rundir.write_json_atomic(cell_path, {k: v for k, v in record.items() if k not in ("fitness", "results")})
        paths.append(path)
    for old in glob.glob(os.path.join(top, "rank*.json")):
        if old not in paths:
            os.remove(old)
    return paths


def plot_fitness(state: Mapping, path: str, title: str = "") -> str:
    """Each finished evaluation's fitness (by task) and the best candidate fitness so far."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = state.get("history", [])
    fig, ax = plt.subplots(figsize=(8, 4.8))
    tasks = sorted({row[2] for row in history})
    for j, task in enumerate(tasks):
        pts = [(row[0], row[3]) for row in history if row[2] == task and isinstance(row[3], (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=8, alpha=0.45, color=f"C{j}", label=f"{task}: one evaluation")
    ax.set_xlabel("evaluations (trainings)")
    ax.set_ylabel("each evaluation's result (accuracy)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    curve = [(i + 1, v) for i, v in enumerate(state.get("curve", [])) if isinstance(v, (int, float))]
    if curve:  # the candidates' fitness may be another quantity (Jozefowicz: a ratio to GRU)
        right = ax.twinx()
        xs, ys = zip(*curve)
        right.step(xs, ys, where="post", color="black", lw=1.8, label="best candidate fitness so far")
        right.set_ylabel("best fitness so far")
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    ax.set_title(title or "search fitness")
    fig.tight_layout(rect=(0, 0.04 * ((len(handles) + 1) // 2) + 0.02, 1, 1))
    rundir.save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


def write_report(state: Mapping, out_dir: str, *, hidden_size: int, top_k: int = 5, title: str = "") -> dict:
    """Leaderboard (md, csv), fitness.png and the top recipes in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rows = leaderboard(state, hidden_size=hidden_size)
    tasks = sorted({t for cid, c in state.get("candidates", {}).items() for t in (c.get("results") or {})})
    rows = leaderboard(state, hidden_size=hidden_size, tasks=tasks)
    md = os.path.join(out_dir, "leaderboard.md")
    rundir.write_text_atomic(md, markdown(rows, tasks))
    buf = io.StringIO()
    fields = ["rank", "candidate", "hash", "cell", "fitness", *tasks, "params", "nodes", "states", "parent",
              "equations"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    path_csv = os.path.join(out_dir, "leaderboard.csv")
    rundir.write_text_atomic(path_csv, buf.getvalue())
    png = plot_fitness(state, os.path.join(out_dir, "fitness.png"), title)
    top = write_top(state, out_dir, k=top_k, hidden_size=hidden_size)
    return {"markdown": md, "csv": path_csv, "png": png, "top": top, "rows": rows}
