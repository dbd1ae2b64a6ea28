"""Language-model batches: contiguous streams for truncated BPTT, random windows for full BPTT,
and whole independent pieces packed into lanes (the per-piece protocol of polyphonic music).

Data order is a pure function of ``(seed, step)`` (and the corpus), so a resumed run sees exactly
the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Streams:
    """A token array cut into ``batch_size`` contiguous streams (inputs and next-token targets).

    Tokens are integer ids, or float frames ``[N, P]`` (piano rolls; the streams are then ``[B, S, P]``).

    Stream ``b`` holds tokens ``[b·S, (b+1)·S)`` of the corpus, ``S = (n - 1) // batch_size``;
    the last ``n - 1 - batch_size·S`` tokens are not used.
    """

    inputs_BxS: np.ndarray
    targets_BxS: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, batch_size: int) -> "Streams":
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.floating):
            tokens = tokens.astype(np.int32)
        length = (len(tokens) - 1) // batch_size
        if length < 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill {batch_size} streams")
        used = tokens[: batch_size * length + 1]
        rest = tokens.shape[1:]  # frames of a piano roll have a trailing pitch axis
        return cls(used[:-1].reshape(batch_size, length, *rest), used[1:].reshape(batch_size, length, *rest))

    @property
    def length(self) -> int:
        return self.inputs_BxS.shape[1]


def stream_weights(mask: np.ndarray, batch_size: int) -> np.ndarray:
    """A per-token 0/1 mask laid out like :class:`Streams`' targets: ``[batch_size, S]`` float32.

    ``mask[i]`` refers to predicting token ``i``; the targets are tokens ``1..``, hence the shift.
    """
    mask = np.asarray(mask)
    length = (len(mask) - 1) // batch_size
    return mask[1: batch_size * length + 1].reshape(batch_size, length).astype(np.float32)


def tbptt_steps_per_epoch(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """Training steps in one pass over ``batch_size`` streams in chunks of ``seq_len``."""
    return ((num_tokens - 1) // batch_size) // seq_len


def tbptt_batch(streams: Streams, step: int, seq_len: int):
    """Chunk ``step mod steps_per_epoch`` of every stream: ``(inputs, targets, starts_epoch)``.

    ``starts_epoch`` is true for the first chunk of an epoch; the caller resets the carried state
    there (the streams start over).
    """
    return (tbptt_chunk(streams.inputs_BxS, step, seq_len), tbptt_chunk(streams.targets_BxS, step, seq_len),
            step % (streams.length // seq_len) == 0)


def tbptt_chunk(array_BxS: np.ndarray, step: int, seq_len: int) -> np.ndarray:
    """Chunk ``step mod steps_per_epoch`` of any array laid out like the streams (e.g. loss weights)."""
    i = step % (array_BxS.shape[1] // seq_len)
    return array_BxS[:, i * seq_len:(i + 1) * seq_len]


def window_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int,
                 mask: np.ndarray | None = None):
    """``batch_size`` windows of ``seq_len`` tokens at random positions drawn from ``(seed, step)``.

    With a per-token ``mask``, also the targets' weights (float32 0/1).
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    if mask is None:
        return tokens[idx], tokens[idx + 1]
    return tokens[idx], tokens[idx + 1], np.asarray(mask)[idx + 1].astype(np.float32)


def to_chunks(array_BxS: np.ndarray, seq_len: int) -> np.ndarray:
    """``[B, S, ...]`` as ``[num_chunks, B, seq_len, ...]``; the last chunk is padded with zeros."""
    num_chunks = -(-array_BxS.shape[1] // seq_len)
    pad = num_chunks * seq_len - array_BxS.shape[1]
    a = np.pad(array_BxS, ((0, 0), (0, pad)) + ((0, 0),) * (array_BxS.ndim - 2))
    a = a.reshape(array_BxS.shape[0], num_chunks, seq_len, *array_BxS.shape[2:])
    return a.swapaxes(0, 1)


def eval_chunks(tokens: np.ndarray, batch_size: int, seq_len: int):
    """The whole stream as ``[num_chunks, batch, seq_len]`` inputs, targets and a 0/1 weight.

    The stream is cut into ``batch_size`` contiguous streams (as in training); the last chunk is
    padded and its padding has weight 0. At most ``batch_size - 1`` tokens at the end are unused.
    """
    streams = Streams.from_tokens(tokens, batch_size)
    weights = np.ones(streams.inputs_BxS.shape[:2], dtype=np.float32)
    return tuple(to_chunks(a, seq_len) for a in (streams.inputs_BxS, streams.targets_BxS, weights))


def eval_positions(num_tokens: int, batch_size: int, seq_len: int) -> np.ndarray:
    """For :func:`eval_chunks`' layout, the index in the token array of every target (-1: padding)."""
    length = (num_tokens - 1) // batch_size
    num_chunks = -(-length // seq_len)
    pos = 1 + np.arange(batch_size)[:, None] * length + np.arange(length)[None, :]
    pos = np.pad(pos, ((0, 0), (0, num_chunks * seq_len - length)), constant_values=-1)
    return pos.reshape(batch_size, num_chunks, seq_len).transpose(1, 0, 2)


@dataclasses.dataclass(frozen=True)
class Lanes(Streams):
    """Independent pieces packed whole into ``batch_size`` lanes (the per-piece protocol).

    Each piece of ``n`` frames gives ``n - 1`` (input, target) pairs: frames ``0..n-2`` predict
    frames ``1..n-1``, and the carry is reset to zero before the piece's first input
    (``resets_BxS``), so every piece is read from the zero state and nothing crosses from one
    piece to the next. A piece of one frame predicts nothing and is left out. Pieces go, in order,
    to the lane that is shortest so far (the first of equals), so lanes hold whole pieces of
    about equal total length; each lane is padded at its end to a common length, a multiple of
    ``pad_to``, with zero frames of weight 0 (``weights_BxS``, float32).
    """

    weights_BxS: np.ndarray = None
    resets_BxS: np.ndarray = None

    @classmethod
    def from_pieces(cls, frames: np.ndarray, starts, batch_size: int, pad_to: int = 1) -> "Lanes":
        frames = np.asarray(frames)
        starts = [int(s) for s in starts]
        ends = starts[1:] + [len(frames)]
        lanes: list[list[int]] = [[] for _ in range(batch_size)]  # input frame indices per lane
        for start, end in zip(starts, ends):
            if end - start < 2:
                continue
            lane = min(range(batch_size), key=lambda b: len(lanes[b]))
            lanes[lane].extend(range(start, end - 1))
        length = max(len(lane) for lane in lanes)
        if length == 0:
            raise ValueError(f"no piece has two frames or more ({len(starts)} pieces): nothing to predict")
        length = -(-length // pad_to) * pad_to
        index = np.full((batch_size, length), -1, np.int64)
        for b, lane in enumerate(lanes):
            index[b, :len(lane)] = lane
        valid = index >= 0
        safe = np.where(valid, index, 0)
        is_start = np.zeros(len(frames) + 1, bool)
        is_start[starts] = True

        def take(offset):
            out = frames[safe + offset]
            return np.where(valid.reshape(valid.shape + (1,) * (out.ndim - 2)), out, np.zeros((), out.dtype))

        return cls(take(0), take(1), weights_BxS=valid.astype(np.float32),
                   resets_BxS=np.where(valid, is_start[safe], False))
