r"""Jozefowicz et al. (2015) tasks: arithmetic, XML modelling, memorization, as character streams.

    python -m experiments.train --config=experiments/configs/tasks.py:task=xml,cell=gru \
        --workdir=runs/xml_gru

The data are generated (``rnn_jax.data.tasks``): nothing to download. Protocol of the paper: one
continuous stream cut into ``batch=20`` contiguous streams, unrolled ``seq_len=35`` steps, the
hidden state carried across minibatches and never reset between examples; inputs embedded to the
hidden size (MUT1/MUT2 add the raw input to a hidden-sized gate); every matrix uniform in
``±init_scale/sqrt(hidden)`` (``init_style=uniform``; ``init_style=lecun``: LeCun-normal input
matrices, orthogonal recurrent ones, unit-scale embeddings); SGD with gradient clipping. The loss
counts the scored positions (the answers; every character for XML) and the best checkpoint is the
one with the best validation accuracy.

``task=ptb,data_path=DIR`` (Penn Treebank files) and ``task=music,data_path=FILE`` (piano rolls)
are selected by validation loss and report perplexity / NLL per frame. PTB is one stream like
the generated tasks; music pieces are independent (``data.protocol="pieces"``: the state is reset
at every piece start and each piece is scored from the zero state).

Arg string: ``task=arithmetic,cell=lstm_f,hidden=128,layers=1,steps=2000,lr=0.5,init=1.0,
max_norm=5,optimizer=sgd,init_style=uniform,digits=8,negative=0.5,distractors=3,train_chars=1000000,
eval_chars=20000,eval_every=500,seed=0,runlocal``. ``runlocal`` shrinks the run to a smoke test (a
16-unit model, 20 steps of 4x10 on 4000 characters); a value typed in the arg string wins over it.
Sizes, counts and rates are checked here (``hidden=-5`` is refused, naming the arg).
"""

import math

from experiments.configs import common
from rnn_jax.configs import check_choice
from rnn_jax.data import registry  # noqa: E402
from rnn_jax.data.tasks import TASKS

# every registered task of another model kind (classifier, tagger, conditioned, seq2seq), with its
# default options: the comparison (experiments/compare.py --tasks=...) runs them through this config
# (karpathy reads a dataset the user has: train it through experiments/configs/caption.py)
EXAMPLE_TASKS = tuple(name for name in registry.names() if registry.get(name).model_kind != "lm" and name != "karpathy")
ALL_TASKS = TASKS + ("ptb", "music") + EXAMPLE_TASKS  # ptb and music read files: data_path=...
DEFAULTS = dict(task="arithmetic", cell="lstm", hidden=128, layers=1, steps=3000, batch=20, seq_len=35, lr=0.5,
                init=1.0, max_norm=5.0, optimizer="sgd", init_style="uniform", digits=8, negative=0.0,
                distractors=3, data_path="", train_chars=1_000_000, eval_chars=20_000, eval_every=500, seed=0,
                runlocal=False)
# defaults of a smoke run
RUNLOCAL = dict(hidden=16, steps=20, batch=4, seq_len=10, train_chars=4000, eval_chars=600, eval_every=10)


