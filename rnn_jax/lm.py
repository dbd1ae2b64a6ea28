"""A recurrent language model as pure functions: embedding -> stacked cells -> softmax.

``params = {"embed": [V, E], "layers": [cell params, ...], "out": {"W": [H, V], "b": [V]}}``;
the carry is a list with one cell carry per layer. Dropout follows Zaremba et al. (2014): it is
applied only to non-recurrent connections (the embedding output, between layers and before the
softmax). With ``variational=True`` each sequence keeps one dropout mask for all its time steps
(Gal & Ghahramani, 2016) on those same connections, the recurrent layers' inputs included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from rnn_jax import cells as cells_lib
from rnn_jax import layers


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """Static description of the model; the methods are pure functions of params and inputs."""

    cell: cells_lib.Cell
    vocab_size: int
    embed_size: int
    hidden_size: int
    num_layers: int = 1
    dropout: float = 0.0
    variational: bool = False
    embed_scale: float = 0.1
    output_scale: float = 1.0
    impl: str = "fused"

    def __post_init__(self):
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def init(self, key) -> dict:
        k_embed, k_layers, k_out = jax.random.split(key, 3)
        bound = self.output_scale / jnp.sqrt(self.hidden_size)
        return {
            "embed": jax.random.uniform(k_embed, (self.vocab_size, self.embed_size), jnp.float32,
                                        -self.embed_scale, self.embed_scale),
            "layers": layers.init_stack(self.cell, k_layers, self.embed_size, self.hidden_size,
                                        self.num_layers),
            "out": {"W": jax.random.uniform(k_out, (self.hidden_size, self.vocab_size), jnp.float32,
                                            -bound, bound),
                    "b": jnp.zeros((self.vocab_size,), jnp.float32)},
        }

    def zero_carry(self, batch_size: int) -> list:
        return [self.cell.zeros_carry(self.hidden_size, (batch_size,), jnp.float32)
                for _ in range(self.num_layers)]

    def _drop(self, key, x):
        if key is None or self.dropout == 0.0:
            return x
        shape = (x.shape[0], 1, x.shape[2]) if self.variational else x.shape
        keep = jax.random.bernoulli(key, 1.0 - self.dropout, shape)
        return jnp.where(keep, x / (1.0 - self.dropout), jnp.zeros_like(x))

    def apply(self, params, carry: list, tokens_BxT, *, dropout_key=None, resets=None):
        """Logits ``[B, T, V]`` and the new carries; dropout is active when ``dropout_key`` is given."""
        keys = (list(jax.random.split(dropout_key, self.num_layers + 1)) if dropout_key is not None
                else [None] * (self.num_layers + 1))
        h = self._drop(keys[0], params["embed"][tokens_BxT])
        finals = []
        for k, (layer, c) in enumerate(zip(params["layers"], carry)):
            final, h = layers.rnn(self.cell, layer, h, c, resets=resets, impl=self.impl)
            h = self._drop(keys[k + 1], h)
            finals.append(final)
        return h @ params["out"]["W"] + params["out"]["b"], finals

    def step(self, params, carry: list, token_B):
        """One generation step (no dropout): next-token logits ``[B, V]`` and the new carries."""
        h = params["embed"][token_B]
        finals = []
        for layer, c in zip(params["layers"], carry):
            c, h = self.cell.fast_step(layer, c, h)
            finals.append(c)
        return h @ params["out"]["W"] + params["out"]["b"], finals


def cross_entropy(logits, targets, weights=None):
    """Summed token NLL (nats) and the number of tokens it covers."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    if weights is None:
        return nll.sum(), jnp.asarray(nll.size, jnp.float32)
    return (nll * weights).sum(), weights.sum()


def num_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
