r"""Real image-captioning data in the Karpathy-split layout (Flickr8k, Flickr30k, COCO).

The JSON file (``dataset_flickr8k.json``, ``dataset_coco.json``, ...) is::

    {"images": [{"filename": "1000268201_693b08cb0e.jpg",
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"tokens": ["a", "child", ...], "raw": "A child ..."}, ...],
                 "filepath": "val2014",           # optional: a folder under image_dir (COCO)
                 ...},                             # other keys (imgid, cocoid, sentids) are ignored
                ...],
     "dataset": "flickr8k"}

Splits: ``"train"`` is the images marked ``train`` or ``restval``, ``"valid"`` those marked ``val``,
``"test"`` those marked ``test``, each in file order; ``max_images = N > 0`` keeps the first ``N``
of each split. A sentence's words are :func:`~rnn_jax.data.captions.tokenize` of its ``tokens``
joined by spaces (of ``raw`` when it has no ``tokens``), the same normalisation the hypotheses get
in :mod:`rnn_jax.caption_metrics`. The vocabulary is built from the train split's sentences only
(:meth:`CaptionVocab.build` with ``min_count``); other words encode as ``<unk>``.

Inputs: exactly one of

* ``image_dir``: the image of an entry is ``image_dir/[filepath/]filename``, decoded with Pillow
  (matplotlib's reader where Pillow is missing) to RGB float32 in ``[0, 1]`` (grayscale repeated to
  three channels, alpha dropped) and resized to ``image_size × image_size`` by area averaging (each
  output pixel the mean of the input area it covers; a uniform image stays exactly uniform).
  Batches carry ``images [B, image_size, image_size, 3]``; ``task.inputs == "images"``.
* ``features``: precomputed CNN features, either a directory of ``<stem>.npy`` files (``stem`` the
  filename without its extension; ``<filename>.npy`` is accepted too) or one ``.npz`` whose keys are
  the filenames or their stems. Each array is ``[L, D]`` or ``[h, w, D]``, all of one shape
  (``task.feature_shape``), cast to float32. Batches carry ``features [B, *feature_shape]``;
  ``task.inputs == "features"``.

Every image/feature file is checked to exist when the task is built; decoded arrays are loaded when
first used and kept in an LRU cache of at most 2 GiB.

Batches (``T = max_len``, see :func:`~rnn_jax.data.captions.pack_captions`): ``images`` or
``features``, ``tokens [B, T]`` int32 (words, EOS, PAD), ``lengths [B]`` int32, ``weight [B]``
float32 and ``index [B]`` int32 (the image's index within its split).

* :meth:`KarpathyTask.train_batch` is a pure function of ``(seed, step, batch_size)``: with
  ``rng = np.random.default_rng([seed, step])`` it draws ``batch_size`` (image, sentence) pairs
  uniformly, with replacement, from all the train split's pairs (``rng.integers``).
* :meth:`KarpathyTask.eval_batches` has every image of the split once, in order, with its first
  sentence as ``tokens``; the last batch is padded with rows of ``weight`` 0 repeating its first row.
* :meth:`KarpathyTask.references` gives each image's sentences (words joined by single spaces) for
  :func:`rnn_jax.caption_metrics.coco_scores`.

Bad input raises :class:`~rnn_jax.errors.InputError`: options, a missing JSON/image/feature file (the
message names the path), a JSON layout problem (the message names the image's index in ``images``).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os

import numpy as np

from rnn_jax.data.captions import CaptionVocab, pack_captions, tokenize
from rnn_jax.errors import InputError

SPLITS = ("train", "valid", "test")
JSON_SPLITS = {"train": "train", "restval": "train", "val": "valid", "test": "test"}
CACHE_BYTES = 2 * 2**30

__all__ = ["KarpathyTask", "SPLITS", "area_resize", "read_image"]


def _check_int(name: str, value, minimum: int, maximum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise InputError(f"karpathy option {name}={value!r}: must be an integer in [{minimum}, {maximum}]")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")


# ---- images --------------------------------------------------------------------------------------


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: row ``i`` averages the input interval ``[i, i + 1) · n_in / n_out``."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image [H, W, C]`` resized to ``[height, width, C]`` by area averaging (float32)."""
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (height, width):
        return image
    rows, cols = _area_matrix(image.shape[0], height), _area_matrix(image.shape[1], width)
    return np.einsum("hH,HWc,wW->hwc", rows, image, cols, optimize=True).astype(np.float32)


