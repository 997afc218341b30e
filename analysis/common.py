"""Shared CLI pieces: common arguments, checks on names and outputs, building a study context
(with a preflight that loads every checkpoint and the data before any work), printing tables.

The checks here run before anything is computed or written, so that bad input costs one
line and leaves the output where it was.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from landscape import atomic
from landscape.errors import UserError, check_utf8, display, first_line, os_error_line

from .context import StudyContext


# ----------------------------------------------------------------------------- argument types
def int_at_least(low: int, what: str | None = None):
    """An argparse ``type``: an integer ``>= low`` (``--batch-size 0`` is an error, not a default)."""
    what = what or ("a positive integer" if low == 1 else f"an integer >= {low}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = what
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0, "an integer >= 0")


def finite_float(low: float | None = None, strict: bool = False):
    """An argparse ``type``: a finite number, ``> low`` (``strict``) or ``>= low``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(
                f"expected a number {'>' if strict else '>='} {low:g}, got {text!r}"
            )
        return value

    parse.__name__ = "number"
    return parse


# ----------------------------------------------------------------------------- names and outputs
#: argparse destinations that name files or folders to read, and to write (with their option)
INPUT_ARGS = ("roots", "path", "results", "a", "b", "config", "spec")
OUTPUT_ARGS = {"output": "-o", "out": "--out", "static": "--static"}


