"""Errors in user input print one line (``error: ...``) and exit 2; bugs keep their traceback.

The mains run in subprocesses (each imports JAX: a few seconds), so there are few of them; the
message formatting and the data-file checks are tested in process.
"""

import json
import os
import subprocess
import sys

import pytest
from absl import flags

from experiments import cli
from rnn_jax.data import music, text
from rnn_jax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/char_lm.py"


def _run(args, env_extra=None, module=None, code=None):
    env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV}
    env.update({"JAX_PLATFORMS": "cpu", **(env_extra or {})})
    command = [sys.executable, "-m", module, *args] if module else [sys.executable, "-c", code, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def _corpus(tmp_path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("hello world\n" * 50, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("case", ["config_arg", "data_dir", "typo", "no_workdir", "validate"])
def test_train_user_errors_are_one_line(tmp_path, case):
    workdir = f"--workdir={tmp_path / 'run'}"
    args, expected = {
        "config_arg": ([f"--config={CONFIG}:hidden=abc", f"--config.data.path={_corpus(tmp_path)}", workdir],
                       "config arg hidden='abc': expected an integer"),
        "data_dir": ([f"--config={CONFIG}", f"--config.data.path={tmp_path}", workdir],
                     f"{str(tmp_path)!r} is a directory, not a data file"),
        "typo": ([f"--config={CONFIG}", "--config.trian.seq_len=5", workdir],
                 "--config.trian.seq_len: the config has no field 'trian'; did you mean \"train\""),
        "no_workdir": ([f"--config={CONFIG}"], "missing required flag --workdir"),
        "validate": ([f"--config={CONFIG}", "--config.train.num_steps=0", "--config.train.num_epochs=0",
                      f"--config.data.path={_corpus(tmp_path)}", workdir],
                     "config.train.num_steps and config.train.num_epochs are both 0: set one"),
    }[case]
    line = _one_error_line(_run(args, module="experiments.train"))
    assert expected in line
    assert not os.path.exists(tmp_path / "run") or case == "data_dir"


def test_traceback_on_request(tmp_path):
    args = [f"--config={CONFIG}:hidden=abc", f"--workdir={tmp_path / 'run'}"]
    proc = _run(args, {cli.TRACEBACK_ENV: "1"}, module="experiments.train")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "rnn_jax.errors.InputError: config arg hidden='abc'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: flag --config=")


def test_sample_missing_workdir(tmp_path):
    line = _one_error_line(_run([f"--workdir={tmp_path / 'nope'}"], module="experiments.sample"))
    assert "not a run directory" in line


INTERRUPT = """
import sys
from experiments import cli

def main(argv):
    raise {}

cli.run(main)
"""


def test_interrupt_and_bug():
    proc = _run([], code=INTERRUPT.format("KeyboardInterrupt"))
    assert proc.returncode == 130 and proc.stderr.strip() == "interrupted", proc.stderr
    proc = _run([], code=INTERRUPT.format("RuntimeError('a bug')"))
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "RuntimeError: a bug" in proc.stderr


# ---------------------------------------------------------------------------------------- in process


def test_user_error_messages():
    assert cli.user_error_message(InputError("config.x = 1: bad\n  really")) == "config.x = 1: bad really"
    assert cli.user_error_message(FileNotFoundError("data file 'a' does not exist")) == "data file 'a' does not exist"
    assert cli.user_error_message(RuntimeError("bug")) is None
    assert cli.user_error_message(KeyError("bug")) is None  # not from a --config override
    error = flags.IllegalFlagValueError("flag --config=None: Flag --config must have a value other than None.\n"
                                        "flag --workdir=None: Flag --workdir must have a value other than None.")
    assert cli.user_error_message(error) == "missing required flag --config; missing required flag --workdir"
    wrapped = flags.IllegalFlagValueError("flag --config=c.py:x: Error whilst parsing config file:\n\nTraceback ...")
    wrapped.__context__ = TypeError("a bug in get_config")
    assert cli.user_error_message(wrapped) is None


def test_wants_traceback(monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert not cli.wants_traceback(0) and not cli.wants_traceback(None) and cli.wants_traceback(1)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    assert cli.wants_traceback(-1)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "0")
    assert not cli.wants_traceback(-1)
    assert cli._argv_verbosity(["prog", "--verbosity=1"]) == 1
    assert cli._argv_verbosity(["prog", "-v", "2", "--x=1"]) == 2
    assert cli._argv_verbosity(["prog", "--", "--verbosity=1"]) is None


def test_data_file_that_is_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory, not a data file"):
        text.char_corpus(str(tmp_path))
    with pytest.raises(IsADirectoryError, match="is a directory, not a data file"):
        music.load_piano_rolls(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        music.load_piano_rolls(tmp_path / "nope.json")
    (tmp_path / "ptb").write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        text.ptb_corpus(str(tmp_path / "ptb"))


def test_bad_content_is_input_error(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff")
    with pytest.raises(InputError, match="not valid UTF-8"):
        text.char_corpus(str(tmp_path / "bad.txt"))
    (tmp_path / "m.json").write_text(json.dumps({"train": [[[200]]], "valid": [], "test": []}))
    with pytest.raises(InputError, match="outside the MIDI range"):
        music.load_piano_rolls(tmp_path / "m.json")
    assert issubclass(music.UnsafePickleError, InputError)
