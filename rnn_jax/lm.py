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
from rnn_jax.errors import InputError


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
        check_sizes(self, ("vocab_size", "embed_size", "hidden_size", "num_layers"))

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
        return zero_carries(self, batch_size)

    def apply(self, params, carry: list, tokens_BxT, *, dropout_key=None, resets=None):
        """Logits ``[B, T, V]`` and the new carries; dropout is active when ``dropout_key`` is given."""
        return apply_stack(self, params, carry, params["embed"][tokens_BxT], dropout_key, resets)

    def step(self, params, carry: list, token_B):
        """One generation step (no dropout): next-token logits ``[B, V]`` and the new carries."""
        return step_stack(self, params, carry, params["embed"][token_B])


# Shared by the models built as input -> stacked cells -> output layer (rnn_jax.piano too): each
# has fields cell, hidden_size, num_layers, dropout, variational, impl and params "layers", "out".

def check_sizes(model, names) -> None:
    for name in names:
        value = getattr(model, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= model.dropout < 1.0:
        raise InputError(f"dropout must be in [0, 1), got {model.dropout!r}")


def zero_carries(model, batch_size: int) -> list:
    return [model.cell.zeros_carry(model.hidden_size, (batch_size,), jnp.float32)
            for _ in range(model.num_layers)]


def drop(model, key, x):
    """Dropout on ``[B, T, F]`` (one mask per sequence when ``model.variational``); no key: identity."""
    if key is None or model.dropout == 0.0:
        return x
    shape = (x.shape[0], 1, x.shape[2]) if model.variational else x.shape
    keep = jax.random.bernoulli(key, 1.0 - model.dropout, shape)
    return jnp.where(keep, x / (1.0 - model.dropout), jnp.zeros_like(x))


def apply_stack(model, params, carry: list, h, dropout_key=None, resets=None):
    """Inputs ``h [B, T, E]`` through the cell stack and the output layer: ``(logits, carries)``."""
    keys = (list(jax.random.split(dropout_key, model.num_layers + 1)) if dropout_key is not None
            else [None] * (model.num_layers + 1))
    h = drop(model, keys[0], h)
    finals = []
    for k, (layer, c) in enumerate(zip(params["layers"], carry)):
        final, h = layers.rnn(model.cell, layer, h, c, resets=resets, impl=model.impl)
        h = drop(model, keys[k + 1], h)
        finals.append(final)
    return h @ params["out"]["W"] + params["out"]["b"], finals


def step_stack(model, params, carry: list, h):
    """One step of ``h [B, E]`` through the stack and the output layer (no dropout)."""
    finals = []
    for layer, c in zip(params["layers"], carry):
        c, h = model.cell.fast_step(layer, c, h)
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
