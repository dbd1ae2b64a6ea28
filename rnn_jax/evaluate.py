"""Evaluation: the whole validation or test split through the model, with the carry passed on.

:class:`Evaluator` scores a split as one jitted scan over chunks: streams of tokens (the carry passed
from chunk to chunk), or under the per-piece music protocol (:func:`pieces_protocol`) whole pieces in
lanes, each from the zero state. Generated tasks add their accuracies.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rnn_jax import data as data_lib
from rnn_jax import lm as lm_lib
from rnn_jax import piano as piano_lib


def pieces_protocol(config) -> bool:
    """Whether the run treats its sequences as independent pieces (music's default protocol): the
    carry is reset at every piece start in training and evaluation, and no target crosses from one
    piece to the next; ``data.protocol = "stream"`` concatenates them into one stream instead."""
    return config.data.kind == "music" and config.data.get("protocol", "pieces") == "pieces"


def nll_fn(model):
    """Summed NLL and its count: softmax over tokens, or Bernoulli over notes per time step (music)."""
    return piano_lib.bernoulli_nll if isinstance(model, piano_lib.PianoRollModel) else lm_lib.cross_entropy


def make_eval_fn(model: lm_lib.LanguageModel, with_correct: bool = False):
    """jit ``(params, inputs[C,B,L], targets, weights, resets=None) -> (nll_sum, count)`` over the
    whole stream, the carry passed from chunk to chunk (and zeroed where ``resets[C,B,L]`` is true).

    With ``with_correct``, also ``correct[C,B,L]``: whether the most likely next token is the target.
    """

    nll = nll_fn(model)

    @jax.jit
    def evaluate(params, inputs, targets, weights, resets=None):
        def body(carry_and_sums, chunk):
            carry, total, count = carry_and_sums
            x, y, w, r = chunk
            logits, carry = model.apply(params, carry, x, resets=r)
            t, c = nll(logits, y, w)
            correct = jnp.argmax(logits, axis=-1) == y if with_correct else None
            return (carry, total + t, count + c), correct

        init = (model.zero_carry(inputs.shape[1]), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (_, total, count), correct = jax.lax.scan(body, init, (inputs, targets, weights, resets))
        return (total, count, correct) if with_correct else (total, count)

    return evaluate


def task_loss_mask(config, corpus) -> dict:
    """``{split: 0/1 mask}`` of a task's scored positions, which weight the loss (unless
    ``data.loss_on = "all"``); empty for other data."""
    if isinstance(corpus, data_lib.TaskCorpus) and config.data.get("loss_on", "scored") == "scored":
        return {split: corpus.mask(split, "scored") for split in ("train", "valid", "test")}
    return {}


class Evaluator:
    """``evaluator(params, split)``: ``{"loss": ...}`` on the whole valid or test split, plus a
    task's accuracies. With ``trials=True`` the parameters have a leading trial axis (vmapped
    trials) and a list of such dicts comes back, one per trial. ``place`` (a ``train.Placement``)
    splits the evaluation batch over the devices of a data-parallel run."""

    def __init__(self, model, config, corpus, loss_mask: dict, place=None, trials: bool = False):
        t = config.train
        self.corpus, self.trials = corpus, trials
        self.is_task = isinstance(corpus, data_lib.TaskCorpus)
        evaluate = make_eval_fn(model, with_correct=self.is_task)
        self._evaluate = (jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None, None))) if trials
                          else evaluate)
        self.data, self.positions = {}, {}
        for split, size in (("valid", t.eval_batch_size), ("test", t.test_batch_size or t.eval_batch_size)):
            tokens = corpus.split(split)
            if pieces_protocol(config):  # each piece whole in one lane, from the zero state
                lanes = data_lib.Lanes.from_pieces(tokens, corpus.starts[split], size)
                x, y, w, r = (data_lib.to_chunks(a, t.seq_len) for a in (
                    lanes.inputs_BxS, lanes.targets_BxS, lanes.weights_BxS, lanes.resets_BxS))
            else:
                (x, y, w), r = data_lib.eval_chunks(tokens, size, t.seq_len), None
            if self.is_task:
                self.positions[split] = data_lib.eval_positions(len(tokens), size, t.seq_len)
                if loss_mask:
                    w = w * loss_mask[split][np.maximum(self.positions[split], 0)]
            data = tuple(None if a is None else jnp.asarray(a) for a in (x, y, w, r))  # on the device once
            self.data[split] = place.split_batch(data, axis=1) if place is not None else data

    def __call__(self, params, split: str):
        out = self._evaluate(params, *self.data[split])
        if not self.trials:
            return self._metrics(out, split)
        out = jax.device_get(out)
        return [self._metrics([a[i] for a in out], split) for i in range(len(out[0]))]

    def _metrics(self, out, split: str) -> dict:
        if not self.is_task:
            total, count = out
            return {"loss": float(total) / float(count)}
        total, count, correct = out
        pos = self.positions[split]
        keep = pos >= 0
        metrics = {"loss": float(total) / max(float(count), 1.0)}
        metrics.update(data_lib.tasks.accuracies(self.corpus.task, np.asarray(correct)[keep], pos[keep],
                                                 self.corpus.marks[split]))
        return metrics
