r"""A synced many-to-many recurrent tagger as pure functions: one label per input step.

The per-step sibling of :class:`rnn_jax.models.classifier.SequenceClassifier`: the same inputs,
stack and options, but the head reads the top layer's output at every step instead of a pooled
state. Inputs are either float features ``[B, T, F]`` (``input_size=F``) or int tokens ``[B, T]``
(``vocab_size=V``, embedded to ``embed_size``). With ``lengths`` ``[B]`` (``len_b`` clipped to
``[0, T]``), steps ``t ≥ len_b`` are padding: they cannot change anything at a valid step, and they
count nothing in the loss::

    x_t    = inputs[:, t]                          (features)    or    E[tokens[:, t]]   (tokens; E: [V, E])
    h¹_t   = cell(h¹_{t−1}, drop(x_t))             layer 1, from the zero carry; layers.rnn(seq_lengths=lengths)
    hˡ_t   = cell(hˡ_{t−1}, drop(hˡ⁻¹_t))          layers l = 2..L
    logits_t = drop(h^L_t) W + b                   W: [H, C] ([2H, C] when bidirectional), b: [C]

With ``bidirectional=True`` every layer is :func:`rnn_jax.layers.bidirectional`: a forward and a
backward cell, the backward one reading each sequence from its last valid step to its first, and
``hˡ_t = [→hˡ_t, ←hˡ_t]`` (``2H`` wide). The top layer's outputs are 0 at padded steps, so the
logits there are ``b``.

Loss, with ``v_bt = [t < len_b]`` and the row weights ``w_b`` (default 1; 0 marks a padding row)::

    nll_bt            = −log softmax(logits_bt)[y_bt]
    nll               = Σ_bt w_b v_bt nll_bt
    count             = Σ_bt w_b v_bt                                   (valid steps)
    correct           = Σ_bt w_b v_bt [argmax logits_bt = y_bt]
    correct_sequences = Σ_b  w_b [len_b > 0] Π_{t<len_b} [argmax logits_bt = y_bt]
    sequences         = Σ_b  w_b [len_b > 0]
    mean_loss         = nll / count                                     (0 when count is 0)

The sums add up over evaluation batches. Labels at padded steps are ignored (any int, even out of
``[0, C)``); labels at valid steps must be in ``[0, C)``. A row of length 0 counts nowhere.

Dropout (rate ``dropout``, active only when a ``dropout_key`` is given) acts as in the classifier:
on the embedding output (token inputs only), between layers and on the top outputs before the head,
never on recurrent connections; ``variational=True`` keeps one mask per sequence over time.

``params = {"embed": [V, E] (tokens only), "layers": [cell params] * L, "out": {"W", "b"}}``, a
bidirectional layer being ``{"fw": cell params, "bw": cell params}``. Initialisation as in the
classifier: embedding uniform ±``embed_scale``, ``W`` uniform ±``output_scale``/√(its rows), zero
``b``, layers by :func:`rnn_jax.layers.init_stack`.

A batch is a dict with ``inputs``, ``lengths`` ``[B]`` int, ``labels`` ``[B, T]`` int and an
optional ``weight`` ``[B]``.
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
from rnn_jax.models.classifier import SequenceClassifier


@dataclasses.dataclass(frozen=True)
class SequenceTagger:
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
    bidirectional: bool = False
    embed_scale: float = 0.1
    output_scale: float = 1.0
    impl: str = "fused"

    def __post_init__(self):
        check_inputs(self, ("num_classes", "hidden_size", "num_layers"))
        if not isinstance(self.bidirectional, bool):
            raise InputError(f"bidirectional must be True or False; got {self.bidirectional!r}")

    # Shared with the classifier: whether the inputs are tokens, and x_BxTxF from the batch's inputs.
    tokens = SequenceClassifier.tokens
    _inputs = SequenceClassifier._inputs

    @property
    def output_size(self) -> int:
        """Width of the top layer's output: ``H``, or ``2H`` when bidirectional."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    def init(self, key) -> dict:
        k_embed, k_layers, k_out = jax.random.split(key, 3)
        bound = self.output_scale / jnp.sqrt(self.output_size)
        first = self.embed_size if self.tokens else self.input_size
        params = {
            "layers": layers.init_stack(self.cell, k_layers, first, self.hidden_size, self.num_layers,
                                        bidirectional=self.bidirectional),
            "out": {"W": jax.random.uniform(k_out, (self.output_size, self.num_classes), jnp.float32,
                                            -bound, bound),
                    "b": jnp.zeros((self.num_classes,), jnp.float32)},
        }
        if self.tokens:
            params["embed"] = jax.random.uniform(k_embed, (self.vocab_size, self.embed_size), jnp.float32,
                                                 -self.embed_scale, self.embed_scale)
        return params

    def _lengths(self, batch: Mapping, B: int, T: int):
        lengths_B = jnp.asarray(batch["lengths"])
        if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
            raise InputError(f"lengths must be ints of shape [B] = ({B},); got shape {lengths_B.shape}, "
                             f"dtype {lengths_B.dtype}")
        return jnp.clip(lengths_B, 0, T)

    def features(self, params, batch: Mapping, *, dropout_key=None):
        """The top layer's outputs ``h_BxTxH`` (``2H`` wide when bidirectional; 0 at padded steps),
        before the head's dropout; float32 (float64 for float64 parameters)."""
        x_BxTxF = self._inputs(params, batch["inputs"])
        B, T = x_BxTxF.shape[:2]
        lengths_B = self._lengths(batch, B, T)
        keys = (list(jax.random.split(dropout_key, self.num_layers)) if dropout_key is not None
                else [None] * self.num_layers)
        h_BxTxH = lm.drop(self, keys[0], x_BxTxF) if self.tokens else x_BxTxF
        for k, layer in enumerate(params["layers"]):
            if k > 0:
                h_BxTxH = lm.drop(self, keys[k], h_BxTxH)
            if self.bidirectional:
                _, h_BxTxH = layers.bidirectional(self.cell, layer, h_BxTxH, seq_lengths=lengths_B, impl=self.impl)
            else:
                _, h_BxTxH = layers.rnn(self.cell, layer, h_BxTxH, seq_lengths=lengths_B, impl=self.impl)
        return h_BxTxH.astype(jnp.promote_types(h_BxTxH.dtype, jnp.float32))

    def apply(self, params, batch: Mapping, *, dropout_key=None):
        """Per-step class logits ``[B, T, C]``; dropout is active when ``dropout_key`` is given."""
        head_key = stack_key = None
        if dropout_key is not None:
            head_key, stack_key = jax.random.split(dropout_key)
        h_BxTxH = self.features(params, batch, dropout_key=stack_key)
        h_BxTxH = lm.drop(self, head_key, h_BxTxH)
        return h_BxTxH @ params["out"]["W"] + params["out"]["b"]

    def loss(self, params, batch: Mapping, dropout_key=None):
        """``(mean_loss, sums)``: the mean cross-entropy over the weighted valid steps and the
        summable ``{"nll", "count", "correct", "correct_sequences", "sequences"}`` (module docstring)."""
        logits_BxTxC = self.apply(params, batch, dropout_key=dropout_key)
        return tagging_loss(logits_BxTxC, batch["labels"], batch["lengths"], batch.get("weight"))


