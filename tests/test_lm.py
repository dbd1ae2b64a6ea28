"""The language model: shapes, dropout only where asked, variational masks, the one-step path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, lm
from tests.trees import assert_trees_close


@pytest.fixture(scope="module")
def model():
    return lm.LanguageModel(cells.get("lstm"), vocab_size=7, embed_size=5, hidden_size=6,
                            num_layers=2, dropout=0.5)


def test_apply_matches_step_by_step_and_carries(model):
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.asarray([[1, 2, 3, 4], [0, 6, 5, 1]])
    logits, finals = model.apply(params, model.zero_carry(2), tokens)
    assert logits.shape == (2, 4, 7) and len(finals) == 2
    carry = model.zero_carry(2)
    for t in range(4):
        step_logits, carry = model.step(params, carry, tokens[:, t])
        np.testing.assert_allclose(step_logits, logits[:, t], rtol=1e-5, atol=1e-6)
    assert_trees_close(carry, finals, rtol=1e-5, atol=1e-6, what="carry")
    # two chunks with the carry passed on = one long sequence
    first, mid = model.apply(params, model.zero_carry(2), tokens[:, :2])
    second, _ = model.apply(params, mid, tokens[:, 2:])
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), logits, rtol=1e-5, atol=1e-6)


def test_dropout_only_with_a_key(model):
    params = model.init(jax.random.PRNGKey(0))
    tokens = jnp.asarray([[1, 2, 3, 4]])
    plain, _ = model.apply(params, model.zero_carry(1), tokens)
    again, _ = model.apply(params, model.zero_carry(1), tokens)
    dropped, _ = model.apply(params, model.zero_carry(1), tokens, dropout_key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(plain, again)
    assert not np.allclose(plain, dropped)


@pytest.mark.parametrize("variational", [False, True])
def test_variational_masks_are_shared_over_time(variational):
    model = lm.LanguageModel(cells.get("gru"), 7, 5, 6, dropout=0.5, variational=variational)
    x = jnp.ones((3, 50, 8))
    y = lm.drop(model, jax.random.PRNGKey(0), x)
    kept = np.asarray(y != 0)
    assert set(np.unique(np.asarray(y))) == {0.0, 2.0}  # inverted dropout scaling
    same_over_time = all((kept[:, t] == kept[:, 0]).all() for t in range(50))
    assert same_over_time == variational
    assert 0.3 < kept.mean() < 0.7


def test_model_argument_errors():
    with pytest.raises(ValueError, match="hidden_size must be a positive integer, got 0"):
        lm.LanguageModel(cells.get("gru"), 7, 5, 0)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        lm.LanguageModel(cells.get("gru"), 7, 5, 4, dropout=1.0)


def test_cross_entropy_weights():
    logits = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
    targets = jnp.asarray([[0, 1]])
    total, count = lm.cross_entropy(logits, targets)
    np.testing.assert_allclose(total, np.log(2) + np.log(10), rtol=1e-6)
    assert float(count) == 2
    total, count = lm.cross_entropy(logits, targets, jnp.asarray([[1.0, 0.0]]))
    np.testing.assert_allclose(total, np.log(2), rtol=1e-6)
    assert float(count) == 1
