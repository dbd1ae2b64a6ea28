r"""Two classic synthetic long-range tasks: the copy (memory) task and the adding problem.

Both are pure NumPy and deterministic: a batch is a function of ``(seed, index)`` only, drawn from
``np.random.default_rng([seed, index, task])`` (``task`` keeps the two tasks' streams apart), so
batch ``index`` of a run can be regenerated at any time, in any order.

**Copy task** (Hochreiter & Schmidhuber 1997; in the form of Arjovsky, Shah & Bengio 2016). A
sequence of ``length`` tokens over the alphabet ``0..num_symbols+1``::

    inputs : s_1 .. s_10 | 0 x delay | D | 0 0 ... 0         D = num_symbols + 1 (delimiter)
    targets: 0 ......................................0 | s_1 .. s_10
    weights: 0 ......................................0 | 1   ..  1

The ten symbols ``s_k`` are uniform in ``1..num_symbols``; ``0`` is the blank. The delimiter sits at
position ``10 + delay`` (0-based) and the ten symbols must be reproduced in the *last* ten
positions, so ``delay <= length - 21``; the default ``delay = length - 21`` puts the delimiter
right before the answer window, which is Arjovsky et al.'s task with their ``T = delay + 1``
(total length ``T + 20``). The weights mark the ten answer positions; a model that always outputs
blanks is right everywhere else, so the loss is usually averaged over the weighted positions only.
Knowing nothing, the best answer is a uniform guess: cross-entropy ``log(num_symbols)`` per
answer token.

**Adding problem** (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015). Inputs
``[B, T, 2]``: channel 0 holds values uniform in ``[0, 1)``, channel 1 is a marker that is ``1``
at exactly two steps, one in the first half ``[0, T//2)`` and one in the second half
``[T//2, T)``, and ``0`` elsewhere. The target is the sum of the two marked values, read out after
the last step. Predicting the constant ``1`` gives a mean squared error of ``1/6`` (the variance of
a sum of two uniforms), the baseline a model must beat.

>>> from rnn_jax.data import longrange
>>> x, y, w = longrange.copy_memory(0, batch_size=2, length=25)
>>> x.shape, y.shape, w.shape, int(x[0, 14]), float(w.sum())
((2, 25), (2, 25), (2, 25), 9, 20.0)
>>> x, y = longrange.adding_problem(0, batch_size=3, length=10)
>>> x.shape, y.shape, x[..., 1].sum(axis=1).tolist()
((3, 10, 2), (3,), [2.0, 2.0, 2.0])
"""

from __future__ import annotations

import numpy as np

from rnn_jax.errors import InputError

__all__ = ["COPY_SYMBOLS", "adding_problem", "copy_memory"]

#: How many symbols the copy task asks the model to remember.
COPY_SYMBOLS = 10

# Third seed word, so that the two tasks never share a random stream for the same (seed, index).
_COPY_TAG = 1
_ADDING_TAG = 2


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def copy_memory(seed: int, batch_size: int, length: int, num_symbols: int = 8,
                delay: int | None = None, *, index: int = 0):
    """A batch of the copy task (see the module docstring).

    Args:
      seed: non-negative integer seed of the run.
      batch_size: number of sequences ``B``.
      length: total sequence length ``T >= 21`` (10 symbols, the delimiter, 10 answer steps).
      num_symbols: size of the alphabet to copy, symbols ``1..num_symbols``; the delimiter is
        ``num_symbols + 1`` and ``0`` is the blank, so a model needs ``num_symbols + 2`` classes.
      delay: blanks between the last symbol and the delimiter, ``0 <= delay <= length - 21``
        (default ``length - 21``: the delimiter immediately precedes the answer window).
      index: batch number; batch ``index`` of seed ``seed`` is always the same.

    Returns:
      ``(inputs, targets, weights)``: int32 ``[B, T]``, int32 ``[B, T]`` and float32 ``[B, T]``,
      weights ``1`` at the last ten positions (the symbols to reproduce) and ``0`` elsewhere.
    """
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    num_symbols = _check_int("num_symbols", num_symbols, 1)
    min_length = 2 * COPY_SYMBOLS + 1
    length = _check_int("length", length, min_length)
    max_delay = length - min_length
    if delay is None:
        delay = max_delay
    delay = _check_int("delay", delay, 0)
    if delay > max_delay:
        raise InputError(f"delay={delay} does not fit in length={length}: the 10 symbols, the"
                         f" delimiter and the 10 answer steps leave room for at most"
                         f" length - 21 = {max_delay} blanks")

    rng = np.random.default_rng([seed, index, _COPY_TAG])
    symbols = rng.integers(1, num_symbols + 1, size=(batch_size, COPY_SYMBOLS), dtype=np.int32)
    inputs = np.zeros((batch_size, length), np.int32)
    inputs[:, :COPY_SYMBOLS] = symbols
    inputs[:, COPY_SYMBOLS + delay] = num_symbols + 1
    targets = np.zeros((batch_size, length), np.int32)
    targets[:, -COPY_SYMBOLS:] = symbols
    weights = np.zeros((batch_size, length), np.float32)
    weights[:, -COPY_SYMBOLS:] = 1.0
    return inputs, targets, weights


def adding_problem(seed: int, batch_size: int, length: int, *, index: int = 0):
    """A batch of the adding problem (see the module docstring).

    Args:
      seed: non-negative integer seed of the run.
      batch_size: number of sequences ``B``.
      length: sequence length ``T >= 2``; one marker falls in ``[0, T//2)``, the other in
        ``[T//2, T)``.
      index: batch number; batch ``index`` of seed ``seed`` is always the same.

    Returns:
      ``(inputs, targets)``: float32 ``[B, T, 2]`` (values, markers) and float32 ``[B]``, the sum
      of the two marked values.
    """
    seed = _check_int("seed", seed, 0)
    index = _check_int("index", index, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    length = _check_int("length", length, 2)

    rng = np.random.default_rng([seed, index, _ADDING_TAG])
    values = rng.uniform(0.0, 1.0, size=(batch_size, length)).astype(np.float32)
    half = length // 2
    first = rng.integers(0, half, size=batch_size)
    second = rng.integers(half, length, size=batch_size)
    rows = np.arange(batch_size)
    markers = np.zeros((batch_size, length), np.float32)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    inputs = np.stack([values, markers], axis=-1)
    targets = values[rows, first] + values[rows, second]
    return inputs, targets.astype(np.float32)