def tagging_loss(logits_BxTxC, labels_BxT, lengths_B, weight_B=None):
    """The module docstring's ``(mean_loss, sums)`` from per-step logits; jit-compatible."""
    logits_BxTxC = jnp.asarray(logits_BxTxC)
    dtype = jnp.promote_types(logits_BxTxC.dtype, jnp.float32)  # float32, or float64 when given
    logits_BxTxC = logits_BxTxC.astype(dtype)
    B, T, C = logits_BxTxC.shape
    labels_BxT = jnp.asarray(labels_BxT)
    if labels_BxT.shape != (B, T) or not jnp.issubdtype(labels_BxT.dtype, jnp.integer):
        raise InputError(f"labels must be ints of shape [B, T] = ({B}, {T}); got shape {labels_BxT.shape}, "
                         f"dtype {labels_BxT.dtype}")
    lengths_B = jnp.clip(jnp.asarray(lengths_B), 0, T)
    weight_B = jnp.ones((B,), dtype) if weight_B is None else jnp.asarray(weight_B, dtype)
    if weight_B.shape != (B,):
        raise InputError(f"weight must have shape [B] = ({B},); got shape {weight_B.shape}")
    valid_BxT = jnp.arange(T)[None, :] < lengths_B[:, None]
    labels_BxT = jnp.where(valid_BxT, labels_BxT, 0).astype(jnp.int32)  # padding may hold anything
    step_weight_BxT = weight_B[:, None] * valid_BxT
    logp_BxTxC = jax.nn.log_softmax(logits_BxTxC, axis=-1)
    nll_BxT = -jnp.take_along_axis(logp_BxTxC, labels_BxT[..., None], axis=-1)[..., 0]
    hit_BxT = jnp.argmax(logits_BxTxC, axis=-1) == labels_BxT
    all_right_B = jnp.all(hit_BxT | ~valid_BxT, axis=1) & (lengths_B > 0)
    sums = {"nll": jnp.sum(step_weight_BxT * nll_BxT), "count": jnp.sum(step_weight_BxT),
            "correct": jnp.sum(step_weight_BxT * hit_BxT),
            "correct_sequences": jnp.sum(weight_B * all_right_B), "sequences": jnp.sum(weight_B * (lengths_B > 0))}
    count = sums["count"]
    mean = sums["nll"] / jnp.where(count > 0, count, 1.0)
    return mean, sums


__all__ = ["SequenceTagger", "tagging_loss"]


# ----------------------------------------------------------------------------- the model kind

def _build(config, task) -> SequenceTagger:
    from rnn_jax.models.base import make_cell

    m = config.model
    return SequenceTagger(make_cell(config), hidden_size=m.hidden_size, embed_size=m.embed_size,
                          num_layers=m.num_layers, dropout=m.dropout, variational=m.variational,
                          bidirectional=bool(m.get("bidirectional", False)), embed_scale=m.embed_scale,
                          output_scale=m.output_scale, impl=m.impl, **task.model_options())


def _kind():
    from rnn_jax.models.base import ExampleKind

    def eval_sums(model, task):
        return lambda params, batch: task.eval_sums(model, params, batch)

    return ExampleKind("tagger", _build, eval_sums, lambda model, task: task.uniform_loss,
                       sample=lambda model, task, params, key: task.sample_text(model, params, key),
                       options={"bidirectional": (False, True)})


KIND = _kind()
