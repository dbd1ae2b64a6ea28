"""Caption vocabulary and batches, the Karpathy-split loader (on a tiny dataset written here) and the caption
metrics."""

import json
import math
import os

import numpy as np
import pytest

from rnn_jax.caption_metrics import attribute_recall, coco_scores
from rnn_jax.data.captions import BOS_ID, EOS_ID, PAD_ID, UNK_ID, CaptionVocab, pack_captions, tokenize
from rnn_jax.data.karpathy import KarpathyTask, area_resize
from rnn_jax.errors import InputError

# ---- vocabulary, tokenize, pack_captions ---------------------------------------------------------


def test_vocab_ids_encode_decode():
    vocab = CaptionVocab(("a", "dog", "runs"))
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.tokens == ("<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "runs")
    assert len(vocab) == 7
    ids = vocab.encode(["a", "dog", "runs"])
    assert ids == [4, 5, 6]
    assert vocab.decode(ids) == ["a", "dog", "runs"]
    assert vocab.encode(["a", "cat"]) == [4, UNK_ID]
    assert vocab.decode([BOS_ID, 4, UNK_ID, PAD_ID, 6, EOS_ID, 5, 5]) == ["a", "<unk>", "runs"]
    assert vocab.decode(np.array([[4, 5], [EOS_ID, 6]])) == ["a", "dog"]
    with pytest.raises(InputError, match="distinct"):
        CaptionVocab(("a", "a"))
    with pytest.raises(InputError, match="<eos>"):
        CaptionVocab(("<eos>",))
    with pytest.raises(InputError, match="string"):
        vocab.encode("a dog")


def test_vocab_build_orders_by_count_then_alphabet():
    captions = [["b", "a", "c"], ["a", "b", "d"], ["a", "e"], ["e", "z"]]
    # counts: a 3, b 2, e 2, c 1, d 1, z 1
    assert CaptionVocab.build(captions).words == ("a", "b", "e", "c", "d", "z")
    assert CaptionVocab.build(captions, min_count=2).words == ("a", "b", "e")
    assert CaptionVocab.build(captions, min_count=2, max_size=2).words == ("a", "b")
    assert CaptionVocab.build(iter(captions), min_count=4).words == ()
    with pytest.raises(InputError, match="min_count=0"):
        CaptionVocab.build(captions, min_count=0)


def test_tokenize():
    assert tokenize("A dog's ball, e.g. RED-and-blue!") == ["a", "dog's", "ball", "e", "g", "red", "and", "blue"]
    assert tokenize("  'Quoted'   words\tand\nlines ") == ["quoted", "words", "and", "lines"]
    assert tokenize("It\u2019s 3 o'clock.") == ["it's", "3", "o'clock"]
    assert tokenize("under_score ...") == ["under", "score"]
    assert tokenize("") == []


def test_pack_captions_shapes_eos_truncation_padding():
    vocab = CaptionVocab(("a", "b", "c"))
    batch = pack_captions(vocab, [["a", "b"], ["c", "a", "b", "c", "a"], []], max_len=4, batch_size=5)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (5, 4)
    assert batch["lengths"].dtype == np.int32 and batch["weight"].dtype == np.float32
    np.testing.assert_array_equal(batch["tokens"], [[4, 5, EOS_ID, PAD_ID],
                                                    [6, 4, 5, EOS_ID],       # 5 words cut to 3, EOS fits
                                                    [EOS_ID, PAD_ID, PAD_ID, PAD_ID],
                                                    [4, 5, EOS_ID, PAD_ID],  # padding rows repeat the first
                                                    [4, 5, EOS_ID, PAD_ID]])
    np.testing.assert_array_equal(batch["lengths"], [3, 4, 1, 3, 3])
    np.testing.assert_array_equal(batch["weight"], [1, 1, 1, 0, 0])
    unpadded = pack_captions(vocab, [["x", "a"]], max_len=3, batch_size=None)
    np.testing.assert_array_equal(unpadded["tokens"], [[UNK_ID, 4, EOS_ID]])
    np.testing.assert_array_equal(unpadded["weight"], [1])
    with pytest.raises(InputError, match="cannot pack 2"):
        pack_captions(vocab, [["a"], ["b"]], max_len=3, batch_size=1)


# ---- Karpathy layout -----------------------------------------------------------------------------

COLORS = {"im0.png": (1.0, 0.0, 0.0), "im1.png": (0.0, 1.0, 0.0), "im2.png": (0.0, 0.0, 1.0),
          "im3.png": (1.0, 1.0, 0.0), "im4.png": (0.0, 1.0, 1.0), "im5.png": (1.0, 0.0, 1.0)}
SPLITS = ["train", "train", "restval", "val", "train", "test"]


def _sentences(k):
    if SPLITS[k] in ("val", "test"):
        return [{"tokens": ["a", "zebra", "in", "scene", str(k)], "raw": "A zebra."},
                {"tokens": ["zebra", "again"], "raw": "Zebra again."}]
    return [{"tokens": ["a", "red", "Dog", f"number{k}"], "raw": "A red dog."},
            {"tokens": ["the", "dog", "sits,"], "raw": "The dog sits."}]


def _write_dataset(root, images=True, gray=False):
    images_list = []
    for k, filename in enumerate(COLORS):
        entry = {"filename": filename, "split": SPLITS[k], "imgid": k, "sentences": _sentences(k)}
        if k == 2:
            entry["filepath"] = "sub"
        images_list.append(entry)
    path = os.path.join(root, "dataset_tiny.json")
    with open(path, "w") as f:
        json.dump({"images": images_list, "dataset": "tiny"}, f)
    if images:
        import matplotlib.pyplot as plt

        os.makedirs(os.path.join(root, "img", "sub"), exist_ok=True)
        for k, (filename, rgb) in enumerate(COLORS.items()):
            pixels = np.ones((8, 12, 3)) * np.array(rgb)
            target = os.path.join(root, "img", "sub" if k == 2 else "", filename)
            if k == 4 and gray:
                from PIL import Image

                Image.fromarray(np.full((6, 6), 128, np.uint8), mode="L").save(target)
            else:
                plt.imsave(target, pixels)              # RGBA PNG
    return path


def test_area_resize_preserves_means_and_blocks():
    image = np.zeros((4, 4, 1), np.float32)
    image[:2, :2] = 1.0
    np.testing.assert_allclose(area_resize(image, 2, 2)[..., 0], [[1, 0], [0, 0]])
    rng = np.random.default_rng(0)
    big = rng.random((9, 7, 3)).astype(np.float32)
    small = area_resize(big, 3, 5)
    assert small.shape == (3, 5, 3) and small.dtype == np.float32
    np.testing.assert_allclose(small.mean(axis=(0, 1)), big.mean(axis=(0, 1)), rtol=1e-5)
    np.testing.assert_allclose(area_resize(np.full((3, 3, 3), 0.25), 7, 4), 0.25, rtol=1e-6)


def test_karpathy_splits_vocab_references(tmp_path):
    path = _write_dataset(tmp_path)
    task = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), image_size=4, max_len=5)
    assert [task.num_images(s) for s in ("train", "valid", "test")] == [4, 1, 1]
    assert task.filenames("train") == ["im0.png", "im1.png", "im2.png", "im4.png"]   # restval is train
    assert task.filenames("valid") == ["im3.png"] and task.filenames("test") == ["im5.png"]
    assert task.inputs == "images" and task.image_shape == (4, 4, 3) and task.feature_shape is None
    assert task.max_len == 5 and task.objects("valid") is None
    # train-only vocabulary, tokenize()d: "Dog" -> "dog", "sits," -> "sits"; no "zebra"
    words = set(task.vocab.words)
    assert {"a", "red", "dog", "the", "sits", "number0", "number4"} <= words
    assert "zebra" not in words and "Dog" not in words
    assert task.vocab.words[:2] == ("dog", "a")                                    # dog 8x, a 4x
    assert task.references("valid") == [["a zebra in scene 3", "zebra again"]]
    assert task.references("train")[0] == ["a red dog number0", "the dog sits"]
    quick = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), max_images=2)
    assert [quick.num_images(s) for s in ("train", "valid", "test")] == [2, 1, 1]
    assert "number2" not in quick.vocab.words
    assert len(KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), min_count=2).vocab.words) == 5
    with pytest.raises(InputError, match="split must be one of"):
        task.num_images("val")


