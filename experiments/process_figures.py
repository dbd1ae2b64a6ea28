r"""Figures of the process types, from run directories (their best checkpoints).

    # one-to-many: generated digits, a row per class
    python -m experiments.process_figures --what=digits --runs=runs/digit_rows
    # encoder-decoder: attention maps of test examples (one per source length given)
    python -m experiments.process_figures --what=attention --runs=runs/reverse_bahdanau --lengths=5,10,15,20
    # whole-sequence accuracy against source length, one line per run (label=dir), decoded greedily
    python -m experiments.process_figures --what=length --runs=attention=runs/reverse_bahdanau,none=runs/reverse_none \
        --min_len=2 --max_len=30

Each figure is a PNG (``--out``; default: ``<first run>/<what>.png``); the length curves are also
written next to it as JSON.
"""

import os

from absl import flags

from experiments import cli
from rnn_jax import rundir, train
from rnn_jax.errors import InputError

_WHAT = flags.DEFINE_enum("what", None, ["digits", "attention", "length"], "Which figure.")
_RUNS = flags.DEFINE_list("runs", None, "Run directories (for --what=length: label=dir, one line each).")
_OUT = flags.DEFINE_string("out", None, "PNG path (default: <first run>/<what>.png).")
_LENGTHS = flags.DEFINE_list("lengths", None, "attention: one test example of each source length.")
_MIN_LEN = flags.DEFINE_integer("min_len", None, "length: shortest source (default: the task's).")
_MAX_LEN = flags.DEFINE_integer("max_len", None, "length: longest source (default: the task's).")
_SIZE = flags.DEFINE_integer("size", 2000, "length: test examples.")
_BEAM = flags.DEFINE_integer("beam_size", 0, "length: beam width (0: greedy).")
_PER_CLASS = flags.DEFINE_integer("per_class", 8, "digits: samples per class.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.mark_flags_as_required(["what", "runs"])


def _load(workdir: str, kind: str):
    problem, params, config = train.load_problem(workdir)
    got = config.model.get("kind") or ""
    if got != kind:
        raise InputError(f"--runs={workdir} is a {got or 'language-model'} run; this figure needs a {kind} run")
    return problem, params


def main(argv):
    del argv
    import jax

    runs = [r.partition("=") for r in _RUNS.value]
    labelled = [(label, path) if sep else (os.path.basename(os.path.normpath(label)), label)
                for label, sep, path in runs]
    out = _OUT.value or os.path.join(labelled[0][1], f"{_WHAT.value}.png")
    if _WHAT.value == "digits":
        from rnn_jax.data import conditioned_tasks

        problem, params = _load(labelled[0][1], "conditioned")
        if problem.task != "digit_rows":
            raise InputError(f"--what=digits needs a digit_rows run, not a {problem.task} run")
        images, labels = conditioned_tasks.generate_grid(problem.model, params, jax.random.PRNGKey(_SEED.value),
                                                         per_class=_PER_CLASS.value)
        conditioned_tasks.save_digit_grid(images, labels, out, columns=_PER_CLASS.value)
    elif _WHAT.value == "attention":
        from rnn_jax import seq2seq_analysis

        problem, params = _load(labelled[0][1], "seq2seq")
        lengths = [int(n) for n in _LENGTHS.value] if _LENGTHS.value else None
        task = problem.task_obj
        if lengths and (min(lengths) < task.min_len or max(lengths) > task.max_len):  # beyond training lengths
            task = seq2seq_analysis.task_for_lengths(task, min(lengths + [task.min_len]),
                                                     max(lengths + [task.max_len]))
        examples = seq2seq_analysis.attention_examples(problem.model, params, task, "test",
                                                       count=len(lengths) if lengths else 4, lengths=lengths)
        seq2seq_analysis.plot_attention(examples, out, title=f"{problem.task}: attention over the source")
    else:
        from rnn_jax import seq2seq_analysis

        curves, train_range = {}, None
        for label, path in labelled:
            problem, params = _load(path, "seq2seq")
            task = problem.task_obj
            train_range = (task.min_len, task.max_len)
            lo, hi = _MIN_LEN.value or task.min_len, _MAX_LEN.value or task.max_len
            wide = seq2seq_analysis.task_for_lengths(task, lo, hi, size=_SIZE.value)
            curves[label] = seq2seq_analysis.accuracy_by_length(problem.model, params, wide, "test",
                                                                beam_size=_BEAM.value)
            print(f"{label}: " + " ".join(f"{n}:{c['sequence_accuracy']:.2f}" for n, c in curves[label].items()))
        seq2seq_analysis.plot_accuracy_vs_length(curves, out, train_range=train_range,
                                                 title="whole-sequence accuracy of decoded output")
        rundir.write_json_atomic(os.path.splitext(out)[0] + ".json",
                                 {label: {str(n): c for n, c in curve.items()} for label, curve in curves.items()})
    print(f"wrote {out}")


if __name__ == "__main__":
    cli.run(main)
