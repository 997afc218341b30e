"""landscape export: results as files other tools read.

``--format loss-landscape`` writes one HDF5 file per surface record in the layout of Li et
al.'s loss-landscape project (its ``plot_2D.py``, ``plot_1D.py`` and ``h5_to_vtp.py`` read
it): ``xcoordinates``, ``ycoordinates`` (2-D) and ``<split>_loss``, ``<split>_acc``.

Orientation. That project declares its 2-D arrays with shape ``(len(x), len(y))`` but fills
them in the order of ``np.meshgrid(x, y)`` raveled, i.e. y-major: flat element
``j * len(x) + i`` holds the point ``(x[i], y[j])``; its plots then read the array as
``Z[j, i]`` against ``meshgrid(x, y)``. We write exactly that buffer:
``np.ascontiguousarray(loss.T).reshape(len(x), len(y))`` where our ``loss[i, j]`` is at
``(x[i], y[j])``. For a square grid this is simply ``loss.T``, which is what their contour
and surface plots expect; for a non-square grid their ``h5_to_vtp.py`` (which ravels) reads
it correctly, while their ``plot_2D.py`` only handles square grids. Accuracies are written
in percent, their convention. :func:`read_loss_landscape_file` undoes all of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from landscape.atomic import write_atomic
from landscape.hdf5 import image_of, in_memory_file

from ..common import check_output, print_table

HELP = "export results for other tools: surfaces as loss-landscape (Li et al.) HDF5 files"
EXAMPLE = "landscape export results.h5 --format loss-landscape -o exported/"
FORMATS = ("loss-landscape",)


def add_arguments(p) -> None:
    p.add_argument(
        "results", metavar="RESULTS", help="results file (.h5) written by landscape surface"
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="loss-landscape",
        help="output format (default: %(default)s)",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="folder for the exported files (created)",
    )
    p.add_argument(
        "--key", default="surface", help="only records under this prefix (default: %(default)s)"
    )


def to_li_layout(values: np.ndarray) -> np.ndarray:
    """Our ``(len(x), len(y))`` x-major array as loss-landscape stores it (see the module docstring)."""
    v = np.asarray(values)
    if v.ndim == 1:
        return v
    return np.ascontiguousarray(v.T).reshape(v.shape)


def from_li_layout(values: np.ndarray, nx: int, ny: int | None) -> np.ndarray:
    """A loss-landscape array back to our x-major ``(nx, ny)`` array (``values[i, j]`` at ``(x[i], y[j])``)."""
    v = np.asarray(values)
    if ny is None:
        return v.reshape(nx)
    return v.reshape(-1).reshape(ny, nx).T.copy()


def write_loss_landscape_file(
    path: str | Path,
    x: np.ndarray,
    y: np.ndarray | None,
    loss: np.ndarray,
    accuracy: np.ndarray,
    split: str = "train",
    attrs: dict | None = None,
) -> Path:
    """One loss-landscape compatible file; ``loss[i, j]`` is at ``(x[i], y[j])``, ``accuracy`` a fraction."""
    f = in_memory_file()  # built in memory, then written by rename: never half a file
    with f:
        f["xcoordinates"] = np.asarray(x, dtype=float)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=float)
        f[f"{split}_loss"] = to_li_layout(loss)
        f[f"{split}_acc"] = to_li_layout(np.asarray(accuracy, dtype=float) * 100.0)
        f.attrs["layout"] = (
            "loss-landscape (Li et al. 2018): arrays declared (len(x), len(y)), filled y-major: "
            "flat index j*len(x)+i holds (x[i], y[j]); accuracy in percent"
        )
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        image = image_of(f)
    return write_atomic(path, image, option="-o", what="export")


@dataclass(frozen=True)
class LossLandscapeFile:
    """A loss-landscape surface file read back: ``values[name][i, j]`` at ``(x[i], y[j])``; ``*_acc`` as fractions."""

    path: str
    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        if self.y is None:
            cols = {"x": self.x}
        else:
            gx, gy = np.meshgrid(self.x, self.y, indexing="ij")
            cols = {"x": gx.ravel(), "y": gy.ravel()}
        cols.update({k: v.ravel() for k, v in self.values.items()})
        return pd.DataFrame(cols)


def read_loss_landscape_file(path: str | Path) -> LossLandscapeFile:
    """Read a loss-landscape (Li et al.) surface file, written by that project or by ``landscape export``.

    Every dataset shaped like the grid (``*_loss``, ``*_acc``, ...) is returned x-major
    (``[i, j]`` at ``(x[i], y[j])``); accuracies (``*_acc``) are converted from percent to fractions.
    """
    path = Path(path)
    from landscape.errors import UserError

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file") from exc
    with f:
        if "xcoordinates" not in f:
            raise UserError(f"{path}: no xcoordinates dataset: not a loss-landscape surface file")
        x = np.asarray(f["xcoordinates"][()], dtype=float).reshape(-1)
        y = (
            np.asarray(f["ycoordinates"][()], dtype=float).reshape(-1)
            if "ycoordinates" in f
            else None
        )
        n = len(x) * (len(y) if y is not None else 1)
        values = {}
        for name, obj in f.items():
            if (
                name in ("xcoordinates", "ycoordinates")
                or not isinstance(obj, h5py.Dataset)
                or obj.size != n
            ):
                continue
            v = from_li_layout(
                np.asarray(obj[()], dtype=float), len(x), None if y is None else len(y)
            )
            values[name] = v / 100.0 if name.endswith("_acc") else v
    return LossLandscapeFile(str(path), x, y, values)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def run(args) -> int:
    from landscape.errors import UserError
    from landscape.records import surface as S
    from landscape.results import read_records

    src = Path(args.results)
    if not src.exists():
        raise UserError(f"{src}: no such results file")
    _, complete, _ = read_records(src)  # current names, whatever the file's schema
    prefix = args.key.strip("/")
    records = [
        r
        for k, r in complete.items()
        if args.key and (k == prefix or k.startswith(prefix + "/")) and S.LOSS.name in r.datasets
    ]
    if not records:
        raise UserError(
            f"{src}: no complete surface records under /{args.key.strip('/')}: run landscape surface first"
        )
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder: pass a folder to -o")
    check_output(out, folder=True)
    rows = []
    for rec in records:
        key = rec.key
        x = rec[S.X.name]
        y = rec[S.Y.name] if S.Y.name in rec.datasets else None
        split = str(rec.attrs.get(S.SPLIT.name, "train"))
        name = _safe("__".join(key.split("/")[1:]) or key) + ".h5"
        write_loss_landscape_file(
            out / name,
            x,
            y,
            rec[S.LOSS.name],
            rec[S.ACCURACY.name],
            split,
            {"source": str(src.resolve()), "record": key, "split": split},
        )
        rows.append(
            {
                "record": key,
                "file": str(out / name),
                "shape": "x".join(str(s) for s in rec[S.LOSS.name].shape),
                "datasets": f"{split}_loss, {split}_acc",
            }
        )
    print_table(
        pd.DataFrame(rows), f"exported {len(rows)} surface(s) in loss-landscape format -> {out}"
    )
    return 0