def test_karpathy_train_batch_pure_and_pixels(tmp_path):
    path = _write_dataset(tmp_path)
    task = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), image_size=4, max_len=4)
    batch = task.train_batch(seed=3, step=7, batch_size=16)
    again = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), image_size=4, max_len=4).train_batch(3, 7, 16)
    assert set(batch) == {"images", "tokens", "lengths", "weight", "index"}
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[key])
    assert batch["images"].shape == (16, 4, 4, 3) and batch["images"].dtype == np.float32
    assert batch["index"].dtype == np.int32 and batch["tokens"].shape == (16, 4)
    np.testing.assert_array_equal(batch["weight"], np.ones(16))
    assert not np.array_equal(task.train_batch(3, 8, 16)["index"], batch["index"])
    train_colors = [COLORS[f] for f in task.filenames("train")]
    refs = task.references("train")
    for b in range(16):
        i = int(batch["index"][b])
        np.testing.assert_allclose(batch["images"][b], np.broadcast_to(train_colors[i], (4, 4, 3)), atol=1e-6)
        caption = task.decode(batch["tokens"][b])
        assert any(" ".join(r.split()[:3]) == caption for r in refs[i])           # max_len 4: 3 words + EOS
    # both sentences of the images are drawn
    firsts = {int(t) for t in task.train_batch(0, 0, 64)["tokens"][:, 0]}
    assert firsts == {task.vocab.encode(["a"])[0], task.vocab.encode(["the"])[0]}
    np.testing.assert_allclose(task.load_image("valid", 0), np.broadcast_to(COLORS["im3.png"], (4, 4, 3)))


