"""Generated tasks (arithmetic, XML, memorization): determinism, correctness, masks, metrics."""

import re

import numpy as np
import pytest

from rnn_jax import data
from rnn_jax.data import tasks

SIZES = {"train": 3000, "valid": 800, "test": 800}


@pytest.mark.parametrize("task", tasks.TASKS)
def test_streams_are_deterministic_and_seeded(task):
    a = tasks.task_corpus(task, seed=3, num_chars=SIZES)
    b = tasks.task_corpus(task, seed=3, num_chars=SIZES)
    c = tasks.task_corpus(task, seed=4, num_chars=SIZES)
    for split in tasks.SPLITS:
        np.testing.assert_array_equal(a.split(split), b.split(split))
        for name, mask in a.marks[split].items():
            np.testing.assert_array_equal(mask, b.marks[split][name])
            assert mask.shape == a.split(split).shape
        assert len(a.split(split)) >= SIZES[split]
    assert not np.array_equal(a.train[:500], c.train[:500])
    assert not np.array_equal(a.train[:500], a.valid[:500])  # splits differ
    # example(index) is the index-th example of the stream
    text = a.vocab.decode(a.valid)
    pieces = [tasks.example(task, 3, "valid", i)[0] for i in range(5)]
    assert text.startswith("".join(pieces))


def _arith_examples(text):
    return [m for m in re.findall(r"[^.]*\.", text)]


def test_arithmetic_answers_and_masks():
    opts = dict(max_digits=4, max_distractors=2)
    c = tasks.task_corpus("arithmetic", seed=0, num_chars={"train": 10, "valid": 4000, "test": 10}, **opts)
    text = c.vocab.decode(c.valid)
    scored = c.marks["valid"]["scored"]
    examples = _arith_examples(text)
    assert len(examples) > 50
    pos = 0
    signs = set()
    for ex in examples:
        head, answer = ex[:-1].split("=")
        question = re.sub("[a-z]", "", head)
        a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)", question).groups()
        assert len(a) <= 4 and len(b) <= 4 and (len(a) == 1 or a[0] != "0")
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        signs.add(int(answer) < 0)
        # distractors: at most 2 letters after each question character, none after '='
        assert all(len(run) <= 2 for run in re.findall("[a-z]+", head))
        # scored: exactly the answer characters and the final '.'
        mask = scored[pos:pos + len(ex)]
        np.testing.assert_array_equal(mask, [False] * (len(head) + 1) + [True] * (len(answer) + 1))
        pos += len(ex)
    assert signs == {True, False}


def test_xml_is_well_formed_and_predictable_mask_is_right():
    c = tasks.task_corpus("xml", seed=1, num_chars={"train": 10, "valid": 5000, "test": 10})
    text = c.vocab.decode(c.valid)
    pred = c.marks["valid"]["predictable"]
    assert c.marks["valid"]["scored"].all()
    expected = np.zeros(len(text), bool)
    stack = []
    ids = c.marks["valid"]["example"]
    for m in re.finditer(r"<(/?)([a-z]+)>", text):
        closing, name = m.group(1), m.group(2)
        assert 2 <= len(name) <= 10
        if m.start() > 0 and ids[m.start()] != ids[m.start() - 1]:
            assert stack == []  # every example is balanced: nothing open at an example boundary
        if closing:
            assert stack and stack.pop() == name  # closes the most recent open tag
            expected[m.start() + 2:m.end()] = True
        else:
            stack.append(name)
    assert re.fullmatch(r"(</?[a-z]+>)+", text)
    np.testing.assert_array_equal(pred[:len(expected)], expected)
    # the generator stops at once when its first draw closes (an empty example, half the time)
    firsts = [tasks.example("xml", 1, "valid", i)[0] for i in range(6)]
    k = next(i for i, t in enumerate(firsts) if t)
    assert text.startswith("".join(firsts)) and ids[len(firsts[k]) - 1] == k
    present = np.unique(ids)  # empty examples leave no characters, hence no ids
    assert 0.3 < 1 - len(present) / (ids.max() + 1) < 0.7


def test_memorization_format():
    c = tasks.task_corpus("memorization", 0, {"train": 10, "valid": 600, "test": 10}, num_symbols=5)
    text = c.vocab.decode(c.valid)
    scored = c.marks["valid"]["scored"]
    for i, ex in enumerate(re.findall(r"[a-z]{5}=[a-z]{5}\.", text)):
        assert ex[:5] == ex[6:11]
        np.testing.assert_array_equal(scored[12 * i:12 * (i + 1)], [False] * 6 + [True] * 5 + [False])
    assert len(text) // 12 == len(re.findall(r"[a-z]{5}=[a-z]{5}\.", text))


