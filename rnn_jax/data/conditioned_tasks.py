r"""One-to-many tasks: generate a sequence from a conditioning vector ``v`` (for
:class:`rnn_jax.models.conditioned.ConditionedGenerator`, built with ``**task.model_options()``).

*Digit rows* (:class:`DigitRowsTask`, ``"digit_rows"``): draw one of scikit-learn's 8×8 digits
row by row, ``T = 8`` steps of ``F = 8`` pixels in ``[0, 1]`` (the grey levels 0..16 divided by
16; :func:`rnn_jax.data.digits.load_images`), conditioned on ``v`` = the one-hot class (``C = 10``).
The images and their train/valid/test split (1,257 / 270 / 270, fixed, independent of any seed)
are those of :mod:`rnn_jax.data.digits`. The loss is the summed binary cross-entropy of a row's 8
pixels against their grey levels (soft targets), in nats per row; uniform predictions (every
pixel 1/2) score ``8 ln 2`` per row. Batches: ``cond [B, 10]`` float32, ``frames [B, 8, 8]``
float32, ``lengths [B]`` (8 everywhere), ``labels [B]`` int32 and ``weight [B]``.
:func:`generate_grid` and :func:`save_digit_grid` draw a PNG of generated digits, one row per class.

*Spell* (:class:`SpellTask`, ``"spell"``): spell a number ``n ∈ [0, max_value]`` in English, e.g.
``342 -> "three hundred forty-two"``, ``12005 -> "twelve thousand five"``, ``0 -> "zero"``
(American style: no "and", tens and units joined by a hyphen, ``"one hundred"``/``"one
thousand"`` for 100/1000). ``v`` holds the decimal digits of ``n`` as one-hot blocks, most
significant first, padded with leading zeros to ``D`` = the number of digits of ``max_value``:
``v[10·i + d] = 1`` when digit ``i`` is ``d``, so ``C = 10·D`` (``max_value=999``: ``342`` gives
the blocks of 3, 4, 2 and ``7`` those of 0, 0, 7). The output is the spelling's characters, then EOS.

Vocabulary: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, then the characters of every spelling up to
999,999 (space, hyphen and the letters used), sorted; the same for every ``max_value``. Batches:
``cond [B, 10·D]`` float32, ``tokens [B, T]`` int32 (characters, EOS, PAD after; ``T`` =
``num_steps`` = the longest spelling up to ``max_value``, plus 1), ``lengths [B]`` (characters + 1,
the EOS counted), ``numbers [B]`` int32 and ``weight [B]``.

Splits: the numbers ``0..max_value`` are shuffled by ``np.random.default_rng([seed, 0x5BE11])``;
the first ``valid_size`` are ``valid``, the next ``test_size`` are ``test``, the rest are
``train`` (``seed`` is the task's; defaults: ``valid_size = test_size = min(1000, max(1,
(max_value + 1) // 10))``, and at least one number must remain for training). Evaluation splits come
in ascending order; training numbers never include a held-out one. Metrics come from GREEDY
decoding, never from teacher forcing (:meth:`SpellTask.eval_sums`): ``token_accuracy`` (characters
and EOS right at their positions), ``sequence_accuracy`` (exact spellings), plus the teacher-forced
``loss`` (nats per character, EOS included; uniform: ``ln V``).

Both tasks, like the other task objects: ``train_batch(seed, step, batch_size)`` (a pure function
of its arguments, from ``np.random.default_rng([seed, step])``), ``eval_batches(split,
batch_size)`` (every example once, the last batch padded with ``weight`` 0), ``metrics(sums)``,
``uniform_loss``, ``eval_sums(model, params, batch)`` (jit-compatible scalars to add over
batches), ``model_options()`` and ``sample_text(model, params, key)`` (for a run's
``samples.txt``). :func:`make_task` builds them by name.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import jax
import numpy as np

from rnn_jax.data import digits
from rnn_jax.data.seq2seq_tasks import BOS_ID, EOS_ID, PAD_ID, SPECIALS, decoded_metrics
from rnn_jax.data.sequence_tasks import check_int, check_split, pad_batches
from rnn_jax.errors import InputError

CONDITIONED_TASKS = ("digit_rows", "spell")
EVAL_SPLITS = ("valid", "test")
NUM_CLASSES = 10
ROWS = COLS = 8
MAX_VALUE_RANGE = (9, 999_999)
_SPLIT_TAG = 0x5BE11
_SHADES = " .:-=+*#%@"

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

__all__ = ["CONDITIONED_TASKS", "DigitRowsTask", "SYMBOLS", "SpellTask", "generate_grid", "make_task",
           "save_digit_grid", "spell"]


# ----------------------------------------------------------------------------- spelling

def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest or not hundreds:
        if rest < 20:
            words.append(_ONES[rest])
        else:
            tens, units = divmod(rest, 10)
            words.append(_TENS[tens] + (f"-{_ONES[units]}" if units else ""))
    return " ".join(words)


def spell(n: int) -> str:
    """``n`` (0..999,999) in English words: ``342 -> "three hundred forty-two"``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_VALUE_RANGE[1]:
        raise InputError(f"spell: n={n!r} must be an integer in [0, {MAX_VALUE_RANGE[1]}]")
    thousands, rest = divmod(int(n), 1000)
    if not thousands:
        return _below_thousand(rest)
    return f"{_below_thousand(thousands)} thousand" + (f" {_below_thousand(rest)}" if rest else "")


