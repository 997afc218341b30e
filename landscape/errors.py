"""The one exception type for bad input, and the pieces of its one-line messages.

Every check on user input (files, arguments, models that do not fit together) raises
:class:`UserError` with one line saying what is wrong, where, and what to do. The CLI
prints that line and exits with status 2; everything else is a bug and keeps its
traceback. The helpers below make those lines printable whatever the input: file names
that are not UTF-8, exceptions with multi-line messages, ``OSError`` s of any kind.
"""

from __future__ import annotations

import errno
import os


class UserError(ValueError):
    """Bad input: the message is one line meant for the user."""


def display(path: str | os.PathLike) -> str:
    """``path`` as printable text: bytes that are not UTF-8 shown as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def first_line(exc: BaseException, limit: int = 120) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def os_error_line(
    path: str | os.PathLike, exc: OSError, action: str = "read", what_to_do: str = ""
) -> str:
    """One line for an ``OSError`` on ``path``, e.g. ``cannot read P: permission denied``."""
    if exc.errno == errno.ENAMETOOLONG:
        return f"{display(path)}: file name too long for the file system: use a shorter name"
    reason = (exc.strerror or first_line(exc)).rstrip(".")
    reason = reason[:1].lower() + reason[1:]
    return f"cannot {action} {display(path)}: {reason}" + (f": {what_to_do}" if what_to_do else "")


def check_utf8(path: str | os.PathLike, what: str = "", fix: str = "rename it") -> None:
    """Refuse a file name that is not valid UTF-8: results files and reports record names as UTF-8."""
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UserError(
            f"{what + ' ' if what else ''}{display(path)}: the name is not valid UTF-8: {fix}"
        ) from exc
