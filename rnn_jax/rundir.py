"""The run directory: its files, its resume checks and its lock.

Files (see docs/design.md for each one's contents): ``config.json``, ``vocab.json`` and
``corpus.json`` (:func:`check_run_dir` compares them with a resumed run's, then
:func:`write_run_files` writes them), ``metrics.jsonl`` (:func:`read_metrics`; on resume
:func:`truncate_after`), ``samples.txt``, ``result.json`` (:func:`write_json_atomic`, strict JSON
through :func:`json_safe`). Checkpoints are :mod:`rnn_jax.checkpoint`'s.

One writer at a time:

A run (``train.train_and_evaluate``, vmapped trials) holds an exclusive ``flock`` on
``<workdir>/.lock`` for its whole life, and a sweep launcher takes the same lock on each point it
trains, so two processes never write one run directory. The kernel releases a ``flock`` when its
process dies, however it dies, so the lock of a killed run never blocks a resume (a SLURM requeue
included). The holder writes its pid, host and start time into the lock file, and a refused writer
names them.

A process that already holds a run directory's lock may take it again (the sweep worker holds it,
then the trainer it calls takes it): the lock is counted per process. That count is the only state
kept here, and it describes the process's own open lock files. It is per process, not per thread:
two threads of one process are not kept apart (runs here are one per process).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import time
from typing import Any, Iterator

import numpy as np

from rnn_jax.data.text import Vocab
from rnn_jax.errors import InputError

LOCK_NAME = ".lock"
_held: dict = {}  # (realpath of the dir, lock name) -> [file descriptor, depth], the locks this process holds


class RunDirBusy(InputError):
    """Another process holds the run directory's lock."""