def test_karpathy_grayscale_image(tmp_path):
    path = _write_dataset(tmp_path, gray=True)
    task = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), image_size=3)
    image = task.load_image("train", 3)                                            # im4.png, gray 128
    assert image.shape == (3, 3, 3)
    np.testing.assert_allclose(image, 128 / 255, atol=1e-6)


def test_karpathy_eval_batches_order_and_padding(tmp_path):
    path = _write_dataset(tmp_path)
    task = KarpathyTask(json_path=path, image_dir=str(tmp_path / "img"), image_size=2, max_len=6)
    batches = task.eval_batches("train", 3)
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[0]["index"], [0, 1, 2])
    np.testing.assert_array_equal(batches[1]["index"], [3, 3, 3])
    np.testing.assert_array_equal(batches[0]["weight"], [1, 1, 1])
    np.testing.assert_array_equal(batches[1]["weight"], [1, 0, 0])
    assert [task.decode(t) for t in batches[0]["tokens"]] == ["a red dog number0", "a red dog number1",
                                                             "a red dog number2"]
    np.testing.assert_allclose(batches[1]["images"][2], np.broadcast_to(COLORS["im4.png"], (2, 2, 3)), atol=1e-6)
    valid = task.eval_batches("valid", 4)
    assert len(valid) == 1 and valid[0]["tokens"].shape == (4, 6)
    np.testing.assert_array_equal(valid[0]["weight"], [1, 0, 0, 0])
    assert task.decode(valid[0]["tokens"][0]) == "a <unk> <unk> <unk> <unk>"      # val words not in train vocab


@pytest.mark.parametrize("layout", ["npz_LD", "npz_stems_hwD", "npy_LD", "npy_hwD"])
def test_karpathy_features(tmp_path, layout):
    path = _write_dataset(tmp_path, images=False)
    shape = (5, 3) if layout.endswith("LD") else (2, 2, 3)
    arrays = {f: np.full(shape, k, np.float64) for k, f in enumerate(COLORS)}
    if layout.startswith("npz"):
        features = str(tmp_path / "feats.npz")
        stems = layout == "npz_stems_hwD"
        np.savez(features, **{(os.path.splitext(f)[0] if stems else f): a for f, a in arrays.items()})
    else:
        features = str(tmp_path / "feats")
        os.makedirs(features)
        for f, a in arrays.items():
            np.save(os.path.join(features, os.path.splitext(f)[0] + ".npy"), a)
    task = KarpathyTask(json_path=path, features=features, max_len=4)
    assert task.inputs == "features" and task.feature_shape == shape and task.image_shape is None
    batch = task.train_batch(1, 2, 8)
    assert "images" not in batch
    assert batch["features"].shape == (8, *shape) and batch["features"].dtype == np.float32
    json_index = [0, 1, 2, 4]                                       # train images' positions in the JSON
    for b in range(8):
        np.testing.assert_array_equal(batch["features"][b], json_index[batch["index"][b]])
    (test_batch,) = task.eval_batches("test", 2)
    np.testing.assert_array_equal(test_batch["features"][0], 5)
    with pytest.raises(InputError, match="image_dir"):
        task.load_image("train", 0)


