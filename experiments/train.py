r"""Train a language model: ``python -m experiments.train --config=CONFIG[:ARGS] --workdir=DIR``.

    python -m experiments.train --config=experiments/configs/char_lm.py:cell=gru,hidden=256 \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/gru

Running again with the same workdir resumes the run from its latest checkpoint.
"""

from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from rnn_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (with :arg string).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (created; resumed if it has a checkpoint).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    if result["status"] != "completed":
        raise SystemExit(f"run ended with status {result['status']}")


if __name__ == "__main__":
    cli.run(main)
