r"""Plot learning curves from run directories: ``python -m experiments.plot --out=curve.png RUN...``.

    python -m experiments.plot --out=docs/shakespeare.png --x=minutes runs/lstm runs/gru runs/mut1
"""

from absl import app, flags

from experiments import cli
from rnn_jax import report

_OUT = flags.DEFINE_string("out", None, "PNG file to write.")
_X = flags.DEFINE_enum("x", "step", ["step", "minutes"], "Horizontal axis.")
_LABELS = flags.DEFINE_list("labels", None, "Labels, one per run (default: directory names).")
_TITLE = flags.DEFINE_string("title", None, "Plot title.")
flags.mark_flag_as_required("out")


def main(argv):
    runs = argv[1:]
    if not runs:
        raise app.UsageError("give one or more run directories")
    print(report.plot_runs(runs, _OUT.value, labels=_LABELS.value, x=_X.value, title=_TITLE.value))


if __name__ == "__main__":
    cli.run(main)
