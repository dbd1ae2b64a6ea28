"""Sort-of-CLEVR: determinism of the training and evaluation data, the drawn pixels, answers
recomputed independently (from ``scene()`` and from the pixels themselves), the metrics and the
option checks."""

import math

import jax
import numpy as np
import pytest

from rnn_jax.data import sort_of_clevr
from rnn_jax.data.sort_of_clevr import (
    ANSWERS,
    COLOR_RGB,
    COLORS,
    PAD_ID,
    QUESTION_TYPES,
    RELATIONAL,
    SortOfClevrTask,
    answer_of,
    answer_sums,
    make_task,
)
from rnn_jax.errors import InputError

TASK = make_task(seed=3, valid_size=60, test_size=30)
WHITE = np.ones(3, np.float32)


# ---------------------------------------------------------------------------------- helpers


def _recompute(objects, qtype: str, color: str, size: int) -> str:
    """The answer to a question about ``color``, from ``[{"color", "shape", "center"}]`` (written
    apart from the module's code)."""
    me = next(o for o in objects if o["color"] == color)
    others = [o for o in objects if o["color"] != color]
    y, x = me["center"]
    if qtype == "shape":
        return me["shape"]
    if qtype == "horizontal":
        return "left" if x < size / 2 else "right"
    if qtype == "vertical":
        return "top" if y < size / 2 else "bottom"
    if qtype == "count":
        return str(sum(o["shape"] == me["shape"] for o in objects))
    dist = [math.hypot(o["center"][0] - y, o["center"][1] - x) for o in others]
    # objects are in colour order, so the first of equal distances is the lower index
    pick = dist.index(min(dist)) if qtype == "closest" else dist.index(max(dist))
    return others[pick]["shape"]


def _objects_from_pixels(image: np.ndarray, task: SortOfClevrTask) -> list[dict]:
    """The scene read back from an image: each colour's pixels give the center (their mean) and the
    shape (a full ``s × s`` block is a square)."""
    objects = []
    for k, name in enumerate(task.colors):
        ys, xs = np.nonzero(np.all(image == np.asarray(COLOR_RGB[k], np.float32), axis=-1))
        assert ys.size > 0, f"no {name} pixels"
        s = task.object_size
        assert ys.max() - ys.min() + 1 == s and xs.max() - xs.min() + 1 == s
        shape = "square" if ys.size == s * s else "circle"
        objects.append({"color": name, "shape": shape, "center": (ys.mean() + 0.5, xs.mean() + 0.5)})
    return objects


def _question_parts(task, ids) -> tuple[str, str]:
    """``(question type, colour)`` of a question, recognised from its words."""
    words = task.decode_question(ids).split()
    color = next(w for w in words if w in COLORS)
    text = " ".join("{color}" if w == color else w for w in words)
    qtype = next(t for t, template in sort_of_clevr.TEMPLATES.items() if template == text)
    return qtype, color


def _eval_rows(task, split, batch_size):
    """The real rows of ``eval_batches`` concatenated, as one dict."""
    batches = task.eval_batches(split, batch_size)
    keep = np.concatenate([b["weight"] for b in batches]) > 0
    return {k: np.concatenate([b[k] for b in batches])[keep] for k in batches[0]}


# ---------------------------------------------------------------------------------- vocabulary


def test_vocabulary_sizes_and_question_encoding():
    vocab = TASK.question_vocab
    assert vocab[0] == "<pad>" and PAD_ID == 0
    assert list(vocab[1:]) == sorted(set(vocab[1:])) and set(COLORS) <= set(vocab)
    assert TASK.question_len == max(len(t.split()) for t in sort_of_clevr.TEMPLATES.values()) == 12
    assert TASK.num_answers == len(ANSWERS) == 12
    assert TASK.image_shape == (75, 75, 3)
    assert TASK.question_types == QUESTION_TYPES and TASK.relational == RELATIONAL
    assert math.isclose(TASK.uniform_loss, math.log(12))
    text = "how many objects have the same shape as the orange object ?"
    ids = TASK.encode_question(text)
    assert ids == TASK.encode_question(text.split()) and PAD_ID not in ids
    assert TASK.decode_question(ids + [PAD_ID, PAD_ID]) == text
    assert TASK.decode_question(ids[:3] + [PAD_ID] + ids[3:]) == "how many objects"
    with pytest.raises(InputError, match="'purple'"):
        TASK.encode_question("what shape is the purple object ?")


