"""The run directory's lock: one writer at a time.

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
import json
import os
import socket
import time
from typing import Iterator

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
