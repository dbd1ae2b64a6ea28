"""Encoder-decoder: the model's masks and attention, decoding (greedy, sampling, beam search), the
generated tasks and their decoded metrics, and a tiny end-to-end training run."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import decoding
from rnn_jax.data import seq2seq_tasks
from rnn_jax.data.seq2seq_tasks import BOS_ID, EOS_ID, PAD_ID, decoded_metrics, make_task
from rnn_jax.errors import InputError
from rnn_jax.models.seq2seq import Seq2Seq
from tests.train_helpers import adam_train

TASK = make_task("reverse", min_len=3, max_len=5, num_symbols=5, valid_size=100, test_size=50)


def _model(attention, **kw):
    # encoder and decoder differ in cell and size; the learned bridge maps one carry to the other
    sizes = {"embed_size": 16, "encoder_size": 24, "decoder_size": 32, **kw}
    return Seq2Seq("lstm", "gru", len(TASK.vocab), attention=attention, **sizes)


BATCH_SIZE = 25  # the training test's evaluation batches have this size too (one greedy compile)


@pytest.fixture(scope="module")
def batch():
    return TASK.train_batch(seed=0, step=0, batch_size=BATCH_SIZE)


# ---------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_shapes_attention_masks_padding_and_greedy_consistency(attention, batch):
    model = _model(attention, attention_size=3 if attention == "bahdanau" else 0)
    params = model.init(jax.random.PRNGKey(1))
    B, S = batch["src"].shape
    T, V = TASK.tgt_len, len(TASK.vocab)

    @jax.jit
    def forced(params, batch):  # one scan for the loss and the outputs (model.loss is this composition)
        logits, alpha = model.teacher_forced(params, batch)
        return *model.loss_from_logits(logits, batch), logits, alpha

    loss, sums, logits, alpha = forced(params, batch)
    assert logits.shape == (B, T, V) and alpha.shape == (B, T, S)
    assert loss.shape == () and np.isfinite(float(loss))
    assert float(sums["nll_tokens"]) == batch["tgt_lengths"].sum()

    # attention: a distribution over the valid source positions, 0 on the padding
    src_mask = np.arange(S)[None, :] < batch["src_lengths"][:, None]
    alpha = np.asarray(alpha)
    np.testing.assert_allclose(alpha.sum(-1), 1.0, rtol=1e-5)
    assert np.all(alpha[np.broadcast_to(~src_mask[:, None, :], alpha.shape)] == 0.0)
    assert np.all(alpha[np.broadcast_to(src_mask[:, None, :], alpha.shape)] > 0.0)

    # padding beyond src_lengths (other tokens; for one model more of it) does not change the loss
    extra = 3 if attention == "bahdanau" else 0  # a second shape costs a compile
    wide = dict(batch, src=np.concatenate([batch["src"], np.zeros((B, extra), np.int32)], axis=1))
    noise = np.random.default_rng(0).integers(3, V, size=wide["src"].shape).astype(np.int32)
    wide["src"] = np.where(np.arange(S + extra)[None, :] < batch["src_lengths"][:, None], wide["src"], noise)
    assert np.any(wide["src"] != np.pad(batch["src"], ((0, 0), (0, extra))))
    loss_wide = forced(params, wide)[0]
    np.testing.assert_allclose(float(loss_wide), float(loss), rtol=1e-5)

    # greedy decoding = argmax of the teacher-forced logits when fed its own output
    out = decoding.greedy(model, params, batch["src"], batch["src_lengths"], max_len=T)
    assert out.tokens.shape == (B, T) and out.attention.shape == (B, T, S) and out.lengths.shape == (B,)
    tokens = np.asarray(out.tokens)
    fed = dict(batch, tgt_in=np.concatenate([np.full((B, 1), BOS_ID), tokens[:, :-1]], axis=1).astype(np.int32))
    _, _, logits_fed, alpha_fed = forced(params, fed)
    banned = np.isin(np.arange(V), [PAD_ID, BOS_ID])
    argmax = np.argmax(np.where(banned, -np.inf, np.asarray(logits_fed)), axis=-1)
    logp = np.asarray(jax.nn.log_softmax(jnp.where(banned, -jnp.inf, logits_fed)))
    for b in range(B):
        n = int(out.lengths[b])
        np.testing.assert_array_equal(tokens[b, :n], argmax[b, :n])
        assert np.all(tokens[b, n:] == PAD_ID)
        np.testing.assert_allclose(np.asarray(out.attention[b, :n]), np.asarray(alpha_fed[b, :n]), atol=1e-5)
        assert not np.asarray(out.attention[b, n:]).any()
        np.testing.assert_allclose(float(out.log_probs[b]), logp[b, np.arange(n), tokens[b, :n]].sum(), rtol=1e-4)


def test_no_attention_bidirectional_zero_bridge_and_beam_one_is_greedy(batch):
    model = Seq2Seq("gru", "lstm:forget_bias=1.0", len(TASK.vocab), embed_size=6, encoder_size=4, decoder_size=6,
                    attention="none", bridge="zero", bidirectional_encoder=True, dropout=0.3)
    params = model.init(jax.random.PRNGKey(2))
    assert params["encoder"]["fw"]["W_hh"].shape == (4, 4) and params["decoder"]["W_xi"].shape == (6, 6)
    assert "bridge" not in params and "attention" not in params
    memory = jax.eval_shape(model.encode, params, batch["src"], batch["src_lengths"])
    assert memory["values"].shape == batch["src"].shape + (8,)
    assert not np.asarray(jax.tree.leaves(model.initial_state(params, memory))[0]).any()
    # greedy = argmax of the teacher-forced logits fed its own output
    out = decoding.greedy(model, params, batch["src"], batch["src_lengths"], max_len=TASK.tgt_len)
    B = batch["src"].shape[0]
    fed = dict(batch, tgt_in=np.concatenate([np.full((B, 1), BOS_ID), out.tokens[:, :-1]], axis=1).astype(np.int32))
    logits, alpha = jax.jit(model.teacher_forced)(params, fed)
    assert not np.asarray(alpha).any() and not np.asarray(out.attention).any()
    argmax = np.argmax(np.where(np.isin(np.arange(logits.shape[-1]), [PAD_ID, BOS_ID]), -np.inf, logits), -1)
    for b in range(B):
        n = int(out.lengths[b])
        np.testing.assert_array_equal(out.tokens[b, :n], argmax[b, :n])
    # dropout acts only with a key (decoding and the call above had none), a new mask per key
    plain = float(model.loss_from_logits(logits, fed)[0])
    dropped = [float(jax.jit(model.loss)(params, fed, jax.random.PRNGKey(k))[0]) for k in (0, 1)]
    assert np.isfinite(dropped).all() and len({plain, *dropped}) == 3
    T = TASK.tgt_len
    greedy = out
    beams = decoding.beam_search(model, params, batch["src"], batch["src_lengths"], beam_size=1, max_len=T,
                                 alpha=0.6)
    assert beams.tokens.shape == (B, 1, T) and beams.scores.shape == (B, 1)
    np.testing.assert_array_equal(beams.tokens[:, 0], greedy.tokens)
    np.testing.assert_array_equal(beams.lengths[:, 0], greedy.lengths)
    np.testing.assert_allclose(beams.log_probs[:, 0], greedy.log_probs, rtol=1e-5)


def test_bad_model_and_decoding_options(batch):
    for kwargs in (dict(attention="dot"), dict(bridge="copy"), dict(encoder_size=0), dict(dropout=1.0),
                   dict(eos_id=0), dict(impl="fast")):
        with pytest.raises(InputError):
            _model(**{"attention": "none", **kwargs})
    with pytest.raises(InputError, match="unknown cell"):
        Seq2Seq("lstn", "gru", 8)
    model = _model("none")
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    src, lengths = batch["src"], batch["src_lengths"]
    with pytest.raises(InputError, match="max_len"):
        decoding.greedy(model, params, src, lengths, max_len=0)
    with pytest.raises(InputError, match="beam_size"):
        decoding.beam_search(model, params, src, lengths, beam_size=0, max_len=3)
    with pytest.raises(InputError, match="alpha"):
        decoding.beam_search(model, params, src, lengths, beam_size=2, max_len=3, alpha=-1.0)
    with pytest.raises(InputError, match="temperature"):
        decoding.sample(model, params, src, lengths, jax.random.PRNGKey(0), max_len=3, temperature=0.0)
    with pytest.raises(InputError, match="src"):
        decoding.greedy(model, params, src[0], lengths, max_len=3)


# ------------------------------------------------------------------------- decoding, toy models

A, B_ = 3, 4  # the toy models' symbols


@dataclasses.dataclass(frozen=True)
class MarkovToy:
    """A decoder whose next-token distribution depends only on the last token: ``params["logp"][y]``."""

    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def encode(self, params, src, src_lengths):
        return {"mask": jnp.arange(src.shape[1])[None, :] < src_lengths[:, None]}

    def initial_state(self, params, memory):
        return jnp.zeros(memory["mask"].shape[:1])

    def decode_step(self, params, state, token, memory):
        return params["logp"][token], state + 1, memory["mask"] / memory["mask"].sum(1, keepdims=True)


def _chain(rows):
    """``[5, 5]`` log-probabilities from ``{token: {next: prob}}`` (unlisted: ~0)."""
    table = np.full((5, 5), 1e-12)
    for token, nxt in rows.items():
        for k, p in nxt.items():
            table[token, k] = p
    return {"logp": jnp.asarray(np.log(table / table.sum(1, keepdims=True)), jnp.float32)}


# Greedy takes A (0.6) and then never gets a likely EOS; the best sequence is B EOS (0.4 · 0.9).
TRAP = _chain({BOS_ID: {A: 0.6, B_: 0.4}, A: {A: 0.36, B_: 0.34, EOS_ID: 0.30},
               B_: {EOS_ID: 0.9, A: 0.1}, EOS_ID: {EOS_ID: 1.0}, PAD_ID: {EOS_ID: 1.0}})
SRC = np.ones((64, 3), np.int32)  # one batch shape and max_len for every toy call: fewer compiles
SRC_LEN = np.where(np.arange(64) % 2 == 0, 3, 1).astype(np.int32)
MAX_LEN = 6


def _brute_force_best(params, max_len):
    logp = np.asarray(params["logp"])
    best, best_seq = -np.inf, None
    for n in range(1, max_len + 1):
        for body in itertools.product([A, B_], repeat=n - 1):
            seq = (*body, EOS_ID)
            score = sum(logp[prev, tok] for prev, tok in zip((BOS_ID, *seq[:-1]), seq))
            if score > best:
                best, best_seq = score, seq
    return best, best_seq


def test_beam_search_finds_the_best_sequence_greedy_misses():
    toy = MarkovToy()
    greedy = decoding.greedy(toy, TRAP, SRC, SRC_LEN, max_len=MAX_LEN)
    np.testing.assert_array_equal(greedy.tokens[0], [A] * MAX_LEN)  # no EOS within max_len
    assert int(greedy.lengths[0]) == MAX_LEN
    np.testing.assert_allclose(greedy.attention[1, :, 0], 1.0)  # the toy's "attention" rows pass through
    best, best_seq = _brute_force_best(TRAP, MAX_LEN)
    assert best_seq == (B_, EOS_ID)
    beams = decoding.beam_search(toy, TRAP, SRC, SRC_LEN, beam_size=2, max_len=MAX_LEN, alpha=0.0)
    assert beams.tokens.shape == (64, 2, MAX_LEN)
    np.testing.assert_array_equal(beams.tokens[:, 0, :2], np.tile(best_seq, (64, 1)))
    assert np.all(beams.tokens[:, 0, 2:] == PAD_ID) and np.all(beams.lengths[:, 0] == 2)
    np.testing.assert_allclose(beams.log_probs[:, 0], best, rtol=1e-5)
    assert np.all(beams.log_probs[:, 0] >= greedy.log_probs - 1e-6)
    assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)  # best first
    # the GNMT penalty: score = log p / ((5 + n) / 6) ** alpha
    beams = decoding.beam_search(toy, TRAP, SRC, SRC_LEN, beam_size=2, max_len=MAX_LEN, alpha=1.0)
    np.testing.assert_allclose(beams.scores, beams.log_probs / ((5.0 + np.asarray(beams.lengths)) / 6.0), rtol=1e-5)


def test_eos_stops_every_decoder_and_sampling():
    toy = MarkovToy()
    sure = _chain({BOS_ID: {A: 1.0}, A: {B_: 1.0}, B_: {EOS_ID: 1.0}, EOS_ID: {A: 1.0}, PAD_ID: {A: 1.0}})
    expect = np.tile([A, B_, EOS_ID, PAD_ID, PAD_ID, PAD_ID], (64, 1))
    greedy = decoding.greedy(toy, sure, SRC, SRC_LEN, max_len=MAX_LEN)
    np.testing.assert_array_equal(greedy.tokens, expect)
    assert np.all(greedy.lengths == 3) and not np.asarray(greedy.attention[:, 3:]).any()
    drawn = decoding.sample(toy, sure, SRC, SRC_LEN, jax.random.PRNGKey(0), max_len=MAX_LEN)
    np.testing.assert_array_equal(drawn.tokens, expect)
    beams = decoding.beam_search(toy, sure, SRC, SRC_LEN, beam_size=2, max_len=MAX_LEN, alpha=0.6)
    np.testing.assert_array_equal(beams.tokens[:, 0], expect)
    # sampling: a pure function of the key; near zero temperature it is greedy
    one = decoding.sample(toy, TRAP, SRC, SRC_LEN, jax.random.PRNGKey(1), max_len=MAX_LEN)
    again = decoding.sample(toy, TRAP, SRC, SRC_LEN, jax.random.PRNGKey(1), max_len=MAX_LEN)
    np.testing.assert_array_equal(one.tokens, again.tokens)
    assert 10 < int((one.tokens[:, 0] == B_).sum()) < 45  # P(B first) = 0.4
    for row, n in zip(np.asarray(one.tokens), np.asarray(one.lengths)):
        assert (row[n - 1] == EOS_ID or n == MAX_LEN) and np.all(row[n:] == PAD_ID) and EOS_ID not in row[:n - 1]
    cold = decoding.sample(toy, TRAP, SRC, SRC_LEN, jax.random.PRNGKey(2), max_len=MAX_LEN, temperature=1e-3)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens * 0 + A)


# ---------------------------------------------------------------------------------------- tasks


def _expected(task, src: str) -> str:
    if task.name == "reverse":
        return src[::-1]
    if task.name == "sort":
        return "".join(sorted(src))
    a, b = src.split("+")
    assert a == str(int(a)) and b == str(int(b))  # no leading zeros
    assert task.min_len <= len(a) <= task.max_len and task.min_len <= len(b) <= task.max_len
    return str(int(a) + int(b))


TASKS = [make_task("reverse", seed=3, min_len=2, max_len=6, num_symbols=4, valid_size=30, test_size=20),
         make_task("sort", min_len=4, max_len=7, num_symbols=26, valid_size=30, test_size=20),
         make_task("addition", min_len=1, max_len=3, valid_size=30, test_size=20)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_task_targets_determinism_and_disjoint_splits(task):
    batches = {"train": [task.train_batch(7, step, 16) for step in range(8)],
               "valid": task.eval_batches("valid", 8), "test": task.eval_batches("test", 8)}
    sources = {}
    for split, group in batches.items():
        sources[split] = set()
        for b in group:
            S, T = task.src_len, task.tgt_len
            assert b["src"].shape[1] == S and b["tgt_in"].shape[1] == T and b["tgt_out"].shape[1] == T
            assert b["src"].dtype == np.int32 and b["weight"].dtype == np.float32
            for row in np.flatnonzero(b["weight"]):
                n_src, n_tgt = int(b["src_lengths"][row]), int(b["tgt_lengths"][row])
                src, tgt = task.decode(b["src"][row]), task.decode(b["tgt_out"][row])
                assert len(src) == n_src and np.all(b["src"][row, n_src:] == PAD_ID)
                if task.name != "addition":
                    assert task.min_len <= n_src <= task.max_len
                    assert set(src) <= set("abcdefghijklmnopqrstuvwxyz"[:task.num_symbols])
                assert tgt == _expected(task, src) and n_tgt == len(tgt) + 1
                assert b["tgt_out"][row, n_tgt - 1] == EOS_ID and b["tgt_in"][row, 0] == BOS_ID
                np.testing.assert_array_equal(b["tgt_in"][row, 1:n_tgt], b["tgt_out"][row, :n_tgt - 1])
                assert np.all(b["tgt_out"][row, n_tgt:] == PAD_ID) and np.all(b["tgt_in"][row, n_tgt:] == PAD_ID)
                sources[split].add(src)
                assert task.split_of(task.vocab.encode(src)) == split
    assert not sources["train"] & sources["valid"] and not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    # each evaluation split exactly once, padded to full batches with weight 0
    for split, size in (("valid", task.valid_size), ("test", task.test_size)):
        group = batches[split]
        assert len(group) == -(-size // 8) and all(b["src"].shape[0] == 8 for b in group)
        weights = np.concatenate([b["weight"] for b in group])
        np.testing.assert_array_equal(weights, np.arange(len(weights)) < size)
        examples = [task.example(split, i) for i in range(size)]
        packed = task.pack(examples)
        np.testing.assert_array_equal(np.concatenate([b["src"] for b in group])[:size], packed["src"])
    # pure functions of their arguments
    again = task.train_batch(7, 3, 16)
    for key in again:
        np.testing.assert_array_equal(again[key], batches["train"][3][key])
    assert not np.array_equal(task.train_batch(8, 3, 16)["src"], again["src"])
    fresh = dataclasses.replace(task)  # a new object: not served from the cache
    seq2seq_tasks._eval_examples.cache_clear()
    np.testing.assert_array_equal(fresh.eval_batches("valid", 8)[0]["src"], batches["valid"][0]["src"])
    assert len(task.vocab) == 3 + len(task.vocab.symbols) and task.vocab.tokens[:3] == ("<pad>", "<bos>", "<eos>")


@pytest.mark.parametrize("name,options,message", [
    ("copy", {}, "must be one of"),
    ("reverse", dict(min_len=0), "min_len"),
    ("reverse", dict(min_len=5, max_len=3), "min_len=5 > max_len=3"),
    ("sort", dict(num_symbols=27), "num_symbols"),
    ("sort", dict(num_symbols=1.5), "num_symbols"),
    ("reverse", dict(max_len=2, num_symbols=3), "distinct sources"),
    ("addition", dict(num_symbols=10), "does not apply"),
    ("addition", dict(max_len=51), "max_len"),
    ("reverse", dict(length=5), "unknown option"),
    ("reverse", dict(valid_size=0), "valid_size"),
])
def test_bad_task_options(name, options, message):
    with pytest.raises(InputError, match=message):
        make_task(name, **options)
    with pytest.raises(InputError, match="split"):
        TASK.eval_batches("train", 4)
    with pytest.raises(InputError, match="batch_size"):
        TASK.train_batch(0, 0, 0)


def test_decoded_metrics_count_only_exact_outputs():
    task = make_task("reverse", min_len=2, max_len=3, num_symbols=8, valid_size=1, test_size=1)
    batch = task.pack([([3, 4, 5], [5, 4, 3]), ([6, 7], [7, 6]), ([3, 3], [3, 3])], 4)
    pred = np.full((4, 6), PAD_ID, np.int32)
    pred[0, :4] = [5, 4, 3, EOS_ID]          # exact
    pred[1, :4] = [7, 6, 6, EOS_ID]          # right symbols, then one too many: 2 of 3 tokens, not exact
    pred[2, :2] = [3, EOS_ID]                # EOS too early: 1 of 3 tokens
    pred[3, :3] = [9, 9, 9]                  # padding row (weight 0): ignored
    sums = decoded_metrics(pred, batch)
    assert {k: float(v) for k, v in sums.items()} == {"correct_tokens": 7.0, "target_tokens": 10.0,
                                                      "correct_sequences": 1.0, "sequences": 3.0}
    metrics = task.metrics({**sums, "nll": 5.0, "nll_tokens": 10.0})
    assert metrics == pytest.approx({"token_accuracy": 0.7, "sequence_accuracy": 1 / 3, "loss": 0.5})
    # predictions shorter than the targets are padded
    assert float(decoded_metrics(pred[:, :3], batch)["correct_sequences"]) == 0.0
    assert task.decode([BOS_ID, 3, 4, EOS_ID, 5]) == "ab"


# ------------------------------------------------------------------------------ end to end


def test_training_reverse_reaches_greedy_accuracy_well_above_chance():
    model = _model("luong")  # the model (and batch size) of the tests above: greedy is compiled already
    params, losses = adam_train(model, model.init(jax.random.PRNGKey(0)),
                                (TASK.train_batch(0, step, 32) for step in range(200)))
    sums = None
    for b in TASK.eval_batches("valid", BATCH_SIZE):
        out = decoding.greedy(model, params, b["src"], b["src_lengths"], max_len=TASK.tgt_len)
        part = decoded_metrics(out.tokens, b)
        sums = part if sums is None else {k: sums[k] + part[k] for k in part}
    metrics = TASK.metrics(sums)
    # chance of a whole reversed string of 3-5 symbols out of 5 is below 1%
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])
    assert metrics["sequence_accuracy"] > 0.5, metrics
