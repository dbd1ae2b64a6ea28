"""Polyphonic music as piano rolls, in the format of Boulanger-Lewandowski et al. (2012).

A dataset file holds ``{"train": [...], "valid": [...], "test": [...]}``: each split is a list of
sequences, each sequence a list of time steps, each step a list of the MIDI pitches (0..127)
sounding at that step (an empty step is silence). The public sets (JSB Chorales, Nottingham,
MuseData, Piano-midi.de) are Python-2 pickles whose steps are tuples, sometimes of floats such as
``60.0``; JSON files with the same layout are read too.

Copies re-dumped with NumPy (any pickle protocol 0-5, by NumPy 1 or 2) are read as well: a pitch may
be a NumPy scalar and a step a 1-D NumPy array, of a signed or unsigned integer (1-8 bytes) or float16/
32/64 dtype in either byte order; they become Python ``int``/``float`` values and are then checked like
any other pitch. Refused with a clear error: any other dtype (bool, complex, object, strings, datetimes,
structured or subarray dtypes), arrays that are not 1-D (a sequence stored as one 2-D array) or longer
than a step can be, a byte count that does not match the shape, and every other global.

Loading a pickle runs no code from it (see :mod:`rnn_jax.data.safe_pickle`): every opcode is first
checked against a list that builds nothing but lists, tuples, dicts, strings and numbers, plus the
globals, calls, ``None``, booleans and bytes that NumPy's reductions need (only in a pickle naming a
NumPy reconstructor); then :class:`SafeUnpickler` maps exactly NumPy's ``dtype``, ``ndarray``,
``scalar``, ``_reconstruct`` and ``_frombuffer`` (``numpy.core`` or ``numpy._core``) and the bytes
helpers of protocols 0-2 to its own stand-ins, which decode the raw bytes themselves, and refuses every
other global. Nothing is imported. Sizes are bounded (``MAX_STEPS``, ``MAX_NOTES``, at most
``MAX_NOTES_PER_STEP`` values per array, memo indices below the opcode count), since a small pickle
can refer to one list many times or ask for a huge memo.

:func:`piano_rolls` turns a file into :class:`PianoRolls`: one ``float32`` multi-hot array
``[num_frames, num_pitches]`` per split, its sequences concatenated in order, plus the frame at
which each sequence starts. That is storage, not a protocol: the trainer reads the starts to treat
the pieces as independent (``data.protocol="pieces"``, the default) or concatenates them into one
stream (``"stream"``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle

import numpy as np

from rnn_jax.data import safe_pickle
from rnn_jax.data.safe_pickle import PickleDataError, SafeUnpickler, UnsafePickleError
from rnn_jax.data.text import check_data_file
from rnn_jax.errors import InputError

SPLITS = ("train", "valid", "test")
MIN_PITCH = 0
MAX_PITCH = 127

__all__ = ["MAX_PITCH", "MIN_PITCH", "SPLITS", "PianoRolls", "SafeUnpickler", "UnsafePickleError",
           "load_piano_rolls", "piano_roll", "piano_rolls", "save_json"]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


# The opcodes a pickle of plain data needs; NumPy's reductions need safe_pickle.NUMPY_OPCODES too.
ALLOWED_OPCODES = safe_pickle.ALLOWED_OPCODES
# A pickle can refer to one list many times (memo GET): the validated copy could then be far larger
# than the file. These bounds stop that (the public sets have about 10^5 steps each).
MAX_STEPS = 5_000_000
MAX_NOTES = 20_000_000
MAX_NOTES_PER_STEP = MAX_PITCH - MIN_PITCH + 1


def _read_pickle(data: bytes):
    return safe_pickle.loads(data, max_values=MAX_NOTES, max_array_length=MAX_NOTES_PER_STEP)


def _decode(data: bytes, path: str):
    """JSON or pickle, decided from the content."""
    text_start = data[3:] if data.startswith(b"\xef\xbb\xbf") else data  # UTF-8 byte order mark
    if text_start.lstrip()[:1] == b"{":
        try:
            return json.loads(text_start.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InputError(f"{path}: not valid JSON: {e}") from None
    try:
        return _read_pickle(data)
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{path}: {e}") from None
    except PickleDataError as e:  # a NumPy value that is malformed or unsupported
        raise InputError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, UnicodeDecodeError, RecursionError) as e:
        if data[:1] == b"\x80":  # the PROTO opcode: it claims to be a pickle
            raise InputError(f"{path}: not a valid pickle: {type(e).__name__}: {e}") from None
        raise InputError(f"{path}: unrecognised format: expected a JSON object (starting with "
                         "'{') or a pickle of {'train': ..., 'valid': ..., 'test': ...}") from None


def _type(value) -> str:
    return type(value).__name__


def _pitch(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{where}: pitch {value!r} ({_type(value)}) is not a number")
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise InputError(f"{where}: pitch {value!r} is not an integer")
        value = int(value)
    if not MIN_PITCH <= value <= MAX_PITCH:
        raise InputError(f"{where}: pitch {value} is outside the MIDI range {MIN_PITCH}..{MAX_PITCH}")
    return value


def _validate(obj, path: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict with keys {list(SPLITS)}, got {_type(obj)}")
    for split in SPLITS:  # sizes first, cheaply: a small pickle can describe a huge object
        if split in obj and isinstance(obj[split], (list, tuple)):
            steps = sum(len(q) for q in obj[split] if isinstance(q, (list, tuple)))
            if steps > MAX_STEPS:
                raise InputError(f"{path}: split {split!r} has {steps} time steps (at most {MAX_STEPS})")
    out = {}
    notes = 0
    for split in SPLITS:
        if split not in obj:
            found = [k if isinstance(k, str) else repr(k) for k in obj]
            raise InputError(f"{path}: missing split {split!r}; keys found: {found}")
        seqs = obj[split]
        if not isinstance(seqs, (list, tuple)):
            raise InputError(f"{path}: split {split!r} must be a list of sequences, got {_type(seqs)}")
        clean = []
        for i, seq in enumerate(seqs):
            where = f"{path}: split {split!r}, sequence {i}"
            if not isinstance(seq, (list, tuple)):
                raise InputError(f"{where}: expected a list of time steps, got {_type(seq)} {seq!r:.60}")
            if not seq:
                raise InputError(f"{where}: empty sequence (no time steps)")
            notes += sum(len(step) if isinstance(step, (list, tuple)) else 0 for step in seq)
            if notes > MAX_NOTES:
                raise InputError(f"{where}: more than {MAX_NOTES} notes in the file")
            steps = []
            for t, step in enumerate(seq):
                at = f"{where}, step {t}"
                if not isinstance(step, (list, tuple)):
                    raise InputError(f"{at}: expected a list of pitches, got {_type(step)} {step!r:.60}")
                if len(step) > MAX_NOTES_PER_STEP:
                    raise InputError(f"{at}: {len(step)} notes in one step (at most {MAX_NOTES_PER_STEP})")
                steps.append([_pitch(p, at) for p in step])
            clean.append(steps)
        out[split] = clean
    return out


def load_piano_rolls(path) -> dict[str, list[list[list[int]]]]:
    """Reads and validates a dataset file (JSON or pickle, decided from its content).

    Returns ``{"train", "valid", "test"}`` (other keys in the file are ignored), each a list of
    sequences of time steps of ``int`` pitches (NumPy scalars and 1-D arrays in a pickle become
    ``int``/``float`` pitches and lists of them). Malformed content raises
    :class:`~rnn_jax.errors.InputError` (a ``ValueError``) naming the path and, where known, the
    split, sequence, step and value; a pickle that refers to any class or function other than NumPy's
    numeric scalar and array reconstructors, or to a non-numeric dtype, raises
    :class:`UnsafePickleError` (a ``pickle.UnpicklingError`` and an ``InputError``) before anything
    is imported. A missing path raises ``FileNotFoundError``, a directory ``IsADirectoryError``.
    """
    path = os.fspath(path)
    check_data_file(path)
    with open(path, "rb") as f:
        data = f.read()
    return _validate(_decode(data, path), path)


def save_json(path, data) -> None:
    """Writes ``{"train", "valid", "test"}`` splits (lists of steps of pitches) as JSON."""
    def plain(x):
        if isinstance(x, (np.integer, np.floating)):
            return x.item()
        raise TypeError(f"cannot write {_type(x)} to a piano-roll JSON file")

    out = {split: [[list(step) for step in seq] for seq in data[split]] for split in SPLITS}
    with open(os.fspath(path), "w", encoding="utf-8") as f:
        json.dump(out, f, default=plain, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Piano rolls
# --------------------------------------------------------------------------------------------


def _check_range(low, high) -> None:
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not MIN_PITCH <= value <= MAX_PITCH:
            raise InputError(f"{name} must be a MIDI pitch in {MIN_PITCH}..{MAX_PITCH}, got {value!r}")
    if low > high:
        raise InputError(f"low ({low}) must not be above high ({high})")


def piano_roll(sequences, low: int, high: int) -> np.ndarray:
    """One split as a multi-hot ``float32`` array ``[num_frames, high - low + 1]``.

    ``sequences`` are concatenated in order; column ``j`` is pitch ``low + j``. A pitch outside
    ``low..high`` raises ``ValueError`` naming it and where it is.
    """
    _check_range(low, high)
    rows, cols = [], []
    frame = 0
    for i, seq in enumerate(sequences):
        for t, step in enumerate(seq):
            for p in step:
                if not low <= p <= high:
                    raise InputError(f"sequence {i}, step {t}: pitch {p!r} is outside the range "
                                     f"{low}..{high}")
                rows.append(frame)
                cols.append(int(p) - low)
            frame += 1
    roll = np.zeros((frame, high - low + 1), np.float32)
    roll[np.asarray(rows, np.int64), np.asarray(cols, np.int64)] = 1.0
    return roll


def _starts(sequences) -> np.ndarray:
    lengths = np.asarray([len(seq) for seq in sequences], np.int64)
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


@dataclasses.dataclass(frozen=True)
class PianoRolls:
    """``train``/``valid``/``test`` piano rolls over pitches ``low..high`` (inclusive).

    Each split is ``float32 [num_frames, num_pitches]``, its sequences concatenated in order;
    ``starts[split]`` holds the frame index at which each sequence begins.
    """

    low: int
    high: int
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    starts: dict = dataclasses.field(default_factory=dict)

    @property
    def num_pitches(self) -> int:
        return self.high - self.low + 1

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {list(SPLITS)}")
        return getattr(self, name)

    def sequences(self, name: str) -> list[np.ndarray]:
        """The split cut back into its sequences (views of the concatenated array)."""
        roll = self.split(name)
        starts = self.starts[name]
        return np.split(roll, starts[1:]) if len(starts) else []


def piano_rolls(path, low: int | None = None, high: int | None = None) -> PianoRolls:
    """Loads a dataset file as :class:`PianoRolls`.

    The pitch range is the lowest..highest pitch over all splits, unless ``low``/``high`` are
    given; then a pitch outside them raises ``ValueError`` naming it and where it is.
    """
    path = os.fspath(path)
    data = load_piano_rolls(path)
    pitches = [p for split in SPLITS for seq in data[split] for step in seq for p in step]
    if (low is None or high is None) and not pitches:
        raise InputError(f"{path}: no notes in any split; give low and high explicitly")
    low = min(pitches) if low is None else low
    high = max(pitches) if high is None else high
    _check_range(low, high)
    rolls = {}
    for split in SPLITS:
        try:
            rolls[split] = piano_roll(data[split], low, high)
        except ValueError as e:
            raise InputError(f"{path}: split {split!r}, {e}") from None
    return PianoRolls(low=int(low), high=int(high), **rolls,
                      starts={split: _starts(data[split]) for split in SPLITS})
