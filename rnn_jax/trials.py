"""Vmapped trials: K settings of one architecture trained as one jitted program.

``train_trials(configs, workdirs)`` trains K configs that differ only in :data:`TRIAL_FIELDS`
(seed, learning rate, clip norm, initialisation scales: nothing that changes a shape or the
program) with
``jax.vmap`` over the parameters, the optimizer states, the carried hidden states, the dropout
keys and, where they differ (``train.bptt = "full"`` draws windows from the seed), the batches.
The program is a :class:`Vmapped`, driven by the one loop (:func:`rnn_jax.train.run_loop`) with a
:class:`rnn_jax.train.Recorder` per trial. Batches differ per trial where they depend on the seed
(``train.bptt = "full"`` windows, and every example kind's batches).
Each trial writes its own run directory as :func:`rnn_jax.train.train_and_evaluate` would
(``config.json``, ``metrics.jsonl``, ``samples.txt``, checkpoints, ``result.json``), so tables
do not depend on how a sweep ran; only ``result.json`` adds ``"vmapped": {"trials": K, "index": i}``.
A trial's checkpoints are a plain run's: a trial can be resumed on its own, and a plain run as a
trial.

A trial that diverges (its loss, gradient norm or parameters non-finite, or the loss above
``train.diverge_factor`` times that of uniform predictions) is frozen inside the program
at its last finite parameters (its updates are masked from that step on), recorded as
``diverged`` like a plain run that diverged at that step, and the other trials go on. When the
program is resumed, a trial recorded as diverged stays so (a sweep treats it as done).

Small models gain most: the K trials compile once and share each step's dispatch and loop
overhead (``python experiments/benchmark.py --what=trials``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import rundir, train
from rnn_jax.checkpoint import UnreadableCheckpoints
from rnn_jax.errors import InputError

# The fields in which the trials of one program may differ: the seed, two optimizer scalars and
# the initialisers' scales (used by ``init`` only, never by ``apply``).
TRIAL_FIELDS = rundir.TRIAL_FIELDS
_NOT_COMPARED = rundir.fields("trial", "execution")


def _flat(config) -> dict:
    return rundir.flatten(json.loads(config.to_json_best_effort()))


def program_key(config) -> str:
    """Configs with equal keys can be trials of one program (all fields but :data:`TRIAL_FIELDS`)."""
    flat = {k: v for k, v in _flat(config).items() if k not in _NOT_COMPARED}
    return json.dumps(flat, sort_keys=True, default=str)


def check_trials(configs) -> None:
    """Raise ``ValueError`` unless ``configs`` can train as vmapped trials of one program."""
    if not configs:
        raise InputError("vmapped trials need at least one config")
    first = _flat(configs[0])
    for i, config in enumerate(configs[1:], 1):
        flat = _flat(config)
        diff = sorted(k for k in set(first) | set(flat) if first.get(k) != flat.get(k) and k not in _NOT_COMPARED)
        if diff:
            details = "; ".join(f"{k}: {first.get(k)!r} vs {flat.get(k)!r}" for k in diff[:6])
            raise InputError(f"trial {i} differs from trial 0 in {details}; vmapped trials may differ "
                             f"only in {', '.join(TRIAL_FIELDS)}")
    config = configs[0]
    if config.optim.schedule.name == "plateau":
        raise InputError("config.optim.schedule.name = 'plateau' cannot run as vmapped trials: each run "
                         "halves its learning rate and stops on its own validation curve; use "
                         "trials_per_program = 1 (or another schedule)")
    if config.train.get("data_parallel", False):
        raise InputError("config.train.data_parallel = True cannot run as vmapped trials: use "
                         "trials_per_program = 1 for a data-parallel run")


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _index(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _make_step(problem, config, num_steps: int, per_trial_data: bool, with_keys: bool):
    """jit of the vmapped ``(params, opt_state, carry, batch, dropout_bases, hyper, active, step) ->
    (params, opt_state, carry, metrics, active)``: a trial updates only while active and finite; its
    dropout key is ``fold_in(its dropout base, step)``, as in a plain run."""
    step = train.step_fn(problem.loss, train.diverge_bound(config, problem))

    def one(params, opt_state, carry, batch, dropout_base, hyper, active, at):
        key = jax.random.fold_in(dropout_base, at) if with_keys else None
        optimizer = train.make_optimizer(config, problem.steps_per_epoch, num_steps,
                                         learning_rate=hyper["learning_rate"], max_norm=hyper["max_norm"])
        new = step(params, opt_state, carry, batch, key, optimizer, hyper["max_norm"])
        metrics = new[3]
        keep = active & metrics["finite"]
        old = (params, opt_state, carry)
        params, opt_state, carry = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new[:3], old)
        return params, opt_state, carry, metrics, keep

    d = 0 if per_trial_data else None
    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, d, 0 if with_keys else None, 0, 0, None)))


class Vmapped:
    """K trials' training state as the loop (:func:`rnn_jax.train.run_loop`) drives it: parameters,
    optimizer states and carries stacked on a leading trial axis, one vmapped jitted step."""

    def __init__(self, problem, configs, num_steps: int, active):
        config = configs[0]
        self.problem, self.configs, self.k = problem, configs, len(configs)
        self.batch_size = config.train.batch_size
        self.per_trial_data = problem.seed_batches
        self.with_keys = getattr(problem.model, "dropout", 0.0) > 0
        self._step = _make_step(problem, config, num_steps, self.per_trial_data, self.with_keys)
        self.evaluate_all = problem.evaluator(trials=True)
        self.hyper = {name: jnp.asarray([float(c.optim[name]) for c in configs], jnp.float32)
                      for name in ("learning_rate", "max_norm")}
        self.keys = [jax.random.split(jax.random.PRNGKey(c.seed), 3) for c in configs]  # init, dropout, sample
        self.dropout_bases = jnp.stack([key[1] for key in self.keys]) if self.with_keys else None
        self.optimizers = [train.make_optimizer(c, problem.steps_per_epoch, num_steps) for c in configs]
        self.fresh_params = [problem.init(c, key[0]) for c, key in zip(configs, self.keys)]
        self.zero_carry = _stack([problem.zero_carry(self.batch_size)] * self.k)
        self.active = np.asarray(active, bool).copy()
        self.at = 0

    def fresh_states(self) -> list:
        return [train.fresh_state(opt, p, self.problem.zero_carry(self.batch_size))
                for opt, p in zip(self.optimizers, self.fresh_params)]

    def load(self, params_list, states, start: int) -> None:
        self.params = _stack(params_list)
        self.opt_state = _stack([s["opt_state"] for s in states])
        self.carry = _stack([s["carry"] for s in states])
        self.active_dev = jnp.asarray(self.active)
        self.at = start

    def step(self, step: int):
        if self.per_trial_data:
            batches = [self.problem.batch(c, step) for c in self.configs]
            batch = jax.tree.map(lambda *xs: np.stack(xs), *[b for b, _ in batches])
            new_epoch = batches[0][1]
        else:
            batch, new_epoch = self.problem.batch(self.configs[0], step)
        if new_epoch:
            self.carry = self.zero_carry
        self.params, self.opt_state, self.carry, metrics, self.active_dev = self._step(
            self.params, self.opt_state, self.carry, batch, self.dropout_bases, self.hyper, self.active_dev, step)
        self.at = step + 1
        return metrics

    def row(self, metrics, i: int) -> dict:
        return {name: v[i] for name, v in metrics.items()}

    def deactivate(self, i: int) -> None:
        self.active[i] = False

    def params_of(self, i: int):
        return _index(self.params, i)

    def state_of(self, i: int, step: int, sched: dict) -> dict:
        return {"step": jnp.asarray(step, jnp.int32), "opt_state": _index(self.opt_state, i),
                "carry": _index(self.carry, i), "sched": sched}

    def halve_learning_rate(self, i: int) -> float:
        raise InputError("the plateau schedule cannot run as vmapped trials")  # refused by check_trials

    def evaluate(self, split: str) -> list:
        return self.evaluate_all(self.params, split)

    def evaluate_params(self, params_list: list, split: str) -> list:
        """``split``'s metrics for given parameters per trial (``None``: the trial's own)."""
        chosen = [self.params_of(i) if p is None else p for i, p in enumerate(params_list)]
        return self.evaluate_all(_stack(chosen), split)

    def sample(self, i: int, step: int, valid_loss: float):
        key = jax.random.fold_in(self.keys[i][2], step)
        return self.problem.sample(self.params_of(i), key, step, valid_loss)


def _resume(checkpoints, params_list, states, log):
    """Restore every trial at its latest step, which must be the same for all: ``(start,
    params_list, states, metas)``. When they differ (a kill during a save, or trials that ran in
    different programs before), every trial starts over with its checkpoints deleted, so no
    stale checkpoint stays ahead of the replay."""
    latest = [ck.latest_step() for ck in checkpoints]
    fresh = (0, params_list, states, [{}] * len(states))
    if all(s is None for s in latest):
        return fresh

    def start_over(why: str):
        log(f"{why}: all trials start over")
        for ck in checkpoints:
            ck.clear()
        return fresh

    if len(set(latest)) > 1:
        return start_over(f"the trials' latest checkpoints are at different steps {latest}")
    restored = []
    for i, (ck, p, s) in enumerate(zip(checkpoints, params_list, states)):
        try:  # unreadable steps are set aside; a trial left with none makes every trial start over
            restored.append(train._restore_latest(ck, p, s, set_aside=True, log=log))
        except UnreadableCheckpoints as e:
            for step in ck.steps():
                ck.set_aside("latest", step)
            return start_over(f"trial {i}: {e}")
    steps = [None if r is None else int(r[1]["step"]) for r in restored]
    if None in steps or len(set(steps)) > 1:
        return start_over(f"the trials' newest readable checkpoints are at different steps {steps}")
    return (steps[0], [r[0] for r in restored], [r[1] for r in restored], [r[2] for r in restored])


def train_trials(configs, workdirs, *, log=None) -> list:
    """Train (or resume) the trials ``configs[i]`` in ``workdirs[i]`` as one vmapped program;
    returns their ``result.json`` contents."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    configs, workdirs = list(configs), [os.fspath(w) for w in workdirs]
    if len(configs) != len(workdirs):
        raise InputError(f"{len(configs)} configs but {len(workdirs)} workdirs: give one workdir per trial")
    if len(set(map(os.path.abspath, workdirs))) != len(workdirs):
        raise InputError(f"workdirs repeat a directory ({workdirs}): each trial needs its own")
    check_trials(configs)
    for config in configs:
        train.validate_config(config)
    for workdir in workdirs:
        rundir.check_workdir(workdir)
    with contextlib.ExitStack() as locks:  # every trial's run directory, for the program's life
        for workdir in workdirs:
            locks.enter_context(rundir.exclusive(workdir))
        return _train_trials(configs, workdirs, log)


