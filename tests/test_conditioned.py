"""One-to-many generation conditioned on a vector: the model (teacher forcing against generation, the
conditioning paths, an independent NumPy oracle, gradients, every cell), the digit-rows and spell
tasks, and short training runs of both."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rnn_jax import cells
from rnn_jax.data import conditioned_tasks as ct
from rnn_jax.data import digits
from rnn_jax.data.sequence_tasks import pad_batches
from rnn_jax.errors import InputError
from rnn_jax.models.conditioned import CONDITIONS, ConditionedGenerator
from tests.train_helpers import adam_train

C, H, V, E, F = 5, 12, 9, 6, 7
LENGTHS = np.array([6, 3, 1, 4], np.int32)
PAD, BOS, EOS = 0, 1, 2


def token_batch(seed=0, lengths=LENGTHS, T=6):
    """Random tokens (ids 3..V-1), EOS at ``lengths - 1``, PAD after."""
    rng = np.random.default_rng(seed)
    B = len(lengths)
    tokens = rng.integers(3, V, size=(B, T)).astype(np.int32)
    pos = np.arange(T)[None, :]
    tokens = np.where(pos == lengths[:, None] - 1, EOS, np.where(pos >= lengths[:, None], PAD, tokens))
    return {"cond": rng.normal(size=(B, C)).astype(np.float32), "tokens": tokens.astype(np.int32),
            "lengths": lengths, "weight": np.ones(B, np.float32)}


def frame_batch(seed=0, lengths=LENGTHS, T=6):
    rng = np.random.default_rng(seed)
    B = len(lengths)
    return {"cond": rng.normal(size=(B, C)).astype(np.float32),
            "frames": rng.uniform(size=(B, T, F)).astype(np.float32), "lengths": lengths,
            "weight": np.ones(B, np.float32)}


def make_model(cell="lstm", kind="tokens", **kw):
    size = {"vocab_size": V, "embed_size": E} if kind == "tokens" else {"frame_size": F}
    return ConditionedGenerator(cell, **{"cond_size": C, "hidden_size": H, **size, **kw})


def with_garbage(batch, seed=7):
    """The batch with other values at every step t >= length (targets and so inputs)."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    pad = np.arange(6)[None, :] >= batch["lengths"][:, None]
    if "tokens" in batch:
        out["tokens"] = np.where(pad, rng.integers(0, V, size=pad.shape), batch["tokens"]).astype(np.int32)
    else:
        out["frames"] = np.where(pad[..., None], rng.uniform(size=batch["frames"].shape) * 50 - 20,
                                 batch["frames"]).astype(np.float32)
    return out


# ----------------------------------------------------------------------------- every cell

