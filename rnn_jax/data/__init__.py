"""Data: text corpora (characters, Penn Treebank words, prepared TFDS), generated tasks, LM batching."""

from rnn_jax.data.batches import (
                                  Lanes,
                                  Streams,
                                  eval_chunks,
                                  eval_positions,
                                  stream_weights,
                                  tbptt_batch,
                                  tbptt_steps_per_epoch,
                                  to_chunks,
                                  window_batch,
)
from rnn_jax.data.tasks import TASKS, TaskCorpus, task_corpus
from rnn_jax.data.text import Corpus, Vocab, char_corpus, load_corpus, ptb_corpus, read_utf8, tfds_corpus

__all__ = ["Corpus", "Lanes", "Streams", "TASKS", "TaskCorpus", "Vocab", "char_corpus", "eval_chunks",
           "eval_positions", "load_corpus", "ptb_corpus", "read_utf8", "stream_weights", "task_corpus",
           "tbptt_batch", "tbptt_steps_per_epoch", "tfds_corpus", "to_chunks", "window_batch"]
