"""Run checkpoints with orbax: ``checkpoints/latest`` (the newest ``max_to_keep``) and
``checkpoints/best`` (the best by validation metric), each step saving the parameters, the rest of
the training state and a small JSON metadata record as separate items.

Orbax writes into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoints intact (an interrupted first save leaves none: ``restore`` then
returns ``None`` and the run starts fresh).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from rnn_jax.errors import InputError

UNREADABLE = "unreadable"  # checkpoints/unreadable/<kind>-<step>: steps that could not be read, kept aside


class UnreadableCheckpoints(InputError):
    """Checkpoints exist but none of them can be read."""


class RunCheckpoints:
    """The two checkpoint managers of a run directory."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive integer, got {max_to_keep!r}")
        root = os.path.join(os.path.abspath(workdir), "checkpoints")
        self._managers = {
            "latest": ocp.CheckpointManager(
                os.path.join(root, "latest"),
                options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)),
            "best": ocp.CheckpointManager(
                os.path.join(root, "best"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)),
        }

    def latest_step(self, which: str = "latest") -> int | None:
        return self._manager(which).latest_step()

    def steps(self, which: str = "latest") -> list:
        """The steps kept for ``which``, oldest first."""
        return sorted(self._manager(which).all_steps())

    def clear(self) -> None:
        """Delete every checkpoint (a run that starts over)."""
        for manager in self._managers.values():
            for step in manager.all_steps():
                manager.delete(step)

    def _manager(self, which: str):
        if which not in self._managers:
            raise ValueError(f"checkpoint kind must be 'latest' or 'best', got {which!r}")
        return self._managers[which]

    def save(self, which: str, step: int, params: Any, state: Any, meta: dict) -> bool:
        """Save (asynchronously) unless ``step`` is already saved; returns whether it saved."""
        manager = self._manager(which)
        if manager.latest_step() is not None and step <= manager.latest_step():
            return False
        return manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, which: str, params_like: Any, state_like: Any = None, step: int | None = None):
        """``(params, state, meta)`` of the newest (or given) step, or ``None`` when there is none.

        ``params_like`` / ``state_like`` give the tree structure, shapes and dtypes (arrays or
        ``jax.ShapeDtypeStruct``); without ``state_like`` only the parameters are read and
        ``state`` is ``None``.
        """
        manager = self._manager(which)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        items = {"params": ocp.args.StandardRestore(params_like), "meta": ocp.args.JsonRestore()}
        if state_like is not None:
            items["state"] = ocp.args.StandardRestore(state_like)
        out = manager.restore(step, args=ocp.args.Composite(**items))
        return out["params"], (out["state"] if state_like is not None else None), out["meta"]

    def restore_readable(self, which: str, params_like: Any, state_like: Any = None, *,
                         restore: Callable | None = None, set_aside: bool = False, log=print):
        """``(params, state, meta)`` of the newest step that can be read, or ``None`` when there is
        no step.

        Steps that cannot be read (a truncated data file, a missing manifest) are passed over, each
        with one line through ``log`` naming it and the step used instead; with ``set_aside`` (the
        writer of the run) they are moved to ``checkpoints/unreadable/<which>-<step>``, kept rather
        than deleted, so that the run can save those steps again. When steps exist but none can be
        read, :class:`UnreadableCheckpoints` says so and nothing is moved: starting over is the
        user's call. A
        checkpoint whose parameters do not fit ``params_like`` (another model) raises
        :class:`InputError` too: that is the config's fault, not the file's.
        ``restore(which, params_like, state_like, step)`` defaults to :meth:`restore`.
        """
        restore = restore or (lambda w, p, s, step: self.restore(w, p, s, step=step))
        _drop_closed_loop_reports()
        failed = []  # (step, reason), newest first
        for step in reversed(self.steps(which)):
            try:
                restored = restore(which, params_like, state_like, step)
            except Exception as error:
                self._check_fits(which, step, params_like)
                failed.append((step, _first_line(error)))
                continue
            for bad, reason in failed:
                where = self.set_aside(which, bad) if set_aside else None
                log(f"checkpoint {which}/{bad} is unreadable ({reason}); "
                    + (f"moved to {where}; " if where else "") + f"using step {step}")
            return restored
        if failed:
            directory = os.path.dirname(str(self._manager(which).directory))
            raise UnreadableCheckpoints(f"none of the {len(failed)} checkpoint(s) in {which}/ can be read (step "
                             f"{failed[0][0]}: {failed[0][1]}): move {directory} aside to start the run over")
        return None

    def _check_fits(self, which: str, step: int, params_like: Any) -> None:
        """Raise :class:`InputError` when step's saved parameters have other names or shapes than
        ``params_like``; return quietly when they fit or cannot be read."""
        try:
            saved = self._manager(which).restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore()))["params"]
        except Exception:
            return
        def shapes(tree):
            return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in jax.tree_util.tree_leaves_with_path(tree)}
        have, want = shapes(saved), shapes(params_like)
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            details = "; ".join(f"{k}: saved {have.get(k)}, config {want.get(k)}" for k in diff[:4])
            raise InputError(f"checkpoint {which}/{step} was saved by another model than this config's "
                             f"({details}{'; ...' if len(diff) > 4 else ''}): resume with the run's own config "
                             "or use a fresh workdir")

    def set_aside(self, which: str, step: int) -> str | None:
        """Move ``<which>/<step>`` to ``checkpoints/unreadable/<which>-<step>``; returns where."""
        manager = self._manager(which)
        source = os.path.join(str(manager.directory), str(step))
        if not os.path.isdir(source):
            return None
        target = os.path.join(os.path.dirname(str(manager.directory)), UNREADABLE, f"{which}-{step}")
        n, base = 1, target
        while os.path.exists(target):
            n, target = n + 1, f"{base}.{n}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(source, target)
        manager.reload()
        return target

    def restore_meta(self, which: str, step: int | None = None) -> dict | None:
        """The JSON metadata of the newest (or given) step, or ``None`` when there is none."""
        manager = self._manager(which)
        step = manager.latest_step() if step is None else step
        if step is None:
            return None
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()
            manager.close()

    def close_after_failure(self) -> Exception | None:
        """Close after the run failed: wait for pending saves and close, never raising; returns the
        save error found, if any.

        After a failed save orbax can leave non-daemon threads waiting (up to its 20-minute save
        deadline) for signals that never come, and the interpreter would wait for them at exit. So
        the process is also set to end at exit, with status 1, without joining those threads
        (:func:`_exit_past_stuck_saves`).
        """
        _end_process_past_stuck_saves()
        error = None
        for manager in self._managers.values():
            try:
                manager.wait_until_finished()
            except Exception as e:  # the failed save, reported by orbax's background thread
                error = error or e
            try:
                manager.close()
            except Exception as e:
                error = error or e
        return error


