r"""Decoding an encoder-decoder under ``jax.jit``: greedy, sampling and batched beam search.

The decoders are generic. A model is any hashable object (it is a static argument of ``jit``)
with

* ``encode(params, src [B, S], src_lengths [B]) -> memory`` (it converts ``src`` itself: the
  decoders pass it through as given; a pytree whose leaves all have the batch as leading axis,
  with ``memory["mask"] [B, S]`` marking the positions attention may read),
* optionally ``check_source(src, src_lengths)``, for a source that is not a batch of token ids (the
  captioner's images: :mod:`rnn_jax.models.captioner`),
* ``initial_state(params, memory) -> state`` (same convention),
* ``decode_step(params, state, token [B], memory) -> (logits [B, V], state', attention [B, S])``,
* integer attributes ``pad_id``, ``bos_id``, ``eos_id``.

:class:`rnn_jax.models.seq2seq.Seq2Seq` is one; its teacher-forced loss scans the same
``decode_step``. Every decoder starts from ``y_0 = BOS`` and runs a ``lax.while_loop`` of at most
``max_len`` steps that ends as soon as every sequence (every beam) has emitted EOS. PAD and BOS
are never generated (their logits are set to ``-inf``). Outputs ``tokens [B, L]`` (``L =
max_len``) hold the generated ids, EOS included, and PAD after the EOS; ``lengths [B]`` counts
the tokens up to and including the EOS (``max_len`` for a sequence that never emitted one).

Beam search keeps ``K`` hypotheses per example in one pool. Each step extends every live
hypothesis by every token (``log p`` summed), carries a finished one over unchanged (one
candidate, extended by PAD at no cost), and keeps the ``K`` best candidates by the GNMT
length-normalised score (Wu et al. 2016, without the coverage term)::

    score(y) = log p(y | x) / lp(|y|),     lp(n) = ((5 + n) / 6) ** alpha

with ``|y|`` counting the EOS. ``alpha = 0`` ranks by plain log-probability. Since every live
candidate of a step has the same length, ``lp`` only matters between finished and live
hypotheses, so ``beam_size=1`` is exactly greedy decoding. The search stops when all ``K`` beams
of every example have finished (or at ``max_len``); beams come back best first.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax.errors import InputError

__all__ = ["Beams", "Decoded", "beam_search", "greedy", "length_penalty", "sample"]


class Decoded(NamedTuple):
    """Greedy or sampled output: ``tokens [B, L]``, ``lengths [B]``, ``log_probs [B]`` (the model's
    log-probability of the tokens, EOS included) and ``attention [B, L, S]`` (rows after the EOS
    are 0)."""

    tokens: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    attention: jax.Array


class Beams(NamedTuple):
    """Beam search output, best first: ``tokens [B, K, L]``, ``scores [B, K]`` (length-normalised),
    ``log_probs [B, K]`` and ``lengths [B, K]``."""

    tokens: jax.Array
    scores: jax.Array
    log_probs: jax.Array
    lengths: jax.Array


def length_penalty(length, alpha):
    """GNMT's ``lp(n) = ((5 + n) / 6) ** alpha``."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _check_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _log_probs(model, logits_BxV):
    """Log-softmax with PAD and BOS excluded (never generated)."""
    logits_BxV = logits_BxV.astype(jnp.float32)
    banned = jnp.zeros(logits_BxV.shape[-1], bool).at[model.pad_id].set(True).at[model.bos_id].set(True)
    return jax.nn.log_softmax(jnp.where(banned, -jnp.inf, logits_BxV), axis=-1)


def _start(model, params, src_BxS, src_lengths_B):
    memory = model.encode(params, src_BxS, src_lengths_B)
    return memory, model.initial_state(params, memory)


