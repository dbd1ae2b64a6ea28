"""The benchmark's plumbing on a tiny shape (it measures; this only checks that it runs and counts)."""

import jax
import numpy as np
import pytest

from experiments import benchmark
from rnn_jax import cells
from tests.optional import torch_or_skip


def test_flop_count_matches_the_lstm_formula():
    b, t, i, h = 32, 100, 256, 256
    assert benchmark.matmul_flops_forward(cells.get("lstm"), b, t, h) == 2 * b * t * (i + h) * 4 * h
    assert benchmark.matmul_flops_forward(cells.get("gru"), b, t, h) == 2 * b * t * (i + h) * 3 * h


def test_parse_config():
    assert benchmark.parse_config("c2") == (64, 100, 512)
    assert benchmark.parse_config("2x3x4") == (2, 3, 4)
    with pytest.raises(ValueError, match=r"invalid config 'c9': use one of c1, c2, c3 or BxTxH"):
        benchmark.parse_config("c9")


def test_parse_cell():
    assert benchmark.parse_cell("gru:reset_after=True") == ("gru", {"reset_after": True})
    assert benchmark.parse_cell("lstm:forget_bias=1.0;peepholes=True") == (
        "lstm", {"forget_bias": 1.0, "peepholes": True})
    with pytest.raises(ValueError, match="unknown option"):
        benchmark.parse_cell("lstm:reset_after=True")


def test_xla_options_are_parsed_checked_and_reach_every_jit():
    parsed = benchmark.parse_xla_options(["xla_cpu_use_fusion_emitters=false", "a=3", "b=0.5", "c=x,y"])
    assert parsed == {"xla_cpu_use_fusion_emitters": False, "a": "3", "b": 0.5, "c": "x,y"}
    with pytest.raises(ValueError, match="invalid XLA option 'novalue': use name=value"):
        benchmark.parse_xla_options(["novalue"])
    benchmark.check_xla_options({"xla_cpu_use_fusion_emitters": False})
    bad = {"no_such_option": True}
    with pytest.raises(ValueError, match="no_such_option"):
        benchmark.check_xla_options(bad)
    # every JAX implementation compiles with the options (an unknown one fails its compile)
    for make in (lambda: benchmark.ours("lstm", "fused", 2, 3, 4, 1, bad),
                 lambda: benchmark.matmul_floor("lstm", 2, 3, 4, bad),
                 lambda: benchmark.flax_baseline("lstm", 2, 3, 4, 1, bad)):
        with pytest.raises(Exception, match="no_such_option"):
            make()


def test_tiny_benchmark_produces_rows_with_ratios():
    rows = benchmark.benchmark(["lstm"], ["2x3x4"], ["fused"], ["flax"], steps=1, rounds=1,
                               progress=lambda s: None, floor=True)
    names = [r["impl"] for r in rows]
    assert names == ["rnn_jax lstm (fused)", "XLA matmuls alone (lstm)", "flax OptimizedLSTMCell"]
    ours, floor = rows[0], rows[1]
    assert ours["ms_per_step"] > 0 and ours["compile_s"] > 0
    assert ours["speedup_vs[flax OptimizedLSTMCell]"] == pytest.approx(rows[2]["ms_per_step"] / ours["ms_per_step"])
    assert floor["ms_per_step"] > 0 and "speedup_vs[flax OptimizedLSTMCell]" in floor
    table = benchmark.format_table(rows)
    assert "| 2x3x4 B2 T3 H4 | lstm | rnn_jax lstm (fused) |" in table


def _dot_flops(jaxpr) -> int:
    """Matmul FLOPs of a jaxpr, counting each scan body ``length`` times."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in contract]))
        for sub in eqn.params.values():
            subs = sub if isinstance(sub, (list, tuple)) else [sub]
            for j in subs:
                inner = getattr(j, "jaxpr", j)
                if hasattr(inner, "eqns"):
                    total += _dot_flops(inner) * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
    return total


@pytest.mark.parametrize("cell", ["lstm", "gru", "mut1", "mut3", "fgr"])
def test_floor_step_does_the_training_steps_matmul_flops(cell):
    b, t, h = 2, 3, 4
    step, params, xs, v = benchmark.floor_step(cell, b, t, h)
    counted = _dot_flops(jax.make_jaxpr(step)(params, xs, v).jaxpr)
    assert counted == 3 * benchmark.matmul_flops_forward(cells.get(cell), b, t, h)


class _FakeCuda:
    def __init__(self, available):
        self.available = available

    def is_available(self):
        return self.available


class _FakeTorch:
    def __init__(self, cuda):
        self.cuda = _FakeCuda(cuda)


def test_torch_device_auto_is_cuda_only_with_a_gpu_on_both_sides():
    resolve = benchmark.resolve_torch_device
    assert resolve("auto", _FakeTorch(True), "gpu") == "cuda"
    assert resolve("auto", _FakeTorch(True), "cpu") == "cpu"  # JAX on the CPU: compare like with like
    assert resolve("auto", _FakeTorch(False), "gpu") == "cpu"
    assert resolve("auto", None, "gpu") == "cpu"
    assert resolve("cpu", _FakeTorch(True), "gpu") == "cpu"
    assert resolve("cuda", _FakeTorch(True), "cpu") == "cuda"
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        resolve("cuda", _FakeTorch(False), "gpu")
    with pytest.raises(ValueError, match="torch is not installed"):
        resolve("cuda", None, "gpu")
    with pytest.raises(ValueError, match="invalid torch device 'tpu'"):
        resolve("tpu", None)


def test_torch_device_flag_falls_back_to_cpu_here():
    """On this machine (JAX on the CPU) auto is cpu, and the flag parses and validates."""
    from absl import flags

    torch = None
    try:
        import torch
    except ImportError:
        pass
    if jax.default_backend() == "cpu":
        assert benchmark.resolve_torch_device("auto", torch) == "cpu"

    def parse(*args):  # a copy of the benchmark's two flags, parsed without touching its FLAGS
        fv = flags.FlagValues()
        for name in ("torch_device", "precision"):
            f = benchmark.FLAGS[name]
            flags.DEFINE_enum(name, f.default, f.parser.enum_values, f.help, flag_values=fv)
        fv(["prog", *args])
        return fv.torch_device, fv.precision

    assert parse() == ("auto", "default")
    assert parse("--torch_device=cuda", "--precision=tf32") == ("cuda", "tf32")
    assert parse("--torch_device=cpu", "--precision=float32") == ("cpu", "float32")
    with pytest.raises(flags.IllegalFlagValueError):
        parse("--torch_device=gpu")


def test_set_precision_default_changes_nothing():
    before = jax.config.jax_default_matmul_precision
    info = benchmark.set_precision("default", None)
    assert info == {"precision": "default", "jax_default_matmul_precision": before}
    assert jax.config.jax_default_matmul_precision == before
    with pytest.raises(ValueError, match="invalid precision 'fp16'"):
        benchmark.set_precision("fp16")


def test_torch_baseline_on_cpu_keeps_its_name_and_runs():
    torch_or_skip()
    tb = benchmark.torch_baseline("gru", 2, 3, 4, "cpu")
    assert tb.name == "torch nn.GRU" and tb.compile_s > 0
    tb.run(1)
