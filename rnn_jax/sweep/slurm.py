"""The SLURM launcher: a sweep's points as one job array, through submitit.

Each array task trains one point (or, with ``trials_per_program = K``, up to K points as vmapped
trials) in the same run directory the local launcher would use
(``<sweep_dir>/runs/<point-name>``), so tables never depend on where a sweep ran. A task that is
preempted or reaches its time limit is checkpointed by submitit and requeued; the requeued task
resumes from the run directory's latest checkpoint (runs resume exactly).

The sweep's state always comes from the run directories (:func:`rnn_jax.sweep.sweep_status`),
never from SLURM's accounting or from ``job.result()``: without ``slurmdbd`` submitit cannot see
finished jobs, and a job killed from outside would leave ``result()`` waiting forever. Launching
again submits only the points that are neither done nor running.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from typing import Any, Mapping, Sequence

from rnn_jax import rundir
from rnn_jax.sweep import local


@dataclasses.dataclass(frozen=True)
class SlurmResources:
    """What each array task asks for (submitit's ``update_parameters``)."""

    partition: str = ""           # "" = the cluster's default partition
    time_min: int = 60            # time limit per task; on reaching it the task is requeued
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float = 0.0           # 0 = the partition's default (DefMemPerCPU)
    array_parallelism: int = 16   # tasks of the array running at once

    def check(self) -> None:
        for name in ("time_min", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"slurm {name} must be a positive integer, got {value!r}")
        if not isinstance(self.gpus_per_task, int) or self.gpus_per_task < 0:
            raise ValueError(f"slurm gpus_per_task must be an integer >= 0, got {self.gpus_per_task!r}")
        if not isinstance(self.mem_gb, (int, float)) or self.mem_gb < 0:
            raise ValueError(f"slurm mem_gb must be a number >= 0, got {self.mem_gb!r}")


def _queued(workdir: str) -> bool:
    """Whether the SLURM job recorded in ``workdir/slurm_job.json`` is still in the queue."""
    record = rundir.read_json(os.path.join(workdir, "slurm_job.json"))
    if not record:
        return False
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", str(record["job_id"])],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def _checkpointable():
    import submitit

    class ProgramTask(submitit.helpers.Checkpointable):
        """One sweep point, or several as vmapped trials; on preemption or timeout submitit
        requeues the same call, which resumes from the run directories."""

        def __call__(self, config_path: str, base_arg, overrides: Sequence[Mapping[str, Any]],
                     workdirs: Sequence[str]) -> list:
            return local.run_program(config_path, base_arg, overrides, workdirs)

    return ProgramTask


def launch_slurm(sweep_dir: str, config_path: str, points: Sequence[Mapping[str, Any]], *,
                 base_arg: str | None = None, resources: SlurmResources = SlurmResources(),
                 log=None) -> list:
    """Submit every point that is not done or running as one job array; returns the job ids.

    Does not wait: follow the sweep with :func:`rnn_jax.sweep.sweep_status` (run directories).
    """
    import submitit  # the `slurm` extra

    log = log or (lambda msg: print(msg, flush=True))
    resources.check()
    names = local.record_sweep(sweep_dir, config_path, base_arg, points)
    by_name = dict(zip(names, points))
    todo = [n for n in dict.fromkeys(names)
            if local.point_state(local.run_dir(sweep_dir, n)) not in local.DONE + ("running",)
            and not _queued(local.run_dir(sweep_dir, n))]
    log(f"sweep {sweep_dir}: {len(by_name)} points, {len(by_name) - len(todo)} done, running or "
        f"queued, {len(todo)} to submit")
    if not todo:
        return []
    # a fresh submitit folder per launch: job ids may restart after a cluster's cold start
    folder = os.path.join(sweep_dir, "slurm", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    params = dict(timeout_min=resources.time_min, cpus_per_task=resources.cpus_per_task,
                  slurm_array_parallelism=resources.array_parallelism, name="rnn_jax_sweep")
    if resources.partition:
        params["slurm_partition"] = resources.partition
    if resources.gpus_per_task:
        params["gpus_per_node"] = resources.gpus_per_task
    if resources.mem_gb:
        params["mem_gb"] = resources.mem_gb
    executor.update_parameters(**params)
    for name in todo:
        os.makedirs(local.run_dir(sweep_dir, name), exist_ok=True)
    programs = local.programs(config_path, base_arg, {n: by_name[n] for n in todo})  # vmapped trials
    jobs = executor.map_array(_checkpointable()(), [config_path] * len(programs), [base_arg] * len(programs),
                              [[dict(by_name[n]) for n in p] for p in programs],
                              [[local.run_dir(sweep_dir, n) for n in p] for p in programs])
    ids = [job.job_id for job in jobs]
    for program, job_id in zip(programs, ids):  # a relaunch does not submit a queued point again
        for name in program:
            rundir.write_json_atomic(os.path.join(local.run_dir(sweep_dir, name), "slurm_job.json"),
                                     {"job_id": job_id, "folder": folder, "time": time.time()})
    log(f"submitted array {ids[0].split('_')[0] if ids else '-'} ({len(ids)} tasks for {len(todo)} points, "
        f"{resources.array_parallelism} at a time); logs in {folder}")
    return ids
