import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rnn_jax import cells, layers
from rnn_jax import nn as linen_adapters
from rnn_jax.nnx import RecurrentCell, RecurrentStack

B, T, I, H = 2, 4, 3, 5
LENGTHS = jnp.array([4, 2])


def _inputs(seed=1, features=I):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, T, features))


def _random_like(tree, seed):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _loss(carry, hs, mask=None):
    """A loss that weighs every output and carry entry differently."""
    if mask is not None:
        hs = jnp.where(mask[..., None], hs, 0.0)
    weights = jnp.cos(jnp.arange(hs.size, dtype=hs.dtype)).reshape(hs.shape)
    return jnp.sum(weights * hs) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(carry))


def _close(a, b, atol=1e-5):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=atol, rtol=1e-5)


def test_param_names_and_values_are_cell_init():
    for name in cells.names():  # abstract construction: names and shapes of every cell, no compiles
        size = H if name.startswith("mut") else I  # MUTs add the raw input: input_size == hidden_size
        module = nnx.eval_shape(lambda: RecurrentCell(name, size, H, rngs=nnx.Rngs(0)))
        shapes = {k: v.shape for k, v in nnx.to_pure_dict(nnx.state(module, nnx.Param)).items()}
        spec = cells.get(name).param_spec(size, H)
        assert shapes == {k: shape for k, (shape, _) in spec.items()}, name
        assert module.param_names == cells.get(name).param_names(size, H)
    for name in ("lstm", "gru"):  # values: the cell's own init on the Rngs' params stream
        module = RecurrentCell(name, I, H, rngs=nnx.Rngs(0))
        state = nnx.to_pure_dict(nnx.state(module, nnx.Param))
        ref = cells.get(name).init(nnx.Rngs(0).params(), I, H)
        assert set(state) == set(ref)
        _close(state, ref, atol=0)
        _close(module.rnn_params(), ref, atol=0)
    opts = RecurrentCell("lstm:forget_bias=1.0", I, H, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(opts.b_f.get_value(), np.ones(H))
    assert isinstance(opts.b_f, nnx.Param)
    wins = RecurrentCell("lstm:forget_bias=1.0", I, H, options={"forget_bias": 2.0}, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(wins.b_f.get_value(), np.full(H, 2.0))
    linear = RecurrentCell("mut1", I, H, options={"input_term": "linear"}, rngs=nnx.Rngs(0))
    assert linear.cell == cells.from_spec("mut1:input_term=linear")


@pytest.mark.parametrize("spec", ["lstm", "gru", "gru:reset_after=True", "mut1", "mut1:input_term=linear"])
def test_cell_in_nnx_rnn_matches_layer_and_linen(spec):
    size = H if spec == "mut1" else I  # MUT1's identity input term needs input_size == hidden_size
    xs = _inputs(features=size)
    model = nnx.RNN(RecurrentCell(spec, size, H, rngs=nnx.Rngs(0)), return_carry=True)
    params = model.cell.rnn_params()
    cell = cells.from_spec(spec)
    name, options = cells.parse_spec(spec)
    linen = nn.RNN(linen_adapters.RecurrentCell(name, H, options), return_carry=True)

    def loss_nnx(model, xs):
        out = model(xs)
        return _loss(*out), out

    def loss_layer(params, xs):
        out = layers.rnn(cell, params, xs)
        return _loss(*out), out

    def loss_linen(params, xs):
        out = linen.apply({"params": {"cell": params}}, xs)
        return _loss(*out), out

    @nnx.jit  # one program for the three: a few compiles instead of many eager ones
    def outputs_and_grads(model, params, xs):
        (_, out), (g_model, g_xs) = nnx.value_and_grad(loss_nnx, argnums=(0, 1), has_aux=True)(model, xs)
        refs = [jax.value_and_grad(ref, argnums=(0, 1), has_aux=True)(params, xs)
                for ref in (loss_layer, loss_linen)]
        return out, (nnx.to_pure_dict(g_model)["cell"], g_xs), [(o, g) for (_, o), g in refs]

    out, grads, refs = outputs_and_grads(model, params, xs)
    assert set(grads[0]) == set(params)
    for ref_out, ref_grads in refs:  # same outputs, final carry and gradients
        _close(out, ref_out)
        _close(grads, ref_grads)


def test_bidirectional_with_seq_lengths_matches_layer():
    xs = _inputs()
    rngs = nnx.Rngs(0)
    model = nnx.Bidirectional(nnx.RNN(RecurrentCell("lstm:forget_bias=1.0", I, H, rngs=rngs)),
                              nnx.RNN(RecurrentCell("lstm:forget_bias=1.0", I, H, rngs=rngs)),
                              return_carry=True)
    params = {"fw": model.forward_rnn.cell.rnn_params(), "bw": model.backward_rnn.cell.rnn_params()}
    cell = cells.get("lstm", forget_bias=1.0)
    both = nnx.jit(lambda model, params, xs: (model(xs, seq_lengths=LENGTHS),
                                              layers.bidirectional(cell, params, xs, seq_lengths=LENGTHS)))
    (carries, hs), (ref_carries, ref_hs) = both(model, params, xs)
    assert hs.shape == (B, T, 2 * H)
    valid = np.arange(T)[None] < np.asarray(LENGTHS)[:, None]
    np.testing.assert_allclose(np.asarray(hs)[valid], np.asarray(ref_hs)[valid], atol=1e-5)
    _close(carries, ref_carries)


@pytest.mark.parametrize("spec,kwargs", [
    ("lstm", {"num_layers": 2}),
    ("mut1:input_term=linear", {"num_layers": 2, "bidirectional": True, "residual": True}),
])
def test_stack_matches_stacked_rnn(spec, kwargs):
    xs = _inputs()
    cell = cells.from_spec(spec)
    stack = RecurrentStack(spec, I, H, rngs=nnx.Rngs(0), **kwargs)
    params = stack.rnn_params()
    bidirectional = kwargs.get("bidirectional", False)
    _close(params, layers.init_stack(cell, nnx.Rngs(0).params(), I, H, kwargs["num_layers"],
                                     bidirectional=bidirectional), atol=0)
    state = nnx.to_pure_dict(nnx.state(stack, nnx.Param))
    assert set(state) == {"layer_0", "layer_1"}
    assert set(state["layer_1"]) == ({"fw", "bw"} if bidirectional else set(cell.param_names()))
    run = dict(seq_lengths=LENGTHS, residual=kwargs.get("residual", False), bidirectional=bidirectional)
    shapes = jax.eval_shape(lambda: layers.stacked_rnn(cell, params, xs, **run)[0])
    carries0 = _random_like(shapes, seed=2)  # a non-zero initial carry per layer
    mask = jnp.arange(T)[None] < LENGTHS[:, None]
    graphdef, param_state, rest = nnx.split(stack, nnx.Param, ...)

    def loss_nnx(param_state, xs):
        out = nnx.merge(graphdef, param_state, rest)(xs, carries0, seq_lengths=LENGTHS)
        return _loss(*out, mask), out

    def loss_layer(params, xs):
        out = layers.stacked_rnn(cell, params, xs, carries0, **run)
        return _loss(*out, mask), out

    @jax.jit
    def outputs_and_grads(param_state, params, xs):
        (_, out), (g_state, g_xs) = jax.value_and_grad(loss_nnx, (0, 1), has_aux=True)(param_state, xs)
        g_state = nnx.to_pure_dict(g_state)
        g_params = [g_state[f"layer_{k}"] for k in range(kwargs["num_layers"])]
        (_, ref_out), ref_grads = jax.value_and_grad(loss_layer, (0, 1), has_aux=True)(params, xs)
        return (out, (g_params, g_xs)), (ref_out, ref_grads)

    ours, ref = outputs_and_grads(param_state, params, xs)
    _close(ours, ref)  # final carries, outputs, gradients w.r.t. parameters and inputs


def test_stack_dropout_follows_nnx_conventions_under_nnx_jit():
    xs = _inputs()
    cell = cells.get("gru")
    stack = RecurrentStack("gru", I, H, num_layers=2, dropout_rate=0.5, rngs=nnx.Rngs(0))
    params = stack.rnn_params()
    run = nnx.jit(lambda module, rngs: module(xs, seq_lengths=LENGTHS, rngs=rngs))
    ref = jax.jit(lambda key: layers.stacked_rnn(cell, params, xs, seq_lengths=LENGTHS,
                                                 dropout_rate=0.5, dropout_key=key))
    key = jax.random.PRNGKey(7)
    plain = ref(None)
    _close(run(stack, key), ref(key))  # a given key gives stacked_rnn's mask
    assert not np.allclose(ref(key)[1], plain[1])
    first, second = run(stack, None)[1], run(stack, None)[1]  # on by default, as nnx.Dropout
    assert not np.allclose(first, second)  # the module's stream advances across jitted calls
    assert not np.allclose(first, plain[1])
    stack.eval()
    _close(run(stack, None), plain)
    stack.train()
    assert not np.allclose(run(stack, None)[1], plain[1])
    _close(run(nnx.view(stack, deterministic=True), None), plain)
    deterministic = nnx.jit(lambda module: module(xs, seq_lengths=LENGTHS, deterministic=True))
    _close(deterministic(stack), plain)  # the call's flag wins over the module's
    loaded = RecurrentStack("gru", I, H, num_layers=2, dropout_rate=0.5, params=params)
    _close(loaded.rnn_params(), params, atol=0)
    with pytest.raises(ValueError, match="no rngs"):
        loaded(xs)
    # the call's rngs: an nnx.Rngs gives its dropout stream's key (what run(stack, key) tested)
    got, want = loaded._dropout_key(nnx.Rngs(dropout=7)), nnx.Rngs(dropout=7).dropout()
    np.testing.assert_array_equal(jax.random.key_data(got), jax.random.key_data(want))


def test_initialize_carry():
    module = RecurrentCell("lstm", I, H, options={"dtype": "bfloat16"}, rngs=nnx.Rngs(0))
    carry = module.initialize_carry((B, I))
    assert isinstance(carry, cells.LSTMCarry) and carry.h.shape == (B, H) and carry.h.dtype == jnp.bfloat16
    ones = module.initialize_carry((B, I), nnx.Rngs(0), carry_init=nnx.initializers.ones)
    np.testing.assert_array_equal(np.asarray(ones.c, np.float32), np.ones((B, H)))
    with pytest.raises(ValueError, match="needs rngs"):
        module.initialize_carry((B, I), carry_init=nnx.initializers.ones)


def test_bad_names_options_and_params_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown cell 'lstmm'.*did you mean 'lstm'"):
        RecurrentCell("lstmm", I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="gru: unknown option 'forget_bias'"):
        RecurrentCell("gru", I, H, options={"forget_bias": 1.0}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown option 'input_trm'"):
        RecurrentStack("mut1:input_trm=linear", I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="fixed"):
        RecurrentCell("lstm_f", I, H, options={"forget_gate": True}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="invalid cell spec"):
        RecurrentCell("gru:reset_after", I, H, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="hidden_size must be a positive integer"):
        RecurrentCell("gru", I, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass rngs="):
        RecurrentCell("gru", I, H)
    params = cells.get("gru").init(jax.random.PRNGKey(0), I, H)
    with pytest.raises(ValueError, match="expected"):
        RecurrentCell("lstm", I, H, params=params)
    with pytest.raises(ValueError, match="W_x. has shape"):
        RecurrentCell("gru", I + 1, H, params=params)
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStack("gru", I, H, num_layers=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dropout rate"):
        RecurrentStack("gru", I, H, num_layers=2, dropout_rate=1.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="params for 1 layers"):
        RecurrentStack("gru", I, H, num_layers=2, params=[params])
