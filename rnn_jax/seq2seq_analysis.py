r"""Analysis behind two seq2seq figures: accuracy against input length, and attention maps.

Every number here comes from *decoded* output (greedy, or the best beam of a beam search), never
from teacher forcing: a model is scored on what it would emit on its own.

**Accuracy against input length** (:func:`accuracy_by_length`, :func:`plot_accuracy_vs_length`).
The evaluation split is decoded once (one jitted function per batch shape) and the decoded-metric
sums of :func:`rnn_jax.data.seq2seq_tasks.decoded_metrics` are kept per example, then grouped by
source length ``n``::

    sequence_accuracy(n) = #{exact outputs, EOS included} / #{sources of length n}
    token_accuracy(n)    = #{correct target positions, EOS included} / #{target positions}

so the counts of all lengths add up to the split, and their count-weighted sums are the task's
overall metrics. The figure draws one line per model (e.g. ``"bahdanau"`` against ``"none"``):
x is the source length, y the accuracy in [0, 1], with the training lengths shaded. It shows
where a fixed-size encoder summary breaks down as inputs grow (no attention), and how far
attention carries a model past the lengths it was trained on. :func:`task_for_lengths` gives the
same task over other lengths (same seed, so a held-out source stays held out), to evaluate on
longer inputs than the training range.

**Attention maps** (:func:`attention_examples`, :func:`plot_attention`). A few evaluation examples
are decoded greedily and their attention weights ``α_ts`` (row ``t``: the emitted token, EOS
included; column ``s``: the source token; each row sums to 1 over the source) are drawn as
heatmaps, one per example, titled with the source, the output and whether it is correct; output
tokens that differ from the target are labelled in red. For ``reverse`` a trained attention model
shows an anti-diagonal (output ``t`` reads source ``n - 1 - t``); for ``sort`` each output reads
the source positions holding that symbol.

Figures are PNGs rendered with matplotlib's Agg canvas (no pyplot, no global backend change) and
written atomically (a temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from rnn_jax import decoding, rundir
from rnn_jax.data.seq2seq_tasks import EOS_ID, EVAL_SPLITS, Seq2SeqTask, decoded_metrics
from rnn_jax.errors import InputError

METRICS = ("sequence_accuracy", "token_accuracy")

__all__ = ["METRICS", "accuracy_by_length", "attention_examples", "plot_accuracy_vs_length", "plot_attention",
           "task_for_lengths"]


# ------------------------------------------------------------------------------------- checks


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_int(name: str, value, minimum: int) -> None:
    if not _is_int(value) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_split(split) -> None:
    if split not in EVAL_SPLITS:
        raise InputError(f"split must be one of {', '.join(EVAL_SPLITS)}; got {split!r}")


def _check_task(task) -> None:
    if not isinstance(task, Seq2SeqTask):
        raise InputError(f"task must be a Seq2SeqTask (rnn_jax.data.seq2seq_tasks.make_task), got {task!r}")


def _check_model_fits(model, task: Seq2SeqTask) -> None:
    """A model's vocabulary must hold the task's ids (JAX would clamp out-of-range ids silently)."""
    needed = len(task.vocab)
    for name in ("vocab_size", "target_vocab"):
        size = getattr(model, name, None)
        if _is_int(size) and size < needed:
            raise InputError(f"model {name}={size} is smaller than the {task.name} task's vocabulary ({needed} ids)")


def _split_size(task: Seq2SeqTask, split: str) -> int:
    return task.valid_size if split == "valid" else task.test_size


# ------------------------------------------------------------------------------------- accuracy


def task_for_lengths(task: Seq2SeqTask, min_len: int, max_len: int, *, size: int | None = None) -> Seq2SeqTask:
    """``task`` with sources of ``min_len`` to ``max_len`` (operand digits for ``addition``).

    Same name, seed and symbols, so a model trained on ``task`` reads it, and the split of a source
    is the same hash as in ``task``: a ``test`` source of the new task is never a training source
    of the old one. ``size`` sets both evaluation splits' sizes (default: ``task``'s own).
    Invalid lengths raise :class:`~rnn_jax.errors.InputError` (from the task's own checks).
    """
    _check_task(task)
    sizes = {} if size is None else {"valid_size": size, "test_size": size}
    return dataclasses.replace(task, min_len=min_len, max_len=max_len, **sizes)


def _row_sums(pred_BxL, batch) -> dict:
    """:func:`decoded_metrics` of each row on its own: a dict of ``[B]`` arrays (so the per-length
    numbers use exactly the task's definition)."""
    rows = {k: batch[k] for k in ("tgt_out", "tgt_lengths", "weight")}

    def one(pred_L, row):
        return decoded_metrics(pred_L[None], {k: v[None] for k, v in row.items()})

    return jax.vmap(one)(pred_BxL, rows)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size", "alpha"))
def _decode_and_score(model, params, batch, *, max_len: int, beam_size: int, alpha: float) -> dict:
    """Decodes one batch (greedy when ``beam_size`` is 0, else the best beam) and scores each row."""
    if beam_size == 0:
        tokens = decoding.greedy(model, params, batch["src"], batch["src_lengths"], max_len=max_len).tokens
    else:
        tokens = decoding.beam_search(model, params, batch["src"], batch["src_lengths"], beam_size=beam_size,
                                      max_len=max_len, alpha=alpha).tokens[:, 0]
    return _row_sums(tokens, batch)


def accuracy_by_length(model, params, task: Seq2SeqTask, split: str = "test", *, batch_size: int = 256,
                       beam_size: int = 0, alpha: float = 0.0) -> dict[int, dict]:
    """Decoded accuracy of ``model`` on ``task``'s ``split``, per source length.

    Returns ``{length: {"sequences", "sequence_accuracy", "token_accuracy", "target_tokens"}}``,
    sorted by length, for every source length present in the split (``sequences`` and
    ``target_tokens`` are the counts behind the two accuracies; the ``sequences`` add up to the
    split's size). Output is greedy (``beam_size=0``) or the best of a ``beam_size`` beam search
    with length-penalty exponent ``alpha``, at most ``task.tgt_len`` tokens. Padding rows of the
    last batch (weight 0) count for nothing. For lengths beyond the task's own, pass
    :func:`task_for_lengths` ``(task, lo, hi)``.
    """
    _check_task(task)
    _check_split(split)
    _check_int("batch_size", batch_size, 1)
    _check_int("beam_size (0: greedy)", beam_size, 0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha >= 0:
        raise InputError(f"alpha (length penalty exponent) must be a number >= 0, got {alpha!r}")
    _check_model_fits(model, task)
    totals: dict[int, np.ndarray] = {}  # length -> [sequences, correct_sequences, target_tokens, correct_tokens]
    for batch in task.eval_batches(split, batch_size):
        sums = jax.device_get(_decode_and_score(model, params, batch, max_len=task.tgt_len,
                                                beam_size=int(beam_size), alpha=float(alpha)))
        columns = np.stack([sums["sequences"], sums["correct_sequences"], sums["target_tokens"],
                            sums["correct_tokens"]], axis=1).astype(np.float64)
        for row in np.flatnonzero(batch["weight"] > 0):
            length = int(batch["src_lengths"][row])
            totals[length] = totals.get(length, np.zeros(4)) + columns[row]
    out = {}
    for length in sorted(totals):
        sequences, correct_sequences, target_tokens, correct_tokens = totals[length].tolist()
        out[length] = {"sequences": int(round(sequences)),
                       "sequence_accuracy": correct_sequences / max(sequences, 1.0),
                       "token_accuracy": correct_tokens / max(target_tokens, 1.0),
                       "target_tokens": int(round(target_tokens))}
    return out


# ------------------------------------------------------------------------------------- figures


def _figure(figsize):
    """A matplotlib figure on an Agg canvas (no pyplot: no global backend, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_accuracy_vs_length(curves: Mapping[str, Mapping[int, Mapping]], path, *, title: str | None = None,
                            metric: str = "sequence_accuracy", train_range: tuple[int, int] | None = None) -> str:
    """One PNG: ``metric`` against the source length, one line with markers per label.

    ``curves`` maps a label (e.g. ``"bahdanau"``, ``"none"``) to :func:`accuracy_by_length`'s
    result (any ``{length: {metric: value}}``). ``train_range=(lo, hi)`` shades the lengths seen
    in training. Returns ``path``.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if not isinstance(curves, Mapping) or not curves:
        raise InputError(f"curves must be a non-empty mapping of label -> {{length: metrics}}, got {curves!r}")
    lines = []
    for label, curve in curves.items():
        if not isinstance(curve, Mapping) or not curve:
            raise InputError(f"curve {label!r} must be a non-empty mapping of length -> metrics, got {curve!r}")
        points = []
        for length, entry in curve.items():
            if not _is_int(length):
                raise InputError(f"curve {label!r}: lengths must be integers, got {length!r}")
            if not isinstance(entry, Mapping) or metric not in entry:
                raise InputError(f"curve {label!r}, length {length}: no {metric!r} in {entry!r}")
            value = float(entry[metric])
            if not 0.0 <= value <= 1.0:
                raise InputError(f"curve {label!r}, length {length}: {metric}={value!r} is not in [0, 1]")
            points.append((int(length), value))
        lines.append((str(label), sorted(points)))
    if train_range is not None:
        if (not isinstance(train_range, (tuple, list)) or len(train_range) != 2
                or not all(_is_int(v) for v in train_range) or train_range[0] > train_range[1]):
            raise InputError(f"train_range must be (lo, hi) integer lengths with lo <= hi, got {train_range!r}")

    from matplotlib.ticker import MaxNLocator

    fig = _figure((7, 4.5))
    ax = fig.add_subplot()
    if train_range is not None:
        lo, hi = train_range
        ax.axvspan(lo - 0.5, hi + 0.5, color="0.5", alpha=0.15, lw=0, label=f"training lengths {lo}–{hi}")
    markers = "osD^vP*X"
    for i, (label, points) in enumerate(lines):
        ax.plot([x for x, _ in points], [y for _, y in points], marker=markers[i % len(markers)], ms=5, lw=1.5,
                label=label)
    ax.set_xlabel("input (source) length")
    ax.set_ylabel(metric.replace("_", " ") + " (decoded)")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title)
    return rundir.save_figure_atomic(fig, path)


def attention_examples(model, params, task: Seq2SeqTask, split: str = "test", *, count: int = 4,
                       lengths: Sequence[int] | None = None) -> list[dict]:
    """Greedily decodes a few examples of ``split`` and returns their attention maps.

    The first ``count`` examples, or (``lengths`` given) the first example of each of those source
    lengths, in that order. Each is ``{"source": [str], "target": [str], "output": [str],
    "attention": float ndarray [len(output), len(source)], "correct": bool}``: token strings
    (``target`` and ``output`` end with ``"<eos>"``, ``output`` when the model emitted one), and
    ``correct`` is an exact match up to and including the EOS.
    """
    _check_task(task)
    _check_split(split)
    if getattr(model, "attention", None) == "none":
        raise InputError('model has attention="none": it has no attention maps (use "bahdanau" or "luong")')
    _check_model_fits(model, task)
    size = _split_size(task, split)
    if lengths is None:
        _check_int("count", count, 1)
        chosen = [task.example(split, i) for i in range(min(count, size))]
    else:
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
            raise InputError(f"lengths must be a non-empty sequence of source lengths, got {lengths!r}")
        for length in lengths:
            _check_int("each of lengths", length, 1)
        wanted = list(dict.fromkeys(int(n) for n in lengths))
        found, seen = {}, set()
        for i in range(size):
            src, tgt = task.example(split, i)
            seen.add(len(src))
            if len(src) in wanted and len(src) not in found:
                found[len(src)] = (src, tgt)
                if len(found) == len(wanted):
                    break
        missing = [n for n in wanted if n not in found]
        if missing:
            raise InputError(f"no {split} example of source length {', '.join(map(str, missing))}; the {split}"
                             f" split has lengths {', '.join(map(str, sorted(seen)))} (task_for_lengths gives"
                             " other lengths)")
        chosen = [found[n] for n in wanted]
    names = task.vocab.tokens
    examples = []
    for src, tgt in chosen:  # one at a time: a single [1, task.src_len] compile whatever count or lengths
        batch = task.pack([(src, tgt)])
        out = jax.device_get(decoding.greedy(model, params, batch["src"], batch["src_lengths"],
                                             max_len=task.tgt_len))
        n = int(out.lengths[0])
        tokens = [int(t) for t in out.tokens[0, :n]]
        examples.append({"source": [names[t] for t in src], "target": [names[t] for t in [*tgt, EOS_ID]],
                         "output": [names[t] for t in tokens],
                         "attention": np.asarray(out.attention[0, :n, :len(src)], np.float32),
                         "correct": tokens == [*tgt, EOS_ID]})
    return examples


def _check_example(i: int, example) -> None:
    if not isinstance(example, Mapping) or not {"source", "output", "attention"} <= set(example):
        raise InputError(f"example {i} must be a mapping with 'source', 'output' and 'attention' (see"
                         f" attention_examples), got {type(example).__name__}")
    attention = np.asarray(example["attention"])
    shape = (len(example["output"]), len(example["source"]))
    if attention.shape != shape or 0 in shape:
        raise InputError(f"example {i}: attention has shape {attention.shape}; expected [len(output),"
                         f" len(source)] = {shape}, both > 0")
    if not np.any(attention):
        raise InputError(f"example {i}: its attention map is all zeros; a model with attention=\"none\" has no"
                         " attention maps (use \"bahdanau\" or \"luong\")")


def plot_attention(examples: Sequence[Mapping[str, Any]], path, *, columns: int = 2, title: str | None = None) -> str:
    """One PNG: a grid of attention heatmaps, ``columns`` per row, one per example of
    :func:`attention_examples` (rows: emitted tokens; columns: source tokens; one shared colour
    bar over [0, 1]). Each panel is titled with the source, the output and ✓/✗ (correct or not);
    output tokens that differ from the ``target`` (when given) are labelled in red. Returns
    ``path``."""
    if isinstance(examples, Mapping) or not isinstance(examples, Sequence) or not examples:
        raise InputError(f"examples must be a non-empty list of attention_examples() entries, got {examples!r}")
    _check_int("columns", columns, 1)
    for i, example in enumerate(examples):
        _check_example(i, example)
    cols = min(columns, len(examples))
    rows = math.ceil(len(examples) / cols)
    max_src = max(len(e["source"]) for e in examples)
    max_out = max(len(e["output"]) for e in examples)
    cell = 0.36  # inches per token
    panel_w, panel_h = max(2.8, cell * max_src + 1.4), max(2.4, cell * max_out + 1.3)
    fig = _figure((cols * panel_w + 1.0, rows * panel_h + (0.4 if title else 0.0)))
    axes = fig.subplots(rows, cols, squeeze=False)
    image = None
    for k, ax in enumerate(axes.ravel()):
        if k >= len(examples):
            ax.set_axis_off()
            continue
        e = examples[k]
        source, output = [str(t) for t in e["source"]], [str(t) for t in e["output"]]
        image = ax.imshow(np.asarray(e["attention"], np.float32), cmap="viridis", vmin=0.0, vmax=1.0,
                          aspect="equal", interpolation="nearest")
        ax.set_xticks(range(len(source)), source, fontsize=9)
        ax.set_yticks(range(len(output)), output, fontsize=9)
        ax.tick_params(length=0)
        target = e.get("target")
        if target is not None:
            for t, label in enumerate(ax.get_yticklabels()):
                if t >= len(target) or str(target[t]) != output[t]:
                    label.set_color("crimson")
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        mark = "✓ correct" if e.get("correct") else "✗ wrong"
        ax.set_title(f"{_joined(source)} → {_joined(output)}\n{mark}", fontsize=9)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    if title:
        fig.suptitle(title)
    return rundir.save_figure_atomic(fig, path)


def _joined(tokens: Sequence[str]) -> str:
    """Single-character tokens run together (``"abc"``); others (``<eos>``) are left out."""
    return "".join(t for t in tokens if len(t) == 1)