@pytest.mark.parametrize("name", cells.names())
def test_every_cell_gives_the_right_shapes(name):
    """Abstract evaluation (no compile): parameter, logit, loss and generation shapes for each cell.
    ``embed_size + cond_size = hidden_size`` so that the MUT cells' raw-input terms fit."""
    model = ConditionedGenerator(name, cond_size=4, hidden_size=10, vocab_size=V, embed_size=6, num_layers=2)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    leaves = len(jax.tree.leaves(model.cell.zeros_carry(10, (1,))))
    assert params["init"]["W"].shape == (4, 2 * leaves * 10)
    batch = {**token_batch(), "cond": np.zeros((4, 4), np.float32)}
    logits = jax.eval_shape(model.teacher_forced, params, batch)
    assert logits.shape == (4, 6, V)
    loss, sums = jax.eval_shape(model.loss, params, batch)
    assert loss.shape == () and set(sums) == {"nll", "count"}
    out = jax.eval_shape(lambda p, v: model.generate(p, v, jax.random.PRNGKey(0), max_len=5, greedy=False),
                         params, batch["cond"])
    assert out.tokens.shape == (4, 5) and out.lengths.shape == (4,)


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_teacher_forced_gradients_match_finite_differences(name):
    model = make_model(name, hidden_size=5)
    batch = token_batch(lengths=np.array([6, 2], np.int32))
    params = model.init(jax.random.PRNGKey(3))
    loss = jax.jit(lambda p: model.loss(p, batch)[0])
    check_grads(loss, (params,), order=1, modes=["rev"], eps=1e-3, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------- teacher forcing = generation

@pytest.mark.parametrize("kind,cell,layers", [("tokens", "lstm", 2), ("frames", "gru", 1)])
def test_teacher_forcing_matches_stepping_and_generation_and_ignores_padding(kind, cell, layers):
    model = make_model(cell, kind, num_layers=layers, dropout=0.3)
    batch = token_batch() if kind == "tokens" else frame_batch()
    params = model.init(jax.random.PRNGKey(1))

    @jax.jit
    def forced(params, batch):
        logits = model.teacher_forced(params, batch)
        return (*model.loss_from_logits(logits, batch), logits)

    loss, sums, logits = forced(params, batch)
    B, T = LENGTHS.shape[0], 6
    assert logits.shape == (B, T, V if kind == "tokens" else F)
    assert float(sums["count"]) == LENGTHS.sum() and np.isfinite(float(loss))

    # steps t >= length (their targets, hence the later inputs) do not change the loss
    loss_garbage, _, _ = forced(params, with_garbage(batch))
    assert float(loss_garbage) == pytest.approx(float(loss), rel=1e-6)
    if kind == "tokens":  # dropout acts only with a key
        dropped = jax.jit(lambda p, b, k: model.loss(p, b, k)[0])
        loss_dropped = float(dropped(params, batch, jax.random.PRNGKey(0)))
        assert np.isfinite(loss_dropped) and abs(loss_dropped - float(loss)) > 1e-4

    # step by step from initial_state, feeding the same shifted targets: the same logits
    step = jax.jit(model.step)
    state = model.initial_state(params, batch["cond"])
    inputs = np.asarray(model.shifted_inputs(batch))
    for t in range(T):
        step_logits, state = step(params, state, inputs[:, t], batch["cond"])
        valid = LENGTHS > t
        np.testing.assert_allclose(np.asarray(step_logits)[valid], np.asarray(logits)[valid, t], rtol=1e-5,
                                   atol=1e-5, err_msg=f"step {t}")

    # greedy generation, fed back through teacher forcing, is the argmax (means) of the logits
    out = model.generate(params, batch["cond"], max_len=T, greedy=True)
    if kind == "tokens":
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        fed = {**batch, "tokens": tokens, "lengths": lengths}
        logits_fed = np.asarray(forced(params, fed)[2])
        logp = np.asarray(jax.nn.log_softmax(jnp.asarray(logits_fed).at[..., [PAD, BOS]].set(-jnp.inf)))
        for b in range(B):
            n = lengths[b]
            np.testing.assert_array_equal(tokens[b, :n], np.argmax(logp[b, :n], axis=-1))
            assert np.all(tokens[b, n:] == PAD) and (n == T or tokens[b, n - 1] == EOS)
            assert float(out.log_probs[b]) == pytest.approx(logp[b, np.arange(n), tokens[b, :n]].sum(), rel=1e-5)
    else:
        frames, means = np.asarray(out.frames), np.asarray(out.means)
        np.testing.assert_array_equal(frames, means)
        fed = {**batch, "frames": frames, "lengths": np.full(B, T, np.int32)}
        np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(forced(params, fed)[2])), means, rtol=1e-5,
                                   atol=1e-6)


# ----------------------------------------------------------------------------- how v enters

