r"""Gradient flow through time: vanishing and exploding gradients, per cell, and gradient clipping.

    python -m experiments.gradient_flow --out_dir=docs/gradient_flow
    python -m experiments.gradient_flow --cells=rnn,lstm,gru --length=200 --train_steps=1000

Writes to ``--out_dir``:

* ``grad_norms.png``: ``‖∂L/∂h_t‖`` against ``t`` for every cell, where ``L = h_T · w`` and ``w``
  is the model's (normalised) linear output head, so ``‖∂L/∂h_T‖ = 1``; at initialisation and
  after ``--train_steps`` Adam steps on the adding problem of length ``--length``
  (:mod:`rnn_jax.data.longrange`), mean over a held-out batch.
* ``tanh_spectral.png``: the same curve for the Tanh RNN with ``W_hh`` rescaled to largest
  singular values 0.5 ... 2.0, from an orthogonal and from the default uniform ``W_hh``.
* ``clipping.png``: loss and gradient norm of a Tanh RNN trained with plain SGD from a large
  recurrent matrix, without and with ``optax.clip_by_global_norm``.
* ``cell_state.png`` (when ``--cells`` names LSTM-family cells): for each of them, at
  initialisation and after training, ``‖∂L/∂c_t‖`` through every path, the gradient along the
  direct ``c → c`` path alone (``∂L/∂c_T ⊙ ∏_{k>t} f_k``) and the forget-gate product
  ``mean ∏_{k>t} f_k``, with ``‖∂L/∂h_t‖`` for reference.
* ``results.json``: every number behind the plots (strict JSON, non-finite floats as strings).

See ``docs/gradient_flow.md`` for the measured results.
"""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Callable, Sequence

import jax
import numpy as np
from absl import app, flags

from experiments import cli
from rnn_jax import cells as cells_lib
from rnn_jax import gradflow
from rnn_jax.rundir import write_json_atomic

DEFAULT_CELLS = ("rnn", "lstm", "lstm_b", "lstm_f", "gru", "mut1", "mut2", "mut3")
SIGMAS = (0.5, 0.8, 1.0, 1.2, 1.5, 2.0)
INPUT_SIZE = 2  # adding problem: value and marker
EVAL_INDEX = 1_000_000  # batch index of the held-out batch (training uses 0 .. steps - 1)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _floats(a) -> list:
    """A list of Python floats, 6 significant digits (non-finite values kept as such)."""
    return [float(f"{v:.6g}") if math.isfinite(v) else float(v) for v in np.asarray(a, np.float64).ravel()]


def _curve_summary(log10_norms, key: str = "log10_norms") -> dict:
    """A ``log10 ‖∂L/∂h_t‖`` curve (under ``key``) and its summary: ``ratio_first_last =
    ‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` and the geometric mean factor per step, ``ratio ** (1 / (T - 1))``."""
    logs = np.asarray(log10_norms, np.float64)
    log_ratio = float(logs[0] - logs[-1])
    steps = len(logs) - 1
    return {key: _floats(logs), "log10_ratio_first_last": log_ratio,
            "ratio_first_last": float(10.0 ** log_ratio) if math.isfinite(log_ratio) else log_ratio,
            "per_step_factor": float(10.0 ** (log_ratio / steps)) if steps and math.isfinite(log_ratio)
            else float("nan")}


