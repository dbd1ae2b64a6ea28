import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax.errors import InputError
from rnn_jax.search import known
from rnn_jax.search import mutate as mut
from rnn_jax.search import recipe as rlib
from rnn_jax.search.cell import cell_from_recipe

SEEDS = range(25)
KNOWN = sorted(known.RECIPES)
# The RNN (h = x W + h_prev_0 U + b, h_new_0 = tanh h) has no valid rewiring and no valid ancestor
# replacement: each loses x, h_prev_0 or the linear node.
NO_VALID_MOVE = {("rnn", "change_edge"), ("rnn", "replace_by_ancestor")}


def _well_formed(r):
    """Names defined, arities right, acyclic (not necessarily valid: see mut's docstring)."""
    k = rlib.num_states(r)
    defined = set(r) | {"x"} | {f"h_prev_{i}" for i in range(k)}
    for name, node in r.items():
        lo, hi = rlib.OPS[node["op"]]
        assert lo <= len(node["input"]) <= hi, (name, node)
        assert set(node["input"]) <= defined, (name, node)
        assert ("scale" in node) == (node["op"] == "linear_identity"), (name, node)
    rlib.topological_order(r)  # raises on a cycle


@pytest.mark.parametrize("op_name", sorted(mut.OPERATORS))
@pytest.mark.parametrize("name", KNOWN)
def test_operator_via_mutate_gives_valid_distinct_recipes(op_name, name):
    parent = known.RECIPES[name]
    before = copy.deepcopy(parent)
    parent_hash = rlib.structure_hash(parent)
    if (name, op_name) in NO_VALID_MOVE:
        with pytest.raises(mut.MutationError, match="no valid mutation"):
            mut.mutate(parent, np.random.default_rng(0), operators=[op_name])
        return
    for seed in SEEDS:
        child = mut.mutate(parent, np.random.default_rng(seed), operators=[op_name])
        assert rlib.check(child) == child
        assert rlib.structure_hash(child) != parent_hash
        again = mut.mutate(parent, np.random.default_rng(seed), operators=[op_name])
        assert again == child
        assert parent == before
        if op_name == "insert_node":
            assert len(child) == len(parent) + 1
            assert set(parent) < set(child)
        elif op_name == "replace_by_ancestor":
            assert len(child) < len(parent)
            assert set(child) < set(parent)
        elif op_name == "replace_op":
            assert list(child) == list(parent)
            assert [n["input"] for n in child.values()] == [n["input"] for n in parent.values()]
            changed = [n for n in parent if parent[n]["op"] != child[n]["op"]]
            assert len(changed) == 1


@pytest.mark.parametrize("op_name", sorted(mut.OPERATORS))
@pytest.mark.parametrize("name", KNOWN)
def test_raw_operator_is_well_formed_pure_and_deterministic(op_name, name):
    parent = known.RECIPES[name]
    before = copy.deepcopy(parent)
    func = mut.OPERATORS[op_name]
    for seed in SEEDS:
        try:
            child = func(parent, np.random.default_rng(seed))
        except mut.MutationError:
            assert op_name == "replace_by_ancestor" and name not in ("gru", "lstm")
            continue
        assert parent == before
        _well_formed(child)
        assert child == func(parent, np.random.default_rng(seed))
        if op_name == "insert_node":
            (new,) = set(child) - set(parent)
            assert new.startswith("node_") and new not in parent
            assert set(parent) < set(child)
        elif op_name == "replace_by_ancestor":
            assert set(child) < set(parent)
        elif op_name == "replace_op":
            assert list(child) == list(parent)
            assert sum(parent[n]["op"] != child[n]["op"] for n in parent) == 1


def test_insert_node_names_do_not_clash():
    r = {"node_0": {"op": "linear", "input": ["x", "h_prev_0"]},
         "node_2": {"op": "activation_tanh", "input": ["node_0"]},
         "h_new_0": {"op": "identity", "input": ["node_2"]}}
    for seed in range(20):
        child = mut.insert_node(r, np.random.default_rng(seed))
        assert set(child) - set(r) == {"node_1"}


def test_insert_node_placement_and_extra_inputs_are_acyclic():
    # Many seeds on the LSTM: the new node sits on an edge and reads no descendant of its consumer.
    parent = known.LSTM
    for seed in range(200):
        child = mut.insert_node(parent, np.random.default_rng(seed))
        (new,) = set(child) - set(parent)
        consumers = [n for n, node in child.items() if new in node["input"]]
        assert len(consumers) == 1
        (b,) = consumers
        pos = child[b]["input"].index(new)
        assert parent[b]["input"][pos] in child[new]["input"]
        rlib.topological_order(child)


def test_replace_by_ancestor_rewires_consumers():
    r = {"a": {"op": "linear", "input": ["x", "h_prev_0"]},
         "t": {"op": "activation_tanh", "input": ["a"]},
         "h_new_0": {"op": "elementwise_sum", "input": ["t", "a"]}}
    child = mut.replace_by_ancestor(r, np.random.default_rng(0))
    # either t -> a (t removed), or t -> x / h_prev_0 (t removed), or a -> x/h_prev_0 (a removed)
    assert len(child) == 2
    with pytest.raises(mut.MutationError, match="every node is an output"):
        mut.replace_by_ancestor({"h_new_0": {"op": "linear", "input": ["x", "h_prev_0"]}},
                                np.random.default_rng(0))