def get_config(arg=None):
    a = common.parse(arg, DEFAULTS, RUNLOCAL)
    if a.task in EXAMPLE_TASKS:
        return _example_config(a)
    for name in ("hidden", "layers", "steps", "batch", "seq_len", "digits", "train_chars", "eval_chars"):
        common.check_int(a, name)
    for name in ("distractors", "eval_every", "seed"):  # eval_every=0: once per epoch
        common.check_int(a, name, minimum=0)
    for name in ("lr", "init", "max_norm"):
        common.check_number(a, name, strict=True)
    common.check_number(a, "negative", 0.0, 1.0, strict_max=False)
    check_choice("task", a.task, ALL_TASKS)
    check_choice("init_style", a.init_style, ("uniform", "lecun"))
    c = common.lm_config()
    c.seed, c.cell = a.seed, a.cell
    c.model.update(embed_size=a.hidden, hidden_size=a.hidden, num_layers=a.layers)
    if a.init_style == "uniform":  # the paper: every matrix uniform in ±init/sqrt(hidden)
        c.model.update(kernel_init="uniform", recurrent_init="uniform", init_scale=a.init,
                       embed_scale=a.init / math.sqrt(a.hidden), output_scale=a.init)
    else:  # LeCun-normal input matrices, orthogonal recurrent ones, unit-scale embeddings
        c.model.update(kernel_init="lecun_normal", recurrent_init="orthogonal", init_scale=a.init,
                       embed_scale=1.0, output_scale=a.init)
    c.data.update(kind=a.task, path="")
    c.data.seed = 0  # the same data for every cell and every seed of the model
    c.data.loss_on = "scored"
    # each task's options (only the block of data.kind is used)
    c.data.arithmetic = dict(max_digits=a.digits, max_distractors=a.distractors, negative_prob=a.negative)
    c.data.xml = dict(max_iters=50, min_len=2, max_len=10)
    c.data.memorization = dict(num_symbols=5, alphabet=26)
    c.data.num_chars = dict(train=a.train_chars, valid=a.eval_chars, test=a.eval_chars)
    c.train.update(batch_size=a.batch, seq_len=a.seq_len, eval_batch_size=a.batch, num_steps=a.steps,
                   log_every=100, eval_every=a.eval_every, checkpoint_every=a.eval_every,
                   sample_length=0, max_to_keep=1)
    c.train.select_by = "valid_accuracy"
    if a.task == "ptb":  # word-level LM: perplexity; data_path is the directory of ptb.*.txt
        c.data.update(kind="ptb", dir=a.data_path)
        c.train.select_by = "valid_loss"
    elif a.task == "music":  # piano rolls, independent pieces: NLL per frame; data_path: JSON or pickle
        c.data.update(kind="music", path=a.data_path, protocol="pieces")
        c.train.select_by = "valid_loss"
    c.optim.update(name=a.optimizer, learning_rate=a.lr, max_norm=a.max_norm)
    c.optim.schedule.update(name="constant")
    if a.runlocal:
        c.train.update(log_every=5)
    return c


def sweep(add):
    for task in ("arithmetic", "xml"):
        for cell in ("rnn", "lstm", "lstm_f", "gru", "mut1"):
            add(cell=cell, **{"data.kind": task})


def _example_config(a):
    """A registered example task with its default options, under the comparison's arg names
    (``hidden``, ``layers``, ``lr``, ``init``, ``max_norm``, ``optimizer``, ``init_style``, ``steps``,
    ``eval_every``, ``batch``, ``seed``); the character-stream args do not apply."""
    for name in ("hidden", "layers", "steps", "batch", "eval_every"):
        common.check_int(a, name)
    check_choice("init_style", a.init_style, ("uniform", "lecun"))
    entry = registry.get(a.task)
    args = dict(common.EXAMPLE_DEFAULTS)
    args.update(cell=a.cell, hidden=a.hidden, embed=a.hidden, layers=a.layers, steps=a.steps, batch=a.batch,
                lr=a.lr, max_norm=a.max_norm, optimizer=a.optimizer, eval_every=a.eval_every or 250, seed=a.seed)
    import ml_collections

    c = common.example_config(ml_collections.ConfigDict(args), a.task, {}, entry.model_kind)
    if a.init_style == "uniform":
        c.model.update(kernel_init="uniform", recurrent_init="uniform", init_scale=a.init,
                       embed_scale=a.init / math.sqrt(a.hidden), output_scale=a.init)
    else:
        c.model.update(kernel_init="lecun_normal", recurrent_init="orthogonal", init_scale=a.init,
                       embed_scale=1.0, output_scale=a.init)
    if entry.model_kind == "vqa":
        c.model.film = True   # the question conditions the CNN: without it no cell learns Sort-of-CLEVR's shapes
    if a.runlocal:
        c.train.update(log_every=5)
    return c
