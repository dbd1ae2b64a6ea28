r"""Recurrent cells as pure functions, and their registry.

Every cell follows one contract (see ``docs/design.md``)::

    cell = rnn_jax.cells.get("mut1", **options)       # names in rnn_jax.cells.names()
    params = cell.init(key, input_size, hidden_size)  # dict[str, jax.Array], named as in the equations
    carry = cell.zero_carry(params, batch_shape)      # array h, or LSTMCarry(c, h) for LSTM-family cells
    carry, h = cell.step(params, carry, x)            # one time step; x: batch_shape + (input_size,)

Conventions used by every cell in this module:

* Row vectors: the lecture writes ``W·x``; the code writes ``x @ W`` with ``W`` of shape
  ``[in, out]``. Parameter names are the symbols of the equations, one matrix per gate
  (``W_xi`` is input→i, ``W_hi`` is hidden→i, ``b_i`` the bias of i).
* ``step`` is the plain, slow *reference* path: one matmul per gate, exactly as the equations read.
  The fast path used by :func:`rnn_jax.layers.rnn` is made of two pieces every cell also defines:
  ``project_inputs`` (all input-dependent terms; the layer applies it to every time step at once)
  and ``recurrent_step`` (only the recurrent part; per-gate matrices that share an input are
  concatenated into one matmul). ``fast_step`` chains the two for a single step; tests pin it
  to ``step``.
* ``dtype`` is the compute dtype (``None``: the parameters' dtype), ``param_dtype`` the storage
  dtype of the parameters made by ``init`` (float32 by default). With ``dtype="bfloat16"`` the
  parameters and inputs are cast once per call and the carry is kept in bfloat16.
* Initialisation (Jozefowicz et al. 2015): by default every matrix is uniform in
  ``±init_scale/sqrt(hidden_size)``; ``kernel_init`` (input matrices) and ``recurrent_init``
  (hidden matrices) also accept ``"orthogonal"``, ``"glorot_uniform"``, ``"lecun_normal"``,
  ``"normal"`` or a callable ``f(key, shape, dtype)``. Biases start at zero (plus ``forget_bias``
  on ``b_f`` for LSTM-family cells); peephole weights are uniform ``±init_scale/sqrt(hidden_size)``.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax.errors import InputError

Array = jax.Array
Params = dict

__all__ = [
    "Cell",
    "FGRCarry",
    "GRUCell",
    "LSTMCarry",
    "LSTMCell",
    "MUT1Cell",
    "MUT2Cell",
    "MUT3Cell",
    "SimpleRNNCell",
    "describe",
    "get",
    "names",
]


class LSTMCarry(NamedTuple):
    """Carry of LSTM-family cells: memory cell ``c`` and output ``h`` (same order as Flax)."""

    c: Array
    h: Array


class FGRCarry(NamedTuple):
    """Carry of the full-gate-recurrence LSTM (Greff's FGR): ``c``, ``h`` and last step's gates."""

    c: Array
    h: Array
    i: Array
    f: Array
    o: Array


# --------------------------------------------------------------------------------------------
# Initialisers and option checks
# --------------------------------------------------------------------------------------------

INIT_NAMES = ("uniform", "orthogonal", "glorot_uniform", "lecun_normal", "normal")
DTYPE_NAMES = ("float32", "float64", "bfloat16", "float16")


def _make_init(spec, init_scale: float, hidden_size: int):
    """Returns ``f(key, shape, dtype)`` for an initialiser name or callable."""
    if callable(spec):
        return spec
    bound = init_scale / np.sqrt(hidden_size)
    if spec == "uniform":
        return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    if spec == "normal":
        return lambda key, shape, dtype: bound * jax.random.normal(key, shape, dtype)
    if spec == "orthogonal":
        return jax.nn.initializers.orthogonal(scale=init_scale)
    if spec == "glorot_uniform":
        return jax.nn.initializers.variance_scaling(init_scale**2, "fan_avg", "uniform")
    if spec == "lecun_normal":
        return jax.nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    raise AssertionError(spec)  # checked in __post_init__


def _check_choice(cell: str, field: str, value, allowed) -> None:
    if value not in allowed:
        raise InputError(
            f"{cell}: invalid {field}={value!r}; allowed values: {', '.join(map(repr, allowed))}"
        )


def _canonical_dtype(cell: str, field: str, value, allow_none: bool):
    if value is None and allow_none:
        return None
    try:
        name = jnp.dtype(value).name
    except TypeError:
        name = None
    if name not in DTYPE_NAMES:
        allowed = DTYPE_NAMES + (("None",) if allow_none else ())
        raise InputError(f"{cell}: invalid {field}={value!r}; allowed: {', '.join(allowed)}")
    return jnp.dtype(name)


def _split(u: Array, n: int) -> list[Array]:
    return jnp.split(u, n, axis=-1)


class Ops:
    """The operations a ``recurrent_step`` uses, so that the layer can swap in its own versions.

    ``mm(group, a)`` is ``a @ [W_1 | W_2 | ...]`` for a group of recurrent matrix names (one of
    ``cell.recurrent_groups``); ``sigmoid``, ``tanh`` and ``relu`` are the nonlinearities. The fused
    layer records every output in the forward pass and, in the backward pass, replays them from
    the saved values, so no matmul or transcendental function is computed twice.
    """

    def __init__(self, params: Mapping[str, Array] | None = None):
        self.params = params

    def mm(self, names, a):
        return a @ jnp.concatenate([self.params[n] for n in names], axis=-1)

    def sigmoid(self, x):
        return jax.nn.sigmoid(x)

    def tanh(self, x):
        return jnp.tanh(x)

    def relu(self, x):
        return jax.nn.relu(x)


def affine(x: Array, params: Mapping[str, Array], weights, biases) -> Array:
    """``x @ [W_1 | ... | W_k] + [b_1 | ... | b_k]``: one matmul for several gates.

    The bias rides along as one more row of the matrix, against a column of ones appended to
    ``x``: the matmul adds it, and in the backward pass its gradient comes out of the weight-
    gradient matmul, instead of two extra passes over the (large) ``[..., out]`` result.
    """
    w = jnp.concatenate([params[n] for n in weights], axis=-1)
    b = jnp.concatenate([params[n] for n in biases], axis=-1)
    ones = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    return jnp.concatenate([x, ones], axis=-1) @ jnp.concatenate([w, b[None]], axis=0)


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """Base class: options common to every cell (see the module docstring).

    Subclasses define ``param_spec``, ``step`` (reference), ``project_inputs``,
    ``recurrent_step``, ``recurrent_groups`` and ``loop_params``.

    ``inputs_only_added``: a subclass sets it to True when ``recurrent_step`` uses every entry of
    ``xin`` only as a term added to a pre-activation (never multiplied, nor read after a
    nonlinearity that bypasses ``ops``), so that gradients never need the values of ``xin``.
    The fused layer's reverse scan then writes each step's input gradient over that step's
    ``xin`` instead of into a fresh buffer. The default, False, is always correct; a wrong True
    gives wrong gradients, which the fused-versus-reference gradient tests catch. Subclasses
    inherit the value: one that overrides ``recurrent_step`` should state it again.
    """

    inputs_only_added: ClassVar[bool] = False

    name: str = "cell"
    kernel_init: Any = "uniform"
    recurrent_init: Any = "uniform"
    init_scale: float = 1.0
    dtype: Any = None
    param_dtype: Any = "float32"

    # Options a registry variant may not override (set by ``get``).
    _fixed: tuple = dataclasses.field(default=(), repr=False, compare=False)

    def __post_init__(self):
        for field in ("kernel_init", "recurrent_init"):
            value = getattr(self, field)
            if not callable(value):
                _check_choice(self.name, field, value, INIT_NAMES)
        if not isinstance(self.init_scale, (int, float)) or not self.init_scale > 0:
            raise InputError(f"{self.name}: init_scale must be a positive number, got {self.init_scale!r}")
        object.__setattr__(self, "dtype", _canonical_dtype(self.name, "dtype", self.dtype, True))
        object.__setattr__(
            self, "param_dtype", _canonical_dtype(self.name, "param_dtype", self.param_dtype, False)
        )

    # ---- parameters -------------------------------------------------------------------------

    def param_spec(self, input_size: int, hidden_size: int) -> dict[str, tuple[tuple, str]]:
        """``{name: (shape, kind)}`` with kind in input / recurrent / bias / peephole."""
        raise NotImplementedError

    def init(self, key: Array, input_size: int, hidden_size: int) -> Params:
        """Fresh parameters: a flat dict of arrays named as in the cell's equations."""
        names = self.param_names(input_size, hidden_size)
        keys = jax.random.split(key, len(names))
        return {n: self.init_param(k, n, input_size, hidden_size) for k, n in zip(keys, names)}

    def init_param(self, key: Array, name: str, input_size: int, hidden_size: int) -> Array:
        """One parameter of :meth:`init`, drawn with its own key (used by the Flax adapter)."""
        spec = self._checked_spec(input_size, hidden_size)
        if name not in spec:
            raise ValueError(f"{self.name} has no parameter {name!r}; its parameters: {', '.join(sorted(spec))}")
        shape, kind = spec[name]
        if kind == "bias":
            return jnp.full(shape, self._bias_value(name), self.param_dtype)
        spec_init = {"input": self.kernel_init, "recurrent": self.recurrent_init, "peephole": "uniform"}[kind]
        init = _make_init(spec_init, self.init_scale, int(hidden_size))
        return init(key, shape, self.param_dtype).astype(self.param_dtype)

    def _bias_value(self, name: str) -> float:
        return 0.0

    def _checked_spec(self, input_size, hidden_size) -> dict:
        for what, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"{self.name}: {what} must be a positive integer, got {value!r}")
        return self.param_spec(int(input_size), int(hidden_size))

    def param_names(self, input_size: int = 1, hidden_size: int = 1) -> tuple[str, ...]:
        return tuple(sorted(self._checked_spec(input_size, hidden_size)))

    def compute_dtype(self, params: Mapping[str, Array]):
        if self.dtype is not None:
            return self.dtype
        return jnp.result_type(*params.values())

    def cast(self, params: Mapping[str, Array]) -> Params:
        """Parameters in the compute dtype (a no-op when they already are)."""
        dtype = self.compute_dtype(params)
        return {k: v.astype(dtype) for k, v in params.items()}

    def hidden_size(self, params: Mapping[str, Array]) -> int:
        return params[self._hidden_param].shape[-1]

    _hidden_param = "W_hh"

    # ---- carry --------------------------------------------------------------------------------

    def zero_carry(self, params: Mapping[str, Array], batch_shape=()) -> Any:
        """All-zero carry for inputs with leading shape ``batch_shape``."""
        return self.zeros_carry(self.hidden_size(params), batch_shape, self.compute_dtype(params))

    def zeros_carry(self, hidden_size: int, batch_shape=(), dtype=None) -> Any:
        """All-zero carry from sizes alone (``dtype`` default: the compute or parameter dtype)."""
        dtype = dtype or self.dtype or self.param_dtype
        return self._wrap_carry(jnp.zeros(tuple(batch_shape) + (hidden_size,), dtype))

    def _wrap_carry(self, zeros: Array):
        return zeros

    def as_carry(self, carry, batch_shape, hidden_size: int, dtype):
        """``carry`` as this cell's carry type, cast to ``dtype``, shapes checked.

        A plain tuple is read in the carry type's field order: ``(c, h)`` for LSTMs, as in Flax
        (PyTorch's ``(h, c)`` must be swapped).
        """
        like = self.zeros_carry(hidden_size, batch_shape, dtype)
        leaves = jax.tree.leaves(carry)
        expected = jax.tree.leaves(like)
        want = tuple(batch_shape) + (hidden_size,)
        if len(leaves) != len(expected) or any(jnp.shape(c) != want for c in leaves):
            kind = (f"{type(like).__name__}{type(like)._fields} of arrays" if isinstance(like, tuple)
                    else "an array")
            raise ValueError(f"{self.name}: carry must be {kind} of shape {want},"
                             f" got {jax.tree.map(jnp.shape, carry)}")
        return jax.tree.unflatten(jax.tree.structure(like), [jnp.asarray(c, dtype) for c in leaves])

    @staticmethod
    def carry_h(carry) -> Array:
        """The output part of a carry."""
        return carry.h if hasattr(carry, "h") else carry

    # ---- one step ------------------------------------------------------------------------------

    def step(self, params: Mapping[str, Array], carry, x: Array):
        """Reference step ``(carry, x) -> (carry', h')``; see the subclass's equations."""
        params = self.cast(params)
        x = self._check_x(params, x)
        carry = self.as_carry(carry, x.shape[:-1], self.hidden_size(params), x.dtype)
        return self._reference_step(params, carry, x)

    def fast_step(self, params: Mapping[str, Array], carry, x: Array):
        """The layer's computation for one step (hoisted inputs, concatenated gate matmuls)."""
        params = self.cast(params)
        x = self._check_x(params, x)
        carry = self.as_carry(carry, x.shape[:-1], self.hidden_size(params), x.dtype)
        loop = {k: params[k] for k in self.loop_params}
        return self.recurrent_step(loop, Ops(params), carry, self.project_inputs(params, x))

    def _check_x(self, params, x):
        missing = sorted(set(self.param_names()) - set(params))
        if missing:
            raise ValueError(f"{self.name}: parameters are missing {', '.join(missing)}"
                             f" (were they made by another cell's init?)")
        expected = self._input_size(params)
        if x.shape[-1] != expected:
            raise ValueError(
                f"{self.name}: input feature size {x.shape[-1]} does not match the parameters'"
                f" input_size {expected}"
            )
        return x.astype(self.compute_dtype(params))

    _input_param = "W_xh"

    def _input_size(self, params) -> int:
        return params[self._input_param].shape[0]

    # ---- fast-path pieces (defined by subclasses) -------------------------------------------------

    #: Groups of recurrent matrices that multiply the same vector; each is one matmul per step.
    recurrent_groups = ()
    #: Parameters used elementwise inside the time loop (peepholes, GRU's b_hh).
    loop_params = ()

    def project_inputs(self, params: Mapping[str, Array], x: Array):
        """All input-dependent terms for inputs ``x[..., input_size]`` (any leading axes)."""
        raise NotImplementedError

    def recurrent_step(self, loop_params: Mapping[str, Array], ops: Ops, carry, xin):
        """Recurrent part of one step, given this step's slice of ``project_inputs``.

        ``loop_params`` holds the ``loop_params`` entries; all matmuls and nonlinearities go
        through ``ops`` (see :class:`Ops`).
        """
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# Tanh RNN
# --------------------------------------------------------------------------------------------

