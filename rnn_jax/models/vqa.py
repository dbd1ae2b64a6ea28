r"""Visual question answering (``model.kind = "vqa"``): a recurrent question encoder whose final state
queries soft attention over the image grid, and an answer classifier; or the baseline without
attention.

Notation: image features ``f_1..f_L ∈ R^D`` (:class:`~rnn_jax.models.vision.ImageEncoder`: a CNN
grid with each location's coordinates), question ids ``w_1..w_m`` embedded by ``E``, any registered
cell as the question encoder (masked by ``question_lengths``, so its final state is the one after
``w_m``). Row vectors::

    q = h_m,   where s_t, h_t = cell(s_{t-1}, E w_t),  s_0 = 0

``attention = "soft"`` (stacked attention, Yang et al. 2016; ``K = glimpses``, ``A = attention_size``)::

    u_0 = q
    α_k = softmax_i(w_k · tanh(u_{k-1} W_q,k + f_i W_f,k))          k = 1..K
    u_k = u_{k-1} + (Σ_i α_ki f_i) W_g,k
    logits = MLP(u_K)

``relation = R > 0`` adds a relation head (Santoro et al. 2017's, with one side of each pair fixed
by attention): the first glimpse's reading ``r`` (the asked object) is compared with every cell by
a two-layer MLP of width ``R``, and the comparisons are averaged::

    r = Σ_i α_1i f_i
    h_i = relu(relu(r W_a + f_i W_b + q W_c + b_1) W_2 + b_2)
    logits = MLP(u_K + (1/L Σ_i h_i) W_o)

The intent: a softmax glimpse averages what it attends to, so one that puts all its weight on k
identical copies of what it picks out reads the same vector for every k; an average of per-cell
comparisons can instead grow with the number of cells that match the asked object. The pairs cost
``L`` comparisons per question (not ``L²``: the glimpse picks one side). Whether the first glimpse
does sit on the asked object is learnt, not built in.

``attention = "none"`` (the baseline: the CNN's grid flattened into one vector, with the question's
state; Santoro et al.'s CNN+MLP)::

    logits = MLP([vec(f_1..f_L); q])

``film = True`` conditions the CNN on the question as well (FiLM, Perez et al. 2018; see
:mod:`rnn_jax.models.vision`): for every stage ``k``, ``γ_k = q W_γ,k`` and ``β_k = q W_β,k``, with
``W_γ,k, W_β,k ∈ R^{H × C_k}`` starting at zero (the unconditioned CNN), and ``f`` is the grid of the
conditioned CNN, one per question. On Sort-of-CLEVR this is what lets a model read the *shape* of
the asked object: without it, attention learns where each colour is (position questions) but shape
questions stay at chance (docs/decisions.md).

A batch may hold fewer images than questions (``image_index [B]`` names each question's image in
``images``; Sort-of-CLEVR's ``questions_per_image``): the CNN then runs once per image, or with
``film`` only its first convolution and normalisation do (the rest runs per question).

``MLP(x) = relu(relu(x W_1 + b_1) W_2 + b_2) W_3 + b_3`` with ``mlp_size`` hidden units; dropout
(with a key) on its hidden layers. The loss is the mean cross-entropy of the answer; the task
reports accuracy by question type (:mod:`rnn_jax.data.sort_of_clevr`).

``params = {"encoder", "embed": [V, E], "question": cell params, "mlp": {"W_1", "b_1", "W_2", "b_2",
"W_3", "b_3"}}`` plus ``"glimpses": [{"W_q": [H, A], "W_f": [D, A], "w": [A], "W_g": [D, H]}] * K``
(soft), ``"relation": {"W_a": [D, R], "W_b": [D, R], "W_c": [H, R], "b_1": [R], "W_2": [R, R], "b_2": [R],
"W_o": [R, H]}`` (relation) and ``"film": [{"W_gamma": [H, C_k], "W_beta": [H, C_k]}] * stages`` (film).
"""

from __future__ import annotations

import dataclasses
import functools
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

__all__ = ["ATTENTIONS", "VQAModel"]