#: The characters of every spelling (space, hyphen, letters), sorted: ids 3, 4, ... in this order.
SYMBOLS = tuple(sorted(set(" -".join(_ONES + _TENS[2:] + ["hundred", "thousand"]))))


_INDEX = {ch: i + len(SPECIALS) for i, ch in enumerate(SYMBOLS)}


@functools.lru_cache(maxsize=100_000)
def _spelled_ids(n: int) -> tuple:
    """The ids of ``spell(n)`` and EOS."""
    return (*SpellTask.encode(spell(n)), EOS_ID)


@functools.lru_cache(maxsize=None)
def _longest_spelling(max_value: int) -> int:
    """The longest ``len(spell(n))`` for ``n ≤ max_value``, without spelling every number."""
    small = [len(_below_thousand(k)) for k in range(1000)]
    if max_value < 1000:
        return max(small[:max_value + 1])
    top, low = divmod(max_value, 1000)
    tail = lambda upto: max([0] + [1 + small[b] for b in range(1, upto + 1)])  # " " + the rest, if any
    best = max(small)  # n < 1000
    if top > 1:
        best = max(best, max(small[1:top]) + len(" thousand") + tail(999))
    return max(best, small[top] + len(" thousand") + tail(low))


# ----------------------------------------------------------------------------- digit rows

