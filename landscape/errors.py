"""The one exception type for bad input.

Every check on user input (files, arguments, models that do not fit together) raises
:class:`UserError` with one line saying what is wrong, where, and what to do. The CLI
prints that line and exits with status 2; everything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message is one line meant for the user."""
