r"""Image captioning (``model.kind = "caption"``): a CNN reads the image, any registered cell writes the
caption, either conditioned on one vector (the lecture's ``W_ih·v``) or attending to image regions
while it writes (Show, Attend and Tell; Xu et al. 2015).

Notation: image features ``f_1..f_L ∈ R^D`` from :class:`~rnn_jax.models.vision.ImageEncoder` (a
CNN grid with coordinates, or precomputed), caption ids ``y_1..y_n``, ``y_0 = BOS``, ``y_{n+1} =
EOS``, embeddings ``E``, decoder carry ``s_t`` with output part ``h_t ∈ R^H``. Row vectors.

``attention = "none"`` (conditioning; ``C = cond_size``)::

    v   = tanh(vec(f_1..f_L) W_v + b_v)                                  the image as one vector
    s_0 = tanh(v W_0 + b_0)                    condition "init" or "both"   (else s_0 = 0)
    s_t, h_t = cell(s_{t-1}, [E y_{t-1}; v])   condition "input" or "both"  (else cell(s_{t-1}, E y_{t-1}))
    p(y_t | y_<t, image) = softmax(h_t W_o + b_o)

so with a vanilla RNN the step is ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v)``, the lecture's
equation. ``attention = "soft"`` (deterministic soft attention; ``A = attention_size``)::

    s_0 = tanh(mean_i f_i W_0 + b_0)
    e_ti = w_a · tanh(h_{t-1} W_q + f_i W_k)          (f_i W_k computed once per image)
    α_t  = softmax_i(e_ti),   z_t = β_t Σ_i α_ti f_i,   β_t = σ(h_{t-1} w_β + b_β)   (β_t = 1 without gate)
    s_t, h_t = cell(s_{t-1}, [E y_{t-1}; z_t])
    o_t = tanh([h_t; z_t] W_c + b_c),   p(y_t | y_<t, image) = softmax(o_t W_o + b_o)

``α_t`` is the attention of the step that *emits* ``y_t``. Training is teacher-forced over masked
targets (``lengths`` = words + 1, EOS included). The objective adds Xu et al.'s doubly stochastic
penalty, which pushes every location to receive a total attention of about one over the caption::

    objective = Σ_b w_b Σ_{t ≤ n_b+1} -log p(y_bt) / Σ_b w_b (n_b+1)
                + λ · Σ_b w_b Σ_i (1 - Σ_{t ≤ n_b+1} α_bti)² / Σ_b w_b          (λ = penalty)

The reported ``loss`` is the first term only (nats per token). The model has the decoder interface of
:mod:`rnn_jax.decoding` (``encode``, ``initial_state``, ``decode_step``, ids), so greedy decoding,
sampling and beam search are the ones the encoder-decoder uses, under jit. Metrics come from decoded
captions, never teacher-forced (:class:`CaptionEvaluator`): BLEU-1..4, CIDEr-D and ROUGE-L through
pycocoevalcap (:mod:`rnn_jax.caption_metrics`) on beam-search captions; on synthetic scenes also
attribute recall, and (soft attention) the attention mass on the named object's region when its
word is emitted (greedy captions; :func:`attention_mass`).

``params = {"encoder": ImageEncoder params, "embed": [V, E], "decoder": cell params, "init": {"W",
"b"}, "out": {"W": [H, V], "b": [V]}}`` plus ``"attention": {"W_q": [H, A], "W_k": [D, A], "w_a":
[A]}``, ``"gate": {"w": [H], "b": []}`` and ``"combine": {"W": [H + D, H], "b": [H]}`` (soft), or
``"cond": {"W": [L·D, C], "b": [C]}`` (none). Dropout (``dropout > 0`` with a key) acts on the
embeddings and on the decoder output before the softmax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import layers
from rnn_jax.errors import InputError
from rnn_jax.models.base import check_fields
from rnn_jax.models.seq2seq import _uniform, masked_attention
from rnn_jax.models.vision import ImageEncoder

ATTENTIONS = ("soft", "none")
CONDITIONS = ("both", "input", "init")

__all__ = ["ATTENTIONS", "CONDITIONS", "CaptionEvaluator", "Captioner", "attention_mass"]


@dataclasses.dataclass(frozen=True)
class Captioner:
    """Static description of a captioner (module docstring); methods are pure functions of params.

    ``attention_size``/``cond_size`` 0 mean ``hidden_size``. ``pad_id``/``bos_id``/``eos_id`` are
    read by :mod:`rnn_jax.decoding`.
    """

    encoder: ImageEncoder
    cell: Any
    vocab_size: int
    hidden_size: int = 128
    embed_size: int = 32
    attention: str = "soft"
    attention_size: int = 0
    gate: bool = True
    penalty: float = 0.0
    condition: str = "both"
    cond_size: int = 0
    dropout: float = 0.0
    embed_scale: float = 0.1
    output_scale: float = 1.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    impl: str = "fused"

    def __post_init__(self):
        check_fields(self, ("vocab_size", "hidden_size", "embed_size"), ("attention_size", "cond_size"),
                     {"attention": ATTENTIONS, "condition": CONDITIONS})
        if not isinstance(self.penalty, (int, float)) or isinstance(self.penalty, bool) or not (
                math.isfinite(self.penalty) and self.penalty >= 0):
            raise InputError(f"penalty (λ of the doubly stochastic penalty) must be a number >= 0, "
                             f"got {self.penalty!r}")
        ids = (self.pad_id, self.bos_id, self.eos_id)
        if len(set(ids)) != 3 or not all(0 <= i < self.vocab_size for i in ids):
            raise InputError(f"pad_id, bos_id, eos_id must be distinct ids below {self.vocab_size}, got {ids}")

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def D(self) -> int:
        return self.encoder.feature_size

    @property
    def A(self) -> int:
        return self.attention_size or self.hidden_size

    @property
    def C(self) -> int:
        return self.cond_size or self.hidden_size

    @property
    def feeds_v(self) -> bool:
        return self.attention == "none" and self.condition in ("input", "both")

    @property
    def sets_state(self) -> bool:
        return self.attention == "soft" or self.condition in ("init", "both")

    def _leaves(self) -> int:
        return len(jax.tree.leaves(self.cell.zeros_carry(self.hidden_size, (1,), jnp.float32)))

    # ---- parameters ----------------------------------------------------------------------------

    def init(self, key) -> dict:
        keys = iter(jax.random.split(key, 12))
        H, E, D, V = self.hidden_size, self.embed_size, self.D, self.vocab_size
        decoder_in = E + (D if self.attention == "soft" else self.C if self.feeds_v else 0)
        params = {"encoder": self.encoder.init(next(keys)),
                  "embed": jax.random.uniform(next(keys), (V, E), jnp.float32, -self.embed_scale, self.embed_scale),
                  "decoder": self.cell.init(next(keys), decoder_in, H),
                  "out": {"W": _uniform(next(keys), (H, V), H, self.output_scale), "b": jnp.zeros((V,), jnp.float32)}}
        n = self._leaves() * H
        if self.attention == "soft":
            params["attention"] = {"W_q": _uniform(next(keys), (H, self.A), H),
                                   "W_k": _uniform(next(keys), (D, self.A), D),
                                   "w_a": _uniform(next(keys), (self.A,), self.A)}
            if self.gate:
                params["gate"] = {"w": jnp.zeros((H,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
            params["combine"] = {"W": _uniform(next(keys), (H + D, H), H + D), "b": jnp.zeros((H,), jnp.float32)}
            params["init"] = {"W": _uniform(next(keys), (D, n), D), "b": jnp.zeros((n,), jnp.float32)}
        else:
            LD = self.encoder.num_locations * D
            params["cond"] = {"W": _uniform(next(keys), (LD, self.C), LD), "b": jnp.zeros((self.C,), jnp.float32)}
            if self.sets_state:
                params["init"] = {"W": _uniform(next(keys), (self.C, n), self.C), "b": jnp.zeros((n,), jnp.float32)}
        return params

    # ---- encoder -------------------------------------------------------------------------------

    def check_source(self, images, lengths=None) -> None:
        """:mod:`rnn_jax.decoding`'s check of its source: a batch of images (or features)."""
        self.encoder.check(images)

    def encode(self, params, images, lengths=None) -> dict:
        """``memory`` for the decoder: ``{"values": f [B, L, D], "mask": [B, L]}`` plus ``"keys"`` and
        ``"mean"`` (soft) or ``"v" [B, C]`` (none); every leaf has the batch first (beam search tiles
        it). ``lengths`` is unused (the decoders' signature)."""
        f = self.encoder.apply(params["encoder"], images)
        memory = {"values": f, "mask": jnp.ones(f.shape[:2], bool)}
        if self.attention == "soft":
            memory["keys"] = f @ params["attention"]["W_k"]
            memory["mean"] = f.mean(axis=1)
        else:
            memory["v"] = jnp.tanh(f.reshape(f.shape[0], -1) @ params["cond"]["W"] + params["cond"]["b"])
        return memory

    def initial_state(self, params, memory):
        batch = memory["mask"].shape[0]
        like = self.cell.zeros_carry(self.hidden_size, (batch,), jnp.float32)
        if not self.sets_state:
            return like
        z = memory["mean"] if self.attention == "soft" else memory["v"]
        s = jnp.tanh(z @ params["init"]["W"] + params["init"]["b"])
        return jax.tree.unflatten(jax.tree.structure(like), jnp.split(s, self._leaves(), axis=-1))

    # ---- decoder -------------------------------------------------------------------------------

    def attend(self, params, q_BxH, memory):
        """``(α [B, L], z [B, D], β [B])``: soft attention of the query (module docstring)."""
        p = params["attention"]
        scores = jnp.tanh((q_BxH @ p["W_q"])[:, None, :] + memory["keys"]) @ p["w_a"]
        alpha = masked_attention(scores, memory["mask"])
        z = jnp.einsum("bl,bld->bd", alpha, memory["values"])
        beta = (jax.nn.sigmoid(q_BxH @ params["gate"]["w"] + params["gate"]["b"]) if self.gate
                else jnp.ones(q_BxH.shape[:1], jnp.float32))
        return alpha, z * beta[:, None], beta

    def decode_step(self, params, state, token_B, memory, dropout_key=None):
        """One step: ``(logits [B, V], state', α_t [B, L])`` (α all zeros without attention)."""
        k_in, k_out = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        x = layers.dropout(k_in, self.dropout, params["embed"][jnp.asarray(token_B, jnp.int32)])
        if self.attention == "soft":
            alpha, z, _ = self.attend(params, self.cell.carry_h(state).astype(jnp.float32), memory)
            state, h = self.cell.fast_step(params["decoder"], state, jnp.concatenate([x, z], axis=-1))
            c = params["combine"]
            o = jnp.tanh(jnp.concatenate([h.astype(jnp.float32), z], axis=-1) @ c["W"] + c["b"])
        else:
            alpha = jnp.zeros(memory["mask"].shape, jnp.float32)
            inputs = jnp.concatenate([x, memory["v"]], axis=-1) if self.feeds_v else x
            state, o = self.cell.fast_step(params["decoder"], state, inputs)
        o = layers.dropout(k_out, self.dropout, o.astype(jnp.float32))
        return o @ params["out"]["W"] + params["out"]["b"], state, alpha

    # ---- teacher forcing -----------------------------------------------------------------------

    def _source(self, batch):
        return batch["images"] if "images" in batch else batch["features"]

    def teacher_forced(self, params, batch: Mapping, dropout_key=None):
        """Logits ``[B, T, V]`` and attention ``[B, T, L]`` with ``[BOS, y_1..]`` fed in."""
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        B, T = tokens.shape
        use_dropout = dropout_key is not None and self.dropout > 0
        memory = self.encode(params, self._source(batch))
        inputs_TxB = jnp.concatenate([jnp.full((B, 1), self.bos_id, jnp.int32), tokens[:, :-1]], axis=1).T
        step_keys = jax.random.split(dropout_key, T) if use_dropout else jnp.zeros((T,), jnp.uint32)

        def body(state, xs):
            token, key = xs
            logits, state, alpha = self.decode_step(params, state, token, memory, key if use_dropout else None)
            return state, (logits, alpha)

        _, (logits, alpha) = jax.lax.scan(body, self.initial_state(params, memory), (inputs_TxB, step_keys))
        return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(alpha, 0, 1)

    @staticmethod
    def reported_loss(sums):
        """The loss the trainer logs and checks for divergence: NLL per token, without the penalty."""
        return sums["nll"] / jnp.maximum(sums["count"], 1e-9)

    def loss(self, params, batch: Mapping, dropout_key=None):
        """``(objective, sums)``: sums ``{"nll", "count", "penalty", "captions"}`` (module docstring)."""
        logits, alpha = self.teacher_forced(params, batch, dropout_key)
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        B, T = tokens.shape
        weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones((B,), jnp.float32)
        valid = jnp.arange(T)[None, :] < jnp.asarray(batch["lengths"])[:, None]
        w = valid * weight[:, None]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0]
        nll = jnp.where(w > 0, nll, 0.0)
        total_BxL = jnp.sum(alpha * valid[..., None], axis=1)
        penalty_B = jnp.sum((1.0 - total_BxL) ** 2, axis=-1) if self.attention == "soft" else jnp.zeros((B,))
        sums = {"nll": jnp.sum(nll * w), "count": jnp.sum(w), "penalty": jnp.sum(penalty_B * weight),
                "captions": jnp.sum(weight)}
        objective = sums["nll"] / jnp.maximum(sums["count"], 1e-9)
        if self.attention == "soft" and self.penalty:
            objective = objective + self.penalty * sums["penalty"] / jnp.maximum(sums["captions"], 1e-9)
        return objective, sums


