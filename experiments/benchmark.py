r"""Training-step benchmark: rnn_jax layers against Flax and (when installed) PyTorch.

    python experiments/benchmark.py                      # lstm, gru (both forms), configs c1 c2 c3
    python experiments/benchmark.py --cells=lstm,gru,mut1 --configs=c1 --impls=fused,autodiff
    python experiments/benchmark.py --configs=8x20x32    # any BxTxH
    python experiments/benchmark.py --what=trials        # 8 vmapped trials vs 8 runs in a row
    python experiments/benchmark.py --precision=tf32     # on a GPU: TF32 matmuls on both sides

On a GPU (JAX's backend ``gpu`` and ``torch.cuda.is_available()``) the torch baseline runs on
CUDA (cuDNN's LSTM/GRU) unless ``--torch_device=cpu``; its inputs and parameters live on the GPU
and each timed run is bracketed by ``torch.cuda.synchronize()``, as each JAX run ends with
``block_until_ready``. ``--precision`` sets both sides' float32 matmul precision (``default``
leaves each framework's own default: on Ampere and later GPUs cuDNN's RNNs may use TF32, torch's
plain matmuls do not); on a GPU the environment line also reports measured relative errors of a
float32 matmul and of an LSTM layer on each side (about 1e-4 or more means TF32, under 1e-5 full
float32).

A training step is forward + backward to the parameters and the inputs + an SGD update, float32,
input size = hidden size, loss = mean of the outputs times a fixed random tensor. All
implementations are timed interleaved in rounds (each round times every implementation once for
``--steps`` steps), so machine noise hits them alike; the table shows the median over rounds.
GFLOP/s counts the matmuls only: forward = 2·B·T·Σ(in·out) over the cell's matrices
(LSTM: 2·B·T·(I+H)·4H), a training step = 3× forward.

``--what=trials`` times whole runs instead: ``--trials`` settings of a small task model (seeds
and learning rates differ), trained ``--trial_steps`` steps each with evaluation and checkpoints,
once one run after another (``train_and_evaluate``; each run compiles its own program, as a sweep
point in a fresh worker does) and once as vmapped trials of one program (``train_trials``). The
wall-clock ratio is the speedup of ``trials_per_program``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

if __package__ in (None, ""):  # run as a script (python experiments/benchmark.py): the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli  # noqa: E402
from rnn_jax import cells as cells_lib  # noqa: E402
from rnn_jax import layers  # noqa: E402

CONFIGS = {"c1": (32, 100, 256), "c2": (64, 100, 512), "c3": (16, 200, 128)}
LR = 1e-3


@dataclasses.dataclass
class Timed:
    """One implementation of the training step, ready to be timed."""

    name: str
    run: Callable[[int], None]  # runs n steps and blocks until done
    compile_s: float = float("nan")


def parse_config(spec: str) -> tuple[int, int, int]:
    if spec in CONFIGS:
        return CONFIGS[spec]
    try:
        b, t, h = (int(v) for v in spec.split("x"))
    except ValueError:
        raise ValueError(f"invalid config {spec!r}: use one of {', '.join(CONFIGS)} or BxTxH, e.g. 8x20x32")
    return b, t, h


def parse_cell(spec: str) -> tuple[str, dict]:
    """``"gru"`` or ``"gru:reset_after=True"`` (options separated by ``;``) -> (name, options)."""
    return cells_lib.parse_spec(spec)


def make_cell(spec: str) -> cells_lib.Cell:
    """The cell named by a :func:`parse_cell` spec."""
    name, options = parse_cell(spec)
    return cells_lib.get(name, **options)


def matmul_flops_forward(cell: cells_lib.Cell, batch: int, steps: int, size: int) -> float:
    spec = cell.param_spec(size, size)
    macs = sum(int(np.prod(shape)) for shape, kind in spec.values() if len(shape) == 2)
    return 2.0 * batch * steps * macs


def parse_xla_options(items: list[str]) -> dict:
    """``["name=value", ...]`` -> XLA compile options for ``jax.jit(compiler_options=...)``.

    ``true``/``false`` become booleans and values with a decimal point or exponent floats (XLA
    takes neither as a string); everything else stays a string, which XLA converts for integer
    options.
    """
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValueError(f"invalid XLA option {item!r}: use name=value, e.g. xla_cpu_use_fusion_emitters=false")
        if value.lower() in ("true", "false"):
            options[name] = value.lower() == "true"
            continue
        options[name] = value
        if any(c in value for c in ".eE"):
            try:
                options[name] = float(value)
            except ValueError:
                pass
    return options


def check_xla_options(options: dict) -> None:
    """Compiles a trivial function with ``options``; raises ValueError naming a rejected one."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=options or None).lower(jnp.ones(2)).compile()
    except Exception as e:  # XLA reports an unknown or ill-typed option when compiling
        raise ValueError(f"XLA rejected the compile options {options}: {e}") from None


