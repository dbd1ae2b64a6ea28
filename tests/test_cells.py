import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells
from tests.numpy_cells import EXPECTED_GATES, ORACLES
from tests.trees import assert_trees_close

H = 4


def in_size(name, options=None):
    """MUT1/MUT2 with the identity input term need input size == hidden size."""
    if name in ("mut1", "mut2") and (options or {}).get("input_term", "identity") == "identity":
        return H
    return 3


def random_params(cell, key, input_size, hidden_size=H, scale=0.7, dtype=jnp.float64):
    """Every parameter (biases and peepholes too) random, so every term is exercised."""
    params = cell.init(key, input_size, hidden_size)
    keys = jax.random.split(key, len(params))
    return {n: scale * jax.random.normal(k, v.shape, dtype) for k, (n, v) in zip(keys, sorted(params.items()))}


def to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


def random_carry(cell, key, batch, dtype=jnp.float64):
    zero = cell.zeros_carry(H, (batch,), dtype)
    leaves, treedef = jax.tree.flatten(zero)
    keys = jax.random.split(key, len(leaves))
    # Gate activations in an FGR carry live in (0, 1); the others may be any value.
    return jax.tree.unflatten(treedef, [jax.nn.sigmoid(jax.random.normal(k, x.shape, dtype))
                                        for k, x in zip(keys, leaves)])


# --- registry -----------------------------------------------------------------------------------


def test_names_lists_every_required_cell():
    required = {"rnn", "lstm", "gru", "mut1", "mut2", "mut3", "lstm_f", "lstm_i", "lstm_o", "lstm_b",
                "lstm_peep", "nig", "nfg", "nog", "niaf", "noaf", "np", "cifg", "fgr"}
    assert set(cells.names()) == required == set(ORACLES)
    assert set(cells.describe()) == required | {"recipe"}  # a cell from a recipe: needs path= or recipe=


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown cell 'lstn'.*did you mean 'lstm'.*registered cells: rnn, lstm"):
        cells.get("lstn")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"gru: unknown option 'forget_bias'; valid options: .*reset_after"):
        cells.get("gru", forget_bias=1.0)
    with pytest.raises(ValueError, match=r"did you mean 'reset_after'"):
        cells.get("gru", reset_afer=True)


def test_variant_defining_option_cannot_be_overridden():
    with pytest.raises(ValueError, match=r"lstm_f: option 'forget_gate' is fixed"):
        cells.get("lstm_f", forget_gate=True)
    assert "forget_gate" not in cells.options("lstm_f")


@pytest.mark.parametrize("name, options, match", [
    ("lstm", {"kernel_init": "xavier"}, r"invalid kernel_init='xavier'; allowed values: 'uniform', 'orthogonal'"),
    ("gru", {"dtype": "int8"}, r"invalid dtype='int8'; allowed: float32, float64, bfloat16, float16, None"),
    ("mut1", {"input_term": "proj"}, r"invalid input_term='proj'; allowed values: 'identity', 'linear'"),
    ("rnn", {"init_scale": -1.0}, r"init_scale must be a positive number, got -1.0"),
    ("rnn", {"activation": "gelu"}, r"invalid activation='gelu'"),
    ("lstm", {"coupled": True, "input_gate": False}, r"coupled=True .* needs input_gate=True"),
    ("lstm", {"forget_gate": False, "forget_bias": 1.0}, r"forget_bias=1.0 needs a forget gate"),
    ("lstm", {"full_gate_recurrence": True, "output_gate": False}, r"full_gate_recurrence=True needs all three gates"),
    ("lstm", {"peepholes": "yes"}, r"peepholes must be True or False"),
])
def test_bad_option_values_name_field_and_allowed(name, options, match):
    with pytest.raises(ValueError, match=match):
        cells.get(name, **options)


def test_bad_sizes_are_rejected():
    cell = cells.get("lstm")
    with pytest.raises(ValueError, match=r"hidden_size must be a positive integer, got 0"):
        cell.init(jax.random.PRNGKey(0), 3, 0)
    params = cell.init(jax.random.PRNGKey(0), 3, 4)
    with pytest.raises(ValueError, match=r"input feature size 5 does not match the parameters' input_size 3"):
        cell.step(params, cell.zero_carry(params, (2,)), jnp.ones((2, 5)))


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED_GATES))
def test_lstm_family_parameter_names(name):
    cell = cells.get(name)
    names = set(cell.init(jax.random.PRNGKey(0), 3, H))
    gates = EXPECTED_GATES[name]
    expected = {f"{kind}{g}" for g in gates for kind in ("W_x", "W_h", "b_")}
    if cell.peepholes:
        expected |= {f"p_{g}" for g in gates if g != "g"}
    if name == "fgr":
        expected |= {f"R_{a}{b}" for a in "ifo" for b in "ifo"}
    assert names == expected


@pytest.mark.parametrize("name, expected", [
    ("rnn", {"W_xh", "W_hh", "b_h"}),
    ("gru", {"W_xr", "W_hr", "b_r", "W_xz", "W_hz", "b_z", "W_xh", "W_hh", "b_h"}),
    ("mut1", {"W_xz", "b_z", "W_xr", "W_hr", "b_r", "W_hh", "b_h"}),
    ("mut2", {"W_xz", "W_hz", "b_z", "W_hr", "b_r", "W_hh", "W_xh", "b_h"}),
    ("mut3", {"W_xz", "W_hz", "b_z", "W_xr", "W_hr", "b_r", "W_hh", "W_xh", "b_h"}),
])
def test_parameter_names_are_the_equation_symbols(name, expected):
    params = cells.get(name).init(jax.random.PRNGKey(0), H, H)
    assert set(params) == expected
    assert params["W_hh"].shape == (H, H) and params["b_h"].shape == (H,)


