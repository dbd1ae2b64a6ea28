"""Thin Flax linen adapters.

* :class:`RecurrentCell`: any registered cell as a ``flax.linen.RNNCellBase``, usable inside
  ``flax.linen.RNN`` and ``flax.linen.Bidirectional``. Its parameters are the cell's canonical
  per-gate arrays (``W_xi``, ``W_hi``, ``b_i``, ...), so they convert to and from
  :func:`rnn_jax.cells.get(...).init` dicts by plain dict access. Inside ``nn.RNN`` the step is the
  cell's reference ``step`` (Flax scans it); for speed use :class:`RecurrentStack`.
* :class:`RecurrentStack`: a stacked (optionally bidirectional) recurrent layer built on
  :func:`rnn_jax.layers.stacked_rnn` (hoisted inputs, fused backward pass). Its parameters are
  ``{"layer_0": {...per-gate dict...}, "layer_1": ...}`` (``{"fw": ..., "bw": ...}`` per layer
  when bidirectional).

>>> import jax, jax.numpy as jnp, flax.linen as nn
>>> from rnn_jax.nn import RecurrentCell, RecurrentStack
>>> model = nn.RNN(RecurrentCell("gru", 8))
>>> variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 5, 3)))
>>> sorted(variables["params"]["cell"])[:3], model.apply(variables, jnp.ones((2, 5, 3))).shape
(['W_hh', 'W_hr', 'W_hz'], (2, 5, 8))
>>> stack = RecurrentStack("lstm", 8, num_layers=2)
>>> variables = stack.init(jax.random.PRNGKey(0), jnp.ones((2, 5, 3)))
>>> carries, hs = stack.apply(variables, jnp.ones((2, 5, 3)))
>>> hs.shape, sorted(variables["params"])
((2, 5, 8), ['layer_0', 'layer_1'])
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from rnn_jax import cells as cells_lib
from rnn_jax import layers

__all__ = ["RecurrentCell", "RecurrentStack"]


def _get(cell: str, options: Mapping[str, Any] | None) -> cells_lib.Cell:
    return cells_lib.get(cell, **dict(options or {}))


class RecurrentCell(nn.RNNCellBase):
    """A registered rnn_jax cell as a Flax linen RNN cell.

    Attributes:
      cell: registered name (``rnn_jax.cells.names()``).
      features: hidden size.
      options: options for ``rnn_jax.cells.get`` (e.g. ``{"forget_bias": 1.0}``).
    """

    cell: str
    features: int
    options: Mapping[str, Any] | None = None

    @nn.compact
    def __call__(self, carry, inputs):
        cell = _get(self.cell, self.options)
        input_size = inputs.shape[-1]
        params = {name: self.param(name, cell.init_param, name, input_size, self.features)
                  for name in cell.param_names(input_size, self.features)}
        return cell.step(params, carry, inputs)

    @nn.nowrap
    def initialize_carry(self, rng, input_shape):
        del rng
        return _get(self.cell, self.options).zeros_carry(self.features, input_shape[:-1])

    @property
    def num_feature_axes(self) -> int:
        return 1


class RecurrentStack(nn.Module):
    """``num_layers`` recurrent layers of one registered cell, on rnn_jax's fast layer.

    Call as ``module(xs, carries=None, *, seq_lengths=None, resets=None, deterministic=True)``;
    returns ``(final_carries, hs)`` as :func:`rnn_jax.layers.stacked_rnn`. Dropout between layers
    uses the ``"dropout"`` rng when ``deterministic=False``.
    """

    cell: str
    hidden_size: int
    num_layers: int = 1
    options: Mapping[str, Any] | None = None
    dropout_rate: float = 0.0
    residual: bool = False
    bidirectional: bool = False
    impl: str = "fused"
    unroll: int = 1

    @nn.compact
    def __call__(self, xs, carries=None, *, seq_lengths=None, resets=None, deterministic: bool = True):
        cell = _get(self.cell, self.options)
        params = []
        for k in range(self.num_layers):
            size = xs.shape[-1] if k == 0 else self.hidden_size * (2 if self.bidirectional else 1)

            def init(key, size=size):
                if self.bidirectional:
                    kf, kb = jax.random.split(key)
                    return {"fw": cell.init(kf, size, self.hidden_size),
                            "bw": cell.init(kb, size, self.hidden_size)}
                return cell.init(key, size, self.hidden_size)

            params.append(self.param(f"layer_{k}", init))
        use_dropout = self.dropout_rate > 0 and not deterministic and self.num_layers > 1
        key = self.make_rng("dropout") if use_dropout else None
        return layers.stacked_rnn(cell, params, jnp.asarray(xs), carries, seq_lengths=seq_lengths,
                                  resets=resets, dropout_rate=self.dropout_rate, dropout_key=key,
                                  residual=self.residual, bidirectional=self.bidirectional,
                                  impl=self.impl, unroll=self.unroll)