# ----------------------------------------------------------------------------- evaluation

def attention_mass(encoder: ImageEncoder, objects, tokens, attention, vocab, object_words) -> tuple[float, int]:
    """``(Σ mass, events)``: for every emitted word of ``object_words`` in the decoded captions, the
    attention of that step on the region of the object it names — the ``k``-th such word names the
    ``k``-th object (left to right, the captions' order); words past the scene's objects are not
    counted. ``tokens [N, T]``, ``attention [N, T, L]`` (the decoder's α), ``objects`` per image."""
    words = set(object_words)
    total, events = 0.0, 0
    for row, objs in enumerate(objects):
        k = 0
        for t, i in enumerate(np.asarray(tokens[row]).tolist()):
            if i == vocab.eos_id:
                break
            if i < len(vocab) and vocab.tokens[i] in words:
                if k < len(objs):
                    total += float(np.asarray(attention[row, t])[encoder.region(objs[k]["box"])].sum())
                    events += 1
                k += 1
    return total, events


class CaptionEvaluator:
    """``evaluator(params, split) -> metrics``: the teacher-forced ``loss``, and from decoded captions
    BLEU-1..4, CIDEr-D, ROUGE-L (beam search, ``model.beam_size``, GNMT length penalty
    ``beam_alpha``), attribute recall (tasks with objects) and ``attention_mass`` (soft attention,
    greedy captions). With ``trials`` the parameters carry a leading trial axis and a list comes back
    (the trials are evaluated one after another)."""

    def __init__(self, model: Captioner, task, beam_size: int, beam_alpha: float, batch_size: int,
                 test_batch_size: int, trials: bool = False):
        from rnn_jax import caption_metrics

        caption_metrics.require_pycocoevalcap()  # before training, not at the first evaluation
        self.model, self.task, self.trials = model, task, trials
        self.beam_size, self.beam_alpha = beam_size, float(beam_alpha)
        self.sizes = {"valid": batch_size, "test": test_batch_size or batch_size}
        self._batches = {}
        self._loss = jax.jit(lambda params, batch: model.loss(params, batch)[1])

    def batches(self, split: str) -> list:
        if split not in self._batches:
            self._batches[split] = [jax.tree.map(jnp.asarray, b)
                                    for b in self.task.eval_batches(split, self.sizes[split])]
        return self._batches[split]

    def decode(self, params, split: str, greedy: bool = False):
        """``(tokens [N, T], attention [N, T, L] or None)``: the split's captions (beam search's best,
        or greedy with attention), one row per image."""
        from rnn_jax import decoding

        model, T = self.model, self.task.max_len
        tokens, attention = [], []
        for batch in self.batches(split):
            keep = np.asarray(batch["weight"]) > 0
            source = model._source(batch)
            if greedy:
                out = decoding._greedy(model, params, source, None, max_len=T)
                tokens.append(np.asarray(out.tokens)[keep])
                attention.append(np.asarray(out.attention)[keep])
            else:
                out = decoding._beam_search(model, params, source, None, jnp.float32(self.beam_alpha),
                                            beam_size=self.beam_size, max_len=T)
                tokens.append(np.asarray(out.tokens[:, 0])[keep])
        return np.concatenate(tokens), (np.concatenate(attention) if greedy else None)

    def captions(self, tokens) -> list[str]:
        return [" ".join(self.task.vocab.decode(row)) for row in tokens]

    def __call__(self, params, split: str):
        if not self.trials:
            return self._one(params, split)
        k = len(jax.tree.leaves(params)[0])
        return [self._one(jax.tree.map(lambda x: x[i], params), split) for i in range(k)]

    def _one(self, params, split: str) -> dict:
        from rnn_jax import caption_metrics

        total = None
        for batch in self.batches(split):
            sums = self._loss(params, batch)
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        total = jax.device_get(total)
        out = {"loss": float(total["nll"]) / max(float(total["count"]), 1.0)}
        tokens, _ = self.decode(params, split)
        hypotheses = self.captions(tokens)
        out.update(caption_metrics.coco_scores(self.task.references(split), hypotheses))
        objects = self.task.objects(split)
        if objects is not None:
            out.update(caption_metrics.attribute_recall(objects, hypotheses))
            words = getattr(self.task, "object_words", None)
            if self.model.attention == "soft" and words:
                greedy_tokens, attention = self.decode(params, split, greedy=True)
                mass, events = attention_mass(self.model.encoder, objects, greedy_tokens, attention,
                                              self.task.vocab, words)
                out["attention_mass"] = mass / events if events else float("nan")  # no digit word emitted
        return out


