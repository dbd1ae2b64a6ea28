r"""Mutations and random sampling of recipes (:mod:`rnn_jax.search.recipe`).

The operators of Jozefowicz, Zaremba & Sutskever (2015), plus an edge rewiring; each takes a
recipe and a NumPy ``Generator`` and returns a *new* dict (the argument is never changed):

* :func:`replace_op`: one node gets another op that accepts its number of inputs
  (``linear_identity`` gets ``"scale": 1.0``); the node set and the edges stay.
* :func:`insert_node`: an edge ``a -> b`` becomes ``a -> new -> b``; ``new`` has a random op; an op
  that needs more inputs gets them from nodes/inputs that are not descendants of ``b`` (nor ``a``
  again), so the graph stays acyclic. Exactly one node is added.
* :func:`replace_by_ancestor`: a node that is not an output (``h_new_*``) is replaced by one of
  its ancestors (a node or input it depends on): each consumer reads the ancestor instead, and the
  node and every node that no longer reaches an output are removed (at least one node goes).
* :func:`change_edge`: one input of one node is rewired to another node/input that is not a
  descendant of that node (acyclic); nodes that no longer reach an output are removed.

The operators keep a recipe well formed (defined names, arities, no cycle) but not necessarily
*valid*: the result may leave ``x`` or an ``h_prev_i`` unused, lose its last linear node, copy an
input to an output or exceed the size limits. :func:`mutate` applies a random operator and retries
until :func:`rnn_jax.search.recipe.check` accepts the result under the limits and its
:func:`~rnn_jax.search.recipe.structure_hash` differs from the parent's. An operator that has no
move at all on a recipe (``replace_by_ancestor`` when every node is an output) raises
:class:`MutationError`.

New nodes are named ``node_<j>`` with the smallest ``j`` not already used. All randomness comes
from the ``rng`` argument (``numpy.random.Generator``): the same recipe and seed give the same
result.

:func:`random_recipe` samples a valid recipe (the random-search baseline); :func:`neighbours`
gives distinct valid mutants of one recipe.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from rnn_jax.errors import InputError
from rnn_jax.search import recipe as rlib
from rnn_jax.search.recipe import LINEAR_OPS, MAX_NODES, MAX_STATES, OPS, RecipeError

__all__ = [
    "OPERATORS", "MutationError", "change_edge", "insert_node", "mutate", "neighbours", "random_recipe",
    "replace_by_ancestor", "replace_op",
]

_NEW = re.compile(r"h_new_(\d+)$")
_LAX = 10**6  # size limits when checking a parent: only its well-formedness matters there
_SHARE = 0.25  # random_recipe: probability that an open input reads an existing node (a DAG, not a tree)


class MutationError(RecipeError):
    """No mutation applies: the operator has no move on this recipe, or no valid mutant was found."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, items: Sequence):
    """One element of ``items`` (a non-empty sequence), uniformly."""
    return items[int(rng.integers(len(items)))]


def _is_output(name: str) -> bool:
    return bool(_NEW.match(name))


def _sources(recipe: Mapping) -> list[str]:
    return ["x"] + [f"h_prev_{i}" for i in range(rlib.num_states(recipe))]


def _parent(recipe, who: str) -> dict:
    """A checked, normalised copy of ``recipe`` (size limits ignored)."""
    return rlib.check(recipe, max_nodes=_LAX, max_states=_LAX, origin=f"{who} (parent recipe)")


def _descendants(recipe: Mapping, name: str) -> set:
    """``name`` and every node that reads it, directly or not."""
    consumers: dict[str, list[str]] = {}
    for n, spec in recipe.items():
        for i in spec["input"]:
            consumers.setdefault(i, []).append(n)
    seen, stack = set(), [name]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(consumers.get(n, ()))
    return seen


def _fresh_name(recipe: Mapping) -> str:
    j = 0
    while f"node_{j}" in recipe:
        j += 1
    return f"node_{j}"


