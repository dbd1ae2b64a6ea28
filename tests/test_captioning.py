"""Captioning and VQA: digit scenes, the image encoder, the captioner's two decoders (conditioning and
soft attention) against NumPy, decoding under jit, the attention-mass metric, and both kinds through
the one trainer (plain runs, resume, vmapped trials, the Karpathy layout the tests write)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import caption as caption_config
from experiments.configs import vqa as vqa_config
from rnn_jax import attention_figures, decoding, models, rundir, train, trials
from rnn_jax.data import digits, registry, scenes
from rnn_jax.errors import InputError
from rnn_jax.models.captioner import Captioner, attention_mass
from rnn_jax.models.vision import ImageEncoder
from rnn_jax.models.vqa import VQAModel
from tests.trees import assert_records_close, assert_trees_close

QUIET = {"log": lambda msg: None}
TIMES = ("elapsed_s", "train_time_s")


# ----------------------------------------------------------------------------- digit scenes

def test_scenes_are_pure_functions_and_split_by_source_digit():
    task = scenes.make_task(0, valid_size=40, test_size=40)
    a, b = task.train_batch(3, 7, 16), task.train_batch(3, 7, 16)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert not np.array_equal(a["images"], task.train_batch(3, 8, 16)["images"])
    for split in ("valid", "test"):
        used = {o["image"] for s in task.scenes(split) for o in s}
        assert used <= set(digits.split_indices(split).tolist())
    train_rng = np.random.default_rng([0, 0])
    used = {o["image"] for _ in range(50) for o in task._draw(train_rng, digits.split_indices("train"))}
    assert used <= set(digits.split_indices("train").tolist())
    assert not used & set(digits.split_indices("test").tolist())


def test_captions_name_the_objects_left_to_right_and_the_pixels_show_them():
    task = scenes.make_task(1, valid_size=30, test_size=30)
    pixels, labels = digits.load_images()
    rgb = dict(scenes.COLORS)
    for objects, refs, image in zip(task.scenes("valid"), task.references("valid"),
                                    [task.load_image("valid", i) for i in range(30)]):
        lefts = [o["box"][1] for o in objects]
        assert lefts == sorted(lefts) and all(b - a >= 9 for a, b in zip(lefts, lefts[1:]))  # no overlap in x
        words = refs[0].split()
        assert words[:3] == ["a", objects[0]["color"], objects[0]["digit"]]
        assert len(words) == 5 * len(objects) - 2 and words.count("left") == len(objects) - 1
        for o in objects:
            top, left, bottom, right = o["box"]
            assert scenes.DIGIT_WORDS[labels[o["image"]]] == o["digit"]
            expected = np.minimum(pixels[o["image"]][..., None] * np.asarray(rgb[o["color"]], np.float32), 1)
            np.testing.assert_allclose(image[top:bottom, left:right], expected, atol=1e-6)
        mask = np.zeros(image.shape[:2], bool)
        for o in objects:
            mask[o["box"][0]:o["box"][2], o["box"][1]:o["box"][3]] = True
        assert np.all(image[~mask] == 0)


def test_scene_batches_pad_and_index_the_evaluation_split():
    task = scenes.make_task(0, valid_size=10, test_size=10, max_objects=2, width=24)
    batches = task.eval_batches("valid", 4)
    assert [int(b["weight"].sum()) for b in batches] == [4, 4, 2]
    assert batches[-1]["index"].tolist()[:2] == [8, 9]
    vocab = task.vocab
    for b in batches:
        for row in range(int(b["weight"].sum())):
            i = int(b["index"][row])
            assert " ".join(vocab.decode(b["tokens"][row])) == task.references("valid")[i][0]
            assert b["lengths"][row] == len(task.references("valid")[i][0].split()) + 1
    assert task.max_len >= max(b["lengths"].max() for b in batches)


@pytest.mark.parametrize("options,match", [
    ({"max_objects": 6}, "max_objects"), ({"num_colors": 9}, "num_colors"), ({"width": 20}, "width"),
    ({"min_objects": 3, "max_objects": 2}, "max_objects"), ({"colour": 2}, "colour"), ({"height": 4}, "height")])
def test_bad_scene_options_are_refused_by_name(options, match):
    with pytest.raises(InputError, match=match):
        registry.make("digit_scenes", 0, options)


# ----------------------------------------------------------------------------- the image encoder

def test_the_encoder_gives_a_grid_with_coordinates_and_maps_boxes_to_cells():
    enc = ImageEncoder("images", (16, 40, 3), channels=(4, 6), strides=(2, 2))
    assert enc.grid == (4, 10) and enc.num_locations == 40 and enc.feature_size == 8
    params = enc.init(jax.random.PRNGKey(0))
    f = enc.apply(params, jnp.ones((2, 16, 40, 3)))
    assert f.shape == (2, 40, 8)
    np.testing.assert_allclose(f[0, 0, -2:], [-0.75, -0.9])   # cell (0, 0): centre (y, x) normalised
    np.testing.assert_allclose(f[0, 39, -2:], [0.75, 0.9])
    region = enc.region((2, 5, 10, 13)).reshape(4, 10)          # rows 0..2 (pixels 0-11), cols 1..3 (4-15)
    assert region.sum() == 9 and region[0:3, 1:4].all()
    flat = ImageEncoder("features", (7, 5))
    assert flat.grid is None and flat.feature_size == 5 and flat.apply({}, jnp.ones((3, 7, 5))).shape == (3, 7, 5)
    grid = ImageEncoder("features", (2, 3, 5))
    assert grid.apply({}, jnp.ones((1, 2, 3, 5))).shape == (1, 6, 7)
    with pytest.raises(InputError, match=r"must have shape \[B, 16, 40, 3\]"):
        enc.apply(params, jnp.ones((2, 16, 41, 3)))
    with pytest.raises(InputError, match="strides"):
        ImageEncoder("images", (16, 40, 3), channels=(4,), strides=(2, 2))


# ----------------------------------------------------------------------------- the captioner

def _captioner(attention, cell="rnn", **kw):
    enc = ImageEncoder("features", (2, 3, 4))    # a 2x3 grid of 4 features (+2 coordinates)
    return Captioner(enc, cell, vocab_size=9, hidden_size=5, embed_size=3, attention=attention, **kw)


def _batch(rng, B=3, T=4):
    tokens = rng.integers(3, 9, size=(B, T)).astype(np.int32)
    lengths = np.array([T, 2, 3][:B], np.int32)
    return {"features": rng.normal(size=(B, 2, 3, 4)).astype(np.float32), "tokens": tokens,
            "lengths": lengths, "weight": np.ones(B, np.float32)}


def _numpy_rnn_captioner(model, p, batch):
    """Independent NumPy teacher forcing of the captioner with a vanilla RNN cell (module docstring)."""
    p = jax.tree.map(np.asarray, p)
    B = len(batch["tokens"])
    yx = np.array([[y, x] for y in (-0.5, 0.5) for x in (-2 / 3, 0.0, 2 / 3)], np.float32)  # 2x3 cell centres
    f = np.concatenate([batch["features"].reshape(B, 6, 4), np.broadcast_to(yx, (B, 6, 2))], axis=-1)
    B, T = batch["tokens"].shape
    inputs = np.concatenate([np.full((B, 1), model.bos_id), batch["tokens"][:, :-1]], axis=1)
    d = p["decoder"]
    W_x, W_h, b = d["W_xh"], d["W_hh"], d["b_h"]
    logits, alphas = np.zeros((B, T, 9)), np.zeros((B, T, 6))
    if model.attention == "soft":
        h = np.tanh(f.mean(1) @ p["init"]["W"] + p["init"]["b"])
    else:
        v = np.tanh(f.reshape(B, -1) @ p["cond"]["W"] + p["cond"]["b"])
        h = np.tanh(v @ p["init"]["W"] + p["init"]["b"]) if model.sets_state else np.zeros((B, 5))
    for t in range(T):
        x = p["embed"][inputs[:, t]]
        if model.attention == "soft":
            a = p["attention"]
            e = np.tanh((h @ a["W_q"])[:, None, :] + f @ a["W_k"]) @ a["w_a"]
            alpha = np.exp(e - e.max(1, keepdims=True))
            alpha /= alpha.sum(1, keepdims=True)
            beta = 1 / (1 + np.exp(-(h @ p["gate"]["w"] + p["gate"]["b"]))) if model.gate else np.ones(B)
            z = beta[:, None] * np.einsum("bl,bld->bd", alpha, f)
            h = np.tanh(np.concatenate([x, z], -1) @ W_x + h @ W_h + b)
            o = np.tanh(np.concatenate([h, z], -1) @ p["combine"]["W"] + p["combine"]["b"])
            alphas[:, t] = alpha
        else:
            xin = np.concatenate([x, v], -1) if model.feeds_v else x
            h = np.tanh(xin @ W_x + h @ W_h + b)   # h_t = tanh(W_hh h + W_xh x + W_ih v): the lecture's step
            o = h
        logits[:, t] = o @ p["out"]["W"] + p["out"]["b"]
    return logits, alphas


@pytest.mark.parametrize("attention,kw", [("soft", {}), ("soft", {"gate": False}), ("none", {}),
                                          ("none", {"condition": "input"}), ("none", {"condition": "init"})])
def test_the_captioner_matches_numpy(attention, kw):
    model = _captioner(attention, penalty=0.5, **kw)
    params = model.init(jax.random.PRNGKey(1))
    if "gate" in params:  # a non-trivial gate
        params["gate"] = {"w": jnp.linspace(-1, 1, 5), "b": jnp.float32(0.3)}
    batch = _batch(np.random.default_rng(0))
    logits, alpha = model.teacher_forced(params, batch)
    want_logits, want_alpha = _numpy_rnn_captioner(model, params, batch)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-4, atol=1e-6)
    # the loss: per-token NLL over the valid positions, plus λ Σ_i (1 - Σ_t α_ti)² per caption
    objective, sums = model.loss(params, batch)
    logp = jax.nn.log_softmax(jnp.asarray(want_logits), -1)
    valid = np.arange(4)[None, :] < batch["lengths"][:, None]
    nll = -np.take_along_axis(np.asarray(logp), batch["tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["nll"], (nll * valid).sum(), rtol=1e-5)
    penalty = ((1 - (want_alpha * valid[..., None]).sum(1)) ** 2).sum() if attention == "soft" else 0.0
    np.testing.assert_allclose(sums["penalty"], penalty, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(objective, (nll * valid).sum() / valid.sum() + model.penalty * penalty / 3, rtol=1e-5)


def test_padding_past_the_caption_cannot_change_the_loss_and_gradients_flow_everywhere():
    model = _captioner("soft", cell="lstm")
    params = model.init(jax.random.PRNGKey(2))
    batch = _batch(np.random.default_rng(1))
    other = dict(batch, tokens=batch["tokens"].copy())
    other["tokens"][1, 2:] = 0
    np.testing.assert_allclose(model.loss(params, batch)[0], model.loss(params, other)[0], rtol=1e-6)
    grads = jax.grad(lambda p: model.loss(p, batch)[0])(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), path
        if "embed" not in jax.tree_util.keystr(path):
            assert np.any(g != 0), jax.tree_util.keystr(path)


def test_decoding_an_image_under_jit_agrees_with_teacher_forcing():
    model = _captioner("soft", cell="gru")
    params = model.init(jax.random.PRNGKey(3))
    feats = np.random.default_rng(2).normal(size=(4, 2, 3, 4)).astype(np.float32)
    out = decoding.greedy(model, params, feats, None, max_len=5)
    # feeding the greedy tokens back through teacher forcing gives the same argmaxes and attention
    batch = {"features": feats, "tokens": np.asarray(out.tokens), "lengths": np.asarray(out.lengths),
             "weight": np.ones(4, np.float32)}
    logits, alpha = model.teacher_forced(params, batch)
    masked = jnp.where(jnp.arange(9) < 2, -jnp.inf, logits)  # PAD and BOS are never generated
    for b in range(4):
        n = int(out.lengths[b])
        np.testing.assert_array_equal(np.argmax(masked[b, :n], -1), np.asarray(out.tokens[b, :n]))
        np.testing.assert_allclose(out.attention[b, :n], alpha[b, :n], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.attention).sum(-1)[np.asarray(out.attention).sum(-1) > 0], 1, rtol=1e-5)
    beams = decoding.beam_search(model, params, feats, None, beam_size=1, max_len=5, alpha=0.0)
    np.testing.assert_array_equal(beams.tokens[:, 0], out.tokens)
    beams = decoding.beam_search(model, params, feats, None, beam_size=3, max_len=5, alpha=0.0)
    assert beams.tokens.shape == (4, 3, 5) and np.all(np.diff(np.asarray(beams.scores), axis=1) <= 1e-6)
    with pytest.raises(InputError, match="features must have shape"):
        decoding.greedy(model, params, feats[:, :1], None, max_len=5)


def test_attention_mass_counts_the_named_objects_region():
    enc = ImageEncoder("images", (8, 16, 3), channels=(2,), strides=(4,))   # a 2x4 grid of 4x4 cells
    task = scenes.make_task(0, height=8, width=17, max_objects=2)
    vocab = task.vocab
    objects = [[{"color": "red", "digit": "one", "box": (0, 0, 4, 4)},
                {"color": "blue", "digit": "two", "box": (4, 12, 8, 16)}]]
    tokens = np.array([vocab.encode("a red one left of a blue two".split()) + [vocab.eos_id]])
    attention = np.zeros((1, tokens.shape[1], 8))
    attention[0, 2, 0] = 0.7      # "one": 0.7 on cell (0, 0), its object's only cell
    attention[0, 7, 7] = 0.4      # "two": 0.4 on cell (1, 3)
    total, events = attention_mass(enc, objects, tokens, attention, vocab, scenes.DIGIT_WORDS)
    assert events == 2 and total == pytest.approx(1.1)


# ----------------------------------------------------------------------------- VQA

def test_the_vqa_model_reads_the_question_up_to_its_length_and_attends_over_the_grid():
    enc = ImageEncoder("images", (12, 12, 3), channels=(3,), strides=(3,))
    for attention in ("soft", "none"):
        model = VQAModel(enc, "gru", vocab_size=7, num_answers=4, hidden_size=6, embed_size=3, attention=attention,
                         glimpses=2, mlp_size=8)
        params = model.init(jax.random.PRNGKey(0))
        rng = np.random.default_rng(0)
        batch = {"images": rng.random((2, 12, 12, 3)).astype(np.float32),
                 "question": np.array([[1, 2, 3, 0], [4, 5, 0, 0]], np.int32),
                 "question_lengths": np.array([3, 2], np.int32), "answer": np.array([1, 3], np.int32),
                 "weight": np.ones(2, np.float32)}
        logits, alpha = model.forward(params, batch)
        changed = dict(batch, question=np.array([[1, 2, 3, 6], [4, 5, 6, 6]], np.int32))
        np.testing.assert_allclose(model.forward(params, changed)[0], logits, rtol=1e-6)
        assert logits.shape == (2, 4)
        if attention == "soft":
            assert alpha.shape == (2, 2, 16)
            np.testing.assert_allclose(alpha.sum(-1), 1, rtol=1e-5)
        else:
            assert alpha is None
        loss, sums = model.loss(params, batch)
        assert sums["count"] == 2 and np.isfinite(loss)


def _numpy_glimpses(f, q, glimpses):
    """The stacked softmax glimpses, written apart from the module in float64."""
    u, maps = q.astype(np.float64), []
    for g in glimpses:
        scores = np.tanh((u @ g["W_q"])[:, None, :] + f @ g["W_f"]) @ g["w"]
        alpha = np.exp(scores - scores.max(-1, keepdims=True))
        alpha /= alpha.sum(-1, keepdims=True)
        u = u + np.einsum("bl,bld->bd", alpha, f) @ g["W_g"]
        maps.append(alpha)
    return u, np.stack(maps, 1)


_OBJECT = np.array([1.0, -1.0, 0.5, 0.0], np.float32)


def _copies() -> np.ndarray:
    """``[3, 5, 4]`` features: scene k holds k + 1 copies of ``_OBJECT`` in its first cells, the
    other cells zero."""
    scenes = np.zeros((3, 5, 4), np.float32)
    for k in range(3):
        scenes[k, :k + 1] = _OBJECT
    return scenes


def test_the_glimpses_follow_their_equations_and_average_what_they_attend():
    enc = ImageEncoder("features", (5, 4))
    model = VQAModel(enc, "gru", vocab_size=7, num_answers=4, hidden_size=6, embed_size=3, glimpses=2, mlp_size=8,
                     attention_size=5)
    params = model.init(jax.random.PRNGKey(3))
    rng = np.random.default_rng(2)
    f, q = rng.normal(size=(3, 5, 4)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    u, alpha = model.attend(params, f, q)
    want_u, want_alpha = _numpy_glimpses(f, q, jax.tree.map(lambda a: np.asarray(a, np.float64), params["glimpses"]))
    np.testing.assert_allclose(alpha, want_alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(u, want_u, rtol=1e-4, atol=1e-5)
    # a glimpse that puts all its weight on the cells it picks out reads the same vector over 1, 2 or
    # 3 identical copies (the other cells zero): a softmax glimpse averages what it attends to
    pick = {"W_q": jnp.zeros((6, 5)), "W_f": jnp.zeros((4, 5)).at[:, 0].set(3 * _OBJECT),
            "w": jnp.zeros(5).at[0].set(30.0), "W_g": params["glimpses"][0]["W_g"]}
    scenes = _copies()
    one = VQAModel(enc, "gru", vocab_size=7, num_answers=4, hidden_size=6, embed_size=3, glimpses=1, mlp_size=8,
                   attention_size=5)
    reads, maps = one.attend({"glimpses": [pick]}, scenes, np.zeros((3, 6), np.float32))
    np.testing.assert_allclose(reads[1:], reads[:1].repeat(2, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps[:, 0, :3].sum(-1), 1, rtol=1e-4)
    assert np.linalg.norm(reads[0]) > 1e-2


def test_the_relation_head_compares_the_first_glimpse_with_every_cell():
    enc = ImageEncoder("features", (5, 4))
    kw = dict(vocab_size=7, num_answers=4, hidden_size=6, embed_size=3, glimpses=2, mlp_size=8, attention_size=5)
    model, plain = VQAModel(enc, "gru", relation=3, **kw), VQAModel(enc, "gru", **kw)
    params = model.init(jax.random.PRNGKey(3))
    assert {k: v.shape for k, v in params["relation"].items()} == {
        "W_a": (4, 3), "W_b": (4, 3), "W_c": (6, 3), "b_1": (3,), "W_2": (3, 3), "b_2": (3,), "W_o": (3, 6)}
    params["relation"] = jax.tree.map(lambda w: w + 0.2, params["relation"])   # biases too, so no unit is dead
    rng = np.random.default_rng(7)
    f, q = rng.normal(size=(3, 5, 4)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    u_K, maps = _numpy_glimpses(f, q, as64(params["glimpses"]))
    p = as64(params["relation"])
    r = np.einsum("bl,bld->bd", maps[:, 0], f)
    h = np.maximum((r @ p["W_a"] + q @ p["W_c"] + p["b_1"])[:, None, :] + f @ p["W_b"], 0)
    h = np.maximum(h @ p["W_2"] + p["b_2"], 0)
    u, alpha = model.attend(params, f, q)
    np.testing.assert_allclose(alpha, maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(u, u_K + h.mean(1) @ p["W_o"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(u, plain.attend(params, f, q)[0], atol=1e-3)
    batch = {"images": f, "question": np.array([[1, 2]] * 3, np.int32),
             "question_lengths": np.array([2, 2, 1], np.int32), "answer": np.array([0, 1, 3], np.int32)}
    grads = jax.grad(lambda p: model.loss(p, batch)[0])(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["relation"]))
    # over 1, 2 or 3 copies of what the glimpse picks out (the other cells zero), the averaged
    # comparisons change with the number of copies where the glimpse's reading does not
    scenes = _copies()
    pick = np.zeros((3, 5), np.float32)
    pick[np.arange(3)[:, None] >= np.arange(5)[None, :]] = 1
    pick /= pick.sum(-1, keepdims=True)   # α spread evenly over the copies
    relate = np.asarray(model.relate(params["relation"], scenes, np.zeros((3, 6), np.float32), pick))
    reads = np.einsum("bl,bld->bd", pick, scenes)
    np.testing.assert_allclose(reads[1:], reads[:1].repeat(2, 0), rtol=1e-6)
    assert np.linalg.norm(relate[1] - relate[0]) > 1e-3 and np.linalg.norm(relate[2] - relate[1]) > 1e-3
    # the first glimpse is trained through r as well: its gradient differs from the plain model's
    plain_grads = jax.grad(lambda p: plain.loss(p, batch)[0])(params)
    assert not np.allclose(grads["glimpses"][0]["W_f"], plain_grads["glimpses"][0]["W_f"], atol=1e-6)
    with pytest.raises(InputError, match="relation compares the first glimpse's object"):
        VQAModel(enc, "gru", attention="none", relation=3, **kw)
    for bad in (-1, 2.5, True):
        with pytest.raises(InputError, match="relation must be an integer >= 0 \\(0: no relation head\\)"):
            VQAModel(enc, "gru", relation=bad, **kw)
    with pytest.raises(InputError, match="relation=-1: must be an integer >= 0"):
        vqa_config.get_config("relation=-1")
    with pytest.raises(InputError, match="relation=4 compares .* attention=none has no glimpse"):
        vqa_config.get_config("attention=none,relation=4")
    assert vqa_config.get_config("relation=64").model.relation == 64
    old = vqa_config.get_config("runlocal")   # a config written before the relation head has none
    del old.model["relation"]
    train.validate_config(old)
    problem = train.make_problem(old)
    assert problem.model.relation == 0 and "relation" not in problem.init(old, jax.random.PRNGKey(0))


def _numpy_film_stage(x, kernel, scale, bias, gamma, beta, stride=1, eps=1e-6):
    """One CNN stage with FiLM, written apart from the module: a SAME-padded 3×3 convolution with
    ``stride`` (XLA's SAME: the total padding split with its smaller half before, the odd pixel
    after), instance normalisation with scale and shift, ``(1 + γ) ⊙ · + β``, ReLU."""
    B, H, W, _ = x.shape
    out_h, out_w = -(-H // stride), -(-W // stride)
    pad_h, pad_w = max((out_h - 1) * stride + 3 - H, 0), max((out_w - 1) * stride + 3 - W, 0)
    padded = np.pad(x.astype(np.float64), ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                                           (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((B, out_h, out_w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            window = padded[:, dy:dy + (out_h - 1) * stride + 1:stride, dx:dx + (out_w - 1) * stride + 1:stride]
            out += np.einsum("bhwc,cd->bhwd", window, kernel[dy, dx])
    normed = (out - out.mean(axis=(1, 2), keepdims=True)) / np.sqrt(out.var(axis=(1, 2), keepdims=True) + eps)
    y = normed * scale + bias
    return np.maximum((1 + gamma[:, None, None, :]) * y + beta[:, None, None, :], 0)


def test_film_conditions_every_stage_as_written_and_shares_the_first_stage_per_image():
    rng = np.random.default_rng(0)
    noisy = lambda tree: jax.tree.map(lambda p: p + jnp.asarray(rng.normal(size=p.shape), p.dtype) * 0.3, tree)
    index = np.array([1, 0, 1], np.int32)
    # one stride-1 stage
    enc = ImageEncoder("images", (6, 5, 3), channels=(4,), strides=(1,), coords=False)
    params = noisy(enc.init(jax.random.PRNGKey(1)))
    images = rng.random((2, 6, 5, 3)).astype(np.float32)
    gamma, beta = (rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    cnn = jax.tree.map(np.asarray, params["cnn"])
    want = _numpy_film_stage(images[index], cnn["conv0"]["kernel"], cnn["norm0"]["scale"], cnn["norm0"]["bias"],
                             gamma, beta)
    np.testing.assert_allclose(enc.apply(params, images, [(gamma, beta)], index), want.reshape(3, 30, 4), rtol=1e-4,
                               atol=1e-5)
    zero = [(np.zeros((2, 4), np.float32),) * 2]
    np.testing.assert_allclose(enc.apply(params, images, zero), enc.apply(params, images), rtol=1e-6, atol=1e-7)
    # two strided stages, each conditioned; the index path equals the images repeated per question
    deep = ImageEncoder("images", (9, 8, 3), channels=(3, 5), strides=(2, 2))
    deep_params = noisy(deep.init(jax.random.PRNGKey(2)))
    film = [(rng.normal(size=(3, c)).astype(np.float32), rng.normal(size=(3, c)).astype(np.float32)) for c in (3, 5)]
    images = rng.random((2, 9, 8, 3)).astype(np.float32)
    got = deep.apply(deep_params, images, film, index)
    cnn = jax.tree.map(np.asarray, deep_params["cnn"])
    x = images[index]
    for k in range(2):
        x = _numpy_film_stage(x, cnn[f"conv{k}"]["kernel"], cnn[f"norm{k}"]["scale"], cnn[f"norm{k}"]["bias"],
                              *film[k], stride=2)
    assert x.shape == (3, 3, 2, 5) and got.shape == (3, 6, 7)
    np.testing.assert_allclose(got[..., :5], x.reshape(3, 6, 5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got, deep.apply(deep_params, images[index], film), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="one \\(gamma, beta\\) pair per CNN stage \\(2\\); got 1"):
        deep.apply(deep_params, images, film[:1])
    with pytest.raises(InputError, match="film stage 0: gamma and beta must be \\[2, 3\\]"):
        deep.apply(deep_params, images, film)          # three questions' FiLM, two images, no index
    with pytest.raises(InputError, match="precomputed features"):
        ImageEncoder("features", (4, 6)).apply({}, np.zeros((1, 4, 6)), film)


def test_a_film_vqa_model_starts_as_the_unconditioned_one_and_then_reads_the_image_per_question():
    enc = ImageEncoder("images", (12, 12, 3), channels=(3, 4), strides=(2, 2))
    rng = np.random.default_rng(1)
    batch = {"images": rng.random((1, 12, 12, 3)).astype(np.float32), "image_index": np.zeros(2, np.int32),
             "question": np.array([[1, 2, 3], [1, 5, 3]], np.int32), "question_lengths": np.array([3, 3], np.int32),
             "answer": np.array([1, 3], np.int32), "weight": np.ones(2, np.float32)}
    for attention in ("soft", "none"):
        kw = dict(vocab_size=7, num_answers=4, hidden_size=6, embed_size=3, attention=attention, mlp_size=8)
        film, plain = VQAModel(enc, "gru", film=True, **kw), VQAModel(enc, "gru", **kw)
        params = film.init(jax.random.PRNGKey(0))
        assert {k: v.shape for k, v in params["film"][1].items()} == {"W_gamma": (6, 4), "W_beta": (6, 4)}
        plain_params = {k: v for k, v in params.items() if k != "film"}
        jax.tree.map(np.testing.assert_array_equal, plain_params, plain.init(jax.random.PRNGKey(0)))
        np.testing.assert_allclose(film.forward(params, batch)[0], plain.forward(plain_params, batch)[0], rtol=1e-6)
        grads = jax.grad(lambda p: film.loss(p, batch)[0])(params)
        assert all(float(jnp.abs(g["W_gamma"]).sum()) > 0 for g in grads["film"])
    # with the FiLM weights trained away from zero, the same image gives each question its own grid
    params["film"] = jax.tree.map(lambda w: jnp.asarray(rng.normal(size=w.shape), w.dtype), params["film"])
    q = film.question_state(params, batch["question"], batch["question_lengths"])
    grids = enc.apply(params["encoder"], batch["images"],
                      [(q @ p["W_gamma"], q @ p["W_beta"]) for p in params["film"]], batch["image_index"])
    assert not np.allclose(grids[0], grids[1])
    with pytest.raises(InputError, match="precomputed features have no CNN"):
        VQAModel(ImageEncoder("features", (4, 6)), "gru", vocab_size=7, num_answers=4, film=True)
    with pytest.raises(InputError, match="film must be 0 .* or 1"):
        vqa_config.get_config("film=2")
    config = vqa_config.get_config(None)
    assert (config.model.film, config.model.embed_scale) == (True, 1.0)
    old = vqa_config.get_config("runlocal")   # a config written before FiLM rebuilds the plain CNN
    del old.model["film"]
    train.validate_config(old)
    assert train.make_problem(old).model.film is False
    assert vqa_config.get_config("film=0").model.film is False


# ----------------------------------------------------------------------------- through the trainer

@pytest.mark.parametrize("module,arg,metric", [
    (caption_config, "runlocal", "bleu_4"),
    (caption_config, "runlocal,attention=none,cell=gru", "bleu_4"),
    (vqa_config, "runlocal", "accuracy"),
    (vqa_config, "runlocal,attention=none", "relational_accuracy"),
    (vqa_config, "runlocal,film=0", "accuracy"),
    (vqa_config, "runlocal,relation=4", "relational_accuracy"),
])
def test_captioning_and_vqa_train_through_the_one_loop(tmp_path, module, arg, metric):
    config = module.get_config(arg)
    result = train.train_and_evaluate(config, str(tmp_path), **QUIET)
    assert result["status"] == "completed" and result["step"] == config.train.num_steps
    for key in (f"best_valid_{metric}", f"final_test_{metric}", f"test_{metric}", "test_loss"):
        assert 0.0 <= result[key] <= 1.0 or key == "test_loss", key
    evals = [r for r in rundir.read_metrics(str(tmp_path)) if "valid_loss" in r]
    assert [r["step"] for r in evals] == [10, 20] and f"valid_{metric}" in evals[0]
    if config.model.kind == "caption":
        assert {"valid_cider_d", "valid_rouge_l", "valid_bleu_1", "valid_attribute_recall"} <= set(evals[0])
        assert ("valid_attention_mass" in evals[0]) == (config.model.attention == "soft")
    else:
        assert {"valid_nonrelational_accuracy", "valid_accuracy_count"} <= set(evals[0])
    assert "=== step 10" in open(tmp_path / "samples.txt").read()
    problem, params, _ = train.load_problem(str(tmp_path), log=lambda m: None)
    assert problem.evaluator()(params, "test")[metric] == pytest.approx(result[f"test_{metric}"])
    if config.model.kind == "vqa":   # film=1 is the config's default
        assert ("film" in params) == problem.model.film == ("film=0" not in arg)
        assert ("relation" in params) == (problem.model.relation == 4) == ("relation=4" in arg)
    if config.model.attention == "soft":  # the pictures of its attention
        if config.model.kind == "caption":
            examples = attention_figures.caption_examples(problem, params, "test", 3)
            assert len(examples) == 3 and all(e["alpha"].shape[1] == problem.model.encoder.num_locations
                                              for e in examples)
            attention_figures.caption_overlays(examples, problem.model.encoder, str(tmp_path / "overlays.png"))
            assert (tmp_path / "overlays.png").stat().st_size > 1000
        else:
            examples = attention_figures.vqa_examples(problem, params, "test", 3)
            assert [e["truth"] for e in examples] == [problem.task_obj.answer_text("test", i) for i in range(3)]
            attention_figures.vqa_maps(examples, problem.model.encoder, str(tmp_path / "vqa.png"))
            assert (tmp_path / "vqa.png").stat().st_size > 1000
    else:
        with pytest.raises(InputError, match="no attention"):
            (attention_figures.caption_examples if config.model.kind == "caption" else
             attention_figures.vqa_examples)(problem, params, "test", 2)


def test_a_caption_run_resumes_bit_for_bit(tmp_path):
    train.train_and_evaluate(caption_config.get_config("runlocal,dropout=0.2"), str(tmp_path / "whole"), **QUIET)
    train.train_and_evaluate(caption_config.get_config("runlocal,dropout=0.2,steps=10"), str(tmp_path / "split"),
                             **QUIET)
    train.train_and_evaluate(caption_config.get_config("runlocal,dropout=0.2"), str(tmp_path / "split"), **QUIET)
    load = lambda d: train.load_problem(str(d), which="latest", log=lambda m: None)[1]
    jax.tree.map(np.testing.assert_array_equal, load(tmp_path / "whole"), load(tmp_path / "split"))
    assert_records_close(rundir.read_metrics(str(tmp_path / "whole")), rundir.read_metrics(str(tmp_path / "split")),
                         rtol=0, atol=0, ignore=TIMES, what="metrics")


def test_vqa_trials_equal_separate_runs(tmp_path):
    # SGD: under Adam, directions the instance normalisation leaves with a zero gradient get steps
    # from rounding noise, which differs between a vmapped and a plain convolution
    args = ("runlocal,seed=0,lr=0.1,optimizer=sgd", "runlocal,seed=1,lr=0.3,optimizer=sgd")
    results = trials.train_trials([vqa_config.get_config(a) for a in args], [tmp_path / "t0", tmp_path / "t1"],
                                  **QUIET)
    for i, arg in enumerate(args):
        single = train.train_and_evaluate(vqa_config.get_config(arg), str(tmp_path / f"s{i}"), **QUIET)
        for key, value in single.items():
            if key not in TIMES and isinstance(value, float):
                assert results[i][key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
        assert_trees_close(train.load_problem(str(tmp_path / f"t{i}"), which="latest", log=lambda m: None)[1],
                           train.load_problem(str(tmp_path / f"s{i}"), which="latest", log=lambda m: None)[1],
                           rtol=1e-4, atol=1e-5)
    assert results[0]["best_valid_loss"] != results[1]["best_valid_loss"]


def test_caption_trials_evaluate_each_trial(tmp_path):
    args = ("runlocal,seed=0", "runlocal,seed=1,lr=0.01")
    results = trials.train_trials([caption_config.get_config(a) for a in args], [tmp_path / "t0", tmp_path / "t1"],
                                  **QUIET)
    single = train.train_and_evaluate(caption_config.get_config(args[1]), str(tmp_path / "s1"), **QUIET)
    for key in ("test_loss", "test_bleu_4", "test_cider_d", "best_valid_loss"):
        assert results[1][key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key


def _write_karpathy(root, with_images=True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1)}
    images, feats = [], {}
    splits = ["train", "train", "restval", "train", "val", "test"]
    for i, split in enumerate(splits):
        name = list(colours)[i % 4]
        filename = f"im{i}.png"
        if with_images:
            (root / "images").mkdir(exist_ok=True)
            plt.imsave(root / "images" / filename, np.ones((10, 10, 3)) * np.asarray(colours[name], float))
        feats[filename] = np.full((2, 2, 3), i, np.float32)
        images.append({"filename": filename, "split": split,
                       "sentences": [{"tokens": ["a", name, "square"]}, {"tokens": ["the", name, "image"]}]})
    (root / "data.json").write_text(json.dumps({"images": images, "dataset": "tiny"}))
    np.savez(root / "feats.npz", **feats)


@pytest.mark.parametrize("source", ["images", "features"])
def test_a_karpathy_layout_dataset_trains_and_is_scored_with_coco_metrics(tmp_path, source):
    _write_karpathy(tmp_path)
    extra = (f"image_dir={tmp_path / 'images'},image_size=8" if source == "images"
             else f"features={tmp_path / 'feats.npz'}")
    config = caption_config.get_config(f"task=karpathy,json={tmp_path / 'data.json'},{extra},runlocal,steps=4,"
                                       "eval_every=2,max_len=6")
    assert models.kind_name(config) == "caption"
    result = train.train_and_evaluate(config, str(tmp_path / "run"), **QUIET)
    assert result["status"] == "completed"
    for key in ("test_bleu_4", "test_cider_d", "test_rouge_l", "test_bleu_1"):
        assert key in result and 0 <= result[key] <= 10
    assert "test_attribute_recall" not in result     # no objects in real data
    both = caption_config.get_config(f"task=karpathy,json={tmp_path / 'data.json'},image_dir={tmp_path},"
                                     f"features={tmp_path / 'feats.npz'},runlocal")
    with pytest.raises(InputError, match="image_dir"):
        train.validate_config(both)


def test_bad_caption_and_vqa_settings_are_refused_by_name():
    with pytest.raises(InputError, match="attention"):
        caption_config.get_config("attention=hard")
    with pytest.raises(InputError, match="beam"):
        caption_config.get_config("beam=0")
    with pytest.raises(InputError, match="penalty"):
        caption_config.get_config("penalty=-1")
    config = caption_config.get_config("runlocal")
    config.model.num_layers = 2
    with pytest.raises(InputError, match="model.num_layers = 2"):
        train.validate_config(config)
    config = vqa_config.get_config("runlocal")
    config.model.attention = "hard"
    with pytest.raises(InputError, match="model.attention = 'hard'"):
        train.validate_config(config)
    with pytest.raises(InputError, match="glimpses"):
        vqa_config.get_config("glimpses=0")


def test_the_comparison_and_reports_take_the_new_tasks():
    from experiments.configs import tasks as tasks_config
    from rnn_jax import report
    from rnn_jax.sweep import compare

    assert compare.check_tasks(["digit_scenes", "sort_of_clevr"], {}) == ["digit_scenes", "sort_of_clevr"]
    with pytest.raises(InputError, match="karpathy"):
        compare.check_tasks(["karpathy"], {})   # it reads the user's dataset: train it with caption.py
    assert report.task_metric("digit_scenes").test == "test_bleu_4"
    assert report.task_metric("sort_of_clevr").second == "test_relational_accuracy"
    for task, kind in (("digit_scenes", "caption"), ("sort_of_clevr", "vqa")):
        config = tasks_config.get_config(f"task={task},cell=gru,runlocal")
        assert (config.model.kind, config.train.select_by) == (kind, f"valid_{registry.get(task).metrics[0]}")
        assert config.model.get("film", False) == (kind == "vqa")   # the comparison's VQA model reads with FiLM
        train.validate_config(config)


def test_several_questions_per_image_are_answered_from_their_own_image():
    from rnn_jax.data import sort_of_clevr

    task = sort_of_clevr.make_task(0, questions_per_image=3)
    batch = task.train_batch(0, 4, 7)
    assert batch["images"].shape == (3, 75, 75, 3) and batch["image_index"].tolist() == [0, 0, 0, 1, 1, 1, 2]
    rgb = dict(zip(sort_of_clevr.COLORS, sort_of_clevr.COLOR_RGB))
    for b in range(7):   # the horizontal answers read from the question's own image
        words = task.decode_question(batch["question"][b]).split()
        if batch["qtype"][b] == 1:
            colour = next(w for w in words if w in rgb)
            image = batch["images"][batch["image_index"][b]]
            x = np.nonzero(np.all(np.abs(image - np.asarray(rgb[colour])) < 0.02, -1))[1].mean()
            assert task.answers[batch["answer"][b]] == ("left" if x < 37.5 else "right")
    enc = ImageEncoder("images", (75, 75, 3), channels=(3,), strides=(4,))
    repeated = dict(batch, images=batch["images"][batch["image_index"]])
    del repeated["image_index"]
    for film in (False, True):
        model = VQAModel(enc, "gru", vocab_size=len(task.question_vocab), num_answers=task.num_answers,
                         hidden_size=6, embed_size=3, glimpses=1, mlp_size=8, film=film)
        params = model.init(jax.random.PRNGKey(0))
        if film:
            params["film"] = jax.tree.map(lambda w: w + 0.5, params["film"])
        np.testing.assert_allclose(model.forward(params, batch)[0], model.forward(params, repeated)[0], rtol=1e-4,
                                   atol=1e-6)
    config = vqa_config.get_config("runlocal")
    config.train.data_parallel = True
    with pytest.raises(InputError, match="questions_per_image"):
        train.validate_config(config)


def test_the_attention_penalty_is_trained_but_not_reported_as_the_loss(tmp_path):
    # many locations: with λ = 1 the penalty alone is far above the divergence bound (10 ln V)
    config = caption_config.get_config("runlocal,penalty=1,width=80,steps=2,eval_every=2")
    problem = train.make_problem(config)
    params = problem.init(config, jax.random.PRNGKey(0))
    batch, _ = problem.batch(config, 0)
    objective, (reported, _) = problem.loss(params, None, batch, None)
    _, sums = problem.model.loss(params, batch)
    assert reported == pytest.approx(float(sums["nll"] / sums["count"]))
    assert objective > 10 * np.log(problem.model.vocab_size) > reported
    result = train.train_and_evaluate(config, str(tmp_path), **QUIET)
    assert result["status"] == "completed"


def test_padded_evaluation_batches_do_not_change_the_caption_metrics():
    config = caption_config.get_config("runlocal")
    problem = train.make_problem(config)
    params = problem.init(config, jax.random.PRNGKey(0))
    from rnn_jax.models.captioner import CaptionEvaluator

    whole = CaptionEvaluator(problem.model, problem.task_obj, beam_size=2, beam_alpha=0.0, batch_size=16,
                             test_batch_size=16)(params, "valid")
    padded = CaptionEvaluator(problem.model, problem.task_obj, beam_size=2, beam_alpha=0.0, batch_size=5,
                              test_batch_size=5)(params, "valid")   # 16 = 5 + 5 + 5 + 1 (4 padding rows)
    assert set(whole) == set(padded)
    for key, value in whole.items():
        assert padded[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key
    config.model.beam_size = 0
    with pytest.raises(InputError, match="model.beam_size"):
        train.validate_config(config)


def test_a_karpathy_dataset_without_a_validation_split_is_refused(tmp_path):
    _write_karpathy(tmp_path, with_images=False)
    data = json.loads((tmp_path / "data.json").read_text())
    data["images"] = [im for im in data["images"] if im["split"] != "val"]
    (tmp_path / "data.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r'no images in the valid split \(split "val"\)'):
        registry.make("karpathy", 0, {"json_path": str(tmp_path / "data.json"),
                                      "features": str(tmp_path / "feats.npz")})
