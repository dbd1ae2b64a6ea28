import os

import numpy as np
import pytest

from rnn_jax.errors import InputError
from rnn_jax.search import known, render
from rnn_jax.search import mutate as mut
from rnn_jax.search import recipe as rlib

PNG = b"\x89PNG\r\n\x1a\n"


def _lhs(line):
    return line.split(" = ", 1)[0].strip()


def _png_size(data):
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("name", sorted(known.RECIPES))
def test_equations_one_line_per_node(name):
    r = known.RECIPES[name]
    lines = render.equation_lines(r)
    assert render.equations(r) == "\n".join(lines)
    lhs = [_lhs(line) for line in lines]
    assert sorted(lhs) == sorted(r) and len(lhs) == len(set(lhs))
    assert lhs == rlib.equations_order(r)
    assert len({line.index(" = ") for line in lines}) == 1  # aligned
    for line in lines:  # every input of the node appears on its right-hand side
        rhs = line.split(" = ", 1)[1]
        for src in r[_lhs(line)]["input"]:
            assert src in rhs


def test_equations_known_forms():
    gru = dict(line.split(" = ", 1) for line in render.equation_lines(known.GRU))
    gru = {k.strip(): v for k, v in gru.items()}
    assert gru["h_new_0"] == "z_act ⊙ h_prev_0 + (1 − z_act) ⊙ h_act"
    assert gru["r"] == "x·W_{r,x} + h_prev_0·W_{r,h_prev_0} + b_r"
    assert gru["r_act"] == "σ(r)"
    assert gru["rh"] == "r_act ⊙ h_prev_0"
    assert gru["h_act"] == "tanh(h)"
    lstm = {k.strip(): v for k, v in (line.split(" = ", 1) for line in render.equation_lines(known.LSTM))}
    assert lstm["h_new_1"] == "fc + ig"
    assert lstm["h_new_0"] == "o_act ⊙ c_act"
    assert lstm["c_act"] == "tanh(h_new_1)"
    assert render.equation_lines(known.RNN) == ["h       = x·W_{h,x} + h_prev_0·W_{h,h_prev_0} + b_h",
                                                "h_new_0 = tanh(h)"]


def test_equations_every_op():
    r = {
        "a": {"op": "linear_identity", "input": ["x", "h_prev_0"], "scale": 0.5},
        "b": {"op": "linear_identity", "input": ["x", "a", "h_prev_0"]},
        "c": {"op": "linear", "input": ["x", "x"]},
        "d": {"op": "elementwise_sub", "input": ["b", "c"]},
        "e": {"op": "activation_relu", "input": ["d"]},
        "f": {"op": "activation_leaky_relu", "input": ["e"]},
        "g": {"op": "identity", "input": ["f"]},
        "k": {"op": "elementwise_prod", "input": ["g", "a", "c"]},
        "h_new_0": {"op": "elementwise_sum", "input": ["k", "g", "d"]},
    }
    eq = {k.strip(): v for k, v in (line.split(" = ", 1) for line in render.equation_lines(r))}
    assert eq["a"] == "x·W_{a,x} + h_prev_0·W_{a,h_prev_0} + b_a + 0.5·h_prev_0"
    assert eq["b"] == "x·W_{b,x} + a·W_{b,a} + h_prev_0·W_{b,h_prev_0} + b_b + 1·(a + h_prev_0)"
    assert eq["c"] == "x·W_{c,x,0} + x·W_{c,x,1} + b_c"
    assert eq["d"] == "b − c"
    assert eq["e"] == "relu(d)"
    assert eq["f"] == "leaky_relu(e)"
    assert eq["g"] == "f"
    assert eq["k"] == "g ⊙ a ⊙ c"
    assert eq["h_new_0"] == "k + g + d"
    # x-only linear_identity has no identity term
    only_x = {"a": {"op": "linear_identity", "input": ["x"]},
              "h_new_0": {"op": "elementwise_sum", "input": ["a", "h_prev_0"]}}
    assert render.equation_lines(only_x)[0] == "a       = x·W_{a,x} + b_a"


def test_equations_rejects_invalid_recipe():
    with pytest.raises(rlib.RecipeError, match="reads 'nope'"):
        render.equations({"h_new_0": {"op": "linear", "input": ["x", "nope"]}})


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_plot_graph_writes_png_atomically(tmp_path, name):
    path = tmp_path / f"{name}.png"
    out = render.plot_graph(known.RECIPES[name], path, title=name.upper())
    assert out == str(path)
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 5000
    assert os.listdir(tmp_path) == [f"{name}.png"]


def test_plot_graph_size_follows_graph(tmp_path):
    small = render.plot_graph(known.RNN, tmp_path / "rnn.png")
    big = render.plot_graph(known.LSTM, tmp_path / "lstm.png")
    (w1, h1), (w2, h2) = (_png_size(open(p, "rb").read()) for p in (small, big))
    assert h2 > 2 * h1 and w2 > w1  # LSTM: 7 layers, 4 gates wide; RNN: 3 layers


def test_plot_graph_overwrites_and_makes_directories(tmp_path):
    path = tmp_path / "sub" / "dir" / "g.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"old")
    render.plot_graph(known.GRU, path)
    assert path.read_bytes()[:8] == PNG
    rng = np.random.default_rng(0)
    for j in range(3):
        r = mut.random_recipe(rng, num_nodes=(10, 20), num_states=(1, 2))
        render.plot_graph(r, tmp_path / "new" / f"r{j}.png")
    assert sorted(os.listdir(tmp_path / "new")) == ["r0.png", "r1.png", "r2.png"]
    assert sorted(os.listdir(path.parent)) == ["g.png"]


def test_plot_graph_failure_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(render.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        render.plot_graph(known.GRU, tmp_path / "g.png")
    assert os.listdir(tmp_path) == []


def test_plot_graph_errors(tmp_path):
    with pytest.raises(InputError, match="path must be a file path"):
        render.plot_graph(known.GRU, 3)
    with pytest.raises(InputError, match="title must be a string"):
        render.plot_graph(known.GRU, tmp_path / "g.png", title=5)
    with pytest.raises(rlib.RecipeError):
        render.plot_graph({"h_new_0": {"op": "tanh", "input": ["x"]}}, tmp_path / "g.png")
    assert os.listdir(tmp_path) == []
