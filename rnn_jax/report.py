"""Plots and tables built from run directories only (``metrics.jsonl``, ``result.json``)."""

from __future__ import annotations

import json
import os
from typing import Sequence


def read_result(workdir: str) -> dict | None:
    path = os.path.join(workdir, "result.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def learning_curves(workdir: str):
    """``(train, valid)``: lists of ``(step, wall-clock seconds since the run began or None, loss)``.

    The seconds are the run's cumulative wall clock at each evaluation (``elapsed_s``: training,
    evaluation, checkpointing and compilation, summed over resumed sessions).
    """
    from rnn_jax.train import read_metrics

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
