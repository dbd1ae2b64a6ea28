r"""Scanning cells over time: one layer, stacks, bidirectional layers, masks.

Everything here is built on :func:`rnn`. Its fast path (``impl="fused"``, the default):

1. *Inputs hoisted*: the input-dependent part of every gate, for all ``T`` steps, is one matmul
   (``cell.project_inputs`` on the whole ``[T, B, F]`` tensor) before the time loop.
2. *Concatenated recurrent matmuls*: per-gate recurrent matrices that multiply the same vector are
   concatenated once per call, outside the loop (one ``[H, 4H]`` matmul per LSTM step).
3. *Weight gradients after the loop*: the recurrence has a ``jax.custom_vjp``. The forward scan
   saves the carry entering each step, the recurrent matmul outputs and the nonlinearities'
   outputs, except those the next step's carry gives (a gate that is part of the carry, or a
   nonlinearity of a carry entry, like the LSTM's ``tanh c'``, recomputed from the next ``c``;
   not under ``seq_lengths``, whose held carry is a new value); the reverse scan replays
   each step's elementwise part from them (no matmul is recomputed), propagates ``dh`` with one
   ``du @ Wᵀ`` per group and step, and emits the per-step matmul inputs ``a_t`` and gate gradients
   ``du_t``. Each ``dW = Σ_t a_tᵀ du_t`` is then a single large matmul over ``T·B`` rows, instead of
   ``T`` small rank-``B`` updates accumulated inside the loop. For cells that only add their
   projected inputs (``Cell.inputs_only_added``) the reverse scan writes each step's input
   gradient over that step's projected inputs, which the backward pass never reads, instead of
   into a fresh (zero-filled) ``[T, B, ...]`` buffer.

``impl="autodiff"`` keeps steps 1-2 but differentiates the scan with plain autodiff;
``impl="reference"`` scans ``cell.step`` (the per-gate equations) with plain autodiff. Tests pin
the fused path to both, outputs and gradients.

Masks. With ``seq_lengths`` the carry stops changing after each sequence's last valid step (so
the final carry is the carry at step ``length - 1``) and outputs at padded steps are zero. With
``reverse=True`` each sequence is reversed *within its length* and the outputs are put back in the
original order. ``resets[b, t] = True`` sets sequence ``b``'s carry to zero before step ``t``
(document boundaries in truncated BPTT).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from rnn_jax import cells as cells_lib

Array = jax.Array

IMPLS = ("fused", "autodiff", "reference")

__all__ = ["IMPLS", "bidirectional", "init_stack", "rnn", "stacked_rnn"]


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _apply_masks(fn, carry, valid_t, reset_t, all_carries: bool):
    """One masked step: reset → ``fn`` → hold the carry and zero the output where not valid."""
    if reset_t is not None:
        carry = jax.tree.map(lambda c: jnp.where(reset_t[:, None], jnp.zeros_like(c), c), carry)
    new, h = fn(carry)
    if valid_t is not None:
        keep = valid_t[:, None]
        new = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
        h = jnp.where(keep, h, jnp.zeros_like(h))
    return new, (new if all_carries else h)


def _valid_mask(seq_lengths: Array, num_steps: int) -> Array:
    """``[T, B]`` bools: step ``t`` of sequence ``b`` is before its length."""
    return jnp.arange(num_steps)[:, None] < seq_lengths[None, :]


def _reverse_within_lengths(x: Array, seq_lengths) -> Array:
    """Reverses time-major ``x[T, B, ...]`` along time, each sequence within its own length."""
    if seq_lengths is None:
        return jnp.flip(x, axis=0)
    t = jnp.arange(x.shape[0])[:, None]
    idx = jnp.where(t < seq_lengths[None, :], seq_lengths[None, :] - 1 - t, t)
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=0)


# --------------------------------------------------------------------------------------------
# The fused recurrence (custom VJP)
# --------------------------------------------------------------------------------------------


def _fast_sigmoid(x):
    # σ(x) = (1 + tanh(x/2)) / 2: XLA's CPU tanh is cheaper than its logistic (exp + divide).
    # The form loses relative precision for very negative x, harmless in float32/64 (absolute
    # error ~1e-8) but not in 16-bit types, which keep the logistic.
    if jnp.finfo(x.dtype).bits < 32:
        return jax.nn.sigmoid(x)
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


class _FastOps(cells_lib.Ops):
    """Matmuls with the pre-concatenated group matrices ``ws``."""

    def __init__(self, ws, index):
        super().__init__()
        self.ws, self.index = ws, index

    def mm(self, names, a):
        return a @ self.ws[self.index[names]]

    def sigmoid(self, x):
        return _fast_sigmoid(x)


# The nonlinearities of the fused path, by the name of the ``Ops`` method.
_ACTIVATION = {"sigmoid": _fast_sigmoid, "tanh": jnp.tanh, "relu": jax.nn.relu}


class _RecordOps(_FastOps):
    """Forward pass of the fused layer: records every matmul, and every nonlinearity's kind,
    input and output."""

    def __init__(self, ws, index):
        super().__init__(ws, index)
        self.us, self.acts, self.groups = [], [], []
        self.kinds, self.act_inputs = [], []

    def mm(self, names, a):
        self.groups.append(self.index[names])
        self.us.append(super().mm(names, a))
        return self.us[-1]

    def _act(self, kind, x):
        self.kinds.append(kind)
        self.act_inputs.append(x)
        self.acts.append(_ACTIVATION[kind](x))
        return self.acts[-1]

    def sigmoid(self, x):
        return self._act("sigmoid", x)

    def tanh(self, x):
        return self._act("tanh", x)

    def relu(self, x):
        return self._act("relu", x)


@jax.custom_vjp
def _replay_mm(a, u, w_t):
    """Returns the saved matmul output ``u``; its VJP sends ``g @ wᵀ`` to ``a`` and ``g`` to ``u``."""
    del a, w_t
    return u


_replay_mm.defvjp(lambda a, u, w_t: (u, w_t), lambda w_t, g: (g @ w_t, g, None))

# Derivatives of the nonlinearities written in terms of their outputs y.
_DERIVATIVE = {
    "sigmoid": lambda y: y * (1 - y),
    "tanh": lambda y: 1 - y * y,
    "relu": lambda y: (y > 0).astype(y.dtype),
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _replay_act(kind, x, y):
    """Returns the saved output ``y`` of nonlinearity ``kind`` at ``x``; VJP ``g · f'(x)`` from ``y``."""
    del kind, x
    return y