def _prune(recipe: Mapping) -> dict:
    """``recipe`` without the nodes that reach no output ``h_new_*``."""
    live, stack = set(), [n for n in recipe if _is_output(n)]
    while stack:
        n = stack.pop()
        if n in live or n not in recipe:
            continue
        live.add(n)
        stack.extend(recipe[n]["input"])
    return {n: spec for n, spec in recipe.items() if n in live}


def _node(op: str, inputs: list) -> dict:
    node = {"op": op, "input": list(inputs)}
    if op == "linear_identity":
        node["scale"] = 1.0
    return node


def _ops_arg(ops, who: str) -> list[str]:
    """The allowed ops as a list (default: every op of ``recipe.OPS``)."""
    if ops is None:
        return list(OPS)
    if isinstance(ops, str):
        ops = [ops]
    ops = list(ops)
    if not ops:
        raise InputError(f"{who}: ops is empty; allowed: {', '.join(OPS)}")
    bad = [op for op in ops if op not in OPS]
    if bad:
        raise InputError(f"{who}: unknown op {bad[0]!r} in ops; allowed: {', '.join(OPS)}")
    return list(dict.fromkeys(ops))


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Operators
# --------------------------------------------------------------------------------------------


def replace_op(recipe: Mapping, rng: np.random.Generator, *, ops: Iterable[str] | None = None) -> dict:
    """A node (uniformly chosen) gets another op (uniformly among ``ops``, default all) whose
    arity range contains its number of inputs; inputs and node names are unchanged."""
    r = _parent(recipe, "replace_op")
    allowed = _ops_arg(ops, "replace_op")
    moves = [(n, op) for n, spec in r.items() for op in allowed
             if op != spec["op"] and OPS[op][0] <= len(spec["input"]) <= OPS[op][1]]
    names = list(dict.fromkeys(n for n, _ in moves))
    if not names:
        raise MutationError(f"replace_op: no node can take another op from {', '.join(allowed)}")
    name = _pick(rng, names)
    op = _pick(rng, [o for n, o in moves if n == name])
    r[name] = _node(op, r[name]["input"])
    return r


def insert_node(recipe: Mapping, rng: np.random.Generator, *, ops: Iterable[str] | None = None) -> dict:
    """An edge ``a -> b`` (uniformly chosen) becomes ``a -> node_<j> -> b``.

    The new node's op is uniform among ``ops`` (default all) and its arity uniform in the op's
    range; ``a`` goes to a random input position and the other inputs are distinct nodes/inputs
    other than ``a`` that are not ``b`` nor its descendants. The new node is placed just before
    ``b`` in the dict."""
    r = _parent(recipe, "insert_node")
    allowed = _ops_arg(ops, "insert_node")
    edges = [(b, pos) for b, spec in r.items() for pos in range(len(spec["input"]))]
    b, pos = _pick(rng, edges)
    a = r[b]["input"][pos]
    below = _descendants(r, b)
    pool = [s for s in _sources(r) + list(r) if s not in below and s != a]
    feasible = [op for op in allowed if OPS[op][0] - 1 <= len(pool)]
    if not feasible:
        raise MutationError(f"insert_node: no op of {', '.join(allowed)} fits on the edge {a} -> {b}")
    op = _pick(rng, feasible)
    lo, hi = OPS[op]
    arity = int(rng.integers(lo, min(hi, len(pool) + 1) + 1))
    inputs = [pool[int(i)] for i in rng.choice(len(pool), size=arity - 1, replace=False)]
    inputs.insert(int(rng.integers(arity)), a)
    name = _fresh_name(r)
    r[b]["input"][pos] = name
    out = {}
    for n, spec in r.items():
        if n == b:
            out[name] = _node(op, inputs)
        out[n] = spec
    return out