_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class SimpleRNNCell(Cell):
    r"""Elman RNN (``rnn``).

    .. math::  h' = \tanh(x W_{xh} + h W_{hh} + b_h)

    ``activation="relu"`` replaces tanh (an IRNN with ``recurrent_init`` chosen by the user).

    >>> import jax, rnn_jax
    >>> cell = rnn_jax.cells.get("rnn")
    >>> params = cell.init(jax.random.PRNGKey(0), 3, 4)
    >>> sorted(params)
    ['W_hh', 'W_xh', 'b_h']
    >>> carry, h = cell.step(params, cell.zero_carry(params, (2,)), jax.numpy.ones((2, 3)))
    >>> h.shape
    (2, 4)
    """

    activation: str = "tanh"

    inputs_only_added = True

    def __post_init__(self):
        super().__post_init__()
        _check_choice(self.name, "activation", self.activation, tuple(_ACTIVATIONS))

    recurrent_groups = (("W_hh",),)

    def param_spec(self, input_size, hidden_size):
        return {
            "W_xh": ((input_size, hidden_size), "input"),
            "W_hh": ((hidden_size, hidden_size), "recurrent"),
            "b_h": ((hidden_size,), "bias"),
        }

    def _reference_step(self, p, h, x):
        act = _ACTIVATIONS[self.activation]
        h_new = act(x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
        return h_new, h_new

    def project_inputs(self, p, x):
        return x @ p["W_xh"] + p["b_h"]

    def recurrent_step(self, lp, ops, h, xin):
        h_new = getattr(ops, self.activation)(xin + ops.mm(("W_hh",), h))
        return h_new, h_new


# --------------------------------------------------------------------------------------------
# LSTM family (Hochreiter & Schmidhuber; Jozefowicz et al. 2015; Greff et al. 2017)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    r"""LSTM and its variants (``lstm``, ``lstm_f/i/o/b``, ``lstm_peep``, ``nig`` ... ``fgr``).

    Gate order i, f, o, g (input, forget, output gates; block input g):

    .. math::

        i &= \sigma(x W_{xi} + h W_{hi} + p_i \odot c + b_i) \\
        f &= \sigma(x W_{xf} + h W_{hf} + p_f \odot c + b_f) \\
        g &= \tanh(x W_{xg} + h W_{hg} + b_g) \\
        c' &= f \odot c + i \odot g \\
        o &= \sigma(x W_{xo} + h W_{ho} + p_o \odot c' + b_o) \\
        h' &= o \odot \tanh(c')

    The peephole terms ``p_* ⊙ c`` exist only with ``peepholes=True`` (Gers & Schmidhuber;
    ``o`` looks at the new cell ``c'``, as in Greff et al.). Options (a removed gate has no
    parameters):

    * ``forget_bias``: added to ``b_f`` at init (Jozefowicz's LSTM-b uses 1.0).
    * ``input_gate=False`` → ``i = 1``; ``forget_gate=False`` → ``f = 1``;
      ``output_gate=False`` → ``o = 1``.
    * ``input_activation=False`` → ``g`` without tanh; ``output_activation=False`` →
      ``h' = o ⊙ c'`` (Greff's NIAF / NOAF).
    * ``coupled=True`` → ``f = 1 − i`` (CIFG; no forget-gate parameters).
    * ``full_gate_recurrence=True`` (FGR) → each gate ``k ∈ {i, f, o}`` also receives
      ``Σ_j j_prev R_jk`` from all gates of the previous step; the carry is then
      ``FGRCarry(c, h, i, f, o)`` and the extra matrices are named ``R_<from><to>``.

    >>> import jax, rnn_jax
    >>> cell = rnn_jax.cells.get("lstm", forget_bias=1.0)
    >>> params = cell.init(jax.random.PRNGKey(0), 3, 4)
    >>> [n for n in sorted(params) if n.startswith("b_")], float(params["b_f"][0])
    (['b_f', 'b_g', 'b_i', 'b_o'], 1.0)
    >>> carry = cell.zero_carry(params, (2,))
    >>> carry, h = cell.step(params, carry, jax.numpy.ones((2, 3)))
    >>> type(carry).__name__, h.shape
    ('LSTMCarry', (2, 4))
    """

    forget_bias: float = 0.0
    input_gate: bool = True
    forget_gate: bool = True
    output_gate: bool = True
    peepholes: bool = False
    input_activation: bool = True
    output_activation: bool = True
    coupled: bool = False
    full_gate_recurrence: bool = False

    _hidden_param = "W_hg"
    _input_param = "W_xg"

    @property
    def inputs_only_added(self):
        # Without the tanh on g, c' = f c + i (x W_xg + ...) multiplies an input term.
        return self.input_activation

    def __post_init__(self):
        super().__post_init__()
        for field in ("input_gate", "forget_gate", "output_gate", "peepholes", "input_activation",
                      "output_activation", "coupled", "full_gate_recurrence"):
            if not isinstance(getattr(self, field), bool):
                raise InputError(f"{self.name}: {field} must be True or False, got {getattr(self, field)!r}")
        if not isinstance(self.forget_bias, (int, float)):
            raise InputError(f"{self.name}: forget_bias must be a number, got {self.forget_bias!r}")
        if self.coupled and not (self.input_gate and self.forget_gate):
            raise InputError(f"{self.name}: coupled=True (f = 1 - i) needs input_gate=True and forget_gate=True")
        if self.forget_bias and (not self.forget_gate or self.coupled):
            raise InputError(f"{self.name}: forget_bias={self.forget_bias} needs a forget gate with its own parameters"
                             " (forget_gate=True, coupled=False)")
        if self.full_gate_recurrence and not (self.input_gate and self.forget_gate and self.output_gate
                                              and not self.coupled):
            raise InputError(f"{self.name}: full_gate_recurrence=True needs all three gates (i, f, o)"
                             " and coupled=False")

    # Gates with their own parameters, in the fixed order i, f, o, then the block input g.
    @property
    def gates(self) -> tuple[str, ...]:
        gates = []
        if self.input_gate:
            gates.append("i")
        if self.forget_gate and not self.coupled:
            gates.append("f")
        if self.output_gate:
            gates.append("o")
        return tuple(gates) + ("g",)

    @property
    def peephole_gates(self) -> tuple[str, ...]:
        return tuple(g for g in self.gates if g != "g") if self.peepholes else ()

    @property
    def recurrent_groups(self):
        groups = [tuple(f"W_h{g}" for g in self.gates)]
        if self.full_gate_recurrence:
            groups += [tuple(f"R_{src}{dst}" for dst in "ifo") for src in "ifo"]
        return tuple(groups)

    @property
    def loop_params(self):
        return tuple(f"p_{g}" for g in self.peephole_gates)

    def param_spec(self, input_size, hidden_size):
        spec = {}
        for g in self.gates:
            spec[f"W_x{g}"] = ((input_size, hidden_size), "input")
            spec[f"W_h{g}"] = ((hidden_size, hidden_size), "recurrent")
            spec[f"b_{g}"] = ((hidden_size,), "bias")
        for g in self.peephole_gates:
            spec[f"p_{g}"] = ((hidden_size,), "peephole")
        if self.full_gate_recurrence:
            for src in "ifo":
                for dst in "ifo":
                    spec[f"R_{src}{dst}"] = ((hidden_size, hidden_size), "recurrent")
        return spec

    def _bias_value(self, name):
        return float(self.forget_bias) if name == "b_f" else 0.0

    def _wrap_carry(self, z):
        if self.full_gate_recurrence:
            return FGRCarry(z, z, z, z, z)
        return LSTMCarry(z, z)

    def _update(self, pre: Array, c: Array, lp: Mapping[str, Array], ops: Ops):
        """Gate nonlinearities and the cell update, shared by the reference and fast paths.

        ``pre`` holds the pre-activations (without peephole terms) of ``self.gates``,
        concatenated in that order along the last axis.
        """
        gates = self.gates
        n_sig = len(gates) - 1
        if self.peepholes:
            parts = dict(zip(gates, _split(pre, len(gates))))
            act = {}
            for k in ("i", "f"):
                if k in parts:
                    act[k] = ops.sigmoid(parts[k] + lp[f"p_{k}"] * c)
        else:
            # One nonlinearity over the contiguous block of sigmoid gates.
            hidden = pre.shape[-1] // len(gates)
            sigs = _split(ops.sigmoid(pre[..., : n_sig * hidden]), n_sig) if n_sig else []
            act = dict(zip(gates[:-1], sigs))
            parts = {"g": pre[..., n_sig * hidden:]}
        i = act.get("i")
        f = 1.0 - i if self.coupled else act.get("f")
        g = ops.tanh(parts["g"]) if self.input_activation else parts["g"]
        c_new = (c if f is None else f * c) + (g if i is None else i * g)
        if self.peepholes and "o" in parts:
            act["o"] = ops.sigmoid(parts["o"] + lp["p_o"] * c_new)
        o = act.get("o")
        y = ops.tanh(c_new) if self.output_activation else c_new
        h_new = y if o is None else o * y
        if self.full_gate_recurrence:
            return FGRCarry(c_new, h_new, i, f, o), h_new
        return LSTMCarry(c_new, h_new), h_new

    def _reference_step(self, p, carry, x):
        c, h = carry.c, carry.h
        pre = {g: x @ p[f"W_x{g}"] + h @ p[f"W_h{g}"] + p[f"b_{g}"] for g in self.gates}
        if self.full_gate_recurrence:
            for dst in "ifo":
                for src in "ifo":
                    pre[dst] = pre[dst] + getattr(carry, src) @ p[f"R_{src}{dst}"]
        loop = {k: p[k] for k in self.loop_params}
        pre_all = jnp.concatenate([pre[g] for g in self.gates], axis=-1)
        return self._update(pre_all, c, loop, Ops(p))

    def project_inputs(self, p, x):
        return affine(x, p, [f"W_x{g}" for g in self.gates], [f"b_{g}" for g in self.gates])

    def recurrent_step(self, lp, ops, carry, xin):
        groups = self.recurrent_groups
        pre = xin + ops.mm(groups[0], carry.h)
        if self.full_gate_recurrence:
            r = sum(ops.mm(group, getattr(carry, src)) for src, group in zip("ifo", groups[1:]))
            hidden = r.shape[-1] // 3
            pre = jnp.concatenate([pre[..., : 3 * hidden] + r, pre[..., 3 * hidden:]], axis=-1)
        return self._update(pre, carry.c, lp, ops)


# --------------------------------------------------------------------------------------------
# GRU (Cho et al. 2014)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    r"""Gated recurrent unit (``gru``), in the lecture's form by default.

    .. math::

        r &= \sigma(x W_{xr} + h W_{hr} + b_r) \\
        z &= \sigma(x W_{xz} + h W_{hz} + b_z) \\
        \tilde h &= \tanh(x W_{xh} + (r \odot h) W_{hh} + b_h) \\
        h' &= z \odot h + (1 - z) \odot \tilde h

    ``z`` keeps the old state (``z = 1`` copies ``h``). The reset is applied *before* the
    recurrent matmul. ``reset_after=True`` gives the cuDNN / Flax / PyTorch form, with one more
    bias ``b_hh``:  ``h̃ = tanh(x W_xh + b_h + r ⊙ (h W_hh + b_hh))``; it needs one recurrent
    matmul per step instead of two, so it is faster.

    >>> import jax, rnn_jax
    >>> cell = rnn_jax.cells.get("gru", reset_after=True)
    >>> sorted(cell.init(jax.random.PRNGKey(0), 3, 4))
    ['W_hh', 'W_hr', 'W_hz', 'W_xh', 'W_xr', 'W_xz', 'b_h', 'b_hh', 'b_r', 'b_z']
    """

    reset_after: bool = False

    inputs_only_added = True

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.reset_after, bool):
            raise InputError(f"{self.name}: reset_after must be True or False, got {self.reset_after!r}")

    @property
    def recurrent_groups(self):
        if self.reset_after:
            return (("W_hr", "W_hz", "W_hh"),)
        return (("W_hr", "W_hz"), ("W_hh",))

    @property
    def loop_params(self):
        return ("b_hh",) if self.reset_after else ()

    def param_spec(self, input_size, hidden_size):
        spec = {}
        for g in "rzh":
            spec[f"W_x{g}"] = ((input_size, hidden_size), "input")
            spec[f"W_h{g}"] = ((hidden_size, hidden_size), "recurrent")
            spec[f"b_{g}"] = ((hidden_size,), "bias")
        if self.reset_after:
            spec["b_hh"] = ((hidden_size,), "bias")
        return spec

    def _reference_step(self, p, h, x):
        r = jax.nn.sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        z = jax.nn.sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        if self.reset_after:
            h_tilde = jnp.tanh(x @ p["W_xh"] + p["b_h"] + r * (h @ p["W_hh"] + p["b_hh"]))
        else:
            h_tilde = jnp.tanh(x @ p["W_xh"] + (r * h) @ p["W_hh"] + p["b_h"])
        h_new = z * h + (1.0 - z) * h_tilde
        return h_new, h_new

    def project_inputs(self, p, x):
        return affine(x, p, ["W_xr", "W_xz", "W_xh"], ["b_r", "b_z", "b_h"])

    def recurrent_step(self, lp, ops, h, xin):
        xr, xz, xh = _split(xin, 3)
        if self.reset_after:
            ur, uz, uh = _split(ops.mm(("W_hr", "W_hz", "W_hh"), h), 3)
            r, z = ops.sigmoid(xr + ur), ops.sigmoid(xz + uz)
            h_tilde = ops.tanh(xh + r * (uh + lp["b_hh"]))
        else:
            ur, uz = _split(ops.mm(("W_hr", "W_hz"), h), 2)
            r, z = ops.sigmoid(xr + ur), ops.sigmoid(xz + uz)
            h_tilde = ops.tanh(xh + ops.mm(("W_hh",), r * h))
        h_new = z * h + (1.0 - z) * h_tilde
        return h_new, h_new


# --------------------------------------------------------------------------------------------
# MUT1-3 (Jozefowicz, Zaremba & Sutskever 2015, section 3.1)
# --------------------------------------------------------------------------------------------

INPUT_TERMS = ("identity", "linear")


@dataclasses.dataclass(frozen=True)
class _MUTCell(Cell):
    """Shared parts of the three architectures found by Jozefowicz et al.'s search.

    In all three, ``z`` weights the *new* candidate: ``h' = h̃ ⊙ z + h ⊙ (1 − z)``
    (the opposite of the GRU's ``z``).
    """

    input_term: str = "identity"

    #: whether the equations use the raw input x (tanh(x) or x) next to hidden-size terms.
    _raw_input = True

    def __post_init__(self):
        super().__post_init__()
        _check_choice(self.name, "input_term", self.input_term, INPUT_TERMS)

    def _extra_spec(self, input_size, hidden_size):
        if not self._raw_input:
            return {}
        if self.input_term == "linear":
            return {"W_xx": ((input_size, hidden_size), "input"), "b_x": ((hidden_size,), "bias")}
        if input_size != hidden_size:
            raise InputError(
                f"{self.name} adds the raw input x to hidden-size terms, so with input_term='identity'"
                f" it needs input_size == hidden_size (got input_size={input_size},"
                f" hidden_size={hidden_size}). Embed or project the inputs to the hidden size, or use"
                " input_term='linear' to learn a projection x W_xx + b_x."
            )
        return {}

    def _x_tilde(self, p, x):
        """The input as the raw-input terms see it: ``x`` or ``x W_xx + b_x``."""
        if self.input_term == "linear":
            return x @ p["W_xx"] + p["b_x"]
        if x.shape[-1] != p["W_hh"].shape[0]:
            raise ValueError(
                f"{self.name} with input_term='identity' needs input size == hidden size;"
                f" got inputs of size {x.shape[-1]} and hidden size {p['W_hh'].shape[0]}"
            )
        return x

    def _mix(self, h, h_tilde, z):
        return h_tilde * z + h * (1.0 - z)


@dataclasses.dataclass(frozen=True)
class MUT1Cell(_MUTCell):
    r"""MUT1 (``mut1``).

    .. math::

        z &= \sigma(x W_{xz} + b_z) \\
        r &= \sigma(x W_{xr} + h W_{hr} + b_r) \\
        h' &= \tanh((r \odot h) W_{hh} + \tanh(x) + b_h) \odot z + h \odot (1 - z)

    ``tanh(x)`` needs ``input_size == hidden_size`` unless ``input_term="linear"``, which uses
    ``tanh(x W_xx + b_x)`` instead.

    >>> import jax, rnn_jax
    >>> sorted(rnn_jax.cells.get("mut1").init(jax.random.PRNGKey(0), 4, 4))
    ['W_hh', 'W_hr', 'W_xr', 'W_xz', 'b_h', 'b_r', 'b_z']
    >>> rnn_jax.cells.get("mut1").init(jax.random.PRNGKey(0), 3, 4)
    Traceback (most recent call last):
    ...
    rnn_jax.errors.InputError: mut1 adds the raw input x ... needs input_size == hidden_size (got input_size=3, ...
    """

    _input_param = "W_xz"
    recurrent_groups = (("W_hr",), ("W_hh",))

    def param_spec(self, input_size, hidden_size):
        spec = {
            "W_xz": ((input_size, hidden_size), "input"),
            "b_z": ((hidden_size,), "bias"),
            "W_xr": ((input_size, hidden_size), "input"),
            "W_hr": ((hidden_size, hidden_size), "recurrent"),
            "b_r": ((hidden_size,), "bias"),
            "W_hh": ((hidden_size, hidden_size), "recurrent"),
            "b_h": ((hidden_size,), "bias"),
        }
        spec.update(self._extra_spec(input_size, hidden_size))
        return spec

    def _reference_step(self, p, h, x):
        z = jax.nn.sigmoid(x @ p["W_xz"] + p["b_z"])
        r = jax.nn.sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        h_tilde = jnp.tanh((r * h) @ p["W_hh"] + jnp.tanh(self._x_tilde(p, x)) + p["b_h"])
        h_new = self._mix(h, h_tilde, z)
        return h_new, h_new

    def project_inputs(self, p, x):
        # z depends on x only, so it is computed for all steps before the loop.
        xz, xr = _split(affine(x, p, ["W_xz", "W_xr"], ["b_z", "b_r"]), 2)
        return jax.nn.sigmoid(xz), xr, jnp.tanh(self._x_tilde(p, x)) + p["b_h"]

    def recurrent_step(self, lp, ops, h, xin):
        z, xr, xh = xin
        r = ops.sigmoid(xr + ops.mm(("W_hr",), h))
        h_new = self._mix(h, ops.tanh(ops.mm(("W_hh",), r * h) + xh), z)
        return h_new, h_new


@dataclasses.dataclass(frozen=True)
class MUT2Cell(_MUTCell):
    r"""MUT2 (``mut2``).

    .. math::

        z &= \sigma(x W_{xz} + h W_{hz} + b_z) \\
        r &= \sigma(x + h W_{hr} + b_r) \\
        h' &= \tanh((r \odot h) W_{hh} + x W_{xh} + b_h) \odot z + h \odot (1 - z)

    The raw ``x`` in ``r`` needs ``input_size == hidden_size`` unless ``input_term="linear"``
    (``x W_xx + b_x`` instead).

    >>> import jax, rnn_jax
    >>> sorted(rnn_jax.cells.get("mut2", input_term="linear").init(jax.random.PRNGKey(0), 3, 4))
    ['W_hh', 'W_hr', 'W_hz', 'W_xh', 'W_xx', 'W_xz', 'b_h', 'b_r', 'b_x', 'b_z']
    """

    _input_param = "W_xz"
    recurrent_groups = (("W_hz", "W_hr"), ("W_hh",))

    inputs_only_added = True  # x W_xz, x W_xh and x are added to pre-activations

    def param_spec(self, input_size, hidden_size):
        spec = {
            "W_xz": ((input_size, hidden_size), "input"),
            "W_hz": ((hidden_size, hidden_size), "recurrent"),
            "b_z": ((hidden_size,), "bias"),
            "W_hr": ((hidden_size, hidden_size), "recurrent"),
            "b_r": ((hidden_size,), "bias"),
            "W_hh": ((hidden_size, hidden_size), "recurrent"),
            "W_xh": ((input_size, hidden_size), "input"),
            "b_h": ((hidden_size,), "bias"),
        }
        spec.update(self._extra_spec(input_size, hidden_size))
        return spec

    def _reference_step(self, p, h, x):
        z = jax.nn.sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
        r = jax.nn.sigmoid(self._x_tilde(p, x) + h @ p["W_hr"] + p["b_r"])
        h_tilde = jnp.tanh((r * h) @ p["W_hh"] + x @ p["W_xh"] + p["b_h"])
        h_new = self._mix(h, h_tilde, z)
        return h_new, h_new

    def project_inputs(self, p, x):
        zh = affine(x, p, ["W_xz", "W_xh"], ["b_z", "b_h"])
        return zh, self._x_tilde(p, x) + p["b_r"]

    def recurrent_step(self, lp, ops, h, xin):
        zh, xr = xin
        xz, xh = _split(zh, 2)
        uz, ur = _split(ops.mm(("W_hz", "W_hr"), h), 2)
        z = ops.sigmoid(xz + uz)
        r = ops.sigmoid(xr + ur)
        h_new = self._mix(h, ops.tanh(ops.mm(("W_hh",), r * h) + xh), z)
        return h_new, h_new


@dataclasses.dataclass(frozen=True)
class MUT3Cell(_MUTCell):
    r"""MUT3 (``mut3``).

    .. math::

        z &= \sigma(x W_{xz} + \tanh(h) W_{hz} + b_z) \\
        r &= \sigma(x W_{xr} + h W_{hr} + b_r) \\
        h' &= \tanh((r \odot h) W_{hh} + x W_{xh} + b_h) \odot z + h \odot (1 - z)

    MUT3 uses no raw input term, so any input size works (``input_term`` has no effect).

    >>> import jax, rnn_jax
    >>> len(rnn_jax.cells.get("mut3").init(jax.random.PRNGKey(0), 3, 4))
    9
    """

    inputs_only_added = True
    _raw_input = False
    _input_param = "W_xz"
    recurrent_groups = (("W_hz",), ("W_hr",), ("W_hh",))

    def param_spec(self, input_size, hidden_size):
        spec = {}
        for g in "zrh":
            spec[f"W_x{g}"] = ((input_size, hidden_size), "input")
            spec[f"W_h{g}"] = ((hidden_size, hidden_size), "recurrent")
            spec[f"b_{g}"] = ((hidden_size,), "bias")
        return spec

    def _reference_step(self, p, h, x):
        z = jax.nn.sigmoid(x @ p["W_xz"] + jnp.tanh(h) @ p["W_hz"] + p["b_z"])
        r = jax.nn.sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
        h_tilde = jnp.tanh((r * h) @ p["W_hh"] + x @ p["W_xh"] + p["b_h"])
        h_new = self._mix(h, h_tilde, z)
        return h_new, h_new

    def project_inputs(self, p, x):
        return affine(x, p, ["W_xz", "W_xr", "W_xh"], ["b_z", "b_r", "b_h"])

    def recurrent_step(self, lp, ops, h, xin):
        xz, xr, xh = _split(xin, 3)
        z = ops.sigmoid(xz + ops.mm(("W_hz",), ops.tanh(h)))
        r = ops.sigmoid(xr + ops.mm(("W_hr",), h))
        h_new = self._mix(h, ops.tanh(ops.mm(("W_hh",), r * h) + xh), z)
        return h_new, h_new


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_PEEP = {"peepholes": True}

# name -> (class, fixed options, one-line description)
_REGISTRY: dict[str, tuple[type, dict, str]] = {
    "rnn": (SimpleRNNCell, {}, "Elman RNN, h' = tanh(x W_xh + h W_hh + b_h)"),
    "lstm": (LSTMCell, {}, "LSTM without peepholes (gate order i, f, o, g)"),
    "lstm_f": (LSTMCell, {"forget_gate": False}, "Jozefowicz LSTM-f: no forget gate (f = 1)"),
    "lstm_i": (LSTMCell, {"input_gate": False}, "Jozefowicz LSTM-i: no input gate (i = 1)"),
    "lstm_o": (LSTMCell, {"output_gate": False}, "Jozefowicz LSTM-o: no output gate (o = 1)"),
    "lstm_b": (LSTMCell, {"forget_bias": 1.0}, "Jozefowicz LSTM-b: forget-gate bias initialised to 1"),
    "lstm_peep": (LSTMCell, dict(_PEEP), "Greff's vanilla LSTM: with peepholes"),
    "nig": (LSTMCell, {**_PEEP, "input_gate": False}, "Greff NIG: vanilla without input gate"),
    "nfg": (LSTMCell, {**_PEEP, "forget_gate": False}, "Greff NFG: vanilla without forget gate"),
    "nog": (LSTMCell, {**_PEEP, "output_gate": False}, "Greff NOG: vanilla without output gate"),
    "niaf": (LSTMCell, {**_PEEP, "input_activation": False},
             "Greff NIAF: vanilla without input activation (g linear)"),
    "noaf": (LSTMCell, {**_PEEP, "output_activation": False},
             "Greff NOAF: vanilla without output activation (h = o * c)"),
    "np": (LSTMCell, {"peepholes": False}, "Greff NP: vanilla without peepholes (same as lstm)"),
    "cifg": (LSTMCell, {**_PEEP, "coupled": True}, "Greff CIFG: coupled input and forget gate (f = 1 - i)"),
    "fgr": (LSTMCell, {**_PEEP, "full_gate_recurrence": True},
            "Greff FGR: vanilla plus recurrence between all gates"),
    "gru": (GRUCell, {}, "GRU, reset before the recurrent matmul (reset_after=True: cuDNN/Flax form)"),
    "mut1": (MUT1Cell, {}, "Jozefowicz MUT1"),
    "mut2": (MUT2Cell, {}, "Jozefowicz MUT2"),
    "mut3": (MUT3Cell, {}, "Jozefowicz MUT3"),
    # Defined in rnn_jax.search.cell (imported on first use: that module builds on this one).
    "recipe": ("rnn_jax.search.cell:RecipeCell", {},
               "a cell from a NAS-Bench-NLP recipe: recipe:path=cell.json (or recipe={...})"),
}


# Entries that build a cell only from options (get("recipe", path=...)): not in names().
_NEEDS_OPTIONS = ("recipe",)


def names() -> tuple[str, ...]:
    """The registered cells that ``get(name)`` builds without options (every hand-written cell).
    ``"recipe"`` (a cell from a recipe, :mod:`rnn_jax.search.cell`) is registered too, but needs
    ``path=`` or ``recipe=``; :func:`describe` lists it."""
    return tuple(n for n in _REGISTRY if n not in _NEEDS_OPTIONS)


def options(name: str) -> tuple[str, ...]:
    """The options ``get(name, ...)`` accepts."""
    cls, fixed, _ = _lookup(name)
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.init and f.name not in ("name", "_fixed") and f.name not in fixed)


def describe() -> dict[str, str]:
    """``{name: one-line description}`` for every registered cell."""
    return {name: desc for name, (_, _, desc) in _REGISTRY.items()}


def _lookup(name):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise InputError(f"unknown cell {name!r}{hint}; registered cells: {', '.join(_REGISTRY)}")
    cls, fixed, desc = _REGISTRY[name]
    if isinstance(cls, str):
        import importlib
        module, _, attr = cls.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    return cls, fixed, desc


def get(name: str | Cell, **opts) -> Cell:
    """The cell registered as ``name``, configured with ``opts``.

    Unknown names and options raise :class:`~rnn_jax.errors.InputError` listing the valid ones; options that define a
    named variant (``forget_gate`` for ``lstm_f``, ...) cannot be overridden.

    >>> import rnn_jax
    >>> rnn_jax.cells.get("gru", reset_after=True).reset_after
    True
    >>> rnn_jax.cells.get("lstm", reset_after=True)
    Traceback (most recent call last):
    ...
    rnn_jax.errors.InputError: lstm: unknown option 'reset_after'; valid options: kernel_init, recurrent_init, ...
    """
    if isinstance(name, Cell):
        allowed = [f.name for f in dataclasses.fields(name) if f.init and f.name not in ("name", "_fixed")]
        for key in opts:
            if key in name._fixed:
                raise InputError(f"{name.name}: option {key!r} is fixed by this variant")
            if key not in allowed:
                raise InputError(f"{name.name}: unknown option {key!r}; valid options: {', '.join(allowed)}")
        return dataclasses.replace(name, **opts) if opts else name
    cls, fixed, _ = _lookup(name)
    allowed = options(name)
    for key in opts:
        if key in fixed:
            raise InputError(f"{name}: option {key!r} is fixed to {fixed[key]!r} by this variant;"
                             f" use a different cell name (e.g. 'lstm') to set it")
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{name}: unknown option {key!r}{hint}; valid options: {', '.join(allowed)}")
    return cls(name=name, **fixed, **opts, _fixed=tuple(fixed))


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"gru"`` or ``"gru:reset_after=True"`` (options separated by ``;``) -> ``(name, options)``.

    Option values are Python literals (``True``, ``1.0``, ``'orthogonal'``) or bare strings. The
    name and options are validated as in :func:`get`.

    >>> parse_spec("lstm:forget_bias=1.0;peepholes=True")
    ('lstm', {'forget_bias': 1.0, 'peepholes': True})
    """
    import ast
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a cell spec is a non-empty string like 'gru:reset_after=True', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    opts = {}
    for item in filter(None, rest.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"invalid cell spec {spec!r}: options are key=value, e.g. gru:reset_after=True")
        try:
            opts[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            opts[key.strip()] = value.strip()
    get(name, **opts)  # validates the name and the options
    return name, opts


def from_spec(spec: str, **defaults) -> Cell:
    """The cell a spec string names (see :func:`parse_spec`); ``defaults`` fill options the spec
    does not set (the spec wins)."""
    name, opts = parse_spec(spec)
    return get(name, **{**defaults, **opts})