def _to_rgb(array: np.ndarray, path: str) -> np.ndarray:
    """A decoded image as RGB float32 in [0, 1]."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / np.iinfo(array.dtype).max
    elif array.dtype == bool:
        array = array.astype(np.float32)
    array = array.astype(np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"image {path}: unsupported pixel layout {array.shape}")
    if array.shape[2] in (1, 2):                   # gray, gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    return np.clip(array[:, :, :3], 0.0, 1.0)


def read_image(path: str, size: int) -> np.ndarray:
    """The image at ``path`` as RGB float32 ``[size, size, 3]`` in [0, 1] (module docstring)."""
    if not os.path.isfile(path):
        raise InputError(f"image file {path} does not exist")
    try:
        try:
            from PIL import Image
        except ImportError:                        # matplotlib reads PNG itself
            import matplotlib.image

            array = matplotlib.image.imread(path)
        else:
            with Image.open(path) as img:
                if img.mode.startswith("I;16"):      # 16-bit grayscale
                    array = np.asarray(img, np.float32) / 65535.0
                elif img.mode in ("I", "F"):         # 32-bit grayscale: scaled by its maximum
                    array = np.asarray(img, np.float32)
                    array = array / max(float(array.max()), 1.0)
                else:
                    array = np.asarray(img.convert("RGB"))
    except InputError:
        raise
    except Exception as e:                         # a corrupt or unsupported file
        raise InputError(f"image file {path} could not be read: {e}") from e
    return area_resize(_to_rgb(array, path), size, size)


# ---- the JSON file -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Split:
    filenames: tuple          # as in the JSON
    paths: tuple              # [filepath/]filename, relative to image_dir
    sentences: tuple          # per image: a tuple of word tuples


def _read_json(json_path: str, max_images: int) -> dict[str, _Split]:
    if not os.path.isfile(json_path):
        raise InputError(f"karpathy json_path {json_path} does not exist" +
                         (" (it is a directory)" if os.path.isdir(json_path) else ""))
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"karpathy json_path {json_path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(f"{json_path}: expected a JSON object with an \"images\" list (the Karpathy-split layout)")
    parts = {s: ([], [], []) for s in SPLITS}
    for i, entry in enumerate(data["images"]):
        where = f"{json_path}: images[{i}]"
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected an object; got {type(entry).__name__}")
        for key in ("filename", "split", "sentences"):
            if key not in entry:
                raise InputError(f"{where}: missing {key!r}")
        if entry["split"] not in JSON_SPLITS:
            raise InputError(f"{where}: split {entry['split']!r} is not one of {', '.join(JSON_SPLITS)}")
        filename = entry["filename"]
        if not isinstance(filename, str) or not filename:
            raise InputError(f"{where}: filename must be a non-empty string; got {filename!r}")
        filepath = entry.get("filepath") or ""
        if not isinstance(filepath, str):
            raise InputError(f"{where}: filepath must be a string; got {filepath!r}")
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or not sentences:
            raise InputError(f"{where}: 'sentences' must be a non-empty list; got {sentences!r}")
        words = []
        for j, sentence in enumerate(sentences):
            tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if isinstance(tokens, list) and all(isinstance(t, str) for t in tokens):
                words.append(tuple(tokenize(" ".join(tokens))))
            elif tokens is None and isinstance(raw, str):
                words.append(tuple(tokenize(raw)))
            else:
                raise InputError(f"{where}: sentences[{j}] needs 'tokens' (a list of strings) or 'raw' (a string)")
        filenames, paths, sents = parts[JSON_SPLITS[entry["split"]]]
        if max_images and len(filenames) >= max_images:
            continue
        filenames.append(filename)
        paths.append(os.path.join(filepath, filename) if filepath else filename)
        sents.append(tuple(words))
    return {s: _Split(tuple(f), tuple(p), tuple(w)) for s, (f, p, w) in parts.items()}


# ---- the task ------------------------------------------------------------------------------------


class _LRU:
    """Arrays by key, dropping the least recently used beyond ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.items = max_bytes, 0, collections.OrderedDict()

    def get(self, key, load):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = load()
        self.items[key] = value
        self.bytes += value.nbytes
        while self.bytes > self.max_bytes and len(self.items) > 1:
            self.bytes -= self.items.popitem(last=False)[1].nbytes
        return value