def _run(model, params, src_BxS, src_lengths_B, max_len: int, choose):
    """The loop of greedy decoding and sampling; ``choose(t, logp [B, V]) -> tokens [B]``."""
    memory, state = _start(model, params, src_BxS, src_lengths_B)
    batch, src_len = memory["mask"].shape
    init = dict(
        t=jnp.asarray(0, jnp.int32), state=state,
        token=jnp.full((batch,), model.bos_id, jnp.int32),
        done=jnp.zeros((batch,), bool),
        tokens=jnp.full((batch, max_len), model.pad_id, jnp.int32),
        lengths=jnp.full((batch,), max_len, jnp.int32),
        log_probs=jnp.zeros((batch,), jnp.float32),
        attention=jnp.zeros((batch, max_len, src_len), jnp.float32),
    )

    def cond(c):
        return (c["t"] < max_len) & ~jnp.all(c["done"])

    def body(c):
        logits, state, alpha_BxS = model.decode_step(params, c["state"], c["token"], memory)
        logp_BxV = _log_probs(model, logits)
        token = jnp.where(c["done"], model.pad_id, choose(c["t"], logp_BxV))
        gained = jnp.take_along_axis(logp_BxV, token[:, None], axis=-1)[:, 0]
        ended = ~c["done"] & (token == model.eos_id)
        alpha_BxS = jnp.where(c["done"][:, None], 0.0, alpha_BxS.astype(jnp.float32))
        return dict(
            t=c["t"] + 1, state=state, token=token, done=c["done"] | ended,
            tokens=c["tokens"].at[:, c["t"]].set(token),
            lengths=jnp.where(ended, c["t"] + 1, c["lengths"]),
            log_probs=c["log_probs"] + jnp.where(c["done"], 0.0, gained),
            attention=lax.dynamic_update_slice_in_dim(c["attention"], alpha_BxS[:, None], c["t"], axis=1),
        )

    out = lax.while_loop(cond, body, init)
    return Decoded(out["tokens"], out["lengths"], out["log_probs"], out["attention"])


def _check_src(model, src_BxS, src_lengths_B):
    if hasattr(model, "check_source"):
        return model.check_source(src_BxS, src_lengths_B)
    if jnp.ndim(src_BxS) != 2 or jnp.shape(src_lengths_B) != jnp.shape(src_BxS)[:1]:
        raise InputError(f"src must be [batch, source length] and src_lengths [batch]; got shapes"
                         f" {jnp.shape(src_BxS)} and {jnp.shape(src_lengths_B)}")


def greedy(model, params, src_BxS, src_lengths_B, *, max_len: int) -> Decoded:
    """Greedy decoding: ``y_t = argmax_y p(y | y_<t, x)`` until EOS or ``max_len`` tokens (jitted)."""
    _check_int("max_len", max_len)
    _check_src(model, src_BxS, src_lengths_B)
    return _greedy(model, params, src_BxS, src_lengths_B, max_len=max_len)


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _greedy(model, params, src_BxS, src_lengths_B, *, max_len: int) -> Decoded:
    return _run(model, params, src_BxS, src_lengths_B, max_len,
                lambda t, logp: jnp.argmax(logp, axis=-1).astype(jnp.int32))


def sample(model, params, src_BxS, src_lengths_B, key, *, max_len: int, temperature: float = 1.0) -> Decoded:
    """Ancestral sampling: ``y_t ~ softmax(log p(· | y_<t, x) / temperature)`` until EOS or ``max_len``
    (jitted).

    Step ``t`` draws with ``fold_in(key, t)``; ``log_probs`` are those of the model (temperature 1).
    """
    _check_int("max_len", max_len)
    _check_src(model, src_BxS, src_lengths_B)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise InputError(f"temperature must be a number > 0 (use greedy for argmax), got {temperature!r}")
    return _sample(model, params, src_BxS, src_lengths_B, key, jnp.float32(temperature), max_len=max_len)


@functools.partial(jax.jit, static_argnames=("model", "max_len"))
def _sample(model, params, src_BxS, src_lengths_B, key, temperature, *, max_len: int) -> Decoded:
    def choose(t, logp_BxV):
        return jax.random.categorical(jax.random.fold_in(key, t), logp_BxV / temperature, axis=-1).astype(jnp.int32)

    return _run(model, params, src_BxS, src_lengths_B, max_len, choose)


def _tile(tree: Any, k: int):
    return jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), tree)


