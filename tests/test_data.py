"""Text corpora and LM batching."""

import os

import numpy as np
import pytest

from rnn_jax import data


def _write(tmp_path, name, content, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_char_corpus_splits_by_position_and_round_trips(tmp_path):
    text = "".join(chr(ord("a") + i % 7) for i in range(1000)) + "é\n"
    corpus = data.char_corpus(_write(tmp_path, "t.txt", text), (0.8, 0.1, 0.1))
    assert corpus.vocab.symbols == tuple(sorted(set(text)))
    assert len(corpus.train) == 802 and len(corpus.valid) == 100 and len(corpus.test) == 100
    joined = np.concatenate([corpus.train, corpus.valid, corpus.test])
    assert corpus.vocab.decode(joined) == text
    assert corpus.train.dtype == np.int32


def test_char_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        data.char_corpus(_write(tmp_path, "e.txt", ""))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.char_corpus(str(tmp_path / "missing.txt"))
    bad = _write(tmp_path, "b.txt", b"abc\nde\xff\xfefg", mode="wb")
    with pytest.raises(ValueError, match=r"not valid UTF-8 at byte 6 \(line 2, column 3\)"):
        data.char_corpus(bad)
    with pytest.raises(ValueError, match="summing to 1"):
        data.char_corpus(_write(tmp_path, "s.txt", "abcdef"), (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="non-zero train and valid"):
        data.char_corpus(_write(tmp_path, "s.txt", "abcdef"), (1.0, 0.0, 0.0))


def test_vocab_save_load_and_check(tmp_path):
    vocab = data.Vocab(("a", "b", "c"), "char")
    path = str(tmp_path / "vocab.json")
    vocab.save(path)
    assert data.Vocab.load(path) == vocab
    vocab.check_same(data.Vocab(("a", "b", "c"), "char"), "here")
    with pytest.raises(ValueError, match=r"new: \['d'\]"):
        vocab.check_same(data.Vocab(("a", "b", "c", "d"), "char"), "resuming")
    with pytest.raises(ValueError, match="different order"):
        vocab.check_same(data.Vocab(("b", "a", "c"), "char"), "resuming")
    with pytest.raises(ValueError, match="not in the vocabulary: 'z'"):
        vocab.encode("abz")


def _ptb(tmp_path, train="a b <unk> c\nb a\n", valid="a b\nc\n", test="b new\n"):
    d = tmp_path / "ptb"
    d.mkdir(exist_ok=True)
    for name, text in (("train", train), ("valid", valid), ("test", test)):
        (d / f"ptb.{name}.txt").write_text(text, encoding="utf-8")
    return str(d)


def test_ptb_corpus(tmp_path):
    corpus = data.ptb_corpus(_ptb(tmp_path))
    v = corpus.vocab
    assert v.level == "word"
    # frequency order (a:2, b:2, <eos>:2, <unk>:1, c:1), ties alphabetical
    assert v.symbols == ("<eos>", "a", "b", "<unk>", "c")
    assert v.decode(corpus.train) == "a b <unk> c <eos> b a <eos>"
    assert v.decode(corpus.valid) == "a b <eos> c <eos>"
    assert v.decode(corpus.test) == "b <unk> <eos>"  # unknown word -> <unk>


def test_ptb_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.ptb_corpus(str(tmp_path / "nope"))
    d = _ptb(tmp_path)
    os.remove(os.path.join(d, "ptb.test.txt"))
    with pytest.raises(FileNotFoundError, match="lacks ptb.test.txt"):
        data.ptb_corpus(d)
    with pytest.raises(ValueError, match="has no '<unk>'"):
        data.ptb_corpus(_ptb(tmp_path, train="a b\n", test="zzz\n"))
    with pytest.raises(ValueError, match="empty"):
        data.ptb_corpus(_ptb(tmp_path, valid="\n\n"))


def test_streams_are_contiguous_and_chunks_follow_each_other():
    tokens = np.arange(103, dtype=np.int32)
    streams = data.Streams.from_tokens(tokens, 4)  # S = 25
    assert streams.inputs_BxS.shape == (4, 25)
    np.testing.assert_array_equal(streams.inputs_BxS[1], np.arange(25, 50))
    np.testing.assert_array_equal(streams.targets_BxS, streams.inputs_BxS + 1)
    assert data.tbptt_steps_per_epoch(103, 4, 5) == 5
    seen = []
    for step in range(6):
        x, y, new_epoch = data.tbptt_batch(streams, step, 5)
        assert new_epoch == (step % 5 == 0)
        seen.append(x)
    np.testing.assert_array_equal(np.concatenate(seen[:5], axis=1), streams.inputs_BxS)
    np.testing.assert_array_equal(seen[5], seen[0])  # the next epoch starts over


def test_eval_chunks_cover_the_stream_once():
    tokens = np.arange(1, 44, dtype=np.int32)  # 43 tokens, 3 streams of 14
    x, y, w = data.eval_chunks(tokens, 3, 5)
    assert x.shape == (3, 3, 5)
    assert w.sum() == 42
    used = np.sort(x[w > 0])
    np.testing.assert_array_equal(used, np.arange(1, 43))
    np.testing.assert_array_equal(y[w > 0], x[w > 0] + 1)


def test_windows_depend_only_on_seed_and_step():
    tokens = np.arange(500, dtype=np.int32)
    a = data.window_batch(tokens, 3, 7, 4, 10)
    b = data.window_batch(tokens, 3, 7, 4, 10)
    c = data.window_batch(tokens, 3, 8, 4, 10)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], a[0] + 1)


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    from tests import tiny_tfds
    tiny_tfds.build(tfds, str(tmp_path))
    corpus = data.tfds_corpus("tiny_text", data_dir=str(tmp_path))
    assert corpus.vocab.decode(corpus.train) == tiny_tfds.TEXTS["train"]
    assert corpus.vocab.decode(corpus.valid) == tiny_tfds.TEXTS["validation"]


def test_tfds_missing_dataset_is_a_clear_error(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError, match="not prepared"):
        data.tfds_corpus("no_such_dataset_here", data_dir=str(tmp_path))
