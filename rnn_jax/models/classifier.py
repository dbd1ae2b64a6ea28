r"""A many-to-one recurrent classifier as pure functions: one label per (variable-length) sequence.

Inputs are either float features ``[B, T, F]`` (``input_size=F``) or int tokens ``[B, T]``
(``vocab_size=V``, embedded to ``embed_size``). With ``lengths`` ``[B]`` (``len_b`` clipped to
``[0, T]``), steps ``t ≥ len_b`` are padding and cannot change the result::

    x_t   = inputs[:, t]                        (features)    or    E[tokens[:, t]]   (tokens; E: [V, E])
    h¹_t  = cell(h¹_{t−1}, drop(x_t))           layer 1, from the zero carry; layers.rnn(seq_lengths=lengths)
    hˡ_t  = cell(hˡ_{t−1}, drop(hˡ⁻¹_t))        layers l = 2..L
    z     = h^L_{len−1}                          pool="last": the top layer's output at the last valid step
          = (1/len) Σ_{t<len} h^L_t              pool="mean": the mean over the valid steps
    logits = drop(z) W + b                       W: [H, C], b: [C]
    loss  = Σ_b w_b · (−log softmax(logits_b)[y_b]) / Σ_b w_b

``z`` is 0 for a sequence of length 0. Dropout (rate ``dropout``, active only when a
``dropout_key`` is given) acts as in :class:`rnn_jax.lm.LanguageModel`: on the embedding output
(token inputs only; raw features are not dropped), between layers and on ``z`` before the head,
never on recurrent connections; ``variational=True`` keeps one mask per sequence over time.

``params = {"embed": [V, E] (tokens only), "layers": [cell params] * L, "out": {"W": [H, C], "b": [C]}}``.
Initialisation as in the language model: embedding uniform ±``embed_scale``, ``W`` uniform
±``output_scale``/√H, zero ``b``, layers by :func:`rnn_jax.layers.init_stack`.

A batch is a dict with ``inputs``, ``lengths`` ``[B]`` int, ``labels`` ``[B]`` int and, for
:meth:`SequenceClassifier.loss`, an optional ``weight`` ``[B]`` (default 1; 0 marks padding).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from rnn_jax import cells as cells_lib
from rnn_jax import layers, lm
from rnn_jax.errors import InputError
from rnn_jax.models.base import check_inputs

POOLS = ("last", "mean")


@dataclasses.dataclass(frozen=True)
class SequenceClassifier:
    """Static description of the model; the methods are pure functions of params and batches.

    ``cell`` is a :class:`~rnn_jax.cells.Cell` or a spec string (``"lstm:forget_bias=1.0"``).
    Give exactly one of ``input_size`` (float features) and ``vocab_size`` (int tokens);
    ``embed_size`` (tokens only) defaults to ``hidden_size``.
    """

    cell: cells_lib.Cell | str
    num_classes: int
    hidden_size: int
    input_size: int | None = None
    vocab_size: int | None = None
    embed_size: int | None = None
    num_layers: int = 1
    dropout: float = 0.0
    variational: bool = False
    pool: str = "last"
    embed_scale: float = 0.1
    output_scale: float = 1.0
    impl: str = "fused"

    def __post_init__(self):
        check_inputs(self, ("num_classes", "hidden_size", "num_layers"))
        if self.pool not in POOLS:
            raise InputError(f"pool must be one of {', '.join(map(repr, POOLS))}; got {self.pool!r}")

    @property
    def tokens(self) -> bool:
        """Whether the inputs are int tokens (``vocab_size`` set)."""
        return self.vocab_size is not None

    def init(self, key) -> dict:
        k_embed, k_layers, k_out = jax.random.split(key, 3)
        bound = self.output_scale / jnp.sqrt(self.hidden_size)
        first = self.embed_size if self.tokens else self.input_size
        params = {
            "layers": layers.init_stack(self.cell, k_layers, first, self.hidden_size, self.num_layers),
            "out": {"W": jax.random.uniform(k_out, (self.hidden_size, self.num_classes), jnp.float32,
                                            -bound, bound),
                    "b": jnp.zeros((self.num_classes,), jnp.float32)},
        }
        if self.tokens:
            params["embed"] = jax.random.uniform(k_embed, (self.vocab_size, self.embed_size), jnp.float32,
                                                 -self.embed_scale, self.embed_scale)
        return params

    def _inputs(self, params, inputs):
        """``x_BxTxF`` from the batch's inputs (embedded tokens or float features), shape-checked."""
        inputs = jnp.asarray(inputs)
        if self.tokens:
            if inputs.ndim != 2 or not jnp.issubdtype(inputs.dtype, jnp.integer):
                raise InputError(f"inputs must be int tokens [B, T] (vocab_size={self.vocab_size}); "
                                 f"got shape {inputs.shape}, dtype {inputs.dtype}")
            return params["embed"][inputs]
        if inputs.ndim != 3 or inputs.shape[-1] != self.input_size:
            raise InputError(f"inputs must be features [B, T, F] with F = input_size = {self.input_size}; "
                             f"got shape {inputs.shape}")
        return inputs.astype(jnp.float32)

    def features(self, params, batch: Mapping, *, dropout_key=None):
        """The pooled top-layer state ``z_BxH`` (before the head's dropout)."""
        x_BxTxF = self._inputs(params, batch["inputs"])
        B, T = x_BxTxF.shape[:2]
        lengths_B = jnp.asarray(batch["lengths"])
        if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
            raise InputError(f"lengths must be ints of shape [B] = ({B},); got shape {lengths_B.shape}, "
                             f"dtype {lengths_B.dtype}")
        lengths_B = jnp.clip(lengths_B, 0, T)
        keys = (list(jax.random.split(dropout_key, self.num_layers)) if dropout_key is not None
                else [None] * self.num_layers)
        h_BxTxH = lm.drop(self, keys[0], x_BxTxF) if self.tokens else x_BxTxF
        final = None
        for k, layer in enumerate(params["layers"]):
            if k > 0:
                h_BxTxH = lm.drop(self, keys[k], h_BxTxH)
            final, h_BxTxH = layers.rnn(self.cell, layer, h_BxTxH, seq_lengths=lengths_B, impl=self.impl)
        if self.pool == "last":
            return self.cell.carry_h(final).astype(jnp.float32)
        valid_BxT = jnp.arange(T)[None, :] < lengths_B[:, None]
        total_BxH = jnp.sum(jnp.where(valid_BxT[..., None], h_BxTxH, 0.0), axis=1, dtype=jnp.float32)
        return total_BxH / jnp.maximum(lengths_B, 1)[:, None].astype(jnp.float32)

    def apply(self, params, batch: Mapping, *, dropout_key=None):
        """Class logits ``[B, C]``; dropout is active when ``dropout_key`` is given."""
        head_key = stack_key = None
        if dropout_key is not None:
            head_key, stack_key = jax.random.split(dropout_key)
        z_BxH = self.features(params, batch, dropout_key=stack_key)
        z_BxH = layers.dropout(head_key, self.dropout, z_BxH)
        logits_BxC = z_BxH @ params["out"]["W"] + params["out"]["b"]
        return logits_BxC

    def loss(self, params, batch: Mapping, dropout_key=None):
        """``(mean_loss, sums)``: the weighted mean cross-entropy and ``{"nll", "correct", "count"}``,
        weighted sums to accumulate over evaluation batches (``mean_loss`` is 0 when ``count`` is 0)."""
        logits_BxC = self.apply(params, batch, dropout_key=dropout_key)
        return cross_entropy(logits_BxC, batch["labels"], batch.get("weight"))


