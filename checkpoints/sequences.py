"""Token-sequence data sources: ``modular:P`` (embedded, no download) and ``text:FILE``.

Both give integer token ids ``X`` (int64, ``(N, T)``) for the zoo's transformer.

``modular:P`` (optionally ``modular:P:F``): modular addition, the task of the grokking
studies. Every ordered pair ``(a, b)`` of ``0 .. P-1`` is one sample with inputs
``[a, b, P]`` (token ``P`` is ``=``, so the vocabulary has ``P + 1`` tokens) and target
``(a + b) mod P``: ``P^2`` samples, ``P`` classes. A fixed permutation (NumPy
``default_rng(0)``) puts the first ``round(F P^2)`` pairs in the training split and the rest
in the test split; ``F`` is the training fraction, 0.5 unless given (the grokking literature
uses 0.3 to 0.5). ``P`` runs from 2 to 1,000.

``text:FILE`` (optionally ``text:FILE:T``): character-level language modelling on a UTF-8
text file. The vocabulary is the file's distinct characters in code-point order (token
``k`` is the ``k``-th); windows of ``T`` characters (default 32) start every ``T``
characters, ``inputs = chars[i : i + T]`` and ``targets = chars[i + 1 : i + T + 1]``
(the next character at every position, ``(N, T)``). The first 90% of the windows are the
training split and the last 10% the test split (contiguous, so no text is in both).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.errors import UserError, first_line, os_error_line

#: the largest modulus (P^2 samples: a million pairs)
MAX_MODULUS = 1000
DEFAULT_TRAIN_FRACTION = 0.5
DEFAULT_WINDOW = 32
TEXT_TRAIN_SHARE = 0.9


def parse_modular(spec: str) -> tuple[int, float]:
    """``modular:P[:F]`` as ``(P, F)``, or :class:`UserError` saying what is wrong."""
    parts = spec.split(":")
    usage = "use modular:P or modular:P:F (P from 2 to 1000, F a training fraction in (0, 1))"
    if len(parts) not in (2, 3):
        raise UserError(f"--data {spec}: {usage}")
    try:
        p = int(parts[1])
        frac = float(parts[2]) if len(parts) == 3 else DEFAULT_TRAIN_FRACTION
    except ValueError as exc:
        raise UserError(f"--data {spec}: {usage}") from exc
    if not 2 <= p <= MAX_MODULUS or not 0 < frac < 1:
        raise UserError(f"--data {spec}: {usage}")
    return p, frac


def modular(p: int, split: str, fraction: float = DEFAULT_TRAIN_FRACTION) -> tuple[Tensor, Tensor]:
    """``(X, y)`` of modular addition mod ``p`` for ``split`` (see the module notes)."""
    a, b = np.divmod(np.arange(p * p), p)
    order = np.random.default_rng(0).permutation(p * p)
    n_train = min(p * p - 1, max(1, round(fraction * p * p)))
    idx = np.sort(order[:n_train] if split == "train" else order[n_train:])
    X = np.stack([a[idx], b[idx], np.full(len(idx), p)], axis=1)
    return torch.from_numpy(X.astype(np.int64)), torch.from_numpy(
        ((a + b) % p)[idx].astype(np.int64)
    )


def modular_description(p: int, fraction: float) -> dict[str, Any]:
    return {
        "task": f"(a + b) mod {p}: inputs [a, b, {p}] (token {p} is '='), target (a + b) mod {p}",
        "vocab_size": p + 1,
        "num_classes": p,
        "train_fraction": fraction,
        "split_seed": 0,
    }


def parse_text(spec: str) -> tuple[Path, int]:
    """``text:FILE[:T]`` as ``(path, T)``: a trailing ``:T`` counts only when ``FILE`` without it exists."""
    rest = spec.partition(":")[2]
    if not rest:
        raise UserError(
            f"--data {spec}: name the file, e.g. text:path/to/book.txt (or text:FILE:T)"
        )
    m = re.fullmatch(r"(.*):(\d+)", rest)
    if m and not Path(rest).exists() and Path(m.group(1)).exists():
        window = int(m.group(2))
        if window < 1:
            raise UserError(f"--data {spec}: the window T must be a positive number of characters")
        return Path(m.group(1)), window
    return Path(rest), DEFAULT_WINDOW


def read_text(path: Path) -> str:
    """The file's text (UTF-8), or :class:`UserError` naming the file."""
    try:
        if not path.is_file():
            raise UserError(f"text:{path}: no such file: point at a UTF-8 text file")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text ({first_line(exc)}): text:FILE reads UTF-8 files"
        ) from exc
    except OSError as exc:
        raise UserError(os_error_line(path, exc)) from exc


def text_windows(path: Path, window: int, split: str) -> tuple[Tensor, Tensor, str]:
    """``(X, y, vocabulary)`` of character windows of ``path`` for ``split`` (see the module notes)."""
    text = read_text(path)
    vocab = "".join(sorted(set(text)))
    n = (len(text) - 1) // window
    if n < 2:
        raise UserError(
            f"{path}: {len(text)} characters give {max(n, 0)} windows of {window}: "
            "need at least 2 (one for each split); use a longer file or a shorter window (text:FILE:T)"
        )
    ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lookup = {ord(c): k for k, c in enumerate(vocab)}
    tokens = np.array([lookup[int(c)] for c in ids[: n * window + 1]], dtype=np.int64)
    starts = np.arange(n) * window
    X = tokens[starts[:, None] + np.arange(window)]
    Y = tokens[starts[:, None] + np.arange(1, window + 1)]
    n_train = min(n - 1, max(1, round(TEXT_TRAIN_SHARE * n)))
    sl = slice(0, n_train) if split == "train" else slice(n_train, n)
    return torch.from_numpy(X[sl].copy()), torch.from_numpy(Y[sl].copy()), vocab


def text_description(vocab: str, window: int) -> dict[str, Any]:
    return {
        "task": f"next character at every position of windows of {window} (inputs chars[i:i+T], targets chars[i+1:i+T+1])",
        "vocab_size": len(vocab),
        "num_classes": len(vocab),
        "window": window,
        "vocabulary": vocab,
        "train_share": TEXT_TRAIN_SHARE,
    }
