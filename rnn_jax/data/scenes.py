r"""Digit scenes: scikit-learn's handwritten digits placed and coloured on a canvas, with template
captions; a captioning task that needs no download.

A scene is a black canvas of ``height × width`` RGB pixels with ``n`` objects,
``min_objects ≤ n ≤ max_objects`` (uniform). Each object is one of the 8×8 digit images of
:func:`rnn_jax.data.digits.load_images` (intensity in ``[0, 1]``), upscaled ``scale`` times
(nearest), tinted by one of the first ``num_colors`` colours of :data:`COLORS` and added to the
canvas (``pixel = Σ intensity · rgb``, clipped to 1). The top-left corners are uniform, with the
objects' horizontal extents at least one pixel apart (rejection sampling), so "left of" is never
ambiguous. Colours and digit images are drawn uniformly and independently (a colour may repeat).

Split by source digit: training scenes use only the digit images of the digits task's train split,
validation and test scenes only those of its valid and test splits
(:func:`rnn_jax.data.digits.split_indices`), so every evaluated digit is a handwriting sample never
seen in training.

Caption: the objects from left to right, ``"a <colour> <digit>"`` each, joined by ``"left of"``::

    a red three left of a blue seven left of a green one

The words name each object's attributes (colour, digit class) and the relation between neighbours.
The vocabulary is :class:`~rnn_jax.data.captions.CaptionVocab` over ``a``, ``left``, ``of``, the
colour words and the digit words (``zero`` .. ``nine``); ``T = max_len = 5·max_objects - 2 + 1``
tokens (EOS included).

Examples: training scene ``b`` of a step comes from ``np.random.default_rng([seed, step])`` (a
pure function of ``(seed, step, batch_size)``); evaluation scene ``i`` of a split from
``np.random.default_rng([task.seed, 0x5CE, split_id, i])``. Batches are dicts of NumPy arrays:
``images [B, H, W, 3]`` float32, ``tokens [B, T]``, ``lengths [B]``, ``weight [B]`` (see
:func:`~rnn_jax.data.captions.pack_captions`) and ``index [B]`` (the scene's index in its split).

:meth:`DigitScenesTask.objects` gives each evaluation scene's objects, left to right, as
``{"color", "digit", "box": (top, left, bottom, right)}`` in pixels: the ground truth of
attribute recall (:func:`rnn_jax.caption_metrics.attribute_recall`) and of the attention mass on
the named object's region.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from rnn_jax.data import digits
from rnn_jax.data.captions import CaptionVocab, pack_captions
from rnn_jax.data.sequence_tasks import check_int
from rnn_jax.errors import InputError

COLORS = (("red", (1.0, 0.15, 0.15)), ("green", (0.15, 1.0, 0.15)), ("blue", (0.25, 0.4, 1.0)),
          ("yellow", (1.0, 1.0, 0.1)), ("magenta", (1.0, 0.2, 1.0)), ("cyan", (0.1, 1.0, 1.0)),
          ("white", (1.0, 1.0, 1.0)), ("orange", (1.0, 0.55, 0.0)))
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATION = ("left", "of")
SPLITS = ("train", "valid", "test")
_EVAL_TAG = 0x5CE
MAX_TRIES = 1000

__all__ = ["COLORS", "DIGIT_WORDS", "DigitScenesTask", "make_task"]


@dataclasses.dataclass(frozen=True)
class DigitScenesTask:
    """Captioning digit scenes (module docstring). Options: canvas ``height``/``width`` (pixels),
    ``min_objects``/``max_objects`` (1..3 by default; at most 5), ``num_colors`` (the colour
    vocabulary, 1..8), ``scale`` (digit upscaling, 1..4) and the evaluation sizes."""

    seed: int = 0
    height: int = 16
    width: int = 40
    min_objects: int = 1
    max_objects: int = 3
    num_colors: int = 6
    scale: int = 1
    valid_size: int = 500
    test_size: int = 500

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        check_int("scale", self.scale, 1, 4)
        side = 8 * self.scale
        check_int("min_objects", self.min_objects, 1, 5)
        check_int("max_objects", self.max_objects, self.min_objects, 5)
        check_int("num_colors", self.num_colors, 1, len(COLORS))
        check_int("height", self.height, side, 512)
        need = self.max_objects * (side + 1) - 1
        check_int("width", self.width, need, 2048)
        check_int("valid_size", self.valid_size, 1, 10**6)
        check_int("test_size", self.test_size, 1, 10**6)

    # ---- sizes and vocabulary -------------------------------------------------------------------

    inputs = "images"
    object_words = DIGIT_WORDS  # the word that names an object (attention mass is measured when one is emitted)

    @property
    def image_shape(self) -> tuple:
        return (self.height, self.width, 3)

    @property
    def colors(self) -> tuple:
        return tuple(name for name, _ in COLORS[:self.num_colors])

    @property
    def vocab(self) -> CaptionVocab:
        return CaptionVocab(("a", *RELATION, *self.colors, *DIGIT_WORDS))

    @property
    def max_len(self) -> int:
        """``T``: the longest caption (``5·max_objects - 2`` words) plus EOS."""
        return 5 * self.max_objects - 1

    def num_images(self, split: str) -> int:
        if split == "valid":
            return self.valid_size
        if split == "test":
            return self.test_size
        raise InputError(f"split must be 'valid' or 'test' (training scenes are drawn fresh); got {split!r}")

    # ---- scenes --------------------------------------------------------------------------------

    def _draw(self, rng: np.random.Generator, pool: np.ndarray) -> list[dict]:
        """One scene's objects, left to right: ``{"color", "digit", "image", "box"}``."""
        side = 8 * self.scale
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        for _ in range(MAX_TRIES):
            xs = np.sort(rng.integers(0, self.width - side + 1, size=n))
            if n == 1 or np.all(np.diff(xs) >= side + 1):
                break
        else:  # unreachable for valid options (width fits max_objects side by side); kept as a guard
            raise InputError(f"could not place {n} objects on a canvas {self.width} wide")
        ys = rng.integers(0, self.height - side + 1, size=n)
        colors = rng.integers(0, self.num_colors, size=n)
        images = pool[rng.integers(0, len(pool), size=n)]
        _, labels = digits.load_images()
        return [{"color": COLORS[c][0], "digit": DIGIT_WORDS[labels[i]], "image": int(i),
                 "box": (int(y), int(x), int(y) + side, int(x) + side)}
                for c, i, y, x in zip(colors, images, ys, xs)]

    def render(self, objects: list[dict]) -> np.ndarray:
        """The canvas ``[H, W, 3]`` float32 of a scene's objects."""
        pixels, _ = digits.load_images()
        canvas = np.zeros(self.image_shape, np.float32)
        rgb = dict(COLORS)
        for obj in objects:
            top, left, bottom, right = obj["box"]
            ink = np.kron(pixels[obj["image"]], np.ones((self.scale, self.scale), np.float32))
            canvas[top:bottom, left:right] += ink[:, :, None] * np.asarray(rgb[obj["color"]], np.float32)
        return np.minimum(canvas, 1.0)

    @staticmethod
    def caption(objects: list[dict]) -> list[str]:
        words = []
        for k, obj in enumerate(objects):
            words += ([*RELATION] if k else []) + ["a", obj["color"], obj["digit"]]
        return words

    def _pack(self, scenes: list[list[dict]], index, batch_size: int | None = None) -> dict:
        batch = pack_captions(self.vocab, [self.caption(s) for s in scenes], self.max_len, batch_size)
        rows = len(batch["weight"])
        filled = [scenes[b if b < len(scenes) else 0] for b in range(rows)]
        batch["images"] = np.stack([self.render(s) for s in filled])
        index = list(index) + [index[0]] * (rows - len(scenes))
        batch["index"] = np.asarray(index, np.int32)
        return batch

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` fresh training scenes: a pure function of ``(seed, step, batch_size)``."""
        check_int("batch_size", batch_size, 1, 10**6)
        rng = np.random.default_rng([seed, step])
        pool = digits.split_indices("train")
        scenes = [self._draw(rng, pool) for _ in range(batch_size)]
        return self._pack(scenes, [-1] * batch_size)

    def scenes(self, split: str) -> tuple:
        """The evaluation scenes of ``split`` (objects left to right, as in the module docstring)."""
        return _eval_scenes(self, split)

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """Every scene of ``split`` once, in order; the last batch padded with weight-0 rows."""
        check_int("batch_size", batch_size, 1, 10**6)
        scenes = self.scenes(split)
        return [self._pack(list(scenes[i:i + batch_size]), range(i, min(i + batch_size, len(scenes))), batch_size)
                for i in range(0, len(scenes), batch_size)]

    def references(self, split: str) -> list[list[str]]:
        """Per scene: its one reference caption."""
        return [[" ".join(self.caption(s))] for s in self.scenes(split)]

    def objects(self, split: str) -> list[list[dict]]:
        """Per scene: ``{"color", "digit", "box"}`` of each object, left to right."""
        return [[{k: o[k] for k in ("color", "digit", "box")} for o in s] for s in self.scenes(split)]

    def load_image(self, split: str, index: int) -> np.ndarray:
        return self.render(self.scenes(split)[index])


@functools.lru_cache(maxsize=8)
def _eval_scenes(task: DigitScenesTask, split: str) -> tuple:
    size = task.num_images(split)
    pool = digits.split_indices(split)
    split_id = SPLITS.index(split)
    return tuple(task._draw(np.random.default_rng([task.seed, _EVAL_TAG, split_id, i]), pool) for i in range(size))


def make_task(seed: int = 0, **options) -> DigitScenesTask:
    """The task with ``options`` (the registry's check refuses unknown ones, naming the allowed)."""
    from rnn_jax.data import registry

    return registry.make("digit_scenes", seed, options)
