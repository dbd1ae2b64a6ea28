r"""A cell from a recipe (:mod:`rnn_jax.search.recipe`), with the project's cell contract.

``cell_from_recipe(recipe)`` (or ``cells.get("recipe", path="cell.json")``, or
``cells.get("recipe", recipe={...})``) gives a :class:`RecipeCell`: ``init``, ``zero_carry``,
``step`` and the fast path of :func:`rnn_jax.layers.rnn`, so a searched cell trains, sweeps,
vmaps and reports like a hand-written one.

Equations: each node of the recipe is one equation (see the table in
:mod:`rnn_jax.search.recipe`); a ``linear`` node ``n`` with inputs ``a, b`` is
``n = a W_{n,0,a} + b W_{n,1,b} + b_n``. Parameters are named ``W_<node>__<position>_<input>`` and
``b_<node>``. The carry is ``h_prev_0`` (an array) for one hidden state, and
:class:`RecipeCarry` ``(h, rest)`` = ``(h_prev_0, (h_prev_1, ...))`` for more; ``h`` is the
layer output.

The fast path splits the graph in two:

* nodes that depend on ``x`` only (``σ(x W + b)``, ``tanh(x)``) are *hoisted*: computed for all
  time steps before the scan, in ``project_inputs``. So is the input-side part of every other
  ``linear`` node, with its bias: one matmul per hoisted source (usually just ``x``) over all
  steps, whose result is split per node.
* the rest runs inside the scan, in ``recurrent_step``: the recurrent linear terms are grouped
  by the vector they multiply (``h_prev_0``, ``r ⊙ h``, ...), one matmul per group per step, with
  the group's matrices concatenated once per call, outside the loop, by the layer.

``step`` is the slow reference: every node computed as written, one matmul per input.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from rnn_jax import cells as cells_lib
from rnn_jax.errors import InputError
from rnn_jax.search import recipe as rlib

Array = jax.Array

__all__ = ["RecipeCarry", "RecipeCell", "cell_from_recipe"]


class RecipeCarry(NamedTuple):
    """Carry of a recipe with several hidden states: ``h`` (= ``h_prev_0``, the output) and the
    others ``rest = (h_prev_1, ...)``."""

    h: Array
    rest: tuple


@dataclasses.dataclass(frozen=True)
class _Plan:
    order: tuple            # inner nodes, topological
    hoisted: frozenset      # nodes that depend on x only
    loop: tuple             # the other nodes, topological
    pre_nodes: tuple        # loop linear nodes: their hoisted part (with bias) is a slice of xin
    raw: tuple              # hoisted values read raw by loop nodes (x or hoisted nodes)
    hoist_sources: tuple    # (source, ((node, position), ...)): matmuls in project_inputs
    groups: tuple           # (source, ((node, position), ...)): recurrent matmuls, in call order
    group_names: tuple      # recurrent_groups: per group, its weight names
    num_states: int
    x_weight: str | None    # a weight that reads x (gives the input size), if any
    bias: str               # a bias (gives the hidden size)
    inputs_only_added: bool  # see RecipeCell.inputs_only_added


def _make_plan(recipe: Mapping) -> _Plan:
    order = rlib.topological_order(recipe)
    k = rlib.num_states(recipe)
    hoisted = set()
    for n in order:
        if all(i == "x" or i in hoisted for i in recipe[n]["input"]):
            hoisted.add(n)
    loop = [n for n in order if n not in hoisted]
    is_hoisted = lambda s: s == "x" or s in hoisted  # noqa: E731
    pre_nodes = [n for n in loop if recipe[n]["op"] in rlib.LINEAR_OPS]
    raw = []
    for n in loop:
        if recipe[n]["op"] in rlib.LINEAR_OPS:
            continue
        for s in recipe[n]["input"]:
            if is_hoisted(s) and s not in raw:
                raw.append(s)
    for i in range(k):  # an output that depends on x only is part of the step's inputs
        if f"h_new_{i}" in hoisted and f"h_new_{i}" not in raw:
            raw.append(f"h_new_{i}")
    hoist_sources: dict[str, list] = {}
    groups: dict[str, list] = {}
    for n in pre_nodes:
        for pos, s in enumerate(recipe[n]["input"]):
            (hoist_sources if is_hoisted(s) else groups).setdefault(s, []).append((n, pos))
    # Recurrent groups in the order recurrent_step calls them: carry entries first, then nodes.
    sources = [f"h_prev_{i}" for i in range(k)] + loop
    group_list = tuple((s, tuple(groups[s])) for s in sources if s in groups)
    group_names = tuple(tuple(rlib.weight_name(n, pos, s) for n, pos in members)
                        for s, members in group_list)
    x_weight = next((rlib.weight_name(n, pos, s) for n in order if recipe[n]["op"] in rlib.LINEAR_OPS
                     for pos, s in enumerate(recipe[n]["input"]) if s == "x"), None)
    bias = next(rlib.bias_name(n) for n in order if recipe[n]["op"] in rlib.LINEAR_OPS)
    return _Plan(tuple(order), frozenset(hoisted), tuple(loop), tuple(pre_nodes), tuple(raw),
                 tuple((s, tuple(m)) for s, m in hoist_sources.items()), group_list, group_names, k,
                 x_weight, bias, not raw and _xin_only_added(recipe, loop, pre_nodes))


# Ops whose gradient needs none of their inputs' values: sums and differences pass it through.
_ADDITIVE = ("elementwise_sum", "elementwise_sub", "identity")


def _xin_only_added(recipe, loop, pre_nodes) -> bool:
    """Whether no value that contains a slice of ``xin`` is read by anything but a sum, a
    difference, or a nonlinearity that goes through ``ops`` (whose backward pass uses its saved
    output): then the fused layer may overwrite ``xin`` with its gradient (see
    ``Cell.inputs_only_added``). A product, a blend, a leaky ReLU or a matmul of such a value
    needs its value in the backward pass."""
    carries = set(pre_nodes)
    for n in loop:
        if recipe[n]["op"] in _ADDITIVE and any(s in carries for s in recipe[n]["input"]):
            carries.add(n)
    for n in loop:
        op = recipe[n]["op"]
        if op in _ADDITIVE or op in _LOOP_ACT:
            continue
        if any(s in carries for s in recipe[n]["input"]):
            return False
    return True


_LOOP_ACT = {"activation_tanh": "tanh", "activation_sigm": "sigmoid", "activation_relu": "relu"}


def _elementwise(op: str, values: list, node: Mapping, sources, act=None):
    """A non-linear node's value; ``act(kind, a)`` applies tanh/sigmoid/relu (default: jnp)."""
    if op == "blend":
        z, a, b = values
        return z * a + (1.0 - z) * b
    if op == "elementwise_prod":
        return functools.reduce(lambda u, v: u * v, values)
    if op == "elementwise_sum":
        return functools.reduce(lambda u, v: u + v, values)
    if op == "elementwise_sub":
        return values[0] - values[1]
    a = values[0]
    if op == "identity":
        return a
    if op == "activation_leaky_relu":
        return jnp.where(a >= 0, a, rlib.LEAKY_SLOPE * a)
    kind = _LOOP_ACT[op]
    if act is not None:
        return act(kind, a)
    return {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu}[kind](a)


