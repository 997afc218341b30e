"""Renamed keywords and attributes: the old name works for one more release, with a warning.

A function that renamed a keyword takes the old names through ``**renamed`` and calls
:func:`renamed_keywords`, which maps each old name to its new one (with a
``DeprecationWarning``) and refuses unknown keywords exactly as Python would.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any


def renamed_keywords(
    where: str,
    given: Mapping[str, Any],
    renames: Mapping[str, str],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``current`` (new keyword -> value) updated from the old keywords in ``given``.

    ``renames`` maps old names to new ones. An old name warns (``DeprecationWarning``) and
    fills its new name; giving both, or an old name whose new one already differs from its
    default (``defaults``, ``None`` when absent), raises ``TypeError``, as does a keyword that
    is neither.
    """
    out = dict(current)
    defaults = defaults or {}
    for old, value in given.items():
        new = renames.get(old)
        if new is None:
            raise TypeError(f"{where}() got an unexpected keyword argument {old!r}")
        if out.get(new) != defaults.get(new):
            raise TypeError(f"{where}() got both {old!r} and its new name {new!r}: use {new!r}")
        warn_renamed(f"{where}({old}=...)", f"{new}=", stacklevel=4)
        out[new] = value
    return out


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (removed in the next release)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
