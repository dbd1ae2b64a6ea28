"""The hand-written cells as recipes: RNN, GRU, LSTM and MUT1-3, with their parameter maps.

``RECIPES[name]`` is the recipe of the registered cell ``name``; ``PARAM_MAP[name]`` maps each
recipe parameter to the hand-written cell's parameter, so ``to_recipe_params(name, params)``
turns the parameters of ``cells.get(name)`` into those of ``cell_from_recipe(RECIPES[name])`` and
the two compute the same outputs and gradients (tests check both). The LSTM recipe follows
NAS-Bench-NLP's convention: ``h_prev_0`` is the output ``h`` and ``h_prev_1`` the memory ``c``,
so its carry ``RecipeCarry(h, (c,))`` is the hand-written ``LSTMCarry(c, h)`` swapped.

These are also the seeds of the searches (:mod:`rnn_jax.search.algorithms`).
"""

from __future__ import annotations

from typing import Mapping


def _n(op, *inputs):
    return {"op": op, "input": list(inputs)}


def _gate(name, act, *inputs):
    return {name: _n("linear", *inputs), f"{name}_act": _n(act, name)}


RNN = {"h": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "h")}

GRU = {
    **_gate("r", "activation_sigm", "x", "h_prev_0"),
    **_gate("z", "activation_sigm", "x", "h_prev_0"),
    "rh": _n("elementwise_prod", "r_act", "h_prev_0"),
    **_gate("h", "activation_tanh", "x", "rh"),
    "h_new_0": _n("blend", "z_act", "h_prev_0", "h_act"),
}

LSTM = {
    **_gate("i", "activation_sigm", "x", "h_prev_0"),
    **_gate("f", "activation_sigm", "x", "h_prev_0"),
    **_gate("o", "activation_sigm", "x", "h_prev_0"),
    **_gate("g", "activation_tanh", "x", "h_prev_0"),
    "fc": _n("elementwise_prod", "f_act", "h_prev_1"),
    "ig": _n("elementwise_prod", "i_act", "g_act"),
    "h_new_1": _n("elementwise_sum", "fc", "ig"),
    "c_act": _n("activation_tanh", "h_new_1"),
    "h_new_0": _n("elementwise_prod", "o_act", "c_act"),
}

# MUT1: z = σ(x W_xz + b_z), r = σ(x W_xr + h W_hr + b_r),
#       h' = tanh((r⊙h) W_hh + tanh(x) + b_h) ⊙ z + h ⊙ (1 − z)
MUT1 = {
    **_gate("z", "activation_sigm", "x"),
    **_gate("r", "activation_sigm", "x", "h_prev_0"),
    "rh": _n("elementwise_prod", "r_act", "h_prev_0"),
    "tx": _n("activation_tanh", "x"),
    "h": _n("linear", "rh"),
    "hx": _n("elementwise_sum", "h", "tx"),
    "h_act": _n("activation_tanh", "hx"),
    "h_new_0": _n("blend", "z_act", "h_act", "h_prev_0"),
}

# MUT2: z = σ(x W_xz + h W_hz + b_z), r = σ(x + h W_hr + b_r),
#       h' = tanh((r⊙h) W_hh + x W_xh + b_h) ⊙ z + h ⊙ (1 − z)
MUT2 = {
    **_gate("z", "activation_sigm", "x", "h_prev_0"),
    "r": _n("linear", "h_prev_0"),
    "rx": _n("elementwise_sum", "x", "r"),
    "r_act": _n("activation_sigm", "rx"),
    "rh": _n("elementwise_prod", "r_act", "h_prev_0"),
    **_gate("h", "activation_tanh", "rh", "x"),
    "h_new_0": _n("blend", "z_act", "h_act", "h_prev_0"),
}

# MUT3: z = σ(x W_xz + tanh(h) W_hz + b_z), r = σ(x W_xr + h W_hr + b_r),
#       h' = tanh((r⊙h) W_hh + x W_xh + b_h) ⊙ z + h ⊙ (1 − z)
MUT3 = {
    "th": _n("activation_tanh", "h_prev_0"),
    **_gate("z", "activation_sigm", "x", "th"),
    **_gate("r", "activation_sigm", "x", "h_prev_0"),
    "rh": _n("elementwise_prod", "r_act", "h_prev_0"),
    **_gate("h", "activation_tanh", "rh", "x"),
    "h_new_0": _n("blend", "z_act", "h_act", "h_prev_0"),
}

RECIPES = {"rnn": RNN, "gru": GRU, "lstm": LSTM, "mut1": MUT1, "mut2": MUT2, "mut3": MUT3}

# recipe parameter -> hand-written parameter
PARAM_MAP: dict[str, dict[str, str]] = {
    "rnn": {"W_h__0_x": "W_xh", "W_h__1_h_prev_0": "W_hh", "b_h": "b_h"},
    "gru": {**{f"W_{g}__0_x": f"W_x{g}" for g in "rzh"},
            "W_r__1_h_prev_0": "W_hr", "W_z__1_h_prev_0": "W_hz", "W_h__1_rh": "W_hh",
            **{f"b_{g}": f"b_{g}" for g in "rzh"}},
    "lstm": {**{f"W_{g}__0_x": f"W_x{g}" for g in "ifog"},
             **{f"W_{g}__1_h_prev_0": f"W_h{g}" for g in "ifog"},
             **{f"b_{g}": f"b_{g}" for g in "ifog"}},
    "mut1": {"W_z__0_x": "W_xz", "b_z": "b_z", "W_r__0_x": "W_xr", "W_r__1_h_prev_0": "W_hr",
             "b_r": "b_r", "W_h__0_rh": "W_hh", "b_h": "b_h"},
    "mut2": {"W_z__0_x": "W_xz", "W_z__1_h_prev_0": "W_hz", "b_z": "b_z", "W_r__0_h_prev_0": "W_hr",
             "b_r": "b_r", "W_h__0_rh": "W_hh", "W_h__1_x": "W_xh", "b_h": "b_h"},
    "mut3": {"W_z__0_x": "W_xz", "W_z__1_th": "W_hz", "b_z": "b_z", "W_r__0_x": "W_xr",
             "W_r__1_h_prev_0": "W_hr", "b_r": "b_r", "W_h__0_rh": "W_hh", "W_h__1_x": "W_xh",
             "b_h": "b_h"},
}


def to_recipe_params(name: str, params: Mapping) -> dict:
    """Parameters of the hand-written cell ``name`` renamed for its recipe."""
    return {r: params[h] for r, h in PARAM_MAP[name].items()}


def from_recipe_params(name: str, params: Mapping) -> dict:
    """The inverse of :func:`to_recipe_params`."""
    return {h: params[r] for r, h in PARAM_MAP[name].items()}
