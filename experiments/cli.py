"""What the absl mains here share: a console that shows what a user needs.

``cli.run(main)`` is ``absl.app.run(main)``, except:

* The libraries' INFO chatter is hidden unless ``--verbosity`` is given: JAX's probe for TPUs
  ("Unable to initialize backend 'tpu'") and orbax's record of every checkpoint manager and save.
  Our own lines (the run's configuration, progress with ETA, evaluations, where results went) are
  printed, not logged, so they always show. ``--verbosity=0`` brings the INFO lines back,
  ``--verbosity=1`` adds DEBUG.
* An error in what the user gave prints one line, ``error: <message>``, on stderr and exits with
  status 2, without the flag help and without a traceback. That covers
  :class:`rnn_jax.errors.InputError` (config values, data files, refused resumes), a path that is
  missing or of the wrong kind (``FileNotFoundError``, ``IsADirectoryError``,
  ``NotADirectoryError``), ``app.UsageError``, flags that cannot be parsed or are missing, a config
  file that cannot be loaded, and a ``--config.x`` override naming a field the config lacks
  (ml_collections' "did you mean" hint is kept). ``--verbosity=1`` (or more) or the environment
  variable ``RNN_JAX_TRACEBACK=1`` prints the traceback before that line.
* Ctrl-C prints ``interrupted`` and exits with status 130.

Anything else is a bug: its traceback is printed as usual and the status is non-zero.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

from absl import app, flags, logging

from rnn_jax.errors import InputError

#: Set to 1 to get the traceback of errors in user input too.
TRACEBACK_ENV = "RNN_JAX_TRACEBACK"
#: Exit status of an error in user input (as for a command-line usage error).
USER_ERROR_STATUS = 2
#: Exit status after Ctrl-C (128 + SIGINT).
INTERRUPTED_STATUS = 130

# Exceptions that are the user's input by their type alone.
USER_ERRORS = (InputError, app.UsageError, FileNotFoundError, IsADirectoryError, NotADirectoryError)

_REQUIRED = re.compile(r"^flag --(\S+)=None: Flag --\1 must have a value other than None\.?$")
_CONFIG_WRAPPER = "Error whilst parsing config file"  # ml_collections' wrapper of get_config's ValueError
_CONFIG_UNAVAILABLE = "Configuration is not available because of an earlier failure to load"
_CONFIG_LOAD = re.compile(r"Failed loading config file (\w+)_config")


def run(main) -> None:
    """``app.run(main)`` with quiet library logging and one-line errors for bad user input."""

    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as e:
            _exit_if_user_error(e, flags.FLAGS.verbosity, argv)
            raise

    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """``FLAGS(argv)``; a flag or config error from the user prints one line and exits with status 2."""
    try:
        rest = flags.FLAGS(argv)
        _check_config_files(flags.FLAGS)
        return rest
    except KeyboardInterrupt:
        _interrupted()
    except Exception as e:
        _exit_if_user_error(e, _argv_verbosity(argv), argv)
        raise


def user_error_message(error: BaseException, argv=()) -> str | None:
    """The one-line message for an error in user input, or ``None`` when ``error`` is not one (a bug)."""
    if isinstance(error, USER_ERRORS):
        return _one_line(str(error)) or type(error).__name__
    if isinstance(error, OSError) and str(error).startswith(_CONFIG_UNAVAILABLE):
        return _config_load_message(error.__cause__ or error.__context__)
    if isinstance(error, (KeyError, AttributeError)) and _raised_by_config_override(error):
        return _unknown_field_message(error, argv)
    if isinstance(error, flags.Error):
        text = str(error)
        if _CONFIG_WRAPPER in text:  # get_config raised: the user's fault only if it raised InputError
            cause = _innermost(error, InputError)
            if cause is None:
                return None
            return f"{text.split(': ' + _CONFIG_WRAPPER)[0]}: {_one_line(str(cause))}"
        lines = [_REQUIRED.sub(r"missing required flag --\1", line.strip()) for line in text.splitlines()]
        return "; ".join(line for line in lines if line) or type(error).__name__
    return None


def wants_traceback(verbosity) -> bool:
    """Whether errors in user input show their traceback: ``--verbosity`` >= 1 or ``RNN_JAX_TRACEBACK``."""
    if os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return True
    return isinstance(verbosity, int) and verbosity >= 1


def _exit_if_user_error(error: Exception, verbosity, argv) -> None:
    message = user_error_message(error, argv)
    if message is None:
        return
    if wants_traceback(verbosity):
        traceback.print_exception(error)
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(USER_ERROR_STATUS)


def _interrupted() -> None:
    """Ctrl-C: the run has already closed its files and waited for its saves (its own handler ran
    while the exception passed through it), so end the process at once. Tearing the interpreter
    down normally while XLA compiles in other threads can crash it (status 139)."""
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(INTERRUPTED_STATUS)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _innermost(error: BaseException, kind) -> BaseException | None:
    found = None
    for e in _chain(error):
        if isinstance(e, kind):
            found = e
    return found


def _check_config_files(flag_values) -> None:
    """Report a config file that could not be loaded now, not at its first use inside ``main``.

    ml_collections keeps the load error in a stand-in config that raises it when first touched.
    """
    for name in list(flag_values):
        value = flag_values[name].value
        if type(value).__name__ == "_ErrorConfig":
            error = vars(value).get("_error")
            raise InputError(_config_load_message(error, name)) from error


def _config_load_message(error: BaseException | None, name: str | None = None) -> str | None:
    """'--config: cannot load the config file: <reason>' from ml_collections' load error (an ``OSError``)."""
    if not isinstance(error, OSError):
        return None
    text = str(error)
    match = _CONFIG_LOAD.match(text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[-1] if match and len(lines) > 1 else _one_line(text)
    name = match.group(1) if match else name
    return f"{'--' + name + ': ' if name else ''}cannot load the config file: {reason}"


def _raised_by_config_override(error: BaseException) -> bool:
    """Whether ``error`` came from ml_collections applying a ``--config.a.b=...`` override."""
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(error.__traceback__)]
    marker = os.path.join("ml_collections", "config_flags", "config_path.py")
    hits = [i for i, f in enumerate(files) if f.endswith(marker)]
    return bool(hits) and all(os.sep + "ml_collections" + os.sep in f for f in files[hits[-1]:])


