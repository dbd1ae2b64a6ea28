r"""One-to-many generation conditioned on a vector ``v`` (image captioning's decoder, in miniature).

The cs231n RNN lecture writes the conditioned step as ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v)``.
Here ``v`` enters every step without changing any cell's equations: the cell's input is the
concatenation ``u_t = [x_t ; v]``, so the cell's input-side matmul ``u_t W_x· = x_t W_x·[:X] + v
W_x·[X:]`` contains the lecture's ``v W_ih`` term (``W_ih = W_xh[X:]``, row vectors ``x @ W`` as in
:mod:`rnn_jax.cells`). For ``rnn`` that is exactly the lecture's formula; for a gated cell ``v``
enters every gate's pre-activation. Notation: ``v ∈ R^C`` (``C = cond_size``), ``x_t ∈ R^X``,
``H = hidden_size``, ``L = num_layers``.

Two output kinds (give exactly one of ``vocab_size`` and ``frame_size``):

* tokens (``vocab_size = V``): ``x_t = E[y_{t-1}]`` (``E: [V, embed_size]``), ``y_0 = BOS``;
  ``p(y_t | y_<t, v) = softmax(o_t W_o + b_o)``; generation stops at EOS.
* frames (``frame_size = F``, values in ``[0, 1]``, e.g. an 8-pixel image row): ``x_t = f_{t-1}``,
  ``f_0 = 0``; every unit of a frame is a Bernoulli with mean ``σ(o_t W_o + b_o)``, scored against
  soft targets: ``nll(f_t) = Σ_k softplus(z_k) − f_tk z_k`` (``z = o_t W_o + b_o``), i.e. the binary
  cross-entropy, whose minimum is the targets' entropy rather than 0.

The model, for ``t = 1..T`` (layer ``l`` carry ``sˡ_t`` with output ``hˡ_t``)::

    condition = "input" | "both":   u_t = [drop(x_t) ; v]          else   u_t = drop(x_t)
    condition = "init"  | "both":   sˡ_0[k] = tanh(v W_init[l, k] + b_init[l, k])   for every carry leaf k
                                    (c and h for an LSTM, c, h, i, f, o for FGR)      else   sˡ_0 = 0
    s¹_t, h¹_t = cell(s¹_{t-1}, u_t)
    sˡ_t, hˡ_t = cell(sˡ_{t-1}, drop(hˡ⁻¹_t))                      l = 2..L  (v enters layer 1 only)
    z_t = drop(h^L_t) W_o + b_o                                     logits [V] or Bernoulli logits [F]

With ``condition="init"`` the only path from ``v`` to step ``t`` is the initial state; with
``"input"`` ``v`` is seen at every step (from a zero state). ``"both"`` (the default) does both and
trained best in a small comparison on the tasks of :mod:`rnn_jax.data.conditioned_tasks` (LSTM,
Adam 1e-2, batch 32, three seeds each): ``spell`` with ``max_value=99`` (H=48, 200 steps), greedy
sequence accuracy on the 20 held-out numbers 0.65–0.75 (``"input"`` 0.60–0.75, ``"init"``
0.40–0.70); ``digit_rows`` (H=32, 120 steps), validation loss 2.89–2.99 nats per row (``"input"``
2.89–3.02, ``"init"`` 2.90–3.07; uniform 5.55).

Training is teacher-forced: one fused :func:`rnn_jax.layers.rnn` per layer over the whole
sequence (``seq_lengths`` = ``lengths``), so ``project_inputs`` — the input matmul, ``v``'s term
included — is hoisted out of the time loop. Generation feeds back its own outputs through
:meth:`ConditionedGenerator.step` (``cell.fast_step``); the tests pin the two to each other.

Batches: ``cond [B, C]`` float, ``lengths [B]`` int (valid steps; steps ``t ≥ lengths_b`` are
padding and cannot change the loss), ``weight [B]`` (0 for padding rows) and

* tokens: ``tokens [B, T]`` int: the sequence, EOS included, PAD after it (``lengths`` counts the
  EOS); the model's inputs are ``[BOS, tokens[:, :-1]]``;
* frames: ``frames [B, T, F]`` float in ``[0, 1]``; the inputs are ``[0, frames[:, :-1]]``.

:meth:`ConditionedGenerator.loss` returns ``(mean, sums)`` with ``sums = {"nll": Σ_b w_b Σ_{t<len_b}
nll_bt, "count": Σ_b w_b len_b}`` (per token, or per frame), which add up over evaluation batches.

Dropout (``dropout > 0`` and a ``dropout_key``) acts on the token embeddings (never on raw frames,
nor on ``v``), between layers and on ``h^L_t`` before the output layer; never on recurrent
connections. Generation never drops.

``params = {"embed": [V, E] (tokens), "layers": [cell params] * L (layer 1's input size X + C with
v as input), "init": {"W": [C, L·n·H], "b": [L·n·H]} (init/both; n carry leaves per layer),
"out": {"W": [H, V or F], "b": [V or F]}}``. Initialisation as in the classifier: embedding uniform
±``embed_scale``, ``W_o`` uniform ±``output_scale``/√H, ``W_init`` uniform ±1/√C, zero biases,
layers by :func:`rnn_jax.layers.init_stack`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax import cells as cells_lib
from rnn_jax import layers, lm
from rnn_jax.errors import InputError
from rnn_jax.models.base import as_cell, check_impl

CONDITIONS = ("input", "init", "both")

__all__ = ["CONDITIONS", "ConditionedGenerator", "GeneratedFrames", "GeneratedTokens"]


class GeneratedTokens(NamedTuple):
    """Generated tokens ``[B, L]`` (EOS included, PAD after), ``lengths [B]`` (up to and including the
    EOS; ``L`` when none came) and ``log_probs [B]`` (the model's, temperature 1, EOS included)."""

    tokens: jax.Array
    lengths: jax.Array
    log_probs: jax.Array


class GeneratedFrames(NamedTuple):
    """Generated ``frames [B, L, F]`` (greedy: the Bernoulli means; sampling: 0/1 draws) and ``means
    [B, L, F]``: each step's Bernoulli means given the frames fed back so far."""

    frames: jax.Array
    means: jax.Array


def _check_number(name: str, value, low: float, *, strict: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value > low if strict else value >= low)
    if not ok:
        raise InputError(f"{name} must be a number {'>' if strict else '>='} {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ConditionedGenerator:
    """Static description of the generator; the methods are pure functions of params and batches.

    ``cell`` is a :class:`~rnn_jax.cells.Cell` or a spec string (``"lstm:forget_bias=1.0"``). Give
    exactly one of ``vocab_size`` (tokens; ``embed_size`` defaults to ``hidden_size``) and
    ``frame_size`` (float frames). ``condition`` is ``"input"``, ``"init"`` or ``"both"`` (module
    docstring). ``pad_id``/``bos_id``/``eos_id`` apply to tokens only.
    """

    cell: cells_lib.Cell | str
    cond_size: int
    hidden_size: int
    vocab_size: int | None = None
    frame_size: int | None = None
    embed_size: int | None = None
    num_layers: int = 1
    dropout: float = 0.0
    condition: str = "both"
    embed_scale: float = 0.1
    output_scale: float = 1.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    impl: str = "fused"

    def __post_init__(self):
        object.__setattr__(self, "cell", as_cell(self.cell))
        if (self.vocab_size is None) == (self.frame_size is None):
            raise InputError("give exactly one of vocab_size (token outputs) and frame_size (float frames in "
                             f"[0, 1]); got vocab_size={self.vocab_size!r}, frame_size={self.frame_size!r}")
        if self.frame_size is not None and self.embed_size is not None:
            raise InputError(f"embed_size={self.embed_size!r} needs token outputs (vocab_size); frames are "
                             "fed back as they are")
        if self.tokens and self.embed_size is None:
            object.__setattr__(self, "embed_size", self.hidden_size)
        sizes = ("cond_size", "hidden_size", "num_layers",
                 *(("vocab_size", "embed_size") if self.tokens else ("frame_size",)))
        lm.check_sizes(self, sizes)
        if self.condition not in CONDITIONS:
            raise InputError(f"condition must be one of {', '.join(map(repr, CONDITIONS))}; got {self.condition!r}")
        check_impl(self.impl)
        for name in ("embed_scale", "output_scale"):
            _check_number(name, getattr(self, name), 0, strict=True)
        if self.tokens:
            ids = (self.pad_id, self.bos_id, self.eos_id)
            if len(set(ids)) != 3 or not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in ids):
                raise InputError(f"pad_id, bos_id, eos_id must be distinct ids below vocab_size={self.vocab_size}, "
                                 f"got {ids}")
        try:  # the cell's own size rules (e.g. mut1's input_size == hidden_size), with the model's context
            self.cell.param_names(self.input_size, self.hidden_size)
        except InputError as e:
            what = "embed_size" if self.tokens else "frame_size"
            plus = " + cond_size" if self.feeds_v else ""
            raise InputError(f"the cell's input is {what}{plus} = {self.input_size} wide: {e}") from None

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def tokens(self) -> bool:
        """Whether the outputs are tokens (``vocab_size`` set) rather than frames."""
        return self.vocab_size is not None

    @property
    def feeds_v(self) -> bool:
        """Whether ``v`` is part of every step's input (``condition`` ``"input"`` or ``"both"``)."""
        return self.condition in ("input", "both")

    @property
    def sets_state(self) -> bool:
        """Whether ``v`` sets the initial state (``condition`` ``"init"`` or ``"both"``)."""
        return self.condition in ("init", "both")

    @property
    def input_size(self) -> int:
        """The first layer's input size: ``X`` (+ ``C`` when ``v`` is fed at every step)."""
        x = self.embed_size if self.tokens else self.frame_size
        return x + (self.cond_size if self.feeds_v else 0)

    @property
    def output_size(self) -> int:
        return self.vocab_size if self.tokens else self.frame_size

    def _zero_state(self, batch: int) -> list:
        return lm.zero_carries(self, batch)

    def _num_leaves(self) -> int:
        return len(jax.tree.leaves(self.cell.zeros_carry(self.hidden_size, (1,), jnp.float32)))

    # ---- parameters ----------------------------------------------------------------------------

    def init(self, key) -> dict:
        """Fresh parameters (layout in the module docstring)."""
        k_embed, k_layers, k_init, k_out = jax.random.split(key, 4)
        H, C = self.hidden_size, self.cond_size
        bound = self.output_scale / jnp.sqrt(H)
        params = {
            "layers": layers.init_stack(self.cell, k_layers, self.input_size, H, self.num_layers),
            "out": {"W": jax.random.uniform(k_out, (H, self.output_size), jnp.float32, -bound, bound),
                    "b": jnp.zeros((self.output_size,), jnp.float32)},
        }
        if self.tokens:
            params["embed"] = jax.random.uniform(k_embed, (self.vocab_size, self.embed_size), jnp.float32,
                                                 -self.embed_scale, self.embed_scale)
        if self.sets_state:
            n = self.num_layers * self._num_leaves() * H
            params["init"] = {"W": jax.random.uniform(k_init, (C, n), jnp.float32, -1 / C**0.5, 1 / C**0.5),
                              "b": jnp.zeros((n,), jnp.float32)}
        return params

    # ---- pieces --------------------------------------------------------------------------------

    def _cond(self, v_BxC, batch: int | None = None):
        v_BxC = jnp.asarray(v_BxC)
        if v_BxC.ndim != 2 or v_BxC.shape[1] != self.cond_size or (batch is not None and v_BxC.shape[0] != batch):
            want = f"[{batch if batch is not None else 'B'}, {self.cond_size}]"
            raise InputError(f"the conditioning vector v must have shape {want} (cond_size={self.cond_size}); "
                             f"got shape {v_BxC.shape}")
        return v_BxC.astype(jnp.float32)

    def initial_state(self, params, v_BxC) -> list:
        """``[s¹_0, ..., s^L_0]``: one carry per layer, from ``v`` (``"init"``/``"both"``) or zeros."""
        v_BxC = self._cond(v_BxC)
        zeros = self._zero_state(v_BxC.shape[0])
        if not self.sets_state:
            return zeros
        s_BxN = jnp.tanh(v_BxC @ params["init"]["W"] + params["init"]["b"])
        flat = jnp.split(s_BxN, self.num_layers * self._num_leaves(), axis=-1)
        treedef = jax.tree.structure(zeros)
        return jax.tree.unflatten(treedef, flat)

    def _embed_prev(self, params, x_prev):
        """``x_t`` from the previous output: ``E[y_{t-1}]`` (tokens ``[...]``) or the frame (``[..., F]``)."""
        if self.tokens:
            x_prev = jnp.asarray(x_prev)
            if not jnp.issubdtype(x_prev.dtype, jnp.integer):
                raise InputError(f"token inputs must be ints, got dtype {x_prev.dtype}")
            return params["embed"][x_prev]
        x_prev = jnp.asarray(x_prev, jnp.float32)
        if x_prev.shape[-1:] != (self.frame_size,):
            raise InputError(f"frames must end in frame_size={self.frame_size}; got shape {x_prev.shape}")
        return x_prev

    def shifted_inputs(self, batch: Mapping):
        """The teacher-forced inputs: ``[BOS, tokens[:, :-1]]`` or ``[0, frames[:, :-1]]``."""
        if self.tokens:
            y_BxT = jnp.asarray(batch["tokens"])
            if y_BxT.ndim != 2 or not jnp.issubdtype(y_BxT.dtype, jnp.integer):
                raise InputError(f"tokens must be ints [B, T]; got shape {y_BxT.shape}, dtype {y_BxT.dtype}")
            y_BxT = y_BxT.astype(jnp.int32)
            return jnp.concatenate([jnp.full((y_BxT.shape[0], 1), self.bos_id, jnp.int32), y_BxT[:, :-1]], axis=1)
        f_BxTxF = jnp.asarray(batch["frames"], jnp.float32)
        if f_BxTxF.ndim != 3 or f_BxTxF.shape[-1] != self.frame_size:
            raise InputError(f"frames must be [B, T, F] with F = frame_size = {self.frame_size}; "
                             f"got shape {f_BxTxF.shape}")
        return jnp.concatenate([jnp.zeros_like(f_BxTxF[:, :1]), f_BxTxF[:, :-1]], axis=1)

    def _with_v(self, x, v_BxC):
        """``[x ; v]`` (``v`` broadcast over any time axis) when ``v`` is fed at every step, else ``x``."""
        if not self.feeds_v:
            return x
        v = jnp.broadcast_to(v_BxC.reshape(v_BxC.shape[:1] + (1,) * (x.ndim - 2) + v_BxC.shape[1:]),
                             x.shape[:-1] + v_BxC.shape[-1:])
        return jnp.concatenate([x.astype(jnp.float32), v], axis=-1)

    def _head(self, params, h):
        return h.astype(jnp.float32) @ params["out"]["W"] + params["out"]["b"]

    # ---- teacher forcing -----------------------------------------------------------------------

    def teacher_forced(self, params, batch: Mapping, dropout_key=None):
        """Logits ``[B, T, V]`` (tokens) or Bernoulli logits ``[B, T, F]`` (frames) with the shifted
        targets fed in; one fused :func:`rnn_jax.layers.rnn` per layer."""
        inputs = self.shifted_inputs(batch)
        B, T = inputs.shape[:2]
        v_BxC = self._cond(batch["cond"], B)
        lengths_B = jnp.asarray(batch["lengths"])
        if lengths_B.shape != (B,) or not jnp.issubdtype(lengths_B.dtype, jnp.integer):
            raise InputError(f"lengths must be ints of shape [B] = ({B},); got shape {lengths_B.shape}, "
                             f"dtype {lengths_B.dtype}")
        use_dropout = dropout_key is not None and self.dropout > 0
        keys = list(jax.random.split(dropout_key, self.num_layers + 1)) if use_dropout else [None] * (
            self.num_layers + 1)
        x_BxTxX = self._embed_prev(params, inputs)
        if self.tokens:
            x_BxTxX = layers.dropout(keys[0], self.dropout, x_BxTxX)
        h = self._with_v(x_BxTxX, v_BxC)
        for k, (layer, carry) in enumerate(zip(params["layers"], self.initial_state(params, v_BxC))):
            if k > 0:
                h = layers.dropout(keys[k], self.dropout, h)
            _, h = layers.rnn(self.cell, layer, h, carry, seq_lengths=lengths_B, impl=self.impl)
        return self._head(params, layers.dropout(keys[-1], self.dropout, h))

    def loss(self, params, batch: Mapping, dropout_key=None):
        """Teacher-forced ``(mean_loss, sums)``; see :meth:`loss_from_logits`."""
        return self.loss_from_logits(self.teacher_forced(params, batch, dropout_key), batch)

    def loss_from_logits(self, logits, batch: Mapping):
        """``(nll / count, {"nll", "count"})``: ``nll = Σ_b w_b Σ_{t < len_b} nll_bt`` (token
        cross-entropy, or the frame's summed binary cross-entropy against soft targets) and
        ``count = Σ_b w_b len_b`` (tokens, EOS included, or frames). ``weight`` defaults to ones."""
        logits = logits.astype(jnp.float32)
        B, T = logits.shape[:2]
        lengths_B = jnp.clip(jnp.asarray(batch["lengths"]), 0, T)
        weight_B = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else jnp.ones((B,), jnp.float32)
        w_BxT = (jnp.arange(T)[None, :] < lengths_B[:, None]) * weight_B[:, None]
        if self.tokens:
            y_BxT = jnp.asarray(batch["tokens"], jnp.int32)
            logp = jax.nn.log_softmax(logits, axis=-1)
            nll_BxT = -jnp.take_along_axis(logp, y_BxT[..., None], axis=-1)[..., 0]
        else:
            f_BxTxF = jnp.asarray(batch["frames"], jnp.float32)
            nll_BxT = jnp.sum(jax.nn.softplus(logits) - f_BxTxF * logits, axis=-1)
        nll_BxT = jnp.where(w_BxT > 0, nll_BxT, 0.0)  # padded targets (any value) cannot leak a NaN in
        sums = {"nll": jnp.sum(nll_BxT * w_BxT), "count": jnp.sum(w_BxT)}
        return sums["nll"] / jnp.maximum(sums["count"], 1e-9), sums

    # ---- generation ----------------------------------------------------------------------------

    def step(self, params, state: list, x_prev, v_BxC):
        """One generation step (no dropout): ``(logits [B, V or F], state')`` after the previous
        output ``x_prev`` (a token ``[B]``, BOS first, or a frame ``[B, F]``, zeros first)."""
        x = self._with_v(self._embed_prev(params, x_prev), self._cond(v_BxC))
        new_state = []
        for layer, carry in zip(params["layers"], state):
            carry, x = self.cell.fast_step(layer, carry, x)
            new_state.append(carry)
        return self._head(params, x), new_state

    def generate(self, params, v_BxC, key=None, *, max_len: int, greedy: bool, temperature: float = 1.0):
        """Generation from ``v [B, C]`` under ``jax.jit``.

        Tokens: :class:`GeneratedTokens`; a ``lax.while_loop`` of at most ``max_len`` steps that ends
        when every row has emitted EOS; PAD and BOS are never generated; ``greedy`` takes the argmax,
        else step ``t`` draws from ``softmax(log p / temperature)`` with ``fold_in(key, t)``.
        Frames: :class:`GeneratedFrames` of ``max_len`` frames; ``greedy`` emits (and feeds back) the
        Bernoulli means, else 0/1 draws from ``σ(z / temperature)``. ``key`` may be None when greedy.
        """
        if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
            raise InputError(f"max_len must be an integer >= 1, got {max_len!r}")
        if not isinstance(greedy, bool):
            raise InputError(f"greedy must be True or False, got {greedy!r}")
        _check_number("temperature", temperature, 0, strict=True)
        if key is None:
            if not greedy:
                raise InputError("sampling (greedy=False) needs a PRNG key")
            key = jax.random.PRNGKey(0)
        v_BxC = self._cond(v_BxC)
        return _generate(self, params, v_BxC, key, jnp.float32(temperature), max_len=max_len, greedy=greedy)


def _generate_tokens(model: ConditionedGenerator, params, v_BxC, key, temperature, max_len: int, greedy: bool):
    batch = v_BxC.shape[0]
    banned = jnp.zeros(model.vocab_size, bool).at[model.pad_id].set(True).at[model.bos_id].set(True)
    init = dict(t=jnp.asarray(0, jnp.int32), state=model.initial_state(params, v_BxC),
                token=jnp.full((batch,), model.bos_id, jnp.int32), done=jnp.zeros((batch,), bool),
                tokens=jnp.full((batch, max_len), model.pad_id, jnp.int32),
                lengths=jnp.full((batch,), max_len, jnp.int32), log_probs=jnp.zeros((batch,), jnp.float32))

    def cond(c):
        return (c["t"] < max_len) & ~jnp.all(c["done"])

    def body(c):
        logits, state = model.step(params, c["state"], c["token"], v_BxC)
        logp_BxV = jax.nn.log_softmax(jnp.where(banned, -jnp.inf, logits.astype(jnp.float32)), axis=-1)
        if greedy:
            choice = jnp.argmax(logp_BxV, axis=-1)
        else:
            choice = jax.random.categorical(jax.random.fold_in(key, c["t"]), logp_BxV / temperature, axis=-1)
        token = jnp.where(c["done"], model.pad_id, choice.astype(jnp.int32))
        gained = jnp.take_along_axis(logp_BxV, token[:, None], axis=-1)[:, 0]
        ended = ~c["done"] & (token == model.eos_id)
        return dict(t=c["t"] + 1, state=state, token=token, done=c["done"] | ended,
                    tokens=c["tokens"].at[:, c["t"]].set(token),
                    lengths=jnp.where(ended, c["t"] + 1, c["lengths"]),
                    log_probs=c["log_probs"] + jnp.where(c["done"], 0.0, gained))

    out = lax.while_loop(cond, body, init)
    return GeneratedTokens(out["tokens"], out["lengths"], out["log_probs"])


def _generate_frames(model: ConditionedGenerator, params, v_BxC, key, temperature, max_len: int, greedy: bool):
    batch = v_BxC.shape[0]

    def body(carry, t):
        state, frame = carry
        logits, state = model.step(params, state, frame, v_BxC)
        means = jax.nn.sigmoid(logits)
        if greedy:
            frame = means
        else:
            frame = jax.random.bernoulli(jax.random.fold_in(key, t), jax.nn.sigmoid(logits / temperature))
            frame = frame.astype(jnp.float32)
        return (state, frame), (frame, means)

    start = (model.initial_state(params, v_BxC), jnp.zeros((batch, model.frame_size), jnp.float32))
    _, (frames, means) = lax.scan(body, start, jnp.arange(max_len))
    return GeneratedFrames(jnp.swapaxes(frames, 0, 1), jnp.swapaxes(means, 0, 1))


@functools.partial(jax.jit, static_argnames=("model", "max_len", "greedy"))
def _generate(model: ConditionedGenerator, params, v_BxC, key, temperature, *, max_len: int, greedy: bool) -> Any:
    fn = _generate_tokens if model.tokens else _generate_frames
    return fn(model, params, v_BxC, key, temperature, max_len, greedy)


# ----------------------------------------------------------------------------- the model kind

def _build(config, task) -> ConditionedGenerator:
    from rnn_jax.models.base import make_cell

    m = config.model
    options = task.model_options()
    return ConditionedGenerator(make_cell(config), hidden_size=m.hidden_size,
                                embed_size=m.embed_size if "vocab_size" in options else None,
                                num_layers=m.num_layers, dropout=m.dropout, condition=m.get("condition") or "both",
                                embed_scale=m.embed_scale, output_scale=m.output_scale, impl=m.impl, **options)


def _kind():
    from rnn_jax.models.base import ExampleKind

    return ExampleKind("conditioned", _build,
                       lambda model, task: functools.partial(task.eval_sums, model),
                       lambda model, task: task.uniform_loss,
                       sample=lambda model, task, params, key: task.sample_text(model, params, key),
                       options={"condition": ("both", "input", "init")}, fixed={"variational": False})


KIND = _kind()
