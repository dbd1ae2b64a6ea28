"""The one exception type for bad input from the user.

:class:`InputError` marks an error in what the user gave (a config value, a data file, a flag, a
run directory that cannot be resumed as asked), as opposed to a bug. It is a ``ValueError``, so
code that catches ``ValueError`` keeps working. The absl mains (``experiments/cli.py``) print an
``InputError`` as one line and exit with status 2; any other exception keeps its traceback.

A path that is missing, or of the wrong kind, keeps its standard ``OSError`` type
(``FileNotFoundError``, ``IsADirectoryError`` for a directory given as a data file,
``NotADirectoryError`` for a file given as a data directory): the mains count these as user input
too. ``--verbosity=1`` or ``RNN_JAX_TRACEBACK=1`` adds the traceback to any of them.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names the field, file or value and what is allowed."""


__all__ = ["InputError"]