def _unknown_field_message(error: BaseException, argv) -> str:
    """'--config.trian.x: the config has no field 'trian'; did you mean "train" ...' from the KeyError."""
    key_errors = [e for e in _chain(error) if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str)]
    if not key_errors:
        return _one_line(str(error)) or type(error).__name__
    field = key_errors[-1].args[0]  # the innermost: ConfigDict's bare field name
    if not field.isidentifier():  # config_path's own message, e.g. a field below an int
        lookup = re.search(r"Attempting to lookup: ([\w.]+)", field)
        flag = _override_flag(argv, re.escape(lookup.group(1)) if lookup else None)
        return f"{flag + ': ' if flag else ''}{_one_line(field)}"
    hint = " ".join(line.strip() for line in key_errors[0].args[0].splitlines()[1:] if line.strip())
    flag = _override_flag(argv, rf"(\w+\.)*{re.escape(field)}")
    message = f"{flag + ': ' if flag else ''}the config has no field {field!r}"
    return f"{message}; {hint[0].lower() + hint[1:]}" if hint else message


def _override_flag(argv, path: str | None) -> str | None:
    """The ``--config.a.b`` argument whose dotted path starts with the pattern ``path``."""
    if path is None:
        return None
    return next((a.split("=", 1)[0] for a in argv if re.match(rf"--\w+\.{path}(\.|=|$)", a)), None)


def _argv_verbosity(argv) -> int | None:
    """``--verbosity``/``-v`` from the raw arguments (for errors raised before the flags are parsed)."""
    argv = list(argv)
    value = None
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--":
            break
        name, sep, text = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in ("verbosity", "v"):
            text = text if sep else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                value = int(text)
            except ValueError:
                pass
    return value
