"""Many-to-one classification: the sequence classifier, sequential digits, parity and brackets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells
from rnn_jax.data import sequence_tasks as st
from rnn_jax.errors import InputError
from rnn_jax.models.classifier import SequenceClassifier, cross_entropy
from tests.train_helpers import adam_train
from tests.trees import assert_trees_close

LENGTHS = np.array([5, 1, 3, 0], np.int32)


def feature_batch(seed=0, B=4, T=5, F=3, lengths=LENGTHS):
    rng = np.random.default_rng(seed)
    return {"inputs": rng.normal(size=(B, T, F)).astype(np.float32), "lengths": lengths,
            "labels": rng.integers(0, 4, B).astype(np.int32), "weight": np.ones(B, np.float32)}


def with_garbage(batch, seed=99):
    """The batch with random values at every padded step (and padded tokens changed)."""
    inputs = np.array(batch["inputs"])
    T = inputs.shape[1]
    pad = np.arange(T)[None, :] >= batch["lengths"][:, None]
    rng = np.random.default_rng(seed)
    if inputs.ndim == 3:
        inputs[pad] = 100 * rng.normal(size=(int(pad.sum()), inputs.shape[2]))
    else:
        inputs[pad] = rng.integers(0, 7, int(pad.sum()))
    return {**batch, "inputs": inputs}


# ----------------------------------------------------------------------------- the model

def test_shapes_and_params():
    model = SequenceClassifier("gru", num_classes=4, hidden_size=6, input_size=3, num_layers=2)
    params = model.init(jax.random.PRNGKey(0))
    assert set(params) == {"layers", "out"} and len(params["layers"]) == 2
    assert params["out"]["W"].shape == (6, 4) and params["out"]["b"].shape == (4,)
    logits_BxC = jax.jit(model.apply)(params, feature_batch())
    assert logits_BxC.shape == (4, 4) and logits_BxC.dtype == jnp.float32
    tok = SequenceClassifier(cells.get("lstm"), 3, 6, vocab_size=7, embed_size=5, pool="mean")
    tparams = tok.init(jax.random.PRNGKey(1))
    assert tparams["embed"].shape == (7, 5) and tparams["layers"][0]["W_xi"].shape == (5, 6)
    batch = {"inputs": np.arange(12, dtype=np.int32).reshape(3, 4) % 7, "lengths": np.array([4, 2, 1], np.int32)}
    assert jax.jit(tok.apply)(tparams, batch).shape == (3, 3)
    assert SequenceClassifier("lstm", 3, 6, vocab_size=7).embed_size == 6  # default: hidden_size


@pytest.mark.parametrize("tokens,pool", [(True, "last"), (False, "mean")])
def test_padded_steps_do_not_change_logits(tokens, pool):
    """Garbage beyond each length changes nothing (exact values: the hand computation below)."""
    if tokens:
        model = SequenceClassifier("lstm", 4, 6, vocab_size=7, num_layers=2, pool=pool)
        rng = np.random.default_rng(0)
        batch = {"inputs": rng.integers(0, 7, (4, 5)).astype(np.int32), "lengths": LENGTHS}
    else:
        model = SequenceClassifier("lstm", 4, 6, input_size=3, num_layers=2, pool=pool)
        batch = feature_batch()
    params = model.init(jax.random.PRNGKey(0))
    apply = jax.jit(model.apply)
    logits = apply(params, batch)
    np.testing.assert_allclose(apply(params, with_garbage(batch)), logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[3], params["out"]["b"], atol=1e-7)  # length 0: z = 0


def test_pools_equal_a_hand_computation():
    cell = cells.get("gru")
    batch = feature_batch(seed=3)
    for pool in ("last", "mean"):
        model = SequenceClassifier(cell, 4, 6, input_size=3, pool=pool)
        params = model.init(jax.random.PRNGKey(2))
        logits = np.asarray(model.apply(params, batch))
        for b, n in enumerate(LENGTHS):
            carry, hs = cell.zero_carry(params["layers"][0]), [np.zeros(6, np.float32)]
            for t in range(n):
                carry, h = cell.step(params["layers"][0], carry, batch["inputs"][b, t])
                hs.append(np.asarray(h))
            z = hs[-1] if pool == "last" else np.sum(hs, axis=0) / max(n, 1)
            want = z @ np.asarray(params["out"]["W"]) + np.asarray(params["out"]["b"])
            np.testing.assert_allclose(logits[b], want, rtol=1e-5, atol=1e-6, err_msg=f"{pool} b={b}")


@pytest.mark.parametrize("spec,pool,layers", [("lstm", "last", 2), ("gru:reset_after=True", "mean", 1)])
def test_gradients_finite_and_match_the_reference_layers(spec, pool, layers):
    model = SequenceClassifier(spec, 4, 5, vocab_size=7, embed_size=3, num_layers=layers, pool=pool)
    rng = np.random.default_rng(1)
    batch = {"inputs": rng.integers(0, 7, (4, 5)).astype(np.int32), "lengths": LENGTHS,
             "labels": np.array([0, 3, 1, 2], np.int32), "weight": np.array([1, 1, 0.5, 1], np.float32)}
    params = model.init(jax.random.PRNGKey(0))
    grad = lambda m: jax.jit(jax.grad(lambda p: m.loss(p, batch)[0]))(params)
    fused, reference = grad(model), grad(dataclasses.replace(model, impl="reference"))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(fused))
    assert float(jnp.abs(fused["layers"][0]["W_hh" if "gru" in spec else "W_hf"]).sum()) > 0
    assert_trees_close(fused, reference, rtol=2e-4, atol=1e-6, what="grad")


def test_dropout_only_with_a_key():
    model = SequenceClassifier("gru", 4, 6, input_size=3, num_layers=2, dropout=0.5)
    params = model.init(jax.random.PRNGKey(0))
    batch = feature_batch()
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, key: model.loss(p, batch, key)[0]))
    key = jax.random.PRNGKey(5)
    (loss, grads), (again, _) = value_and_grad(params, key), value_and_grad(params, key)
    plain = float(jax.jit(lambda p: model.loss(p, batch)[0])(params))
    assert float(loss) == float(again) != plain
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_loss_sums_are_weighted():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = jnp.array([0, 0, 1], jnp.int32)
    mean, sums = cross_entropy(logits, labels, jnp.array([1.0, 1.0, 0.0]))
    nll = -jax.nn.log_softmax(logits)[jnp.arange(3), labels]
    assert float(sums["count"]) == 2 and float(sums["correct"]) == 1
    np.testing.assert_allclose(float(sums["nll"]), float(nll[0] + nll[1]), rtol=1e-6)
    np.testing.assert_allclose(float(mean), float(nll[0] + nll[1]) / 2, rtol=1e-6)
    assert float(cross_entropy(logits, labels, jnp.zeros(3))[0]) == 0.0
    assert st.classification_metrics({"nll": 3.0, "correct": 1.0, "count": 4.0}) == {"loss": 0.75, "accuracy": 0.25}


def test_model_option_errors():
    with pytest.raises(InputError, match="exactly one of input_size"):
        SequenceClassifier("lstm", 4, 6)
    with pytest.raises(InputError, match="exactly one of input_size"):
        SequenceClassifier("lstm", 4, 6, input_size=3, vocab_size=5)
    with pytest.raises(InputError, match="pool must be one of 'last', 'mean'; got 'max'"):
        SequenceClassifier("lstm", 4, 6, input_size=3, pool="max")
    with pytest.raises(InputError, match="num_classes must be a positive integer"):
        SequenceClassifier("lstm", 0, 6, input_size=3)
    with pytest.raises(InputError, match="embed_size=4 needs token inputs"):
        SequenceClassifier("lstm", 2, 6, input_size=3, embed_size=4)
    with pytest.raises(InputError, match=r"dropout must be in \[0, 1\)"):
        SequenceClassifier("lstm", 2, 6, input_size=3, dropout=1.5)
    with pytest.raises(InputError, match="unknown option"):
        SequenceClassifier("lstm:nope=1", 2, 6, input_size=3)
    model = SequenceClassifier("lstm", 2, 6, input_size=3)
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(InputError, match=r"F = input_size = 3; got shape \(4, 5, 2\)"):
        model.apply(params, {"inputs": np.zeros((4, 5, 2), np.float32), "lengths": LENGTHS})
    with pytest.raises(InputError, match="lengths must be ints"):
        model.apply(params, {"inputs": np.zeros((4, 5, 3), np.float32), "lengths": LENGTHS[:2]})


# ----------------------------------------------------------------------------- sequential digits

@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from rnn_jax.data import digits
    return digits


def test_digits_split_is_fixed_disjoint_and_stratified(digits):
    images, labels = digits.load_images()
    assert images.shape == (1797, 8, 8) and images.min() == 0.0 and images.max() == 1.0
    idx = {s: digits.split_indices(s) for s in digits.SPLITS}
    assert {s: len(i) for s, i in idx.items()} == {"train": 1257, "valid": 270, "test": 270}
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(1797))  # disjoint, complete
    # pinned: the split must never move
    assert idx["test"][:6].tolist() == [4, 20, 33, 46, 48, 58] and int(idx["test"].sum()) == 245637
    assert idx["valid"][:6].tolist() == [3, 16, 18, 28, 29, 31] and int(idx["valid"].sum()) == 249091
    per_class = np.bincount(labels, minlength=10)
    for s in ("valid", "test"):
        share = np.bincount(labels[idx[s]], minlength=10)
        assert np.all(np.abs(share - per_class * 270 / 1797) <= 1.5), (s, share)


def test_digits_batches(digits):
    row, pixel = digits.DigitsTask("row"), digits.DigitsTask("pixel")
    a, b = row.train_batch(3, 7, 32), row.train_batch(3, 7, 32)
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == {
        "inputs": ((32, 8, 8), np.float32), "lengths": ((32,), np.int32), "labels": ((32,), np.int32),
        "weight": ((32,), np.float32)}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["inputs"], row.train_batch(3, 8, 32)["inputs"])
    assert not np.array_equal(a["inputs"], row.train_batch(4, 7, 32)["inputs"])
    p = pixel.train_batch(3, 7, 32)
    assert p["inputs"].shape == (32, 64, 1) and np.all(p["lengths"] == 64)
    np.testing.assert_array_equal(p["inputs"].reshape(32, 8, 8), a["inputs"])  # same images, read by pixel
    # training images only, distinct within a batch (the 1,257 training images are distinct)
    images, _ = digits.load_images()
    train = {x.tobytes() for x in images[digits.split_indices("train")]}
    big = [x.tobytes() for x in row.train_batch(0, 0, 1000)["inputs"]]
    assert len(train) == 1257 and len(set(big)) == 1000 and set(big) <= train


@pytest.mark.parametrize("split", ["valid", "test"])
def test_digits_eval_batches_cover_the_split_once(digits, split):
    images, labels = digits.load_images()
    batches = digits.DigitsTask("row").eval_batches(split, 64)
    assert len(batches) == 5 and all(b["inputs"].shape == (64, 8, 8) for b in batches)
    w = np.concatenate([b["weight"] for b in batches])
    assert w.sum() == 270 and np.all(w[:270] == 1) and np.all(w[270:] == 0)
    seen = np.concatenate([b["inputs"] for b in batches])[:270]
    np.testing.assert_array_equal(seen, images[digits.split_indices(split)])
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches])[:270],
                                  labels[digits.split_indices(split)])


# ----------------------------------------------------------------------------- parity and brackets

def test_parity_labels_and_purity():
    task = st.ParityTask(min_len=3, max_len=12, num_valid=300, num_test=50, seed=4)
    batches = task.eval_batches("valid", 128)
    assert len(batches) == 3
    inputs = np.concatenate([b["inputs"] for b in batches])
    lengths = np.concatenate([b["lengths"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    weight = np.concatenate([b["weight"] for b in batches])
    assert inputs.shape == (384, 12) and inputs.dtype == np.int32 and weight.sum() == 300
    assert np.all(weight[300:] == 0) and lengths.min() == 3 and lengths.max() == 12
    for x, n, y in zip(inputs, lengths, labels):
        assert y == sum(int(v) for v in x[:n]) % 2 and set(x[:n].tolist()) <= {0, 1} and not x[n:].any()
    # example i depends only on (seed, split, i), not on the split's size
    other = st.ParityTask(min_len=3, max_len=12, num_valid=10, num_test=50, seed=4).eval_batches("valid", 10)[0]
    np.testing.assert_array_equal(other["inputs"], inputs[:10])
    assert not np.array_equal(task.eval_batches("test", 50)[0]["inputs"], inputs[:50])
    assert not np.array_equal(dataclasses.replace(task, seed=5).eval_batches("valid", 50)[0]["inputs"], inputs[:50])
    train = task.train_batch(0, 1, 400)
    np.testing.assert_array_equal(train["inputs"], task.train_batch(0, 1, 400)["inputs"])
    assert 0.4 < train["labels"].mean() < 0.6 and np.all(train["weight"] == 1)
    assert np.all(train["labels"] == np.where(np.arange(12) < train["lengths"][:, None], train["inputs"], 0).sum(1) % 2)


def balanced_by_stack(tokens) -> bool:
    stack = []
    for t in tokens:
        if t == 0:
            stack.append("(")
        elif not stack:
            return False
        else:
            stack.pop()
    return not stack


def test_brackets_labels_and_balance():
    task = st.BracketsTask(min_len=3, max_len=16)
    batch = task.train_batch(1, 2, 2000)
    assert batch["inputs"].shape == (2000, 16)
    assert 0.45 < batch["labels"].mean() < 0.55
    assert set(batch["lengths"].tolist()) == {4, 6, 8, 10, 12, 14, 16}
    for x, n, y in zip(batch["inputs"], batch["lengths"], batch["labels"]):
        assert y == balanced_by_stack(x[:n].tolist()) == st.is_balanced(x[:n])
        assert 2 * int(x[:n].sum()) == n  # unbalanced strings too have equal counts
    ev = task.eval_batches("test", 256)
    labels = np.concatenate([b["labels"] for b in ev])[:1000]
    assert 0.44 < labels.mean() < 0.56 and sum(b["weight"].sum() for b in ev) == 1000


def test_task_option_errors():
    bad = [(st.ParityTask, {"min_len": 0}, r"parity option min_len=0: must be an integer in \[1, 100000\]"),
           (st.ParityTask, {"min_len": 5, "max_len": 4}, r"parity option max_len=4: must be an integer in \[5, "),
           (st.ParityTask, {"max_len": 2.5}, "parity option max_len=2.5"),
           (st.ParityTask, {"num_valid": 0}, r"parity option num_valid=0: must be an integer >= 1"),
           (st.BracketsTask, {"min_len": 1}, r"brackets option min_len=1: must be an integer in \[2, "),
           (st.BracketsTask, {"min_len": 3, "max_len": 3}, "must contain an even length"),
           (st.BracketsTask, {"max_len": True}, "brackets option max_len=True")]
    for cls, options, message in bad:
        with pytest.raises(InputError, match=message):
            cls(**options)
    task = st.ParityTask()
    with pytest.raises(InputError, match="split must be one of 'valid', 'test'; got 'train'"):
        task.eval_batches("train", 8)
    with pytest.raises(InputError, match="batch_size=0"):
        task.train_batch(0, 0, 0)


def test_digits_option_errors(digits):
    with pytest.raises(InputError, match="digits option mode='col': must be one of 'row', 'pixel'"):
        digits.DigitsTask("col")
    with pytest.raises(InputError, match="split must be one of"):
        digits.DigitsTask().eval_batches("dev", 8)


# ----------------------------------------------------------------------------- end to end

def test_lstm_learns_row_digits(digits):
    task = digits.DigitsTask("row")
    model = SequenceClassifier("lstm", task.num_classes, 64, input_size=task.input_size)
    params, _ = adam_train(model, model.init(jax.random.PRNGKey(0)),
                           (task.train_batch(0, step, 64) for step in range(120)))
    sums_of = jax.jit(lambda p, b: model.loss(p, b)[1])
    sums = {"nll": 0.0, "correct": 0.0, "count": 0.0}
    for batch in task.eval_batches("valid", 128):
        for k, v in sums_of(params, batch).items():
            sums[k] += float(v)
    metrics = task.metrics(sums)
    assert sums["count"] == 270
    assert metrics["accuracy"] > 0.6 and metrics["loss"] < 1.2, metrics