# ---------------------------------------------------------------------------------- training batches


def test_train_batch_is_a_pure_function_with_the_documented_arrays():
    batch = TASK.train_batch(seed=1, step=5, batch_size=16)
    again = TASK.train_batch(seed=1, step=5, batch_size=16)
    assert sorted(batch) == ["answer", "images", "qtype", "question", "question_lengths", "weight"]
    for k in batch:
        np.testing.assert_array_equal(batch[k], again[k])
    other = TASK.train_batch(seed=1, step=6, batch_size=16)
    assert not np.array_equal(batch["images"], other["images"])
    assert not np.array_equal(batch["images"], TASK.train_batch(seed=2, step=5, batch_size=16)["images"])

    B, Q = 16, TASK.question_len
    expected = {"images": ((B, 75, 75, 3), np.float32), "question": ((B, Q), np.int32),
                "question_lengths": ((B,), np.int32), "answer": ((B,), np.int32), "qtype": ((B,), np.int32),
                "weight": ((B,), np.float32)}
    for k, (shape, dtype) in expected.items():
        assert batch[k].shape == shape and batch[k].dtype == dtype, k
    np.testing.assert_array_equal(batch["weight"], 1.0)
    assert batch["images"].min() >= 0.0 and batch["images"].max() <= 1.0
    # PAD exactly after each question's length
    pad = batch["question"] == PAD_ID
    np.testing.assert_array_equal(pad, np.arange(Q)[None, :] >= batch["question_lengths"][:, None])


def test_train_answers_match_the_pixels():
    """Answers recomputed from objects read back from the images and the decoded questions."""
    for task in (TASK, make_task(num_objects=2, size=40, object_size=7)):
        batch = task.train_batch(seed=0, step=0, batch_size=48)
        seen = set()
        for b in range(48):
            qtype, color = _question_parts(task, batch["question"][b])
            assert QUESTION_TYPES[batch["qtype"][b]] == qtype
            objects = _objects_from_pixels(batch["images"][b], task)
            assert ANSWERS[batch["answer"][b]] == _recompute(objects, qtype, color, task.size)
            seen.add(qtype)
        assert seen == set(QUESTION_TYPES)


# ---------------------------------------------------------------------------------- evaluation splits