def test_karpathy_feature_shape_mismatch(tmp_path):
    path = _write_dataset(tmp_path, images=False)
    features = str(tmp_path / "feats.npz")
    np.savez(features, **{f: np.zeros((4, 3) if f == "im5.png" else (5, 3)) for f in COLORS})
    task = KarpathyTask(json_path=path, features=features)
    with pytest.raises(InputError, match="differs"):
        task.eval_batches("test", 1)


def test_karpathy_errors(tmp_path):
    path = _write_dataset(tmp_path)
    img = str(tmp_path / "img")
    with pytest.raises(InputError, match="image_dir.*features"):
        KarpathyTask(json_path=path)
    np.savez(tmp_path / "f.npz", **{f: np.zeros((2, 2)) for f in COLORS})
    with pytest.raises(InputError, match="exactly one of image_dir"):
        KarpathyTask(json_path=path, image_dir=img, features=str(tmp_path / "f.npz"))
    with pytest.raises(InputError, match="json_path is required"):
        KarpathyTask(image_dir=img)
    missing = str(tmp_path / "nope.json")
    with pytest.raises(InputError, match="nope.json does not exist"):
        KarpathyTask(json_path=missing, image_dir=img)
    os.remove(tmp_path / "img" / "im1.png")
    with pytest.raises(InputError, match="im1.png does not exist"):
        KarpathyTask(json_path=path, image_dir=img)
    os.makedirs(tmp_path / "npy")
    np.save(tmp_path / "npy" / "im0.npy", np.zeros((2, 2)))
    with pytest.raises(InputError, match="im1.npy does not exist"):
        KarpathyTask(json_path=path, features=str(tmp_path / "npy"))
    with pytest.raises(InputError, match="no array for image 'im5.png'"):
        np.savez(tmp_path / "g.npz", **{f: np.zeros((2, 2)) for f in list(COLORS)[:5]})
        KarpathyTask(json_path=path, features=str(tmp_path / "g.npz"))
    with pytest.raises(InputError, match="max_len=1"):
        KarpathyTask(json_path=path, features=str(tmp_path / "f.npz"), max_len=1)
    with pytest.raises(InputError, match="image_size=0"):
        KarpathyTask(json_path=path, features=str(tmp_path / "f.npz"), image_size=0)

    def bad(edit, match):
        data = json.load(open(path))
        edit(data)
        bad_path = tmp_path / "bad.json"
        bad_path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=match):
            KarpathyTask(json_path=str(bad_path), features=str(tmp_path / "f.npz"))

    bad(lambda d: d["images"][3].update(split="dev"), r"images\[3\]: split 'dev' is not one of")
    bad(lambda d: d["images"][2].pop("sentences"), r"images\[2\]: missing 'sentences'")
    bad(lambda d: d["images"][1].pop("split"), r"images\[1\]: missing 'split'")
    bad(lambda d: d["images"][0].update(sentences=[]), r"images\[0\]: 'sentences' must be a non-empty list")
    bad(lambda d: d["images"][0]["sentences"].append({"raw": 3}), r"images\[0\]: sentences\[2\] needs 'tokens'")
    bad(lambda d: d.pop("images"), "\"images\" list")
    bad(lambda d: [e.update(split="test") for e in d["images"]], "no images in the train split")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        KarpathyTask(json_path=str(tmp_path / "broken.json"), features=str(tmp_path / "f.npz"))


# ---- metrics -------------------------------------------------------------------------------------

REFS = [["a man rides a brown horse on the beach", "a person riding a horse"],
        ["two dogs play with a red ball in the grass", "dogs playing in a field"],
        ["a plate of food with rice and vegetables", "a dish of rice"]]