@dataclasses.dataclass(frozen=True)
class DigitRowsTask:
    """Draw an 8×8 digit of class ``v`` (one-hot, 10) row by row: 8 frames of 8 pixels in [0, 1].

    ``seed`` is accepted for a uniform interface and changes nothing: the split is fixed
    (:mod:`rnn_jax.data.digits`)."""

    seed: int = 0

    name = "digit_rows"
    num_steps = ROWS
    frame_size = COLS
    cond_size = NUM_CLASSES
    uniform_loss = COLS * math.log(2.0)

    def __post_init__(self):
        check_int("seed", self.seed, 0, what=f"{self.name} option")

    def model_options(self) -> dict:
        return {"cond_size": self.cond_size, "frame_size": self.frame_size}

    def num_examples(self, split: str) -> int:
        return digits.SPLIT_SIZES[check_split(split, digits.SPLITS)]

    @staticmethod
    def _batch(index: np.ndarray) -> dict:
        images, labels = digits.load_images()
        b = len(index)
        return {"cond": np.eye(NUM_CLASSES, dtype=np.float32)[labels[index]],
                "frames": np.ascontiguousarray(images[index]),
                "lengths": np.full(b, ROWS, np.int32),
                "labels": np.asarray(labels[index], np.int32),
                "weight": np.ones(b, np.float32)}

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` training images drawn by :func:`rnn_jax.data.digits.train_draw` (the
        classifier's draw)."""
        return self._batch(digits.train_draw(seed, step, batch_size))

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """``split`` (``"valid"``, ``"test"``, or ``"train"``) once, in image-index order, padded to
        full batches with copies of its first images (``weight`` 0)."""
        batch = self._batch(digits.split_indices(split))
        del batch["weight"]
        return pad_batches(batch, batch_size)

    def eval_sums(self, model, params, batch) -> dict:
        """The loss sums ``{"nll", "count"}`` (nats, per row) of one batch."""
        return model.loss(params, batch)[1]

    @staticmethod
    def metrics(sums: Mapping) -> dict:
        """``loss`` (nats per 8-pixel row) and ``pixel_loss`` (nats per pixel)."""
        count = float(sums["count"])
        loss = float(sums["nll"]) / count if count > 0 else float("nan")
        return {"loss": loss, "pixel_loss": loss / COLS}

    def sample_text(self, model, params, key) -> str:
        """One generated digit per class as text, shaded with ``" .:-=+*#%@"`` (light to dark): the
        greedy one (Bernoulli means fed back) and a sampled one (its means along a trajectory
        sampled with ``key``, as in :func:`generate_grid`)."""
        v = np.eye(NUM_CLASSES, dtype=np.float32)
        greedy = np.asarray(model.generate(params, v, max_len=ROWS, greedy=True).frames)
        sampled = np.asarray(model.generate(params, v, key, max_len=ROWS, greedy=False).means)
        shade = lambda p: _SHADES[int(round(float(np.clip(p, 0.0, 1.0)) * (len(_SHADES) - 1)))]
        lines = []
        for title, images in (("greedy", greedy), ("sampled", sampled)):
            lines.append(f"{title:<8}" + "  ".join(f"{c:<{COLS}}" for c in range(NUM_CLASSES)))
            for r in range(ROWS):
                lines.append(" " * 8 + "  ".join("".join(shade(p) for p in images[c, r]) for c in range(NUM_CLASSES)))
        return "\n".join(lines) + "\n"


def generate_grid(model, params, key, per_class: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` sampled digits of each class: ``(images [10·per_class, 8, 8], labels)``, class
    by class. Each image is the sequence of Bernoulli means along a sampled trajectory (row ``t``'s
    means given the sampled rows before it), which shows grey levels rather than 0/1 noise."""
    check_int("per_class", per_class, 1, what="argument")
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int32), per_class)
    v = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    out = model.generate(params, v, key, max_len=ROWS, greedy=False)
    return np.asarray(out.means), labels


def save_digit_grid(images_NxHxW, labels, path: str, *, columns: int = 8) -> None:
    """A PNG at ``path``: one row per class 0..9 (labelled on the left) with that class's first
    ``columns`` images of ``images_NxHxW`` (values in [0, 1], dark = ink), blank where fewer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = check_int("columns", columns, 1, what="argument")
    images = np.asarray(images_NxHxW, np.float32)
    labels = np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise InputError(f"images must be [N, H, W] with labels [N]; got shapes {images.shape} and {labels.shape}")
    fig = Figure(figsize=(0.9 * columns + 0.6, 0.9 * NUM_CLASSES))
    FigureCanvasAgg(fig)
    axes = fig.subplots(NUM_CLASSES, columns, squeeze=False)
    for c in range(NUM_CLASSES):
        mine = images[labels == c][:columns]
        for j in range(columns):
            ax = axes[c, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(mine):
                ax.imshow(mine[j], cmap="gray_r", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(str(c), rotation=0, fontsize=14, labelpad=14, va="center")
    fig.subplots_adjust(left=0.08, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)


# ----------------------------------------------------------------------------- spelling numbers

@dataclasses.dataclass(frozen=True)
class SpellTask:
    """Spell a number ``n ∈ [0, max_value]`` given as one-hot digits (module docstring)."""

    max_value: int = 999
    valid_size: int | None = None
    test_size: int | None = None
    seed: int = 0

    name = "spell"
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __post_init__(self):
        what = f"{self.name} option"
        check_int("max_value", self.max_value, *MAX_VALUE_RANGE, what=what)
        check_int("seed", self.seed, 0, what=what)
        numbers = self.max_value + 1
        default = min(1000, max(1, numbers // 10))
        for knob in ("valid_size", "test_size"):
            value = getattr(self, knob)
            if value is None:
                object.__setattr__(self, knob, default)
            else:
                check_int(knob, value, 1, self.max_value, what=what)
        if self.valid_size + self.test_size > self.max_value:
            raise InputError(f"{what}s valid_size={self.valid_size} + test_size={self.test_size} must leave at least "
                             f"one of the max_value + 1 = {numbers} numbers for training (at most {self.max_value} "
                             "held out); lower valid_size or test_size, or raise max_value")

    # ---- sizes and vocabulary -------------------------------------------------------------------

    @property
    def num_digits(self) -> int:
        """``D``: the digits of ``max_value`` (the one-hot blocks of ``v``)."""
        return len(str(self.max_value))

    @property
    def cond_size(self) -> int:
        return 10 * self.num_digits

    @property
    def symbols(self) -> tuple:
        return SYMBOLS

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(SYMBOLS)

    @property
    def uniform_loss(self) -> float:
        return math.log(self.vocab_size)

    @property
    def num_steps(self) -> int:
        """``T``: the longest spelling up to ``max_value``, plus the EOS (a ``max_len`` that fits all)."""
        return _longest_spelling(self.max_value) + 1

    def model_options(self) -> dict:
        return {"cond_size": self.cond_size, "vocab_size": self.vocab_size}

    @staticmethod
    def encode(text: str) -> list[int]:
        """Character ids of ``text`` (no EOS)."""
        missing = sorted({ch for ch in text if ch not in _INDEX})
        if missing:
            raise InputError(f"character(s) not in the spell vocabulary: {', '.join(map(repr, missing))}")
        return [_INDEX[ch] for ch in text]

    def decode(self, ids) -> str:
        """Characters of ``ids`` up to the first EOS (PAD and BOS skipped)."""
        out = []
        for i in np.asarray(ids).tolist():
            if i == EOS_ID:
                break
            if i >= len(SPECIALS):
                out.append(SYMBOLS[i - len(SPECIALS)])
        return "".join(out)

    def cond(self, numbers) -> np.ndarray:
        """``v [N, 10·D]``: one-hot digits, most significant first, leading zeros included."""
        numbers = np.asarray(numbers, np.int64)
        D = self.num_digits
        digit_NxD = (numbers[:, None] // 10 ** np.arange(D - 1, -1, -1)[None, :]) % 10
        v = np.zeros((len(numbers), D, 10), np.float32)
        np.put_along_axis(v, digit_NxD[..., None], 1.0, axis=-1)
        return v.reshape(len(numbers), 10 * D)

    # ---- splits and batches ----------------------------------------------------------------------

    def split_numbers(self, split: str) -> np.ndarray:
        """The numbers of ``split`` (``"train"``, ``"valid"``, ``"test"``), ascending; read-only."""
        return _split_numbers(self)[check_split(split, ("train", *EVAL_SPLITS))]

    def num_examples(self, split: str) -> int:
        return len(self.split_numbers(split))

    def pack(self, numbers) -> dict:
        """A batch for ``numbers`` (module docstring), ``weight`` 1."""
        numbers = np.asarray(numbers, np.int32)
        T = self.num_steps
        tokens = np.full((len(numbers), T), PAD_ID, np.int32)
        lengths = np.zeros(len(numbers), np.int32)
        for row, n in enumerate(numbers.tolist()):
            ids = _spelled_ids(n)
            tokens[row, :len(ids)] = ids
            lengths[row] = len(ids)
        return {"cond": self.cond(numbers), "tokens": tokens, "lengths": lengths, "numbers": numbers,
                "weight": np.ones(len(numbers), np.float32)}

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` training numbers drawn uniformly (with replacement) by
        ``np.random.default_rng([seed, step])``; never a valid or test number."""
        batch_size = check_int("batch_size", batch_size, 1, what="argument")
        rng = np.random.default_rng([check_int("seed", seed, 0, what="argument"),
                                     check_int("step", step, 0, what="argument")])
        train = self.split_numbers("train")
        return self.pack(train[rng.integers(0, len(train), size=batch_size)])

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """Every number of ``split`` once, ascending, padded to full batches (padding has weight 0)."""
        batch = self.pack(self.split_numbers(check_split(split, EVAL_SPLITS)))
        del batch["weight"]
        return pad_batches(batch, batch_size)

    # ---- evaluation ------------------------------------------------------------------------------

    def eval_sums(self, model, params, batch) -> dict:
        """Teacher-forced loss sums ``{"nll", "count"}`` and the accuracies of GREEDY-decoded output
        (``correct_tokens``, ``target_tokens``, ``correct_sequences``, ``sequences``); jit-compatible."""
        _, sums = model.loss(params, batch)
        out = model.generate(params, batch["cond"], max_len=self.num_steps, greedy=True)
        decoded = decoded_metrics(out.tokens, {"tgt_out": batch["tokens"], "tgt_lengths": batch["lengths"],
                                               "weight": batch["weight"]})
        return {**sums, **decoded}

    @staticmethod
    def metrics(sums: Mapping) -> dict:
        """``loss`` (nats per character, EOS included) and, with the decoded sums, ``token_accuracy``
        and ``sequence_accuracy``."""
        ratio = lambda a, b: float(sums[a]) / float(sums[b]) if float(sums[b]) > 0 else float("nan")
        out = {"loss": ratio("nll", "count")}
        if "target_tokens" in sums:
            out["token_accuracy"] = ratio("correct_tokens", "target_tokens")
            out["sequence_accuracy"] = ratio("correct_sequences", "sequences")
        return out

    def sample_text(self, model, params, key, num_examples: int = 6, split: str = "valid") -> str:
        """``num_examples`` numbers of ``split`` (chosen by ``key``): the greedy spelling (marked
        ``ok`` or followed by the target) and one sampled spelling each."""
        check_int("num_examples", num_examples, 1, what="argument")
        numbers = self.split_numbers(check_split(split, EVAL_SPLITS))
        k_pick, k_sample = jax.random.split(key)
        pick = np.sort(np.asarray(jax.random.choice(k_pick, len(numbers), (min(num_examples, len(numbers)),),
                                                    replace=False)))
        chosen = numbers[pick]
        v = self.cond(chosen)
        greedy = np.asarray(model.generate(params, v, max_len=self.num_steps, greedy=True).tokens)
        sampled = np.asarray(model.generate(params, v, k_sample, max_len=self.num_steps, greedy=False).tokens)
        lines = []
        width = len(str(self.max_value))
        for n, g, s in zip(chosen.tolist(), greedy, sampled):
            text, target = self.decode(g), spell(n)
            mark = "ok" if text == target else f"(target: {target})"
            lines.append(f"{split} {n:>{width}} -> {text!r} {mark}; sampled: {self.decode(s)!r}")
        return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=16)
def _split_numbers(task: SpellTask) -> dict:
    order = np.random.default_rng([task.seed, _SPLIT_TAG]).permutation(task.max_value + 1)
    v, t = task.valid_size, task.test_size
    out = {"valid": np.sort(order[:v]), "test": np.sort(order[v:v + t]), "train": np.sort(order[v + t:])}
    for a in out.values():
        a.flags.writeable = False  # cached: shared by every call
    return out


# ----------------------------------------------------------------------------- by name

_CLASSES = {"digit_rows": DigitRowsTask, "spell": SpellTask}


def make_task(name: str, seed: int = 0, **options):
    """The task ``name`` (one of :data:`CONDITIONED_TASKS`) with ``options`` (its dataclass fields but
    ``seed``); unknown names and options raise :class:`~rnn_jax.errors.InputError`."""
    if name not in _CLASSES:
        raise InputError(f"conditioned task must be one of {', '.join(map(repr, CONDITIONED_TASKS))}; got {name!r}")
    cls = _CLASSES[name]
    allowed = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(map(repr, unknown))} for conditioned task {name!r}; "
                         f"allowed: {', '.join(allowed) if allowed else 'none'}")
    return cls(seed=seed, **options)