def _identity_term(node: Mapping, sources, values):
    """``scale · Σ`` of the non-``x`` inputs of a ``linear_identity`` node (0 for ``linear``)."""
    if node["op"] != "linear_identity":
        return 0.0
    terms = [v for s, v in zip(sources, values) if s != "x"]
    return node["scale"] * functools.reduce(lambda u, v: u + v, terms) if terms else 0.0


@dataclasses.dataclass(frozen=True)
class RecipeCell(cells_lib.Cell):
    r"""A cell defined by a recipe (``recipe``): a JSON object, a dict, or ``path`` to a JSON file.

    Each node is one equation, in the recipe's own node names; ``describe_equations()`` prints
    them. See the module docstring for the fast path.

    >>> import jax, jax.numpy as jnp, rnn_jax
    >>> rec = {"pre": {"op": "linear", "input": ["x", "h_prev_0"]},
    ...        "h_new_0": {"op": "activation_tanh", "input": ["pre"]}}
    >>> cell = rnn_jax.cells.get("recipe", recipe=rec)
    >>> sorted(cell.init(jax.random.PRNGKey(0), 3, 4))
    ['W_pre__0_x', 'W_pre__1_h_prev_0', 'b_pre']
    """

    recipe: Any = None
    path: str = ""

    def __post_init__(self):
        super().__post_init__()
        if self.path and self.recipe is not None:
            raise InputError("recipe: give either path=... or recipe=..., not both")
        if not self.path and self.recipe is None:
            raise InputError("recipe: the cell needs path=<recipe JSON file> or recipe=<JSON object>")
        loaded = rlib.load(self.path if self.path else self.recipe)
        # Stored as JSON text so that the cell stays hashable (it is a static argument of jit);
        # the file is read once, so a copy with other options (dataclasses.replace) needs no path.
        object.__setattr__(self, "recipe", json.dumps(loaded, sort_keys=False, separators=(",", ":")))
        object.__setattr__(self, "path", "")

    # ---- the graph --------------------------------------------------------------------------

    @functools.cached_property
    def graph(self) -> dict:
        """The checked recipe as a dict."""
        return json.loads(self.recipe)

    @functools.cached_property
    def _plan(self) -> _Plan:
        return _make_plan(self.graph)

    @property
    def num_states(self) -> int:
        return self._plan.num_states

    @property
    def inputs_only_added(self) -> bool:  # type: ignore[override]
        # True when xin holds only the hoisted parts of linear nodes and nothing downstream of
        # them needs their values in the backward pass (_xin_only_added).
        return self._plan.inputs_only_added

    @property
    def recurrent_groups(self):  # type: ignore[override]
        return self._plan.group_names

    loop_params = ()

    @property
    def _hidden_param(self):  # type: ignore[override]
        return self._plan.bias

    def _input_size(self, params) -> int:
        w = self._plan.x_weight
        return params[w].shape[0] if w is not None else self.hidden_size(params)

    def param_spec(self, input_size, hidden_size):
        if input_size != hidden_size and rlib.input_must_match_hidden(self.graph):
            raise InputError(
                f"recipe: x is used directly by a non-linear node, so the cell needs input_size =="
                f" hidden_size (got input_size={input_size}, hidden_size={hidden_size}); embed or"
                f" project the inputs to the hidden size")
        return rlib.param_shapes(self.graph, input_size, hidden_size)

    # ---- carry ------------------------------------------------------------------------------

    def _wrap_carry(self, zeros):
        k = self._plan.num_states
        return zeros if k == 1 else RecipeCarry(zeros, tuple(zeros for _ in range(k - 1)))

    def _states(self, carry) -> list:
        return [carry] if self._plan.num_states == 1 else [carry.h, *carry.rest]

    def _carry(self, states: list):
        return states[0] if len(states) == 1 else RecipeCarry(states[0], tuple(states[1:]))

    # ---- reference step ---------------------------------------------------------------------

    def _reference_step(self, p, carry, x):
        g = self.graph
        values = {"x": x}
        for i, s in enumerate(self._states(carry)):
            values[f"h_prev_{i}"] = s
        for n in self._plan.order:
            node = g[n]
            args = [values[s] for s in node["input"]]
            if node["op"] in rlib.LINEAR_OPS:
                out = p[rlib.bias_name(n)]
                for pos, (s, v) in enumerate(zip(node["input"], args)):
                    out = out + v @ p[rlib.weight_name(n, pos, s)]
                values[n] = out + _identity_term(node, node["input"], args)
            else:
                values[n] = _elementwise(node["op"], args, node, node["input"])
        new = [values[f"h_new_{i}"] for i in range(self._plan.num_states)]
        return self._carry(new), new[0]

    # ---- fast path --------------------------------------------------------------------------

    def project_inputs(self, p, x):
        g, plan = self.graph, self._plan
        values = {"x": x}
        # Hoisted nodes, for all steps.
        for n in plan.order:
            if n not in plan.hoisted:
                continue
            node = g[n]
            args = [values[s] for s in node["input"]]
            if node["op"] in rlib.LINEAR_OPS:
                w = jnp.concatenate([p[rlib.weight_name(n, pos, s)] for pos, s in enumerate(node["input"])])
                a = args[0] if len(args) == 1 else jnp.concatenate(args, axis=-1)
                values[n] = a @ w + p[rlib.bias_name(n)] + _identity_term(node, node["input"], args)
            else:
                values[n] = _elementwise(node["op"], args, node, node["input"])
        # The input side of the loop's linear nodes: one matmul per hoisted source.
        pre = {n: p[rlib.bias_name(n)] for n in plan.pre_nodes}
        for s, members in plan.hoist_sources:
            w = jnp.concatenate([p[rlib.weight_name(n, pos, s)] for n, pos in members], axis=-1)
            parts = jnp.split(values[s] @ w, len(members), axis=-1)
            for (n, pos), part in zip(members, parts):
                pre[n] = pre[n] + part
                if g[n]["op"] == "linear_identity" and s != "x":
                    pre[n] = pre[n] + g[n]["scale"] * values[s]
        lead = x.shape[:-1]
        hidden = p[plan.bias].shape[-1]
        pieces = [jnp.broadcast_to(pre[n], lead + (hidden,)) for n in plan.pre_nodes]
        pieces += [values[s] for s in plan.raw]
        if not pieces:  # every node is hoisted: cannot happen in a valid recipe (h_prev is used)
            raise AssertionError("recipe without recurrent nodes")
        return jnp.concatenate(pieces, axis=-1)

    def recurrent_step(self, lp, ops, carry, xin):
        g, plan = self.graph, self._plan
        count = len(plan.pre_nodes) + len(plan.raw)
        slices = jnp.split(xin, count, axis=-1) if count > 1 else [xin]
        pre = dict(zip(plan.pre_nodes, slices[:len(plan.pre_nodes)]))
        values = dict(zip(plan.raw, slices[len(plan.pre_nodes):]))
        for i, s in enumerate(self._states(carry)):
            values[f"h_prev_{i}"] = s
        # Recurrent terms of each linear node, filled in as their groups are computed.
        terms: dict[str, Array] = {}
        group_of = {s: (names, members) for (s, members), names in zip(plan.groups, plan.group_names)}

        def run_group(source):
            if source not in group_of:
                return
            names, members = group_of[source]
            outs = jnp.split(ops.mm(names, values[source]), len(members), axis=-1)
            for (n, _), u in zip(members, outs):
                terms[n] = terms[n] + u if n in terms else u

        def act(kind, a):
            return getattr(ops, kind)(a)

        for i in range(plan.num_states):
            run_group(f"h_prev_{i}")
        for n in plan.loop:
            node = g[n]
            if node["op"] in rlib.LINEAR_OPS:
                out = pre[n] + terms[n]
                if node["op"] == "linear_identity":
                    extra = [values[s] for s in node["input"] if s != "x" and s not in plan.hoisted]
                    if extra:
                        out = out + node["scale"] * functools.reduce(lambda u, v: u + v, extra)
                values[n] = out
            else:
                args = [values[s] for s in node["input"]]
                values[n] = _elementwise(node["op"], args, node, node["input"], act)
            run_group(n)
        new = [values[f"h_new_{i}"] for i in range(plan.num_states)]
        return self._carry(new), new[0]

    # ---- display ----------------------------------------------------------------------------

    def describe_equations(self) -> str:
        from rnn_jax.search import render
        return render.equations(self.graph)


def cell_from_recipe(recipe, **options) -> RecipeCell:
    """A :class:`RecipeCell` from a recipe dict, JSON text or file path; ``options`` are the
    common cell options (``kernel_init``, ``init_scale``, ``dtype``, ...)."""
    import os
    if isinstance(recipe, (str, os.PathLike)) and not str(recipe).lstrip().startswith("{"):
        return RecipeCell(name="recipe", path=str(recipe), **options)
    return RecipeCell(name="recipe", recipe=recipe, **options)
