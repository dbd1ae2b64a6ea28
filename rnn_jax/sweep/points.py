"""Sweep points: expansion of ``sweep(add)``, stable names, configs with overrides.

A config file may declare a sweep beside ``get_config``::

    def sweep(add):
        for cell in ("lstm", "gru"):
            add(cell=cell, **{"optim.learning_rate": 0.003})

Each ``add(**overrides)`` is one point: dotted config fields and their values. The reserved key
``arg`` replaces the config's arg string (``get_config(arg)``) for that point. A point's name is a
stable hash of its overrides (canonical JSON), so the same point always maps to the same run
directory, whichever machine or launcher expands the sweep (``trials_per_program``, which only
says how points run, is not part of the name).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from typing import Any, Callable, Iterable, Mapping

import ml_collections

from rnn_jax import rundir
from rnn_jax.errors import InputError

ARG_KEY = "arg"
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")  # as rnn_jax.data.text reads them


def canonical(overrides: Mapping[str, Any]) -> str:
    """Canonical JSON of a point's overrides (sorted keys, tuples as lists)."""
    try:
        return json.dumps(overrides, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"sweep point {overrides!r}: values must be JSON numbers, strings, booleans, "
                         f"lists or dicts ({e})") from None


# Overrides that say how a point runs, not what it computes: left out of its name, so a sweep
# relaunched with vmapped trials (or without) finds the same run directories.
EXECUTION_KEYS = rundir.fields("execution")  # how a point runs, not what it computes


def point_name(overrides: Mapping[str, Any]) -> str:
    """``p-`` and the first 12 hex digits of the SHA-256 of the canonical overrides
    (:data:`EXECUTION_KEYS` left out)."""
    named = {k: v for k, v in overrides.items() if k not in EXECUTION_KEYS}
    return "p-" + hashlib.sha256(canonical(named).encode("utf-8")).hexdigest()[:12]


def expand(sweep_fn: Callable[[Callable[..., None]], None]) -> list:
    """Points of a ``sweep(add)`` function, in order, duplicates removed."""
    points, seen = [], set()

    def add(**overrides):
        key = canonical(overrides)
        if key not in seen:
            seen.add(key)
            points.append(dict(overrides))

    sweep_fn(add)
    return points


def load_config_module(path: str):
    """Import a config file (``experiments/configs/x.py``) as a module."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    name = "rnn_jax_sweep_config_" + hashlib.sha256(path.encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    root = os.path.dirname(os.path.dirname(os.path.dirname(path)))  # repo root for `experiments.`
    if root not in sys.path:
        sys.path.insert(0, root)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config(arg)")
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Set dotted fields; an unknown field raises ``ValueError`` naming it and the fields allowed."""
    for key, value in overrides.items():
        if key == ARG_KEY:
            continue
        node = config
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                where = ".".join(parts[:i]) or "config"
                sections = sorted(k for k in node.keys() if isinstance(node[k], ml_collections.ConfigDict))
                raise ValueError(f"sweep override {key!r}: {where} has no section {part!r}; "
                                 f"sections: {', '.join(sections)}")
            node = node[part]
        leaf = parts[-1]
        if leaf not in node:
            raise ValueError(f"sweep override {key!r}: no field {leaf!r} there; fields: "
                             f"{', '.join(sorted(node.keys()))}")
        if isinstance(value, list):
            value = tuple(value) if isinstance(node[leaf], tuple) else value
        if isinstance(node[leaf], ml_collections.ConfigDict) and isinstance(value, Mapping):
            node[leaf].update(value)
        else:
            try:
                node[leaf] = value
            except TypeError as e:
                raise ValueError(f"sweep override {key}={value!r}: {e}") from None
    return config


def point_config(config_path: str, base_arg: str | None, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    module = load_config_module(config_path)
    arg = overrides.get(ARG_KEY, base_arg)
    return apply_overrides(module.get_config(arg), overrides)


def sweep_points(config_path: str, extra: Iterable[Mapping[str, Any]] = ()) -> list:
    """The points of a config file's ``sweep(add)`` (plus ``extra`` ones)."""
    module = load_config_module(config_path)
    if not hasattr(module, "sweep"):
        raise ValueError(f"config file {config_path} has no sweep(add) function")
    points = expand(module.sweep)
    seen = {canonical(p) for p in points}
    for p in extra:
        if canonical(p) not in seen:
            points.append(dict(p))
    return points


# ----------------------------------------------------------------------------- data paths, checked before a launch

def check_data_file(what: str, path: str) -> None:
    """``InputError`` naming ``what`` (a flag or field) and ``path`` unless it is a readable file
    (the trainer's own check, ``rnn_jax.data.text.check_data_file``, says the same without the
    flag's name)."""
    if not os.path.exists(path):
        raise InputError(f"{what}={path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{what}={path}: is a directory, not a file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        raise InputError(f"{what}={path}: cannot be read ({e.strerror or e})") from None


def check_ptb_dir(what: str, path: str) -> None:
    """``InputError`` naming ``what`` and ``path`` unless it is a directory with readable
    ``ptb.{train,valid,test}.txt``."""
    if not os.path.exists(path):
        raise InputError(f"{what}={path}: no such directory")
    if not os.path.isdir(path):
        raise InputError(f"{what}={path}: is a file, not a directory (give the directory holding "
                         f"{', '.join(PTB_FILES)})")
    missing = [f for f in PTB_FILES if not os.path.exists(os.path.join(path, f))]
    if missing:
        raise InputError(f"{what}={path}: the directory lacks {', '.join(missing)} "
                         f"(expected {', '.join(PTB_FILES)})")
    for f in PTB_FILES:
        check_data_file(what, os.path.join(path, f))


def check_data_paths(config_path: str, base_arg: str | None, points: Iterable[Mapping[str, Any]]) -> None:
    """Check, before anything is launched, the data files every point reads (``data.path`` of the
    char and music kinds, ``data.dir`` of ptb): ``InputError`` naming the point, the field and the
    path. So is an error in the arg string (an ``InputError`` from ``get_config``). Points whose
    config fails otherwise are left to fail in their worker, where the error is recorded."""
    checked = set()
    for p in points:
        try:
            config = point_config(config_path, base_arg, p)
        except InputError as e:  # the arg string: the sweep's (every point), or the point's own
            if ARG_KEY not in p:
                raise
            raise InputError(f"sweep point {point_name(p)} (arg={p[ARG_KEY]!r}): {e}") from None
        except Exception:  # noqa: BLE001 - recorded as the point's failure when it runs
            continue
        data = config.get("data") or {}
        kind, path, ptb_dir = data.get("kind"), data.get("path") or "", data.get("dir") or ""
        if (kind, path, ptb_dir) in checked:
            continue
        checked.add((kind, path, ptb_dir))
        where = f"sweep point {point_name(p)}: data"
        if kind in ("char", "music"):
            if not path:
                raise InputError(f"{where}.path is empty: give the {'text' if kind == 'char' else 'piano-roll'}"
                                 f" file (e.g. --config_override=data.path=FILE)")
            if not (kind == "char" and path.startswith("tfds:")):
                check_data_file(f"{where}.path", path)
        elif kind == "ptb":
            if not ptb_dir:
                raise InputError(f"{where}.dir is empty: give the directory of {', '.join(PTB_FILES)} "
                                 f"(e.g. --config_override=data.dir=DIR)")
            check_ptb_dir(f"{where}.dir", ptb_dir)
