"""Long-range task generators, per-step hidden-state gradients, and the gradient-flow study."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import gradient_flow
from rnn_jax import cells, gradflow
from rnn_jax.data import longrange

# --------------------------------------------------------------------------------------------
# Copy task and adding problem
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [None, 0, 3])
def test_copy_memory_layout(delay):
    length, symbols = 30, 5
    x, y, w = longrange.copy_memory(3, 4, length, num_symbols=symbols, delay=delay, index=2)
    assert x.shape == y.shape == w.shape == (4, length)
    assert x.dtype == y.dtype == np.int32 and w.dtype == np.float32
    d = length - 21 if delay is None else delay
    seq = x[:, :10]
    assert seq.min() >= 1 and seq.max() <= symbols
    expected_x = np.zeros_like(x)
    expected_x[:, :10] = seq
    expected_x[:, 10 + d] = symbols + 1
    np.testing.assert_array_equal(x, expected_x)
    expected_y = np.zeros_like(y)
    expected_y[:, -10:] = seq
    np.testing.assert_array_equal(y, expected_y)
    expected_w = np.zeros_like(w)
    expected_w[:, -10:] = 1.0
    np.testing.assert_array_equal(w, expected_w)


def test_copy_memory_deterministic():
    a = longrange.copy_memory(7, 8, 25, index=1)
    b = longrange.copy_memory(7, 8, 25, index=1)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], longrange.copy_memory(7, 8, 25, index=2)[0])
    assert not np.array_equal(a[0], longrange.copy_memory(8, 8, 25, index=1)[0])
    # The default delay puts the delimiter right before the answer window (Arjovsky et al.).
    assert np.all(a[0][:, 25 - 11] == 9)


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=20), "length must be >= 21"),
    (dict(length=30, delay=10), "at most length - 21 = 9"),
    (dict(length=30, delay=-1), "delay must be >= 0"),
    (dict(length=30, num_symbols=0), "num_symbols must be >= 1"),
    (dict(length=30, batch_size=0), "batch_size must be >= 1"),
    (dict(length=30, seed=-1), "seed must be >= 0"),
    (dict(length=30, index=-1), "index must be >= 0"),
    (dict(length=30.0), "length must be an integer"),
    (dict(length=30, batch_size=True), "batch_size must be an integer"),
])
def test_copy_memory_errors(kwargs, match):
    args = dict(seed=0, batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        longrange.copy_memory(**args)


def test_adding_problem():
    x, y = longrange.adding_problem(5, 64, 9, index=3)
    assert x.shape == (64, 9, 2) and y.shape == (64,)
    assert x.dtype == y.dtype == np.float32
    values, markers = x[..., 0], x[..., 1]
    assert values.min() >= 0.0 and values.max() < 1.0
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert np.all(markers[:, :4].sum(axis=1) == 1) and np.all(markers[:, 4:].sum(axis=1) == 1)
    np.testing.assert_allclose(y, (values * markers).sum(axis=1), rtol=1e-6)
    again = longrange.adding_problem(5, 64, 9, index=3)
    np.testing.assert_array_equal(x, again[0])
    np.testing.assert_array_equal(y, again[1])
    assert not np.array_equal(x, longrange.adding_problem(5, 64, 9, index=4)[0])
    x2, _ = longrange.adding_problem(0, 3, 2)  # shortest: one marker in each one-step half
    np.testing.assert_array_equal(x2[..., 1], np.ones((3, 2)))
    for kwargs, match in [(dict(length=1), "length must be >= 2"),
                          (dict(batch_size=0), "batch_size must be >= 1"),
                          (dict(seed=-2), "seed must be >= 0"),
                          (dict(index=1.5), "index must be an integer")]:
        args = dict(seed=0, batch_size=2, length=6)
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            longrange.adding_problem(**args)


# --------------------------------------------------------------------------------------------
# ∂L/∂h_t against a direct computation
# --------------------------------------------------------------------------------------------


def _direct_hidden_grads(cell, params, xs, readout_fn):
    """∂L/∂h_t by a Python loop of cell.step: for each t, the gradient of the rest of the run
    (steps t+1..T and the readout) with respect to the h part of the carry after step t."""
    batch, steps = xs.shape[:2]
    carries = []
    c = cell.zero_carry(params, (batch,))
    for t in range(steps):
        c, _ = cell.step(params, c, xs[:, t])
        carries.append(c)
    grads = []
    for t in range(steps):
        def rest(h, t=t):
            c = carries[t]._replace(h=h) if hasattr(carries[t], "_replace") else h
            for k in range(t + 1, steps):
                c, _ = cell.step(params, c, xs[:, k])
            return jnp.sum(readout_fn(cells.Cell.carry_h(c)))

        grads.append(jax.jacrev(rest)(cells.Cell.carry_h(carries[t])))
    return jnp.stack(grads, axis=1)


@pytest.mark.parametrize("name, readout", [("rnn", "default"), ("lstm", "squared")])
def test_hidden_grads_match_direct_computation(name, readout):
    cell = cells.get(name)
    params = cell.init(jax.random.PRNGKey(1), 3, 4)
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 3))
    w = gradflow.unit_vector(jax.random.PRNGKey(0), 4)  # the default readout's direction
    given, used = {"default": (None, gradflow.linear_readout(w)),
                   "squared": ((lambda h: (h @ w) ** 2,) * 2)}[readout]
    grads = gradflow.hidden_grads(cell, params, xs, given)
    direct = jax.jit(lambda p, x: _direct_hidden_grads(cell, p, x, used))(params, xs)
    assert grads.shape == (3, 5, 4)
    np.testing.assert_allclose(grads, direct, rtol=1e-5, atol=1e-7)
    norms = gradflow.hidden_grad_norms(cell, params, xs, given)
    np.testing.assert_allclose(norms, jnp.linalg.norm(direct, axis=-1).mean(axis=0), rtol=1e-5)
    # The rescaled explicit backward pass gives the same numbers, as logarithms.
    logs = gradflow.hidden_grad_log_norms(cell, params, xs, given)
    np.testing.assert_allclose(logs, jnp.log(jnp.linalg.norm(direct, axis=-1)), atol=1e-5)
    log10 = gradflow.hidden_grad_log10_norms(cell, params, xs, given)
    np.testing.assert_allclose(log10, jnp.log10(norms), atol=1e-5)
    if readout == "default":  # a unit linear readout: ‖∂L/∂h_T‖ = 1 exactly
        np.testing.assert_allclose(norms[-1], 1.0, rtol=1e-6)


def test_hidden_grads_errors():
    cell = cells.get("rnn")
    params = cell.init(jax.random.PRNGKey(0), 2, 3)
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        gradflow.hidden_grads(cell, params, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match=r"per-example losses of shape \(2,\)"):
        gradflow.hidden_grads(cell, params, jnp.ones((2, 4, 2)), lambda h: jnp.mean(h))


# --------------------------------------------------------------------------------------------
# Tanh RNN: vanishing below σ = 1, exploding above
# --------------------------------------------------------------------------------------------


def _orthogonal_rnn(hidden=8):
    return cells.get("rnn", recurrent_init="orthogonal").init(jax.random.PRNGKey(3), 2, hidden)


def test_tanh_rnn_with_spectral_radius():
    params = _orthogonal_rnn()
    for sigma in (0.5, 2.0):
        scaled = gradflow.tanh_rnn_with_spectral_radius(params, sigma)
        s = np.linalg.svd(np.asarray(scaled["W_hh"], np.float64), compute_uv=False)
        np.testing.assert_allclose(s, sigma, rtol=1e-4)  # orthogonal: every singular value
        assert scaled["W_xh"] is params["W_xh"] and scaled["b_h"] is params["b_h"]
    uniform = cells.get("rnn").init(jax.random.PRNGKey(0), 2, 8)
    scaled = gradflow.tanh_rnn_with_spectral_radius(uniform, 1.3)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(scaled["W_hh"]), 2), 1.3, rtol=1e-4)
    with pytest.raises(ValueError, match="no W_hh"):
        gradflow.tanh_rnn_with_spectral_radius({"W_xh": uniform["W_xh"]}, 1.0)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        gradflow.tanh_rnn_with_spectral_radius(params, 0.0)


def test_tanh_rnn_vanishes_below_one_and_explodes_above():
    """σ_max(W_hh) = 0.5 bounds every step's Jacobian by 0.5 (|tanh'| <= 1), so the ratio is at
    most 0.5^49; with σ = 2 and small inputs the states stay near 0 (tanh' ≈ 1) for the first
    steps, where an orthogonal W_hh multiplies the gradient by about 2 per step."""
    cell, params = cells.get("rnn"), _orthogonal_rnn()
    xs = 1e-3 * jax.random.normal(jax.random.PRNGKey(4), (2, 50, 2))
    small = np.asarray(gradflow.hidden_grad_norms(cell, gradflow.tanh_rnn_with_spectral_radius(params, 0.5), xs))
    assert small[0] / small[-1] < 1e-2
    assert small[-9] / small[-1] <= 0.5 ** 8 * (1 + 1e-5)
    assert np.all(np.diff(small[-20:]) > 0)  # grows towards t = T, i.e. decays backwards
    large = np.asarray(gradflow.hidden_grad_norms(cell, gradflow.tanh_rnn_with_spectral_radius(params, 2.0), xs))
    assert large[0] / large[-1] > 10

    # 0.1^49 = 1e-49 is below float32's range: the rescaled backward pass still measures it,
    # at almost exactly σ per step since the states stay near 0.
    tiny = gradflow.tanh_rnn_with_spectral_radius(params, 0.1)
    log10 = np.asarray(gradflow.hidden_grad_log10_norms(cell, tiny, xs))
    assert np.all(np.isfinite(log10))
    assert abs(log10[-1]) < 1e-5
    np.testing.assert_allclose(log10, -np.arange(49, -1, -1), atol=0.01)
    assert log10[0] < math.log10(np.finfo(np.float32).tiny) - 10


# --------------------------------------------------------------------------------------------
# Training helpers and the study
# --------------------------------------------------------------------------------------------


def test_training_helpers():
    with pytest.raises(ValueError, match="invalid optimizer"):
        gradflow.make_optimizer("adagrad")
    with pytest.raises(ValueError, match="clip_norm must be positive"):
        gradflow.make_optimizer("sgd", 0.1, 0.0)
    assert gradflow.cell_for_inputs("mut1", 2, 4).input_term == "linear"
    assert gradflow.cell_for_inputs("mut1", 4, 4).input_term == "identity"
    xs, ys = gradflow.adding_batches(0, 3, 2, 6)
    assert xs.shape == (3, 2, 6, 2) and ys.shape == (3, 2)
    np.testing.assert_array_equal(xs[1], longrange.adding_problem(0, 2, 6, index=1)[0])


def test_study_end_to_end(tmp_path):
    lines = []
    out = str(tmp_path / "study")
    results = gradient_flow.run(out, cells=("rnn", "mut1"), length=6, hidden=4, train_steps=3,
                                batch_size=4, eval_batch_size=4, sigmas=(0.5, 2.0), progress=lines.append)
    for name in ("grad_norms.png", "tanh_spectral.png", "clipping.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    def no_constants(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        saved = json.load(f, parse_constant=no_constants)
    assert not [p for p in os.listdir(out) if ".tmp" in p]
    assert set(saved["cells"]) == {"rnn", "mut1"}
    for entry in saved["cells"].values():
        for when in ("init", "trained"):
            assert len(entry[when]["log10_norms"]) == 6
            assert abs(entry[when]["log10_norms"][-1]) < 1e-5  # unit readout
        assert len(entry["train"]["losses"]) == 3
    assert set(saved["tanh_spectral"]["curves"]) == {"orthogonal", "uniform"}
    assert set(saved["tanh_spectral"]["curves"]["orthogonal"]) == {"0.5", "2"}
    orth = saved["tanh_spectral"]["curves"]["orthogonal"]
    assert orth["0.5"]["ratio_first_last"] < 1 < orth["2"]["ratio_first_last"]
    assert len(saved["clipping"]["clip"]["grad_norms"]) == 3
    assert "fraction_steps_clipped" in saved["clipping"]["clip"]
    assert saved["config"]["length"] == 6 and results["config"]["hidden"] == 4
    assert any(line.startswith("[mut1]") for line in lines)
    with pytest.raises(ValueError, match="unknown cell"):
        gradient_flow.run(str(tmp_path / "bad"), cells=("lsmt",), length=6, hidden=4, train_steps=1)
    assert not os.path.exists(tmp_path / "bad")


def test_json_writer_is_strict(tmp_path):
    path = str(tmp_path / "r.json")
    gradient_flow.write_json_atomic(path, {"a": [1.0, float("nan"), float("inf"), -float("inf")]})
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"a": [1.0, "nan", "inf", "-inf"]}
