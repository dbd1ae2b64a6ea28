#!/usr/bin/env bash
# GPU numbers in one call: environment, the step benchmark against Flax and torch cuDNN, the
# GPU-relevant tests, and a char-LM training run's steps/s. Written for a lent GPU machine whose
# device time is short (one call of about 8 minutes): each part has its own timeout, cut to what is
# left of GPU_CHECK_BUDGET seconds, and a failing part does not stop the rest ("FAILED part").
#
# Run from the repository root:
#     bash experiments/gpu_check.sh                 # writes into $OUT (default /tmp/gpu_check)
#     GPU_CHECK_SMOKE=1 bash experiments/gpu_check.sh   # tiny sizes: a dry run on a CPU machine
#
# Needs python3 with jax (CUDA), flax, optax, orbax, absl, torch (CUDA) and pytest(-xdist).
# ml-collections, if missing there, can come as wheels in .whl/ (installed into /tmp/site), e.g.
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
# The training text is .gpu/tinyshakespeare.txt (a copy of ../shared/data/tinyshakespeare.txt,
# ignored through .git/info/exclude) or GPU_CHECK_TEXT; carry both folders to the GPU machine with
# the working tree.
#
# What it writes into $OUT (8 files):
#   env.txt            nvidia-smi, versions, devices seen by jax and torch
#   bench.log          the benchmark runs' output (environment line with the precision probe first)
#   bench_tf32.json    cells lstm, gru, gru:reset_after=True, mut1 on c1 c2 c3 with --floor,
#                      TF32 matmuls on both sides (--precision=tf32; cuDNN's RNN default)
#   bench_large.json   lstm and gru:reset_after=True on B256 T100 H1024, TF32
#   bench_fp32.json    lstm and gru:reset_after=True on c1 c2, full float32 (--precision=float32;
#                      XLA's compiles take about 10 s each at that precision on an H200)
#   tests.log          tests/test_cells.py, test_layers.py, test_torch_parity.py on the GPU; failures
#                      rerun with TF32 off (NVIDIA_TF32_OVERRIDE=0, JAX float32) to tell TF32 apart
#   train.log          experiments.train, char_lm 2x512 LSTM, 32 streams x 100 chars, 300 steps
#   summary.md         the tables and the rates (also printed last)
# Knobs: GPU_CHECK_BUDGET (seconds, default 440), BENCH_STEPS, BENCH_ROUNDS, TRAIN_STEPS, TEST_WORKERS
# (pytest-xdist processes, default 8).
#
# Seen on an H200 (2026-11-26, jax 0.11.2, torch 2.11.0+cu130): env + bench_tf32 + tests + train
# took about 180 s (the tests 47 s with 8 workers, the 300 training steps about 10 s), bench_large
# 39 s; bench_fp32, then over c1 c2 c3, ran out of its 120 s in c2; the call held the machine 370 s.

set -u
export PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET:-440}
SMOKE=${GPU_CHECK_SMOKE:-0}
PY=${PYTHON:-python3}
TEXT=${GPU_CHECK_TEXT:-.gpu/tinyshakespeare.txt}
T0=$SECONDS

if [ "$SMOKE" = 1 ]; then
  CELLS=lstm,gru:reset_after=True,mut1; CONFIGS=2x3x8; LARGE=4x3x16; FP32_CONFIGS=2x3x8
  STEPS=1; ROUNDS=1; TRAIN_ARG=runlocal
  TESTS=(tests/test_torch_parity.py tests/test_cells.py -k "torch or orthogonal")
else
  CELLS=lstm,gru,gru:reset_after=True,mut1; CONFIGS=c1,c2,c3; LARGE=256x100x1024; FP32_CONFIGS=c1,c2
  STEPS=${BENCH_STEPS:-5}; ROUNDS=${BENCH_ROUNDS:-5}; TRAIN_ARG=steps=${TRAIN_STEPS:-300}
  TESTS=(tests/test_cells.py tests/test_layers.py tests/test_torch_parity.py)
fi

env_info() {
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv || echo "no nvidia-smi"
    nvidia-smi | head -15
    $PY - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "absl", "ml_collections", "torch",
          "numpy", "pytest", "xdist"):
    try:
        mod = importlib.import_module(m)
        print(m, getattr(mod, "__version__", "?"), getattr(mod, "__file__", ""))
    except Exception as e:
        print(m, "MISSING", repr(e))
import jax
print("jax backend", jax.default_backend(), jax.devices(), "default_matmul_precision",
      jax.config.jax_default_matmul_precision)
try:
    import jax.numpy as jnp
    import numpy as np
    print("jax sum", float(jnp.arange(10.0).sum()))
    a, b = np.random.default_rng(0).standard_normal((2, 1024, 1024)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    got = np.asarray(jnp.asarray(a) @ jnp.asarray(b), np.float64)
    # about 3e-4: TF32; about 3e-7: full float32
    print("jax float32 matmul at the default precision: relative error",
          np.linalg.norm(got - ref) / np.linalg.norm(ref))
except Exception as e:
    print("jax compute FAILED", repr(e))
try:
    import torch
    print("torch cuda", torch.cuda.is_available(), torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
          [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
          "allow_tf32 cudnn", torch.backends.cudnn.allow_tf32, "matmul", torch.backends.cuda.matmul.allow_tf32)
    if torch.cuda.is_available():
        print("torch sum", float(torch.arange(10.0, device="cuda").sum()))
except Exception as e:
    print("torch FAILED", repr(e))
EOF
  } 2>&1 | tee "$OUT/env.txt"
}

bench() {  # bench JSON_NAME ARGS...
  local json=$1; shift
  $PY experiments/benchmark.py --steps="$STEPS" --rounds="$ROUNDS" --json_out="$OUT/$json" "$@" 2>&1 \
    | tee -a "$OUT/bench.log"
}