def _first_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _drop_closed_loop_reports() -> None:
    """After a failed read, TensorStore's I/O threads report "Event loop is closed" once per pending
    read, as unraisable exceptions (25 tracebacks for one bad checkpoint), possibly after the read
    has returned, and the unfinished reads (orbax coroutines) report their error again when they are
    garbage-collected.
    Install, once, an unraisable hook that drops exactly those and passes on the rest."""
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loops", False):
        return

    def hook(unraisable):
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and "Event loop is closed" in str(error):
            return
        code = getattr(unraisable.object, "cr_code", None)  # an unfinished read, garbage-collected
        if code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename:
            return
        previous(unraisable)

    hook._drops_closed_loops = True
    sys.unraisablehook = hook


def _stuck_save_threads() -> list:
    return [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()
            and not t.daemon and type(t).__module__.startswith("orbax.")]


def _exit_past_stuck_saves() -> None:
    """At interpreter exit (before non-daemon threads are joined): if orbax threads of a failed
    save are still waiting, flush the output and end the process with status 1 instead of
    waiting for them."""
    stuck = _stuck_save_threads()
    if stuck:
        print(f"rnn_jax: {len(stuck)} checkpoint thread(s) of a failed save are still waiting; "
              "exiting without them (status 1)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)


_registered: list = []


def _end_process_past_stuck_saves() -> None:
    if _registered:
        return
    # threading's own exit hooks run before the interpreter joins non-daemon threads (atexit's
    # run after); concurrent.futures registers its shutdown the same way.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(_exit_past_stuck_saves)
            _registered.append(True)
        except RuntimeError:  # already shutting down
            pass
