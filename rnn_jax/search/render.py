r"""Recipes for people: equations as text, and a drawing of the graph.

:func:`equations` writes one line per node, in :func:`rnn_jax.search.recipe.equations_order`
(topological: every name is defined before it is read, outputs included), each ``name = expression`` with the
``=`` signs aligned. For a node ``n`` with inputs ``a, b, c`` (in order):

===========================  ==============================================================
op                           expression
===========================  ==============================================================
``linear``                   ``a·W_{n,a} + b·W_{n,b} + b_n``
``linear_identity``          the same ``+ s·(a + b)`` over the inputs other than ``x``
                             (``s`` the node's scale; no term when every input is ``x``)
``blend``                    ``a ⊙ b + (1 − a) ⊙ c``
``elementwise_prod``         ``a ⊙ b ⊙ c``
``elementwise_sum``          ``a + b + c``
``elementwise_sub``          ``a − b``
``activation_tanh``          ``tanh(a)``
``activation_sigm``          ``σ(a)``
``activation_leaky_relu``    ``leaky_relu(a)`` (slope 0.01)
``activation_relu``          ``relu(a)``
``identity``                 ``a``
===========================  ==============================================================

``W_{n,a}`` is the parameter ``W_<n>__<position>_<a>`` of :mod:`rnn_jax.search.cell`; when a
linear node reads the same input twice, the position is added: ``W_{n,a,0}``, ``W_{n,a,1}``.
Every operand is a single name, so no parentheses are needed besides those shown.

:func:`plot_graph` draws the graph as a PNG with matplotlib alone (Agg canvas, no pyplot, no
graphviz): nodes in layers by depth (inputs ``x, h_prev_*`` at the bottom, depth = 1 + the
largest depth of the inputs; an output that nothing reads goes to the top layer), edges that skip
layers routed through the gaps between boxes, the order in each layer chosen to reduce crossings.
Boxes show the node name and a short op label; inputs, outputs, linear nodes and the other nodes
have different colours. The inputs of ``blend`` and ``elementwise_sub`` (whose order matters)
are labelled ``z, a, b`` and ``a, b`` at the arrow heads.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import numpy as np

from rnn_jax import rundir
from rnn_jax.errors import InputError
from rnn_jax.search import recipe as rlib

__all__ = ["OP_LABELS", "equation_lines", "equations", "plot_graph"]

_NEW = re.compile(r"h_new_(\d+)$")
_PREV = re.compile(r"h_prev_(\d+)$")
_LAX = 10**6

#: Short op labels of the drawing.
OP_LABELS = {
    "linear": "lin",
    "linear_identity": "lin+I",
    "blend": "blend",
    "elementwise_prod": "⊙",
    "elementwise_sum": "+",
    "elementwise_sub": "−",
    "activation_tanh": "tanh",
    "activation_sigm": "σ",
    "activation_leaky_relu": "leaky_relu",
    "activation_relu": "relu",
    "identity": "id",
}
_FUNCS = {"activation_tanh": "tanh", "activation_sigm": "σ", "activation_leaky_relu": "leaky_relu",
          "activation_relu": "relu"}
_PORTS = {"blend": ("z", "a", "b"), "elementwise_sub": ("a", "b")}
_MEANING = {"blend": "blend: z ⊙ a + (1 − z) ⊙ b", "elementwise_sub": "−: a − b"}


def _checked(recipe) -> dict:
    return rlib.check(recipe, max_nodes=_LAX, max_states=_LAX)


# --------------------------------------------------------------------------------------------
# Equations
# --------------------------------------------------------------------------------------------


def _expression(name: str, node: Mapping) -> str:
    op, args = node["op"], node["input"]
    if op in rlib.LINEAR_OPS:
        repeated = {a for a in args if args.count(a) > 1}
        terms = [f"{a}·W_{{{name},{a},{pos}}}" if a in repeated else f"{a}·W_{{{name},{a}}}"
                 for pos, a in enumerate(args)]
        text = " + ".join(terms + [f"b_{name}"])
        ident = [a for a in args if a != "x"]
        if op == "linear_identity" and ident:
            inner = ident[0] if len(ident) == 1 else f"({' + '.join(ident)})"
            text += f" + {node['scale']:g}·{inner}"
        return text
    if op == "blend":
        z, a, b = args
        return f"{z} ⊙ {a} + (1 − {z}) ⊙ {b}"
    if op == "elementwise_prod":
        return " ⊙ ".join(args)
    if op == "elementwise_sum":
        return " + ".join(args)
    if op == "elementwise_sub":
        return f"{args[0]} − {args[1]}"
    if op == "identity":
        return args[0]
    return f"{_FUNCS[op]}({args[0]})"


def equation_lines(recipe) -> list[str]:
    """One ``name = expression`` line per node, in ``recipe.equations_order``, ``=`` aligned."""
    r = _checked(recipe)
    order = rlib.equations_order(r)
    width = max(len(n) for n in order)
    return [f"{n:<{width}} = {_expression(n, r[n])}" for n in order]


def equations(recipe) -> str:
    """The lines of :func:`equation_lines` joined by newlines (see the module docstring)."""
    return "\n".join(equation_lines(recipe))


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def _layers(r: dict) -> tuple[dict, int]:
    """Depth of every node and input; outputs that nothing reads go to the top layer."""
    k = rlib.num_states(r)
    depth = {"x": 0, **{f"h_prev_{i}": 0 for i in range(k)}}
    for n in rlib.topological_order(r):
        depth[n] = 1 + max(depth[i] for i in r[n]["input"])
    top = max(depth.values())
    read = {i for node in r.values() for i in node["input"]}
    for n in r:
        if _NEW.match(n) and n not in read:
            depth[n] = top
    return depth, top


def _isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``y`` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def _place(want: np.ndarray, sizes: np.ndarray, gap: float) -> np.ndarray:
    """Centres closest to ``want`` (least squares) that keep the order and do not overlap."""
    offsets = np.concatenate([[0.0], np.cumsum((sizes[:-1] + sizes[1:]) / 2 + gap)])
    return _isotonic(want - offsets) + offsets


def _port_offset(position: int, count: int, box_w: float) -> float:
    """Where the ``position``-th of ``count`` arrows enters a box, from its centre."""
    if count < 2:
        return 0.0
    spread = min(box_w * 0.7, 0.28 * (count - 1))
    return spread * (position / (count - 1) - 0.5)


def _layout(r: dict, box_w: float, dummy_w: float, gap: float):
    """Positions of nodes and of the bends of long edges.

    Returns ``(depth, top, x, items, chains)``: ``items[level]`` the items of each layer left to
    right (node names or dummies ``(edge index, level)``), ``x`` their centres, and ``chains`` per
    edge ``(source, target, position, [dummies])``."""
    depth, top = _layers(r)
    sources = ["x"] + [f"h_prev_{i}" for i in range(rlib.num_states(r))]
    names = sources + list(r)
    items: list[list] = [[] for _ in range(top + 1)]
    for n in names:
        items[depth[n]].append(n)
    chains = []
    for target in r:
        for pos, src in enumerate(r[target]["input"]):
            dummies = []
            for level in range(depth[src] + 1, depth[target]):
                d = (len(chains), level)
                items[level].append(d)
                dummies.append(d)
            chains.append((src, target, pos, dummies))
    # neighbours of every item, below and above, with the offset of the arrow's port on the target
    below: dict = {it: [] for row in items for it in row}
    above: dict = {it: [] for row in items for it in row}
    for src, target, pos, dummies in chains:
        path = [src, *dummies, target]
        m = len(r[target]["input"])
        port = _port_offset(pos, m, box_w) if r[target]["op"] in _PORTS else 0.0
        for lo, hi in zip(path[:-1], path[1:]):
            off = port if hi == target else 0.0
            below[hi].append((lo, -off))
            above[lo].append((hi, off))
    size = {it: dummy_w if isinstance(it, tuple) else box_w for row in items for it in row}
    x = {}
    for row in items:
        for j, it in enumerate(row):
            x[it] = float(j)

    def sweep(levels, neighbours, reorder: bool):
        for level in levels:
            row = items[level]
            want = np.array([np.mean([x[v] + off for v, off in neighbours[it]]) if neighbours[it] else x[it]
                             for it in row])
            if reorder:
                order = sorted(range(len(row)), key=lambda j: (want[j], x[row[j]]))
                row[:] = [row[j] for j in order]
                want = want[order]
            placed = _place(want, np.array([size[it] for it in row]), gap)
            for it, v in zip(row, placed):
                x[it] = float(v)

    up, down = range(1, top + 1), range(top - 1, -1, -1)
    for row in items:  # start packed
        for it, v in zip(row, _place(np.zeros(len(row)), np.array([size[it] for it in row]), gap)):
            x[it] = float(v)
    for _ in range(8):  # barycentre ordering
        sweep(up, below, True)
        sweep(down, above, True)
    both = {it: below[it] + above[it] for it in below}
    for _ in range(12):  # straighten with the order fixed
        sweep(up, both, False)
        sweep(down, both, False)
    lo = min(x[it] - size[it] / 2 for it in x)
    x = {it: v - lo for it, v in x.items()}
    return depth, top, x, items, chains


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------

_COLOURS = {"input": ("#cfe2f3", "#3d85c6"), "output": ("#fce5cd", "#e69138"),
            "linear": ("#d9ead3", "#6aa84f"), "other": ("#f3f3f3", "#999999")}


def _kind(r: dict, n: str) -> str:
    if n not in r:
        return "input"
    if _NEW.match(n):
        return "output"
    return "linear" if r[n]["op"] in rlib.LINEAR_OPS else "other"


def _op_label(node: Mapping) -> str:
    if node["op"] == "linear_identity":
        s = node["scale"]
        return "lin+I" if s == 1 else f"lin+{s:g}I"
    return OP_LABELS[node["op"]]


def _spline(points: list):
    """A smooth path through ``points`` (cubic Hermite pieces): vertical at both ends, with
    Catmull-Rom tangents at the points in between."""
    from matplotlib.path import Path

    p = np.asarray(points, dtype=float)
    tangents = np.zeros_like(p)
    tangents[0] = (0.0, p[1, 1] - p[0, 1])
    tangents[-1] = (0.0, p[-1, 1] - p[-2, 1])
    tangents[1:-1] = (p[2:] - p[:-2]) / 2
    verts = [tuple(p[0])]
    for i in range(len(p) - 1):
        verts += [tuple(p[i] + tangents[i] / 3), tuple(p[i + 1] - tangents[i + 1] / 3), tuple(p[i + 1])]
    return Path(verts, [Path.MOVETO] + [Path.CURVE4] * (len(verts) - 1))


def plot_graph(recipe, path, title: str | None = None) -> str:
    """Draws the recipe's graph as a PNG at ``path`` (written atomically); returns the path.

    See the module docstring for the layout. ``title`` (default none) goes above the graph."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"plot_graph: path must be a file path, got {path!r}")
    if title is not None and not isinstance(title, str):
        raise InputError(f"plot_graph: title must be a string or None, got {title!r}")
    r = _checked(recipe)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    # Geometry in inches: the axes fill the figure and one data unit is one inch.
    box_w, box_h, dummy_w, gap, layer_h = 1.05, 0.5, 0.12, 0.22, 1.15
    depth, top, x, items, chains = _layout(r, box_w, dummy_w, gap)
    y = {it: level * layer_h for level, row in enumerate(items) for it in row}
    width = max(x[it] + (dummy_w if isinstance(it, tuple) else box_w) / 2 for it in x)
    meanings = [_MEANING[op] for op in _MEANING if any(node["op"] == op for node in r.values())]
    margin, head = 0.3, (0.45 if title else 0.1)
    foot = 0.25 * len(meanings)
    fig_w = max(width + 2 * margin, 3.0)
    fig_h = top * layer_h + box_h + 2 * margin + head + foot
    fig = Figure(figsize=(fig_w, fig_h), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    shift = (fig_w - width) / 2
    ax.set_xlim(-shift, fig_w - shift)
    ax.set_ylim(-box_h / 2 - margin - foot, fig_h - box_h / 2 - margin - foot)
    ax.axis("off")

    # attachment points: out of the top of a box, into the bottom
    def next_x(chain_index):
        src, target, _, dummies = chains[chain_index]
        return x[dummies[0]] if dummies else x[target]

    def prev_x(chain_index):
        src, target, _, dummies = chains[chain_index]
        return x[dummies[-1]] if dummies else x[src]

    out_x: dict = {}
    by_source: dict = {}
    for j, (src, *_rest) in enumerate(chains):
        by_source.setdefault(src, []).append(j)
    for src, js in by_source.items():
        js = sorted(js, key=lambda j: (next_x(j), j))
        spread = min(box_w * 0.6, 0.16 * (len(js) - 1))
        for m, j in enumerate(js):
            out_x[j] = x[src] + (spread * (m / (len(js) - 1) - 0.5) if len(js) > 1 else 0.0)
    in_x: dict = {}
    by_target: dict = {}
    for j, (_, target, _, _) in enumerate(chains):
        by_target.setdefault(target, []).append(j)
    for target, js in by_target.items():
        if r[target]["op"] not in _PORTS:  # order does not matter: avoid crossings
            js = sorted(js, key=lambda j: (prev_x(j), j))
        for m, j in enumerate(js):
            in_x[j] = x[target] + _port_offset(m, len(js), box_w)

    for j, (src, target, pos, dummies) in enumerate(chains):
        start, end = (out_x[j], y[src] + box_h / 2), (in_x[j], y[target] - box_h / 2)
        pts = [start, *[(x[d], y[d]) for d in dummies], end]
        colour = "#555555" if src in r else _COLOURS["input"][1]
        ax.add_patch(FancyArrowPatch(path=_spline(pts), arrowstyle="-|>", mutation_scale=11, lw=1.0,
                                     color=colour, zorder=1))
        ports = _PORTS.get(r[target]["op"])
        if ports:
            ax.text(end[0] + 0.04, end[1] - 0.1, ports[pos], fontsize=7, color="#b45f06", style="italic",
                    ha="left", va="center", zorder=3)

    for level, row in enumerate(items):
        for it in row:
            if isinstance(it, tuple):
                continue
            fill, edge = _COLOURS[_kind(r, it)]
            ax.add_patch(FancyBboxPatch((x[it] - box_w / 2, y[it] - box_h / 2), box_w, box_h,
                                        boxstyle="round,pad=0,rounding_size=0.08", fc=fill, ec=edge, lw=1.2,
                                        zorder=2))
            if it in r:
                ax.text(x[it], y[it] + 0.1, it, ha="center", va="center", fontsize=8.5, weight="bold", zorder=3)
                ax.text(x[it], y[it] - 0.11, _op_label(r[it]), ha="center", va="center", fontsize=9, zorder=3)
            else:
                ax.text(x[it], y[it], it, ha="center", va="center", fontsize=9, weight="bold", zorder=3)
    if title:
        ax.text(width / 2, top * layer_h + box_h / 2 + margin * 0.6 + head / 2, title, ha="center",
                va="center", fontsize=11, weight="bold")
    for m, text in enumerate(meanings):
        ax.text(width / 2, -box_h / 2 - margin * 0.5 - 0.25 * m - 0.1, text, ha="center", va="center",
                fontsize=8, color="#444444")
    return rundir.save_figure_atomic(fig, path)
