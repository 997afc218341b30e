"""The one way to load code a user named: ``package.module:name`` or ``path/to/file.py:name``.

Only names the user typed (on the command line or in Python) come here; no file read by the
toolkit ever decides what code runs (README, "Trust model"). Every failure is one
:class:`UserError` line naming the option: a missing file, a module that does not import
(its own error, first line), a syntax error with its place, a missing name.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from .errors import UserError, first_line


def import_object(spec: str, option: str, expected: str = "module:callable") -> Any:
    """The object ``spec`` names; ``option`` (``--arch``, ``--loss``, ...) and ``expected`` (what
    the option takes) are for the messages."""
    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise UserError(f"{option} {spec!r}: expected {expected}")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise UserError(f"{option} {spec!r}: no such file {path}")
            found = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(found)
            found.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except UserError:
        raise
    except SyntaxError as exc:
        raise UserError(
            f"{option} {spec!r}: {exc.filename}:{exc.lineno}: syntax error ({exc.msg})"
        ) from exc
    except Exception as exc:  # the user's module failed to import: its error, in one line
        raise UserError(
            f"{option} {spec!r}: cannot import {mod_name} ({type(exc).__name__}: {first_line(exc, 100)})"
        ) from exc
    if not hasattr(module, attr):
        raise UserError(f"{option} {spec!r}: {mod_name} has no callable {attr}")
    return getattr(module, attr)
