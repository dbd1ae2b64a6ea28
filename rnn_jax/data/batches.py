"""Language-model batches: contiguous streams for truncated BPTT, random windows for full BPTT.

Data order is a pure function of ``(seed, step)`` (and the corpus), so a resumed run sees exactly
the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Streams:
    """A token array cut into ``batch_size`` contiguous streams (inputs and next-token targets).

    Stream ``b`` holds tokens ``[b·S, (b+1)·S)`` of the corpus, ``S = (n - 1) // batch_size``;
    the last ``n - 1 - batch_size·S`` tokens are not used.
    """

    inputs_BxS: np.ndarray
    targets_BxS: np.ndarray

    @classmethod
    def from_tokens(cls, tokens: np.ndarray, batch_size: int) -> "Streams":
        tokens = np.asarray(tokens, np.int32)
        length = (len(tokens) - 1) // batch_size
        if length < 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill {batch_size} streams")
        used = tokens[: batch_size * length + 1]
        return cls(used[:-1].reshape(batch_size, length), used[1:].reshape(batch_size, length))

    @property
    def length(self) -> int:
        return self.inputs_BxS.shape[1]


def tbptt_steps_per_epoch(num_tokens: int, batch_size: int, seq_len: int) -> int:
    """Training steps in one pass over ``batch_size`` streams in chunks of ``seq_len``."""
    return ((num_tokens - 1) // batch_size) // seq_len


def tbptt_batch(streams: Streams, step: int, seq_len: int):
    """Chunk ``step mod steps_per_epoch`` of every stream: ``(inputs, targets, starts_epoch)``.

    ``starts_epoch`` is true for the first chunk of an epoch; the caller resets the carried state
    there (the streams start over).
    """
    per_epoch = streams.length // seq_len
    i = step % per_epoch
    cut = slice(i * seq_len, (i + 1) * seq_len)
    return streams.inputs_BxS[:, cut], streams.targets_BxS[:, cut], i == 0


def window_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, seq_len: int):
    """``batch_size`` windows of ``seq_len`` tokens at random positions drawn from ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    return tokens[idx], tokens[idx + 1]


def eval_chunks(tokens: np.ndarray, batch_size: int, seq_len: int):
    """The whole stream as ``[num_chunks, batch, seq_len]`` inputs, targets and a 0/1 weight.

    The stream is cut into ``batch_size`` contiguous streams (as in training); the last chunk is
    padded and its padding has weight 0. At most ``batch_size - 1`` tokens at the end are unused.
    """
    streams = Streams.from_tokens(tokens, batch_size)
    num_chunks = -(-streams.length // seq_len)
    pad = num_chunks * seq_len - streams.length

    def chunk(a):
        a = np.pad(a, ((0, 0), (0, pad)))
        return a.reshape(batch_size, num_chunks, seq_len).transpose(1, 0, 2)

    weights = np.ones_like(streams.inputs_BxS, dtype=np.float32)
    return chunk(streams.inputs_BxS), chunk(streams.targets_BxS), chunk(weights)