_replay_act.defvjp(lambda kind, x, y: (y, y),
                   lambda kind, y, g: (g * _DERIVATIVE[kind](y), None))


class _ReplayOps(cells_lib.Ops):
    """Backward pass: returns the forward pass's saved values instead of recomputing them."""

    def __init__(self, us, acts, w_ts, index):
        super().__init__()
        self.us, self.acts, self.w_ts, self.index = list(us), list(acts), w_ts, index
        self.inputs = []

    def mm(self, names, a):
        self.inputs.append(a)
        return _replay_mm(a, self.us[len(self.inputs) - 1], self.w_ts[self.index[names]])

    def _act(self, kind, x):
        return _replay_act(kind, x, self.acts.pop(0))

    def sigmoid(self, x):
        return self._act("sigmoid", x)

    def tanh(self, x):
        return self._act("tanh", x)

    def relu(self, x):
        return self._act("relu", x)


def _split_known(values, known, alias: dict) -> tuple:
    """Values that are not (the same traced object as) an entry of ``known``; records the others
    in ``alias`` as ``{position in values: position in known}``."""
    own = []
    for k, v in enumerate(values):
        j = next((j for j, c in enumerate(known) if c is v), None)
        if j is None:
            own.append(v)
        else:
            alias[k] = j
    return tuple(own)


def _merge_known(own, known, alias: dict) -> list:
    """Inverse of :func:`_split_known` on the stacked (per-step) values."""
    own = list(own)
    return [known[alias[k]] if k in alias else own.pop(0) for k in range(len(own) + len(alias))]


def _outer_sum(a: Array, du: Array) -> Array:
    """``Σ_{t,b} a[t,b]ᵀ du[t,b]`` as one matmul."""
    return a.reshape(-1, a.shape[-1]).T @ du.reshape(-1, du.shape[-1])


