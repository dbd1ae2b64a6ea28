"""Seq2seq analysis: decoded accuracy per source length, attention examples and the two figures."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from rnn_jax import decoding
from rnn_jax import seq2seq_analysis as sa
from rnn_jax.data.seq2seq_tasks import BOS_ID, EOS_ID, PAD_ID, decoded_metrics, make_task
from rnn_jax.errors import InputError
from rnn_jax.models.seq2seq import Seq2Seq

# 60 test examples in batches of 16: the last batch has 12 real rows and 4 padding rows
TASK = make_task("reverse", seed=1, min_len=2, max_len=6, num_symbols=4, valid_size=20, test_size=60)
BATCH_SIZE = 16
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass(frozen=True)
class ReverseOracle:
    """Emits the reversed source, except that for ``wrong_lengths`` its first token is the wrong
    symbol; its "attention" at step ``t`` is one-hot on source position ``n - 1 - t`` (uniform over
    the source at the EOS step)."""

    vocab_size: int
    wrong_lengths: tuple = ()
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def encode(self, params, src, src_lengths):
        mask = jnp.arange(src.shape[1])[None, :] < src_lengths[:, None]
        return {"src": src, "lengths": src_lengths, "mask": mask}

    def initial_state(self, params, memory):
        return jnp.zeros(memory["lengths"].shape, jnp.int32)

    def decode_step(self, params, t, token, memory):
        n, src = memory["lengths"], memory["src"]
        pos = n - 1 - t
        right = jnp.take_along_axis(src, jnp.clip(pos, 0)[:, None], axis=1)[:, 0]
        num_symbols = self.vocab_size - 3
        wrong = jnp.isin(n, jnp.asarray(self.wrong_lengths, jnp.int32)) & (t == 0)
        token = jnp.where(wrong, 3 + (right - 3 + 1) % num_symbols, right)
        token = jnp.where(pos < 0, self.eos_id, token)
        logits = params["scale"] * jax.nn.one_hot(token, self.vocab_size)
        uniform = memory["mask"] / memory["mask"].sum(1, keepdims=True)
        alpha = jnp.where((pos >= 0)[:, None], jax.nn.one_hot(jnp.clip(pos, 0), src.shape[1]), uniform)
        return logits, t + 1, alpha


ORACLE = ReverseOracle(len(TASK.vocab), wrong_lengths=(3, 5))
ORACLE_PARAMS = {"scale": jnp.float32(10.0)}


@pytest.fixture(scope="module")
def tiny():
    """An untrained Bahdanau model with random parameters: some accuracy by chance, and real attention."""
    model = Seq2Seq("gru", "gru", len(TASK.vocab), embed_size=8, encoder_size=12, decoder_size=12,
                    attention="bahdanau")
    rng = np.random.default_rng(3)  # numpy draws in the shapes of model.init: no compile
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return model, jax.tree.map(lambda s: rng.uniform(-0.6, 0.6, s.shape).astype(np.float32), shapes)


def _split_lengths(task, split="test"):
    size = task.valid_size if split == "valid" else task.test_size
    return [len(task.example(split, i)[0]) for i in range(size)]


# --------------------------------------------------------------------------------- accuracy


def test_known_answers_per_length_with_an_oracle_and_beam_search():
    curve = sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, batch_size=BATCH_SIZE)
    lengths = _split_lengths(TASK)
    assert list(curve) == sorted(set(lengths))
    assert sum(v["sequences"] for v in curve.values()) == TASK.test_size
    for n, v in curve.items():
        assert v["sequences"] == lengths.count(n) and v["target_tokens"] == (n + 1) * v["sequences"]
        if n in (3, 5):  # first token wrong, the rest (EOS included) right
            assert v["sequence_accuracy"] == 0.0 and v["token_accuracy"] == pytest.approx(n / (n + 1))
        else:
            assert v["sequence_accuracy"] == 1.0 and v["token_accuracy"] == 1.0
    beam = sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, batch_size=BATCH_SIZE, beam_size=2, alpha=0.6)
    assert beam == curve
    # longer inputs than the task's own: same symbols and seed, other lengths
    longer = sa.task_for_lengths(TASK, 7, 9, size=30)
    assert (longer.num_symbols, longer.seed, longer.min_len, longer.max_len) == (4, 1, 7, 9)
    assert longer.test_size == 30 and longer.tgt_len == 10
    far = sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, longer, batch_size=BATCH_SIZE)
    assert set(far) <= {7, 8, 9} and sum(v["sequences"] for v in far.values()) == 30
    assert all(v["sequence_accuracy"] == 1.0 for v in far.values())


def test_untrained_model_matches_a_per_example_loop_and_the_overall_metrics(tiny):
    model, params = tiny
    curve = sa.accuracy_by_length(model, params, TASK, batch_size=BATCH_SIZE)
    assert sum(v["sequences"] for v in curve.values()) == TASK.test_size
    # a slow loop: one example at a time, scored by hand
    slow, sums = {}, None
    for i in range(TASK.test_size):
        src, tgt = TASK.example("test", i)
        b = TASK.pack([(src, tgt)])
        out = decoding.greedy(model, params, b["src"], b["src_lengths"], max_len=TASK.tgt_len)
        part = decoded_metrics(out.tokens, b)
        sums = part if sums is None else {k: sums[k] + part[k] for k in part}
        pred = [int(t) for t in out.tokens[0]]
        want = [*tgt, EOS_ID]
        s = slow.setdefault(len(src), [0, 0, 0, 0])
        s[0] += 1
        s[1] += pred[:len(want)] == want
        s[2] += len(want)
        s[3] += sum(p == w for p, w in zip(pred, want))
    assert sorted(slow) == list(curve)
    for n, (count, exact, tokens, hits) in slow.items():
        assert curve[n]["sequences"] == count and curve[n]["target_tokens"] == tokens
        assert curve[n]["sequence_accuracy"] == pytest.approx(exact / count)
        assert curve[n]["token_accuracy"] == pytest.approx(hits / tokens)
    assert 0.0 < sum(h for *_, h in slow.values()) < sum(t for _, _, t, _ in slow.values())  # some, not all
    # weighted by the counts, the per-length numbers are the task's overall metrics
    overall = TASK.metrics(sums)
    seqs = sum(v["sequences"] for v in curve.values())
    toks = sum(v["target_tokens"] for v in curve.values())
    assert sum(v["sequence_accuracy"] * v["sequences"] for v in curve.values()) / seqs == pytest.approx(
        overall["sequence_accuracy"])
    assert sum(v["token_accuracy"] * v["target_tokens"] for v in curve.values()) / toks == pytest.approx(
        overall["token_accuracy"])


# --------------------------------------------------------------------------------- attention


def test_attention_examples_rows_are_distributions(tiny):
    model, params = tiny
    examples = sa.attention_examples(model, params, TASK, count=3)
    assert len(examples) == 3
    for i, e in enumerate(examples):
        src, tgt = TASK.example("test", i)
        assert e["source"] == [TASK.vocab.tokens[t] for t in src]
        assert e["target"] == [*TASK.decode([*tgt, EOS_ID]), "<eos>"]
        assert e["attention"].shape == (len(e["output"]), len(src))
        np.testing.assert_allclose(e["attention"].sum(1), 1.0, rtol=1e-5)
        assert e["correct"] == (e["output"] == e["target"])
    # one example per requested length, in the requested order; the oracle's answers are known
    examples = sa.attention_examples(ORACLE, ORACLE_PARAMS, TASK, lengths=[6, 3, 4])
    assert [len(e["source"]) for e in examples] == [6, 3, 4]
    assert [e["correct"] for e in examples] == [True, False, True]
    first = examples[0]
    assert first["output"] == [*first["source"][::-1], "<eos>"]
    np.testing.assert_array_equal(first["attention"][:6], np.eye(6)[::-1])  # the anti-diagonal
    np.testing.assert_allclose(first["attention"].sum(1), 1.0)


# ----------------------------------------------------------------------------------- figures


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 200
    assert image.std() > 0.01  # not a blank canvas
    assert [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".tmp")] == []
    plain = os.path.join(os.path.dirname(path), "plain")
    open(plain, "wb").close()  # the mode the umask gives (not a private temporary file's 0600)
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    os.unlink(plain)
    return image


def test_figures_are_written_as_png(tmp_path):
    curve = sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, batch_size=BATCH_SIZE)
    flat = {n: dict(v, sequence_accuracy=0.5) for n, v in curve.items()}
    path = sa.plot_accuracy_vs_length({"oracle": curve, "half": flat}, tmp_path / "new" / "acc.png",
                                      title="reverse", train_range=(2, 4))
    assert path == str(tmp_path / "new" / "acc.png")
    image = _check_png(path)
    assert image.shape[1] > image.shape[0]  # landscape
    sa.plot_accuracy_vs_length({"oracle": curve}, path, metric="token_accuracy")  # overwrites in place
    _check_png(path)
    examples = sa.attention_examples(ORACLE, ORACLE_PARAMS, TASK, lengths=[3, 4, 6])
    path = sa.plot_attention(examples, tmp_path / "maps" / "attention.png", columns=2, title="oracle")
    _check_png(path)


def test_bad_input(tiny):
    model, params = tiny
    with pytest.raises(InputError, match="split"):
        sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, split="train")
    with pytest.raises(InputError, match="beam_size"):
        sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, beam_size=-1)
    with pytest.raises(InputError, match="alpha"):
        sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, beam_size=2, alpha=-0.5)
    with pytest.raises(InputError, match="batch_size"):
        sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, TASK, batch_size=0)
    with pytest.raises(InputError, match="vocab_size=5"):
        sa.accuracy_by_length(dataclasses.replace(model, vocab_size=5), params, TASK)
    with pytest.raises(InputError, match="task must be a Seq2SeqTask"):
        sa.accuracy_by_length(ORACLE, ORACLE_PARAMS, "reverse")
    with pytest.raises(InputError, match="min_len=9 > max_len=7"):
        sa.task_for_lengths(TASK, 9, 7)
    none = dataclasses.replace(model, attention="none")
    with pytest.raises(InputError, match='attention="none".*no attention maps'):
        sa.attention_examples(none, params, TASK)
    with pytest.raises(InputError, match="source length 9; the test split has lengths 3, 4, 5, 6"):
        sa.attention_examples(ORACLE, ORACLE_PARAMS, TASK, lengths=[3, 9])
    with pytest.raises(InputError, match="count"):
        sa.attention_examples(ORACLE, ORACLE_PARAMS, TASK, count=0)
    curve = {3: {"sequences": 1, "sequence_accuracy": 1.0, "token_accuracy": 1.0}}
    with pytest.raises(InputError, match="non-empty mapping"):
        sa.plot_accuracy_vs_length({}, "/nonexistent/x.png")
    with pytest.raises(InputError, match="metric must be one of sequence_accuracy, token_accuracy; got 'loss'"):
        sa.plot_accuracy_vs_length({"a": curve}, "/nonexistent/x.png", metric="loss")
    with pytest.raises(InputError, match="curve 'a'"):
        sa.plot_accuracy_vs_length({"a": {}}, "/nonexistent/x.png")
    with pytest.raises(InputError, match=r"not in \[0, 1\]"):
        sa.plot_accuracy_vs_length({"a": {3: {"sequence_accuracy": 7.0}}}, "/nonexistent/x.png")
    with pytest.raises(InputError, match="train_range"):
        sa.plot_accuracy_vs_length({"a": curve}, "/nonexistent/x.png", train_range=(5, 2))
    good = {"source": ["a", "b"], "output": ["b", "<eos>"], "attention": np.eye(2), "correct": True}
    with pytest.raises(InputError, match="non-empty list"):
        sa.plot_attention([], "/nonexistent/x.png")
    with pytest.raises(InputError, match='all zeros; a model with attention="none"'):
        sa.plot_attention([good, dict(good, attention=np.zeros((2, 2)))], "/nonexistent/x.png")
    with pytest.raises(InputError, match=r"example 0: attention has shape \(3, 2\)"):
        sa.plot_attention([dict(good, attention=np.ones((3, 2)))], "/nonexistent/x.png")
    with pytest.raises(InputError, match="columns"):
        sa.plot_attention([good], "/nonexistent/x.png", columns=0)
