r"""Gradient flow through time: how much of a loss at the last step reaches each earlier state.

For a single recurrent layer run from a zero carry over ``x_1 .. x_T`` and a loss ``L`` read out
from the last output ``h_T`` only, the gradient with respect to an earlier output is a product of
step Jacobians,

.. math::  \frac{\partial L}{\partial h_t} = \frac{\partial L}{\partial h_T}
           \prod_{k=t+1}^{T} \frac{\partial h_k}{\partial h_{k-1}},

so its norm shrinks or grows geometrically with ``T - t`` unless the Jacobians stay close to
norm-preserving (Hochreiter 1991; Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013).
For a Tanh RNN (row vectors, ``h_k = tanh(x_k W_xh + h_{k-1} W_hh + b_h)``) each step back
multiplies the gradient by ``diag(1 - h_k²) W_hhᵀ``, so a largest singular value ``σ`` of ``W_hh``
below 1 makes it vanish at least as fast as ``σ^{T-t}``.

:func:`hidden_grads` computes all ``∂L/∂h_t`` in one backward pass: it reruns the layer with a
zero perturbation ``ε_t`` added to every step's output ``h_t`` (to the ``h`` part of the carry for
LSTM-family cells, which hold ``c`` fixed) and differentiates ``L`` with respect to the ``ε``'s:
``∂L/∂ε_t = ∂L/∂h_t`` at ``ε = 0``. :func:`hidden_grad_norms` reduces them to
``mean_b ‖∂L_b/∂h_t‖`` per step. These norms fall below float32's smallest number within a
hundred steps for many cells, so :func:`hidden_grad_log_norms` computes the same derivatives with
an explicit backward pass that rescales as it goes and returns their logarithms, and
:func:`hidden_grad_log10_norms` is the log-scale counterpart of :func:`hidden_grad_norms`.

For LSTM-family cells the memory cell ``c`` is a second route. With ``c_t = f_t ⊙ c_{t-1} +
i_t ⊙ g_t`` and ``h_t = o_t ⊙ tanh(c_t)``, backpropagation accumulates

.. math::  \frac{\partial L}{\partial c_t} = \frac{\partial L}{\partial c_{t+1}} \odot f_{t+1}
           + (\text{terms through } h_t \text{ and the gates of step } t+1),

so along the cell state alone the gradient is multiplied *elementwise* by the forget gate at each
step, never by a recurrent matrix: ``∂c_T/∂c_t`` restricted to the ``c → c`` path is
``diag(∏_{k=t+1..T} f_k)``. :func:`cell_state_grads` computes the full ``∂L/∂c_t`` (every path,
including ``c_t → h_t``) or that direct path alone (``path="direct"``: gates computed from the
stop-gradient'ed carry), :func:`cell_state_grad_log_norms` their norms without underflow, and
:func:`forget_gates` / :func:`log_forget_products` the gates and their products. They run the
cell's equations written out in :func:`lstm_step_explicit`, which the tests pin to ``cell.step``.

The rest are helpers for the study in ``experiments/gradient_flow.py``: rescaling a Tanh RNN's
recurrent matrix to a given largest singular value, and a minimal regressor (cell + linear head
on the last output) trained on the adding problem with the whole run as one jitted ``lax.scan``.

>>> import jax, jax.numpy as jnp, rnn_jax
>>> from rnn_jax import gradflow
>>> cell = rnn_jax.cells.get("rnn")
>>> params = cell.init(jax.random.PRNGKey(0), 2, 8)
>>> norms = gradflow.hidden_grad_norms(cell, params, jnp.ones((3, 6, 2)))
>>> norms.shape, round(float(norms[-1]), 5)   # the default readout is a unit vector
((6,), 1.0)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from rnn_jax import cells as cells_lib
from rnn_jax import layers
from rnn_jax.data import longrange

Array = jax.Array

__all__ = [
    "TrainCurves",
    "adding_batches",
    "adding_loss",
    "cell_for_inputs",
    "cell_state_grad_log10_norms",
    "cell_state_grad_log_norms",
    "cell_state_grads",
    "forget_gates",
    "forget_product_log10_means",
    "hidden_grad_log10_norms",
    "hidden_grad_log_norms",
    "hidden_grad_norms",
    "hidden_grads",
    "init_regressor",
    "largest_singular_value",
    "linear_readout",
    "log_forget_products",
    "lstm_step_explicit",
    "make_cell_state_log10_fn",
    "make_grad_log10_norms_fn",
    "make_optimizer",
    "make_trainer",
    "predict",
    "readout_direction",
    "tanh_rnn_with_spectral_radius",
    "unit_vector",
]


# --------------------------------------------------------------------------------------------
# ∂L/∂h_t for every step
# --------------------------------------------------------------------------------------------


def unit_vector(key: Array, size: int, dtype=jnp.float32) -> Array:
    """A random direction: a standard normal vector scaled to norm 1."""
    v = jax.random.normal(key, (size,), dtype)
    return v / jnp.linalg.norm(v)


def linear_readout(w: Array) -> Callable[[Array], Array]:
    """``h_T [B, H] -> h_T @ w [B]``: the per-example loss is a fixed linear function of ``h_T``,
    so ``∂L/∂h_T = w`` and ``‖∂L/∂h_t‖`` measures the step Jacobians alone."""
    return lambda h: h @ w


def _add_to_h(carry, eps: Array):
    """The carry with ``eps`` added to its output part (``h`` of an LSTM-family carry)."""
    if hasattr(carry, "_replace") and "h" in getattr(carry, "_fields", ()):
        return carry._replace(h=carry.h + eps.astype(carry.h.dtype))
    return carry + eps.astype(carry.dtype)


def _prepare(cell: cells_lib.Cell, params, xs, readout_fn, carry):
    """Checked inputs, time-major; the default readout and carry."""
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape [batch, time, features], got shape {xs.shape}")
    batch, steps = xs.shape[:2]
    if steps < 1:
        raise ValueError("xs must have at least one time step")
    params = cell.cast(params)
    dtype = cell.compute_dtype(params)
    hidden = cell.hidden_size(params)
    if readout_fn is None:
        readout_fn = linear_readout(unit_vector(jax.random.PRNGKey(0), hidden, dtype))
    carry = (cell.zero_carry(params, (batch,)) if carry is None
             else cell.as_carry(carry, (batch,), hidden, dtype))
    return params, jnp.swapaxes(xs, 0, 1), readout_fn, carry


def hidden_grads(cell: cells_lib.Cell, params, xs: Array,
                 readout_fn: Callable[[Array], Array] | None = None, *, carry=None) -> Array:
    """``∂L_b/∂h_t`` for every example ``b`` and step ``t``: an array ``[B, T, H]``.

    Args:
      cell: a cell from :func:`rnn_jax.cells.get`.
      params: its parameters.
      xs: inputs ``[B, T, I]``.
      readout_fn: maps the last output ``h_T [B, H]`` to per-example losses ``[B]``
        (default: :func:`linear_readout` of a fixed random unit vector, ``PRNGKey(0)``).
        The losses are summed, so example ``b``'s gradients are those of its own loss.
      carry: initial carry (default: zeros).

    ``h_t`` is the output of step ``t`` (``t = 1..T`` is index ``t - 1``); for LSTM-family cells
    the derivative is taken with respect to the carry's ``h`` with its ``c`` held fixed.
    """
    params, xs_t, readout_fn, carry = _prepare(cell, params, xs, readout_fn, carry)
    steps, batch = xs_t.shape[:2]
    dtype, hidden = cell.compute_dtype(params), cell.hidden_size(params)

    def total_loss(eps):
        def body(c, inp):
            x_t, eps_t = inp
            c, _ = cell.step(params, c, x_t)
            return _add_to_h(c, eps_t), None

        final, _ = lax.scan(body, carry, (xs_t, eps))
        return _summed_readout(readout_fn, batch)(cells_lib.Cell.carry_h(final))

    eps = jnp.zeros((steps, batch, hidden), dtype)
    return jnp.swapaxes(jax.grad(total_loss)(eps), 0, 1)


def hidden_grad_norms(cell: cells_lib.Cell, params, xs: Array,
                      readout_fn: Callable[[Array], Array] | None = None, *, carry=None) -> Array:
    """``mean_b ‖∂L_b/∂h_t‖`` for ``t = 1..T``: an array ``[T]`` (see :func:`hidden_grads`)."""
    grads = hidden_grads(cell, params, xs, readout_fn, carry=carry)
    return jnp.mean(jnp.linalg.norm(grads.astype(jnp.float32), axis=-1), axis=0)


def _summed_readout(readout_fn, batch: int):
    """``h -> Σ_b readout_fn(h)_b``, checking that the readout gives one loss per example."""

    def total(h):
        losses = readout_fn(h)
        if jnp.shape(losses) != (batch,):
            raise ValueError(f"readout_fn must return per-example losses of shape ({batch},),"
                             f" got shape {jnp.shape(losses)}")
        return jnp.sum(losses)

    return total


def _normalised(d):
    """``(d / ‖d‖_b, log ‖d‖_b)`` per example ``b`` (a zero cotangent is left as it is)."""
    n = _per_example_norm(d)
    safe = jnp.where(n > 0, n, 1.0)
    return jax.tree.map(lambda leaf: leaf / safe[:, None].astype(leaf.dtype), d), jnp.log(safe)


def _per_example_norm(tree) -> Array:
    """``‖·‖`` over the last axis of every leaf together: one norm per example, ``[B]``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=-1)
                        for leaf in jax.tree.leaves(tree)))