@dataclasses.dataclass(frozen=True)
class VQAModel:
    """Static description (module docstring); the methods are pure functions of params and batches.
    ``attention_size`` 0 means ``hidden_size``; ``relation`` 0 means no relation head."""

    encoder: ImageEncoder
    cell: Any
    vocab_size: int
    num_answers: int
    hidden_size: int = 128
    embed_size: int = 32
    attention: str = "soft"
    glimpses: int = 2
    attention_size: int = 0
    mlp_size: int = 256
    dropout: float = 0.0
    embed_scale: float = 0.1
    impl: str = "fused"
    film: bool = False
    relation: int = 0

    def __post_init__(self):
        check_fields(self, ("vocab_size", "num_answers", "hidden_size", "embed_size", "glimpses", "mlp_size"),
                     ("attention_size",), {"attention": ATTENTIONS})
        if not isinstance(self.relation, (int, np.integer)) or isinstance(self.relation, bool) or self.relation < 0:
            raise InputError(f"relation must be an integer >= 0 (0: no relation head), got {self.relation!r}")
        object.__setattr__(self, "relation", int(self.relation))
        if self.relation and self.attention != "soft":
            raise InputError("model.relation compares the first glimpse's object with every cell; with "
                             f"attention={self.attention!r} there is no glimpse")
        if self.film and self.encoder.inputs != "images":
            raise InputError("model.film conditions the CNN on the question; precomputed features have no CNN")

    @property
    def A(self) -> int:
        return self.attention_size or self.hidden_size

    def init(self, key) -> dict:
        keys = iter(jax.random.split(key, 12 + 4 * self.glimpses))
        H, E, D, M = self.hidden_size, self.embed_size, self.encoder.feature_size, self.mlp_size
        params = {"encoder": self.encoder.init(next(keys)),
                  "embed": jax.random.uniform(next(keys), (self.vocab_size, E), jnp.float32,
                                              -self.embed_scale, self.embed_scale),
                  "question": self.cell.init(next(keys), E, H)}
        if self.film:
            params["film"] = [{"W_gamma": jnp.zeros((H, c), jnp.float32), "W_beta": jnp.zeros((H, c), jnp.float32)}
                              for c in self.encoder.channels]
        if self.attention == "soft":
            params["glimpses"] = [{"W_q": _uniform(next(keys), (H, self.A), H),
                                   "W_f": _uniform(next(keys), (D, self.A), D),
                                   "w": _uniform(next(keys), (self.A,), self.A),
                                   "W_g": _uniform(next(keys), (D, H), D)} for _ in range(self.glimpses)]
            if self.relation:
                R, fan_in = self.relation, 2 * D + H
                params["relation"] = {"W_a": _uniform(next(keys), (D, R), fan_in),
                                      "W_b": _uniform(next(keys), (D, R), fan_in),
                                      "W_c": _uniform(next(keys), (H, R), fan_in), "b_1": jnp.zeros((R,), jnp.float32),
                                      "W_2": _uniform(next(keys), (R, R), R), "b_2": jnp.zeros((R,), jnp.float32),
                                      "W_o": _uniform(next(keys), (R, H), R)}
            fan = H
        else:
            fan = self.encoder.num_locations * D + H
        params["mlp"] = {"W_1": _uniform(next(keys), (fan, M), fan), "b_1": jnp.zeros((M,), jnp.float32),
                         "W_2": _uniform(next(keys), (M, M), M), "b_2": jnp.zeros((M,), jnp.float32),
                         "W_3": _uniform(next(keys), (M, self.num_answers), M),
                         "b_3": jnp.zeros((self.num_answers,), jnp.float32)}
        return params

    # ---- pieces --------------------------------------------------------------------------------

    def question_state(self, params, question_BxQ, lengths_B):
        """``q [B, H]``: the encoder cell's output after the last question word."""
        q = jnp.asarray(question_BxQ, jnp.int32)
        if q.ndim != 2 or jnp.shape(lengths_B) != q.shape[:1]:
            raise InputError(f"question must be [B, Q] ids with question_lengths [B]; got shapes {q.shape} and "
                             f"{jnp.shape(lengths_B)}")
        final, _ = layers.rnn(self.cell, params["question"], params["embed"][q],
                              seq_lengths=jnp.asarray(lengths_B, jnp.int32), impl=self.impl)
        return self.cell.carry_h(final).astype(jnp.float32)

    def attend(self, params, f_BxLxD, q_BxH):
        """``(u [B, H], α [B, K, L])``: the stacked glimpses' ``u_K``, plus the relation head's term with
        ``relation`` (module docstring)."""
        mask = jnp.ones(f_BxLxD.shape[:2], bool)
        u, maps = q_BxH, []
        for g in params["glimpses"]:
            scores = jnp.tanh((u @ g["W_q"])[:, None, :] + f_BxLxD @ g["W_f"]) @ g["w"]
            alpha = masked_attention(scores, mask)
            u = u + jnp.einsum("bl,bld->bd", alpha, f_BxLxD) @ g["W_g"]
            maps.append(alpha)
        if self.relation:
            u = u + self.relate(params["relation"], f_BxLxD, q_BxH, maps[0])
        return u, jnp.stack(maps, axis=1)

    def relate(self, p, f_BxLxD, q_BxH, alpha_BxL):
        """``[B, H]``: the relation head (module docstring), comparing the first glimpse's reading
        with every cell and averaging over the cells."""
        r = jnp.einsum("bl,bld->bd", alpha_BxL, f_BxLxD)
        h = jax.nn.relu((r @ p["W_a"] + q_BxH @ p["W_c"] + p["b_1"])[:, None, :] + f_BxLxD @ p["W_b"])
        h = jax.nn.relu(h @ p["W_2"] + p["b_2"])
        return jnp.mean(h, axis=1) @ p["W_o"]

    def forward(self, params, batch: Mapping, dropout_key=None):
        """``(logits [B, answers], α [B, K, L] or None)``."""
        q = self.question_state(params, batch["question"], batch["question_lengths"])
        index = jnp.asarray(batch["image_index"], jnp.int32) if "image_index" in batch else None
        # without FiLM each image is encoded once; with it, a CNN pass per question
        film = [(q @ p["W_gamma"], q @ p["W_beta"]) for p in params["film"]] if self.film else None
        f = self.encoder.apply(params["encoder"], batch["images"], film, index)
        if self.attention == "soft":
            x, alpha = self.attend(params, f, q)
        else:
            x, alpha = jnp.concatenate([f.reshape(f.shape[0], -1), q], axis=-1), None
        k1, k2 = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        p = params["mlp"]
        x = layers.dropout(k1, self.dropout, jax.nn.relu(x @ p["W_1"] + p["b_1"]))
        x = layers.dropout(k2, self.dropout, jax.nn.relu(x @ p["W_2"] + p["b_2"]))
        return x @ p["W_3"] + p["b_3"], alpha

    def loss(self, params, batch: Mapping, dropout_key=None):
        """``(mean cross-entropy, {"nll", "count"})``, weighted by ``weight``."""
        logits, _ = self.forward(params, batch, dropout_key)
        answer = jnp.asarray(batch["answer"], jnp.int32)
        weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones(answer.shape)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, answer[:, None], axis=-1)[:, 0]
        sums = {"nll": jnp.sum(nll * weight), "count": jnp.sum(weight)}
        return sums["nll"] / jnp.maximum(sums["count"], 1e-9), sums