def test_coco_scores_perfect_and_imperfect():
    pytest.importorskip("pycocoevalcap")
    perfect = coco_scores(REFS, [r[0] for r in REFS])
    assert set(perfect) == {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider_d", "rouge_l"}
    assert all(isinstance(v, float) for v in perfect.values())
    assert perfect["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["rouge_l"] == pytest.approx(1.0, abs=1e-6)
    # case, punctuation and spacing do not matter
    assert coco_scores(REFS, ["A man rides a brown horse, on the beach!", *[r[0] for r in REFS[1:]]]) == perfect
    imperfect = coco_scores(REFS, ["a horse on a beach", "a dog with a ball", "rice with food"])
    assert perfect["cider_d"] > imperfect["cider_d"] > 0
    assert perfect["cider_d"] > 1.0                                    # x10 scale
    for key in perfect:
        assert imperfect[key] < perfect[key]


def test_coco_scores_bleu1_by_hand():
    pytest.importorskip("pycocoevalcap")
    refs = [["a b c d", "a b"], ["x y z w v"]]
    hyps = ["a a b", "x y"]
    # clipped unigrams: image 0 "a" min(2, 1) + "b" 1 = 2 of 3; image 1: 2 of 2  -> precision 4 / 5
    # reference lengths: image 0 closest to 3 is 4 or 2 (tie: the shorter, 2); image 1: 5 -> 7 against 5
    expected = 4 / 5 * math.exp(1 - 7 / 5)
    assert coco_scores(refs, hyps)["bleu_1"] == pytest.approx(expected, rel=1e-6)


def test_coco_scores_empty_hypothesis_and_errors(capsys):
    pytest.importorskip("pycocoevalcap")
    scores = coco_scores(REFS, ["", "two dogs play", "..."])
    assert all(math.isfinite(v) for v in scores.values())
    assert coco_scores(REFS[:1], [""])["bleu_1"] == pytest.approx(0.0, abs=1e-6)
    assert capsys.readouterr().out == ""                               # pycocoevalcap's prints are silenced
    with pytest.raises(InputError, match="3 images of references but 2 hypotheses"):
        coco_scores(REFS, ["a", "b"])
    with pytest.raises(InputError, match=r"references\[1\]"):
        coco_scores([["a b"], []], ["a", "b"])
    with pytest.raises(InputError, match="no images"):
        coco_scores([], [])


def test_attribute_recall_by_hand():
    objects = [[{"color": "red", "digit": "three"}, {"color": "red", "digit": "five"},
                {"color": "blue", "digit": "three", "size": "big"}],
               [],
               [{"color": "green", "digit": "seven"}]]
    hyps = ["A red three and a red five.", "nothing here", ""]
    out = attribute_recall(objects, hyps)
    assert set(out) == {"attribute_recall", "color_recall", "digit_recall"}
    assert out["color_recall"] == pytest.approx(2 / 4)
    assert out["digit_recall"] == pytest.approx(2 / 4)
    assert out["attribute_recall"] == pytest.approx(2 / 4)
    # duplicates are clipped by the number of matching objects; "three blue" is not the bigram "blue three"
    dup = attribute_recall(objects[:1], ["red red red three three three blue red three"])
    assert dup["color_recall"] == pytest.approx(3 / 3)                 # red min(2, 4) + blue min(1, 1)
    assert dup["digit_recall"] == pytest.approx(2 / 3)                 # three min(2, 4), five 0
    assert dup["attribute_recall"] == pytest.approx(1 / 3)             # "red three" min(1, 2); others 0
    assert attribute_recall([[]], ["red"]) == {"attribute_recall": 0.0, "color_recall": 0.0, "digit_recall": 0.0}
    with pytest.raises(InputError, match="1 images of objects but 2 hypotheses"):
        attribute_recall([[]], ["a", "b"])
    with pytest.raises(InputError, match=r"objects\[0\]\[0\]"):
        attribute_recall([[{"color": "red"}]], ["red"])


def test_coco_scores_without_pycocoevalcap(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)         # import now fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocoevalcap.bleu.bleu", None)
    with pytest.raises(ImportError, match=r"pip install 'rnn_jax\[caption\]'"):
        coco_scores([["a b"]], ["a b"])
    assert attribute_recall([[{"color": "red", "digit": "one"}]], ["red one"])["attribute_recall"] == 1.0