def hidden_grad_log_norms(cell: cells_lib.Cell, params, xs: Array,
                          readout_fn: Callable[[Array], Array] | None = None, *, carry=None) -> Array:
    """``log ‖∂L_b/∂h_t‖`` (natural log) for every example and step: ``[B, T]``, without underflow.

    The same derivatives as :func:`hidden_grads`, by an explicit backward pass that renormalises
    the carry's cotangent to unit norm after every step and keeps the scale as a running log, so
    ratios far below float32's range (``1e-38``) stay exact instead of flushing to zero. A
    gradient that is exactly zero gives ``-inf``.
    """
    params, xs_t, readout_fn, carry = _prepare(cell, params, xs, readout_fn, carry)
    batch = xs_t.shape[1]

    def forward(c, x_t):
        c_next, _ = cell.step(params, c, x_t)
        return c_next, c  # saves the carry entering each step

    final, carries_in = lax.scan(forward, carry, xs_t)

    d_h = jax.grad(_summed_readout(readout_fn, batch))(cells_lib.Cell.carry_h(final))
    d_final = _add_to_h(jax.tree.map(jnp.zeros_like, final), d_h)

    def backward(state, inp):
        d, log_scale = state  # cotangent of the carry after step t, as d · exp(log_scale)
        c_prev, x_t = inp
        log_norm_t = jnp.log(_per_example_norm(cells_lib.Cell.carry_h(d))) + log_scale
        _, vjp = jax.vjp(lambda c: cell.step(params, c, x_t)[0], c_prev)
        d_prev, log_n = _normalised(vjp(d)[0])
        return (d_prev, log_scale + log_n), log_norm_t

    d0, log0 = _normalised(d_final)
    _, log_norms = lax.scan(backward, (d0, log0), (carries_in, xs_t), reverse=True)
    return jnp.swapaxes(log_norms, 0, 1)


