r"""An encoder-decoder (sequence-to-sequence) model as pure functions, with optional attention.

Any registered cell serves as the encoder and as the decoder (they may differ, and so may their
sizes). Notation: source ids ``x_1..x_S`` (``S_b`` valid for row ``b``), target ids ``y_1..y_T``,
``y_0 = BOS``, source embeddings ``E_s``, target embeddings ``E_t``, encoder outputs
``e_s ∈ R^M`` (``M = encoder_size``, doubled with ``bidirectional_encoder``), decoder carry
``s_t`` with output part ``h_t ∈ R^H`` (``H = decoder_size``). Row vectors, ``x @ W``, as in
``rnn_jax.cells``.

Encoder (the fused :func:`rnn_jax.layers.rnn` over the whole source, masked by ``src_lengths``,
so ``e_s = 0`` for ``s ≥ S_b`` and the final carry is the one after step ``S_b - 1``)::

    e_1..e_S, c_enc = encoder(E_s[x_1..x_S])

Bridge (``bridge="learned"``): every leaf of the encoder's final carry (``(c, h)`` for an LSTM,
both directions when bidirectional) is concatenated into ``z``; each leaf ``k`` of the decoder's
carry starts as ``s_0^k = tanh(z W_k + b_k)``. ``bridge="zero"``: ``s_0 = 0``.

Attention, masked over the source padding (``α_ts = 0`` for ``s ≥ S_b``, ``Σ_s α_ts = 1``)::

    bahdanau (additive):        score(q, e_s) = v · tanh(q W_q + e_s W_k)       (W_k e_s precomputed)
    luong (general/bilinear):   score(q, e_s) = q · (e_s W_a)                    (e_s W_a precomputed)
    α_t = softmax_s(score(q_t, e_s)),   c_t = Σ_s α_ts e_s

Decoder step ``t = 1..T`` (input ``y_{t-1}``; the same :meth:`Seq2Seq.decode_step` serves the
teacher-forced loss and every decoder in :mod:`rnn_jax.decoding`, so they cannot drift)::

    none:      s_t, h_t = cell(s_{t-1}, E_t[y_{t-1}]);              o_t = h_t
    luong:     s_t, h_t = cell(s_{t-1}, E_t[y_{t-1}]);   q_t = h_t,      o_t = tanh([h_t; c_t] W_c + b_c)
    bahdanau:  q_t = h_{t-1};  s_t, h_t = cell(s_{t-1}, [E_t[y_{t-1}]; c_t]);  o_t = tanh([h_t; c_t] W_c + b_c)
    p(y_t | y_<t, x) = softmax(o_t W_o + b_o)

So Bahdanau's query is the previous decoder output and its context is fed into the decoder
input and into the output projection; Luong's query is the current output and its context
enters the output projection only (no input feeding). Training is teacher-forced: a
``lax.scan`` of ``decode_step`` over ``tgt_in = [BOS, y_1..y_n]`` scored against
``tgt_out = [y_1..y_n, EOS]``.

Batches (see :mod:`rnn_jax.data.seq2seq_tasks`): ``src [B, S]`` int32, ``src_lengths [B]``,
``tgt_in [B, T]``, ``tgt_out [B, T]``, ``tgt_lengths [B]`` (valid positions of ``tgt_in`` and
``tgt_out``: the target's length + 1, counting the EOS) and ``weight [B]`` (0 for padding rows).

Dropout (``dropout > 0`` and a ``dropout_key``) acts on the source embeddings, on the encoder
outputs, on the target embeddings and on ``o_t``, never on recurrent connections.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import layers
from rnn_jax.errors import InputError
from rnn_jax.models.base import as_cell, check_impl

ATTENTIONS = ("none", "bahdanau", "luong")
BRIDGES = ("learned", "zero")
MASKED_SCORE = -1e30  # finite, so a row whose source is all padding gives zeros, not NaN

__all__ = ["ATTENTIONS", "BRIDGES", "Seq2Seq", "masked_attention"]


def _uniform(key, shape, fan_in: int, scale: float = 1.0):
    bound = scale / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def masked_attention(scores_BxS, mask_BxS):
    """``softmax`` over the valid source positions; exactly 0 on the padding.

    ``α_s = exp(a_s) / Σ_{s' valid} exp(a_{s'})`` for valid ``s``, else 0. A row without any valid
    position gives all zeros.
    """
    scores_BxS = jnp.where(mask_BxS, scores_BxS.astype(jnp.float32), MASKED_SCORE)
    return jax.nn.softmax(scores_BxS, axis=-1) * mask_BxS


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
    """Static description of an encoder-decoder; the methods are pure functions of params.

    ``encoder_cell``/``decoder_cell`` are cells or spec strings (``"lstm:forget_bias=1.0"``).
    ``tgt_vocab_size=0`` means the target vocabulary is ``vocab_size`` too (separate embedding
    tables either way). ``attention_size`` is Bahdanau's ``v`` size (0: ``decoder_size``).
    ``pad_id``/``bos_id``/``eos_id`` are read by :mod:`rnn_jax.decoding`.

    ``params = {"src_embed": [V, E], "tgt_embed": [V_t, E], "encoder": cell params (or
    {"fw", "bw"}), "decoder": cell params, "bridge": {"W": [Z, n·H], "b": [n·H]} (learned only),
    "attention": {"W_q": [H, A], "W_k": [M, A], "v": [A]} | {"W_a": [M, H]}, "combine":
    {"W": [H + M, H], "b": [H]} (with attention), "out": {"W": [H, V_t], "b": [V_t]}}``.
    """

    encoder_cell: Any
    decoder_cell: Any
    vocab_size: int
    embed_size: int = 32
    encoder_size: int = 64
    decoder_size: int = 64
    attention: str = "luong"
    attention_size: int = 0
    bridge: str = "learned"
    bidirectional_encoder: bool = False
    tgt_vocab_size: int = 0
    dropout: float = 0.0
    embed_scale: float = 0.1
    output_scale: float = 1.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    impl: str = "fused"

    def __post_init__(self):
        object.__setattr__(self, "encoder_cell", as_cell(self.encoder_cell, "encoder_cell"))
        object.__setattr__(self, "decoder_cell", as_cell(self.decoder_cell, "decoder_cell"))
        for name in ("vocab_size", "embed_size", "encoder_size", "decoder_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        for name in ("attention_size", "tgt_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"{name} must be an integer >= 0 (0: default), got {value!r}")
        if self.attention not in ATTENTIONS:
            raise InputError(f"attention must be one of {', '.join(ATTENTIONS)}; got {self.attention!r}")
        if self.bridge not in BRIDGES:
            raise InputError(f"bridge must be one of {', '.join(BRIDGES)}; got {self.bridge!r}")
        check_impl(self.impl)
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout!r}")
        ids = (self.pad_id, self.bos_id, self.eos_id)
        if len(set(ids)) != 3 or not all(0 <= i < self.target_vocab for i in ids):
            raise InputError(f"pad_id, bos_id, eos_id must be distinct ids below {self.target_vocab}, got {ids}")

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def target_vocab(self) -> int:
        return self.tgt_vocab_size or self.vocab_size

    @property
    def memory_size(self) -> int:
        """``M``: the size of an encoder output ``e_s``."""
        return self.encoder_size * (2 if self.bidirectional_encoder else 1)

    @property
    def score_size(self) -> int:
        return self.attention_size or self.decoder_size

    def _carry_leaves(self, cell, size: int) -> list:
        return jax.tree.leaves(cell.zeros_carry(size, (1,), jnp.float32))

    # ---- parameters ----------------------------------------------------------------------------

    def init(self, key) -> dict:
        """Fresh parameters (layout in the class docstring)."""
        keys = iter(jax.random.split(key, 12))
        E, H, M, V_t = self.embed_size, self.decoder_size, self.memory_size, self.target_vocab
        params = {
            "src_embed": jax.random.uniform(next(keys), (self.vocab_size, E), jnp.float32,
                                            -self.embed_scale, self.embed_scale),
            "tgt_embed": jax.random.uniform(next(keys), (V_t, E), jnp.float32, -self.embed_scale, self.embed_scale),
        }
        if self.bidirectional_encoder:
            params["encoder"] = {"fw": self.encoder_cell.init(next(keys), E, self.encoder_size),
                                 "bw": self.encoder_cell.init(next(keys), E, self.encoder_size)}
        else:
            params["encoder"] = self.encoder_cell.init(next(keys), E, self.encoder_size)
        decoder_in = E + (M if self.attention == "bahdanau" else 0)
        params["decoder"] = self.decoder_cell.init(next(keys), decoder_in, H)
        if self.bridge == "learned":
            z_size = sum(leaf.shape[-1] for leaf in self._carry_leaves(self.encoder_cell, self.encoder_size))
            z_size *= 2 if self.bidirectional_encoder else 1
            n_out = len(self._carry_leaves(self.decoder_cell, H)) * H
            params["bridge"] = {"W": _uniform(next(keys), (z_size, n_out), z_size),
                                "b": jnp.zeros((n_out,), jnp.float32)}
        if self.attention == "bahdanau":
            A = self.score_size
            params["attention"] = {"W_q": _uniform(next(keys), (H, A), H), "W_k": _uniform(next(keys), (M, A), M),
                                   "v": _uniform(next(keys), (A,), A)}
        elif self.attention == "luong":
            params["attention"] = {"W_a": _uniform(next(keys), (M, H), M)}
        if self.attention != "none":
            params["combine"] = {"W": _uniform(next(keys), (H + M, H), H + M), "b": jnp.zeros((H,), jnp.float32)}
        params["out"] = {"W": _uniform(next(keys), (H, V_t), H, self.output_scale),
                         "b": jnp.zeros((V_t,), jnp.float32)}
        return params

    # ---- encoder -------------------------------------------------------------------------------

    def encode(self, params, src_BxS, src_lengths_B, dropout_key=None) -> dict:
        """Runs the encoder; returns the memory the decoder reads.

        ``memory = {"values": e [B, S, M], "keys": [B, S, A or H] (precomputed ``e W_k`` or ``e W_a``;
        absent without attention), "mask": [B, S] bool, "final": the encoder's final carry}``.
        Every leaf has the batch as its leading axis (beam search tiles it).
        """
        src_BxS = jnp.asarray(src_BxS, jnp.int32)
        src_lengths_B = jnp.asarray(src_lengths_B, jnp.int32)
        k_embed, k_out = (jax.random.split(dropout_key) if dropout_key is not None else (None, None))
        x_BxSxE = layers.dropout(k_embed, self.dropout, params["src_embed"][src_BxS])
        if self.bidirectional_encoder:
            final, e_BxSxM = layers.bidirectional(self.encoder_cell, params["encoder"], x_BxSxE,
                                                  seq_lengths=src_lengths_B, impl=self.impl)
        else:
            final, e_BxSxM = layers.rnn(self.encoder_cell, params["encoder"], x_BxSxE,
                                        seq_lengths=src_lengths_B, impl=self.impl)
        e_BxSxM = layers.dropout(k_out, self.dropout, e_BxSxM.astype(jnp.float32))
        mask_BxS = jnp.arange(src_BxS.shape[1])[None, :] < src_lengths_B[:, None]
        memory = {"values": e_BxSxM, "mask": mask_BxS, "final": final}
        if self.attention == "bahdanau":
            memory["keys"] = e_BxSxM @ params["attention"]["W_k"]
        elif self.attention == "luong":
            memory["keys"] = e_BxSxM @ params["attention"]["W_a"]
        return memory

    def initial_state(self, params, memory) -> Any:
        """``s_0``: the decoder carry from the bridge (or zeros), batch ``B`` as in ``memory``."""
        batch = memory["mask"].shape[0]
        like = self.decoder_cell.zeros_carry(self.decoder_size, (batch,), jnp.float32)
        if self.bridge == "zero":
            return like
        z_BxZ = jnp.concatenate([leaf.astype(jnp.float32) for leaf in jax.tree.leaves(memory["final"])], axis=-1)
        s_BxNH = jnp.tanh(z_BxZ @ params["bridge"]["W"] + params["bridge"]["b"])
        n = len(jax.tree.leaves(like))
        return jax.tree.unflatten(jax.tree.structure(like), jnp.split(s_BxNH, n, axis=-1))

    # ---- decoder -------------------------------------------------------------------------------

    def attend(self, params, q_BxH, memory):
        """``(α [B, S], c [B, M])`` for queries ``q [B, H]`` (see the module docstring)."""
        keys = memory["keys"]
        if self.attention == "bahdanau":
            p = params["attention"]
            scores_BxS = jnp.tanh((q_BxH @ p["W_q"])[:, None, :] + keys) @ p["v"]
        else:
            scores_BxS = jnp.einsum("bh,bsh->bs", q_BxH, keys)
        alpha_BxS = masked_attention(scores_BxS, memory["mask"])
        return alpha_BxS, jnp.einsum("bs,bsm->bm", alpha_BxS, memory["values"])

    def decode_step(self, params, state, token_B, memory, dropout_key=None):
        """One decoder step: ``(logits [B, V_t], state', attention [B, S])`` after input ``token``.

        ``attention`` is ``α_t`` (all zeros with ``attention="none"``). Dropout only with a key.
        """
        k_in, k_out = (jax.random.split(dropout_key) if dropout_key is not None else (None, None))
        cell = self.decoder_cell
        x_BxE = layers.dropout(k_in, self.dropout, params["tgt_embed"][jnp.asarray(token_B, jnp.int32)])
        if self.attention == "bahdanau":
            alpha_BxS, c_BxM = self.attend(params, cell.carry_h(state), memory)
            state, h_BxH = cell.fast_step(params["decoder"], state, jnp.concatenate([x_BxE, c_BxM], axis=-1))
        else:
            state, h_BxH = cell.fast_step(params["decoder"], state, x_BxE)
            if self.attention == "luong":
                alpha_BxS, c_BxM = self.attend(params, h_BxH, memory)
            else:
                alpha_BxS = jnp.zeros(memory["mask"].shape, jnp.float32)
        if self.attention == "none":
            o_BxH = h_BxH
        else:
            combine = params["combine"]
            o_BxH = jnp.tanh(jnp.concatenate([h_BxH, c_BxM], axis=-1) @ combine["W"] + combine["b"])
        o_BxH = layers.dropout(k_out, self.dropout, o_BxH)
        return o_BxH @ params["out"]["W"] + params["out"]["b"], state, alpha_BxS

    # ---- teacher forcing -----------------------------------------------------------------------

    def teacher_forced(self, params, batch, dropout_key=None):
        """Logits ``[B, T, V_t]`` and attention ``[B, T, S]`` with ``tgt_in`` fed in (a scan of
        :meth:`decode_step`)."""
        use_dropout = dropout_key is not None and self.dropout > 0
        k_enc, k_dec = jax.random.split(dropout_key) if use_dropout else (None, None)
        memory = self.encode(params, batch["src"], batch["src_lengths"], k_enc)
        tgt_in_TxB = jnp.asarray(batch["tgt_in"], jnp.int32).T
        num_steps = tgt_in_TxB.shape[0]
        step_keys = jax.random.split(k_dec, num_steps) if use_dropout else jnp.zeros((num_steps,), jnp.uint32)

        def body(state, inputs):
            token_B, key_t = inputs
            logits, state, alpha = self.decode_step(params, state, token_B, memory,
                                                    key_t if use_dropout else None)
            return state, (logits, alpha)

        _, (logits_TxBxV, alpha_TxBxS) = jax.lax.scan(body, self.initial_state(params, memory),
                                                      (tgt_in_TxB, step_keys))
        return jnp.swapaxes(logits_TxBxV, 0, 1), jnp.swapaxes(alpha_TxBxS, 0, 1)

    def loss(self, params, batch, dropout_key=None):
        """Teacher-forced cross-entropy: ``(mean_loss, sums)``; see :meth:`loss_from_logits`."""
        logits_BxTxV, _ = self.teacher_forced(params, batch, dropout_key)
        return self.loss_from_logits(logits_BxTxV, batch)

    @staticmethod
    def loss_from_logits(logits_BxTxV, batch):
        """``(mean_loss, sums)`` of teacher-forced logits against ``tgt_out``.

        ``nll = Σ_{b, t < tgt_lengths_b} weight_b · -log p(tgt_out[b, t])``, ``mean_loss = nll /
        nll_tokens`` with ``nll_tokens = Σ_b weight_b · tgt_lengths_b`` (per target token, EOS
        included). ``sums = {"nll", "nll_tokens"}`` add up over evaluation batches.
        """
        tgt_out_BxT = jnp.asarray(batch["tgt_out"], jnp.int32)
        weight_B = jnp.asarray(batch["weight"], jnp.float32)
        mask_BxT = jnp.arange(tgt_out_BxT.shape[1])[None, :] < jnp.asarray(batch["tgt_lengths"])[:, None]
        w_BxT = mask_BxT * weight_B[:, None]
        logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
        nll_BxT = -jnp.take_along_axis(logp, tgt_out_BxT[..., None], axis=-1)[..., 0]
        sums = {"nll": jnp.sum(nll_BxT * w_BxT), "nll_tokens": jnp.sum(w_BxT)}
        return sums["nll"] / jnp.maximum(sums["nll_tokens"], 1.0), sums


# ----------------------------------------------------------------------------- the model kind

def _build(config, task) -> Seq2Seq:
    from rnn_jax.models.base import make_cell

    m = config.model
    cell = make_cell(config)
    return Seq2Seq(cell, cell, len(task.vocab), embed_size=m.embed_size, encoder_size=m.hidden_size,
                   decoder_size=m.hidden_size, attention=m.get("attention", "bahdanau"),
                   bridge=m.get("bridge", "learned"), bidirectional_encoder=bool(m.get("bidirectional", False)),
                   dropout=m.dropout, embed_scale=m.embed_scale, output_scale=m.output_scale, impl=m.impl)


def _eval_sums(model, task):
    """Teacher-forced loss sums and the decoded (greedy) output's accuracies of one batch."""
    from rnn_jax import decoding
    from rnn_jax.data.seq2seq_tasks import decoded_metrics

    def sums(params, batch):
        _, loss_sums = model.loss(params, batch)
        decoded = decoding._greedy(model, params, batch["src"], batch["src_lengths"], max_len=task.tgt_len)
        return {**loss_sums, **decoded_metrics(decoded.tokens, batch)}

    return sums


def _sample(model, task, params, key) -> str:
    """The first validation sources, greedy outputs and targets."""
    from rnn_jax import decoding

    batch = task.eval_batches("valid", 8)[0]
    decoded = decoding.greedy(model, params, batch["src"], batch["src_lengths"], max_len=task.tgt_len)
    lines = []
    for b in range(len(batch["src"])):
        src = task.decode(batch["src"][b][:int(batch["src_lengths"][b])])
        out = task.decode(np.asarray(decoded.tokens[b]))
        tgt = task.decode(batch["tgt_out"][b][:int(batch["tgt_lengths"][b])])
        lines.append(f"{src} -> {out}" + ("" if out == tgt else f" (target {tgt})"))
    return "\n".join(lines)


def _kind():
    import math

    from rnn_jax.models.base import ExampleKind

    return ExampleKind("seq2seq", _build, _eval_sums, lambda model, task: math.log(model.target_vocab),
                       sample=_sample, options={"attention": ("bahdanau", "luong", "none"),
                                                "bridge": BRIDGES, "bidirectional": (False, True)},
                       fixed={"num_layers": 1, "variational": False})


KIND = _kind()
