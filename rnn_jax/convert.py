"""Weight conversion between rnn_jax's per-gate dicts and Flax / PyTorch recurrent layers.

Used by the parity tests and by anyone porting trained weights. Flax kernels are ``[in, out]``
like ours; PyTorch stacks gates along the first axis of ``[G·H, in]`` matrices (LSTM order
i, f, g, o; GRU order r, z, n) and has two biases per gate, which we sum where the equations allow.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def from_flax_lstm(p: Mapping) -> dict:
    """``flax.linen.LSTMCell`` params (``ii``, ``hi``, ...) → rnn_jax ``lstm`` params."""
    out = {}
    for g in "ifgo":
        out[f"W_x{g}"] = np.asarray(p[f"i{g}"]["kernel"])
        out[f"W_h{g}"] = np.asarray(p[f"h{g}"]["kernel"])
        out[f"b_{g}"] = np.asarray(p[f"h{g}"]["bias"])
    return out


def to_flax_lstm(p: Mapping) -> dict:
    """rnn_jax ``lstm`` params → ``flax.linen.LSTMCell`` params."""
    out = {}
    for g in "ifgo":
        out[f"i{g}"] = {"kernel": np.asarray(p[f"W_x{g}"])}
        out[f"h{g}"] = {"kernel": np.asarray(p[f"W_h{g}"]), "bias": np.asarray(p[f"b_{g}"])}
    return out


def from_flax_gru(p: Mapping) -> dict:
    """``flax.linen.GRUCell`` params → rnn_jax ``gru`` params (needs ``reset_after=True``)."""
    return {
        "W_xr": np.asarray(p["ir"]["kernel"]), "b_r": np.asarray(p["ir"]["bias"]),
        "W_hr": np.asarray(p["hr"]["kernel"]),
        "W_xz": np.asarray(p["iz"]["kernel"]), "b_z": np.asarray(p["iz"]["bias"]),
        "W_hz": np.asarray(p["hz"]["kernel"]),
        "W_xh": np.asarray(p["in"]["kernel"]), "b_h": np.asarray(p["in"]["bias"]),
        "W_hh": np.asarray(p["hn"]["kernel"]), "b_hh": np.asarray(p["hn"]["bias"]),
    }


def _torch_arrays(module, layer: int = 0):
    get = lambda name: getattr(module, f"{name}_l{layer}").detach().cpu().numpy()  # noqa: E731
    return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")


def from_torch_lstm(module, layer: int = 0) -> dict:
    """``torch.nn.LSTM`` layer ``layer`` (no projection) → rnn_jax ``lstm`` params."""
    w_ih, w_hh, b_ih, b_hh = _torch_arrays(module, layer)
    hidden = w_hh.shape[1]
    out = {}
    for k, g in enumerate("ifgo"):
        rows = slice(k * hidden, (k + 1) * hidden)
        out[f"W_x{g}"] = w_ih[rows].T.copy()
        out[f"W_h{g}"] = w_hh[rows].T.copy()
        out[f"b_{g}"] = b_ih[rows] + b_hh[rows]
    return out


def from_torch_gru(module, layer: int = 0) -> dict:
    """``torch.nn.GRU`` layer ``layer`` → rnn_jax ``gru`` params (needs ``reset_after=True``)."""
    w_ih, w_hh, b_ih, b_hh = _torch_arrays(module, layer)
    hidden = w_hh.shape[1]
    rows = [slice(k * hidden, (k + 1) * hidden) for k in range(3)]
    r, z, n = rows
    return {
        "W_xr": w_ih[r].T.copy(), "W_hr": w_hh[r].T.copy(), "b_r": b_ih[r] + b_hh[r],
        "W_xz": w_ih[z].T.copy(), "W_hz": w_hh[z].T.copy(), "b_z": b_ih[z] + b_hh[z],
        "W_xh": w_ih[n].T.copy(), "W_hh": w_hh[n].T.copy(), "b_h": b_ih[n].copy(),
        "b_hh": b_hh[n].copy(),
    }