def hidden_grad_log10_norms(cell: cells_lib.Cell, params, xs: Array,
                            readout_fn: Callable[[Array], Array] | None = None, *, carry=None) -> Array:
    """``log10(mean_b ‖∂L_b/∂h_t‖)`` for ``t = 1..T``: :func:`hidden_grad_norms` on a log scale,
    computed from :func:`hidden_grad_log_norms` (a log-sum-exp over the batch), so it does not
    underflow."""
    logs = hidden_grad_log_norms(cell, params, xs, readout_fn, carry=carry)
    mean = jax.nn.logsumexp(logs, axis=0) - jnp.log(logs.shape[0])
    return mean / jnp.log(10.0)


def make_grad_log10_norms_fn(cell: cells_lib.Cell):
    """``jit((params, xs, w) -> hidden_grad_log10_norms(cell, params, xs, linear_readout(w)))``.

    One compilation per cell and input shape; the parameters and the readout direction ``w`` are
    ordinary arguments, so the same function serves at initialisation, after training and for
    rescaled recurrent matrices.
    """
    return jax.jit(lambda params, xs, w: hidden_grad_log10_norms(cell, params, xs, linear_readout(w)))


# --------------------------------------------------------------------------------------------
# LSTM family: ∂L/∂c_t, the direct c → c path and the forget-gate products
# --------------------------------------------------------------------------------------------