def _cell_state_summary(out: dict) -> dict:
    """Summaries of one :func:`gradflow.make_cell_state_log10_fn` result (``log10`` curves over
    ``t``): each curve as in :func:`_curve_summary`, the mean forget gate, and how far apart the
    full gradient, the direct-path gradient and the forget product are."""
    full, direct, prod = (np.asarray(out[k], np.float64) for k in ("full", "direct", "forget_product"))
    full_rel, direct_rel = full - full[-1], direct - direct[-1]  # relative to t = T
    return {
        "full": _curve_summary(full), "direct": _curve_summary(direct),
        "forget_product": _curve_summary(prod, key="log10_values"),
        "mean_f": float(out["mean_f"]), "geometric_mean_f": float(np.exp(out["mean_log_f"])),
        # log10(‖∂L/∂c_t‖ / ‖∂L/∂c_t|_{c→c}‖): the share of the routes through h, per step
        "log10_full_over_direct": _floats(full - direct),
        "max_abs_log10_full_over_direct": float(np.max(np.abs(full - direct))),
        # the direct path's decay against the forget product's (both 1 at t = T)
        "max_abs_log10_direct_over_forget_product": float(np.max(np.abs(direct_rel - prod))),
        "max_abs_log10_full_over_forget_product": float(np.max(np.abs(full_rel - prod))),
    }


