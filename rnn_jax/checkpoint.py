"""Run checkpoints with orbax: ``checkpoints/latest`` (the newest ``max_to_keep``) and
``checkpoints/best`` (the best by validation metric), each step saving the parameters, the rest of
the training state and a small JSON metadata record as separate items.

Orbax writes into a temporary directory and renames it when complete, so a process killed mid-save
leaves the previous checkpoints intact (an interrupted first save leaves none: ``restore`` then
returns ``None`` and the run starts fresh).
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


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