def _check_lstm(cell: cells_lib.Cell) -> None:
    if not isinstance(cell, cells_lib.LSTMCell):
        raise ValueError(f"{cell.name} is not an LSTM-family cell (no memory cell c); the cell-state"
                         " gradients need one of the LSTM variants of rnn_jax.cells")


def lstm_step_explicit(cell: cells_lib.LSTMCell, params, carry, x: Array, eps: Array | None = None, *,
                       direct: bool = False):
    r"""One step of an LSTM-family cell written out from its equations: ``(carry', f)``.

    .. math::
        i &= \sigma(x W_{xi} + \bar h W_{hi} + p_i \odot \bar c + b_i), \quad
        f = \sigma(x W_{xf} + \bar h W_{hf} + p_f \odot \bar c + b_f), \quad
        g = \tanh(x W_{xg} + \bar h W_{hg} + b_g) \\
        c' &= f \odot c + i \odot g + \varepsilon, \qquad
        o = \sigma(x W_{xo} + \bar h W_{ho} + p_o \odot c' + b_o), \qquad h' = o \odot \tanh(c')

    with the cell's options (a removed gate is 1, ``f = 1 − i`` when coupled, no tanh without
    ``input_activation`` / ``output_activation``, the FGR terms ``Σ_s s̄ R_{s·}`` from the
    carry's previous gates). ``ε`` (default 0) is added to the new cell state before ``o`` and
    ``h'`` read it, so ``∂L/∂ε = ∂L/∂c'`` through every path, ``c' → h'`` included.

    ``direct=False``: ``h̄, c̄`` (and the FGR gates) are the carry's own. ``direct=True``: they are
    the carry under ``lax.stop_gradient``, so the gates do not depend on the incoming carry and the
    only derivative of ``c'`` with respect to it is the direct path, ``∂c'/∂c = diag(f)``.
    The values are the same either way. ``f`` is returned as ones for a cell without a forget gate.
    ``params`` and ``x`` are used as given (the callers cast them to the compute dtype).
    """
    _check_lstm(cell)
    p = params
    src = jax.tree.map(lax.stop_gradient, carry) if direct else carry
    peep = cell.peephole_gates

    def pre(k):
        z = x @ p[f"W_x{k}"] + src.h @ p[f"W_h{k}"] + p[f"b_{k}"]
        if cell.full_gate_recurrence and k != "g":
            z = z + sum(getattr(src, s) @ p[f"R_{s}{k}"] for s in "ifo")
        return z + p[f"p_{k}"] * src.c if k in peep and k != "o" else z

    i = jax.nn.sigmoid(pre("i")) if cell.input_gate else None
    f = 1.0 - i if cell.coupled else (jax.nn.sigmoid(pre("f")) if cell.forget_gate else None)
    g = jnp.tanh(pre("g")) if cell.input_activation else pre("g")
    c_new = (carry.c if f is None else f * carry.c) + (g if i is None else i * g)
    if eps is not None:
        c_new = c_new + eps
    if cell.output_gate:
        o = jax.nn.sigmoid(pre("o") + (p["p_o"] * c_new if "o" in peep else 0.0))
    else:
        o = None
    y = jnp.tanh(c_new) if cell.output_activation else c_new
    h_new = y if o is None else o * y
    new = (cells_lib.FGRCarry(c_new, h_new, i, f, o) if cell.full_gate_recurrence
           else cells_lib.LSTMCarry(c_new, h_new))
    return new, (jnp.ones_like(c_new) if f is None else f)


