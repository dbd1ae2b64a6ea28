r"""Attention pictures from a captioning or VQA run directory (its best checkpoint).

    python -m experiments.caption_figures --run=runs/scenes_soft             # overlays per emitted word
    python -m experiments.caption_figures --run=runs/clevr_soft --num=8      # glimpses per question

Captioning: the first ``--num`` images of ``--split`` with their greedy caption; each word's panel
shows the attention ``α_t`` of the step that emitted it (``<run>/figures/overlays.png``).
VQA: one row per question (the first ``--num`` of the split, all question types in turn), with each
glimpse's attention (``<run>/figures/vqa_attention.png``). ``--out`` names another PNG.
"""

import os

from absl import flags

from experiments import cli
from rnn_jax import models, train
from rnn_jax.errors import InputError

_RUN = flags.DEFINE_string("run", None, "A caption or vqa run directory.")
_NUM = flags.DEFINE_integer("num", 6, "How many images (captioning) or questions (VQA).")
_SPLIT = flags.DEFINE_enum("split", "test", ["valid", "test"], "Which evaluation split.")
_OUT = flags.DEFINE_string("out", None, "PNG path (default: <run>/figures/overlays.png or vqa_attention.png).")
flags.mark_flags_as_required(["run"])


def main(argv):
    del argv
    from rnn_jax import attention_figures

    problem, params, config = train.load_problem(_RUN.value)
    kind = models.kind_name(config)
    if _NUM.value < 1:
        raise InputError(f"--num={_NUM.value}: must be >= 1")
    if kind == "caption":
        examples = attention_figures.caption_examples(problem, params, _SPLIT.value, _NUM.value)
        out = _OUT.value or os.path.join(_RUN.value, "figures", "overlays.png")
        attention_figures.caption_overlays(examples, problem.model.encoder, out)
        for e in examples:
            print(" ".join(w for w in e["words"] if w != "<eos>"), "|", e["title"])
    elif kind == "vqa":
        examples = attention_figures.vqa_examples(problem, params, _SPLIT.value, _NUM.value)
        out = _OUT.value or os.path.join(_RUN.value, "figures", "vqa_attention.png")
        attention_figures.vqa_maps(examples, problem.model.encoder, out)
    else:
        raise InputError(f"--run={_RUN.value} is a {kind or 'language-model'} run; this script draws caption and "
                         "vqa runs")
    print(out)


if __name__ == "__main__":
    cli.run(main)