# ----------------------------------------------------------------------------- the model kind

def _build(config, task) -> VQAModel:
    from rnn_jax.models.base import make_cell
    from rnn_jax.models.captioner import _encoder

    m = config.model
    if config.train.get("data_parallel") and getattr(task, "questions_per_image", 1) > 1:
        raise InputError(f"train.data_parallel splits a batch's rows over devices, and with "
                         f"data.sort_of_clevr.questions_per_image = {task.questions_per_image} a batch has fewer "
                         "images than questions; set questions_per_image=1 for data-parallel training")
    encoder = _encoder(config, task, (24, 24, 24, 24), (2, 2, 2, 2))
    return VQAModel(encoder, make_cell(config), len(task.question_vocab), task.num_answers,
                    hidden_size=m.hidden_size, embed_size=m.embed_size, attention=m.get("attention", "soft"),
                    glimpses=int(m.get("glimpses", 2)), attention_size=int(m.get("attention_size", 0)),
                    mlp_size=int(m.get("mlp_size", 256)), film=bool(m.get("film", False)),
                    relation=m.get("relation", 0), dropout=m.dropout,
                    embed_scale=m.embed_scale, impl=m.impl)


def _eval_sums(model, task):
    def sums(params, batch):
        logits, _ = model.forward(params, batch)
        return task.answer_sums(logits, batch)

    return sums


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, batch):
    return model.forward(params, batch)


def _sample(model, task, params, key) -> str:
    """The first validation questions with the model's answer (and the right one when it differs)."""
    batch = task.eval_batches("valid", 8)[0]
    logits, _ = _forward(model, params, jax.tree.map(jnp.asarray, batch))
    predicted = np.asarray(jnp.argmax(logits, axis=-1))
    lines = []
    for i in range(int(np.asarray(batch["weight"]).sum())):   # the padding rows are not examples
        answer, right = task.answers[predicted[i]], task.answers[int(batch["answer"][i])]
        lines.append(f"{task.question_text('valid', i)} -> {answer}" + ("" if answer == right else f" ({right})"))
    return "\n".join(lines)


def _kind():
    from rnn_jax.models.base import ExampleKind

    return ExampleKind("vqa", _build, _eval_sums, lambda model, task: math.log(model.num_answers), sample=_sample,
                       options={"attention": ATTENTIONS, "film": (False, True)},
                       fixed={"num_layers": 1, "variational": False})


KIND = _kind()
