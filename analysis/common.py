"""Shared CLI pieces: common arguments, building a study context, printing tables."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import pandas as pd

from .context import StudyContext
from .results import format_mean_std
from .results import mean_std as _mean_std


def add_roots(p: argparse.ArgumentParser, nargs: str = "+") -> None:
    p.add_argument(
        "roots",
        nargs=nargs,
        metavar="ROOT",
        help="checkpoint folder(s): ROOT/<group>/<seed>/{init,final}.pt, or folders of .pt files",
    )


def add_data(p: argparse.ArgumentParser, default: str | None = "digits") -> None:
    g = p.add_argument_group("data and device")
    g.add_argument(
        "--data",
        default=default,
        metavar="SPEC",
        help="digits | mnist:DIR | fashion-mnist:DIR | cifar10:DIR | npz:FILE | pt:FILE | module:callable (default: %(default)s)",
    )
    g.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="seeded random subset of N samples per split (recorded in the results)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="evaluation batch size (default: 4096)",
    )
    g.add_argument(
        "--device", default="auto", help="auto | cpu | cuda[:N] (default: auto, CUDA when present)"
    )
    g.add_argument(
        "--arch",
        default=None,
        metavar="ARCH",
        help="architecture when checkpoints have no sidecar: zoo name or package.module:callable / file.py:callable",
    )


def add_output(p: argparse.ArgumentParser, default: str | None = "results.h5") -> None:
    p.add_argument(
        "-o",
        "--output",
        default=default,
        metavar="FILE",
        help="results file (HDF5), created or extended (default: %(default)s)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute records that are already complete in the results file",
    )


def context_from_args(args: argparse.Namespace) -> StudyContext:
    return StudyContext.create(
        args.roots,
        data=args.data,
        output=getattr(args, "output", None),
        device=args.device,
        samples=args.samples,
        batch_size=args.batch_size,
        arch=args.arch,
        force=getattr(args, "force", False),
        progress=not args.quiet,
    )


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.{digits}g}"
    return str(x)


def mean_std(values) -> str:
    """``mean ± std`` (sample std) of the finite values as text; ``-`` when there are none."""
    return format_mean_std(*_mean_std(values))


def print_table(df: pd.DataFrame, title: str | None = None, file=None) -> None:
    """A compact plain-text table."""
    file = file or sys.stdout
    if title:
        print(title, file=file)
    if df is None or df.empty:
        print("  (nothing)", file=file)
        return
    print(
        df.to_string(
            index=False, formatters={c: fmt for c in df.columns if df[c].dtype.kind == "f"}
        ),
        file=file,
    )