def test_forget_bias_and_lstm_b():
    assert float(cells.get("lstm").init(jax.random.PRNGKey(0), 3, H)["b_f"].max()) == 0.0
    b_f = cells.get("lstm_b").init(jax.random.PRNGKey(0), 3, H)["b_f"]
    np.testing.assert_array_equal(np.asarray(b_f), np.ones(H))
    b_f = cells.get("lstm", forget_bias=2.5).init(jax.random.PRNGKey(0), 3, H)["b_f"]
    np.testing.assert_array_equal(np.asarray(b_f), np.full(H, 2.5))


def test_initializers():
    hidden = 64
    params = cells.get("rnn", init_scale=2.0).init(jax.random.PRNGKey(0), 16, hidden)
    bound = 2.0 / np.sqrt(hidden)
    w = np.asarray(params["W_hh"])
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound  # uniform ±scale/√H
    assert np.all(np.asarray(params["b_h"]) == 0)
    params = cells.get("rnn", recurrent_init="orthogonal", kernel_init="lecun_normal").init(
        jax.random.PRNGKey(1), 16, hidden)
    w = np.asarray(params["W_hh"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(hidden), atol=1e-5)
    custom = lambda key, shape, dtype: jnp.full(shape, 0.25, dtype)  # noqa: E731
    params = cells.get("gru", kernel_init=custom).init(jax.random.PRNGKey(0), 3, H)
    assert np.all(np.asarray(params["W_xz"]) == 0.25) and not np.all(np.asarray(params["W_hz"]) == 0.25)


def test_param_and_compute_dtypes_are_separate():
    cell = cells.get("lstm", dtype="bfloat16")
    params = cell.init(jax.random.PRNGKey(0), 3, H)
    assert all(v.dtype == jnp.float32 for v in params.values())
    carry = cell.zero_carry(params, (2,))
    assert carry.h.dtype == jnp.bfloat16
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3))
    carry, h = cell.step(params, carry, x)
    assert h.dtype == jnp.bfloat16
    _, h32 = cells.get("lstm").step(params, cells.get("lstm").zero_carry(params, (2,)), x)
    np.testing.assert_allclose(np.asarray(h, np.float32), np.asarray(h32), atol=2e-2)


def test_mut_identity_input_term_needs_matching_sizes():
    for name in ("mut1", "mut2"):
        with pytest.raises(ValueError, match=rf"{name} adds the raw input x .* needs input_size == hidden_size "
                                             r"\(got input_size=3, hidden_size=4\).*input_term='linear'"):
            cells.get(name).init(jax.random.PRNGKey(0), 3, 4)
        params = cells.get(name, input_term="linear").init(jax.random.PRNGKey(0), 3, 4)
        assert params["W_xx"].shape == (3, 4) and params["b_x"].shape == (4,)
    assert "W_xx" not in cells.get("mut3").init(jax.random.PRNGKey(0), 3, 4)


# --- equations: NumPy oracle, reference step, fast step ------------------------------------------

CASES = [(name, {}) for name in ORACLES] + [
    ("gru", {"reset_after": True}),
    ("mut1", {"input_term": "linear"}),
    ("mut2", {"input_term": "linear"}),
    ("rnn", {"activation": "relu"}),
    ("lstm", {"coupled": True, "peepholes": False}),
]


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{o}" if o else n for n, o in CASES])
def test_step_matches_numpy_oracle_and_fast_step(name, options):
    with jax.enable_x64(True):
        cell = cells.get(name, param_dtype="float64", **options)
        oracle, defining = ORACLES[name]
        kwargs = {**defining, **options}
        size = in_size(name, options)
        key = jax.random.PRNGKey(zlib.crc32(name.encode()))
        params = random_params(cell, key, size)
        carry = random_carry(cell, jax.random.fold_in(key, 1), batch=2)
        xs = jax.random.normal(jax.random.fold_in(key, 2), (3, 2, size), jnp.float64)
        np_params, np_carry = to_numpy(params), to_numpy(tuple(carry) if isinstance(carry, tuple) else carry)
        ref_carry, fast_carry = carry, carry
        for x in xs:
            np_carry, np_h = oracle(np_params, np_carry, np.asarray(x), **kwargs)
            ref_carry, ref_h = cell.step(params, ref_carry, x)
            fast_carry, fast_h = cell.fast_step(params, fast_carry, x)
            np.testing.assert_allclose(np.asarray(ref_h), np_h, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(fast_h), np_h, rtol=1e-12, atol=1e-12)
        assert_trees_close(ref_carry, np_carry, rtol=1e-12, atol=1e-12, what="carry", check_structure=False)
        assert type(ref_carry) is type(fast_carry) is type(carry)


def test_carry_types():
    assert isinstance(cells.get("lstm").zeros_carry(H, (2,)), cells.LSTMCarry)
    assert isinstance(cells.get("fgr").zeros_carry(H, (2,)), cells.FGRCarry)
    assert cells.get("gru").zeros_carry(H, (2, 3)).shape == (2, 3, H)


def test_init_param_and_get_on_instances():
    cell = cells.get("lstm_b")
    one = cell.init_param(jax.random.PRNGKey(0), "b_f", 3, H)
    np.testing.assert_array_equal(np.asarray(one), np.ones(H))
    with pytest.raises(ValueError, match=r"lstm_b has no parameter 'W_xz'; its parameters: W_hf"):
        cell.init_param(jax.random.PRNGKey(0), "W_xz", 3, H)
    assert cells.get(cell, init_scale=2.0).init_scale == 2.0
    with pytest.raises(ValueError, match=r"option 'forget_bias' is fixed"):
        cells.get(cell, forget_bias=3.0)