def test_eval_splits_are_deterministic_padded_and_balanced():
    rows = _eval_rows(TASK, "valid", 7)
    assert len(rows["answer"]) == TASK.valid_size
    for batch_size in (1, 25, 64):
        other = _eval_rows(TASK, "valid", batch_size)
        for k in rows:
            np.testing.assert_array_equal(rows[k], other[k])

    batches = TASK.eval_batches("valid", 25)  # 60 = 25 + 25 + 10: 15 padding rows
    assert [len(b["weight"]) for b in batches] == [25, 25, 25]
    last = batches[-1]
    np.testing.assert_array_equal(last["weight"], [1.0] * 10 + [0.0] * 15)
    for k in last:
        if k != "weight":
            np.testing.assert_array_equal(last[k][10:], np.broadcast_to(batches[0][k][:1], last[k][10:].shape))
    assert sum(float(b["weight"].sum()) for b in batches) == TASK.valid_size
    assert sum(float(b["weight"].sum()) for b in TASK.eval_batches("test", 64)) == TASK.test_size

    # question type i % 6: every type equally often
    np.testing.assert_array_equal(rows["qtype"], np.arange(TASK.valid_size) % 6)
    np.testing.assert_array_equal(np.bincount(rows["qtype"], minlength=6), [TASK.valid_size // 6] * 6)

    # example i does not depend on the split's size, on the cache, or on the task object
    sort_of_clevr._eval_split.cache_clear()
    bigger = make_task(seed=3, valid_size=90, test_size=30)
    big_rows = _eval_rows(bigger, "valid", 32)
    for k in rows:
        np.testing.assert_array_equal(rows[k], big_rows[k][:TASK.valid_size])
    assert bigger.scene("valid", 17) == TASK.scene("valid", 17)
    # the splits and the task seeds differ
    test_rows = _eval_rows(TASK, "test", 30)
    assert not np.array_equal(rows["images"][:30], test_rows["images"])
    assert make_task(seed=4, valid_size=60).scene("valid", 0) != TASK.scene("valid", 0)


def test_eval_answers_match_an_independent_recomputation_from_the_scene():
    for task in (TASK, make_task(seed=1, num_objects=3, size=33, object_size=7, valid_size=120, test_size=6)):
        rows = _eval_rows(task, "valid", 50)
        for i in range(task.valid_size):
            objects = task.scene("valid", i)
            assert [o["color"] for o in objects] == list(task.colors)
            qtype, color = _question_parts(task, rows["question"][i])
            assert qtype == QUESTION_TYPES[i % 6] == QUESTION_TYPES[rows["qtype"][i]]
            answer = _recompute(objects, qtype, color, task.size)
            assert ANSWERS[rows["answer"][i]] == answer == task.answer_text("valid", i)
            assert task.question_text("valid", i) == task.decode_question(rows["question"][i])
            assert sort_of_clevr.TEMPLATES[qtype].format(color=color) == task.question_text("valid", i)
            # the image of the batch is the example's image
            np.testing.assert_array_equal(rows["images"][i], task.image("valid", i))


def test_ties_go_to_the_lower_index():
    shapes = [0, 1, 0, 0]                                   # square, circle, square, square
    centers = [(10.0, 10.0), (10.0, 20.0), (10.0, 0.0), (30.0, 10.0)]
    closest, furthest = QUESTION_TYPES.index("closest"), QUESTION_TYPES.index("furthest")
    # from object 0, objects 1 and 2 are both 10 away: the closest is object 1 (a circle)
    assert ANSWERS[answer_of(shapes, centers, 40, closest, 0)] == "circle"
    # from object 2, object 3 (sqrt(500) away) is further than object 1 (20 away)
    assert ANSWERS[answer_of(shapes, centers, 40, furthest, 2)] == "square"
    # from object 3: 1 and 2 are equally far (sqrt(500)); the lower index (1, a circle) wins
    assert ANSWERS[answer_of(shapes, centers, 40, furthest, 3)] == "circle"
    assert ANSWERS[answer_of(shapes, centers, 40, QUESTION_TYPES.index("count"), 0)] == "3"


def test_eval_index_and_split_errors():
    with pytest.raises(InputError, match="split"):
        TASK.eval_batches("train", 8)
    with pytest.raises(InputError, match="index"):
        TASK.scene("valid", TASK.valid_size)
    with pytest.raises(InputError, match="batch_size"):
        TASK.eval_batches("valid", 0)


# ---------------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("options", [{}, {"object_size": 7, "size": 40}, {"object_size": 4, "size": 20}])
def test_drawn_objects_have_their_colour_shape_and_place(options):
    task = make_task(seed=5, valid_size=24, test_size=1, **options)
    s = task.object_size
    offset = np.arange(s) + 0.5 - s / 2
    circle_pixels = int(np.sum(offset[:, None] ** 2 + offset[None, :] ** 2 <= (s / 2) ** 2))
    for i in range(task.valid_size):
        image = task.image("valid", i)
        objects = task.scene("valid", i)
        drawn = 0
        for k, obj in enumerate(objects):
            rgb = np.asarray(COLOR_RGB[k], np.float32)
            y, x = obj["center"]
            np.testing.assert_array_equal(image[int(y), int(x)], rgb)
            y0, x0 = int(y - s / 2), int(x - s / 2)
            assert y0 == y - s / 2 and x0 == x - s / 2, "blocks start on a pixel"
            assert 0 <= y0 and y0 + s <= task.size and 0 <= x0 and x0 + s <= task.size
            assert y != task.size / 2 and x != task.size / 2
            mine = np.all(image == rgb, axis=-1)
            inside = mine[y0:y0 + s, x0:x0 + s]
            assert inside.sum() == mine.sum(), "every pixel of the colour is in the object's block"
            for cy, cx in ((y0, x0), (y0, x0 + s - 1), (y0 + s - 1, x0), (y0 + s - 1, x0 + s - 1)):
                expected = rgb if obj["shape"] == "square" else WHITE
                np.testing.assert_array_equal(image[cy, cx], expected)
            assert mine.sum() == (s * s if obj["shape"] == "square" else circle_pixels)
            drawn += int(mine.sum())
            for other in objects[:k]:  # blocks at least two pixels apart: no overlap
                gap = max(abs(other["center"][0] - y), abs(other["center"][1] - x))
                assert gap >= s + 2
        # the rest is white background
        assert int(np.all(image == WHITE, axis=-1).sum()) == task.size ** 2 - drawn


# ---------------------------------------------------------------------------------- metrics


def _hand_batch():
    #            shape horiz vert  clos  furth count (pad)
    qtype = np.array([0, 1, 2, 3, 4, 5, 3, 0], np.int32)
    answer = np.array([0, 2, 5, 1, 0, 8, 0, 1], np.int32)
    predicted = np.array([0, 3, 5, 1, 1, 8, 0, 1], np.int32)  # wrong: horizontal, furthest
    weight = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)
    logits = np.full((8, 12), -2.0, np.float32)
    logits[np.arange(8), predicted] = 3.0
    return logits, {"answer": answer, "qtype": qtype, "weight": weight}


def test_answer_sums_and_metrics_per_type():
    logits, batch = _hand_batch()
    eager = answer_sums(logits, batch)
    jitted = jax.jit(answer_sums)(logits, batch)
    for sums in (eager, jitted):
        assert float(sums["count"]) == 7.0 and float(sums["correct"]) == 5.0
        np.testing.assert_allclose(sums["type_count"], [1, 1, 1, 2, 1, 1])
        np.testing.assert_allclose(sums["type_correct"], [1, 0, 1, 2, 0, 1])
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll = -(logp[np.arange(8), batch["answer"]] * batch["weight"]).sum()
        np.testing.assert_allclose(float(sums["nll"]), nll, rtol=1e-5)
        m = TASK.metrics(sums)
        assert math.isclose(m["loss"], nll / 7, rel_tol=1e-5)
        assert math.isclose(m["accuracy"], 5 / 7)
        assert math.isclose(m["nonrelational_accuracy"], 2 / 3)
        assert math.isclose(m["relational_accuracy"], 3 / 4)
        assert [m[f"accuracy_{t}"] for t in QUESTION_TYPES] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert TASK.answer_sums(logits, batch).keys() == eager.keys()

    # sums added over batches (host side, numpy), and a type with no examples
    host = {k: np.asarray(v) + np.asarray(v) for k, v in eager.items()}
    assert math.isclose(TASK.metrics(host)["accuracy"], 5 / 7)
    empty = dict(host, type_count=np.array([2, 2, 2, 0, 0, 0.0]), type_correct=np.array([1, 1, 1, 0, 0, 0.0]))
    m = TASK.metrics(empty)
    assert math.isnan(m["relational_accuracy"]) and math.isnan(m["accuracy_closest"])
    assert m["nonrelational_accuracy"] == 0.5
    zero = {k: np.zeros_like(np.asarray(v)) for k, v in eager.items()}
    assert all(math.isnan(v) for v in TASK.metrics(zero).values())


def test_uniform_logits_give_the_uniform_loss():
    batch = TASK.train_batch(seed=0, step=0, batch_size=12)
    m = TASK.metrics(answer_sums(np.zeros((12, TASK.num_answers), np.float32), batch))
    assert math.isclose(m["loss"], TASK.uniform_loss, rel_tol=1e-6)


# ---------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options, name, value", [
    ({"num_objects": 7}, "num_objects", "7"),
    ({"num_objects": 1}, "num_objects", "1"),
    ({"size": 10}, "size", "10"),
    ({"size": 40, "object_size": 11}, "object_size", "11"),
    ({"object_size": 3}, "object_size", "3"),
    ({"valid_size": 0}, "valid_size", "0"),
    ({"size": 75.0}, "size", "75.0"),
])
def test_bad_options_name_the_option(options, name, value):
    with pytest.raises(InputError, match=rf"\b{name}={value}\b") as info:
        make_task(**options)
    assert "must be" in str(info.value)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(InputError, match="'num_colors'") as info:
        make_task(num_colors=3)
    for allowed in ("size", "num_objects", "object_size", "valid_size", "test_size"):
        assert allowed in str(info.value)
    assert make_task(seed=2, size=60) == SortOfClevrTask(seed=2, size=60)