def beam_search(model, params, src_BxS, src_lengths_B, *, beam_size: int, max_len: int,
                alpha: float = 0.6) -> Beams:
    """Batched beam search with the GNMT length penalty (module docstring); ``K = beam_size`` (jitted)."""
    _check_int("max_len", max_len)
    _check_int("beam_size", beam_size)
    _check_src(model, src_BxS, src_lengths_B)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not alpha >= 0:
        raise InputError(f"alpha (length penalty exponent) must be a number >= 0, got {alpha!r}")
    return _beam_search(model, params, src_BxS, src_lengths_B, jnp.float32(alpha), beam_size=beam_size,
                        max_len=max_len)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size"))
def _beam_search(model, params, src_BxS, src_lengths_B, alpha, *, beam_size: int, max_len: int) -> Beams:
    K = beam_size
    memory, _ = _start(model, params, src_BxS, src_lengths_B)
    batch = memory["mask"].shape[0]
    memory = _tile(memory, K)                       # [B·K, ...], beam k of example b at b·K + k
    state = model.initial_state(params, memory)
    neg_inf = jnp.float32(-jnp.inf)
    init = dict(
        t=jnp.asarray(0, jnp.int32), state=state,
        token=jnp.full((batch * K,), model.bos_id, jnp.int32),
        tokens=jnp.full((batch, K, max_len), model.pad_id, jnp.int32),
        log_probs=jnp.tile(jnp.where(jnp.arange(K) == 0, 0.0, neg_inf), (batch, 1)),  # one live start
        lengths=jnp.zeros((batch, K), jnp.int32),
        finished=jnp.zeros((batch, K), bool),
    )

    def cond(c):
        dead = c["finished"] | (c["log_probs"] == neg_inf)
        return (c["t"] < max_len) & ~jnp.all(dead)

    def body(c):
        logits, state, _ = model.decode_step(params, c["state"], c["token"], memory)
        logp_BxKxV = _log_probs(model, logits).reshape(batch, K, -1)
        V = logp_BxKxV.shape[-1]
        finished = c["finished"][..., None]
        # a finished beam has one candidate: itself, extended by PAD at no cost
        keep_only = jnp.where(jnp.arange(V) == model.pad_id, 0.0, neg_inf)
        cand_BxKxV = c["log_probs"][..., None] + jnp.where(finished, keep_only, logp_BxKxV)
        cand_len = jnp.where(finished, c["lengths"][..., None], c["t"] + 1)
        norm_BxKxV = cand_BxKxV / length_penalty(cand_len, alpha)
        _, flat_BxK = lax.top_k(norm_BxKxV.reshape(batch, K * V), K)
        beam_BxK, token_BxK = flat_BxK // V, (flat_BxK % V).astype(jnp.int32)
        pick = lambda x: jnp.take_along_axis(x, beam_BxK, axis=1)
        was_finished = pick(c["finished"])
        rows = (jnp.arange(batch)[:, None] * K + beam_BxK).reshape(-1)
        tokens = jnp.take_along_axis(c["tokens"], beam_BxK[..., None], axis=1)
        return dict(
            t=c["t"] + 1,
            state=jax.tree.map(lambda x: x[rows], state),
            token=token_BxK.reshape(-1),
            tokens=tokens.at[:, :, c["t"]].set(jnp.where(was_finished, model.pad_id, token_BxK)),
            log_probs=jnp.take_along_axis(cand_BxKxV.reshape(batch, K * V), flat_BxK, axis=1),
            lengths=jnp.where(was_finished, pick(c["lengths"]), c["t"] + 1),
            finished=was_finished | (token_BxK == model.eos_id),
        )

    out = lax.while_loop(cond, body, init)
    scores = out["log_probs"] / length_penalty(jnp.maximum(out["lengths"], 1), alpha)
    order = jnp.argsort(-scores, axis=1)  # already best first after any step; kept for max_len edge cases
    take = lambda x: jnp.take_along_axis(x, order, axis=1)
    return Beams(jnp.take_along_axis(out["tokens"], order[..., None], axis=1), take(scores),
                 take(out["log_probs"]), take(out["lengths"]))