def check_workdir(workdir: str) -> None:
    """A workdir must be a directory or not exist yet."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise InputError(f"workdir {workdir} is a file, not a directory: give a directory (it is created "
                         "when missing)")


@contextlib.contextmanager
def locked(workdir: str, wait_s: float = 0.0, *, holder: bool = False, name: str = LOCK_NAME) -> Iterator[bool]:
    """Hold ``<workdir>/<name>`` exclusively (creating the directory); yields ``False`` when another
    process still holds it after ``wait_s`` seconds. ``holder=True`` records this process (pid,
    host, time) in the lock file for the messages of refused writers. (A sweep directory's
    launchers use the same function with ``name=".sweep.lock"``.)"""
    check_workdir(workdir)
    key = (os.path.realpath(workdir), name)
    if key in _held:  # this process holds it already (a sweep worker, then the trainer it calls)
        if holder:
            _record_holder(_held[key][0])
        _held[key][1] += 1
        try:
            yield True
        finally:
            _held[key][1] -= 1
        return
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.time() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() >= deadline:
                    yield False
                    return
                time.sleep(0.1)
        if holder:
            _record_holder(fd)
        _held[key] = [fd, 1]
        try:
            yield True
        finally:
            del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _record_holder(fd: int) -> None:
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode() + b"\n", 0)


def holder(workdir: str) -> dict:
    """What the lock file says of its last holder (``{}`` when nothing readable)."""
    try:
        with open(os.path.join(workdir, LOCK_NAME), encoding="utf-8") as f:
            record = json.loads(f.read() or "{}")
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def exclusive(workdir: str) -> Iterator[None]:
    """Hold the run directory for a run; raise :class:`RunDirBusy` naming the holder when another
    process writes it."""
    with locked(workdir, holder=True) as got:
        if not got:
            who = holder(workdir)
            at = (f" (pid {who.get('pid', '?')} on {who.get('host', '?')}, since {who.get('since', '?')})"
                  if who else "")
            raise RunDirBusy(f"{workdir} is in use by another run{at}: wait for it to end, stop it, or use "
                             "another workdir")
        yield


# ----------------------------------------------------------------------------- files

# What each config field is to a run: one table for the questions that the trainer (what may change
# on resume), the report (what makes two runs the same setting), vmapped trials (what trials of one
# program may differ in) and the sweep (what a point's name leaves out) ask. Every field not listed
# is "experiment": it changes what is computed.
FIELD_KINDS = {
    # where the data live: a resumed run may move them (corpus.json checks that the data are the same)
    "data.path": "location", "data.dir": "location",
    "data.karpathy.json_path": "location", "data.karpathy.image_dir": "location",
    "data.karpathy.features": "location",
    # how the same computation is carried out
    "data.tfds_data_dir": "execution",
    "trials_per_program": "execution",  # a trial's run directory is a plain run's (rnn_jax.trials)
    # on how many devices: resumable, but part of the setting (the batch sums round differently)
    "train.data_parallel": "placement",
    # how long, how often evaluated: resumable where the schedule does not depend on them
    # (_schedule_fields), part of the setting
    "train.num_steps": "length", "train.num_epochs": "length", "train.eval_every": "length",
    # what is recorded and kept, and when a run counts as diverged: never what is computed
    "train.log_every": "logging", "train.checkpoint_every": "logging", "train.max_to_keep": "logging",
    "train.sample_length": "logging", "train.diverge_factor": "logging",
    # what the vmapped trials of one program may differ in (the init scales act in init only)
    "seed": "trial", "optim.learning_rate": "trial", "optim.max_norm": "trial",
    "model.init_scale": "trial", "model.embed_scale": "trial", "model.output_scale": "trial",
}


def fields(*kinds: str) -> tuple:
    """The config fields of the given kinds (see :data:`FIELD_KINDS`)."""
    return tuple(name for name, kind in FIELD_KINDS.items() if kind in kinds)


RESUMABLE_CHANGES = fields("location", "execution", "placement", "length", "logging")
NON_EXPERIMENT_FIELDS = fields("execution", "logging")  # left out of a setting, with the seed
TRIAL_FIELDS = fields("trial")


def _schedule_fields(config) -> tuple:
    """Fields whose change would change the learning rates of a resumed run."""
    name = config.optim.schedule.name
    if name == "cosine":
        return ("train.num_steps", "train.num_epochs")
    if name == "plateau":
        return ("train.num_steps", "train.num_epochs", "train.eval_every")
    return ()



def json_safe(obj):
    """NaN and infinities become strings ("nan", "inf"): strict JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str, obj: Any) -> None:
    """Write strict JSON (:func:`json_safe`) to a temporary file and rename it over ``path``."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to a temporary file and rename it over ``path``."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_figure_atomic(fig, path, **savefig_kwargs) -> str:
    """Save a matplotlib figure as a PNG at ``path`` atomically (a temporary file in the same
    directory, renamed over it; removed if saving fails); creates the parent directory. The file
    is opened with ``open`` (not ``mkstemp``), so it gets the umask's mode. Returns ``path``."""
    import uuid

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            fig.savefig(f, format="png", **savefig_kwargs)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str, strict: bool = False):
    """The JSON in ``path``; ``None`` when it is missing or unreadable (a torn or hand-edited file),
    or with ``strict``, an :class:`InputError` for content that is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        if strict:
            raise InputError(f"{path} is not valid JSON ({e}); fix or remove it") from None
        return None


def read_metrics(workdir: str) -> list:
    """All records of ``metrics.jsonl`` (a torn last line from a killed process is skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def truncate_after(workdir: str, step: int) -> list:
    """Drop records past ``step`` (a resumed run writes them again); returns the kept records."""
    path = os.path.join(workdir, "metrics.jsonl")
    records = [r for r in read_metrics(workdir) if r.get("step", 0) <= step]
    if os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(tmp, path)
    path = os.path.join(workdir, "samples.txt")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # blocks start at header lines "=== step N (valid loss X) ==="; generated text may contain
        # anything, so a block ends only where the next well-formed header line starts
        starts = [m.start() for m in _SAMPLE_HEADER_RE.finditer(text)]
        kept = [text[:starts[0]] if starts else text]
        for a, b in zip(starts, starts[1:] + [len(text)]):
            if int(_SAMPLE_HEADER_RE.match(text, a).group(1)) <= step:
                kept.append(text[a:b])
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(kept))
        os.replace(tmp, path)
    return records


SAMPLE_HEADER = "=== step "
_SAMPLE_HEADER_RE = re.compile(r"^=== step (\d+) \(valid loss [^\n]*\) ===$", re.MULTILINE)


