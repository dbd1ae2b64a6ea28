"""Every process type through the one trainer: model kinds by name, tasks from the registry, resume
and vmapped trials for example batches, and the errors of a mismatched config."""

import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import digits as digits_config
from experiments.configs import generate as generate_config
from experiments.configs import seq2seq as seq2seq_config
from experiments.configs import tagging as tagging_config
from rnn_jax import models, rundir, train, trials
from rnn_jax.data import registry
from rnn_jax.errors import InputError
from tests.trees import assert_records_close, assert_trees_close

TIMES = ("elapsed_s", "train_time_s")
QUIET = {"log": lambda msg: None}


def _params(workdir):
    return train.load_problem(str(workdir), which="latest", log=lambda m: None)[1]


@pytest.mark.parametrize("module,arg,kind,metric", [
    (digits_config, "runlocal", "classifier", "accuracy"),
    (digits_config, "task=brackets,runlocal", "classifier", "accuracy"),
    (seq2seq_config, "runlocal,attention=luong", "seq2seq", "sequence_accuracy"),
    (tagging_config, "runlocal", "tagger", "sequence_accuracy"),
    (generate_config, "task=spell,runlocal", "conditioned", "sequence_accuracy"),
    (generate_config, "runlocal", "conditioned", "pixel_loss"),
])
def test_each_kind_trains_and_reports_its_metrics(tmp_path, module, arg, kind, metric):
    config = module.get_config(arg)
    assert models.kind_name(config) == kind
    result = train.train_and_evaluate(config, str(tmp_path), **QUIET)
    assert result["status"] == "completed" and result["step"] == config.train.num_steps
    assert result["task"] == config.data.kind and result["level"] == "example"
    for key in (f"best_valid_{metric}", f"final_test_{metric}", f"test_{metric}", "test_loss"):
        assert 0.0 <= result[key] <= (1.0 if "accuracy" in key else 10.0), key  # pixel_loss: nats per pixel
    evals = [r for r in rundir.read_metrics(str(tmp_path)) if "valid_loss" in r]
    assert [r["step"] for r in evals] == [10, 20] and f"valid_{metric}" in evals[0]
    assert "=== step 10" in open(tmp_path / "samples.txt").read()  # what the model outputs, readable
    problem, params, saved = train.load_problem(str(tmp_path), log=lambda m: None)
    assert saved.model.kind == kind and problem.task == config.data.kind
    # the metrics come from the task's evaluation of the loaded parameters
    assert problem.evaluator()(params, "test")[metric] == pytest.approx(result[f"test_{metric}"])


def test_an_example_run_resumes_bit_for_bit(tmp_path):
    config = digits_config.get_config("runlocal,dropout=0.2")  # dropout keys and batches replayed
    train.train_and_evaluate(config, str(tmp_path / "whole"), **QUIET)
    half = digits_config.get_config("runlocal,dropout=0.2,steps=10")
    train.train_and_evaluate(half, str(tmp_path / "split"), **QUIET)
    config_b = digits_config.get_config("runlocal,dropout=0.2")
    train.train_and_evaluate(config_b, str(tmp_path / "split"), **QUIET)
    jax.tree.map(np.testing.assert_array_equal, _params(tmp_path / "whole"), _params(tmp_path / "split"))
    assert_records_close(rundir.read_metrics(str(tmp_path / "whole")), rundir.read_metrics(str(tmp_path / "split")),
                         rtol=0, atol=0, ignore=TIMES, what="metrics")


def test_example_trials_equal_separate_runs(tmp_path):
    """Per-trial batches (each trial's seed draws its own examples) through the same loop."""
    args = ("runlocal,seed=0,lr=0.003", "runlocal,seed=1,lr=0.01")
    configs = [seq2seq_config.get_config(a) for a in args]
    dirs = [tmp_path / f"t{i}" for i in range(2)]
    results = trials.train_trials(configs, dirs, **QUIET)
    for i, arg in enumerate(args):
        single = train.train_and_evaluate(seq2seq_config.get_config(arg), str(tmp_path / f"s{i}"), **QUIET)
        vm = dict(results[i])
        assert vm.pop("vmapped") == {"trials": 2, "index": i}
        assert set(vm) == set(single)
        for key, value in single.items():
            if key not in TIMES:
                assert vm[key] == (pytest.approx(value, rel=1e-4, abs=1e-5) if isinstance(value, float) else value), key
        assert_records_close(rundir.read_metrics(str(dirs[i])), rundir.read_metrics(str(tmp_path / f"s{i}")),
                             rtol=1e-4, atol=1e-5, ignore=TIMES, what=f"metrics {i}")
        assert_trees_close(_params(dirs[i]), _params(tmp_path / f"s{i}"), rtol=1e-4, atol=1e-5)
    assert results[0]["best_valid_loss"] != results[1]["best_valid_loss"]