def replace_by_ancestor(recipe: Mapping, rng: np.random.Generator, *, ops: Iterable[str] | None = None) -> dict:
    """A node that is not an output (uniformly chosen) is replaced by one of its ancestors
    (uniformly chosen, inputs included): its consumers read the ancestor instead, and the node and
    every node left without a path to an output are removed. ``ops`` is not used."""
    r = _parent(recipe, "replace_by_ancestor")
    candidates = [n for n in r if not _is_output(n)]
    if not candidates:
        raise MutationError("replace_by_ancestor: every node is an output (h_new_*); no inner node to replace")
    name = _pick(rng, candidates)
    anc = _pick(rng, rlib.parents(r, name))
    out = {n: {**spec, "input": [anc if i == name else i for i in spec["input"]]}
           for n, spec in r.items() if n != name}
    return _prune(out)


def change_edge(recipe: Mapping, rng: np.random.Generator, *, ops: Iterable[str] | None = None) -> dict:
    """One input slot of one node (uniformly chosen among all slots) reads another node/input
    (uniformly chosen among those that are not the node nor its descendants, nor the current
    input); nodes left without a path to an output are removed. ``ops`` is not used."""
    r = _parent(recipe, "change_edge")
    slots = [(b, pos) for b, spec in r.items() for pos in range(len(spec["input"]))]
    b, pos = _pick(rng, slots)
    current = r[b]["input"][pos]
    below = _descendants(r, b)
    pool = [s for s in _sources(r) + list(r) if s not in below and s != current]
    if not pool:  # cannot happen: there are at least two inputs (x, h_prev_0)
        raise MutationError(f"change_edge: input {pos} of {b!r} has nowhere else to read from")
    r[b]["input"][pos] = _pick(rng, pool)
    return _prune(r)


OPERATORS: dict[str, Callable[..., dict]] = {
    "replace_op": replace_op,
    "insert_node": insert_node,
    "replace_by_ancestor": replace_by_ancestor,
    "change_edge": change_edge,
}


# --------------------------------------------------------------------------------------------
# Mutation with checks
# --------------------------------------------------------------------------------------------


def _operators_arg(operators) -> list[tuple[str, Callable]]:
    if operators is None:
        return list(OPERATORS.items())
    if isinstance(operators, str) or callable(operators):
        operators = [operators]
    out = []
    for op in operators:
        if callable(op):
            out.append((getattr(op, "__name__", repr(op)), op))
        elif op in OPERATORS:
            out.append((op, OPERATORS[op]))
        else:
            raise InputError(f"mutate: unknown operator {op!r}; allowed: {', '.join(OPERATORS)} (or a function"
                             f" (recipe, rng) -> recipe)")
    if not out:
        raise InputError(f"mutate: operators is empty; allowed: {', '.join(OPERATORS)}")
    return out


def mutate(recipe: Mapping, rng: np.random.Generator, *, max_nodes: int = MAX_NODES,
           max_states: int = MAX_STATES, tries: int = 100, operators=None,
           ops: Iterable[str] | None = None) -> dict:
    """A valid mutant of ``recipe``: a new dict, checked and normalised by ``recipe.check``.

    Each try applies one operator chosen uniformly from ``operators`` (names of
    :data:`OPERATORS` or functions ``(recipe, rng) -> recipe``; default all) and keeps the result
    if ``check(result, max_nodes=..., max_states=...)`` passes and its ``structure_hash`` differs
    from the parent's. ``ops`` restricts the ops that ``replace_op``/``insert_node`` may introduce.
    Raises :class:`MutationError` after ``tries`` rejected tries, with the last reason."""
    parent = _parent(recipe, "mutate")
    funcs = _operators_arg(operators)
    tries = _positive_int(tries, "mutate: tries")
    max_nodes = _positive_int(max_nodes, "mutate: max_nodes")
    max_states = _positive_int(max_states, "mutate: max_states")
    if ops is not None:
        ops = _ops_arg(ops, "mutate")
    parent_hash = rlib.structure_hash(parent)
    last = "none"
    for _ in range(tries):
        name, func = funcs[int(rng.integers(len(funcs)))]
        try:
            child = func(parent, rng) if ops is None else func(parent, rng, ops=ops)
            child = rlib.check(child, max_nodes=max_nodes, max_states=max_states, origin=name)
        except RecipeError as e:
            last = str(e)
            continue
        if rlib.structure_hash(child) == parent_hash:
            last = f"{name}: same structure as the parent"
            continue
        return child
    raise MutationError(f"mutate: no valid mutation in {tries} tries (operators: {', '.join(n for n, _ in funcs)};"
                        f" max_nodes={max_nodes}, max_states={max_states}); last rejection: {last}")


