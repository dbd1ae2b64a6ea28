"""Random hyperparameter search as in Jozefowicz, Zaremba & Sutskever (2015).

For each (cell, task) the search draws ``N`` settings from the paper's grid
(:data:`rnn_jax.jozefowicz.PAPER_SPACE`); the draw depends only on the seed, so every cell is
trained with the same ``N`` settings. The hidden size is not drawn: it is the largest that keeps
the model within a parameter budget, so cells with more gates get fewer units and every cell gets
the same number of parameters.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from rnn_jax import cells as cells_lib
from rnn_jax import lm as lm_lib
from rnn_jax.jozefowicz import PAPER_SPACE  # the paper's grid (SGD); importable from here too

# Adam takes learning rates about three orders of magnitude smaller than SGD's.
ADAM_LEARNING_RATES = (3e-4, 1e-3, 2e-3, 3e-3, 5e-3, 1e-2)


def search_space(optimizer: str = "sgd", max_layers: int = 4) -> dict:
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    if not isinstance(max_layers, int) or not 1 <= max_layers <= 4:
        raise ValueError(f"max_layers must be an integer in 1..4, got {max_layers!r}")
    space = dict(PAPER_SPACE)
    space["num_layers"] = tuple(n for n in PAPER_SPACE["num_layers"] if n <= max_layers)
    if optimizer == "adam":
        space["learning_rate"] = ADAM_LEARNING_RATES
    return space


def sample_settings(seed: int, n: int, space: dict) -> list:
    """``n`` distinct settings drawn uniformly from the grid ``space``; a function of ``seed`` only.

    Without replacement, so N settings are N different runs (``n`` larger than the grid raises).

    >>> sample_settings(0, 2, {"a": (1, 2), "b": (0.5,)})
    [{'a': 1, 'b': 0.5}, {'a': 2, 'b': 0.5}]
    """
    keys = sorted(space)
    sizes = [len(space[k]) for k in keys]
    total = int(np.prod(sizes))
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= total:
        raise ValueError(f"the number of settings must be an integer in 1..{total} (the grid's size), got {n!r}")
    rng = np.random.default_rng(seed)
    out = []
    for flat in rng.choice(total, size=n, replace=False):
        idx = np.unravel_index(int(flat), sizes)
        out.append({k: space[k][int(i)] for k, i in zip(keys, idx)})
    return out


@functools.lru_cache(maxsize=4096)
def count_params(cell_spec: str, hidden: int, num_layers: int, vocab_size: int) -> int:
    """Parameters of the task language model (embedding to ``hidden``, cells, softmax), no compile."""
    cell = cells_lib.from_spec(cell_spec)
    model = lm_lib.LanguageModel(cell, vocab_size, hidden, hidden, num_layers)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes)))


def hidden_for_budget(cell_spec: str, num_layers: int, vocab_size: int, budget: int,
                      minimum: int = 4, maximum: int = 4096) -> int:
    """The largest hidden size (embedding = hidden) whose model has at most ``budget`` parameters."""
    if count_params(cell_spec, minimum, num_layers, vocab_size) > budget:
        raise ValueError(f"a parameter budget of {budget} is too small for {cell_spec!r} with "
                         f"{num_layers} layer(s) (hidden {minimum} already needs "
                         f"{count_params(cell_spec, minimum, num_layers, vocab_size)})")
    lo, hi = minimum, maximum
    while lo < hi:  # largest h with count(h) <= budget; count grows with h
        mid = (lo + hi + 1) // 2
        if count_params(cell_spec, mid, num_layers, vocab_size) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo
