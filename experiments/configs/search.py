r"""Architecture search over recurrent cells (``rnn_jax.search``), run by ``experiments/search.py``.

    python -m experiments.search --config=experiments/configs/search.py:runlocal --search_dir=runs/search_smoke
    python -m experiments.search --config=experiments/configs/search.py --search_dir=runs/search   # ~30 min
    python -m experiments.search --config=experiments/configs/search.py:algorithm=evolution,budget=2000 \
        --search_dir=runs/evolution_memorization
    python -m experiments.search --config=experiments/configs/search.py:table=DIR,algorithm=evolution \
        --search_dir=runs/tabular --compare_repeats=20

Algorithms (``algorithm=``): ``jozefowicz`` (the default: Jozefowicz, Zaremba & Sutskever 2015: a
list of the best cells seeded with GRU and LSTM; each step re-evaluates a listed cell with new
hyperparameters or mutates one; a new cell must pass the memorization filter, then each task in
turn; fitness = min over tasks of accuracy ÷ GRU's best accuracy), ``evolution`` (regularized
evolution, Real et al. 2019) and ``random`` (random search). Every candidate is a sweep point of
``experiments/configs/tasks.py`` (``rnn_jax.search.evaluator``): trained on the local process pool
(``--launcher=slurm`` for a cluster), its K hyperparameter settings as K vmapped trials of one
program. ``table=DIR`` switches to tabular mode: candidates are looked up in a directory of
NAS-Bench-NLP training logs instead of trained.

Arg string (defaults: the README's 30-minute search on 2 cores): ``algorithm=jozefowicz,budget=200,
batch=8,seed=0,tasks=arithmetic+xml,filter=memorization,settings=2,list_size=100,filter_ratio=0.5,
stage_ratio=0.9,reevaluate=0.2,population=20,sample=5,hidden=48,steps=1000,filter_hidden=32,
filter_steps=300,digits=5,max_nodes=24,max_states=2,min_nodes=4,nodes=12,table=,top=5,runlocal``.
``budget`` counts trainings (a candidate's filter and each task are one each). For ``evolution``
and ``random`` the fitness is the mean accuracy over ``tasks`` (``tasks=memorization`` for the
throughput measurement). ``settings=K`` draws K learning rates / clip norms / init scales per
evaluation from ``hparam_space`` (Jozefowicz) or takes the first K of a fixed list (the others).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common
from rnn_jax.configs import check_choice
from rnn_jax.data.tasks import TASKS

ALGORITHMS = ("jozefowicz", "evolution", "random")
DEFAULTS = dict(algorithm="jozefowicz", budget=200, batch=8, seed=0, tasks="arithmetic+xml", filter="memorization",
                settings=2, list_size=100, filter_ratio=0.5, stage_ratio=0.9, reevaluate=0.2, population=20,
                sample=5, hidden=48, steps=1000, filter_hidden=32, filter_steps=300, digits=5, max_nodes=24,
                max_states=2, min_nodes=4, nodes=12, table="", top=5, runlocal=False)
# a smoke run: a handful of tiny trainings (Jozefowicz: the 6 seed stages, then new candidates)
RUNLOCAL = dict(budget=10, batch=2, settings=1, population=4, sample=2, hidden=8, steps=20, filter_hidden=8,
                filter_steps=20, digits=2, nodes=8)

# What the K settings of one evaluation may differ in: fields of the tasks config that vmapped
# trials may differ in (rnn_jax.rundir.TRIAL_FIELDS), with the choices of the search.
# ("/" for "." in the field names: ConfigDict keys cannot hold dots; the evaluator maps them back.)
HPARAM_SPACE = {"optim/learning_rate": [1e-3, 2e-3, 3e-3, 5e-3, 1e-2],
                "optim/max_norm": [1.0, 2.5, 5.0, 10.0],
                "model/init_scale": [0.5, 1.0, 1.5]}
# The fixed settings of evolution and random search (the first K are used).
FIXED_SETTINGS = [{"optim/learning_rate": 3e-3}, {"optim/learning_rate": 1e-2}, {"optim/learning_rate": 1e-3},
                  {"optim/learning_rate": 5e-3}]


def task_arg(task: str, a) -> str:
    """The tasks config's arg string of one task of the search (Adam, LeCun init, short runs)."""
    if task == a.filter:
        hidden, steps, chars = a.filter_hidden, a.filter_steps, 50_000
    else:
        hidden, steps, chars = a.hidden, a.steps, 400_000
    if a.runlocal:
        chars = 4000
    batch, seq_len, eval_chars = (4, 10, 600) if a.runlocal else (20, 35, 4000)
    return (f"task={task},hidden={hidden},steps={steps},batch={batch},seq_len={seq_len},optimizer=adam,lr=0.003,"
            f"init_style=lecun,digits={a.digits},train_chars={chars},eval_chars={eval_chars},eval_every={steps}")


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    check_choice("algorithm", a.algorithm, ALGORITHMS)
    for name in ("budget", "batch", "settings", "list_size", "population", "sample", "hidden", "steps",
                 "filter_hidden", "filter_steps", "digits", "max_nodes", "max_states", "min_nodes", "nodes", "top"):
        common.check_int(a, name)
    common.check_int(a, "seed", minimum=0)
    for name in ("filter_ratio", "stage_ratio", "reevaluate"):
        common.check_number(a, name, 0.0, 1.0 if name == "reevaluate" else None, strict_max=False)
    tasks = tuple(t for t in str(a.tasks).split("+") if t)
    for t in tasks + ((a.filter,) if a.filter else ()):
        check_choice("tasks", t, TASKS)
    if not tasks:
        check_choice("tasks", a.tasks, TASKS)
    if a.algorithm != "jozefowicz" and a.settings > len(FIXED_SETTINGS):
        check_choice("settings", a.settings, tuple(range(1, len(FIXED_SETTINGS) + 1)))
    c = ml_collections.ConfigDict()
    c.algorithm, c.budget, c.batch, c.seed = a.algorithm, a.budget, a.batch, a.seed
    c.tasks = tasks
    c.filter_task = a.filter if a.algorithm == "jozefowicz" else ""
    c.jozefowicz = dict(list_size=a.list_size, filter_ratio=a.filter_ratio, stage_ratio=a.stage_ratio,
                        reevaluate_probability=a.reevaluate, settings=a.settings)
    c.evolution = dict(population=a.population, sample=a.sample)
    c.hparam_space = dict(HPARAM_SPACE)
    c.hparams = FIXED_SETTINGS[:a.settings] if a.settings > 1 else [{}]
    c.space = dict(max_nodes=a.max_nodes, max_states=a.max_states, num_nodes=(a.min_nodes, a.nodes),
                   num_states=tuple(range(1, a.max_states + 1)))
    c.task_args = {t: task_arg(t, a) for t in tasks + ((c.filter_task,) if c.filter_task else ())}
    c.hidden = a.hidden  # the leaderboard's parameter counts
    c.table = a.table
    c.top = a.top
    return c
