r"""Cells as graphs: the recipe format of NAS-Bench-NLP, its checks, canonical form and hashes.

A *recipe* is a JSON object ``{node: {"op": op, "input": [names]}}`` (Klyuchnikov et al. 2020,
"NAS-Bench-NLP"), a directed acyclic graph over the inputs ``x`` (this step's input) and
``h_prev_0 .. h_prev_{k-1}`` (the carry), whose nodes ``h_new_0 .. h_new_{k-1}`` are the new
carry. ``h_new_0`` is the layer's output. The 14k published recipes load as they are; for example
the LSTM (``h_prev_1`` is the memory cell)::

    {"i":  {"op": "linear", "input": ["x", "h_prev_0"]}, "i_act": {"op": "activation_sigm", "input": ["i"]},
     ...
     "h_new_1": {"op": "elementwise_sum", "input": ["fc", "ig"]},
     "h_new_0": {"op": "elementwise_prod", "input": ["o_act", "c_act"]}}

Operators (``a, b, c`` are the inputs in order):

===========================  =====  ==========================================================
op                           arity  value
===========================  =====  ==========================================================
``linear``                   1-3    ``a W_a + b W_b + c W_c + bias`` (one matrix per input)
``linear_identity``          1-3    ``linear`` plus ``scale · (a + b + c)`` over the inputs other
                                    than ``x`` (Jozefowicz et al.'s Linear with a scaled
                                    identity added to ``W``; ``"scale"`` in the node, default 1)
``blend``                    3      ``a ⊙ b + (1 − a) ⊙ c``
``elementwise_prod``         2-3    ``a ⊙ b (⊙ c)``
``elementwise_sum``          2-3    ``a + b (+ c)``
``elementwise_sub``          2      ``a − b``
``activation_tanh``          1      ``tanh a``
``activation_sigm``          1      ``σ(a)``
``activation_leaky_relu``    1      ``max(a, 0.01 a)`` (PyTorch's default slope, as NAS-Bench-NLP)
``activation_relu``          1      ``max(a, 0)``
``identity``                 1      ``a``
===========================  =====  ==========================================================

The first five rows and the three NAS-Bench-NLP activations are that benchmark's operators; the
rest are the ones Jozefowicz, Zaremba & Sutskever (2015) used beyond them.

A recipe is *valid* (:func:`check`) when it is acyclic, every name it reads is defined, ``x``
and every ``h_prev_i`` are used, every node reaches an output, no ``h_new_i`` is an identity of an
input (a carry copied through unchanged), it has at least one ``linear`` node (a cell without
parameters cannot learn) and it is within the size limits.

:func:`canonical` renames the inner nodes by structure, drops identity nodes, sorts the inputs
of commutative operators and merges nodes that compute the same value, so that recipes that
differ only in those ways get the same :func:`structure_hash`. :func:`functional_hash` goes
further: it hashes the outputs of the canonical recipe on fixed random inputs and parameters
(NumPy, no compile), so that graphs computing the same function by different routes
(``blend(z, a, a)`` and ``a``) are evaluated once. Equal hashes mean equal outputs on the probe;
the converse is not promised (two linear nodes that play symmetric roles may be named in either
order).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from rnn_jax.errors import InputError

__all__ = [
    "LINEAR_OPS", "OPS", "RecipeError", "canonical", "check", "equations_order", "functional_hash",
    "load", "numpy_init", "numpy_step", "num_params", "num_states", "param_shapes", "parents",
    "structure_hash", "to_json", "topological_order",
]

# op -> (min arity, max arity)
OPS: dict[str, tuple[int, int]] = {
    "linear": (1, 3),
    "linear_identity": (1, 3),
    "blend": (3, 3),
    "elementwise_prod": (2, 3),
    "elementwise_sum": (2, 3),
    "elementwise_sub": (2, 2),
    "activation_tanh": (1, 1),
    "activation_sigm": (1, 1),
    "activation_leaky_relu": (1, 1),
    "activation_relu": (1, 1),
    "identity": (1, 1),
}
#: The operators of NAS-Bench-NLP's search space (the others are Jozefowicz et al.'s).
NAS_BENCH_OPS = ("linear", "blend", "elementwise_prod", "elementwise_sum", "activation_tanh",
                 "activation_sigm", "activation_leaky_relu")
LINEAR_OPS = ("linear", "linear_identity")
COMMUTATIVE = ("linear", "linear_identity", "elementwise_prod", "elementwise_sum")
LEAKY_SLOPE = 0.01

# Default size limits (NAS-Bench-NLP's space has up to 24 nodes and 2 hidden states; the LSTM
# recipe has 16 nodes).
MAX_NODES = 32
MAX_STATES = 3

_PREV = re.compile(r"h_prev_(\d+)$")
_NEW = re.compile(r"h_new_(\d+)$")


class RecipeError(InputError):
    """An invalid recipe; the message names the node and what is wrong."""


Recipe = dict  # {node: {"op": str, "input": [str, ...], optional "scale": float}}


# --------------------------------------------------------------------------------------------
# Loading and checks
# --------------------------------------------------------------------------------------------


def load(source: Any, *, max_nodes: int = MAX_NODES, max_states: int = MAX_STATES) -> Recipe:
    """A checked recipe from a dict, a JSON string or the path of a JSON file.

    A file may hold the recipe itself, or an object with a ``"recipe"`` (this project's files)
    or ``"recepie"`` key (NAS-Bench-NLP's logs, where the value is itself a JSON string).
    """
    origin = "recipe"
    if isinstance(source, (str, os.PathLike)) and not str(source).lstrip().startswith("{"):
        origin = str(source)
        with open(source) as f:
            text = f.read()
        source = _parse_json(text, origin)
    elif isinstance(source, str):
        source = _parse_json(source, origin)
    if isinstance(source, Mapping):
        for key in ("recipe", "recepie"):
            if key in source and not _looks_like_node(source[key]):
                inner = source[key]
                source = _parse_json(inner, origin) if isinstance(inner, str) else inner
                break
    return check(source, max_nodes=max_nodes, max_states=max_states, origin=origin)


def _looks_like_node(value) -> bool:
    return isinstance(value, Mapping) and "op" in value


def _parse_json(text: str, origin: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecipeError(f"{origin}: not valid JSON ({e})") from None


def check(recipe: Any, *, max_nodes: int = MAX_NODES, max_states: int = MAX_STATES,
          origin: str = "recipe") -> Recipe:
    """The recipe, normalised (``input`` as lists, ``scale`` only on ``linear_identity``), or a
    :class:`RecipeError` naming what is wrong. See the module docstring for the rules."""
    if not isinstance(recipe, Mapping) or not recipe:
        raise RecipeError(f"{origin}: a recipe is a non-empty JSON object"
                          f" {{node: {{'op': ..., 'input': [...]}}}}, got {type(recipe).__name__}")
    out: Recipe = {}
    for name, spec in recipe.items():
        if not isinstance(name, str) or not name:
            raise RecipeError(f"{origin}: node names are non-empty strings, got {name!r}")
        if name == "x" or _PREV.match(name):
            raise RecipeError(f"{origin}: {name!r} is an input of the cell and cannot be defined as a node")
        if "__" in name:
            raise RecipeError(f"{origin}: node name {name!r} contains '__', which parameter names use as a"
                              f" separator; rename the node")
        if not isinstance(spec, Mapping) or "op" not in spec or "input" not in spec:
            raise RecipeError(f"{origin}: node {name!r} must be {{'op': ..., 'input': [...]}}, got {spec!r}")
        allowed_keys = ("op", "input", "scale") if spec["op"] == "linear_identity" else ("op", "input")
        extra_keys = sorted(set(spec) - set(allowed_keys))
        if extra_keys:
            raise RecipeError(f"{origin}: node {name!r} ({spec['op']}) has unknown key(s)"
                              f" {', '.join(map(repr, extra_keys))}; allowed: {', '.join(allowed_keys)}")
        op, inputs = spec["op"], spec["input"]
        if op not in OPS:
            raise RecipeError(f"{origin}: node {name!r} has unknown op {op!r}; allowed: {', '.join(OPS)}")
        if isinstance(inputs, str) or not isinstance(inputs, (list, tuple)):
            raise RecipeError(f"{origin}: node {name!r}: 'input' must be a list of node names, got {inputs!r}")
        lo, hi = OPS[op]
        if not lo <= len(inputs) <= hi:
            arity = str(lo) if lo == hi else f"{lo} to {hi}"
            raise RecipeError(f"{origin}: node {name!r}: {op} takes {arity} inputs, got {len(inputs)}")
        node = {"op": op, "input": [str(i) for i in inputs]}
        if op == "linear_identity":
            scale = spec.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not np.isfinite(scale):
                raise RecipeError(f"{origin}: node {name!r}: scale must be a finite number, got {scale!r}")
            node["scale"] = float(scale)
        out[name] = node

    states = sorted(int(m.group(1)) for m in map(_NEW.match, out) if m)
    if not states:
        raise RecipeError(f"{origin}: no output node; a recipe defines h_new_0 (the layer output)"
                          f" and optionally h_new_1, ...")
    k = len(states)
    if states != list(range(k)):
        raise RecipeError(f"{origin}: outputs must be h_new_0 .. h_new_{k - 1} without gaps, got"
                          f" {', '.join(f'h_new_{i}' for i in states)}")
    if k > max_states:
        raise RecipeError(f"{origin}: {k} hidden states, more than max_states={max_states}")
    inner = len(out)
    if inner > max_nodes:
        raise RecipeError(f"{origin}: {inner} nodes, more than max_nodes={max_nodes}")
    sources = {"x"} | {f"h_prev_{i}" for i in range(k)}
    for name, node in out.items():
        for i in node["input"]:
            if i not in out and i not in sources:
                m = _PREV.match(i)
                hint = (f" (the recipe has {k} hidden state{'s' if k > 1 else ''}: h_new_0..h_new_{k - 1})"
                        if m else "")
                raise RecipeError(f"{origin}: node {name!r} reads {i!r}, which is not defined{hint}")
    topological_order(out, origin=origin)  # raises on cycles
    used = {i for node in out.values() for i in node["input"]}
    for s in sorted(sources):
        if s not in used:
            raise RecipeError(f"{origin}: input {s!r} is not used by any node")
    live = _ancestors(out, [f"h_new_{i}" for i in range(k)])
    dead = [n for n in out if n not in live]
    if dead:
        raise RecipeError(f"{origin}: node{'s' if len(dead) > 1 else ''} {', '.join(map(repr, dead))}"
                          f" reach{'' if len(dead) > 1 else 'es'} no output h_new_*")
    for i in range(k):
        src = f"h_new_{i}"
        while src in out and out[src]["op"] == "identity":  # follow identity chains
            src = out[src]["input"][0]
        if src in sources:
            raise RecipeError(f"{origin}: h_new_{i} is {src} copied through unchanged;"
                              f" an output must be computed")
    if not any(n["op"] in LINEAR_OPS for n in out.values()):
        raise RecipeError(f"{origin}: no linear node; a cell without parameters cannot learn")
    return out


def _ancestors(recipe: Recipe, names) -> set:
    seen, stack = set(), list(names)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n in recipe:
            stack.extend(recipe[n]["input"])
    return seen


def topological_order(recipe: Recipe, *, origin: str = "recipe") -> list[str]:
    """Inner nodes so that every node comes after its inputs (ties: the recipe's order)."""
    order, state = [], {}

    def visit(n, path):
        if n not in recipe or state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = path[path.index(n):] + [n]
            raise RecipeError(f"{origin}: cycle {' -> '.join(cycle)}")
        state[n] = 1
        for i in recipe[n]["input"]:
            visit(i, path + [n])
        state[n] = 2
        order.append(n)

    for n in recipe:
        visit(n, [])
    return order


def num_states(recipe: Recipe) -> int:
    """``k``: the number of hidden states (``h_new_0 .. h_new_{k-1}``)."""
    return sum(1 for n in recipe if _NEW.match(n))


def parents(recipe: Recipe, name: str) -> list[str]:
    """Every node or input ``name`` depends on, directly or not (excluding itself)."""
    return sorted(_ancestors(recipe, recipe[name]["input"]))


def to_json(recipe: Recipe) -> str:
    """The recipe as compact, key-sorted JSON (one line)."""
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def weight_name(node: str, position: int, source: str) -> str:
    """The matrix of ``linear`` node ``node`` for its input ``source`` at ``position``."""
    return f"W_{node}__{position}_{source}"


def bias_name(node: str) -> str:
    return f"b_{node}"


def param_shapes(recipe: Recipe, input_size: int, hidden_size: int) -> dict[str, tuple[tuple, str]]:
    """``{name: (shape, kind)}`` with kind ``input`` (from ``x``), ``recurrent`` or ``bias``."""
    spec = {}
    for name in topological_order(recipe):
        node = recipe[name]
        if node["op"] not in LINEAR_OPS:
            continue
        for pos, src in enumerate(node["input"]):
            rows = input_size if src == "x" else hidden_size
            spec[weight_name(name, pos, src)] = ((rows, hidden_size), "input" if src == "x" else "recurrent")
        spec[bias_name(name)] = ((hidden_size,), "bias")
    return spec


def num_params(recipe: Recipe, input_size: int, hidden_size: int) -> int:
    return int(sum(np.prod(s) for s, _ in param_shapes(recipe, input_size, hidden_size).values()))


def input_must_match_hidden(recipe: Recipe) -> bool:
    """True when ``x`` reaches a non-linear operator directly, so ``input_size == hidden_size``."""
    return any(src == "x" and node["op"] not in LINEAR_OPS
               for node in recipe.values() for src in node["input"])


# --------------------------------------------------------------------------------------------
# NumPy evaluation (independent of the JAX cell; used by the hash and by tests)
# --------------------------------------------------------------------------------------------


def _np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np_node(node: Mapping, values: list, params: Mapping, name: str, inputs: list[str]):
    op = node["op"]
    if op in LINEAR_OPS:
        out = params[bias_name(name)] + sum(
            v @ params[weight_name(name, pos, src)] for pos, (src, v) in enumerate(zip(inputs, values)))
        if op == "linear_identity":
            out = out + node["scale"] * sum(v for src, v in zip(inputs, values) if src != "x")
        return out
    if op == "blend":
        z, a, b = values
        return z * a + (1.0 - z) * b
    if op == "elementwise_prod":
        out = values[0]
        for v in values[1:]:
            out = out * v
        return out
    if op == "elementwise_sum":
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out
    if op == "elementwise_sub":
        return values[0] - values[1]
    a = values[0]
    return {"activation_tanh": np.tanh, "activation_sigm": _np_sigmoid,
            "activation_relu": lambda v: np.maximum(v, 0.0),
            "activation_leaky_relu": lambda v: np.where(v >= 0, v, LEAKY_SLOPE * v),
            "identity": lambda v: v}[op](a)


def numpy_step(recipe: Recipe, params: Mapping, states, x):
    """One step in NumPy: ``states`` is the list ``[h_prev_0, ...]``; returns ``[h_new_0, ...]``."""
    values = {"x": np.asarray(x)}
    for i, s in enumerate(states):
        values[f"h_prev_{i}"] = np.asarray(s)
    for name in topological_order(recipe):
        node = recipe[name]
        values[name] = _np_node(node, [values[i] for i in node["input"]], params, name, node["input"])
    return [values[f"h_new_{i}"] for i in range(num_states(recipe))]


def numpy_init(recipe: Recipe, input_size: int, hidden_size: int, seed: int = 0,
               seeds: Mapping[str, int] | None = None) -> dict:
    """Uniform ``±1/sqrt(hidden)`` parameters (biases too, so that they matter in a probe).

    ``seeds`` maps a linear node to the seed of its own parameters (default: ``seed`` and the
    node's position)."""
    bound = 1.0 / np.sqrt(hidden_size)
    params = {}
    order = [n for n in topological_order(recipe) if recipe[n]["op"] in LINEAR_OPS]
    for j, name in enumerate(order):
        node_seed = seeds[name] if seeds is not None else [seed, j]
        rng = np.random.default_rng(node_seed)
        for pos, src in enumerate(recipe[name]["input"]):
            rows = input_size if src == "x" else hidden_size
            params[weight_name(name, pos, src)] = rng.uniform(-bound, bound, (rows, hidden_size))
        params[bias_name(name)] = rng.uniform(-bound, bound, (hidden_size,))
    return params


# --------------------------------------------------------------------------------------------
# Canonical form and hashes
# --------------------------------------------------------------------------------------------


def _drop_identities(recipe: Recipe) -> Recipe:
    """Consumers of an inner identity node read its input instead; output identities stay."""
    alias = {}
    for name in topological_order(recipe):
        node = recipe[name]
        if node["op"] == "identity" and not _NEW.match(name):
            src = node["input"][0]
            alias[name] = alias.get(src, src)
    return {n: {**node, "input": [alias.get(i, i) for i in node["input"]]}
            for n, node in recipe.items() if n not in alias}


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _head(node) -> str:
    return node["op"] + (f"[{node['scale']:g}]" if "scale" in node else "")


def _bottom_up(recipe: Recipe) -> dict[str, str]:
    """Each node's op over its inputs' signatures; equal-form linear nodes are not told apart."""
    sig = {"x": "x", **{f"h_prev_{i}": f"h_prev_{i}" for i in range(num_states(recipe))}}
    for name in topological_order(recipe):
        node = recipe[name]
        a = [sig[i] for i in node["input"]]
        a = sorted(a) if node["op"] in COMMUTATIVE else a
        sig[name] = _digest(f"{_head(node)}({','.join(a)})")
    return sig


def _signatures(recipe: Recipe) -> dict[str, str]:
    """A structural signature per node, independent of the node names.

    A non-linear node's signature is its op over its inputs' signatures (sorted for commutative
    ops), so two nodes computing the same value get the same one. Linear nodes with the same
    form (LSTM's four gates) are different functions (their own weights): they are told apart by
    where their values go (a top-down signature of their consumers), and numbered in that order.
    """
    sources = ["x"] + [f"h_prev_{i}" for i in range(num_states(recipe))]
    order = topological_order(recipe)

    head = _head

    def args(node, sig):
        a = [sig[i] for i in node["input"]]
        return sorted(a) if node["op"] in COMMUTATIVE else a

    sig0 = _bottom_up(recipe)
    consumers: dict[str, list] = {n: [] for n in sources + order}
    for name in order:
        for pos, i in enumerate(recipe[name]["input"]):
            consumers[i].append((name, pos))
    context = {}
    for name in reversed(order):
        parts = [f"out:{name}"] if _NEW.match(name) else []
        for c, pos in consumers[name]:
            where = "*" if recipe[c]["op"] in COMMUTATIVE else str(pos)
            parts.append(f"{sig0[c]}:{where}:{context[c]}")
        context[name] = _digest("|".join(sorted(parts)))
    sig = {s: s for s in sources}
    seen: dict[str, int] = {}
    for name in order:
        node = recipe[name]
        base = f"{head(node)}({','.join(args(node, sig))})"
        if node["op"] in LINEAR_OPS:
            key = f"{base}@{context[name]}"
            j = seen.get(key, 0)
            seen[key] = j + 1
            base = f"{key}#{j}"
        sig[name] = _digest(base)
    return sig


def canonical(recipe: Recipe) -> Recipe:
    """The recipe with identity nodes removed, equal non-linear nodes merged, commutative inputs
    sorted and inner nodes renamed ``n0, n1, ...`` in an order fixed by structure."""
    merged = _drop_identities(check(recipe, max_nodes=10**6, max_states=10**6))
    while True:  # merge nodes with equal signatures until none are left (names never matter)
        sig = _signatures(merged)
        keep: dict[str, str] = {}  # signature -> the node kept (an output name if one is)
        for name in topological_order(merged):
            s = sig[name]
            if s not in keep or (_NEW.match(name) and not _NEW.match(keep[s])):
                keep[s] = name
        alias = {name: keep[sig[name]] for name in merged
                 if keep[sig[name]] != name and not _NEW.match(name)}
        if not alias:
            break
        merged = {n: {**node, "input": [alias.get(i, i) for i in node["input"]]}
                  for n, node in merged.items() if n not in alias}
    depth = {"x": 0, **{f"h_prev_{i}": 0 for i in range(num_states(merged))}}
    for name in topological_order(merged):
        depth[name] = 1 + max(depth[i] for i in merged[name]["input"])
    inner = sorted((n for n in merged if not _NEW.match(n)), key=lambda n: (depth[n], sig[n]))
    rename = {n: f"n{j}" for j, n in enumerate(inner)}
    new_sig = {rename.get(n, n): sig[n] for n in merged}
    out = {}
    for name in sorted(merged, key=lambda n: (0, depth[n], sig[n]) if n in rename else (1, n, "")):
        node = merged[name]
        inputs = [rename.get(i, i) for i in node["input"]]
        if node["op"] in COMMUTATIVE:
            inputs = sorted(inputs, key=lambda i: new_sig.get(i, i))
        out[rename.get(name, name)] = {**node, "input": inputs}
    return out


def structure_hash(recipe: Recipe) -> str:
    """12 hex digits of the SHA-256 of the canonical recipe's JSON."""
    return hashlib.sha256(to_json(canonical(recipe)).encode()).hexdigest()[:12]


def functional_hash(recipe: Recipe, *, hidden_size: int = 8, batch: int = 4, steps: int = 3,
                    decimals: int = 6, max_permutations: int = 120) -> str:
    """12 hex digits of a hash of the canonical recipe's outputs on fixed random inputs.

    The probe runs ``steps`` steps from a random carry, ``input_size == hidden_size``, outputs
    rounded to ``decimals``. Parameters come from seeds of the linear nodes' forms: linear nodes
    of the same form (the LSTM's four gates) share a pool of seeds, and the hash is the smallest
    over the ways of handing those seeds out (at most ``max_permutations``; beyond that, one
    fixed way), so it does not depend on node names or on which of two equal-form gates is which.
    """
    import itertools
    import math

    canon = canonical(recipe)
    base = _bottom_up(canon)
    groups: dict[str, list] = {}
    for n in topological_order(canon):
        if canon[n]["op"] in LINEAR_OPS:
            groups.setdefault(base[n], []).append(n)
    pools = list(groups.items())
    total = math.prod(math.factorial(len(g)) for _, g in pools)
    choices = (itertools.product(*(itertools.permutations(g) for _, g in pools)) if total <= max_permutations
               else [tuple(tuple(g) for _, g in pools)])
    k = num_states(canon)
    best = None
    for choice in choices:
        seeds = {}
        for (form, _), members in zip(pools, choice):
            for j, n in enumerate(members):
                seeds[n] = int.from_bytes(hashlib.sha256(f"{form}#{j}".encode()).digest()[:8], "little")
        params = numpy_init(canon, hidden_size, hidden_size, seeds=seeds)
        rng = np.random.default_rng(12345)
        states = [rng.uniform(-1, 1, (batch, hidden_size)) for _ in range(k)]
        outs = []
        with np.errstate(all="ignore"):
            for _ in range(steps):
                states = numpy_step(canon, params, states, rng.normal(size=(batch, hidden_size)))
                outs.append(np.stack(states))
        probe = np.round(np.stack(outs), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
        probe = np.nan_to_num(probe, nan=1e300)
        digest = hashlib.sha256(probe.astype(np.float64).tobytes()).hexdigest()[:12]
        best = digest if best is None else min(best, digest)
    return best


def equations_order(recipe: Recipe) -> list[str]:
    """Nodes in the order equations should be printed: every name defined before it is read
    (topological; ties in the recipe's order)."""
    return topological_order(recipe)