def _check_path(path: str) -> bool:
    if path not in ("full", "direct"):
        raise ValueError(f"path must be 'full' or 'direct', got {path!r}")
    return path == "direct"


def cell_state_grads(cell: cells_lib.LSTMCell, params, xs: Array,
                     readout_fn: Callable[[Array], Array] | None = None, *, carry=None,
                     path: str = "full") -> Array:
    r"""``∂L_b/∂c_t`` for every example and step of an LSTM-family cell: an array ``[B, T, H]``.

    The same loss as :func:`hidden_grads` (``L = Σ_b readout_fn(h_T)_b``); ``c_t`` is the new cell
    state of step ``t`` (index ``t − 1``), perturbed before ``h_t = o_t ⊙ tanh(c_t)`` reads it
    (:func:`lstm_step_explicit`), so the derivative counts every path from ``c_t`` to ``L``:

    .. math::  \frac{\partial L}{\partial c_t} = \frac{\partial L}{\partial c_{t+1}} \odot f_{t+1}
               + \frac{\partial L}{\partial h_t} \odot \frac{\partial h_t}{\partial c_t}
               \quad (\text{no peepholes}; \ \partial L/\partial h_t \text{ with } c_t \text{ fixed})

    ``path="direct"`` keeps only the path along the cell state: every step's gates are computed
    from the stop-gradient'ed carry, so

    .. math::  \left.\frac{\partial L}{\partial c_t}\right|_{c \to c}
               = \frac{\partial L}{\partial c_T} \odot \prod_{k=t+1}^{T} f_k ,

    with ``∂L/∂c_T`` the same in both (``t = T`` has no later step).
    """
    _check_lstm(cell)
    direct = _check_path(path)
    params, xs_t, readout_fn, carry = _prepare(cell, params, xs, readout_fn, carry)
    steps, batch = xs_t.shape[:2]
    dtype, hidden = cell.compute_dtype(params), cell.hidden_size(params)
    xs_t = xs_t.astype(dtype)

    def total_loss(eps):
        def body(c, inp):
            return lstm_step_explicit(cell, params, c, *inp, direct=direct)[0], None

        final, _ = lax.scan(body, carry, (xs_t, eps))
        return _summed_readout(readout_fn, batch)(final.h)

    eps = jnp.zeros((steps, batch, hidden), dtype)
    return jnp.swapaxes(jax.grad(total_loss)(eps), 0, 1)


