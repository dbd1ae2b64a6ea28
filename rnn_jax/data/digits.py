r"""Sequential digits: scikit-learn's bundled 8×8 handwritten digits read as a sequence.

The images are ``sklearn.datasets.load_digits()``: 1,797 grey-level images of 8×8 pixels with
values 0..16 (the UCI optical-recognition test set), ten classes of 174 to 183 images each.
The file ships with scikit-learn, so nothing is downloaded. Pixels are scaled to ``[0, 1]``
(divided by 16). Two readings:

* ``mode="row"``: row by row, ``T = 8`` steps of ``F = 8`` pixels (step ``t`` = image row ``t``);
* ``mode="pixel"``: pixel by pixel in row-major order, ``T = 64`` steps of ``F = 1``.

Every sequence has the full length ``T`` (``lengths`` is ``T`` everywhere).

Split (fixed, independent of any run's seed): 1,257 train / 270 valid / 270 test images. The
images are put in a random order by ``np.random.default_rng(0).permutation(1797)`` and then
sorted stably by label, so each class is contiguous and randomly ordered inside. Walking that
order, position ``i`` goes to test when ``floor((i + 1)·270/1797) > floor(i·270/1797)``
(systematic sampling), and of the rest, position ``j`` goes to valid by the same rule with
``270/1527``; the others are train. Each class thus gives about 15% of its images (±1) to valid
and to test. :func:`split_indices` returns each split's image indices, sorted ascending (the
evaluation order); :data:`SPLIT_SIZES` holds the sizes.

:class:`DigitsTask` offers the classification-task interface of
:mod:`rnn_jax.data.sequence_tasks` (``train_batch``, ``eval_batches``, ``metrics``), with
``inputs`` ``[B, T, F]`` float32. ``eval_batches`` also takes ``"train"`` (the training images in
order, e.g. for a training accuracy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import numpy as np

from rnn_jax.data.sequence_tasks import check_int, check_split, classification_metrics, pad_batches
from rnn_jax.errors import InputError

MODES = ("row", "pixel")
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 1257, "valid": 270, "test": 270}
NUM_IMAGES = 1797
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def load_images() -> tuple[np.ndarray, np.ndarray]:
    """All images ``[1797, 8, 8]`` float32 in ``[0, 1]`` and labels ``[1797]`` int32 (read-only)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # an optional dependency
        raise ImportError("the digits task needs scikit-learn (pip install 'scikit-learn>=1.3')") from e
    data = load_digits()
    images = (np.asarray(data.images, np.float32) / 16.0).reshape(-1, 8, 8)
    labels = np.asarray(data.target, np.int32)
    if images.shape[0] != NUM_IMAGES:
        raise RuntimeError(f"sklearn's digits have {images.shape[0]} images; expected {NUM_IMAGES}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def _systematic(n: int, k: int) -> np.ndarray:
    """``[n]`` bools, ``k`` of them true, spread evenly: position ``i`` when ``⌊(i+1)k/n⌋ > ⌊ik/n⌋``."""
    i = np.arange(n, dtype=np.int64)
    return (i + 1) * k // n > i * k // n


@functools.lru_cache(maxsize=1)
def _splits() -> dict:
    _, labels = load_images()
    order = np.random.default_rng(SPLIT_SEED).permutation(NUM_IMAGES)
    order = order[np.argsort(labels[order], kind="stable")]
    is_test = _systematic(NUM_IMAGES, SPLIT_SIZES["test"])
    rest = order[~is_test]
    is_valid = _systematic(len(rest), SPLIT_SIZES["valid"])
    out = {"train": np.sort(rest[~is_valid]), "valid": np.sort(rest[is_valid]), "test": np.sort(order[is_test])}
    for split, idx in out.items():
        assert len(idx) == SPLIT_SIZES[split], (split, len(idx))
        idx.flags.writeable = False
    return out


def split_indices(split: str) -> np.ndarray:
    """The image indices (into ``load_digits()``) of ``split``, ascending; read-only."""
    return _splits()[check_split(split, SPLITS)]


def train_draw(seed: int, step: int, batch_size: int) -> np.ndarray:
    """Indices of ``batch_size`` training images drawn by ``np.random.default_rng([seed, step])``,
    distinct within the batch while ``batch_size`` ≤ 1257 (with replacement beyond)."""
    batch_size = check_int("batch_size", batch_size, 1, what="argument")
    rng = np.random.default_rng([check_int("seed", seed, 0, what="argument"),
                                 check_int("step", step, 0, what="argument")])
    train = split_indices("train")
    return train[rng.choice(len(train), size=batch_size, replace=batch_size > len(train))]


@dataclasses.dataclass(frozen=True)
class DigitsTask:
    """Classify 8×8 digits read as a sequence (``mode="row"``: T=8, F=8; ``"pixel"``: T=64, F=1)."""

    mode: str = "row"

    name = "digits"
    num_classes = 10
    vocab_size = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"digits option mode={self.mode!r}: must be one of {', '.join(map(repr, MODES))}")

    @property
    def num_steps(self) -> int:
        return 8 if self.mode == "row" else 64

    @property
    def input_size(self) -> int:
        return 8 if self.mode == "row" else 1

    def num_examples(self, split: str) -> int:
        return SPLIT_SIZES[check_split(split, SPLITS)]

    def _batch(self, index: np.ndarray) -> dict:
        images, labels = load_images()
        b = len(index)
        return {"inputs": images[index].reshape(b, self.num_steps, self.input_size),
                "lengths": np.full(b, self.num_steps, np.int32),
                "labels": labels[index],
                "weight": np.ones(b, np.float32)}

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict:
        """``batch_size`` training images drawn by :func:`train_draw`."""
        return self._batch(train_draw(seed, step, batch_size))

    def eval_batches(self, split: str, batch_size: int) -> list[dict]:
        """``split`` (``"valid"``, ``"test"`` or ``"train"``) once, in index order, padded to full
        batches with copies of its first images (``weight`` 0)."""
        batch = self._batch(split_indices(split))
        del batch["weight"]
        return pad_batches(batch, batch_size)

    def metrics(self, sums: Mapping) -> dict:
        return classification_metrics(sums)


__all__ = ["DigitsTask", "MODES", "SPLIT_SIZES", "load_images", "split_indices", "train_draw"]
