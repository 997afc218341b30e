"""Renamed command-line flags: the old spelling works for one more release, hidden from
``--help``, and says once on stderr what to type instead (see docs/glossary.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


class _Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new: str = "", **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: {option_string} is deprecated and goes in the next release: "
            f"use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def renamed(group, old: str, action: argparse.Action, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden alias of the flag that ``action`` (an ``add_argument``
    result) defines, with its type and choices."""
    new = action.option_strings[-1]
    for key in ("type", "choices", "metavar"):
        kwargs.setdefault(key, getattr(action, key))
    group.add_argument(
        old, dest=action.dest, action=_Renamed, new=new, help=argparse.SUPPRESS, **kwargs
    )