def _make_fused(cell: cells_lib.Cell, all_carries: bool, unroll: int):
    """The recurrence ``(ws, lp, carry0, xin, masks) -> (final, outs)`` with its custom VJP."""
    index = {g: k for k, g in enumerate(cell.recurrent_groups)}

    def step(lp, ops, carry, xin_t, masks_t):
        return _apply_masks(lambda c: cell.recurrent_step(lp, ops, c, xin_t), carry, *masks_t,
                            all_carries)

    # Nonlinearity outputs that the backward pass gets from the carry after the step instead of
    # saving them: {k: (kind, j, applied)} for the k-th nonlinearity, whose output (applied
    # False) or input (applied True: the output is recomputed) is leaf j of the new carry. For
    # the LSTM, tanh(c') is recomputed from the next step's c. Filled in when ``forward`` is
    # traced (the same for every trace of one layer: it depends on the cell and on which masks
    # are given; a masked carry is a new value, so nothing is derived from it).
    derived = {}

    def forward(ws, lp, carry0, xin, masks):
        def body(carry, inp):
            xin_t, masks_t = inp
            ops = _RecordOps(ws, index)
            new, out = step(lp, ops, carry, xin_t, masks_t)
            if ops.groups != list(range(len(index))):
                # The backward pass pairs the k-th matmul of a step with the k-th group.
                raise ValueError(
                    f"{cell.name}: recurrent_step must call ops.mm once per group, in the order of"
                    f" recurrent_groups {tuple(index)}; it called groups {ops.groups}")
            new_leaves = jax.tree.leaves(new)
            derived.clear()
            for k, (kind, x, y) in enumerate(zip(ops.kinds, ops.act_inputs, ops.acts)):
                for j, leaf in enumerate(new_leaves):
                    if leaf is y or leaf is x:
                        derived[k] = (kind, j, leaf is x)
                        break
            # A derived value is a None in its place, so the positions cannot drift.
            saved = tuple(None if k in derived else a for k, a in enumerate(ops.acts))
            return new, (out, carry, tuple(ops.us), saved)

        final, (outs, carries_in, us, acts) = lax.scan(body, carry0, (xin, masks), unroll=unroll)
        return (final, outs), (carries_in, us, acts, final if derived else None)

    @jax.custom_vjp
    def run(ws, lp, carry0, xin, masks):
        return forward(ws, lp, carry0, xin, masks)[0]

    def run_fwd(ws, lp, carry0, xin, masks):
        primal, saved = forward(ws, lp, carry0, xin, masks)
        return primal, (ws, lp, xin, masks) + saved

    def run_bwd(res, cts):
        ws, lp, xin, masks, carries_in, us, acts, final = res
        d_final, d_outs = cts
        w_ts = tuple(w.T for w in ws)

        # For most cells a group's matmul output is added straight to the projected inputs, so
        # its gradient *is* the inputs' gradient (the same traced value), and a matmul input is
        # often a carry entry (h) that the forward pass saved already. Such values are emitted
        # once and shared instead of being written to a second [T, B, ...] buffer.
        alias, alias_a = {}, {}

        # When the cell only adds its projected inputs (``inputs_only_added``), the backward pass
        # never reads their values: each step's slot of ``xin`` is then overwritten with that
        # step's gradient, so the reverse scan needs no fresh [T, B, ...] output buffer (nor the
        # zero fill XLA gives one). The replay gets zeros in place of the (unused) inputs, so
        # nothing reads the buffer that is being written.
        num_steps = jax.tree.leaves(xin)[0].shape[0]
        in_place = cell.inputs_only_added and num_steps > 0
        if sorted(k for k, a in enumerate(acts) if a is None) != sorted(derived):
            raise AssertionError(f"{cell.name}: the saved nonlinearity outputs do not match the"
                                 f" derived ones {derived}")  # cannot happen: one trace fills both

        def body(acc, inp):
            d_carry, d_lp, buf, carry_next = acc
            t, carry_t, xin_t, masks_t, us_t, acts_t, d_out_t = inp
            if in_place:
                xin_t = jax.tree.map(lambda b: jnp.zeros(b.shape[1:], b.dtype), buf)
            next_leaves, acts_t = jax.tree.leaves(carry_next), list(acts_t)
            for k, (kind, j, applied) in derived.items():
                acts_t[k] = _ACTIVATION[kind](next_leaves[j]) if applied else next_leaves[j]
            ops = _ReplayOps(us_t, acts_t, w_ts, index)

            def replayed(carry, xin_t, lp, us_t):
                ops.us = list(us_t)
                return step(lp, ops, carry, xin_t, masks_t), tuple(ops.inputs)

            _, vjp_fn, a_t = jax.vjp(replayed, carry_t, xin_t, lp, us_t, has_aux=True)
            if ops.acts:  # the replay must use every saved or derived output, in order
                raise AssertionError(f"{cell.name}: {len(ops.acts)} nonlinearity outputs left unused")
            d_carry_prev, d_xin_t, d_lp_t, d_us_t = vjp_fn((d_carry, d_out_t))
            d_lp = jax.tree.map(jnp.add, d_lp, d_lp_t)
            own_du = _split_known(d_us_t, jax.tree.leaves(d_xin_t), alias)
            own_a = _split_known(a_t, jax.tree.leaves(carry_t), alias_a)
            # Only the derived nonlinearities need the carry after the step.
            carry_next = carry_t if derived else None
            if not in_place:
                return (d_carry_prev, d_lp, buf, carry_next), (d_xin_t, own_du, own_a)
            buf = jax.tree.map(lambda b, d: lax.dynamic_update_index_in_dim(b, d, t, 0), buf, d_xin_t)
            return (d_carry_prev, d_lp, buf, carry_next), (None, own_du, own_a)

        steps = jnp.arange(num_steps)
        init = (d_final, jax.tree.map(jnp.zeros_like, lp), xin if in_place else None,
                final if derived else None)
        (d_carry0, d_lp, buf, _), (d_xin, d_own, a_own) = lax.scan(
            body, init, (steps, carries_in, None if in_place else xin, masks, us, acts, d_outs),
            reverse=True, unroll=unroll)
        if in_place:
            d_xin = buf
        d_us = _merge_known(d_own, jax.tree.leaves(d_xin), alias)
        a_s = _merge_known(a_own, jax.tree.leaves(carries_in), alias_a)
        # One matmul input per group per step: each dW is a single [in, T·B] @ [T·B, out] matmul.
        d_ws = tuple(_outer_sum(a, du).astype(w.dtype) for a, du, w in zip(a_s, d_us, ws))
        return d_ws, d_lp, d_carry0, d_xin, None

    run.defvjp(run_fwd, run_bwd)
    return run


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