@dataclasses.dataclass(frozen=True)
class KarpathyTask:
    """A captioning dataset in the Karpathy-split layout (module docstring). Options: ``json_path``
    (required), exactly one of ``image_dir``/``features``, ``image_size`` (images mode), ``max_len``
    (``T``: words + EOS), ``min_count`` (vocabulary), ``max_images`` (0: all; else the first N of each
    split). ``seed`` is the registry's task seed; nothing here depends on it."""

    seed: int = 0
    json_path: str = ""
    image_dir: str = ""
    features: str = ""
    image_size: int = 64
    max_len: int = 20
    min_count: int = 1
    max_images: int = 0

    def __post_init__(self):
        _check_int("seed", self.seed, 0, 2**63 - 1)
        for name in ("json_path", "image_dir", "features"):
            if not isinstance(getattr(self, name), str):
                raise InputError(f"karpathy option {name}={getattr(self, name)!r}: must be a path string")
        if not self.json_path:
            raise InputError("karpathy option json_path is required (the dataset_*.json file of the Karpathy splits)")
        if bool(self.image_dir) == bool(self.features):
            raise InputError(f"karpathy: give exactly one of image_dir (a folder of images) or features (a folder of"
                             f" .npy files or an .npz); got image_dir={self.image_dir!r}, features={self.features!r}")
        _check_int("image_size", self.image_size, 1, 4096)
        _check_int("max_len", self.max_len, 2, 1000)
        _check_int("min_count", self.min_count, 1, 10**9)
        _check_int("max_images", self.max_images, 0, 10**9)
        splits = _read_json(self.json_path, self.max_images)
        if not splits["train"].filenames:
            raise InputError(f"{self.json_path}: no images in the train split (split \"train\" or \"restval\")")
        for split, value in (("valid", "val"), ("test", "test")):
            if not splits[split].filenames:  # training evaluates on both
                raise InputError(f"{self.json_path}: no images in the {split} split (split \"{value}\"); "
                                 "training evaluates on valid and test")
        vocab = CaptionVocab.build((words for sents in splits["train"].sentences for words in sents),
                                   min_count=self.min_count)
        set_ = lambda name, value: object.__setattr__(self, name, value)
        set_("_splits", splits)
        set_("_vocab", vocab)
        set_("_cache", _LRU(CACHE_BYTES))
        set_("_npz", None)
        set_("_feature_shape", None)
        if self.image_dir:
            if not os.path.isdir(self.image_dir):
                raise InputError(f"karpathy image_dir {self.image_dir} is not a directory")
            for split in SPLITS:
                for path in splits[split].paths:
                    full = os.path.join(self.image_dir, path)
                    if not os.path.isfile(full):
                        raise InputError(f"karpathy: image file {full} does not exist ({split} split)")
        else:
            self._open_features(splits)

    def _open_features(self, splits) -> None:
        path = self.features
        if os.path.isdir(path):
            names = set(os.listdir(path))
            locate = {}
            for split in SPLITS:
                for filename in splits[split].filenames:
                    stem = os.path.splitext(filename)[0]
                    found = next((n for n in (stem + ".npy", filename + ".npy") if n in names), None)
                    if found is None:
                        raise InputError(f"karpathy: feature file {os.path.join(path, stem + '.npy')} does not exist"
                                         f" (image {filename!r}, {split} split)")
                    locate[filename] = os.path.join(path, found)
        elif os.path.isfile(path) and path.endswith(".npz"):
            try:
                npz = np.load(path, allow_pickle=False)
            except Exception as e:
                raise InputError(f"karpathy features {path} could not be read as .npz: {e}") from e
            object.__setattr__(self, "_npz", npz)
            keys = set(npz.files)
            locate = {}
            for split in SPLITS:
                for filename in splits[split].filenames:
                    stem = os.path.splitext(filename)[0]
                    found = next((k for k in (filename, stem) if k in keys), None)
                    if found is None:
                        raise InputError(f"karpathy features {path}: no array for image {filename!r} ({split} split);"
                                         f" keys must be the filenames or their stems")
                    locate[filename] = found
        elif os.path.exists(path):
            raise InputError(f"karpathy features {path}: expected a directory of .npy files or an .npz file")
        else:
            raise InputError(f"karpathy features {path} does not exist")
        object.__setattr__(self, "_feature_files", locate)
        first = splits["train"].filenames[0]
        shape = tuple(self._read_feature(first).shape)
        if len(shape) not in (2, 3):
            raise InputError(f"karpathy features for {first!r}: expected [L, D] or [h, w, D]; got shape {shape}")
        object.__setattr__(self, "_feature_shape", shape)

    def _read_feature(self, filename: str) -> np.ndarray:
        where = self._feature_files[filename]
        try:
            array = self._npz[where] if self._npz is not None else np.load(where, allow_pickle=False)
        except Exception as e:
            raise InputError(f"karpathy features {where}: could not be read ({e})") from e
        array = np.asarray(array, np.float32)
        if self._feature_shape is not None and array.shape != self._feature_shape:
            raise InputError(f"karpathy features {where}: shape {array.shape} differs from the first image's"
                             f" {self._feature_shape}")
        return array

    # ---- sizes and vocabulary -------------------------------------------------------------------

    @property
    def vocab(self) -> CaptionVocab:
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def decode(self, ids) -> str:
        """The words of ``ids`` (up to the first EOS) joined by spaces: a hypothesis string."""
        return " ".join(self._vocab.decode(ids))

    @property
    def inputs(self) -> str:
        """``"images"`` or ``"features"``: the batch key holding the visual input."""
        return "images" if self.image_dir else "features"

    @property
    def image_shape(self) -> tuple | None:
        """``(image_size, image_size, 3)`` in images mode; ``None`` in features mode."""
        return (self.image_size, self.image_size, 3) if self.image_dir else None

    @property
    def feature_shape(self) -> tuple | None:
        """Each image's feature array shape (``[L, D]`` or ``[h, w, D]``) in features mode; ``None``
        in images mode."""
        return self._feature_shape

    def num_images(self, split: str) -> int:
        _check_split(split)
        return len(self._splits[split].filenames)

    def filenames(self, split: str) -> list[str]:
        _check_split(split)
        return list(self._splits[split].filenames)

    def references(self, split: str) -> list[list[str]]:
        """Per image of ``split``, in order: all its sentences as words joined by single spaces."""
        _check_split(split)
        return [[" ".join(words) for words in sents] for sents in self._splits[split].sentences]

    def objects(self, split: str) -> None:
        """Real data has no attribute annotations."""
        _check_split(split)
        return None

    # ---- inputs ----------------------------------------------------------------------------------

    def load_image(self, split: str, index: int) -> np.ndarray:
        """Image ``index`` of ``split`` as float32 ``[image_size, image_size, 3]`` (images mode only)."""
        _check_split(split)
        if not self.image_dir:
            raise InputError("karpathy: load_image needs image_dir; this task reads precomputed features")
        paths = self._splits[split].paths
        if not 0 <= index < len(paths):
            raise InputError(f"image index {index} is outside the {split} split [0, {len(paths)})")
        full = os.path.join(self.image_dir, paths[index])
        return self._cache.get(("image", full), lambda: read_image(full, self.image_size))

    def _load_feature(self, split: str, index: int) -> np.ndarray:
        filename = self._splits[split].filenames[index]
        return self._cache.get(("feature", filename), lambda: self._read_feature(filename))

    def _batch(self, split: str, rows: list[tuple[int, int]], batch_size: int) -> dict[str, np.ndarray]:
        """``rows`` of ``(image index, sentence index)`` packed into ``batch_size`` rows."""
        sents = self._splits[split].sentences
        batch = pack_captions(self._vocab, [list(sents[i][j]) for i, j in rows], self.max_len, batch_size)
        index = np.array([i for i, _ in rows] + [rows[0][0]] * (batch_size - len(rows)), np.int32)
        load = self.load_image if self.image_dir else self._load_feature
        batch[self.inputs] = np.stack([load(split, int(i)) for i in index]).astype(np.float32)
        batch["index"] = index
        return batch

    # ---- batches ---------------------------------------------------------------------------------

    def train_batch(self, seed: int, step: int, batch_size: int) -> dict[str, np.ndarray]:
        """``batch_size`` (image, sentence) pairs drawn uniformly from the train split's pairs: a pure
        function of ``(seed, step, batch_size)``."""
        _check_int("batch_size", batch_size, 1, 10**7)
        pairs = self._train_pairs()
        rng = np.random.default_rng([seed, step])
        picks = rng.integers(0, len(pairs), size=batch_size)
        return self._batch("train", [tuple(pairs[k]) for k in picks.tolist()], batch_size)

    def _train_pairs(self) -> np.ndarray:
        pairs = self.__dict__.get("_pairs")
        if pairs is None:
            pairs = np.array([(i, j) for i, sents in enumerate(self._splits["train"].sentences)
                              for j in range(len(sents))], np.int64)
            object.__setattr__(self, "_pairs", pairs)
        return pairs

    def eval_batches(self, split: str, batch_size: int) -> list[dict[str, np.ndarray]]:
        """Every image of ``split`` once, in order, with its first sentence; the last batch padded
        with ``weight`` 0 rows."""
        _check_split(split)
        _check_int("batch_size", batch_size, 1, 10**7)
        n = self.num_images(split)
        return [self._batch(split, [(i, 0) for i in range(start, min(start + batch_size, n))], batch_size)
                for start in range(0, n, batch_size)]
