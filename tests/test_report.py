"""Plots from run directories."""

import json

import pytest

from rnn_jax import report


def _fake_run(path, n=30):
    path.mkdir()
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, n + 1):
            f.write(json.dumps({"step": step, "loss": 3.0 / step, "grad_norm": 1.0, "clipped": False,
                                "learning_rate": 0.1}) + "\n")
            if step % 10 == 0:
                f.write(json.dumps({"step": step, "valid_loss": 3.5 / step, "elapsed_s": step * 2.0}) + "\n")
        f.write('{"step": 31, "loss"')  # a torn last line (killed writer) is skipped
    return str(path)


def test_learning_curves_and_plot(tmp_path):
    run = _fake_run(tmp_path / "a")
    train, valid = report.learning_curves(run)
    assert len(train) == 30 and [s for s, _, _ in valid] == [10, 20, 30]
    for x in ("step", "minutes"):
        out = report.plot_runs([run, _fake_run(tmp_path / f"b{x}")], str(tmp_path / f"{x}.png"), x=x)
        with open(out, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="x must be 'step' or 'minutes'"):
        report.plot_runs([run], str(tmp_path / "c.png"), x="epochs")
    with pytest.raises(ValueError, match="got 2 labels for 1 runs"):
        report.plot_runs([run], str(tmp_path / "c.png"), labels=["a", "b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no metrics"):
        report.plot_runs([str(tmp_path / "empty")], str(tmp_path / "d.png"))