def flatten(d, prefix=""):
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_config_file(config, workdir: str) -> dict:
    """The config as JSON; raises when ``workdir`` holds a run whose config differs in a field
    that a resumed run may not change."""
    path = os.path.join(workdir, "config.json")
    new = json.loads(config.to_json_best_effort())
    if os.path.exists(path):
        old = _read_run_json(path, workdir)
        if not isinstance(old, dict):
            raise InputError(f"{path} holds no config (a JSON {type(old).__name__}): restore it from the run's "
                             f"own config, or move {workdir} aside and start a fresh run")
        a, b = flatten(old), flatten(new)
        allowed = [k for k in RESUMABLE_CHANGES if k not in _schedule_fields(config)]
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in allowed)
        if changed:
            details = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:8])
            raise InputError(f"{workdir} holds a run with a different config ({details}); "
                             f"use a fresh workdir; a resumed run may change only {', '.join(allowed)}"
                             f" (with the {config.optim.schedule.name!r} schedule)")
    return new


def corpus_fingerprint(corpus) -> dict:
    """Sizes and SHA-256 of each split's token ids or frames (saved as corpus.json, checked on resume);
    data that fingerprint themselves (a generated task's examples) give ``corpus.fingerprint()``."""
    if hasattr(corpus, "fingerprint"):
        return corpus.fingerprint()
    def digest(a):
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating):
            a = np.ascontiguousarray(a, np.float32)
            return hashlib.sha256(a.tobytes() + repr(a.shape).encode()).hexdigest()
        return hashlib.sha256(np.ascontiguousarray(a, np.int32).tobytes()).hexdigest()
    out = {split: {"tokens": int(len(corpus.split(split))), "sha256": digest(corpus.split(split))}
           for split in ("train", "valid", "test")}
    for split, starts in (getattr(corpus, "starts", None) or {}).items():  # piano rolls' pieces
        out[split]["pieces"] = int(len(starts))
        out[split]["pieces_sha256"] = digest(starts)
    return out


def _has_checkpoints(workdir: str) -> bool:
    for kind in ("latest", "best"):
        path = os.path.join(workdir, "checkpoints", kind)
        if os.path.isdir(path) and any(name.isdigit() for name in os.listdir(path)):
            return True
    return False


def _read_run_json(path: str, workdir: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}): restore it from the run's own config, or "
                         f"move {workdir} aside and start a fresh run") from None


def check_run_dir(config, corpus, workdir: str):
    """Check a resumed run's config and data against ``workdir``'s, writing nothing; returns
    ``(config_json, fingerprint, vocab)`` for :func:`write_run_files` (``vocab`` is ``None`` for
    piano rolls). A directory with checkpoints but no readable ``config.json`` is refused: what
    model those checkpoints belong to is unknown."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path) and _has_checkpoints(workdir):
        raise InputError(f"{workdir} has checkpoints but no config.json, so what they belong to is unknown: "
                         "put the run's config.json back, or move the directory aside and start a fresh run")
    config_json = check_config_file(config, workdir)
    vocab_path = os.path.join(workdir, "vocab.json")
    fingerprint_path = os.path.join(workdir, "corpus.json")
    fingerprint = corpus_fingerprint(corpus)
    vocab = getattr(corpus, "vocab", None)  # piano rolls have pitches, not a vocabulary
    if os.path.exists(vocab_path) and vocab is not None:
        Vocab.load(vocab_path).check_same(vocab, f"resuming in {workdir}")
    if os.path.exists(fingerprint_path):
        saved = _read_run_json(fingerprint_path, workdir)
        if saved != fingerprint:
            diff = [s for s in fingerprint if not isinstance(saved, dict) or saved.get(s) != fingerprint[s]]
            raise InputError(f"resuming in {workdir}: the data differ from the run's data in the "
                             f"{', '.join(diff)} split(s) (corpus.json); use a fresh workdir for "
                             f"different data")
    return config_json, fingerprint, vocab


def write_run_files(workdir: str, config_json: dict, fingerprint: dict, vocab) -> None:
    """Write ``config.json``, ``vocab.json`` (once) and ``corpus.json`` of a checked run."""
    os.makedirs(workdir, exist_ok=True)
    write_json_atomic(os.path.join(workdir, "config.json"), config_json)
    vocab_path = os.path.join(workdir, "vocab.json")
    if not os.path.exists(vocab_path) and vocab is not None:
        vocab.save(vocab_path)
    write_json_atomic(os.path.join(workdir, "corpus.json"), fingerprint)


def prepare_run_dir(config, corpus, workdir: str):
    """:func:`check_run_dir`, then :func:`write_run_files`; returns the vocabulary."""
    config_json, fingerprint, vocab = check_run_dir(config, corpus, workdir)
    write_run_files(workdir, config_json, fingerprint, vocab)
    return vocab