def neighbours(recipe: Mapping, rng: np.random.Generator, n: int, *, max_attempts: int | None = None,
               **mutate_options) -> list[dict]:
    """``n`` valid mutants of ``recipe`` with distinct structure hashes, all different from the
    parent's; ``mutate_options`` go to :func:`mutate`. Raises :class:`MutationError` when
    ``max_attempts`` calls of :func:`mutate` (default ``20 n + 100``) do not find ``n``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise InputError(f"neighbours: n must be a non-negative integer, got {n!r}")
    attempts = 20 * int(n) + 100 if max_attempts is None else _positive_int(max_attempts, "neighbours: max_attempts")
    parent = _parent(recipe, "neighbours")
    seen = {rlib.structure_hash(parent)}
    out: list[dict] = []
    for _ in range(attempts):
        if len(out) == n:
            break
        child = mutate(parent, rng, **mutate_options)
        h = rlib.structure_hash(child)
        if h not in seen:
            seen.add(h)
            out.append(child)
    if len(out) < n:
        raise MutationError(f"neighbours: found {len(out)} distinct mutants of the {n} asked for in {attempts}"
                            f" attempts; the recipe has few valid neighbours under these limits")
    return out


# --------------------------------------------------------------------------------------------
# Random recipes
# --------------------------------------------------------------------------------------------


def _range_arg(value, what: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value))
    if not ok or not 1 <= value[0] <= value[1]:
        raise InputError(f"random_recipe: {what} must be a positive integer or an inclusive range (lo, hi)"
                         f" with 1 <= lo <= hi, got {value!r}")
    return int(value[0]), int(value[1])


def _choices_arg(value, what: str) -> list[int]:
    values = [value] if isinstance(value, (int, np.integer)) else value
    ok = (isinstance(values, (tuple, list)) and values
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in values))
    if isinstance(value, bool) or not ok:
        raise InputError(f"random_recipe: {what} must be a positive integer or a tuple of them, got {value!r}")
    return sorted({int(v) for v in values})


def _grow(rng: np.random.Generator, n: int, k: int, ops: list[str]) -> dict | None:
    """A random recipe with ``n`` nodes and ``k`` states, grown from the outputs down.

    Nodes get ids in creation order; a node reads only nodes of larger id (so the graph is
    acyclic) and every node is created to fill an open input of an existing one (so it reaches an
    output). The first ``k`` nodes are the outputs (states assigned at random). When ``n`` nodes
    exist, each input ``x, h_prev_*`` fills one open input and the rest read inputs or later nodes.
    Returns None when too few open inputs are left for the inputs of the cell."""
    n_sources = k + 1
    node_ops: list[str] = []
    inputs: list[list] = []
    wide = [op for op in ops if OPS[op][1] >= 2]

    def open_slots():
        return [(i, p) for i, slots in enumerate(inputs) for p, v in enumerate(slots) if v is None]

    def create(prefer_wide: bool):
        op = _pick(rng, wide if prefer_wide and wide else ops)
        lo, hi = OPS[op]
        arity = hi if prefer_wide else int(rng.integers(lo, hi + 1))
        node_ops.append(op)
        inputs.append([None] * arity)

    for _ in range(k):
        create(False)
    while len(node_ops) < n:
        slots = open_slots()
        owner, pos = _pick(rng, slots)
        later = [j for j in range(owner + 1, len(node_ops)) if j not in inputs[owner]]
        if later and len(slots) - 1 >= n_sources and rng.random() < _SHARE:
            inputs[owner][pos] = _pick(rng, later)
            continue
        inputs[owner][pos] = len(node_ops)
        left = n - len(node_ops)  # creations left, this one included
        deficit = n_sources - (len(slots) - 1)
        create(prefer_wide=deficit > 0 and left * 2 <= deficit + 2)
    if not any(op in LINEAR_OPS for op in node_ops):
        node_ops[int(rng.integers(n))] = _pick(rng, [op for op in ops if op in LINEAR_OPS])
    slots = open_slots()
    while len(slots) < n_sources:  # widen nodes whose op takes more inputs
        growable = [i for i, op in enumerate(node_ops) if len(inputs[i]) < OPS[op][1]]
        if not growable:
            return None
        i = _pick(rng, growable)
        inputs[i].append(None)
        slots = open_slots()
    sources = ["x"] + [f"h_prev_{i}" for i in range(k)]
    order = rng.permutation(len(slots))
    for src, idx in zip(sources, order[:n_sources]):
        owner, pos = slots[idx]
        inputs[owner][pos] = src
    for idx in order[n_sources:]:
        owner, pos = slots[idx]
        candidates = sources + list(range(owner + 1, n))
        fresh = [c for c in candidates if c not in inputs[owner]]
        inputs[owner][pos] = _pick(rng, fresh or candidates)
    states = rng.permutation(k)
    names = {i: f"h_new_{states[i]}" for i in range(k)}
    names.update({i: f"node_{n - 1 - i}" for i in range(k, n)})
    return {names[i]: _node(node_ops[i], [names[v] if isinstance(v, int) else v for v in inputs[i]])
            for i in reversed(range(n))}


def random_recipe(rng: np.random.Generator, *, num_nodes=(4, 12), num_states=(1, 2),
                  ops: Iterable[str] | None = None, max_tries: int = 1000) -> dict:
    """A random valid recipe: the sampler of the random-search baseline.

    The number of nodes is uniform in ``num_nodes`` (an inclusive range ``(lo, hi)`` or an int;
    at least the number of states), the number of states uniform among ``num_states`` (an int or
    a tuple of choices); ops are uniform among ``ops`` (default all of ``recipe.OPS``, which must
    include a linear op) and every arity is uniform in its op's range. The graph is grown from the
    outputs so that every node reaches an output, uses every input and has a linear node (one node
    is made linear if none is); samples that ``check`` rejects (an output copying an input) are
    drawn again, up to ``max_tries`` times."""
    lo, hi = _range_arg(num_nodes, "num_nodes")
    ks = _choices_arg(num_states, "num_states")
    if ks[-1] > hi:
        raise InputError(f"random_recipe: num_states {ks[-1]} needs at least {ks[-1]} nodes (one per output),"
                         f" but num_nodes allows at most {hi}")
    allowed = _ops_arg(ops, "random_recipe")
    if not any(op in LINEAR_OPS for op in allowed):
        raise InputError(f"random_recipe: ops must include a linear op ({', '.join(LINEAR_OPS)}); a recipe needs"
                         f" one, got {', '.join(allowed)}")
    max_tries = _positive_int(max_tries, "random_recipe: max_tries")
    last = "none"
    for _ in range(max_tries):
        k = _pick(rng, [k for k in ks if k <= hi])
        n = int(rng.integers(max(lo, k), hi + 1))
        candidate = _grow(rng, n, k, allowed)
        if candidate is None:
            last = "too few open inputs for x and h_prev_*"
            continue
        try:
            return rlib.check(candidate, max_nodes=hi, max_states=ks[-1], origin="random_recipe")
        except RecipeError as e:
            last = str(e)
    raise MutationError(f"random_recipe: no valid recipe in {max_tries} tries (num_nodes={num_nodes!r},"
                        f" num_states={num_states!r}); last rejection: {last}")