def test_mismatched_or_unknown_settings_are_refused_by_name(tmp_path):
    config = digits_config.get_config("runlocal")
    config.model.kind = "seq2seq"
    with pytest.raises(InputError, match=r"data.kind = 'digits' cannot be trained by model.kind = 'seq2seq'"):
        train.validate_config(config)
    config.model.kind = "transformer"
    with pytest.raises(InputError, match=r"model.kind = 'transformer': must be one of 'lm', 'piano'"):
        train.validate_config(config)
    config = digits_config.get_config("task=parity,runlocal")
    config.train.num_epochs, config.train.num_steps = 2, 0
    with pytest.raises(InputError, match="draws fresh training examples every step"):
        train.validate_config(config)
    config = seq2seq_config.get_config("runlocal")
    config.train.select_by = "valid_accuracy"
    with pytest.raises(InputError, match="valid_sequence_accuracy"):
        train.validate_config(config)
    config = seq2seq_config.get_config("runlocal")
    config.data.reverse.max_len = 0
    with pytest.raises(InputError, match="max_len"):
        train.validate_config(config)
    config = seq2seq_config.get_config("runlocal")
    config.data.reverse.colour = "red"
    with pytest.raises(InputError, match="colour"):
        train.validate_config(config)
    config = seq2seq_config.get_config("runlocal")
    config.model.attention = "multihead"
    with pytest.raises(InputError, match="model.attention = 'multihead'"):
        train.validate_config(config)
    assert not os.path.exists(tmp_path / "config.json")


def test_a_resumed_example_run_checks_its_data(tmp_path):
    config = digits_config.get_config("task=parity,runlocal,steps=10")
    train.train_and_evaluate(config, str(tmp_path), **QUIET)
    fingerprint = json.load(open(tmp_path / "corpus.json"))
    assert set(fingerprint) == {"train", "valid", "test"}
    fingerprint["valid"]["sha256"] = "0" * 64  # as if the generator had changed
    rundir.write_json_atomic(str(tmp_path / "corpus.json"), fingerprint)
    with pytest.raises(InputError, match="the data differ"):
        train.train_and_evaluate(digits_config.get_config("task=parity,runlocal"), str(tmp_path), **QUIET)


def test_every_registered_task_names_a_registered_kind():
    for name in registry.names():
        entry = registry.get(name)
        assert entry.model_kind in models.names(), name
        if entry.model_kind not in ("lm", "piano"):
            kind = models.get(entry.model_kind)
            assert kind.name == entry.model_kind


def test_the_comparison_takes_registered_tasks_and_their_metrics():
    from experiments.configs import tasks as tasks_config
    from rnn_jax import report
    from rnn_jax.sweep import compare

    assert compare.check_tasks(["digits", "reverse", "bracket_depth"], {}) == ["digits", "reverse", "bracket_depth"]
    metric = report.task_metric("reverse")
    assert (metric.test, metric.valid, metric.second) == ("test_sequence_accuracy", "best_valid_sequence_accuracy",
                                                          "test_token_accuracy")
    assert report.task_metric("digit_rows") == report.DEFAULT_METRIC  # no accuracy: the test loss
    point = compare.point(compare.PRESETS["quick"], "parity", "gru", compare.settings_for(compare.PRESETS["quick"])[0],
                          0, {})
    config = tasks_config.get_config(point["arg"] + ",runlocal")
    assert (config.model.kind, config.data.kind, config.train.select_by) == ("classifier", "parity", "valid_accuracy")
    train.validate_config(config)
    assert compare._score({"status": "completed", "select_by": "valid_sequence_accuracy",
                           "best_valid_sequence_accuracy": 0.75, "best_valid_loss": 0.1}) == 0.75


def test_load_run_reads_the_runs_own_vocabulary_without_the_data(tmp_path):
    from experiments.configs import char_lm

    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40, encoding="utf-8")
    config = char_lm.get_config("runlocal")
    config.data.path = str(text)
    train.train_and_evaluate(config, str(tmp_path / "run"), **QUIET)
    text.unlink()  # moved away after training
    model, params, vocab, _ = train.load_run(str(tmp_path / "run"), log=lambda m: None)
    assert vocab.decode(vocab.encode("lazy dog")) == "lazy dog" and model.vocab_size == len(vocab)
    with pytest.raises(InputError, match="load_problem reads runs of generated tasks"):
        train.load_problem(str(tmp_path / "run"))


def test_unsupported_model_fields_of_a_kind_are_refused():
    config = seq2seq_config.get_config("runlocal,layers=3")
    with pytest.raises(InputError, match=r"model.num_layers = 3 is not allowed; choose one of: 1"):
        train.validate_config(config)
    config = digits_config.get_config("runlocal")
    config.data.kind, config.train.select_by = "char", "valid_loss"
    with pytest.raises(InputError, match=r"data.kind = 'char' cannot be trained by model.kind = 'classifier'"):
        train.validate_config(config)
    config = digits_config.get_config("task=parity,runlocal")
    config.data.parity.colour = 1
    with pytest.raises(InputError, match=r"data.parity: unknown option.*'colour'.*allowed: min_len"):
        train.validate_config(config)
