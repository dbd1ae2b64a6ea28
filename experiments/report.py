r"""Comparison tables and learning curves of a sweep, from its run directories only.

    python -m experiments.report --sweep_dir=runs/tasks_sweep
    python -m experiments.report --sweep_dir=runs/tasks_sweep --out_dir=docs/tasks \
        --cells=rnn,lstm,lstm_f,gru,mut1 --tasks=arithmetic,xml

Every directory below ``--sweep_dir`` holding a ``config.json`` is a run (``sweep.json`` is not
read). Writes ``table.md``, ``table.tex``, ``table.csv``, ``comparison.json`` and
``curves_<task>.png`` to ``--out_dir`` (default ``<sweep_dir>/report``) and prints the Markdown
table. See :mod:`rnn_jax.report` for how the best setting of each cell is chosen.

Exits with status 1, writing nothing, when no run completed: the line says how many run
directories there are and what became of them (``runs/x: 4 run directories, none completed
(4 failed: runs/p-ab12 (ValueError: ...), ...); no table``). A table with some failed runs is
written as usual, followed by a line naming the failures.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app, flags

from experiments import cli
from rnn_jax import report
from rnn_jax.errors import InputError


def make_report(sweep_dir: str, out_dir: str | None = None, cells: Sequence[str] | None = None,
                tasks: Sequence[str] | None = None) -> dict:
    """What the main does, without flags: ``report.write_report`` with a clear error when
    ``sweep_dir`` is missing or holds no run directory (``InputError``), or when no run in it
    completed (``report.NoCompletedRuns``)."""
    if not os.path.isdir(sweep_dir):
        raise InputError(f"--sweep_dir={sweep_dir} is not a directory")
    return report.write_report(sweep_dir, out_dir=out_dir, tasks=tasks or None, cells=cells or None)


def _define_flags():
    # Defined only when run as a program, so that importing this module (tests) cannot clash
    # with flags of the same name in other experiments (--cells, --out_dir).
    flags.DEFINE_string("sweep_dir", None, "Sweep directory: run directories (with config.json) below it.")
    flags.DEFINE_string("out_dir", None, "Output directory (default: <sweep_dir>/report).")
    flags.DEFINE_list("cells", None, "Cells (table rows), in this order (default: all, canonical order).")
    flags.DEFINE_list("tasks", None, "Tasks (table columns), in this order (default: all).")
    flags.mark_flag_as_required("sweep_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    try:
        out = make_report(f.sweep_dir, out_dir=f.out_dir, cells=f.cells, tasks=f.tasks)
    except report.NoCompletedRuns as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(1)
    except InputError:
        raise  # one line (experiments.cli)
    except ValueError as e:
        raise app.UsageError(str(e))
    print(out["markdown"])
    print(f"wrote {os.path.dirname(out['table_md'])}: table.md, table.tex, table.csv, comparison.json"
          + "".join(f", {os.path.basename(p)}" for p in out["curves"]))
    if out["failed"]:
        shown = ", ".join(f"{os.path.relpath(w, f.sweep_dir)} ({e})" for w, e in out["failed"][:3])
        more = f" and {len(out['failed']) - 3} more" if len(out["failed"]) > 3 else ""
        print(f"{len(out['failed'])} run(s) failed: {shown}{more}")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