def cell_state_grad_log_norms(cell: cells_lib.LSTMCell, params, xs: Array,
                              readout_fn: Callable[[Array], Array] | None = None, *, carry=None,
                              path: str = "full") -> Array:
    """``log ‖∂L_b/∂c_t‖`` (natural log) for every example and step: ``[B, T]``, without underflow.

    The derivatives of :func:`cell_state_grads` (``path`` as there), by an explicit backward pass
    through the saved carries that renormalises the carry's cotangent to unit norm per example
    after every step and keeps the scale as a running log (as :func:`hidden_grad_log_norms` does).
    Step ``t``'s vector-Jacobian product gives both ``∂L/∂c_t`` (the cotangent of ``ε_t`` in
    :func:`lstm_step_explicit`) and the cotangent of the carry entering step ``t``.
    """
    _check_lstm(cell)
    direct = _check_path(path)
    params, xs_t, readout_fn, carry = _prepare(cell, params, xs, readout_fn, carry)
    batch = xs_t.shape[1]
    xs_t = xs_t.astype(cell.compute_dtype(params))

    def forward(c, x_t):
        return lstm_step_explicit(cell, params, c, x_t)[0], c  # saves the carry entering each step

    final, carries_in = lax.scan(forward, carry, xs_t)
    d_h = jax.grad(_summed_readout(readout_fn, batch))(final.h)
    d_final = jax.tree.map(jnp.zeros_like, final)._replace(h=d_h)
    zero_eps = jnp.zeros_like(final.c)

    def backward(state, inp):
        d, log_scale = state  # cotangent of the carry after step t, as d · exp(log_scale)
        c_prev, x_t = inp
        _, vjp = jax.vjp(lambda c, e: lstm_step_explicit(cell, params, c, x_t, e, direct=direct)[0],
                         c_prev, zero_eps)
        d_prev, d_c = vjp(d)
        log_norm_t = jnp.log(_per_example_norm(d_c)) + log_scale
        d_prev, log_n = _normalised(d_prev)
        return (d_prev, log_scale + log_n), log_norm_t

    d0, log0 = _normalised(d_final)
    _, log_norms = lax.scan(backward, (d0, log0), (carries_in, xs_t), reverse=True)
    return jnp.swapaxes(log_norms, 0, 1)


def cell_state_grad_log10_norms(cell: cells_lib.LSTMCell, params, xs: Array,
                                readout_fn: Callable[[Array], Array] | None = None, *, carry=None,
                                path: str = "full") -> Array:
    """``log10(mean_b ‖∂L_b/∂c_t‖)`` for ``t = 1..T`` (a log-sum-exp over the batch of
    :func:`cell_state_grad_log_norms`)."""
    logs = cell_state_grad_log_norms(cell, params, xs, readout_fn, carry=carry, path=path)
    return (jax.nn.logsumexp(logs, axis=0) - jnp.log(logs.shape[0])) / jnp.log(10.0)


def forget_gates(cell: cells_lib.LSTMCell, params, xs: Array, *, carry=None) -> Array:
    """The forget gate ``f_t`` of every example and step: ``[B, T, H]`` (ones without a forget
    gate, ``1 − i_t`` for a coupled cell), from a run of :func:`lstm_step_explicit`."""
    _check_lstm(cell)
    params, xs_t, _, carry = _prepare(cell, params, xs, None, carry)
    xs_t = xs_t.astype(cell.compute_dtype(params))
    _, fs = lax.scan(lambda c, x_t: lstm_step_explicit(cell, params, c, x_t), carry, xs_t)
    return jnp.swapaxes(fs, 0, 1)


def log_forget_products(cell: cells_lib.LSTMCell, params, xs: Array, *, carry=None) -> Array:
    r"""``log ∏_{k=t+1..T} f_k`` (natural log, elementwise) for every example, step and unit:
    ``[B, T, H]``, as a reversed cumulative sum of ``log f_k`` (no underflow). ``t = T`` is the
    empty product, ``log 1 = 0``.

    ``exp`` of it is the diagonal of the direct path's Jacobian,
    ``∂c_T/∂c_t |_{c→c} = diag(∏_{k=t+1}^{T} f_k)``.
    """
    log_f = jnp.log(forget_gates(cell, params, xs, carry=carry).astype(jnp.float32))
    suffix = jnp.cumsum(log_f[:, ::-1], axis=1)[:, ::-1]  # Σ_{k>=t} log f_k
    return jnp.concatenate([suffix[:, 1:], jnp.zeros_like(suffix[:, :1])], axis=1)