def cross_entropy(logits_BxC, labels_B, weight_B=None):
    """Weighted softmax cross-entropy: ``(mean_nll, {"nll": Σ w·nll, "correct": Σ w·[argmax = y],
    "count": Σ w})``; ``weight_B`` defaults to ones."""
    logits_BxC = logits_BxC.astype(jnp.float32)
    labels_B = jnp.asarray(labels_B)
    if labels_B.shape != logits_BxC.shape[:1] or not jnp.issubdtype(labels_B.dtype, jnp.integer):
        raise InputError(f"labels must be ints of shape [B] = ({logits_BxC.shape[0]},); got shape "
                         f"{labels_B.shape}, dtype {labels_B.dtype}")
    weight_B = (jnp.ones(labels_B.shape, jnp.float32) if weight_B is None
                else jnp.asarray(weight_B, jnp.float32))
    logp_BxC = jax.nn.log_softmax(logits_BxC, axis=-1)
    nll_B = -jnp.take_along_axis(logp_BxC, labels_B[:, None], axis=-1)[:, 0]
    correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
    sums = {"nll": jnp.sum(weight_B * nll_B), "correct": jnp.sum(weight_B * correct_B), "count": jnp.sum(weight_B)}
    count = sums["count"]
    mean = sums["nll"] / jnp.where(count > 0, count, 1.0)
    return mean, sums


__all__ = ["POOLS", "SequenceClassifier", "cross_entropy"]


# ----------------------------------------------------------------------------- the model kind

def _build(config, task) -> SequenceClassifier:
    from rnn_jax.models.base import make_cell

    m = config.model
    tokens = task.vocab_size is not None
    return SequenceClassifier(make_cell(config), task.num_classes, m.hidden_size,
                              input_size=None if tokens else task.input_size,
                              vocab_size=task.vocab_size if tokens else None,
                              embed_size=m.embed_size if tokens else None, num_layers=m.num_layers,
                              dropout=m.dropout, variational=m.variational, pool=m.get("pool", "last"),
                              embed_scale=m.embed_scale, output_scale=m.output_scale, impl=m.impl)


def _eval_sums(model, task):
    return lambda params, batch: model.loss(params, batch)[1]


def _sample(model, task, params, key) -> str:
    """The first validation examples with their predicted and true labels."""
    import numpy as np

    batch = task.eval_batches("valid", 8)[0]
    predicted = np.asarray(jnp.argmax(model.apply(params, batch), axis=-1))
    lines = []
    for b in range(len(predicted)):
        inputs = np.asarray(batch["inputs"][b])
        shown = ("".join(str(int(v)) for v in inputs[:int(batch["lengths"][b])]) if model.tokens
                 else f"{inputs.shape[0]} steps of {inputs.shape[1]} features")
        lines.append(f"{shown} -> {int(predicted[b])} (true {int(batch['labels'][b])})")
    return "\n".join(lines)


def _kind():
    import math

    from rnn_jax.models.base import ExampleKind

    return ExampleKind("classifier", _build, _eval_sums, lambda model, task: math.log(model.num_classes),
                       sample=_sample, options={"pool": POOLS})


KIND = _kind()
