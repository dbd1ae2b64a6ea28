"""Sampling under jit: greedy, temperature, top-k, and the sampling CLI."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rnn_jax import cells, lm, sampling, train
from tests.lm_helpers import tiny_config, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def model_and_params():
    model = lm.LanguageModel(cells.get("gru"), vocab_size=11, embed_size=6, hidden_size=8, num_layers=2)
    return model, model.init(jax.random.PRNGKey(0))


def test_greedy_equals_a_python_loop_of_argmax(model_and_params):
    model, params = model_and_params
    prime = jnp.asarray([1, 2, 3])
    out = sampling.sample(model, params, prime, jax.random.PRNGKey(0), length=6, greedy=True)
    # reference: re-run the whole sequence through the layer at every step
    seq = [1, 2, 3]
    for _ in range(6):
        logits, _ = model.apply(params, model.zero_carry(1), jnp.asarray([seq]))
        seq.append(int(jnp.argmax(logits[0, -1])))
    assert out.shape == (1, 6)
    assert list(np.asarray(out[0])) == seq[3:]


def test_top_k_and_temperature(model_and_params):
    model, params = model_and_params
    prime = jnp.asarray([4])
    a = sampling.sample(model, params, prime, jax.random.PRNGKey(1), length=30, num_samples=4)
    b = sampling.sample(model, params, prime, jax.random.PRNGKey(1), length=30, num_samples=4)
    np.testing.assert_array_equal(a, b)  # same key, same sample
    assert a.shape == (4, 30) and int(a.max()) < 11 and int(a.min()) >= 0
    assert len({tuple(r) for r in np.asarray(a)}) > 1  # the samples differ from each other
    top1 = sampling.sample(model, params, prime, jax.random.PRNGKey(2), length=10, top_k=1)
    greedy = sampling.sample(model, params, prime, jax.random.PRNGKey(2), length=10, greedy=True)
    np.testing.assert_array_equal(top1, greedy)
    logits = jnp.asarray([[0.0, 1.0, 5.0, 2.0]])
    draws = jax.vmap(lambda k: sampling.choose(k, logits, top_k=2))(jax.random.split(jax.random.PRNGKey(3), 200))
    assert set(np.asarray(draws).ravel()) <= {2, 3}
    cold = jax.vmap(lambda k: sampling.choose(k, logits, temperature=0.01))(jax.random.split(jax.random.PRNGKey(4), 50))
    assert set(np.asarray(cold).ravel()) == {2}


@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=0.0, top_k=0, length=5, num_samples=1), "temperature must be a number > 0"),
    (dict(temperature=1.0, top_k=-1, length=5, num_samples=1), "top_k must be an integer >= 0"),
    (dict(temperature=1.0, top_k=0, length=0, num_samples=1), "length must be a positive integer"),
])
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sampling.check_sampling_args(**kwargs)


def test_train_resume_sample_end_to_end(tmp_path):
    corpus = write_corpus(tmp_path / "text.txt")
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(corpus, num_steps=6), workdir, log=lambda m: None)
    train.train_and_evaluate(tiny_config(corpus, num_steps=9), workdir, log=lambda m: None)  # resume
    cmd = [sys.executable, "-m", "experiments.sample", f"--workdir={workdir}", "--prime=the ",
           "--temperature=0.8", "--length=30", "--num_samples=2", "--seed=0"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("--- sample") == 2
    first = out.stdout.split("--- sample 2 ---")[0].split("--- sample 1 ---\n")[1]
    assert first.startswith("the ") and len(first.rstrip("\n")) == 4 + 30
    bad = subprocess.run(cmd[:4] + ["--prime=QQ"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "not in the vocabulary" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={tmp_path}/nope"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "not a run directory" in missing.stderr
