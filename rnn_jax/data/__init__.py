"""Data: text corpora (characters, Penn Treebank words, prepared TFDS) and LM batching."""

from rnn_jax.data.batches import Streams, eval_chunks, tbptt_batch, tbptt_steps_per_epoch, window_batch
from rnn_jax.data.text import Corpus, Vocab, char_corpus, load_corpus, ptb_corpus, read_utf8, tfds_corpus

__all__ = ["Corpus", "Streams", "Vocab", "char_corpus", "eval_chunks", "load_corpus", "ptb_corpus",
           "read_utf8", "tbptt_batch", "tbptt_steps_per_epoch", "tfds_corpus", "window_batch"]