def test_change_edge_keeps_acyclic_and_changes_one_input():
    parent = known.GRU
    for seed in range(100):
        child = mut.change_edge(parent, np.random.default_rng(seed))
        rlib.topological_order(child)
        diffs = [(n, p) for n in child for p, (a, b) in enumerate(zip(parent[n]["input"], child[n]["input"]))
                 if a != b]
        assert len(diffs) == 1


def test_mutate_respects_max_nodes():
    parent = known.LSTM
    limit = len(parent)
    for seed in range(60):
        child = mut.mutate(parent, np.random.default_rng(seed), max_nodes=limit)
        assert len(child) <= limit
    # only insertions allowed and the recipe is at the limit: nothing is valid
    with pytest.raises(mut.MutationError, match="no valid mutation in 10 tries"):
        mut.mutate(parent, np.random.default_rng(0), max_nodes=limit, operators=["insert_node"], tries=10)
    # a walk of mutations from a recipe at the limit never grows past it
    r, rng = parent, np.random.default_rng(1)
    for _ in range(40):
        r = mut.mutate(r, rng, max_nodes=limit)
        assert len(r) <= limit


def test_mutate_restricted_ops():
    for seed in range(30):
        child = mut.mutate(known.GRU, np.random.default_rng(seed), operators=["replace_op", "insert_node"],
                           ops=rlib.NAS_BENCH_OPS)
        assert {n["op"] for n in child.values()} <= set(rlib.NAS_BENCH_OPS)


def test_mutate_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown operator 'swap'"):
        mut.mutate(known.RNN, rng, operators=["swap"])
    with pytest.raises(InputError, match="tries must be a positive integer, got 0"):
        mut.mutate(known.RNN, rng, tries=0)
    with pytest.raises(InputError, match="unknown op 'conv'"):
        mut.mutate(known.RNN, rng, ops=["conv"])
    with pytest.raises(rlib.RecipeError, match="reads 'nope'"):
        mut.mutate({"h_new_0": {"op": "linear", "input": ["x", "nope"]}}, rng)


def test_neighbours_are_distinct_and_valid():
    parent_hash = rlib.structure_hash(known.GRU)
    out = mut.neighbours(known.GRU, np.random.default_rng(3), 12)
    hashes = [rlib.structure_hash(r) for r in out]
    assert len(out) == 12 and len(set(hashes)) == 12 and parent_hash not in hashes
    for r in out:
        rlib.check(r)
    assert out == mut.neighbours(known.GRU, np.random.default_rng(3), 12)
    assert mut.neighbours(known.GRU, np.random.default_rng(3), 0) == []


@pytest.mark.parametrize("num_nodes,num_states", [((4, 12), (1, 2)), ((2, 5), 1), (6, (2, 3)), ((3, 30), 2)])
def test_random_recipe_valid_within_sizes(num_nodes, num_states):
    lo, hi = (num_nodes, num_nodes) if isinstance(num_nodes, int) else num_nodes
    ks = {num_states} if isinstance(num_states, int) else set(num_states)
    rng = np.random.default_rng(7)
    sizes, states = set(), set()
    for _ in range(150):
        r = mut.random_recipe(rng, num_nodes=num_nodes, num_states=num_states)
        assert rlib.check(r, max_nodes=hi) == r
        assert lo <= len(r) <= hi
        assert rlib.num_states(r) in ks
        assert any(n["op"] in rlib.LINEAR_OPS for n in r.values())
        assert all(name.startswith(("node_", "h_new_")) for name in r)
        sizes.add(len(r))
        states.add(rlib.num_states(r))
    assert states == ks
    assert min(sizes) == lo and max(sizes) == hi  # the whole range is sampled


def test_random_recipe_deterministic_and_ops():
    a = [mut.random_recipe(np.random.default_rng(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert len({rlib.structure_hash(mut.random_recipe(np.random.default_rng(s))) for s in range(30)}) >= 25
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = mut.random_recipe(rng, ops=("linear", "activation_tanh", "elementwise_prod"))
        assert {n["op"] for n in r.values()} <= {"linear", "activation_tanh", "elementwise_prod"}


def test_random_recipe_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="must include a linear op"):
        mut.random_recipe(rng, ops=["activation_tanh", "elementwise_sum"])
    with pytest.raises(InputError, match="num_nodes"):
        mut.random_recipe(rng, num_nodes=(5, 3))
    with pytest.raises(InputError, match="num_states 3 needs at least 3 nodes"):
        mut.random_recipe(rng, num_nodes=(1, 2), num_states=3)
    with pytest.raises(InputError, match="num_states"):
        mut.random_recipe(rng, num_states=0)


def test_cells_from_random_recipes_and_mutants_run():
    rng = np.random.default_rng(11)
    recipes = [mut.random_recipe(rng, num_nodes=(3, 8)) for _ in range(3)]
    recipes += [mut.mutate(known.RECIPES[n], rng) for n in ("gru", "lstm")]
    hidden = 3
    for r in recipes:
        cell = cell_from_recipe(r)
        params = cell.init(jax.random.PRNGKey(0), hidden, hidden)
        carry = cell.zero_carry(params, (2,))
        x = jnp.linspace(-1.0, 1.0, 2 * hidden).reshape(2, hidden)
        carry, h = cell.step(params, carry, x)
        assert h.shape == (2, hidden)
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(carry))
        assert bool(jnp.all(jnp.isfinite(h)))