tests() {
  local xdist=(-n "${TEST_WORKERS:-8}")
  $PY -c "import xdist" 2>/dev/null || xdist=()
  # several processes on one GPU: no preallocation, or the second process finds the memory taken
  XLA_PYTHON_CLIENT_PREALLOCATE=false $PY -m pytest "${TESTS[@]}" -p no:cacheprovider -o addopts="" \
    -m "not slow" -q -rfE --tb=short --durations=10 "${xdist[@]}" 2>&1 | tee "$OUT/tests.log"
  local rc=$?
  local failed
  # test functions, not parametrized ids (those may hold spaces): a failing function reruns whole
  failed=$(grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | sed -E 's/^(FAILED|ERROR) ([^ []+).*/\2/' | sort -u | head -40)
  if [ -n "$failed" ]; then
    echo "=== the failures again with TF32 off (NVIDIA_TF32_OVERRIDE=0, JAX float32 matmuls) ===" \
      | tee -a "$OUT/tests.log"
    # shellcheck disable=SC2086
    NVIDIA_TF32_OVERRIDE=0 JAX_DEFAULT_MATMUL_PRECISION=float32 XLA_PYTHON_CLIENT_PREALLOCATE=false \
      $PY -m pytest $failed -p no:cacheprovider -o addopts="" -q -rfE --tb=line "${xdist[@]}" 2>&1 \
      | tee -a "$OUT/tests.log"
  fi
  return $rc
}

train() {
  local wd=/tmp/gpu_check_train
  rm -rf "$wd"
  $PY -m experiments.train --config="experiments/configs/char_lm.py:$TRAIN_ARG" \
    --config.data.path="$TEXT" --workdir="$wd" --verbosity=-1 2>&1 | tee "$OUT/train.log"
  local rc=$?
  { echo "=== metrics.jsonl (last 5) and result.json"; tail -5 "$wd/metrics.jsonl"; cat "$wd/result.json"; } \
    >> "$OUT/train.log" 2>&1
  return $rc
}

summary() {
  $PY - "$OUT" <<'EOF' 2>&1 | tee "$OUT/summary.md"
import json, os, re, sys
sys.path.insert(0, os.getcwd())
from experiments.benchmark import format_table
out = sys.argv[1]
for name in ("bench_tf32.json", "bench_large.json", "bench_fp32.json"):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        print(f"## {name}: missing\n")
        continue
    d = json.load(open(path))
    env = d["environment"]
    keys = ("device", "jax", "torch", "torch_device_name", "cudnn", "precision", "jax_default_matmul_precision",
            "torch_cudnn_allow_tf32", "torch_matmul_allow_tf32", "jax_matmul_rel_err", "torch_matmul_rel_err",
            "jax_lstm_rel_err", "torch_lstm_rel_err", "precision_probe_error")
    print(f"## {name}\n\n" + ", ".join(f"{k}={env[k]}" for k in keys if k in env) + "\n")
    print(format_table(d["rows"]) + "\n")
tl = os.path.join(out, "tests.log")
if os.path.exists(tl):
    lines = open(tl).read().splitlines()
    print("## tests\n\n" + "\n".join(l for l in lines if re.search(r"(passed|failed|error)[^|]* in [0-9.]+s", l)
                                      or l.startswith(("FAILED", "ERROR"))) + "\n")
tr = os.path.join(out, "train.log")
if os.path.exists(tr):
    rates = [l for l in open(tr).read().splitlines() if "steps/s" in l]
    print("## training\n\n" + "\n".join(rates[-4:]))
    m = [float(x) for x in re.findall(r"([0-9.]+) steps/s", "\n".join(rates))]
    if m:
        print(f"last rate {m[-1]:.2f} steps/s = {m[-1] * 32 * 100:,.0f} chars/s (32 x 100 chars a step)")
EOF
}

# `timeout` runs programs, not shell functions: each part runs as `bash THIS_SCRIPT __fn NAME ARGS`
if [ "${1:-}" = __fn ]; then
  shift
  set -o pipefail
  "$@"
  exit $?
fi

# ml-collections (and anything else) carried as wheels
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || echo "FAILED wheel install"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # rnn_jax and experiments, not installed there

left() { echo $((BUDGET - (SECONDS - T0))); }

# part NAME PLANNED_S CMD...: CMD under `timeout` of min(PLANNED_S, time left - 5 s).
part() {
  local name=$1 planned=$2; shift 2
  local t; t=$(left); t=$((t - 5)); [ "$t" -gt "$planned" ] && t=$planned
  if [ "$t" -lt 15 ]; then echo "SKIPPED $name (budget spent: $(left) s left)"; return 0; fi
  echo "=== $name (timeout ${t}s, $((SECONDS - T0))s into the run) ==="
  local s=$SECONDS rc
  timeout -k 5 "$t" bash "$0" __fn "$@"; rc=$?
  if [ $rc -eq 0 ]; then echo "=== $name ok in $((SECONDS - s))s"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "FAILED $name: timed out after ${t}s"
  else echo "FAILED $name: exit $rc after $((SECONDS - s))s"; fi
  return 0
}

part env 40 env_info
part bench_tf32 200 bench bench_tf32.json --cells="$CELLS" --configs="$CONFIGS" --floor --precision=tf32
part tests 120 tests
part train 80 train
part bench_large 50 bench bench_large.json --cells=lstm,gru:reset_after=True --configs="$LARGE" --floor --precision=tf32
part bench_fp32 150 bench bench_fp32.json --cells=lstm,gru:reset_after=True --configs="$FP32_CONFIGS" --floor --precision=float32
part summary 20 summary
echo "=== done in $((SECONDS - T0))s"
