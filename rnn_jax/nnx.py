"""Thin Flax NNX adapters (the ``flax.nnx`` counterpart of :mod:`rnn_jax.nn`).

* :class:`RecurrentCell`: any registered cell (a name, a spec such as ``"mut1:input_term=linear"``
  or a :class:`rnn_jax.cells.Cell`) as an ``nnx.RNNCellBase``, usable inside ``nnx.RNN`` and
  ``nnx.Bidirectional``. Its parameters are ``nnx.Param`` attributes named as the cell's
  equations (``W_xi``, ``W_hi``, ``b_i``, ...), drawn with the cell's own ``init`` from the
  ``params`` stream of an ``nnx.Rngs``; :meth:`RecurrentCell.rnn_params` returns them as the
  ``cell.init`` dict. Inside ``nnx.RNN`` the step is the cell's reference ``step`` (NNX scans
  it); for speed use :class:`RecurrentStack`.
* :class:`RecurrentStack`: a stacked (optionally bidirectional or residual) recurrent layer on
  :func:`rnn_jax.layers.stacked_rnn` (hoisted inputs, fused backward pass). Its state is
  ``layer_0``, ``layer_1``, ... (each with ``fw`` and ``bw`` when bidirectional), and
  :meth:`RecurrentStack.rnn_params` returns the list :func:`rnn_jax.layers.init_stack` makes.

>>> import jax.numpy as jnp
>>> from flax import nnx
>>> from rnn_jax.nnx import RecurrentCell, RecurrentStack
>>> model = nnx.RNN(RecurrentCell("gru:reset_after=True", 3, 8, rngs=nnx.Rngs(0)))
>>> sorted(nnx.state(model.cell, nnx.Param))[:3], model(jnp.ones((2, 5, 3))).shape
(['W_hh', 'W_hr', 'W_hz'], (2, 5, 8))
>>> stack = RecurrentStack("lstm", 3, 8, num_layers=2, dropout_rate=0.1, rngs=nnx.Rngs(0))
>>> stack.eval()  # no dropout; stack.train() turns it back on
>>> carries, hs = stack(jnp.ones((2, 5, 3)), seq_lengths=jnp.array([5, 3]))
>>> hs.shape, len(carries), carries[1].h.shape
((2, 5, 8), 2, (2, 8))
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from rnn_jax import cells as cells_lib
from rnn_jax import layers

__all__ = ["RecurrentCell", "RecurrentStack"]


def _resolve(cell: str | cells_lib.Cell, options: Mapping[str, Any] | None) -> cells_lib.Cell:
    """A cell from a registered name, a spec string or a Cell, with ``options`` applied.

    Options given both in a spec and in ``options`` take the value from ``options``. Unknown
    names and options raise the registry's ``ValueError``.
    """
    options = dict(options or {})
    if isinstance(cell, cells_lib.Cell):
        return cells_lib.get(cell, **options)
    name, spec_options = cells_lib.parse_spec(cell)
    return cells_lib.get(name, **{**spec_options, **options})


class RecurrentCell(nnx.RNNCellBase):
    """A registered rnn_jax cell as a Flax NNX RNN cell.

    Args:
      cell: a registered name (``rnn_jax.cells.names()``), a spec such as
        ``"lstm:forget_bias=1.0"`` (see :func:`rnn_jax.cells.parse_spec`) or a ``Cell``.
      in_features: input size.
      hidden_features: hidden size.
      options: options for :func:`rnn_jax.cells.get` (e.g. ``{"forget_bias": 1.0}``); they win
        over options set in a spec.
      rngs: draws the parameters with ``cell.init(rngs.params(), in_features, hidden_features)``.
      params: existing parameters (a ``cell.init`` dict) to use instead of drawing new ones.

    Attributes:
      cell: the configured :class:`rnn_jax.cells.Cell`.
      param_names: the parameter names, sorted (each is an ``nnx.Param`` attribute).
    """

    def __init__(self, cell: str | cells_lib.Cell, in_features: int, hidden_features: int, *,
                 options: Mapping[str, Any] | None = None, rngs: nnx.Rngs | None = None,
                 params: Mapping[str, Any] | None = None):
        self.cell = _resolve(cell, options)
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.cell.param_names(in_features, hidden_features)  # validates the sizes
        if params is None:
            if rngs is None:
                raise ValueError(f"{self.cell.name}: pass rngs= to initialise the parameters,"
                                 f" or params= to use existing ones")
            params = self.cell.init(rngs.params(), in_features, hidden_features)
        else:
            _check_params(self.cell, params, self.cell.param_spec(in_features, hidden_features))
        self.param_names = tuple(sorted(params))
        for name in self.param_names:
            if hasattr(self, name):
                raise ValueError(f"{self.cell.name}: parameter name {name!r} clashes with an attribute")
            setattr(self, name, nnx.Param(jnp.asarray(params[name])))

    def rnn_params(self) -> dict[str, jax.Array]:
        """The parameters as a plain ``cell.init`` dict (for :mod:`rnn_jax.layers`)."""
        return {name: getattr(self, name).get_value() for name in self.param_names}

    def __call__(self, carry, inputs):
        """One step: ``(carry, inputs[..., in_features]) -> (carry', h')`` (the reference step)."""
        return self.cell.step(self.rnn_params(), carry, inputs)

    def initialize_carry(self, input_shape: tuple[int, ...], rngs: nnx.Rngs | nnx.RngStream | None = None,
                         carry_init=None):
        """The initial carry for inputs of shape ``input_shape`` (batch axes, then features).

        Args:
          input_shape: shape of one step's inputs; all axes but the last are batch axes.
          rngs: the ``carry`` stream (or an ``nnx.Rngs``), used only with ``carry_init``.
          carry_init: optional initializer ``f(key, shape, dtype)`` for every carry array
            (default: zeros).

        Returns:
          The cell's carry (an array, or e.g. ``LSTMCarry(c, h)``) in the compute dtype.
        """
        zeros = self.cell.zero_carry(self.rnn_params(), tuple(input_shape[:-1]))
        if carry_init is None:
            return zeros
        if rngs is None:
            raise ValueError("initialize_carry: carry_init needs rngs (an nnx.Rngs or RngStream)")
        stream = rngs.carry if isinstance(rngs, nnx.Rngs) else rngs
        return jax.tree.map(lambda z: carry_init(stream(), z.shape, z.dtype).astype(z.dtype), zeros)

    @property
    def num_feature_axes(self) -> int:
        return 1


def _check_params(cell: cells_lib.Cell, params: Mapping[str, Any], spec: Mapping[str, tuple]) -> None:
    if set(params) != set(spec):
        raise ValueError(f"{cell.name}: params have names {sorted(params)}, expected {sorted(spec)}")
    for name, (shape, _) in spec.items():
        if tuple(jnp.shape(params[name])) != tuple(shape):
            raise ValueError(f"{cell.name}: parameter {name} has shape {jnp.shape(params[name])},"
                             f" expected {tuple(shape)}")


class _Directions(nnx.Module):
    """One bidirectional layer: a forward and a backward parameter set."""

    def __init__(self, fw: RecurrentCell, bw: RecurrentCell):
        self.fw = fw
        self.bw = bw

    def rnn_params(self) -> dict[str, dict[str, jax.Array]]:
        return {"fw": self.fw.rnn_params(), "bw": self.bw.rnn_params()}


class RecurrentStack(nnx.Module):
    """``num_layers`` recurrent layers of one registered cell, on rnn_jax's fast layer.

    Dropout between layers follows ``nnx.Dropout``'s conventions: it is on while
    ``deterministic`` is False (``module.train()``), off after ``module.eval()`` or
    ``nnx.view(module, deterministic=True)``, and draws its key from the ``dropout`` stream of the
    constructor's ``rngs`` (or of the call's ``rngs``). The mask is
    :func:`rnn_jax.layers.stacked_rnn`'s, so a given key gives the same result as that function.

    Args:
      cell: a registered name, a spec string or a ``Cell`` (as in :class:`RecurrentCell`).
      in_features: input size of the first layer.
      hidden_features: hidden size of every layer.
      num_layers: number of layers.
      options: options for :func:`rnn_jax.cells.get`.
      dropout_rate: dropout between layers (not after the last), in ``[0, 1)``.
      residual: add each layer's input to its output where the sizes match.
      bidirectional: forward and backward directions per layer, outputs concatenated.
      impl: :func:`rnn_jax.layers.rnn`'s ``impl`` (``"fused"``, ``"autodiff"``, ``"reference"``).
      unroll: ``lax.scan`` unroll factor.
      deterministic: initial value of the dropout switch (False: dropout on, as ``nnx.Dropout``).
      rngs: draws the parameters with ``layers.init_stack(cell, rngs.params(), ...)`` and forks
        the ``dropout`` stream.
      params: existing parameters (an :func:`rnn_jax.layers.init_stack` list) instead.
    """

    def __init__(self, cell: str | cells_lib.Cell, in_features: int, hidden_features: int, *,
                 num_layers: int = 1, options: Mapping[str, Any] | None = None,
                 dropout_rate: float = 0.0, residual: bool = False, bidirectional: bool = False,
                 impl: str = "fused", unroll: int = 1, deterministic: bool = False,
                 rngs: nnx.Rngs | None = None, params: Sequence[Any] | None = None):
        self.cell = _resolve(cell, options)
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {dropout_rate!r}")
        if impl not in layers.IMPLS:
            raise ValueError(f"invalid impl={impl!r}; allowed values: {', '.join(map(repr, layers.IMPLS))}")
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.num_layers = num_layers
        self.dropout_rate = dropout_rate
        self.residual = residual
        self.bidirectional = bidirectional
        self.impl = impl
        self.unroll = unroll
        self.deterministic = deterministic
        if params is None:
            if rngs is None:
                raise ValueError("RecurrentStack: pass rngs= to initialise the parameters,"
                                 " or params= to use existing ones")
            params = layers.init_stack(self.cell, rngs.params(), in_features, hidden_features,
                                       num_layers, bidirectional=bidirectional)
        elif len(params) != num_layers:
            raise ValueError(f"RecurrentStack: got params for {len(params)} layers, num_layers={num_layers}")
        self.rngs = rngs.dropout.fork() if rngs is not None and dropout_rate > 0 else nnx.data(None)
        for k, layer in enumerate(params):
            size = in_features if k == 0 else hidden_features * (2 if bidirectional else 1)

            def make(p, size=size):
                return RecurrentCell(self.cell, size, hidden_features, params=p)

            if bidirectional:
                if not isinstance(layer, Mapping) or set(layer) != {"fw", "bw"}:
                    raise ValueError(f"RecurrentStack: bidirectional layer {k} needs"
                                     f" {{'fw': ..., 'bw': ...}}")
                module = _Directions(make(layer["fw"]), make(layer["bw"]))
            else:
                module = make(layer)
            setattr(self, f"layer_{k}", module)

    def rnn_params(self) -> list:
        """The parameters as the list :func:`rnn_jax.layers.init_stack` makes."""
        return [getattr(self, f"layer_{k}").rnn_params() for k in range(self.num_layers)]

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _dropout_key(self, rngs) -> jax.Array:
        rngs = self.rngs if rngs is None else rngs
        if rngs is None:
            raise ValueError("RecurrentStack: dropout is on (deterministic=False) but no rngs were given;"
                             " pass rngs= to the constructor or the call, or call .eval()")
        if isinstance(rngs, nnx.Rngs):
            return rngs.dropout()
        if isinstance(rngs, nnx.RngStream):
            return rngs()
        return jnp.asarray(rngs)

    def __call__(self, xs, carries=None, *, seq_lengths=None, resets=None,
                 deterministic: bool | None = None, rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None):
        """Runs the stack over ``xs`` ``[B, T, in_features]``.

        Args:
          xs: the inputs.
          carries: initial carries, one per layer (a ``(fw, bw)`` pair when bidirectional);
            default zeros.
          seq_lengths: ``[B]`` valid lengths (outputs past them are zeros, carries stop there).
          resets: ``[B, T]`` document starts, as in :func:`rnn_jax.layers.rnn`.
          deterministic: overrides the module's ``deterministic`` for this call.
          rngs: an ``nnx.Rngs``, ``RngStream`` or key for dropout, instead of the module's stream.

        Returns:
          ``(final_carries, hs)`` as :func:`rnn_jax.layers.stacked_rnn`: one final carry per
          layer and the last layer's outputs ``[B, T, H]`` (``2H`` when bidirectional).
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        use_dropout = self.dropout_rate > 0 and not deterministic and self.num_layers > 1
        key = self._dropout_key(rngs) if use_dropout else None
        return layers.stacked_rnn(self.cell, self.rnn_params(), jnp.asarray(xs), carries,
                                  seq_lengths=seq_lengths, resets=resets,
                                  dropout_rate=self.dropout_rate, dropout_key=key,
                                  residual=self.residual, bidirectional=self.bidirectional,
                                  impl=self.impl, unroll=self.unroll)
