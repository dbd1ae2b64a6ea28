"""Vmapped trials: K settings of one architecture trained as one jitted program.

``train_trials(configs, workdirs)`` trains K configs that differ only in :data:`TRIAL_FIELDS`
(seed, learning rate, clip norm, initialisation scales: nothing that changes a shape or the
program) with
``jax.vmap`` over the parameters, the optimizer states, the carried hidden states, the dropout
keys and, where they differ (``train.bptt = "full"`` draws windows from the seed), the batches.
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
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import data as data_lib
from rnn_jax import lm as lm_lib
from rnn_jax import rundir, train
from rnn_jax.checkpoint import RunCheckpoints, UnreadableCheckpoints
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


def _make_step(model, config, steps_per_epoch: int, num_steps: int, per_trial_data: bool,
               with_keys: bool):
    """jit of the vmapped ``(params, opt_state, carry, inputs, targets, dropout_bases, weights,
    resets, hyper, active, step) -> (params, opt_state, carry, metrics, active)``: a trial updates only
    while active and finite; its dropout key is ``fold_in(its dropout base, step)``, as in a plain run."""
    step = train.train_step_fn(model, config.train.loss_reduction, train.diverge_bound(config, model))

    def one(params, opt_state, carry, inputs, targets, dropout_base, weights, resets, hyper, active, at):
        key = jax.random.fold_in(dropout_base, at) if with_keys else None
        optimizer = train.make_optimizer(config, steps_per_epoch, num_steps,
                                         learning_rate=hyper["learning_rate"], max_norm=hyper["max_norm"])
        new = step(params, opt_state, carry, inputs, targets, key, weights, optimizer, hyper["max_norm"],
                   resets)
        metrics = new[3]
        keep = active & metrics["finite"]
        old = (params, opt_state, carry)
        params, opt_state, carry = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new[:3], old)
        return params, opt_state, carry, metrics, keep

    d = 0 if per_trial_data else None
    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, d, d, 0 if with_keys else None, d, d, 0, 0, None)))


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
    corpus = train.load_data(config.data)
    train.check_data_fits(config, corpus)
    checked = {i: rundir.check_run_dir(configs[i], corpus, workdirs[i]) for i in live}  # written after the resume
    vocab = checked[live[0]][2]

    loss_mask = train.task_loss_mask(config, corpus)
    train_data = train.TrainStreams(config, corpus, loss_mask)
    steps_per_epoch = train_data.steps_per_epoch
    num_steps = t.num_steps or t.num_epochs * steps_per_epoch
    eval_every = t.eval_every or steps_per_epoch
    checkpoint_every = t.checkpoint_every or steps_per_epoch
    size = len(vocab) if vocab is not None else corpus.num_pitches
    models = [train.make_model(c, size) for c in configs]  # they differ only in how they initialise
    model = models[0]
    word_level = vocab is not None and vocab.level == "word"
    select_by = t.get("select_by", "valid_loss")
    per_trial_data = t.bptt == "full"
    vstep = _make_step(model, config, steps_per_epoch, num_steps, per_trial_data, model.dropout > 0)
    evaluate = train.Evaluator(model, config, corpus, loss_mask, trials=True)
    hyper = {name: jnp.asarray([float(c.optim[name]) for c in configs], jnp.float32)
             for name in ("learning_rate", "max_norm")}
    keys = [jax.random.split(jax.random.PRNGKey(c.seed), 3) for c in configs]  # init, dropout, sample
    dropout_bases = jnp.stack([key[1] for key in keys]) if model.dropout > 0 else None
    params_list = [m.init(key[0]) for m, key in zip(models, keys)]
    states = [{"step": jnp.zeros((), jnp.int32),
               "opt_state": train.make_optimizer(c, steps_per_epoch, num_steps).init(p),
               "carry": model.zero_carry(t.batch_size),
               "sched": {"best_valid": jnp.asarray(jnp.inf, jnp.float32),
                         "best_select": jnp.asarray(jnp.inf, jnp.float32),
                         "bad_evals": jnp.zeros((), jnp.int32), "halvings": jnp.zeros((), jnp.int32)}}
              for c, p in zip(configs, params_list)]

    results = [None if i in live else earlier[i] for i in range(k)]
    checkpoints, metrics_files, samples_files, boards = {}, {}, {}, {}
    last_good = [None] * k
    best = [{"step": None, "valid_loss": None, "metrics": {}} for _ in range(k)]
    active = np.zeros(k, bool)
    active[live] = True
    ended = [None] * k  # the step at which a trial diverged
    step = start = 0
    progress = train.Progress(start, num_steps)
    started = time.time()
    time_offsets = (0.0, 0.0)

    def times() -> dict:
        return {"elapsed_s": time_offsets[0] + time.time() - started,
                "train_time_s": time_offsets[1] + progress.elapsed()}

    def close(checkpoints_too: bool = True) -> None:
        if checkpoints_too:
            for ck in checkpoints.values():
                ck.close()
        for f in list(metrics_files.values()) + list(samples_files.values()):
            f.close()
        for board in boards.values():
            if board is not None:
                board.close()

    def finish(i: int, result: dict) -> None:
        result["vmapped"] = {"trials": k, "index": int(i)}
        results[i] = result
        rundir.write_json_atomic(os.path.join(workdirs[i], "result.json"), result)

    try:
        for i in live:
            checkpoints[i] = RunCheckpoints(workdirs[i], t.max_to_keep)
        start, restored_params, restored_states, metas = _resume(
            [checkpoints[i] for i in live], [params_list[i] for i in live], [states[i] for i in live], log)
        for i in live:  # the resume is valid: now write
            rundir.write_run_files(workdirs[i], *checked[i])
        step = start
        for j, i in enumerate(live):
            params_list[i], states[i] = restored_params[j], restored_states[j]
        if start:
            log(f"resuming {len(live)} trials at step {start}")
        time_offsets = (float(metas[0].get("elapsed_s", 0.0)), float(metas[0].get("train_time_s", 0.0)))
        progress = train.Progress(start, num_steps)
        for i in live:
            losses = [r["loss"] for r in rundir.truncate_after(workdirs[i], start)
                      if isinstance(r.get("loss"), (int, float))]
            last_good[i] = losses[-1] if losses else None
            if start and math.isfinite(float(states[i]["sched"]["best_select"])):
                best[i] = train.best_record(checkpoints[i], log)
            result_path = os.path.join(workdirs[i], "result.json")
            if os.path.exists(result_path):
                os.remove(result_path)  # live again
            metrics_files[i] = open(os.path.join(workdirs[i], "metrics.jsonl"), "a", encoding="utf-8")
            samples_files[i] = open(os.path.join(workdirs[i], "samples.txt"), "a", encoding="utf-8")
            boards[i] = train._tensorboard(workdirs[i], purge_step=start + 1)
        sched = [dict(s["sched"]) for s in states]
        params = _stack(params_list)
        opt_state = _stack([s["opt_state"] for s in states])
        carry = _stack([s["carry"] for s in states])
        del params_list, states
        zero_carry = _stack([model.zero_carry(t.batch_size)] * k)
        active_dev = jnp.asarray(active)
        pending: list = []
        last_valid = (None, None)  # (step, per-trial metrics) of the latest evaluation
        num_params = lm_lib.num_params(_index(params, 0))

        def flush() -> None:
            if not pending:
                return
            values = jax.device_get([m for _, m in pending])
            for (at, _), m in zip(pending, values):
                for i in np.flatnonzero(active):
                    record = train.step_record(at, {name: v[i] for name, v in m.items()})
                    if not bool(m["finite"][i]):
                        active[i], ended[i] = False, at
                        metrics_files[i].write(json.dumps(rundir.json_safe(record)) + "\n")
                        metrics_files[i].flush()
                        # recorded at once: a resumed program must not run it again
                        finish(i, train.run_result("diverged", at, num_steps, steps_per_epoch, num_params,
                                                   last_good[i], best[i], times(), vocab, select_by, corpus))
                        log(f"trial {i} ({workdirs[i]}): step {at}: diverged (not finite, or the loss above "
                            "train.diverge_factor x the loss of uniform predictions); its updates are masked "
                            "from here (its last checkpoint, if any, is kept), the others go on")
                        continue
                    last_good[i] = record["loss"]
                    metrics_files[i].write(json.dumps(record) + "\n")
                    if boards[i] is not None:
                        for name in ("loss", "grad_norm", "learning_rate"):
                            boards[i].add_scalar(f"train/{name}", record[name], at)
            for f in metrics_files.values():
                f.flush()
            pending.clear()

        def trial_state(i: int, at: int) -> dict:
            return {"step": jnp.asarray(at, jnp.int32), "opt_state": _index(opt_state, i),
                    "carry": _index(carry, i), "sched": sched[i]}

        while step < num_steps and active.any():
            resets = None
            if t.bptt == "truncated":
                inputs, targets, weights, resets, new_epoch = train_data.batch(step)
                if new_epoch:
                    carry = zero_carry
            else:
                batches = [data_lib.window_batch(corpus.train, c.seed, step, t.batch_size, t.seq_len,
                                                 mask=loss_mask.get("train")) for c in configs]
                inputs, targets = np.stack([b[0] for b in batches]), np.stack([b[1] for b in batches])
                weights = np.stack([b[2] for b in batches]) if len(batches[0]) == 3 else None
                carry = zero_carry
            params, opt_state, carry, metrics, active_dev = vstep(
                params, opt_state, carry, inputs, targets, dropout_bases, weights, resets, hyper, active_dev,
                step)
            step += 1
            pending.append((step, metrics))
            last = step == num_steps
            do_eval = step % eval_every == 0 or last
            do_save = do_eval or step % checkpoint_every == 0
            if step % t.log_every == 0 or do_save or step == start + 1:
                flush()
                losses = [last_good[i] for i in np.flatnonzero(active)]
                log(progress.line(step, min(losses) if losses else None) + f" | {int(active.sum())}/{k} trials")
                if step == start + 1:
                    progress.restart_rate(step)
            if not do_save or not active.any():
                continue
            progress.pause()
            if do_eval:
                valid_all = evaluate(params, "valid")
                last_valid = (step, valid_all)
            for i in np.flatnonzero(active):
                p_i = _index(params, i)
                if do_eval:
                    valid_metrics = valid_all[i]
                    valid = valid_metrics["loss"]
                    record = train.eval_record(step, valid_metrics, word_level, times())
                    score = -valid_metrics["accuracy"] if select_by == "valid_accuracy" else valid
                    improved = bool(score < float(sched[i]["best_select"]))
                    sched[i] = {"best_valid": jnp.asarray(min(valid, float(sched[i]["best_valid"])), jnp.float32),
                                "best_select": jnp.asarray(min(score, float(sched[i]["best_select"])), jnp.float32),
                                "bad_evals": jnp.zeros((), jnp.int32), "halvings": jnp.zeros((), jnp.int32)}
                    metrics_files[i].write(json.dumps(rundir.json_safe(record)) + "\n")
                    metrics_files[i].flush()
                    if boards[i] is not None:
                        boards[i].add_scalar("valid/loss", valid, step)
                    train.append_sample(samples_files[i], model, p_i, corpus, t, keys[i][2], step, valid)
                    if improved:
                        extra = {name: v for name, v in valid_metrics.items() if name != "loss"}
                        best[i] = {"step": step, "valid_loss": valid, "metrics": extra}
                        checkpoints[i].save("best", step, p_i, trial_state(i, step),
                                            rundir.json_safe({"step": step, "valid_loss": valid, "metrics": extra}))
                checkpoints[i].save("latest", step, p_i, trial_state(i, step),
                                    {"step": step, "time": time.time(), **times()})
            if do_eval:
                log(f"step {step}: valid loss " + " ".join(
                    f"{v['loss']:.4f}" if active[i] else "-" for i, v in enumerate(valid_all)))
            progress.resume()
        flush()
        for ck in checkpoints.values():
            ck.wait()

        done = [i for i in np.flatnonzero(active)]
        if done:
            final_valid = last_valid[1] if last_valid[0] == step else evaluate(params, "valid")
            final_test = evaluate(params, "test")
            # the test metrics at each trial's best checkpoint: its final parameters or the restored best
            need = [i for i in done if best[i]["step"] not in (None, step)]
            best_test = list(final_test)
            if need:
                chosen = [_index(params, i) for i in range(k)]
                readable = []
                for i in need:
                    try:
                        restored = checkpoints[i].restore_readable("best", train._abstract(chosen[i]),
                                                                   set_aside=True, log=log)
                    except UnreadableCheckpoints as e:
                        log(f"trial {i}: {e}; its result has no test metrics of the best checkpoint")
                        restored = None
                    if restored is not None:
                        chosen[i] = restored[0]
                        readable.append(i)
                    best_test[i] = None
                restored_test = evaluate(_stack(chosen), "test") if readable else None
                for i in readable:
                    best_test[i] = restored_test[i]
            for i in done:
                finish(i, train.run_result(
                    "completed", step, num_steps, steps_per_epoch, num_params, last_good[i], best[i],
                    times(), vocab, select_by, corpus, final_valid[i], final_test[i],
                    best_test[i] if best[i]["step"] is not None else None))
    except BaseException as e:
        # a failed save may also surface here; the trials are recorded as failed either way
        save_errors = [ck.close_after_failure() for ck in checkpoints.values()]
        error = e if isinstance(e, Exception) else next((x for x in save_errors if x is not None), None)
        if error is not None:
            for i in live:
                if results[i] is None:  # diverged or completed trials keep their result
                    rundir.write_json_atomic(os.path.join(workdirs[i], "result.json"), {
                        "status": "failed", "error": f"{type(error).__name__}: {error}", "step": step,
                        "num_steps": num_steps, "vmapped": {"trials": k, "index": int(i)}})
        close(checkpoints_too=False)
        raise
    close()
    log(f"{k} trials: " + ", ".join(f"{r.get('status')} (best valid loss {r.get('best_valid_loss')})" for r in results))
    return results
