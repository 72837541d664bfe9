"""The base of every error that means "bad input" (a file, a bundle, a checkpoint, an option), and the
small helpers that every layer uses to say what went wrong in one line.

An error's message is one line naming the problem; the CLI prints it and exits non-zero, no traceback.
"""

from __future__ import annotations

import numbers
import unicodedata
from typing import Any, Callable, Optional

Status = Callable[[str], None]
"""Where a long-running function reports what it is doing (one line each): the CLI passes a function
that prints to stderr, an app its logger, a test a list's ``append``. Parameters of this type are named
``status`` everywhere."""


UNPRINTABLE = frozenset(("Cc", "Cs", "Zl", "Zp"))  # control characters, lone surrogates (undecodable bytes), line breaks


class CapkitError(ValueError):
    pass


def printable(name: str) -> str:
    """``name`` with control characters, line and paragraph separators and undecodable bytes escaped
    (``\\n``, ``\\t``, ``\\x1b``, ``\\udcff``), so that a file name cannot split a line of output
    or fail to print; every other character, backslashes included, is kept as it is."""
    if name.isprintable():
        return name
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(ch) in UNPRINTABLE else ch for ch in name)


def first_line(error: BaseException, limit: Optional[int] = None) -> str:
    """The first line of ``error``'s message (its type's name when the message is empty), at most
    ``limit`` characters: what a one-line report of a foreign library's error shows."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if limit is None else line[:limit]


def one_line(error: BaseException | str, limit: Optional[int] = None) -> str:
    """``error``'s whole message with every run of white space (newlines included) made one space,
    at most ``limit`` characters; the type's name when the message is empty."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text if limit is None else text[:limit]


def is_int(value: Any) -> bool:
    """An integer (Python's or numpy's), not a bool: what every "integer >= 1" option accepts. (numpy's bool_
    is not an Integral; Python's bool is.)"""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(value: Any, name: str, minimum: int = 1, maximum: Optional[int] = None,
              error: type[CapkitError] = CapkitError, optional: bool = False) -> Optional[int]:
    """``value`` as a Python int when it is an integer (not a bool) in [minimum, maximum]; else
    ``error`` with one line naming ``name``. ``optional``: None is allowed (and returned)."""
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum or (maximum is not None and value > maximum):
        where = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise error(f"{name} must be an integer {where}, got {value!r}")
    return int(value)


__all__ = ["CapkitError", "Status", "check_int", "first_line", "is_int", "one_line", "printable"]
