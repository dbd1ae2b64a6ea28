r"""Sample text from a trained run: ``python -m experiments.sample --workdir=DIR``.

    python -m experiments.sample --workdir=runs/shakespeare_lstm --prime="ROMEO:" \
        --temperature=0.8 --top_k=0 --length=500 --num_samples=3 --seed=0

Uses the best checkpoint (``--checkpoint=latest`` for the newest); ``--greedy`` takes the argmax.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from experiments import cli
from rnn_jax import sampling, train

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_PRIME = flags.DEFINE_string("prime", None, "Text the samples continue (char level) or words (word "
                             "level). Default: a newline (char) or <eos> (word).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.8, "Softmax temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens (0: all).")
_LENGTH = flags.DEFINE_integer("length", 500, "Tokens to generate per sample.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "Independent samples.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_GREEDY = flags.DEFINE_boolean("greedy", False, "Take the most likely token at every step.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to use.")
flags.mark_flag_as_required("workdir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    sampling.check_sampling_args(_TEMPERATURE.value, _TOP_K.value, _LENGTH.value, _NUM_SAMPLES.value)
    model, params, vocab, _ = train.load_run(_WORKDIR.value, _CHECKPOINT.value)
    prime_text = _PRIME.value if _PRIME.value is not None else ("\n" if vocab.level == "char" else "<eos>")
    try:
        prime = vocab.encode(prime_text)
    except ValueError as e:
        raise app.UsageError(f"--prime: {e}")
    if len(prime) == 0:
        raise app.UsageError("--prime must contain at least one token (it gives the model its first input)")
    tokens = sampling.sample(model, params, jnp.asarray(prime), jax.random.PRNGKey(_SEED.value),
                             length=_LENGTH.value, num_samples=_NUM_SAMPLES.value,
                             temperature=_TEMPERATURE.value, top_k=_TOP_K.value, greedy=_GREEDY.value)
    sep = "" if vocab.level == "char" else " "
    for i, row in enumerate(np.asarray(tokens)):
        if _NUM_SAMPLES.value > 1:
            print(f"--- sample {i + 1} ---")
        sys.stdout.write(prime_text + sep + vocab.decode(row) + "\n")


if __name__ == "__main__":
    cli.run(main)