def _run_summary(curves: gradflow.TrainCurves, clip_norm: float | None) -> dict:
    losses = np.asarray(curves.losses, np.float64)
    norms = np.asarray(curves.grad_norms, np.float64)
    finite = np.isfinite(losses) & np.isfinite(norms)
    tail = max(len(losses) // 10, 1)

    def finite_stat(stat, values):
        kept = values[np.isfinite(values)]
        return float(stat(kept)) if kept.size else float("nan")

    out = {
        "losses": _floats(losses),
        "grad_norms": _floats(norms),
        "first_nonfinite_step": None if finite.all() else int(np.argmin(finite)),
        "max_grad_norm": float(np.max(norms)) if np.isfinite(norms).all() else float("inf"),
        "median_grad_norm": finite_stat(np.median, norms),
        "loss_first": float(losses[0]),
        "loss_final": float(np.mean(losses[-tail:])),
        "max_loss": float(np.max(losses)) if np.isfinite(losses).all() else float("inf"),
        "max_finite_loss": finite_stat(np.max, losses),
        "max_finite_grad_norm": finite_stat(np.max, norms),
    }
    if clip_norm is not None:
        out["fraction_steps_clipped"] = float(np.mean(~(norms <= clip_norm)))
    return out


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _positive(values) -> np.ndarray:
    """Values for a log axis: zeros and non-finite values become gaps."""
    v = np.asarray([float(x) if isinstance(x, (int, float)) else float("nan") for x in values])
    v[~(v > 0) | ~np.isfinite(v)] = np.nan
    return v


def _finite(values) -> np.ndarray:
    v = np.asarray([float(x) if isinstance(x, (int, float)) else float("nan") for x in values])
    v[~np.isfinite(v)] = np.nan
    return v


def _finish(plt, fig, axes, xlabel: str, title: str, path: str) -> None:
    """Shared styling of the study's two-panel figures, then save and close."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grad_norms(results: dict, path: str) -> None:
    plt = _pyplot()
    cfg = results["config"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, entry in results["cells"].items():
        for ax, when in zip(axes, ("init", "trained")):
            logs = _finite(entry[when]["log10_norms"])
            label = name if when == "init" else f"{name} (MSE {entry['train']['loss_final']:.3g})"
            ax.plot(np.arange(1, len(logs) + 1), logs, label=label, lw=1.4)
    axes[0].set_title("at initialisation")
    axes[1].set_title(f"after {cfg['train_steps']} Adam steps on the adding problem")
    axes[0].set_ylabel(r"$\log_{10} \|\partial L / \partial h_t\|$,  $L = w \cdot h_T$")
    _finish(plt, fig, axes, "t", f"Gradient of a last-step readout w.r.t. each hidden state "
            f"(T={cfg['length']}, H={cfg['hidden']})", path)


def plot_spectral(results: dict, path: str) -> None:
    plt = _pyplot()
    sweep = results["tanh_spectral"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    titles = {"orthogonal": r"orthogonal $W_{hh}$ (every singular value $= \sigma$)",
              "uniform": r"default uniform $W_{hh}$ rescaled ($\sigma_{max} = \sigma$)"}
    cmap = plt.get_cmap("viridis")
    for ax, (base, curves) in zip(axes, sweep["curves"].items()):
        for k, (sigma, entry) in enumerate(curves.items()):
            logs = _finite(entry["log10_norms"])
            ax.plot(np.arange(1, len(logs) + 1), logs, color=cmap(k / max(len(curves) - 1, 1)),
                    label=rf"$\sigma$ = {sigma}  (radius {entry['spectral_radius']:.2f})", lw=1.4)
        ax.set_title(titles.get(base, base), fontsize=10)
    axes[0].set_ylabel(r"$\log_{10} \|\partial L / \partial h_t\|$")
    _finish(plt, fig, axes, "t", r"Tanh RNN: largest singular value $\sigma$ of $W_{hh}$ sweeps through 1",
            path)


def plot_clipping(results: dict, path: str) -> None:
    plt = _pyplot()
    clip = results["clipping"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    runs = (("no_clip", "no clipping", "tab:red"),
            ("clip", f"clip_by_global_norm({clip['clip_norm']:g})", "tab:blue"))
    for key, label, color in runs:
        run = clip[key]
        for ax, field in zip(axes, ("losses", "grad_norms")):
            y = _positive(run[field])
            ax.plot(np.arange(len(y)), y, color=color, label=label, lw=1.0)
            if run["first_nonfinite_step"] is not None:
                ax.axvline(run["first_nonfinite_step"], color=color, ls="--", lw=0.8,
                           label=f"non-finite from step {run['first_nonfinite_step']}")
    axes[0].axhline(1 / 6, color="gray", ls=":", lw=0.8, label="predict 1: MSE 1/6")
    axes[0].set_ylabel("training loss (MSE)")
    axes[1].set_ylabel("gradient global norm (before clipping)")
    axes[1].axhline(clip["clip_norm"], color="gray", ls=":", lw=0.8, label="clipping threshold")
    for ax in axes:
        ax.set_yscale("log")
    _finish(plt, fig, axes, "step", f"Tanh RNN, SGD lr={clip['learning_rate']:g}, orthogonal $W_{{hh}}$ with "
            rf"$\sigma$={clip['sigma']:g}, adding problem T={results['config']['length']}", path)


def plot_cell_state(results: dict, path: str) -> None:
    """One column per LSTM-family cell, rows: at initialisation, after training. Every curve is
    log10 and relative to its value at ``t = T`` (where all of them meet)."""
    plt = _pyplot()
    cfg, entries = results["config"], results["cell_state"]["cells"]
    n = len(entries)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n + 0.6, 8.0), sharey="row", squeeze=False)
    for col, (name, entry) in enumerate(entries.items()):
        for row, when in enumerate(("init", "trained")):
            ax, e = axes[row, col], entry[when]
            t = np.arange(1, len(e["full"]["log10_norms"]) + 1)
            full, direct = _finite(e["full"]["log10_norms"]), _finite(e["direct"]["log10_norms"])
            h = _finite(results["cells"][name][when]["log10_norms"])
            ax.plot(t, h, color="0.6", lw=1.0, label=rf"$\|\partial L/\partial h_t\|$ ($c_t$ fixed)"
                    rf" ({results['cells'][name][when]['per_step_factor']:.3f}/step)")
            rate = {k: e[k]["per_step_factor"] for k in ("full", "direct", "forget_product")}
            ax.plot(t, full - full[-1], color="tab:blue", lw=1.8,
                    label=rf"$\|\partial L/\partial c_t\|$, all paths ({rate['full']:.3f}/step)")
            ax.plot(t, direct - direct[-1], color="tab:orange", lw=1.8, ls="--",
                    label=rf"direct $c\to c$ path only ({rate['direct']:.3f}/step)")
            ax.plot(t, _finite(e["forget_product"]["log10_values"]), color="black", lw=1.2, ls=":",
                    label=rf"mean of $f_{{t+1}} \cdots f_T$ ({rate['forget_product']:.3f}/step)")
            mse = results["cells"][name]["train"]["loss_final"]
            ax.set_title(f"{name}, " + ("at initialisation" if when == "init" else
                                         f"after {cfg['train_steps']} steps (MSE {mse:.3g})"), fontsize=10)
            if col == 0:
                ax.set_ylabel(r"$\log_{10}$ (gradient norm or product), relative to $t = T$")
    _finish(plt, fig, axes.ravel(), "t", "LSTM cell state: the gradient along c is multiplied by the"
            rf" forget gate at each step (L = w $\cdot$ h_T, T={cfg['length']}, H={cfg['hidden']})", path)


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def run(out_dir: str, cells: Sequence[str] = DEFAULT_CELLS, length: int = 100, hidden: int = 64,
        train_steps: int = 500, seed: int = 0, *, batch_size: int = 32, eval_batch_size: int = 64,
        learning_rate: float = 1e-2, train_clip_norm: float | None = 1.0,
        sigmas: Sequence[float] = SIGMAS, clip_sigma: float = 1.5,
        clip_learning_rate: float = 0.1, clip_norm: float = 1.0,
        progress: Callable[[str], None] = print) -> dict:
    """Runs the whole study, writes the plots and ``results.json`` to ``out_dir``; returns the results.

    a. For each of ``cells`` (input size 2, hidden size ``hidden``, linear head on ``h_T``):
       ``log10 ‖∂L/∂h_t‖`` with ``L = h_T · w``, ``w`` the normalised head, on a held-out batch of
       ``eval_batch_size`` adding-problem sequences of ``length``, at initialisation and after
       ``train_steps`` Adam steps (``learning_rate``, ``clip_by_global_norm(train_clip_norm)``,
       a fresh batch of ``batch_size`` per step).
    b. The Tanh RNN with ``W_hh`` rescaled to each of ``sigmas`` (largest singular value), from an
       orthogonal and from the default uniform ``W_hh``; ``w`` a fixed random unit vector.
    c. The Tanh RNN from an orthogonal ``W_hh`` with singular values ``clip_sigma``, trained with
       SGD (``clip_learning_rate``) for ``train_steps`` steps without clipping and with
       ``clip_by_global_norm(clip_norm)``, on the same batches.
    d. For the LSTM-family cells among ``cells``, with the parameters of (a) and the same ``w``
       and batch: ``log10 mean_b ‖∂L/∂c_t‖`` through every path and along the direct ``c → c``
       path alone, and ``log10 mean_{b,j} ∏_{k>t} f_k`` (:func:`gradflow.make_cell_state_log10_fn`).

    Everything is seeded by ``seed``; ``progress`` receives one line per finished piece.
    """
    start = time.perf_counter()
    cells = list(cells)
    if not cells:
        raise ValueError("cells must name at least one cell")
    for name, value in (("length", length), ("hidden", hidden), ("train_steps", train_steps),
                        ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        _check_positive_int(name, value)
    if length < 2:
        raise ValueError(f"length must be >= 2 (the adding problem marks one step per half), got {length}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    built = {name: gradflow.cell_for_inputs(name, INPUT_SIZE, hidden) for name in cells}  # validates names
    os.makedirs(out_dir, exist_ok=True)

    key = jax.random.PRNGKey(seed)
    xs_train, ys_train = gradflow.adding_batches(seed, train_steps, batch_size, length)
    xs_eval = gradflow.adding_batches(seed, 1, eval_batch_size, length, start=EVAL_INDEX)[0][0]
    results = {
        "config": {"cells": cells, "length": length, "hidden": hidden, "train_steps": train_steps,
                   "seed": seed, "batch_size": batch_size, "eval_batch_size": eval_batch_size,
                   "learning_rate": learning_rate, "optimizer": "adam", "train_clip_norm": train_clip_norm,
                   "task": "adding problem", "readout": "L = h_T . w, w = normalised output head"},
        "environment": {"jax": jax.__version__, "backend": jax.default_backend(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "cells": {},
    }
    norm_fns = {}

    def norms_of(cell, params, w):
        if cell not in norm_fns:
            norm_fns[cell] = gradflow.make_grad_log10_norms_fn(cell)
        return np.asarray(norm_fns[cell](params, xs_eval, w))

    # a. every cell at initialisation and after training on the adding problem
    optimizer = gradflow.make_optimizer("adam", learning_rate, train_clip_norm)
    lstm_models = {}
    for name in cells:
        t0 = time.perf_counter()
        cell = built[name]
        params = gradflow.init_regressor(cell, key, INPUT_SIZE, hidden)
        init = _curve_summary(norms_of(cell, params["cell"], gradflow.readout_direction(params)))
        trained_params, curves = gradflow.make_trainer(cell, optimizer)(params, xs_train, ys_train)
        train = _run_summary(curves, None)
        trained = _curve_summary(norms_of(cell, trained_params["cell"],
                                          gradflow.readout_direction(trained_params)))
        results["cells"][name] = {"init": init, "trained": trained, "train": train}
        if isinstance(cell, cells_lib.LSTMCell):
            lstm_models[name] = {"init": params, "trained": trained_params}
        progress(f"[{name}] ‖∂L/∂h_1‖/‖∂L/∂h_T‖ init {init['ratio_first_last']:.3g},"
                 f" trained {trained['ratio_first_last']:.3g}; train MSE {train['loss_first']:.3g}"
                 f" -> {train['loss_final']:.3g} ({time.perf_counter() - t0:.1f}s)")

    # b. Tanh RNN with W_hh rescaled to each largest singular value
    rnn = cells_lib.get("rnn")
    readout = gradflow.unit_vector(jax.random.fold_in(key, 1), hidden)
    bases = {"orthogonal": cells_lib.get("rnn", recurrent_init="orthogonal").init(key, INPUT_SIZE, hidden),
             "uniform": rnn.init(key, INPUT_SIZE, hidden)}
    sweep = {"sigmas": [float(s) for s in sigmas], "readout": "fixed random unit vector",
             "curves": {}}
    for base_name, base in bases.items():
        curves = {}
        for sigma in sigmas:
            p = gradflow.tanh_rnn_with_spectral_radius(base, float(sigma))
            entry = _curve_summary(norms_of(rnn, p, readout))
            eigenvalues = np.linalg.eigvals(np.asarray(p["W_hh"], np.float64))
            entry["spectral_radius"] = float(np.max(np.abs(eigenvalues)))
            curves[f"{float(sigma):g}"] = entry
            progress(f"[rnn, {base_name} W_hh, sigma {sigma:g}] spectral radius "
                     f"{entry['spectral_radius']:.3f}, ‖∂L/∂h_1‖/‖∂L/∂h_T‖ {entry['ratio_first_last']:.3g}")
        sweep["curves"][base_name] = curves
    results["tanh_spectral"] = sweep

    # c. gradient clipping: plain SGD from a large orthogonal W_hh, without and with clipping
    clip_cell_params = gradflow.tanh_rnn_with_spectral_radius(bases["orthogonal"], clip_sigma)
    clip_params = gradflow.init_regressor(rnn, key, INPUT_SIZE, hidden, cell_params=clip_cell_params)
    clipping = {"sigma": clip_sigma, "learning_rate": clip_learning_rate, "clip_norm": clip_norm,
                "optimizer": "sgd"}
    for run_name, norm in (("no_clip", None), ("clip", clip_norm)):
        t0 = time.perf_counter()
        opt = gradflow.make_optimizer("sgd", clip_learning_rate, norm)
        _, curves = gradflow.make_trainer(rnn, opt)(clip_params, xs_train, ys_train)
        clipping[run_name] = summary = _run_summary(curves, norm)
        progress(f"[clipping: {run_name}] loss {summary['loss_first']:.3g} -> {summary['loss_final']:.3g},"
                 f" max grad norm {summary['max_grad_norm']:.3g}, first non-finite step "
                 f"{summary['first_nonfinite_step']} ({time.perf_counter() - t0:.1f}s)")
    results["clipping"] = clipping

    # d. LSTM family: the gradient reaching the cell state, the direct c -> c path, ∏ f
    cell_state = {"readout": "L = h_T . w, as in (a)",
                  "curves": "log10 of the batch mean; full and direct are ‖∂L/∂c_t‖, forget_product"
                            " is mean over batch and units of prod_{k>t} f_k", "cells": {}}
    for name, models in lstm_models.items():
        t0 = time.perf_counter()
        fn = gradflow.make_cell_state_log10_fn(built[name])
        entry = {when: _cell_state_summary(fn(p["cell"], xs_eval, gradflow.readout_direction(p)))
                 for when, p in models.items()}
        cell_state["cells"][name] = entry
        labels = {"full": "‖∂L/∂c_t‖", "direct": "direct path", "forget_product": "mean ∏f"}
        rates = [f"{label} {entry['init'][k]['per_step_factor']:.3f}"
                 f" / {entry['trained'][k]['per_step_factor']:.3f}" for k, label in labels.items()]
        progress(f"[{name}: cell state] per step, init / trained: {', '.join(rates)}"
                 f" ({time.perf_counter() - t0:.1f}s)")
    results["cell_state"] = cell_state

    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    plot_grad_norms(results, os.path.join(out_dir, "grad_norms.png"))
    plot_spectral(results, os.path.join(out_dir, "tanh_spectral.png"))
    plot_clipping(results, os.path.join(out_dir, "clipping.png"))
    written = ["grad_norms.png", "tanh_spectral.png", "clipping.png"]
    if cell_state["cells"]:
        plot_cell_state(results, os.path.join(out_dir, "cell_state.png"))
        written.append("cell_state.png")
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(os.path.join(out_dir, "results.json"), results)
    progress(f"wrote {out_dir}/{', '.join(written)}, results.json in {results['wall_time_s']:.0f}s")
    return results


FLAGS = flags.FLAGS


def _define_flags():
    # Defined only when run as a program, so that importing this module (tests) cannot clash with
    # flags of the same name in other experiments (--cells, --out_dir).
    flags.DEFINE_string("out_dir", "runs/gradient_flow", "Directory for the plots and results.json.")
    flags.DEFINE_list("cells", list(DEFAULT_CELLS), "Registered cell names to compare.")
    flags.DEFINE_integer("length", 100, "Sequence length T of the adding problem.")
    flags.DEFINE_integer("hidden", 64, "Hidden size H.")
    flags.DEFINE_integer("train_steps", 500, "Optimizer steps per training run (batch --batch_size).")
    flags.DEFINE_integer("batch_size", 32, "Training batch size.")
    flags.DEFINE_float("learning_rate", 1e-2, "Adam learning rate of the per-cell training runs.")
    flags.DEFINE_integer("seed", 0, "Seed of the data and the initialisation.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    for name in FLAGS.cells:
        try:
            cells_lib.get(name)
        except ValueError as e:
            raise app.UsageError(f"--cells: {e}")
    for name, minimum in (("length", 2), ("hidden", 1), ("train_steps", 1), ("batch_size", 1), ("seed", 0)):
        if getattr(FLAGS, name) < minimum:
            raise app.UsageError(f"--{name} must be >= {minimum}, got {getattr(FLAGS, name)}")
    if not FLAGS.learning_rate > 0:
        raise app.UsageError(f"--learning_rate must be positive, got {FLAGS.learning_rate}")
    run(FLAGS.out_dir, FLAGS.cells, FLAGS.length, FLAGS.hidden, FLAGS.train_steps, FLAGS.seed,
        batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate,
        progress=lambda s: print(s, flush=True))


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