def rnn(
    cell: cells_lib.Cell | str,
    params,
    xs: Array,
    carry=None,
    *,
    seq_lengths: Array | None = None,
    resets: Array | None = None,
    reverse: bool = False,
    unroll: int = 1,
    time_major: bool = False,
    return_all_carries: bool = False,
    impl: str = "fused",
):
    """Runs ``cell`` over the time axis of ``xs``.

    Args:
      cell: a cell from :func:`rnn_jax.cells.get` (or a registered name).
      params: the cell's parameters (``cell.init``).
      xs: inputs ``[B, T, F]`` (``[T, B, F]`` with ``time_major=True``; ``[T, F]`` unbatched).
      carry: initial carry (default: ``cell.zero_carry``).
      seq_lengths: ``[B]`` ints; steps at or past a sequence's length are padding (lengths are
        clipped to ``[0, T]``).
      resets: ``[B, T]`` bools (``[T, B]`` time-major); ``resets[b, t]`` marks the first step of a
        new document: the carry is zeroed before step ``t`` (with ``reverse=True``, after it, so
        that documents stay separate in both directions). Flags in the padding are ignored.
      reverse: process each sequence from its last valid step to its first; outputs come back
        in the input's order.
      unroll: ``lax.scan`` unroll factor (1 is fastest on CPU here).
      time_major: layout of ``xs``, ``resets`` and the outputs.
      return_all_carries: return the carry after every step instead of only the outputs.
      impl: ``"fused"`` (default), ``"autodiff"`` or ``"reference"``; see the module docstring.
        The fused path defines reverse-mode gradients only (``jax.custom_vjp``); use
        ``"autodiff"`` for forward-mode (``jax.jvp``, ``jax.jacfwd``).

    Returns:
      ``(final_carry, hs)`` with ``hs`` ``[B, T, H]``; with ``return_all_carries=True``,
      ``(final_carry, carries)`` where ``carries`` is the carry pytree with a time axis at the
      same position as in ``hs`` (its ``h`` field, or the array itself, equals ``hs`` at valid
      steps; at padded steps it holds the last valid carry).

    >>> import jax, jax.numpy as jnp, rnn_jax
    >>> cell = rnn_jax.cells.get("lstm")
    >>> params = cell.init(jax.random.PRNGKey(0), 3, 8)
    >>> carry, hs = rnn_jax.layers.rnn(cell, params, jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 2]))
    >>> hs.shape, carry.h.shape
    ((2, 5, 8), (2, 8))
    >>> bool(jnp.all(carry.h[1] == hs[1, 1]))
    True
    """
    cell = cells_lib.get(cell) if isinstance(cell, str) else cell
    if impl not in IMPLS:
        raise ValueError(f"invalid impl={impl!r}; allowed values: {', '.join(map(repr, IMPLS))}")
    if not isinstance(unroll, int) or isinstance(unroll, bool) or unroll < 1:
        raise ValueError(f"unroll must be a positive integer, got {unroll!r}")
    xs = jnp.asarray(xs)
    unbatched = xs.ndim == 2
    if unbatched:
        xs = xs[:, None] if time_major else xs[None]
        if carry is not None:
            carry = jax.tree.map(lambda c: c[None], carry)
        if resets is not None:
            resets = jnp.asarray(resets)[:, None] if time_major else jnp.asarray(resets)[None]
        if seq_lengths is not None:
            seq_lengths = jnp.reshape(jnp.asarray(seq_lengths), (1,))
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape [batch, time, features] (or [time, batch, features] with"
                         f" time_major=True, or [time, features]); got shape {xs.shape}")

    params = cell.cast(params)
    dtype = cell.compute_dtype(params)
    xs = cell._check_x(params, xs)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    num_steps, batch = xs.shape[:2]
    if carry is None:
        carry = cell.zero_carry(params, (batch,))
    else:
        carry = cell.as_carry(carry, (batch,), cell.hidden_size(params), dtype)

    valid = None
    if seq_lengths is not None:
        seq_lengths = jnp.asarray(seq_lengths)
        if seq_lengths.shape != (batch,):
            raise ValueError(f"seq_lengths must have shape [batch]=({batch},), got {seq_lengths.shape}")
        if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
            raise ValueError(f"seq_lengths must be integers, got dtype {seq_lengths.dtype}")
        # Traced values cannot be checked here: lengths outside [0, T] are clipped to it.
        seq_lengths = jnp.clip(seq_lengths, 0, num_steps)
        valid = _valid_mask(seq_lengths, num_steps)
    if resets is not None:
        resets = jnp.asarray(resets, bool)
        if not time_major:
            resets = resets.T
        if resets.shape != (num_steps, batch):
            expected = (num_steps, batch) if time_major else (batch, num_steps)
            got = resets.shape if time_major else resets.T.shape
            raise ValueError(f"resets must have shape {expected}, got {got}")
        if valid is not None:
            resets = resets & valid  # a flag in the padding must not touch the held carry
    if reverse:
        xs = _reverse_within_lengths(xs, seq_lengths)
        if resets is not None:
            # A document starting at step t ends, going backwards, after step t: the carry is
            # zeroed before processing step t - 1, i.e. the flags move one step earlier.
            resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])], axis=0)
            resets = _reverse_within_lengths(resets, seq_lengths)
    masks = (valid, resets)

    if impl == "reference":
        def body(c, inp):
            x_t, masks_t = inp
            return _apply_masks(lambda c_: cell._reference_step(params, c_, x_t), c, *masks_t,
                                return_all_carries)

        final, outs = lax.scan(body, carry, (xs, masks), unroll=unroll)
    else:
        xin = cell.project_inputs(params, xs)
        lp = {k: params[k] for k in cell.loop_params}
        ws = tuple(jnp.concatenate([params[n] for n in g], axis=-1) for g in cell.recurrent_groups)
        if impl == "fused":
            final, outs = _make_fused(cell, return_all_carries, unroll)(ws, lp, carry, xin, masks)
        else:
            ops = _FastOps(ws, {g: k for k, g in enumerate(cell.recurrent_groups)})

            def body(c, inp):
                xin_t, masks_t = inp
                return _apply_masks(lambda c_: cell.recurrent_step(lp, ops, c_, xin_t), c, *masks_t,
                                    return_all_carries)

            final, outs = lax.scan(body, carry, (xin, masks), unroll=unroll)

    if reverse:
        outs = jax.tree.map(lambda o: _reverse_within_lengths(o, seq_lengths), outs)
    if not time_major:
        outs = jax.tree.map(lambda o: jnp.swapaxes(o, 0, 1), outs)
    if unbatched:
        axis = 1 if time_major else 0
        outs = jax.tree.map(lambda o: jnp.squeeze(o, axis), outs)
        final = jax.tree.map(lambda c: c[0], final)
    return final, outs


