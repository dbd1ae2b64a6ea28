"""Recipe cells: the format's checks, canonical form and hashes, and the JAX cell against the
hand-written cells, its own reference path and an independent NumPy implementation."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, layers
from rnn_jax.errors import InputError
from rnn_jax.search import known
from rnn_jax.search import recipe as rl
from rnn_jax.search.cell import RecipeCarry, cell_from_recipe

KNOWN = tuple(known.RECIPES)


def _n(op, *inputs, **extra):
    return {"op": op, "input": list(inputs), **extra}


# Every operator, two hidden states, hoisted nodes (z, tx), raw x read inside the loop (xs),
# 3-input sum and product, a linear node reading an inner node and a hoisted one.
RICH = {
    "z": _n("linear", "x"),
    "z_act": _n("activation_sigm", "z"),
    "tx": _n("activation_leaky_relu", "x"),
    "a": _n("linear", "x", "h_prev_0", "h_prev_1"),
    "a_act": _n("activation_tanh", "a"),
    "b": _n("linear_identity", "h_prev_0", "tx", scale=0.5),
    "b_act": _n("activation_relu", "b"),
    "xs": _n("elementwise_sub", "x", "b_act"),
    "m": _n("elementwise_prod", "a_act", "z_act", "h_prev_1"),
    "s": _n("elementwise_sum", "m", "xs", "h_prev_0"),
    "c": _n("linear", "s", "a_act"),
    "c_id": _n("identity", "c"),
    "h_new_1": _n("blend", "z_act", "c_id", "h_prev_1"),
    "h_new_0": _n("activation_tanh", "h_new_1"),
}


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------------- the format


def test_known_recipes_are_valid_and_distinct():
    hashes = {name: rl.functional_hash(r) for name, r in known.RECIPES.items()}
    assert len(set(hashes.values())) == len(hashes)
    for r in known.RECIPES.values():
        assert rl.check(r) == r


@pytest.mark.parametrize("bad, message", [
    ({"h_new_0": _n("activation_tanh", "h_prev_0")}, "is not used"),
    ({"a": _n("linear", "x", "b"), "b": _n("activation_tanh", "a"), "h_new_0": _n("elementwise_sum", "b", "h_prev_0")},
     "cycle"),
    ({"a": _n("linear", "x", "h_prev_0"), "dead": _n("activation_tanh", "a"), "h_new_0": _n("activation_tanh", "a")},
     "reaches no output"),
    ({"a": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a"),
      "h_new_1": _n("identity", "h_prev_1")}, "copied through"),
    ({"a": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "q")}, "'q', which is not defined"),
    ({"a": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a", "a")}, "takes 1 inputs"),
    ({"a": _n("conv", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a")}, "unknown op 'conv'"),
    ({"h_new_0": _n("elementwise_sum", "x", "h_prev_0")}, "no linear node"),
    ({"a": _n("linear", "x", "h_prev_0"), "h_new_1": _n("activation_tanh", "a")}, "without gaps"),
    ({"x": _n("linear", "h_prev_0"), "h_new_0": _n("activation_tanh", "x")}, "input of the cell"),
    ({"a": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a"),
      "h_new_1": _n("activation_tanh", "h_prev_2")}, "not defined (the recipe has 2 hidden states"),
    ([1, 2], "non-empty JSON object"),
])
def test_invalid_recipes_are_refused_with_the_reason(bad, message):
    with pytest.raises(rl.RecipeError, match=message.replace("(", r"\(")):
        rl.check(bad)


def test_size_limits():
    chain = {"n0": _n("linear", "x", "h_prev_0")}
    for i in range(1, 10):
        chain[f"n{i}"] = _n("activation_tanh", f"n{i - 1}")
    chain["h_new_0"] = _n("activation_tanh", "n9")
    rl.check(chain)
    with pytest.raises(rl.RecipeError, match="more than max_nodes=8"):
        rl.check(chain, max_nodes=8)
    with pytest.raises(rl.RecipeError, match="more than max_states=1"):
        rl.check(known.LSTM, max_states=1)


def test_load_from_file_string_and_nas_bench_log(tmp_path):
    path = tmp_path / "gru.json"
    path.write_text(json.dumps(known.GRU))
    assert rl.load(str(path)) == known.GRU
    assert rl.load(json.dumps(known.GRU)) == known.GRU
    log = tmp_path / "log.json"  # NAS-Bench-NLP's logs keep the recipe as a JSON string
    log.write_text(json.dumps({"recepie": json.dumps(known.LSTM), "val_losses": [5.0], "status": "OK"}))
    assert rl.load(str(log)) == known.LSTM
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(rl.RecipeError, match="broken.json: not valid JSON"):
        rl.load(str(tmp_path / "broken.json"))


def _renamed(recipe, mapping):
    ren = lambda n: mapping.get(n, n)  # noqa: E731
    return {ren(k): {**v, "input": [ren(i) for i in v["input"]]} for k, v in reversed(list(recipe.items()))}


def test_canonical_form_ignores_names_order_identities_and_duplicates():
    lstm = known.LSTM
    names = [n for n in lstm if not n.startswith("h_new")]
    renamed = _renamed(lstm, {n: f"q{len(names) - j}" for j, n in enumerate(names)})
    assert rl.structure_hash(renamed) == rl.structure_hash(lstm)
    swapped = {**lstm, "ig": _n("elementwise_prod", "g_act", "i_act"),
               "i": _n("linear", "h_prev_0", "x")}  # commutative inputs in another order
    assert rl.canonical(swapped) == rl.canonical(lstm)
    # an identity node in the middle and a duplicated non-linear node change nothing
    extra = {**known.GRU, "r_id": _n("identity", "r_act"), "rh": _n("elementwise_prod", "r_id", "h_prev_0")}
    assert rl.structure_hash(extra) == rl.structure_hash(known.GRU)
    dup = {**known.RNN, "h2": _n("activation_tanh", "h"), "h_new_0": _n("elementwise_sum", "h2", "h_act")}
    dup["h_act"] = _n("activation_tanh", "h")
    ref = {**known.RNN, "h_act": _n("activation_tanh", "h"), "h_new_0": _n("elementwise_sum", "h_act", "h_act")}
    assert rl.structure_hash(dup) == rl.structure_hash(ref)
    # but a different architecture differs
    assert rl.structure_hash(known.MUT1) != rl.structure_hash(known.MUT2)


def test_functional_hash_sees_equal_functions_through_different_graphs():
    gru = known.GRU
    # blend(z, a, a) is a: the same function as the plain graph, a different structure
    same = {**gru, "h_new_0": _n("blend", "z_act", "h_mix", "h_mix"),
            "h_mix": _n("blend", "z_act", "h_prev_0", "h_act")}
    assert rl.structure_hash(same) != rl.structure_hash(gru)
    assert rl.functional_hash(same) == rl.functional_hash(gru)
    # a real change of the function changes the hash
    other = {**gru, "h_act": _n("activation_sigm", "h")}
    assert rl.functional_hash(other) != rl.functional_hash(gru)
    # names do not matter
    assert rl.functional_hash(_renamed(gru, {"r": "rr", "rh": "gate"})) == rl.functional_hash(gru)


def test_param_shapes_and_count():
    spec = rl.param_shapes(known.LSTM, 3, 5)
    assert spec["W_i__0_x"] == ((3, 5), "input") and spec["W_i__1_h_prev_0"] == ((5, 5), "recurrent")
    assert rl.num_params(known.LSTM, 3, 5) == 4 * (3 * 5 + 5 * 5 + 5)
    lstm = cells.get("lstm")
    assert rl.num_params(known.LSTM, 3, 5) == sum(int(np.prod(v.shape)) for v in
                                                 lstm.init(jax.random.PRNGKey(0), 3, 5).values())


# ------------------------------------------------------------------------------- the cell


def _loss(cell, params, xs, impl, seq_lengths=None):
    _, hs = layers.rnn(cell, params, xs, impl=impl, seq_lengths=seq_lengths)
    return jnp.sum(jnp.sin(3.0 * hs))


@pytest.mark.parametrize("name", KNOWN)
def test_known_recipe_equals_the_hand_written_cell(name):
    size = 5  # MUT1/MUT2 read the raw input: input size = hidden size
    hand = cells.get(name)
    rc = cell_from_recipe(known.RECIPES[name])
    hp = _f64(hand.init(jax.random.PRNGKey(1), size, size))
    hp = {k: v + 0.05 * (i + 1) for i, (k, v) in enumerate(sorted(hp.items()))}  # biases matter too
    rp = known.to_recipe_params(name, hp)
    assert sorted(rp) == sorted(rc.param_names(size, size))
    xs = jax.random.normal(jax.random.PRNGKey(2), (3, 6, size), jnp.float64)
    lengths = jnp.array([6, 2, 4])
    want, want_g = jax.value_and_grad(_loss, 1)(hand, hp, xs, "fused", lengths)
    for impl in ("fused", "autodiff", "reference"):
        got, got_g = jax.value_and_grad(_loss, 1)(rc, rp, xs, impl, lengths)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        got_g = known.from_recipe_params(name, got_g)
        for k in want_g:
            np.testing.assert_allclose(got_g[k], want_g[k], rtol=1e-10, atol=1e-12, err_msg=f"{impl} {k}")
    # the carry: LSTMCarry(c, h) is RecipeCarry(h, (c,))
    carry, h = hand.step(hp, hand.zero_carry(hp, (3,)), xs[:, 0])
    rcarry, rh = rc.step(rp, rc.zero_carry(rp, (3,)), xs[:, 0])
    np.testing.assert_allclose(rh, h, atol=1e-12)
    if name == "lstm":
        assert isinstance(rcarry, RecipeCarry)
        np.testing.assert_allclose(rcarry.rest[0], carry.c, atol=1e-12)


def _numpy_run(recipe, params, xs, k):
    states = [np.zeros((xs.shape[0], params[next(iter(p for p in params if p.startswith("b_")))].shape[-1]))] * k
    outs = []
    for t in range(xs.shape[1]):
        states = rl.numpy_step(recipe, params, states, xs[:, t])
        outs.append(states[0])
    return np.stack(outs, 1), states


@pytest.mark.parametrize("recipe", [RICH, known.LSTM, known.MUT2], ids=["rich", "lstm", "mut2"])
def test_cell_against_numpy_and_its_reference_path(recipe):
    size = 4
    cell = cell_from_recipe(recipe)
    params = _f64(cell.init(jax.random.PRNGKey(3), size, size))
    params = {k: v + 0.1 for k, v in params.items()}
    xs = jax.random.normal(jax.random.PRNGKey(4), (2, 5, size), jnp.float64)
    np_params = {k: np.asarray(v) for k, v in params.items()}
    want, final = _numpy_run(recipe, np_params, np.asarray(xs), cell.num_states)
    for impl in ("fused", "autodiff", "reference"):
        carry, hs = layers.rnn(cell, params, xs, impl=impl)
        np.testing.assert_allclose(hs, want, rtol=1e-10, atol=1e-12, err_msg=impl)
        states = [carry] if cell.num_states == 1 else [carry.h, *carry.rest]
        for a, b in zip(states, final):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    ref = jax.grad(_loss, 1)(cell, params, xs, "reference")
    for impl in ("fused", "autodiff"):
        got = jax.grad(_loss, 1)(cell, params, xs, impl)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-11, err_msg=f"{impl} {k}")
    # and the gradient itself, against finite differences of the NumPy implementation
    k = "W_c__1_a_act" if recipe is RICH else sorted(np_params)[0]
    eps, (i, j) = 1e-6, (1, 2)
    def np_loss(p):  # noqa: E306
        return float(np.sum(np.sin(3.0 * _numpy_run(recipe, p, np.asarray(xs), cell.num_states)[0])))
    plus = {**np_params, k: np_params[k].copy()}
    plus[k][i, j] += eps
    minus = {**np_params, k: np_params[k].copy()}
    minus[k][i, j] -= eps
    np.testing.assert_allclose(ref[k][i, j], (np_loss(plus) - np_loss(minus)) / (2 * eps), rtol=1e-5)


def test_fast_path_groups_and_hoisting():
    lstm = cell_from_recipe(known.LSTM)
    assert lstm.recurrent_groups == (tuple(f"W_{g}__1_h_prev_0" for g in "ifog"),)  # one [H, 4H] matmul
    assert lstm.inputs_only_added
    gru = cell_from_recipe(known.GRU)
    assert gru.recurrent_groups == (("W_r__1_h_prev_0", "W_z__1_h_prev_0"), ("W_h__1_rh",))
    rich = cell_from_recipe(RICH)
    assert not rich.inputs_only_added  # x and leaky_relu(x) are read raw inside the loop
    assert rich._plan.hoisted == {"z", "z_act", "tx"}
    params = rich.init(jax.random.PRNGKey(0), 4, 4)
    xin = rich.project_inputs(params, jnp.ones((7, 2, 4)))
    # a, b, c (linear nodes in the loop) + x and tx read raw
    assert xin.shape == (7, 2, 5 * 4)


def test_registry_spelling_and_errors(tmp_path):
    path = tmp_path / "cell.json"
    path.write_text(json.dumps({"recipe": known.GRU, "hash": "x"}))
    cell = cells.get("recipe", path=str(path))
    assert cell.graph == known.GRU and "recipe" in cells.describe() and "recipe" not in cells.names()
    name, opts = cells.parse_spec(f"recipe:path={path}")
    assert cells.get(name, **opts) == cell
    assert cells.from_spec(f"recipe:path={path}", init_scale=0.5).init_scale == 0.5
    inline = cells.from_spec("recipe:recipe=" + json.dumps(known.RNN))
    assert inline.graph == known.RNN
    hash(inline)  # a static argument of jit
    with pytest.raises(InputError, match="path=<recipe JSON file> or recipe="):
        cells.get("recipe")
    with pytest.raises(InputError, match="not both"):
        cells.get("recipe", path=str(path), recipe=known.GRU)
    with pytest.raises(FileNotFoundError):
        cells.get("recipe", path=str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="input_size ==\\s*hidden_size"):
        cell_from_recipe(known.MUT1).init(jax.random.PRNGKey(0), 3, 5)
    # MUT3 never reads x raw: any input size
    assert cell_from_recipe(known.MUT3).init(jax.random.PRNGKey(0), 3, 5)["W_h__1_x"].shape == (3, 5)


def test_vmapped_params_like_trials():
    cell = cell_from_recipe(known.MUT3)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = jax.vmap(lambda k: cell.init(k, 4, 4))(keys)
    xs = jnp.ones((2, 5, 4))
    grads = jax.vmap(lambda p: jax.grad(_loss, 1)(cell, p, xs, "fused"))(params)
    assert grads["W_h__0_rh"].shape == (3, 4, 4)
    assert bool(jnp.all(jnp.isfinite(grads["W_h__0_rh"])))
    one = jax.grad(_loss, 1)(cell, jax.tree.map(lambda a: a[1], params), xs, "fused")
    np.testing.assert_allclose(grads["W_h__0_rh"][1], one["W_h__0_rh"], rtol=1e-10)


def _grads_agree(recipe, size=4, seed=0):
    cell = cell_from_recipe(recipe)
    params = _f64(cell.init(jax.random.PRNGKey(seed), size, size))
    params = {k: v + 0.1 for k, v in params.items()}
    xs = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 5, size), jnp.float64)
    ref = jax.grad(_loss, 1)(cell, params, xs, "reference")
    for impl in ("fused", "autodiff"):
        got = jax.grad(_loss, 1)(cell, params, xs, impl)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-9, atol=1e-11, err_msg=f"{impl} {k}")
    return cell


def test_fused_gradients_when_projected_inputs_are_multiplied():
    # a linear node (its input part is a slice of the projected inputs) read by a product: the
    # fused backward pass needs that slice's values, so it must not overwrite it with gradients
    prod = {"a": _n("linear", "x", "h_prev_0"), "b": _n("linear", "x", "h_prev_0"),
            "bs": _n("activation_sigm", "b"), "h_new_0": _n("elementwise_prod", "a", "bs")}
    assert not _grads_agree(prod).inputs_only_added
    summed = {"a": _n("linear", "x", "h_prev_0"), "b": _n("linear", "h_prev_0"),
              "s": _n("elementwise_sub", "a", "b"), "h_new_0": _n("activation_tanh", "s")}
    assert _grads_agree(summed).inputs_only_added  # sums only: the slices' values are never read
    three = {"a": _n("linear", "x", "h_prev_0", "h_prev_2"), "a_act": _n("activation_tanh", "a"),
             "b": _n("linear", "a_act", "h_prev_1"), "h_new_1": _n("activation_leaky_relu", "b"),
             "h_new_2": _n("blend", "a_act", "h_prev_2", "h_new_1"),
             "h_new_0": _n("elementwise_prod", "h_new_1", "h_new_2")}
    assert _grads_agree(three).num_states == 3


def test_an_output_that_depends_on_x_only():
    rec = {"a": _n("linear", "x", "h_prev_0", "h_prev_1"), "h_new_0": _n("activation_tanh", "a"),
           "b": _n("linear", "x"), "h_new_1": _n("activation_tanh", "b")}
    _grads_agree(rec)


def test_random_recipes_and_mutants_agree_across_paths():
    from rnn_jax.search import mutate
    rng = np.random.default_rng(3)
    recipes = [mutate.random_recipe(rng, num_nodes=(4, 9), num_states=(1, 2)) for _ in range(4)]
    recipes += [mutate.mutate(known.GRU, rng), mutate.mutate(known.LSTM, rng)]
    for j, r in enumerate(recipes):
        _grads_agree(r, seed=j)


def test_more_invalid_recipes():
    chain = {"a": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a"),
             "i1": _n("identity", "h_prev_1"), "h_new_1": _n("identity", "i1")}
    with pytest.raises(rl.RecipeError, match="h_new_1 is h_prev_1 copied through"):
        rl.check(chain)
    with pytest.raises(rl.RecipeError, match="contains '__'"):
        rl.check({"a__0_b": _n("linear", "x", "h_prev_0"), "h_new_0": _n("activation_tanh", "a__0_b")})
    with pytest.raises(rl.RecipeError, match="unknown key\\(s\\) 'scale'; allowed: op, input"):
        rl.check({"a": _n("linear", "x", "h_prev_0", scale=2.0), "h_new_0": _n("activation_tanh", "a")})


def test_canonical_form_is_a_fixed_point():
    from rnn_jax.search import mutate
    rng = np.random.default_rng(1)
    for _ in range(150):
        r = mutate.random_recipe(rng, num_nodes=(4, 14), num_states=(1, 2))
        c = rl.canonical(r)
        assert rl.canonical(c) == c
        assert rl.structure_hash(c) == rl.structure_hash(r)


def test_a_cell_read_from_a_file_takes_new_options(tmp_path):
    path = tmp_path / "gru.json"
    path.write_text(json.dumps(known.GRU))
    cell = cells.get("recipe", path=str(path))
    other = cells.get(cell, init_scale=0.5)
    assert other.init_scale == 0.5 and other.graph == cell.graph