def _train_trials(configs, workdirs, log) -> list:
    config, k = configs[0], len(configs)
    t = config.train
    # a trial already recorded as diverged stays so (rerunning would diverge again; a sweep counts
    # it as done) and its files are left as they are; the others resume together from one step
    earlier = [rundir.read_json(os.path.join(w, "result.json")) for w in workdirs]
    live = [i for i in range(k) if (earlier[i] or {}).get("status") != "diverged"]
    if not live:
        log(f"all {k} trials diverged earlier: nothing to run")
        return earlier
    problem = train.make_problem(config)
    checked = {i: rundir.check_run_dir(configs[i], problem.data, workdirs[i]) for i in live}  # written later
    num_steps = t.num_steps or t.num_epochs * problem.steps_per_epoch
    active = np.zeros(k, bool)
    active[live] = True
    program = Vmapped(problem, configs, num_steps, active)
    params_list, states = list(program.fresh_params), program.fresh_states()
    recorders = [train.Recorder(workdirs[i], checked.get(i), t.max_to_keep, {"vmapped": {"trials": k, "index": i}},
                                live=i in live) for i in range(k)]
    for i in range(k):
        if i not in live:
            recorders[i].result = earlier[i]
    live_recorders = [recorders[i] for i in live]
    start = 0
    try:
        start, restored_params, restored_states, metas = _resume(
            [r.checkpoints for r in live_recorders], [params_list[i] for i in live], [states[i] for i in live], log)
        for j, i in enumerate(live):
            params_list[i], states[i] = restored_params[j], restored_states[j]
        if start:
            log(f"resuming {len(live)} trials at step {start}")
        clock = train.Clock((float(metas[0].get("elapsed_s", 0.0)), float(metas[0].get("train_time_s", 0.0))))
        for i in live:  # the resume is valid: now write
            recorders[i].open(start, states[i]["sched"], log)
        program.load(params_list, states, start)
        del params_list, states
        train.run_loop(program, problem, recorders, config, start, num_steps, clock, log)
    except BaseException as e:
        # a failed save may also surface here; the trials are recorded as failed either way
        save_errors = [r.checkpoints.close_after_failure() for r in live_recorders]
        error = e if isinstance(e, Exception) else next((x for x in save_errors if x is not None), None)
        if error is not None:
            for i in live:  # diverged or completed trials keep their result
                recorders[i].fail(error, program.at, num_steps)
        for r in live_recorders:
            r.close(checkpoints=False)
        raise
    for r in live_recorders:
        r.close()
    results = [r.result for r in recorders]
    log(f"{k} trials: " + ", ".join(f"{r.get('status')} (best valid loss {r.get('best_valid_loss')})"
                                    for r in results))
    return results
