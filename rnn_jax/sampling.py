"""Sampling from a language model inside one jitted ``lax.scan``: temperature, top-k, greedy.

The prime text is read by the model in one pass (the layer's scan), then each generated token is
fed back in. ``num_samples`` independent samples run as a batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from rnn_jax.errors import InputError
from rnn_jax.lm import LanguageModel


def check_sampling_args(temperature: float, top_k: int, length: int, num_samples: int) -> None:
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or temperature <= 0:
        raise InputError(f"temperature must be a number > 0 (use greedy for argmax), got {temperature!r}")
    if not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 = no limit), got {top_k!r}")
    for name, value in (("length", length), ("num_samples", num_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")


def choose(key, logits_BxV, *, temperature: float = 1.0, top_k: int = 0, greedy: bool = False):
    """Next tokens ``[B]`` from logits: argmax, or a draw from softmax(logits / T) over the top k."""
    if greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV.astype(jnp.float32) / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "length", "num_samples", "top_k", "greedy"))
def sample(model: LanguageModel, params, prime_P, key, *, length: int, num_samples: int = 1,
           temperature: float = 1.0, top_k: int = 0, greedy: bool = False):
    """``[num_samples, length]`` token ids generated after the prime ids ``[P]`` (P >= 1)."""
    prime = jnp.broadcast_to(prime_P[None, :], (num_samples, prime_P.shape[0]))
    logits, carry = model.apply(params, model.zero_carry(num_samples), prime)

    def body(state, key_t):
        carry, logits_BxV = state
        token = choose(key_t, logits_BxV, temperature=temperature, top_k=top_k, greedy=greedy)
        logits_BxV, carry = model.step(params, carry, token)
        return (carry, logits_BxV), token

    _, tokens = jax.lax.scan(body, (carry, logits[:, -1]), jax.random.split(key, length))
    return tokens.T