def _name_max(path: Path) -> int:
    for p in (path, *path.parents):
        try:
            return os.pathconf(p, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def check_name(path: str | os.PathLike, what: str = "", fix: str = "rename it") -> None:
    """Refuse a name that is not UTF-8 or has a component longer than the file system allows."""
    check_utf8(path, what, fix)
    path = Path(path)
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > _name_max(path):
        raise UserError(
            f"{what + ' ' if what else ''}{display(path)}: file name too long for the file system "
            f"({longest} bytes in one name, the limit is {_name_max(path)}): use a shorter name"
        )


def check_arguments(args: argparse.Namespace) -> None:
    """Every file or folder named on the command line, before any work: UTF-8 and length."""
    for dest in INPUT_ARGS:
        value = getattr(args, dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                check_name(v)
    for dest, option in OUTPUT_ARGS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str):
            check_name(value, option, f"choose another {option}")
    data = getattr(args, "data", None)
    if isinstance(data, str):
        check_utf8(data, "--data")
        from checkpoints.sources import FILE_KINDS

        kind, sep, arg = data.partition(":")
        if sep and arg and kind.lower() in FILE_KINDS:
            check_name(arg, "--data")


def _read_only_fs(directory: Path) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_output(path: str | os.PathLike, option: str = "-o", *, folder: bool = False) -> Path:
    """Refuse an output that cannot be written, before any work: a bad name, a file where a
    folder is needed (or the reverse), or a read-only / forbidden place to create it in."""
    path = Path(path)
    check_name(path, option, f"choose another {option}")
    try:
        if folder and path.exists() and not path.is_dir():
            raise UserError(f"{option} {path}: is a file; {option} takes an output folder")
        if not folder and path.is_dir():
            raise UserError(f"{option} {path}: is a folder; {option} takes a file name")
        target = path if folder and path.is_dir() else path.parent
        existing = next((p for p in (target, *target.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise UserError(
                f"{option} {path}: {existing} is a file, not a folder: choose another {option}"
            )
    except OSError as exc:
        raise write_error(path, exc, option) from exc
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only_fs(existing) else errno.EACCES
        raise write_error(path, OSError(code, os.strerror(code)), option)
    return path


def write_error(path: str | os.PathLike, exc: OSError, option: str = "-o") -> UserError:
    """The one line for a failed write of ``path``: :func:`landscape.atomic.write_error`'s,
    else the system's words (here the caller has decided that the error is the output's)."""
    err = atomic.write_error(path, exc, option)
    return err or UserError(os_error_line(path, exc, "write", f"choose another {option}"))


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
        type=positive_int,
        default=None,
        metavar="N",
        help="seeded random subset of N samples per split (recorded in the results)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
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


def add_objective(p: argparse.ArgumentParser) -> None:
    """``--loss NAME|module:callable``: the loss every analysis of the verb measures."""
    p.add_argument(
        "--loss",
        default=None,
        metavar="NAME|module:callable",
        help="the loss: auto (default: cross-entropy for integer labels, squared error for float "
        "targets), classification, squared_error, lm (token-level cross-entropy, padding "
        "masked), or your own module:callable / file.py:callable, loss(outputs, batch) -> "
        "per-sample losses (see docs/objectives.md)",
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
        help="recompute records that are already complete in the results file; also write "
        "into an HDF5 file that another program wrote (refused by default)",
    )


def data_label(spec: str) -> str:
    """What a message about the data names: the file for ``npz:``/``pt:``, else ``--data SPEC``."""
    kind, _, arg = spec.partition(":")
    return arg if kind.lower() in ("npz", "pt") and arg else f"--data {spec}"


def check_data_fits(
    model,
    dataset,
    checkpoint: str | os.PathLike,
    where: str,
    *,
    labels: bool = True,
    objective: str | None = None,
) -> None:
    """One forward pass on two samples: the data's shape (and ``labels``) against the model's.

    Raises one :class:`UserError` naming the data (``where``) and the checkpoint, instead of a
    matmul error deep inside the first evaluation. A loss other than ``auto`` (``objective``)
    makes its own checks on those outputs and the whole data's targets instead of the labels'.
    """
    import torch

    from landscape.evaluation import eval_mode

    first = next(iter(model.parameters()), None)
    x = dataset.X[:2].to(first.device if first is not None else "cpu")
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise UserError(
            f"{where}: inputs of shape {tuple(dataset.X.shape[1:])} do not fit the model of "
            f"{checkpoint} ({first_line(exc, 100)}): check --data against the checkpoint"
        ) from exc
    y = dataset.y
    if not labels:
        return
    from landscape.objectives import is_builtin, objective_name

    if objective_name(objective) != "auto":
        _check_objective(objective, out, dataset, checkpoint, where, user=not is_builtin(objective))
        return
    if y.is_floating_point():
        if out.shape[0] and y[:2].numel() != out.numel():
            raise UserError(
                f"{where}: targets of shape {tuple(y.shape[1:])} do not fit the outputs "
                f"{tuple(out.shape[1:])} of {checkpoint}: check --data against the checkpoint"
            )
        return
    lo, hi = int(y.min()), int(y.max())
    if out.dim() != 2:
        raise UserError(
            f"{where}: integer labels need model outputs of shape (N, classes), {checkpoint} "
            f"gives {tuple(out.shape)}: check --data against the checkpoint"
            + (" (token targets need --loss lm)" if out.dim() == 3 and y.dim() == 2 else "")
        )
    if lo < 0 or hi >= out.shape[1]:
        raise UserError(
            f"{where}: labels range over {lo}..{hi} but the model has {out.shape[1]} outputs "
            f"({checkpoint}): check --data against the checkpoint"
        )


def _check_objective(objective, out, dataset, checkpoint, where: str, *, user: bool) -> None:
    """The loss on the outputs of the first two samples: its checks (label or token ranges over
    the whole data), one value per unit, finite values; one line naming the data and checkpoint."""
    import torch

    from landscape.data import as_batches
    from landscape.objectives import resolve_objective

    obj = resolve_objective(objective, "--loss")
    full = as_batches(dataset.pair, device="cpu")  # views of the data, no copy
    b = full.batches[0].rows(0, 2).to(out.device if isinstance(out, torch.Tensor) else "cpu")
    try:
        with torch.no_grad():
            obj.validate(out, b, full)
            losses, _ = obj.measure(out, b)
    except UserError as exc:
        raise UserError(f"{where}: {exc} ({checkpoint})") from exc
    except Exception as exc:  # the user's loss raised: its error, in one line
        if not user:
            raise
        raise UserError(
            f"{where}: the loss {obj.name} failed on the outputs of {checkpoint} "
            f"({type(exc).__name__}: {first_line(exc, 100)})"
        ) from exc
    if not bool(torch.isfinite(losses).all()):
        raise UserError(
            f"{where}: the loss {obj.name} gives NaN or Inf on the first samples with {checkpoint}: "
            "check the loss and the data"
        )


def preflight(
    ctx: StudyContext,
    splits: Iterable[str] = ("test",),
    *,
    data: bool = True,
    inits: bool = False,
    keep: bool = True,
) -> None:
    """Load every checkpoint (finals, and inits when ``inits``), check each group is one
    family, load the data of ``splits`` and check it fits each group's model: bad input is
    found before any work.

    ``keep``: the models stay cached in ``ctx`` for the studies (those that use every seed);
    otherwise only each group's first model does, and the others are read, checked and let go
    (a study that needs one model per group does not hold them all in memory).
    """
    from checkpoints import load_model
    from landscape.params import check_same_family

    for group, runs in ctx.groups.items():
        if keep:
            ctx.group_models(group)
        else:
            first = ctx.model(runs[0])
            for r in runs[1:]:
                other = load_model(r.final, arch=ctx.arch)
                check_same_family(first, other, f"group {group}: {runs[0].final} and {r.final}")
                del other
        for r in runs if inits else []:
            if r.init is not None and keep:
                ctx.model(r, "init")
            elif r.init is not None:
                load_model(r.init, arch=ctx.arch)
    if not data:
        return
    where = data_label(ctx.data_spec)
    for split in dict.fromkeys(splits):
        ds = ctx.dataset(split)
        for runs in ctx.groups.values():
            check_data_fits(ctx.model(runs[0]), ds, runs[0].final, where, objective=ctx.objective)


def open_context(
    roots,
    *,
    data: str = "digits",
    output: str | os.PathLike,
    device: str | None = "auto",
    samples: int | None = None,
    batch_size: int | None = None,
    arch: str | None = None,
    force: bool = False,
    progress: bool = True,
    splits: Iterable[str] = ("test",),
    check_data: bool = True,
    inits: bool = False,
    keep: bool = True,
    before_lock=None,
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
    connect_timeout: float = 10.0,
    objective: str | None = None,
) -> StudyContext:
    """A study context whose checkpoints and data were all checked (:func:`preflight`) before
    the results file is locked: bad input leaves nothing on disk, not even a lock file.

    As :meth:`StudyContext.create` (the same fields), with the store's lock taken last;
    ``before_lock`` (optional) runs just before, e.g. to create an output folder.
    """
    ctx = StudyContext.create(
        roots,
        data=data,
        output=output,
        device=device,
        samples=samples,
        batch_size=batch_size,
        arch=arch,
        force=force,
        progress=progress,
        lock=False,
        workers=workers,
        scheduler=scheduler,
        gpus=gpus,
        connect_timeout=connect_timeout,
        objective=objective,
    )
    preflight(ctx, splits, data=check_data, inits=inits, keep=keep)
    ctx.check_executor()  # bad --workers / --gpus / --scheduler: before the file is locked
    if before_lock is not None:
        before_lock()
    ctx.store.acquire()  # this command is the file's one writer from here on
    return ctx


def context_from_args(
    args: argparse.Namespace,
    *,
    splits: Iterable[str] | None = None,
    data: bool = True,
    inits: bool = False,
    keep: bool = False,
) -> StudyContext:
    """The study context of a verb, after checking the output name and place, every
    checkpoint and the data (see :func:`open_context`; ``keep``: the verb uses every model,
    keep them all loaded): nothing is computed or written first."""
    output = getattr(args, "output", None)
    check_output(output)
    if splits is None:
        split = getattr(args, "split", None)
        splits = [split] if split in ("train", "test") else ["test"]
    return open_context(
        args.roots,
        data=args.data,
        output=output,
        device=args.device,
        samples=args.samples,
        batch_size=args.batch_size,
        arch=args.arch,
        force=getattr(args, "force", False),
        progress=not args.quiet,
        splits=splits,
        check_data=data,
        inits=inits,
        keep=keep,
        objective=getattr(args, "loss", None),
        **executor_kwargs(args),
    )


def executor_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The executor flags of a verb (see :func:`add_executor`) as keyword arguments."""
    return {
        "workers": getattr(args, "workers", None),
        "scheduler": getattr(args, "scheduler", None),
        "gpus": getattr(args, "gpus", None),
        "connect_timeout": getattr(args, "connect_timeout", 10.0),
    }


def add_executor(p: argparse.ArgumentParser, what: str = "records") -> None:
    """``--workers N|gpu``, ``--gpus``, ``--scheduler ADDRESS``, ``--connect-timeout``: where the
    study's independent tasks run (inline when none is given)."""
    g = p.add_argument_group("executor (default: inline, in this process)")
    g.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        metavar="N|gpu",
        help=f"{what} on N local Dask worker processes (cores/N torch threads each), or 'gpu': "
        "one worker per visible GPU, each pinned to its device",
    )
    g.add_argument(
        "--gpus",
        default=None,
        metavar="all|0,1,...",
        help="one worker per listed GPU (as --workers gpu, for a subset of the GPUs)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help=f"{what} on the Dask cluster at ADDRESS (tcp://HOST:PORT; see docs/cluster.md)",
    )
    g.add_argument(
        "--connect-timeout",
        type=finite_float(0, strict=True),
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for --scheduler (default: %(default)s)",
    )


def workers_arg(text: str) -> int | str:
    """argparse type of ``--workers``: a positive count or ``gpu``."""
    from landscape.distributed import parse_workers

    try:
        return parse_workers(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--workers ")) from None


def fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        return f"{x:.{digits}g}"
    return str(x)


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
