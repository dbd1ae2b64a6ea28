"""Polyphonic music: safe loading (JSON, pickles), validation errors, piano rolls, the model."""

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, piano
from rnn_jax.data import music
from tests.trees import assert_trees_close


def random_dataset(seed=0, as_tuples=False, as_floats=False):
    """Plain lists (or tuples) of Python ints/floats: what the public pickles hold."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        seqs = []
        for _ in range(n):
            seq = []
            for _ in range(int(rng.integers(1, 6))):
                step = sorted(int(p) for p in rng.choice(np.arange(40, 80), rng.integers(0, 4), replace=False))
                if as_floats:
                    step = [float(p) for p in step]
                seq.append(tuple(step) if as_tuples else step)
            seqs.append(seq)
        data[split] = seqs
    data["train"][0][0] = (60.0, 64) if as_tuples else [60.0, 64]  # integral floats are accepted
    return data


def write(path, obj, protocol=None):
    if protocol is None:
        path.write_text(json.dumps(obj))
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=protocol)
    return path


def test_json_and_pickles_give_the_same_piano_rolls(tmp_path):
    data = random_dataset()
    ref = music.piano_rolls(write(tmp_path / "d.json", data))
    # pickle protocol 2, with Python-2 byte-string keys (as in the public datasets), tuple steps
    p2 = pickle.dumps(random_dataset(as_tuples=True, as_floats=True), protocol=2)
    for key in music.SPLITS:
        encoded = key.encode()
        p2 = p2.replace(b"X" + len(encoded).to_bytes(4, "little") + encoded,
                        b"U" + bytes([len(encoded)]) + encoded)  # SHORT_BINSTRING: a py2 str
    assert b"U\x05train" in p2
    (tmp_path / "p2.pickle").write_bytes(p2)
    write(tmp_path / "p4.pkl", random_dataset(as_tuples=True), protocol=4)
    write(tmp_path / "p0.pkl", random_dataset(), protocol=0)  # no PROTO opcode
    save_path = tmp_path / "saved.json"
    music.save_json(save_path, music.load_piano_rolls(tmp_path / "p4.pkl"))
    loaded = music.load_piano_rolls(tmp_path / "d.json")
    assert loaded["train"][0][0] == [60, 64] and all(type(p) is int for p in loaded["train"][0][0])
    for name in ("p2.pickle", "p4.pkl", "p0.pkl", "saved.json"):
        other = music.piano_rolls(tmp_path / name)
        assert (other.low, other.high) == (ref.low, ref.high), name
        for split in music.SPLITS:
            np.testing.assert_array_equal(other.split(split), ref.split(split), err_msg=name)
            np.testing.assert_array_equal(other.starts[split], ref.starts[split], err_msg=name)
    assert ref.train.dtype == np.float32 and ref.train.shape[1] == ref.num_pitches
    assert ref.train.shape[0] == sum(len(s) for s in data["train"])


def test_extra_keys_ignored_missing_split_named(tmp_path):
    data = random_dataset()
    data["meta"] = "anything"
    assert set(music.load_piano_rolls(write(tmp_path / "x.json", data))) == set(music.SPLITS)
    del data["valid"]
    with pytest.raises(ValueError, match=r"missing split 'valid'; keys found: \['train', 'test', 'meta'\]"):
        music.load_piano_rolls(write(tmp_path / "y.json", data))


class _RunsCommand:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


class _CallsEval:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickles_are_refused_without_running_anything(tmp_path, protocol):
    pwned = tmp_path / "pwned"
    payload = {"train": [[[60]]], "valid": _RunsCommand(pwned), "test": [[[60]]]}
    path = write(tmp_path / "evil.pkl", payload, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match=r"evil\.pkl: refused pickle opcode (STACK_)?GLOBAL"):
        music.load_piano_rolls(path)
    assert not pwned.exists()
    path = write(tmp_path / "eval.pkl", [_CallsEval()], protocol=protocol)
    with pytest.raises(music.UnsafePickleError, match=r"refused pickle opcode"):
        music.piano_rolls(path)
    # the unpickler alone refuses globals too (a second line of defence)
    with pytest.raises(music.UnsafePickleError, match=r"refused to load global (posix|os)\.system"):
        music.SafeUnpickler(open(tmp_path / "evil.pkl", "rb")).load()
    assert not pwned.exists()


@pytest.mark.parametrize("bad, message", [
    ({"train": [[[60], [61, 200]]]}, r"split 'train', sequence 0, step 1: pitch 200 is outside"),
    ({"valid": [[[60]], [[60], [60.5]]]}, r"split 'valid', sequence 1, step 1: pitch 60\.5 is not an integer"),
    ({"test": [[[60]], [[60]], [[60, "C4"]]]}, r"split 'test', sequence 2, step 0: pitch 'C4' \(str\) is not a number"),
    ({"train": [[[60]], []]}, r"split 'train', sequence 1: empty sequence"),
    ({"train": [[[True]]]}, r"split 'train', sequence 0, step 0: pitch True \(bool\)"),
    ({"train": [[60]]}, r"split 'train', sequence 0, step 0: expected a list of pitches, got int"),
])
def test_structure_errors_name_the_location(tmp_path, bad, message):
    data = {"train": [[[60]]], "valid": [[[60]]], "test": [[[60]]]}
    data.update(bad)
    path = write(tmp_path / "bad.json", data)
    with pytest.raises(ValueError, match=r"bad\.json: " + message):
        music.load_piano_rolls(path)


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"not a dataset")
    with pytest.raises(ValueError, match=r"junk\.bin: unrecognised format"):
        music.load_piano_rolls(tmp_path / "junk.bin")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(random_dataset(), protocol=4)[:40])
    with pytest.raises(ValueError, match=r"cut\.pkl: not a valid pickle"):
        music.load_piano_rolls(tmp_path / "cut.pkl")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        music.load_piano_rolls(tmp_path / "nope.json")


def test_piano_roll_frames_and_starts(tmp_path):
    seqs = [[[60, 64], [], [62]], [[61], [60, 61, 61]]]
    roll = music.piano_roll(seqs, 60, 64)
    expected = np.asarray([[1, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0],
                           [0, 1, 0, 0, 0], [1, 1, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(roll, expected)
    assert roll.dtype == np.float32
    path = write(tmp_path / "m.json", {"train": seqs, "valid": [[[58]]], "test": [[[70], [59]]]})
    rolls = music.piano_rolls(path)
    assert (rolls.low, rolls.high, rolls.num_pitches) == (58, 70, 13)
    np.testing.assert_array_equal(rolls.starts["train"], [0, 3])
    np.testing.assert_array_equal(rolls.starts["test"], [0])
    np.testing.assert_array_equal(rolls.train[:, 2:7], expected)  # columns shift by low = 58
    assert rolls.test[0, 12] == 1 and rolls.test[1, 1] == 1 and rolls.test.sum() == 2
    parts = rolls.sequences("train")
    assert [p.shape[0] for p in parts] == [3, 2]
    fixed = music.piano_rolls(path, low=50, high=80)
    assert fixed.num_pitches == 31 and fixed.valid[0, 8] == 1
    with pytest.raises(ValueError, match=r"split 'test', sequence 0, step 0: pitch 70 is outside the range 55\.\.65"):
        music.piano_rolls(path, low=55, high=65)


def test_bernoulli_nll_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2, 3, 4)).astype(np.float32)
    targets = (rng.random((2, 3, 4)) < 0.4).astype(np.float32)
    weights = np.asarray([[1, 1, 0], [1, 0, 0]], np.float32)
    x = logits.astype(np.float64)
    p = 1 / (1 + np.exp(-x))
    nll = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)
    total, count = piano.bernoulli_nll(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(total, nll.sum(), rtol=1e-5)
    assert count == 6
    total, count = piano.bernoulli_nll(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    np.testing.assert_allclose(total, (nll * weights).sum(), rtol=1e-5)
    assert count == 3
    # stable at extreme logits: right answers cost ~0, wrong ones cost |logit|
    big = jnp.asarray([[[100.0, -100.0]]])
    np.testing.assert_allclose(piano.bernoulli_nll(big, jnp.asarray([[[1.0, 0.0]]]))[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(piano.bernoulli_nll(big, jnp.asarray([[[0.0, 1.0]]]))[0], 200.0, rtol=1e-6)


def test_piano_roll_model_steps_and_gradient():
    model = piano.PianoRollModel(cells.get("lstm"), num_pitches=5, embed_size=4, hidden_size=6,
                                 num_layers=2, dropout=0.3)
    params = model.init(jax.random.PRNGKey(0))
    assert params["embed"]["W"].shape == (5, 4) and params["embed"]["b"].shape == (4,)
    assert params["out"]["W"].shape == (6, 5) and params["out"]["b"].shape == (5,)
    frames = (jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 5)) < 0.4).astype(jnp.float32)
    logits, finals = model.apply(params, model.zero_carry(2), frames)
    assert logits.shape == (2, 4, 5) and len(finals) == 2
    carry = model.zero_carry(2)
    for t in range(4):
        step_logits, carry = model.apply(params, carry, frames[:, t:t + 1])
        np.testing.assert_allclose(step_logits[:, 0], logits[:, t], rtol=1e-5, atol=1e-6)
    assert_trees_close(carry, finals, rtol=1e-5, atol=1e-6, what="carry")
    gen_logits, _ = model.step(params, model.zero_carry(2), frames[:, 0])
    np.testing.assert_allclose(gen_logits, logits[:, 0], rtol=1e-5, atol=1e-6)

    def loss(p):  # predict the next frame; the last step has no target and weight 0
        out, _ = model.apply(p, model.zero_carry(2), frames, dropout_key=jax.random.PRNGKey(2))
        targets = jnp.concatenate([frames[:, 1:], jnp.zeros_like(frames[:, :1])], axis=1)
        total, count = piano.bernoulli_nll(out, targets, jnp.ones((2, 4)).at[:, -1].set(0.0))
        return total / count, out

    (value, dropped), grads = jax.value_and_grad(loss, has_aux=True)(params)
    assert np.isfinite(value) and 0 < value
    assert not np.allclose(dropped, logits)  # dropout is on with a key, off without
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves) and any(np.abs(g).sum() > 0 for g in leaves)
    with pytest.raises(ValueError, match="num_pitches = 5"):
        model.apply(params, model.zero_carry(2), frames[..., :4])
    with pytest.raises(ValueError, match="num_pitches must be a positive integer"):
        piano.PianoRollModel(cells.get("lstm"), 0, 4, 6)


@pytest.mark.parametrize("bad,opcode", [(None, "NONE"), ({1, 2}, "EMPTY_SET"), (b"ab", "BYTES"),
                                        (True, "NEWTRUE")])
def test_pickles_of_other_types_are_refused_before_loading(tmp_path, bad, opcode):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"train": [[[60]]], "valid": bad, "test": [[[60]]]}, protocol=4))
    with pytest.raises(music.UnsafePickleError, match=f"opcode \\w*{opcode}"):
        music.load_piano_rolls(str(path))


def test_a_small_pickle_describing_a_huge_object_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(music, "MAX_STEPS", 1000)
    step = [60, 64]
    seq = [step] * 100  # one list referenced 100 times (memo GET): tiny file, big object
    path = tmp_path / "amp.pkl"
    path.write_bytes(pickle.dumps({"train": [seq] * 50, "valid": [seq], "test": [seq]}, protocol=4))
    assert path.stat().st_size < 1000
    with pytest.raises(ValueError, match="split 'train' has 5000 time steps \\(at most 1000\\)"):
        music.load_piano_rolls(str(path))
