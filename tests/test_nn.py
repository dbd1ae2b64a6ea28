import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, convert, layers
from rnn_jax.nn import RecurrentCell, RecurrentStack
from tests.trees import assert_trees_close

B, T, I, H = 2, 4, 3, 5


def _inputs():
    return jax.random.normal(jax.random.PRNGKey(1), (B, T, I))


def _random_like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_lstm_matches_flax_lstm_cell():
    xs = _inputs()
    model = nn.RNN(nn.LSTMCell(H), return_carry=True)
    variables = _random_like(model.init(jax.random.PRNGKey(0), xs), 2)
    (c_flax, h_flax), hs_flax = model.apply(variables, xs)
    params = convert.from_flax_lstm(variables["params"]["cell"])
    final, hs = layers.rnn(cells.get("lstm"), params, xs)
    np.testing.assert_allclose(hs, hs_flax, atol=1e-5)
    np.testing.assert_allclose(final.c, c_flax, atol=1e-5)
    np.testing.assert_allclose(final.h, h_flax, atol=1e-5)
    back = convert.to_flax_lstm(params)
    assert jax.tree.structure(back) == jax.tree.structure(jax.tree.map(np.asarray, dict(variables["params"]["cell"])))


def test_gru_reset_after_matches_flax_gru_cell():
    xs = _inputs()
    model = nn.RNN(nn.GRUCell(H), return_carry=True)
    variables = _random_like(model.init(jax.random.PRNGKey(0), xs), 3)
    h_flax, hs_flax = model.apply(variables, xs)
    params = convert.from_flax_gru(variables["params"]["cell"])
    final, hs = layers.rnn(cells.get("gru", reset_after=True), params, xs)
    np.testing.assert_allclose(hs, hs_flax, atol=1e-5)
    np.testing.assert_allclose(final, h_flax, atol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "mut3", "fgr"])
def test_recurrent_cell_inside_flax_rnn_equals_layer(name):
    xs = _inputs()
    model = nn.RNN(RecurrentCell(name, H), return_carry=True)
    variables = model.init(jax.random.PRNGKey(0), xs)
    params = dict(variables["params"]["cell"])
    assert set(params) == set(cells.get(name).param_names(I, H))  # canonical per-gate names
    carry, hs = model.apply(variables, xs)
    ref_carry, ref_hs = layers.rnn(cells.get(name), params, xs)
    np.testing.assert_allclose(hs, ref_hs, atol=1e-5)
    assert_trees_close(carry, ref_carry, atol=1e-5, what="carry")


def test_recurrent_cell_options_and_bidirectional():
    xs = _inputs()
    model = nn.Bidirectional(nn.RNN(RecurrentCell("lstm", H, {"forget_bias": 1.0})),
                             nn.RNN(RecurrentCell("gru", H)))
    variables = model.init(jax.random.PRNGKey(0), xs)
    out = model.apply(variables, xs)
    assert out.shape == (B, T, 2 * H)
    fw = variables["params"]["forward_rnn"]["cell"]
    np.testing.assert_array_equal(np.asarray(fw["b_f"]), np.ones(H))
    with pytest.raises(ValueError, match="unknown option"):
        nn.RNN(RecurrentCell("gru", H, {"forget_bias": 1.0})).init(jax.random.PRNGKey(0), xs)


def test_recurrent_stack_module():
    xs = _inputs()
    module = RecurrentStack("lstm", H, num_layers=2, dropout_rate=0.3)
    variables = module.init(jax.random.PRNGKey(0), xs)
    stack = [variables["params"]["layer_0"], variables["params"]["layer_1"]]
    assert set(stack[1]) == set(cells.get("lstm").param_names(H, H))
    carries, hs = module.apply(variables, xs)
    ref_carries, ref_hs = layers.stacked_rnn(cells.get("lstm"), stack, xs)
    np.testing.assert_allclose(hs, ref_hs, atol=1e-6)
    _, dropped = module.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)})
    assert not np.allclose(dropped, hs)
    bi = RecurrentStack("gru", H, num_layers=2, bidirectional=True)
    bi_vars = bi.init(jax.random.PRNGKey(0), xs)
    assert set(bi_vars["params"]["layer_1"]) == {"fw", "bw"}
    assert bi_vars["params"]["layer_1"]["fw"]["W_xr"].shape == (2 * H, H)
    _, out = bi.apply(bi_vars, xs, seq_lengths=jnp.array([4, 2]))
    assert out.shape == (B, T, 2 * H)
