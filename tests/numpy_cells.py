"""Independent NumPy implementations of every cell, written from the equations in docs/design.md.

Nothing here imports rnn_jax: these are the oracle the JAX cells are tested against (float64).
Conventions: row vectors, ``x @ W`` with ``W`` of shape ``[in, out]``; parameter names as in
the equations.
"""

import numpy as np


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def rnn(p, h, x, activation="tanh"):
    a = x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"]
    h = np.tanh(a) if activation == "tanh" else np.maximum(a, 0.0)
    return h, h


def lstm(p, carry, x, *, input_gate=True, forget_gate=True, output_gate=True, peepholes=False,
         input_activation=True, output_activation=True, coupled=False, full_gate_recurrence=False):
    """Generic LSTM from Greff et al. (2017), Eq. 1-6, in row-vector form."""
    if full_gate_recurrence:
        c, h, i_prev, f_prev, o_prev = carry
        prev = {"i": i_prev, "f": f_prev, "o": o_prev}
    else:
        c, h = carry

    def pre(g):
        v = x @ p[f"W_x{g}"] + h @ p[f"W_h{g}"] + p[f"b_{g}"]
        if full_gate_recurrence and g != "g":
            for src in "ifo":
                v = v + prev[src] @ p[f"R_{src}{g}"]
        return v

    g = np.tanh(pre("g")) if input_activation else pre("g")
    if input_gate:
        i = sigmoid(pre("i") + (p["p_i"] * c if peepholes else 0.0))
    else:
        i = np.ones_like(c)
    if coupled:
        f = 1.0 - i
    elif forget_gate:
        f = sigmoid(pre("f") + (p["p_f"] * c if peepholes else 0.0))
    else:
        f = np.ones_like(c)
    c_new = f * c + i * g
    if output_gate:
        o = sigmoid(pre("o") + (p["p_o"] * c_new if peepholes else 0.0))
    else:
        o = np.ones_like(c)
    h_new = o * (np.tanh(c_new) if output_activation else c_new)
    if full_gate_recurrence:
        return (c_new, h_new, i, f, o), h_new
    return (c_new, h_new), h_new


def gru(p, h, x, reset_after=False):
    r = sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
    z = sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
    if reset_after:
        n = np.tanh(x @ p["W_xh"] + p["b_h"] + r * (h @ p["W_hh"] + p["b_hh"]))
    else:
        n = np.tanh(x @ p["W_xh"] + (r * h) @ p["W_hh"] + p["b_h"])
    h = z * h + (1.0 - z) * n
    return h, h


def _raw(p, x, input_term):
    return x @ p["W_xx"] + p["b_x"] if input_term == "linear" else x


def mut1(p, h, x, input_term="identity"):
    z = sigmoid(x @ p["W_xz"] + p["b_z"])
    r = sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
    h = np.tanh((r * h) @ p["W_hh"] + np.tanh(_raw(p, x, input_term)) + p["b_h"]) * z + h * (1 - z)
    return h, h


def mut2(p, h, x, input_term="identity"):
    z = sigmoid(x @ p["W_xz"] + h @ p["W_hz"] + p["b_z"])
    r = sigmoid(_raw(p, x, input_term) + h @ p["W_hr"] + p["b_r"])
    h = np.tanh((r * h) @ p["W_hh"] + x @ p["W_xh"] + p["b_h"]) * z + h * (1 - z)
    return h, h


def mut3(p, h, x, input_term="identity"):
    z = sigmoid(x @ p["W_xz"] + np.tanh(h) @ p["W_hz"] + p["b_z"])
    r = sigmoid(x @ p["W_xr"] + h @ p["W_hr"] + p["b_r"])
    h = np.tanh((r * h) @ p["W_hh"] + x @ p["W_xh"] + p["b_h"]) * z + h * (1 - z)
    return h, h


PEEP = {"peepholes": True}

# Registered name -> (numpy step, options that define the variant). Kept by hand, on purpose,
# so that a change to the registry shows up as a test failure.
ORACLES = {
    "rnn": (rnn, {}),
    "lstm": (lstm, {}),
    "lstm_f": (lstm, {"forget_gate": False}),
    "lstm_i": (lstm, {"input_gate": False}),
    "lstm_o": (lstm, {"output_gate": False}),
    "lstm_b": (lstm, {}),
    "lstm_peep": (lstm, PEEP),
    "nig": (lstm, {**PEEP, "input_gate": False}),
    "nfg": (lstm, {**PEEP, "forget_gate": False}),
    "nog": (lstm, {**PEEP, "output_gate": False}),
    "niaf": (lstm, {**PEEP, "input_activation": False}),
    "noaf": (lstm, {**PEEP, "output_activation": False}),
    "np": (lstm, {}),
    "cifg": (lstm, {**PEEP, "coupled": True}),
    "fgr": (lstm, {**PEEP, "full_gate_recurrence": True}),
    "gru": (gru, {}),
    "mut1": (mut1, {}),
    "mut2": (mut2, {}),
    "mut3": (mut3, {}),
}

# Parameter names each variant must have (hidden, input) beyond the W_x*/W_h*/b_* of its gates.
EXPECTED_GATES = {
    "lstm": "ifog", "lstm_f": "iog", "lstm_i": "fog", "lstm_o": "ifg", "lstm_b": "ifog",
    "lstm_peep": "ifog", "nig": "fog", "nfg": "iog", "nog": "ifg", "niaf": "ifog", "noaf": "ifog",
    "np": "ifog", "cifg": "iog", "fgr": "ifog",
}
