"""Config helpers: typed arg strings for ``get_config(arg)`` and run-time checks of config values.

``parse_arg("cell=gru,hidden=512,runlocal", cell="lstm", hidden=256, runlocal=False)`` returns a
``ConfigDict`` with each value converted to the type of its default; a bare key sets a boolean to
true. Unknown keys and unconvertible values raise :class:`~rnn_jax.errors.InputError` (a ``ValueError``)
naming the key and the allowed ones. Configs never run code from the arg string.
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections

from rnn_jax.errors import InputError


def _convert(key: str, text: str, default: Any):
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InputError(f"config arg {key}={text!r}: expected a boolean (true/false)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise InputError(f"config arg {key}={text!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise InputError(f"config arg {key}={text!r}: expected a number") from None
    return text


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parse ``"key=value,flag,..."`` against ``defaults`` (which fix the keys and their types)."""
    values = dict(defaults)
    for item in filter(None, (part.strip() for part in (arg or "").split(","))):
        key, sep, text = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise InputError(f"unknown config arg {key!r}; allowed: {', '.join(sorted(defaults))}")
        if not sep:
            if not isinstance(defaults[key], bool):
                raise InputError(f"config arg {key!r} needs a value ({key}=...)")
            values[key] = True
        else:
            values[key] = _convert(key, text.strip(), defaults[key])
    return ml_collections.ConfigDict(values)


def check_choice(name: str, value, allowed: Iterable) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise InputError(f"config.{name} = {value!r} is not allowed; choose one of: "
                         f"{', '.join(map(str, allowed))}")


def check_int(name: str, value, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"config.{name} = {value!r}: must be an integer >= {minimum}")


def check_number(name: str, value, minimum: float = 0.0, maximum: float | None = None,
                 strict: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = value > minimum if strict else value >= minimum
        if maximum is not None:
            ok = ok and value < maximum
    if not ok:
        lo = f"> {minimum}" if strict else f">= {minimum}"
        hi = f" and < {maximum}" if maximum is not None else ""
        raise InputError(f"config.{name} = {value!r}: must be a number {lo}{hi}")
