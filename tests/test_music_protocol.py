"""The per-piece music protocol: lanes of whole pieces, resets at piece starts, NLL per frame."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import music as music_config
from rnn_jax import piano, train
from rnn_jax.data import Lanes, music


def random_pieces(rng, n, low=50, high=58, min_len=2, max_len=12):
    return [[sorted({int(p) for p in rng.integers(low, high + 1, rng.integers(0, 4))})
             for _ in range(rng.integers(min_len, max_len + 1))] for _ in range(n)]


def rolls_of(splits, low=50, high=58) -> music.PianoRolls:
    return music.PianoRolls(low=low, high=high, **{s: music.piano_roll(splits[s], low, high) for s in splits},
                            starts={s: music._starts(splits[s]) for s in splits})


def test_lanes_hold_whole_pieces_with_resets_at_their_starts():
    # frames numbered by their index, so every (input, target) pair can be traced back
    lengths = [5, 1, 3, 7, 2, 4]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    frames = np.arange(sum(lengths), dtype=np.float32)[:, None] + 1.0  # 0 is padding
    lanes = Lanes.from_pieces(frames, starts, batch_size=3, pad_to=4)
    assert lanes.inputs_BxS.shape == (3, lanes.length, 1) and lanes.length % 4 == 0
    piece_of = np.repeat(np.arange(len(lengths)), lengths)
    seen = []
    for b in range(3):
        w, r = lanes.weights_BxS[b], lanes.resets_BxS[b]
        x, y = lanes.inputs_BxS[b, :, 0], lanes.targets_BxS[b, :, 0]
        n = int(w.sum())
        assert (w[:n] == 1).all() and (w[n:] == 0).all()  # padding only at the end
        assert (x[n:] == 0).all() and (y[n:] == 0).all() and not r[n:].any()
        for t in range(n):
            i, j = int(x[t]) - 1, int(y[t]) - 1
            assert j == i + 1 and piece_of[i] == piece_of[j]  # never across pieces
            assert bool(r[t]) == (i in starts)  # reset exactly before each piece's first frame
            seen.append(i)
    # every frame but the last of each piece is an input exactly once; 1-frame pieces give nothing
    expected = [i for p, (s, n) in enumerate(zip(starts, lengths)) for i in range(s, s + n - 1)]
    assert sorted(seen) == expected
    with pytest.raises(ValueError, match="no piece has two frames"):
        Lanes.from_pieces(frames[:2], [0, 1], batch_size=2)


def _model(num_pitches):
    return piano.PianoRollModel(train.cells_lib.get("lstm"), num_pitches, 6, 8)


def _config(protocol="pieces", batch=3, seq_len=4):
    config = music_config.get_config(f"runlocal,protocol={protocol}")
    config.train.update(eval_batch_size=batch, seq_len=seq_len)
    return config


def _per_piece_nll(model, params, pieces_roll, starts):
    """Each piece alone from the zero state: summed NLL of frames 2..n over all pieces / their count."""
    total, count = 0.0, 0.0
    for piece in np.split(pieces_roll, starts[1:]):
        logits, _ = model.apply(params, model.zero_carry(1), jnp.asarray(piece[None, :-1]))
        t, c = piano.bernoulli_nll(logits, jnp.asarray(piece[None, 1:]))
        total, count = total + float(t), count + float(c)
    return total / count


def test_evaluation_scores_every_piece_from_the_zero_state():
    rng = np.random.default_rng(0)
    splits = {"train": random_pieces(rng, 4), "valid": random_pieces(rng, 7), "test": random_pieces(rng, 5)}
    corpus = rolls_of(splits)
    model = _model(corpus.num_pitches)
    params = model.init(jax.random.PRNGKey(1))
    expected = _per_piece_nll(model, params, corpus.valid, corpus.starts["valid"])
    loss = train.Evaluator(model, _config(), corpus, {})(params, "valid")["loss"]
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # the order of the pieces and the number of lanes do not matter
    shuffled = rolls_of({**splits, "valid": splits["valid"][::-1]})
    for batch in (1, 2, 5):
        loss2 = train.Evaluator(model, _config(batch=batch, seq_len=3), shuffled, {})(params, "valid")["loss"]
        np.testing.assert_allclose(loss2, expected, rtol=1e-5)
    # the stream protocol carries state across pieces and scores the cross-piece targets
    stream = train.Evaluator(model, _config("stream", batch=1), corpus, {})(params, "valid")["loss"]
    assert abs(stream - expected) > 1e-4  # 10x the tolerance of the equalities above


def test_training_batches_reset_at_piece_starts():
    rng = np.random.default_rng(2)
    splits = {"train": random_pieces(rng, 6, min_len=3), "valid": random_pieces(rng, 2),
              "test": random_pieces(rng, 2)}
    corpus = rolls_of(splits)
    config = _config(batch=2, seq_len=5)
    config.train.batch_size = 2
    data = train.TrainStreams(config, corpus, {})
    assert data.steps_per_epoch == data.streams.length // 5
    model = _model(corpus.num_pitches)
    params = model.init(jax.random.PRNGKey(3))
    # one epoch of chunks with the carry passed on: the mean training loss over the epoch equals
    # the per-piece NLL of the training split (the parameters do not move with a zero learning rate)
    config.optim.learning_rate = 0.0
    optimizer = train.make_optimizer(config)
    step = train.make_train_step(model, optimizer, 5.0)
    opt_state = optimizer.init(params)
    carry, total, count = model.zero_carry(2), 0.0, 0.0
    for s in range(data.steps_per_epoch):
        inputs, targets, weights, resets, new_epoch = data.batch(s)
        assert new_epoch == (s == 0) and resets.dtype == bool
        _, _, carry, metrics = step(params, opt_state, carry, inputs, targets, None, weights, resets)
        total += float(metrics["loss"]) * weights.sum()
        count += weights.sum()
    np.testing.assert_allclose(total / count, _per_piece_nll(model, params, corpus.train, corpus.starts["train"]),
                               rtol=1e-5)


def test_music_protocol_config_errors_name_the_field(tmp_path):
    config = music_config.get_config("runlocal,protocol=concatenated")
    config.data.path = str(tmp_path / "x.json")
    with pytest.raises(ValueError, match=r"data.protocol.*'concatenated'.*pieces, stream"):
        train.validate_config(config)
    config = music_config.get_config("runlocal")
    config.data.path = str(tmp_path / "x.json")
    config.train.bptt = "full"
    with pytest.raises(ValueError, match=r"train.bptt = 'full'.*data.protocol = 'pieces'"):
        train.validate_config(config)
    config.data.protocol = "stream"
    train.validate_config(config)  # random windows over the one stream are fine


def test_a_split_of_one_frame_pieces_is_refused(tmp_path):
    path = str(tmp_path / "rolls.json")
    music.save_json(path, {"train": [[[50], [51], [52]]] * 4, "valid": [[[50]], [[51]]], "test": [[[50], [51]]]})
    config = music_config.get_config("runlocal")
    config.data.path = path
    with pytest.raises(ValueError, match=r"the valid split has no piece of two frames or more \(2 pieces\)"):
        train.train_and_evaluate(config, str(tmp_path / "run"), log=lambda m: None)