# ----------------------------------------------------------------------------- the model kind

def _encoder(config, task, channels=(32, 64), strides=(2, 2)) -> ImageEncoder:
    """The config's image encoder (``model.cnn_channels``, ``cnn_strides``, ``cnn_norm``, ``coords``;
    the defaults are the kind's)."""
    m = config.model
    inputs = getattr(task, "inputs", "images")
    shape = task.image_shape if inputs == "images" else task.feature_shape
    return ImageEncoder(inputs, shape, channels=tuple(m.get("cnn_channels", channels)),
                        strides=tuple(m.get("cnn_strides", strides)), coords=bool(m.get("coords", True)),
                        norm=m.get("cnn_norm", "instance"))


def _build(config, task) -> Captioner:
    from rnn_jax import configs as cfg
    from rnn_jax.models.base import make_cell

    m = config.model
    cfg.check_int("model.beam_size", m.get("beam_size", 3))
    cfg.check_number("model.beam_alpha", m.get("beam_alpha", 0.0))
    vocab = task.vocab
    return Captioner(_encoder(config, task), make_cell(config), len(vocab), hidden_size=m.hidden_size,
                     embed_size=m.embed_size, attention=m.get("attention", "soft"),
                     attention_size=int(m.get("attention_size", 0)), cond_size=int(m.get("cond_size", 0)),
                     gate=bool(m.get("gate", True)),
                     penalty=float(m.get("penalty", 0.0)), condition=m.get("condition", "both"),
                     dropout=m.dropout, embed_scale=m.embed_scale, output_scale=m.output_scale,
                     pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id, impl=m.impl)