@pytest.mark.parametrize("task,options,match", [
    ("arithmetic", {"max_digits": 0}, "max_digits=0"),
    ("arithmetic", {"digits": 3}, "unknown option 'digits'.*max_digits"),
    ("arithmetic", {"negative_prob": 2}, "negative_prob"),
    ("xml", {"min_len": 5, "max_len": 3}, "min_len=5 > max_len=3"),
    ("memorization", {"alphabet": 30}, "at most 26"),
    ("sorting", {}, "task must be one of arithmetic, xml, memorization"),
])
def test_bad_options_are_named(task, options, match):
    with pytest.raises(ValueError, match=match):
        tasks.task_corpus(task, 0, SIZES, **options)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="unknown split\\(s\\) 'val'"):
        tasks.task_corpus("xml", 0, {"val": 100})
    with pytest.raises(ValueError, match="num_chars must be a positive integer, got 10.5"):
        tasks.task_corpus("xml", 0, {"train": 10.5})


def test_accuracies_whole_answers_and_partial_examples():
    # tokens: example 0 = positions 0..5 (scored 3..5), example 1 = 6..11 (scored 9..11)
    marks = {"scored": np.array([0, 0, 0, 1, 1, 1] * 2, bool),
             "example": np.repeat([0, 1], 6).astype(np.int32)}
    positions = np.arange(1, 12)  # targets 1..11: every scored position
    correct = np.ones(11, bool)
    correct[positions == 10] = False  # one wrong character in example 1
    out = tasks.accuracies("arithmetic", correct, positions, marks)
    assert out["accuracy"] == pytest.approx(5 / 6)
    assert out["answer_accuracy"] == pytest.approx(0.5)
    # an example only partly evaluated does not count as a whole answer
    out = tasks.accuracies("arithmetic", correct[:9], positions[:9], marks)
    assert out["answer_accuracy"] == pytest.approx(1.0)
    xml = {"scored": np.ones(4, bool), "example": np.zeros(4, np.int32),
           "predictable": np.array([0, 0, 1, 1], bool)}
    out = tasks.accuracies("xml", np.array([True, False, True]), np.array([1, 2, 3]), xml)
    assert out == {"accuracy": pytest.approx(2 / 3), "predictable_accuracy": pytest.approx(0.5)}


def test_stream_weights_and_eval_positions_line_up_with_targets():
    tokens = np.arange(103, dtype=np.int32)
    mask = tokens % 3 == 0
    streams = data.Streams.from_tokens(tokens, 4)
    w = data.stream_weights(mask, 4)
    np.testing.assert_array_equal(w, (streams.targets_BxS % 3 == 0).astype(np.float32))
    x, y, weights = data.eval_chunks(tokens, 4, 7)
    pos = data.eval_positions(len(tokens), 4, 7)
    assert pos.shape == y.shape
    keep = weights > 0
    np.testing.assert_array_equal(tokens[pos[keep]], y[keep])
    assert (pos[~keep] == -1).all()
    # float frames (piano rolls) stream with a trailing axis
    frames = np.random.default_rng(0).random((41, 3)).astype(np.float32)
    fs = data.Streams.from_tokens(frames, 2)
    assert fs.inputs_BxS.shape == (2, 20, 3) and fs.inputs_BxS.dtype == np.float32
    np.testing.assert_array_equal(fs.targets_BxS[1, 0], frames[21])
    fx, fy, fw = data.eval_chunks(frames, 2, 6)
    assert fx.shape == (4, 2, 6, 3) and fw.shape == (4, 2, 6)


def test_xml_closes_everything_after_max_iters():
    texts = {tasks.example("xml", 0, "train", i, max_iters=1)[0] for i in range(300)}
    assert "" in texts and all(re.fullmatch(r"(<([a-z]+)></\2>)?", t) for t in texts)
    assert any(t for t in texts)


def test_arithmetic_with_signed_operands_is_right():
    c = tasks.task_corpus("arithmetic", 2, {"train": 10, "valid": 3000, "test": 10},
                          max_digits=3, max_distractors=1, negative_prob=0.5)
    seen_negative = 0
    for ex in _arith_examples(c.vocab.decode(c.valid)):
        head, answer = ex[:-1].split("=")
        a, op, b = re.fullmatch(r"(-?\d+)([+-])(-?\d+)", re.sub("[a-z]", "", head)).groups()
        seen_negative += a.startswith("-") + b.startswith("-")
        assert int(answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    assert seen_negative > 10