def forget_product_log10_means(cell: cells_lib.LSTMCell, params, xs: Array, *, carry=None) -> Array:
    """``log10(mean_{b,j} ∏_{k=t+1..T} f_{k,b,j})`` for ``t = 1..T``: the forget-gate product
    averaged over examples and units (an arithmetic mean, so the units that keep the most dominate,
    as they dominate the norm of the direct-path gradient)."""
    logs = log_forget_products(cell, params, xs, carry=carry)
    logs = jnp.swapaxes(logs, 0, 1).reshape(logs.shape[1], -1)
    return (jax.nn.logsumexp(logs, axis=1) - jnp.log(logs.shape[1])) / jnp.log(10.0)


def make_cell_state_log10_fn(cell: cells_lib.LSTMCell):
    """``jit((params, xs, w) -> dict)`` for the cell-state study, with ``L = h_T · w``:

    * ``"full"``: ``log10 mean_b ‖∂L/∂c_t‖`` (:func:`cell_state_grad_log10_norms`), ``[T]``;
    * ``"direct"``: the same for the direct ``c → c`` path only, ``[T]``;
    * ``"forget_product"``: :func:`forget_product_log10_means`, ``[T]``;
    * ``"mean_f"`` and ``"mean_log_f"``: the mean of ``f`` and of ``ln f`` over every example,
      step and unit (``exp(mean_log_f)`` is the geometric-mean factor per step).
    """
    _check_lstm(cell)

    def fn(params, xs, w):
        readout = linear_readout(w)
        f = forget_gates(cell, params, xs).astype(jnp.float32)
        return {"full": cell_state_grad_log10_norms(cell, params, xs, readout),
                "direct": cell_state_grad_log10_norms(cell, params, xs, readout, path="direct"),
                "forget_product": forget_product_log10_means(cell, params, xs),
                "mean_f": jnp.mean(f), "mean_log_f": jnp.mean(jnp.log(f))}

    return jax.jit(fn)


# --------------------------------------------------------------------------------------------
# Tanh RNN with a chosen largest singular value
# --------------------------------------------------------------------------------------------


def largest_singular_value(w: Array) -> Array:
    """The spectral norm ``σ_max(w)`` of a matrix."""
    return jnp.linalg.norm(jnp.asarray(w, jnp.float32), ord=2)


def tanh_rnn_with_spectral_radius(params, sigma):
    """Parameters of the ``rnn`` cell with ``W_hh`` rescaled to largest singular value ``sigma``.

    Only ``W_hh`` changes (a copy; the input dict is left alone). ``σ_max(W_hh) < 1`` is
    sufficient for vanishing gradients in a Tanh RNN (``|tanh'| <= 1``); ``> 1`` is necessary
    for exploding ones. For an orthogonal ``W_hh`` (``recurrent_init="orthogonal"``) all
    singular values, and all eigenvalue moduli (the spectral radius), equal ``sigma``.
    """
    if "W_hh" not in params:
        raise ValueError(f"params have no W_hh (keys: {', '.join(sorted(params))}); expected the"
                         " parameters of the 'rnn' cell")
    w = jnp.asarray(params["W_hh"])
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"W_hh must be a square matrix, got shape {w.shape}")
    if isinstance(sigma, (int, float, np.floating, np.integer)) and not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    scale = jnp.asarray(sigma, jnp.float32) / largest_singular_value(w)
    return {**params, "W_hh": (w.astype(jnp.float32) * scale).astype(w.dtype)}


# --------------------------------------------------------------------------------------------
# A small regressor on the adding problem
# --------------------------------------------------------------------------------------------