@pytest.mark.parametrize("condition", CONDITIONS)
def test_conditioning_paths(condition):
    model = make_model("rnn", condition=condition)
    params = model.init(jax.random.PRNGKey(2))
    batch = token_batch(lengths=np.full(4, 6, np.int32))
    other = {**batch, "cond": batch["cond"] + np.random.default_rng(1).normal(size=batch["cond"].shape)}
    forced = jax.jit(model.teacher_forced)
    differs_BxT = np.any(np.asarray(forced(params, batch)) != np.asarray(forced(params, other)), axis=-1)
    assert differs_BxT.all(), "changing v must change the logits at every step"
    assert params["layers"][0]["W_xh"].shape[0] == E + (0 if condition == "init" else C)
    assert ("init" in params) == (condition != "input")

    state_v = model.initial_state(params, batch["cond"])
    state_w = model.initial_state(params, other["cond"])
    if condition == "input":
        assert not np.any(np.asarray(state_v[0])), "with condition='input' the state starts at zero"
    else:
        assert np.all(np.asarray(state_v[0]) != np.asarray(state_w[0]))

    # from the same state, later steps see v (input, both) or ignore it entirely (init)
    step = jax.jit(model.step)
    inputs = np.asarray(model.shifted_inputs(batch))
    s_v = s_w = state_v
    for t in range(6):
        logits_v, s_v = step(params, s_v, inputs[:, t], batch["cond"])
        logits_w, s_w = step(params, s_w, inputs[:, t], other["cond"])
        if condition == "init":
            np.testing.assert_array_equal(np.asarray(logits_v), np.asarray(logits_w))
        else:
            assert np.all(np.any(np.asarray(logits_v) != np.asarray(logits_w), axis=-1)), f"step {t}"


# ----------------------------------------------------------------------------- NumPy oracle

