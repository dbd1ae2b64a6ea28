"""A recurrent piano-roll model as pure functions: dense projection -> stacked cells -> note logits.

``params = {"embed": {"W": [P, E], "b": [E]}, "layers": [cell params, ...],
"out": {"W": [H, P], "b": [P]}}``; the carry is a list with one cell carry per layer. Input frames
are multi-hot ``[B, T, P]`` vectors (the notes sounding at each step); the projection into the
cell stack is linear. Output logits give each note an independent Bernoulli probability
(sigmoid), and :func:`bernoulli_nll` scores them as in Boulanger-Lewandowski et al. (2012): the
negative log-likelihood summed over notes, per time step.

Dropout is as in :class:`rnn_jax.lm.LanguageModel`: only on non-recurrent connections (the
projection output, between layers, before the output layer), with one mask per sequence for all
time steps when ``variational=True``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from rnn_jax import cells as cells_lib
from rnn_jax import layers, lm


@dataclasses.dataclass(frozen=True)
class PianoRollModel:
    """Static description of the model; the methods are pure functions of params and inputs."""

    cell: cells_lib.Cell
    num_pitches: int
    embed_size: int
    hidden_size: int
    num_layers: int = 1
    dropout: float = 0.0
    variational: bool = False
    embed_scale: float = 0.1
    output_scale: float = 1.0
    impl: str = "fused"

    def __post_init__(self):
        lm.check_sizes(self, ("num_pitches", "embed_size", "hidden_size", "num_layers"))

    def init(self, key) -> dict:
        k_embed, k_layers, k_out = jax.random.split(key, 3)
        bound = self.output_scale / jnp.sqrt(self.hidden_size)
        return {
            "embed": {"W": jax.random.uniform(k_embed, (self.num_pitches, self.embed_size),
                                              jnp.float32, -self.embed_scale, self.embed_scale),
                      "b": jnp.zeros((self.embed_size,), jnp.float32)},
            "layers": layers.init_stack(self.cell, k_layers, self.embed_size, self.hidden_size,
                                        self.num_layers),
            "out": {"W": jax.random.uniform(k_out, (self.hidden_size, self.num_pitches), jnp.float32,
                                            -bound, bound),
                    "b": jnp.zeros((self.num_pitches,), jnp.float32)},
        }

    def zero_carry(self, batch_size: int) -> list:
        return lm.zero_carries(self, batch_size)

    def _check_frames(self, frames, ndim: int):
        frames = jnp.asarray(frames, jnp.float32)
        if frames.ndim != ndim or frames.shape[-1] != self.num_pitches:
            want = "[B, T, P]" if ndim == 3 else "[B, P]"
            raise ValueError(f"frames must be {want} with P = num_pitches = {self.num_pitches}, "
                             f"got shape {frames.shape}")
        return frames

    def apply(self, params, carry: list, frames_BxTxP, *, dropout_key=None, resets=None):
        """Note logits ``[B, T, P]`` and the new carries; dropout is active when ``dropout_key`` is given."""
        frames = self._check_frames(frames_BxTxP, 3)
        h = frames @ params["embed"]["W"] + params["embed"]["b"]
        return lm.apply_stack(self, params, carry, h, dropout_key, resets)

    def step(self, params, carry: list, frame_BxP):
        """One generation step (no dropout): next-frame logits ``[B, P]`` and the new carries."""
        h = self._check_frames(frame_BxP, 2) @ params["embed"]["W"] + params["embed"]["b"]
        return lm.step_stack(self, params, carry, h)


def bernoulli_nll(logits, targets, weights=None):
    """Summed Bernoulli NLL (nats) over notes and time steps, and the number of time steps covered.

    ``logits``/``targets``: ``[..., P]`` (targets 0/1); ``weights``: ``[...]``, one 0/1 weight per
    time step (``None`` = all steps). NLL per time step = ``sum / count``.
    """
    logits = logits.astype(jnp.float32)
    targets = jnp.asarray(targets, jnp.float32)
    # -[y log σ(x) + (1 - y) log σ(-x)], both terms stable for large |x|
    nll = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
    per_step = nll.sum(axis=-1)
    if weights is None:
        return per_step.sum(), jnp.asarray(per_step.size, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    return (per_step * weights).sum(), weights.sum()