# --------------------------------------------------------------------------------------------
# Stacks and bidirectional layers
# --------------------------------------------------------------------------------------------


def init_stack(cell: cells_lib.Cell, key: Array, input_size: int, hidden_size: int,
               num_layers: int = 1, *, bidirectional: bool = False) -> list:
    """Parameters for :func:`stacked_rnn`: a list with one dict per layer.

    Layer ``k > 0`` takes the previous layer's output (``2·hidden_size`` when bidirectional).
    Bidirectional layers hold ``{"fw": params, "bw": params}``.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    layers = []
    for k, layer_key in enumerate(jax.random.split(key, num_layers)):
        size = input_size if k == 0 else hidden_size * (2 if bidirectional else 1)
        if bidirectional:
            kf, kb = jax.random.split(layer_key)
            layers.append({"fw": cell.init(kf, size, hidden_size), "bw": cell.init(kb, size, hidden_size)})
        else:
            layers.append(cell.init(layer_key, size, hidden_size))
    return layers


def bidirectional(cell: cells_lib.Cell, params, xs: Array, carry=None, *, seq_lengths=None,
                  time_major: bool = False, merge: str = "concat", **kwargs):
    """Forward and backward :func:`rnn` over ``xs``; ``params = {"fw": ..., "bw": ...}``.

    Returns ``((carry_fw, carry_bw), hs)`` where ``hs`` concatenates (``merge="concat"``) or sums
    (``"sum"``) the two directions' outputs, both in the input's time order. The backward
    direction respects ``seq_lengths``.
    """
    if merge not in ("concat", "sum"):
        raise ValueError(f"invalid merge={merge!r}; allowed values: 'concat', 'sum'")
    if kwargs.get("return_all_carries"):
        raise ValueError("bidirectional does not take return_all_carries; call rnn on each direction for that")
    carry_fw, carry_bw = (None, None) if carry is None else carry
    c_fw, h_fw = rnn(cell, params["fw"], xs, carry_fw, seq_lengths=seq_lengths,
                     time_major=time_major, **kwargs)
    c_bw, h_bw = rnn(cell, params["bw"], xs, carry_bw, seq_lengths=seq_lengths,
                     time_major=time_major, reverse=True, **kwargs)
    hs = jnp.concatenate([h_fw, h_bw], axis=-1) if merge == "concat" else h_fw + h_bw
    return (c_fw, c_bw), hs


_bidirectional = bidirectional  # stacked_rnn's flag of the same name shadows it


def dropout(key: Array | None, rate: float, x: Array) -> Array:
    """Inverted dropout; the identity when ``rate == 0`` or ``key is None``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def stacked_rnn(cell: cells_lib.Cell, params: Sequence[Any], xs: Array, carries=None, *,
                seq_lengths=None, resets=None, dropout_rate: float = 0.0,
                dropout_key: Array | None = None, residual: bool = False,
                bidirectional: bool = False, time_major: bool = False, **kwargs):
    """A stack of layers (one per entry of ``params``, see :func:`init_stack`).

    Dropout (rate ``dropout_rate``, active only when ``dropout_key`` is given) is applied to each
    layer's output except the last, as in PyTorch's ``nn.LSTM``. With ``residual=True`` a layer
    whose input and output sizes match adds its input to its output. ``carries`` is a list with
    one carry per layer (a ``(fw, bw)`` pair for bidirectional layers). Extra keyword arguments go
    to :func:`rnn`.

    Returns ``(final_carries, hs)``: the list of per-layer final carries and the last layer's outputs.
    """
    num_layers = len(params)
    if num_layers == 0:
        raise ValueError("stacked_rnn needs at least one layer of parameters")
    if kwargs.get("return_all_carries"):
        raise ValueError("stacked_rnn does not take return_all_carries; call rnn on a layer for that")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {dropout_rate!r}")
    if carries is None:
        carries = [None] * num_layers
    if len(carries) != num_layers:
        raise ValueError(f"got {len(carries)} carries for {num_layers} layers")
    keys = (jax.random.split(dropout_key, num_layers) if dropout_key is not None
            else [None] * num_layers)
    finals = []
    h = xs
    for k, (layer, carry) in enumerate(zip(params, carries)):
        if bidirectional:
            final, out = _bidirectional(cell, layer, h, carry, seq_lengths=seq_lengths, resets=resets,
                                        time_major=time_major, **kwargs)
        else:
            final, out = rnn(cell, layer, h, carry, seq_lengths=seq_lengths, resets=resets,
                             time_major=time_major, **kwargs)
        if residual and out.shape == h.shape:
            out = out + h.astype(out.dtype)
            if seq_lengths is not None:  # keep padded outputs at zero
                valid = _valid_mask(jnp.asarray(seq_lengths), out.shape[0 if time_major else 1])
                valid = valid if time_major else valid.T
                out = jnp.where(valid[..., None], out, jnp.zeros_like(out))
        if k < num_layers - 1:
            out = dropout(keys[k], dropout_rate, out)
        finals.append(final)
        h = out
    return finals, h
