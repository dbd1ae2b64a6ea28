"""What compiling cost a sweep worker: JAX's compile events, counted per program.

JAX reports its compile steps through :mod:`jax.monitoring` (a process-wide event bus): tracing,
lowering to MLIR, the backend compile (which, on a persistent-cache hit, is the cache read), and
the persistent compilation cache's requests and hits. :func:`install` registers one listener per
process that adds them up; :func:`snapshot` and :func:`since` give the totals of one program, which
:func:`rnn_jax.sweep.local.run_program` writes to each run directory as ``compile.json``::

    {"compile_s": 1.8, "trace_s": 0.3, "lower_s": 0.2, "backend_s": 1.3, "cache_requests": 4,
     "cache_hits": 3, "wall_s": 5.2, "trials": 2, "program": "3f2a9c0d1e4b"}

``compile_s`` is the sum of the three steps; ``cache_hits / cache_requests`` is the persistent
cache's hit rate (requests are only counted when the cache is on: the local launcher turns it on
for a sweep directory, ``<sweep_dir>/jax_cache``). A vmapped program's numbers are shared by its
``trials`` (and ``program``, an id per program). A resumed run keeps its last session's record.
"""

from __future__ import annotations

import threading

_EVENTS = {
    "/jax/compilation_cache/compile_requests_use_cache": "cache_requests",
    "/jax/compilation_cache/cache_hits": "cache_hits",
}
_DURATIONS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_s",
}
FIELDS = ("trace_s", "lower_s", "backend_s", "cache_requests", "cache_hits")

# The process's running totals: jax.monitoring has no per-call scope, so the listener (installed
# once per process) adds into this table and callers difference two snapshots.
_totals = dict.fromkeys(FIELDS, 0)
_lock = threading.Lock()
_installed = False


def _on_event(event: str, **kwargs) -> None:
    key = _EVENTS.get(event)
    if key is not None:
        with _lock:
            _totals[key] += 1


def _on_duration(event: str, seconds: float, **kwargs) -> None:
    key = _DURATIONS.get(event)
    if key is not None:
        with _lock:
            _totals[key] += float(seconds)


def install() -> None:
    """Start counting in this process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    from jax import monitoring
    monitoring.register_event_listener(_on_event)
    monitoring.register_event_duration_secs_listener(_on_duration)


def snapshot() -> dict:
    with _lock:
        return dict(_totals)


def since(before: dict) -> dict:
    """What was counted after ``before`` (a :func:`snapshot`), with ``compile_s`` the sum of the
    three compile steps."""
    now = snapshot()
    out = {k: now[k] - before.get(k, 0) for k in FIELDS}
    out["compile_s"] = out["trace_s"] + out["lower_s"] + out["backend_s"]
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