def _eval_sums(model, task):
    return lambda params, batch: model.loss(params, batch)[1]


def _evaluator(problem, trials: bool):
    c = problem.config
    return CaptionEvaluator(problem.model, problem.task_obj, beam_size=int(c.model.get("beam_size", 3)),
                            beam_alpha=float(c.model.get("beam_alpha", 0.0)),
                            batch_size=c.train.eval_batch_size, test_batch_size=c.train.test_batch_size,
                            trials=trials)


def _sample(model, task, params, key) -> str:
    """The first validation images' greedy captions, each beside its reference where it differs."""
    evaluator = CaptionEvaluator(model, task, beam_size=1, beam_alpha=0.0, batch_size=8, test_batch_size=8)
    evaluator._batches["valid"] = [jax.tree.map(jnp.asarray, task.eval_batches("valid", 8)[0])]
    tokens, _ = evaluator.decode(params, "valid", greedy=True)
    refs = task.references("valid")
    return "\n".join(f"{c}" + ("" if c in refs[i] else f"   (reference: {refs[i][0]})")
                     for i, c in enumerate(evaluator.captions(tokens)))


def _kind():
    from rnn_jax.models.base import ExampleKind

    return ExampleKind("caption", _build, _eval_sums, lambda model, task: math.log(model.vocab_size),
                       sample=_sample, evaluator=_evaluator,
                       options={"attention": ATTENTIONS, "condition": CONDITIONS, "gate": (True, False)},
                       fixed={"num_layers": 1, "variational": False})


KIND = _kind()