def numpy_rnn_generator(p, batch, *, tokens: bool, condition: str):
    """The lecture's ``h_t = tanh(W_hh h_{t-1} + W_xh x_t + W_ih v)`` in float64 row-vector form, with
    ``h_0 = tanh(v W_init + b_init)`` for ``init``/``both``; returns the logits ``[B, T, out]``."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    layer = p["layers"][0]
    v = np.asarray(batch["cond"], np.float64)
    if tokens:
        y = np.asarray(batch["tokens"])
        prev = np.concatenate([np.full((len(y), 1), BOS), y[:, :-1]], axis=1)
        xs = p["embed"][prev]
    else:
        f = np.asarray(batch["frames"], np.float64)
        xs = np.concatenate([np.zeros_like(f[:, :1]), f[:, :-1]], axis=1)
    X = xs.shape[-1]
    W_xh = layer["W_xh"][:X]
    W_ih = layer["W_xh"][X:] if condition != "init" else np.zeros((v.shape[1], W_xh.shape[1]))
    h = np.tanh(v @ p["init"]["W"] + p["init"]["b"]) if condition != "input" else np.zeros((len(v), W_xh.shape[1]))
    logits = []
    for t in range(xs.shape[1]):
        h = np.tanh(h @ layer["W_hh"] + xs[:, t] @ W_xh + v @ W_ih + layer["b_h"])
        logits.append(h @ p["out"]["W"] + p["out"]["b"])
    return np.stack(logits, axis=1)


@pytest.mark.parametrize("kind,condition", [("tokens", "both"), ("frames", "init"), ("tokens", "input")])
def test_rnn_matches_an_independent_numpy_implementation(kind, condition):
    model = make_model("rnn", kind, condition=condition)
    params = model.init(jax.random.PRNGKey(4))
    params["layers"][0]["b_h"] = params["layers"][0]["b_h"] + 0.3  # nonzero biases exercise every term
    params["out"]["b"] = params["out"]["b"] - 0.2
    if "init" in params:
        params["init"]["b"] = params["init"]["b"] + 0.1
    batch = token_batch(3) if kind == "tokens" else frame_batch(3)
    got = np.asarray(jax.jit(model.teacher_forced)(params, batch))
    want = numpy_rnn_generator(params, batch, tokens=kind == "tokens", condition=condition)
    valid = np.arange(6)[None, :] < LENGTHS[:, None]
    np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)
    # and the loss against the oracle's logits
    if kind == "tokens":
        logp = want - np.log(np.exp(want).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, batch["tokens"][..., None], -1)[..., 0]
    else:
        nll = (np.logaddexp(0, want) - batch["frames"] * want).sum(-1)
    loss, sums = model.loss(params, batch)
    assert float(loss) == pytest.approx(nll[valid].sum() / valid.sum(), rel=1e-5)


def test_uniform_predictions_score_the_tasks_uniform_loss():
    """Zero logits (a uniform softmax; every pixel 1/2) cost exactly ``task.uniform_loss`` per unit."""
    for task in (ct.make_task("spell", max_value=99), ct.make_task("digit_rows")):
        embed = {"embed_size": 4} if isinstance(task, ct.SpellTask) else {}
        model = ConditionedGenerator("rnn", hidden_size=4, **embed, **task.model_options())
        batch = task.train_batch(0, 0, 3)
        zeros = jnp.zeros((3, task.num_steps, model.output_size))
        loss, sums = model.loss_from_logits(zeros, batch)
        assert float(loss) == pytest.approx(task.uniform_loss, rel=1e-6)
        assert float(sums["count"]) == batch["lengths"].sum()
    assert ct.make_task("digit_rows").uniform_loss == pytest.approx(8 * math.log(2))


# ----------------------------------------------------------------------------- tasks

def test_spelling_and_the_spell_task():
    assert ct.spell(342) == "three hundred forty-two"
    assert [ct.spell(n) for n in (0, 13, 40, 100, 1000, 12005, 999999)] == [
        "zero", "thirteen", "forty", "one hundred", "one thousand", "twelve thousand five",
        "nine hundred ninety-nine thousand nine hundred ninety-nine"]
    task = ct.make_task("spell", seed=3)  # max_value 999
    assert task.cond_size == 30 and task.vocab_size == 3 + len(ct.SYMBOLS)
    assert task.num_steps == max(len(ct.spell(n)) for n in range(1000)) + 1
    v = task.cond([342, 7])
    assert [np.flatnonzero(v[0]).tolist(), np.flatnonzero(v[1]).tolist()] == [[3, 14, 22], [0, 10, 27]]
    big = ct.make_task("spell", max_value=120_000, valid_size=5, test_size=5)
    assert big.num_steps == max(len(ct.spell(n)) for n in range(100_000, 120_001)) + 1

    batch = task.train_batch(0, 5, 16)
    assert set(batch) == {"cond", "tokens", "lengths", "numbers", "weight"}
    for b, n in enumerate(batch["numbers"]):
        assert task.decode(batch["tokens"][b]) == ct.spell(int(n))
        assert batch["tokens"][b, batch["lengths"][b] - 1] == EOS and np.all(batch["tokens"][b, batch["lengths"][b]:]
                                                                             == PAD)
    np.testing.assert_array_equal(batch["cond"], task.cond(batch["numbers"]))
    # a pure function of (seed, step)
    again = task.train_batch(0, 5, 16)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert not np.array_equal(task.train_batch(0, 6, 16)["numbers"], batch["numbers"])
    assert not np.array_equal(task.train_batch(1, 5, 16)["numbers"], batch["numbers"])

    # held-out numbers never occur in training batches; the splits partition 0..max_value
    valid, test, train = (task.split_numbers(s) for s in ("valid", "test", "train"))
    assert len(valid) == len(test) == 100
    assert np.array_equal(np.sort(np.concatenate([valid, test, train])), np.arange(1000))
    seen = np.concatenate([task.train_batch(0, s, 64)["numbers"] for s in range(200)])
    assert not np.isin(seen, np.concatenate([valid, test])).any()
    assert len(np.unique(seen)) > 750  # and the training numbers are all drawn
    assert np.array_equal(ct.make_task("spell", seed=3).split_numbers("valid"), valid)
    assert not np.array_equal(ct.make_task("spell", seed=4).split_numbers("valid"), valid)

    # evaluation: every held-out number once, the padding with weight 0
    batches = task.eval_batches("test", 32)
    weights = np.concatenate([b["weight"] for b in batches])
    assert len(batches) == 4 and weights.sum() == 100 and np.all(weights[100:] == 0)
    assert np.array_equal(np.concatenate([b["numbers"] for b in batches])[weights > 0], test)


def test_digit_rows_task():
    task = ct.make_task("digit_rows")
    assert task.model_options() == {"cond_size": 10, "frame_size": 8}
    batch = task.train_batch(0, 3, 20)
    images, labels = digits.load_images()
    assert batch["frames"].shape == (20, 8, 8) and batch["cond"].shape == (20, 10)
    np.testing.assert_array_equal(np.argmax(batch["cond"], -1), batch["labels"])
    assert np.all(batch["lengths"] == 8) and batch["frames"].min() >= 0 and batch["frames"].max() <= 1
    again = task.train_batch(0, 3, 20)
    assert all(np.array_equal(batch[k], again[k]) for k in batch)
    assert not np.array_equal(task.train_batch(0, 4, 20)["frames"], batch["frames"])
    valid = task.eval_batches("valid", 100)
    weights = np.concatenate([b["weight"] for b in valid])
    assert len(valid) == 3 and weights.sum() == 270 and np.all(weights[270:] == 0)
    idx = digits.split_indices("valid")
    np.testing.assert_array_equal(np.concatenate([b["frames"] for b in valid])[:270], images[idx])


def test_bad_options_are_named():
    with pytest.raises(InputError, match=r"max_value=5: must be an integer in \[9, 999999\]"):
        ct.make_task("spell", max_value=5)
    with pytest.raises(InputError, match="valid_size=60 \\+ test_size=50 must leave at least one of the "
                                         "max_value \\+ 1 = 100"):
        ct.make_task("spell", max_value=99, valid_size=60, test_size=50)
    with pytest.raises(InputError, match=r"test_size=0: must be an integer in \[1, 99\]"):
        ct.make_task("spell", max_value=99, test_size=0)
    with pytest.raises(InputError, match="unknown option.*'max_len'.*allowed: max_value, valid_size, test_size"):
        ct.make_task("spell", max_len=3)
    with pytest.raises(InputError, match="unknown option.*'max_value'.*allowed: none"):
        ct.make_task("digit_rows", max_value=3)
    with pytest.raises(InputError, match="must be one of 'digit_rows', 'spell'; got 'spel'"):
        ct.make_task("spel")
    with pytest.raises(InputError, match="exactly one of vocab_size .* and frame_size"):
        ConditionedGenerator("lstm", cond_size=3, hidden_size=4, vocab_size=5, frame_size=2)
    with pytest.raises(InputError, match="condition must be one of 'input', 'init', 'both'; got 'start'"):
        make_model(condition="start")
    with pytest.raises(InputError, match="cond_size must be a positive integer, got 0"):
        ConditionedGenerator("lstm", cond_size=0, hidden_size=4, frame_size=2)
    with pytest.raises(InputError, match="embed_size \\+ cond_size = 11 wide: mut1 adds the raw input"):
        ConditionedGenerator("mut1", cond_size=5, hidden_size=8, vocab_size=9, embed_size=6)
    model = make_model()
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(InputError, match=r"v must have shape \[B, 5\]"):
        model.initial_state(params, np.zeros((2, 4)))
    with pytest.raises(InputError, match="sampling \\(greedy=False\\) needs a PRNG key"):
        model.generate(params, np.zeros((2, 5)), max_len=3, greedy=False)
    with pytest.raises(InputError, match="temperature must be a number > 0, got 0"):
        model.generate(params, np.zeros((2, 5)), jax.random.PRNGKey(0), max_len=3, greedy=False, temperature=0)


# ----------------------------------------------------------------------------- training

def test_digit_rows_training_draws_class_specific_digits(tmp_path):
    task = ct.make_task("digit_rows")
    model = ConditionedGenerator("lstm", hidden_size=32, **task.model_options())
    params = model.init(jax.random.PRNGKey(0))
    params, losses = adam_train(model, params, [task.train_batch(0, s, 32) for s in range(150)])
    sums = jax.jit(lambda p, b: task.eval_sums(model, p, b))(params, task.eval_batches("valid", 270)[0])
    valid_loss = task.metrics(sums)["loss"]
    assert valid_loss < 0.6 * task.uniform_loss, (valid_loss, task.uniform_loss, losses[::25])

    # greedy digits look like their class: nearest to their own class's mean training image
    images, labels = digits.load_images()
    train = digits.split_indices("train")
    means = np.stack([images[train][labels[train] == c].mean(0) for c in range(10)])
    greedy = np.asarray(model.generate(params, np.eye(10, dtype=np.float32), max_len=8, greedy=True).frames)
    dist = ((greedy[:, None] - means[None]) ** 2).sum((-1, -2))
    assert (np.argmin(dist, axis=1) == np.arange(10)).sum() >= 8, np.argmin(dist, axis=1)

    # sampling: 0/1 frames; the grid shows the means along the sampled trajectory (B = 10 as in sample_text)
    sampled = model.generate(params, np.eye(10, dtype=np.float32), jax.random.PRNGKey(1), max_len=8, greedy=False)
    assert set(np.unique(np.asarray(sampled.frames)).tolist()) == {0.0, 1.0}
    grid, grid_labels = ct.generate_grid(model, params, jax.random.PRNGKey(1), per_class=1)
    np.testing.assert_array_equal(grid, np.asarray(sampled.means))
    np.testing.assert_array_equal(grid_labels, np.arange(10))
    path = tmp_path / "digits.png"
    ct.save_digit_grid(grid, grid_labels, str(path), columns=2)  # a blank second column
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = task.sample_text(model, params, jax.random.PRNGKey(2))
    assert text.splitlines()[0].split() == ["greedy", *map(str, range(10))] and len(text.splitlines()) == 18


def test_spell_training_spells_held_out_numbers():
    task = ct.make_task("spell", max_value=99)
    model = ConditionedGenerator("lstm", hidden_size=48, embed_size=16, **task.model_options())
    params = model.init(jax.random.PRNGKey(0))
    params, losses = adam_train(model, params, [task.train_batch(0, s, 32) for s in range(200)])
    assert losses[-1] < 0.1 * task.uniform_loss, losses[::50]
    eval_sums = jax.jit(lambda p, b: task.eval_sums(model, p, b))
    # the 80 training numbers, then the 20 held-out ones padded to 80 rows (one compile)
    train = task.pack(task.split_numbers("train"))
    held_out = task.pack(np.concatenate([task.split_numbers("valid"), task.split_numbers("test")]))
    held_out = pad_batches({k: v for k, v in held_out.items() if k != "weight"}, 80)[0]
    train_metrics = task.metrics(eval_sums(params, train))
    held_metrics = task.metrics(eval_sums(params, held_out))
    assert train_metrics["sequence_accuracy"] >= 0.95, train_metrics
    assert held_metrics["sequence_accuracy"] >= 0.4 and held_metrics["token_accuracy"] >= 0.6, held_metrics
    text = task.sample_text(model, params, jax.random.PRNGKey(0), num_examples=3)
    assert len(text.splitlines()) == 3 and all(" -> " in line for line in text.splitlines())

    # sampled spellings (B = 3 as in sample_text): never PAD or BOS, EOS only last, PAD after
    T = task.num_steps
    sampled = model.generate(params, task.cond([7, 42, 99]), jax.random.PRNGKey(1), max_len=T, greedy=False,
                             temperature=2.0)
    s_tok, s_len = np.asarray(sampled.tokens), np.asarray(sampled.lengths)
    for b in range(3):
        n = s_len[b]
        assert np.all(s_tok[b, :n] > BOS) and np.all(s_tok[b, :n - 1] != EOS) and np.all(s_tok[b, n:] == PAD)
        assert n == T or s_tok[b, n - 1] == EOS
    assert np.all(np.isfinite(np.asarray(sampled.log_probs)))