def cell_for_inputs(name: str, input_size: int, hidden_size: int, **options) -> cells_lib.Cell:
    """``cells.get(name, **options)``; MUT cells get ``input_term="linear"`` when the input and
    hidden sizes differ (their raw-input term needs equal sizes otherwise)."""
    if (input_size != hidden_size and "input_term" in cells_lib.options(name)
            and "input_term" not in options):
        options["input_term"] = "linear"
    return cells_lib.get(name, **options)


def init_regressor(cell: cells_lib.Cell, key: Array, input_size: int, hidden_size: int,
                   output_size: int = 1, *, cell_params=None) -> dict:
    """``{"cell": cell params, "head": {"W": [H, O], "b": [O]}}``; ``W`` uniform ±1/√H, ``b = 0``.

    ``cell_params`` replaces the cell's own initialisation (e.g. a rescaled ``W_hh``).
    """
    k_cell, k_head = jax.random.split(key)
    bound = 1.0 / np.sqrt(hidden_size)
    if cell_params is None:
        cell_params = cell.init(k_cell, input_size, hidden_size)
    return {"cell": cell_params,
            "head": {"W": jax.random.uniform(k_head, (hidden_size, output_size), jnp.float32, -bound, bound),
                     "b": jnp.zeros((output_size,), jnp.float32)}}


def predict(cell: cells_lib.Cell, params, xs: Array) -> Array:
    """Linear head on the last output: ``h_T @ W + b``, shape ``[B, O]``."""
    final, _ = layers.rnn(cell, params["cell"], xs)
    return cells_lib.Cell.carry_h(final) @ params["head"]["W"] + params["head"]["b"]


def adding_loss(cell: cells_lib.Cell, params, xs: Array, targets: Array) -> Array:
    """Mean squared error of the first head output against the adding-problem targets ``[B]``."""
    return jnp.mean((predict(cell, params, xs)[:, 0] - targets) ** 2)


def readout_direction(params) -> Array:
    """The head's first column, normalised: the direction in which ``h_T`` moves the output."""
    w = params["head"]["W"][:, 0]
    return w / jnp.linalg.norm(w)


def adding_batches(seed: int, steps: int, batch_size: int, length: int, *, start: int = 0):
    """Batches ``start .. start + steps - 1`` of the adding problem, stacked:
    ``(xs [S, B, T, 2], ys [S, B])``."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    pairs = [longrange.adding_problem(seed, batch_size, length, index=start + s) for s in range(steps)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3,
                   clip_norm: float | None = None) -> optax.GradientTransformation:
    """``optax.adam`` or ``optax.sgd``, after ``optax.clip_by_global_norm(clip_norm)`` if given."""
    makers = {"adam": optax.adam, "sgd": optax.sgd}
    if name not in makers:
        raise ValueError(f"invalid optimizer {name!r}; allowed values: {', '.join(map(repr, makers))}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if clip_norm is None:
        return makers[name](learning_rate)
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive or None, got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), makers[name](learning_rate))


class TrainCurves(NamedTuple):
    """Per-step training curves: the batch loss before the update and the gradient's global norm
    (before any clipping)."""

    losses: Array
    grad_norms: Array


def make_trainer(cell: cells_lib.Cell, optimizer: optax.GradientTransformation,
                 loss_fn: Callable = adding_loss):
    """``jit((params, xs [S, ...], ys [S, ...]) -> (params, TrainCurves))``: ``S`` optimizer steps,
    one per leading slice of the batches, as a single ``lax.scan`` (one compilation per cell,
    optimizer and batch shape). ``loss_fn(cell, params, xs, ys)`` gives a scalar loss.
    """

    def train(params, xs, ys):
        def body(state, batch):
            p, opt_state = state
            loss, grads = jax.value_and_grad(lambda p_: loss_fn(cell, p_, *batch))(p)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), (loss, optax.tree.norm(grads))

        (params, _), (losses, norms) = lax.scan(body, (params, optimizer.init(params)), (xs, ys))
        return params, TrainCurves(losses, norms)

    return jax.jit(train)