TORCH_DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("default", "tf32", "float32")


def resolve_torch_device(requested: str, torch_module=None, jax_backend: str | None = None) -> str:
    """``--torch_device`` -> ``"cpu"`` or ``"cuda"``.

    ``auto`` is ``cuda`` when torch sees a CUDA device and JAX runs on the GPU (both sides on the
    same kind of device), else ``cpu``; ``cuda`` without a CUDA device raises ValueError.
    ``torch_module`` is the imported torch (None: not installed); ``jax_backend`` defaults to
    ``jax.default_backend()``.
    """
    if requested not in TORCH_DEVICES:
        raise ValueError(f"invalid torch device {requested!r}; allowed: {', '.join(TORCH_DEVICES)}")
    if requested == "cpu":
        return "cpu"
    cuda = torch_module is not None and bool(torch_module.cuda.is_available())
    if requested == "cuda":
        if not cuda:
            raise ValueError("torch sees no CUDA device" if torch_module is not None else "torch is not installed")
        return "cuda"
    backend = jax.default_backend() if jax_backend is None else jax_backend
    return "cuda" if cuda and backend == "gpu" else "cpu"


def set_precision(precision: str, torch_module=None) -> dict:
    """Sets float32 matmul precision on both sides; returns the resulting settings.

    ``default`` changes nothing. ``tf32``: JAX ``jax_default_matmul_precision="tensorfloat32"``,
    torch TF32 allowed in cuBLAS matmuls and cuDNN (its RNNs). ``float32``: JAX ``"float32"``
    (XLA's HIGHEST), torch TF32 off in both. Uses torch's legacy ``allow_tf32`` flags only (mixing
    them with the newer ``fp32_precision`` API is an error in torch).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"invalid precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if precision != "default":
        jax.config.update("jax_default_matmul_precision",
                          "tensorfloat32" if precision == "tf32" else "float32")
        if torch_module is not None:
            torch_module.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch_module.backends.cudnn.allow_tf32 = precision == "tf32"
    info = {"precision": precision, "jax_default_matmul_precision": jax.config.jax_default_matmul_precision}
    if torch_module is not None:
        try:
            info["torch_matmul_allow_tf32"] = bool(torch_module.backends.cuda.matmul.allow_tf32)
            info["torch_cudnn_allow_tf32"] = bool(torch_module.backends.cudnn.allow_tf32)
        except RuntimeError as e:  # flags set through torch's newer API elsewhere
            info["torch_tf32"] = str(e)
    return info


def precision_probe(torch_device: str | None = None, n: int = 1024, b: int = 16, t: int = 50,
                    h: int = 256) -> dict:
    """Relative errors (‖out − ref‖/‖ref‖ against float64 on the CPU) of a float32 ``n``×``n``
    matmul and of a float32 LSTM layer [``b``, ``t``, ``h``], on JAX's default device and (given
    ``torch_device``) torch's: under 1e-5 is full float32, about 1e-4 and more TF32. The torch
    LSTM is ``nn.LSTM`` (cuDNN on CUDA); the JAX one is rnn_jax's with the same weights."""
    from rnn_jax import convert

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    w = rng.standard_normal((n, n)).astype(np.float32)
    ref = a.astype(np.float64) @ w.astype(np.float64)

    def rel(x, r):
        x = np.asarray(x, np.float64)
        return float(np.linalg.norm(x - r) / np.linalg.norm(r))

    out = {"jax_matmul_rel_err": rel(jax.jit(jnp.matmul)(a, w), ref)}
    xs = rng.standard_normal((b, t, h)).astype(np.float32)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None:
        return out
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(h, h, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():  # larger than torch's init, so the matmuls dominate the error
            p.normal_(0.0, 1.0 / np.sqrt(h))
        ref_lstm = lstm.double()(torch.from_numpy(xs).double())[0].numpy()
        lstm = lstm.float()
        params = {k: jnp.asarray(v, jnp.float32) for k, v in convert.from_torch_lstm(lstm).items()}
        _, hs = layers.rnn(cells_lib.get("lstm"), params, jnp.asarray(xs))
        out["jax_lstm_rel_err"] = rel(hs, ref_lstm)
        if torch_device is not None:
            dev = torch.device(torch_device)
            mm = torch.from_numpy(a).to(dev) @ torch.from_numpy(w).to(dev)
            out["torch_matmul_rel_err"] = rel(mm.cpu().numpy(), ref)
            got = lstm.to(dev)(torch.from_numpy(xs).to(dev))[0]
            out["torch_lstm_rel_err"] = rel(got.cpu().numpy(), ref_lstm)
    return out


def _jit_step(step, compiler_options: dict | None = None):
    """``jax.jit`` of a ``step(params, ...) -> (params, ...)``, donating the parameters."""
    return jax.jit(step, donate_argnums=(0,), compiler_options=compiler_options or None)


def _jax_sgd_step(loss_fn, compiler_options: dict | None = None):
    """jit(params, xs) -> (params - lr·grad, dxs)."""

    def step(params, xs, target):
        grads, dxs = jax.grad(loss_fn, argnums=(0, 1))(params, xs, target)
        params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
        return params, dxs

    return _jit_step(step, compiler_options)


def _timed_jax(name, step, params, xs, target) -> Timed:
    t0 = time.perf_counter()
    compiled = step.lower(params, xs, target).compile()
    compile_s = time.perf_counter() - t0
    state = {"params": params}
    out = compiled(jax.tree.map(jnp.copy, state["params"]), xs, target)  # warm-up
    state["params"] = out[0]
    jax.block_until_ready(out)

    def run(n):
        p = state["params"]
        for _ in range(n):
            p, dxs = compiled(p, xs, target)
        jax.block_until_ready((p, dxs))
        state["params"] = p

    return Timed(name, run, compile_s)


def ours(cell_spec: str, impl: str, b: int, t: int, h: int, unroll: int,
         compiler_options: dict | None = None) -> Timed:
    cell = make_cell(cell_spec)
    params = cell.init(jax.random.PRNGKey(0), h, h)
    xs = jax.random.normal(jax.random.PRNGKey(1), (b, t, h))
    target = jax.random.normal(jax.random.PRNGKey(2), (b, t, h))

    def loss(params, xs, target):
        _, hs = layers.rnn(cell, params, xs, impl=impl, unroll=unroll)
        return jnp.mean(hs * target)

    return _timed_jax(f"rnn_jax {cell_spec} ({impl})", _jax_sgd_step(loss, compiler_options),
                      params, xs, target)


def matmul_floor(cell_spec: str, b: int, t: int, h: int, compiler_options: dict | None = None) -> Timed:
    """The training step's matmuls alone, as XLA runs them (see :func:`floor_step`)."""
    step, params, xs, v = floor_step(cell_spec, b, t, h)
    return _timed_jax(f"XLA matmuls alone ({cell_spec})", _jit_step(step, compiler_options),
                      params, xs, v)


def floor_step(cell_spec: str, b: int, t: int, h: int):
    """``(step, params, xs, v)``: a training step ``step(params, xs, v)`` of the cell's matmuls alone.

    The same matmuls as the fused layer (the input projection over all steps, the per-step
    recurrent matmuls forward and backward, and the weight and input gradients as single large
    matmuls after the loop), with only trivial elementwise work to chain the steps. Its memory
    traffic is at most the fused layer's: the forward pass saves only ``h``, the reverse scan
    writes the input gradient over the projected inputs, and a group's output gradient is that
    same buffer when their widths match. Same matmul FLOPs as the cell's training step.
    """
    cell = make_cell(cell_spec)
    spec = cell.param_spec(h, h)
    g_in = sum(shape[1] for shape, kind in spec.values() if kind == "input")
    outs = [sum(spec[n][0][1] for n in group) for group in cell.recurrent_groups]
    if g_in % h or any(o % h or o > g_in for o in outs):
        raise ValueError(f"--floor needs matrix widths that are multiples of the hidden size, recurrent ones"
                         f" no wider than the input projection; {cell_spec} has input width {g_in} and"
                         f" recurrent widths {outs}")
    keys = jax.random.split(jax.random.PRNGKey(0), 3 + len(outs))
    params = {"Wx": 0.05 * jax.random.normal(keys[0], (h, g_in)),
              "Ws": [0.05 * jax.random.normal(k, (h, o)) for k, o in zip(keys[3:], outs)]}
    xs = jax.random.normal(keys[1], (t * b, h))
    v = jax.random.normal(keys[2], (g_in,))
    # The first group's output gradient is the input gradient itself when they are as wide (as
    # in the fused layer, where that group's output is added to the projected inputs).
    shared = [k == 0 and o == g_in for k, o in enumerate(outs)]

    def chunks_sum(u):  # [B, k·H] -> [B, H]; uses every column, so no matmul can be narrowed
        return u.reshape(u.shape[0], -1, h).sum(1)

    def step(params, xs, v):
        wx, ws = params["Wx"], params["Ws"]
        xin = (xs @ wx).reshape(t, b, g_in)

        def forward(hid, x_t):
            return 0.1 * sum(chunks_sum(hid @ w) for w in ws) + 0.5 * x_t[:, :h], hid

        _, hs = jax.lax.scan(forward, jnp.zeros((b, h)), xin)
        w_ts = [w.T for w in ws]

        def backward(state, inp):
            dh, buf = state
            i, h_t = inp
            d_xin_t = jnp.tile(dh * h_t, (1, g_in // h)) * v
            # distinct factors keep equally wide groups' gradients distinct values
            dus = [d_xin_t if sh else d_xin_t[:, :o] * (k + 2.0)
                   for k, (o, sh) in enumerate(zip(outs, shared))]
            d_prev = 0.1 * sum(du @ w_t for du, w_t in zip(dus, w_ts))
            buf = jax.lax.dynamic_update_index_in_dim(buf, d_xin_t, i, 0)
            return (d_prev, buf), [du for du, sh in zip(dus, shared) if not sh]

        (_, d_xin), own = jax.lax.scan(backward, (jnp.ones((b, h)), xin), (jnp.arange(t), hs),
                                       reverse=True)
        d_us = [d_xin if sh else own.pop(0) for sh in shared]
        d_xin = d_xin.reshape(-1, g_in)
        hs = hs.reshape(-1, h)
        grads = {"Wx": xs.T @ d_xin,
                 "Ws": [hs.T @ du.reshape(-1, o) for du, o in zip(d_us, outs)]}
        dxs = d_xin @ wx.T
        return jax.tree.map(lambda p, g: p - LR * g, params, grads), dxs

    return step, params, xs, v


def flax_baseline(kind: str, b: int, t: int, h: int, unroll: int,
                  compiler_options: dict | None = None) -> Timed:
    import flax.linen as nn

    cell = nn.OptimizedLSTMCell(h) if kind == "lstm" else nn.GRUCell(h)
    model = nn.RNN(cell, unroll=unroll)
    xs = jax.random.normal(jax.random.PRNGKey(1), (b, t, h))
    target = jax.random.normal(jax.random.PRNGKey(2), (b, t, h))
    params = model.init(jax.random.PRNGKey(0), xs)

    def loss(params, xs, target):
        return jnp.mean(model.apply(params, xs) * target)

    label = "OptimizedLSTMCell" if kind == "lstm" else "GRUCell"
    return _timed_jax(f"flax {label}", _jax_sgd_step(loss, compiler_options), params, xs, target)


def torch_baseline(kind: str, b: int, t: int, h: int, device: str = "cpu") -> Timed | None:
    """torch's nn.LSTM / nn.GRU on ``device`` (``cuda``: cuDNN's kernels), parameters and inputs
    drawn on the CPU (the same values on either device) and moved there."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(h, h, batch_first=True)
    if device == "cpu":
        xs = torch.randn(b, t, h, requires_grad=True)
        target = torch.randn(b, t, h)
        sync = lambda: None  # noqa: E731
        suffix = ""
    else:
        dev = torch.device(device)
        module = module.to(dev)
        xs = torch.randn(b, t, h).to(dev).requires_grad_(True)
        target = torch.randn(b, t, h).to(dev)
        sync = torch.cuda.synchronize
        suffix = " (cuDNN)" if torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled else f" ({device})"

    def one():
        module.zero_grad(set_to_none=True)
        xs.grad = None
        out, _ = module(xs)
        (out * target).mean().backward()
        with torch.no_grad():
            for p in module.parameters():
                p.add_(p.grad, alpha=-LR)

    sync()
    t0 = time.perf_counter()
    one()
    sync()
    first = time.perf_counter() - t0

    def run(n):
        sync()
        for _ in range(n):
            one()
        sync()  # the GPU's queued work is part of the steps' time

    return Timed(f"torch nn.{'LSTM' if kind == 'lstm' else 'GRU'}{suffix}", run, first)


def measure(timed: list[Timed], steps: int, rounds: int, progress=print) -> dict[str, list[float]]:
    """Interleaved timing: ``rounds`` rounds, each timing every implementation for ``steps`` steps."""
    times = {x.name: [] for x in timed}
    for r in range(rounds):
        for x in timed:
            t0 = time.perf_counter()
            x.run(steps)
            times[x.name].append((time.perf_counter() - t0) / steps * 1e3)
        progress(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in times.items()))
    return times


def benchmark(cells: list[str], configs: list[str], impls: list[str], baselines: list[str],
              steps: int, rounds: int, unroll: int = 1, progress=print, floor: bool = False,
              compiler_options: dict | None = None, torch_device: str = "cpu",
              on_rows: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Runs the benchmark and returns one row per (config, implementation).

    With ``floor``, each cell also gets a :func:`matmul_floor` row, compared with the baselines
    like the other rows (to within elementwise work, a bound for implementations on XLA's matmuls).
    ``compiler_options`` go to every JAX implementation's ``jax.jit`` (ours, the floor, Flax);
    ``torch_device`` is where the torch baseline runs (``cpu`` or ``cuda``). ``on_rows`` is called
    with the rows so far after each (config, cell), e.g. to save them before a long run ends.
    """
    rows = []
    for spec in configs:
        b, t, h = parse_config(spec)
        for cell_spec in cells:
            cell_name, _ = parse_cell(cell_spec)
            kind = cell_name if cell_name in ("lstm", "gru") else None
            progress(f"{spec} (B{b} T{t} H{h}) {cell_spec}: compiling")
            timed = [ours(cell_spec, impl, b, t, h, unroll, compiler_options) for impl in impls]
            if floor:
                timed.append(matmul_floor(cell_spec, b, t, h, compiler_options))
            base_names = []
            if kind and "flax" in baselines:
                timed.append(flax_baseline(kind, b, t, h, unroll, compiler_options))
                base_names.append(timed[-1].name)
            if kind and "torch" in baselines:
                tb = torch_baseline(kind, b, t, h, torch_device)
                if tb is not None:
                    timed.append(tb)
                    base_names.append(tb.name)
            times = measure(timed, steps, rounds, progress)
            flops = 3 * matmul_flops_forward(make_cell(cell_spec), b, t, h)
            medians = {k: statistics.median(v) for k, v in times.items()}
            for x in timed:
                ms = medians[x.name]
                row = {"config": spec, "B": b, "T": t, "H": h, "cell": cell_spec, "impl": x.name,
                       "ms_per_step": ms, "gflops": flops / ms / 1e6, "compile_s": x.compile_s,
                       "all_ms": times[x.name]}
                if x.name not in base_names:
                    for base in base_names:
                        row[f"speedup_vs[{base}]"] = medians[base] / ms
                rows.append(row)
            if on_rows is not None:
                on_rows(rows)
    return rows


def environment(torch_device: str = "cpu") -> dict:
    import flax
    info = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": _cpu_name()}
    if jax.default_backend() != "cpu":
        info["jax_devices"] = [str(d.device_kind) for d in jax.devices()]
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_device"] = torch_device
        if torch_device == "cuda":
            info["torch_device_name"] = torch.cuda.get_device_name()
            info["torch_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["torch_cuda"] = torch.version.cuda
            info["cudnn"] = torch.backends.cudnn.version()
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


TRIAL_ARG = ("task=xml,hidden=64,batch=20,seq_len=35,optimizer=adam,lr=0.003,init_style=lecun,"
             "train_chars=200000,eval_chars=5000,eval_every=250")


def trials_benchmark(k: int, steps: int, arg: str, rounds: int = 1, progress=print) -> dict:
    """Wall seconds of ``k`` runs of the tasks config ``arg`` one after another and as ``k``
    vmapped trials (seeds 0..k-1, learning rates spread over ×0.5..×2 of the config's)."""
    from rnn_jax import train, trials
    from rnn_jax.sweep import points

    module = points.load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "configs", "tasks.py"))
    configs = []
    for i, scale in enumerate(np.geomspace(0.5, 2.0, k)):
        c = module.get_config(arg)
        c.seed, c.train.num_steps = i, steps
        c.optim.learning_rate = float(c.optim.learning_rate * scale)
        configs.append(c)
    quiet = lambda msg: None
    times = {"sequential": [], "vmapped": []}
    root = tempfile.mkdtemp(prefix="rnn_jax_trials_")
    try:
        for r in range(rounds):
            start = time.perf_counter()
            for i, c in enumerate(configs):
                train.train_and_evaluate(c, os.path.join(root, f"r{r}_run{i}"), log=quiet)
            times["sequential"].append(time.perf_counter() - start)
            progress(f"round {r + 1}: {k} runs in a row {times['sequential'][-1]:.1f} s")
            start = time.perf_counter()
            results = trials.train_trials(configs, [os.path.join(root, f"r{r}_trial{i}") for i in range(k)],
                                          log=quiet)
            times["vmapped"].append(time.perf_counter() - start)
            progress(f"round {r + 1}: {k} vmapped trials {times['vmapped'][-1]:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seq, vm = statistics.median(times["sequential"]), statistics.median(times["vmapped"])
    model = configs[0].model
    return {"trials": k, "steps": steps, "arg": arg, "cell": configs[0].cell,
            "hidden": model.hidden_size, "layers": model.num_layers,
            "num_params": results[0]["num_params"], "sequential_s": seq, "vmapped_s": vm,
            "speedup": seq / vm, "statuses": [r["status"] for r in results]}


def format_trials(row: dict) -> str:
    return "\n".join([
        "| trials | steps each | model | runs in a row | vmapped trials | speedup |",
        "|---:|---:|---|---:|---:|---:|",
        f"| {row['trials']} | {row['steps']} | {row['cell']} {row['layers']}x{row['hidden']} "
        f"({row['num_params']:,} params) | {row['sequential_s']:.1f} s | {row['vmapped_s']:.1f} s | "
        f"{row['speedup']:.2f}x |"])


def format_table(rows: list[dict]) -> str:
    lines = ["| config | cell | implementation | ms/step | GFLOP/s | compile s | speedup |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        speed = ", ".join(f"{v:.2f}× vs {k[len('speedup_vs['):-1]}" for k, v in r.items()
                          if k.startswith("speedup_vs["))
        lines.append(f"| {r['config']} B{r['B']} T{r['T']} H{r['H']} | {r['cell']} | {r['impl']} "
                     f"| {r['ms_per_step']:.1f} | {r['gflops']:.0f} | {r['compile_s']:.2f} | {speed} |")
    return "\n".join(lines)


FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "steps", ["steps", "trials"],
                  "steps: training steps against the baselines; trials: vmapped trials vs runs in a row.")
flags.DEFINE_integer("trials", 8, "--what=trials: number of trials.")
flags.DEFINE_integer("trial_steps", 500, "--what=trials: training steps of each trial.")
flags.DEFINE_string("trial_arg", TRIAL_ARG, "--what=trials: arg string of experiments/configs/tasks.py.")
flags.DEFINE_list("cells", ["lstm", "gru", "gru:reset_after=True"],
                  "Cells to time: registered names, with options after a colon (gru:reset_after=True).")
flags.DEFINE_list("configs", ["c1", "c2", "c3"], f"Shapes: {', '.join(CONFIGS)} or BxTxH.")
flags.DEFINE_list("impls", ["fused"], f"rnn_jax implementations: {', '.join(layers.IMPLS)}.")
flags.DEFINE_list("baselines", ["flax", "torch"], "Baselines (lstm and gru only): flax, torch.")
flags.DEFINE_integer("steps", 5, "Steps per implementation per round.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds; the median is reported.")
flags.DEFINE_bool("floor", False, "Also time each cell's matmuls alone, as XLA runs them (a floor).")
flags.DEFINE_integer("unroll", 1, "lax.scan unroll for the JAX implementations.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads (0: number of cores).")
flags.DEFINE_enum("torch_device", "auto", list(TORCH_DEVICES),
                  "Where the torch baseline runs: auto = cuda (cuDNN) if torch sees a CUDA device and"
                  " JAX's backend is gpu, else cpu.")
flags.DEFINE_enum("precision", "default", list(PRECISIONS),
                  "float32 matmul precision on both sides: default = each framework's own; tf32 ="
                  " JAX tensorfloat32 and torch allow_tf32 (cuBLAS and cuDNN); float32 = JAX float32"
                  " (HIGHEST) and torch TF32 off. Matters on GPUs with TF32 (Ampere and later).")
flags.DEFINE_string("json_out", "", "Also write the rows and the environment to this JSON file.")
flags.DEFINE_multi_string("xla_options", [],
                          "An XLA compile option name=value for every JAX implementation's jax.jit"
                          " (repeat the flag for several), e.g. xla_cpu_use_fusion_emitters=false"
                          " (compiles faster on CPU).")


def main(argv):
    del argv
    if FLAGS.what == "trials":
        if FLAGS.xla_options:
            raise app.UsageError("--xla_options applies to --what=steps only (the trials are"
                                 " compiled by rnn_jax.train, with XLA's defaults)")
        if FLAGS.trials < 1 or FLAGS.trial_steps < 1:
            raise app.UsageError(f"--trials={FLAGS.trials} and --trial_steps={FLAGS.trial_steps} must be >= 1")
        env = environment()
        print(json.dumps(env))
        row = trials_benchmark(FLAGS.trials, FLAGS.trial_steps, FLAGS.trial_arg, FLAGS.rounds,
                               progress=lambda s: print(s, file=sys.stderr, flush=True))
        print(format_trials(row))
        if FLAGS.json_out:
            with open(FLAGS.json_out, "w") as f:
                json.dump({"environment": env, "trials": row}, f, indent=1)
        return
    for spec in FLAGS.cells:
        try:
            parse_cell(spec)  # fails early, listing the valid names and options
        except ValueError as e:
            raise app.UsageError(f"--cells: {e}")
    for impl in FLAGS.impls:
        if impl not in layers.IMPLS:
            raise app.UsageError(f"--impls: invalid {impl!r}; allowed: {', '.join(layers.IMPLS)}")
    for base in FLAGS.baselines:
        if base not in ("flax", "torch"):
            raise app.UsageError(f"--baselines: invalid {base!r}; allowed: flax, torch")
    try:
        xla_options = parse_xla_options(FLAGS.xla_options)
        check_xla_options(xla_options)
    except ValueError as e:
        raise app.UsageError(f"--xla_options: {e}")
    try:
        import torch
        torch.set_num_threads(FLAGS.torch_threads or os.cpu_count())
    except ImportError:
        torch = None
    try:
        torch_device = resolve_torch_device(FLAGS.torch_device, torch)
    except ValueError as e:
        raise app.UsageError(f"--torch_device={FLAGS.torch_device}: {e}")
    precision = set_precision(FLAGS.precision, torch)
    env = environment(torch_device)
    env["xla_options"] = xla_options
    env.update(precision)
    if jax.default_backend() != "cpu" or torch_device != "cpu":
        try:
            env.update(precision_probe(torch_device if torch is not None else None))
        except Exception as e:  # a report, not a reason to lose the timings
            env["precision_probe_error"] = repr(e)
    print(json.dumps(env), flush=True)

    def save(rows):  # after each (config, cell): a run stopped early keeps what it measured
        if FLAGS.json_out:
            with open(FLAGS.json_out, "w") as f:
                json.dump({"environment": env, "rows": rows}, f, indent=1)

    rows = benchmark(FLAGS.cells, FLAGS.configs, FLAGS.impls, FLAGS.baselines, FLAGS.steps,
                     FLAGS.rounds, FLAGS.unroll, progress=lambda s: print(s, file=sys.stderr, flush=True),
                     floor=FLAGS.floor, compiler_options=xla_options, torch_device=torch_device,
                     on_rows=save)
    print(format_table(rows))
    save(rows)


if __name__ == "__main__":
    cli.run(main)
