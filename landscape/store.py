"""The one results store: a self-describing HDF5 file.

Layout: ``/<analysis>/<group>/<record>/`` where ``record`` is a seed (``seed0``), a pair
(``seed0-seed1``) or another key the analysis defines. Each record group holds datasets
and attributes; every dataset carries ``axes`` (names of its dimensions, in order),
``units`` and ``description`` attributes, and every record carries its settings, data
description, checkpoint paths and SHA-256 hashes, versions and time. The root carries
``schema_version``, ``package``, ``package_version`` and the list of ``commands`` that
wrote into the file.

Crash safety: every write goes to a temporary copy of the file, which is flushed,
fsynced and atomically renamed over the original, so a killed process leaves either the
old file or the new one, never a half-written one. A record's ``complete`` attribute is
set in the same write as its last data; records written in pieces (resumable grids) carry
``complete = False`` until their last piece lands.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import UserError

SCHEMA_VERSION = 1
PACKAGE = "landscape"


def package_version() -> str:
    from . import __version__

    return __version__


def provenance() -> dict[str, Any]:
    """Versions, time and command line, for a record's attributes."""
    import torch

    return {
        "package": PACKAGE,
        "package_version": package_version(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "h5py_version": h5py.__version__,
        "python_version": platform.python_version(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) if sys.argv else "",
    }


def _encode(value: Any) -> Any:
    if value is None:
        return "null"
    if isinstance(value, str):
        return str(value)  # np.str_ has no HDF5 conversion
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return "json:" + json.dumps(value, default=str)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        if value.startswith("json:"):
            return json.loads(value[5:])
        if value == "null":
            return None
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass
class Dataset:
    """An array plus the attributes that make it readable without this package."""

    data: np.ndarray
    axes: tuple[str, ...] = ()
    units: str = ""
    description: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Record:
    key: str
    attrs: dict[str, Any]
    datasets: dict[str, np.ndarray]
    dataset_attrs: dict[str, dict[str, Any]]

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.datasets[name]


def _check_readable(path: Path) -> None:
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", 0))
            if f.attrs.get("package") not in (PACKAGE, b"landscape", None):
                raise UserError(f"{path}: not a landscape results file")
    except OSError as exc:
        raise UserError(
            f"{path}: not a readable HDF5 results file (truncated or corrupt?): delete it or pass another -o"
        ) from exc
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{path}: results schema version {version} is newer than this landscape ({SCHEMA_VERSION}): upgrade the package"
        )


def file_mode(path: Path) -> int:
    """Permissions for a file written by rename: the old file's, else 0666 less the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class ResultsStore:
    """Read and write records of one results file. Cheap to create; opens the file per call."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True):
        self.path = Path(path)
        if self.path.exists():
            if self.path.is_dir():
                raise UserError(f"{self.path}: is a folder, expected a results file (.h5)")
            _check_readable(self.path)
        elif not create:
            raise UserError(f"{self.path}: no such results file")

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary copies left by a writer that was killed mid-write.

        Only the (single) writer of a file may call this: a live writer's temporary would go too.
        """
        removed = []
        for p in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
        return removed

    # -- reading -------------------------------------------------------------------------
    def _open(self):
        return h5py.File(self.path, "r")

    def root_attrs(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        with self._open() as f:
            return {k: _decode(v) for k, v in f.attrs.items()}

    def keys(self, analysis: str | None = None, *, complete: bool | None = True) -> list[str]:
        """Record keys (``analysis/group/record``), by default only complete ones."""
        if not self.path.exists():
            return []
        out: list[str] = []
        with self._open() as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "complete" in obj.attrs:
                    if complete is None or bool(obj.attrs["complete"]) == complete:
                        out.append(name)

            root = f if analysis is None else f.get(analysis)
            if root is not None:
                root.visititems(visit)
        if analysis:
            out = [f"{analysis}/{k}" for k in out]
        return sorted(out)

    def has(self, key: str) -> bool:
        """True when a *complete* record exists at ``key``."""
        if not self.path.exists():
            return False
        with self._open() as f:
            return key in f and bool(f[key].attrs.get("complete", False))

    def read(self, key: str) -> Record:
        with self._open() as f:
            if key not in f:
                raise KeyError(key)
            g = f[key]
            datasets, dattrs = {}, {}
            for name, obj in g.items():
                if isinstance(obj, h5py.Dataset):
                    # string datasets come back as str, not bytes
                    datasets[name] = (
                        obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                    )
                    dattrs[name] = {k: _decode(v) for k, v in obj.attrs.items()}
            return Record(key, {k: _decode(v) for k, v in g.attrs.items()}, datasets, dattrs)

    # -- writing -------------------------------------------------------------------------
    def write(
        self,
        key: str,
        datasets: Mapping[str, Dataset | np.ndarray],
        attrs: Mapping[str, Any] | None = None,
        *,
        complete: bool = True,
    ) -> None:
        """Replace the record at ``key`` atomically (write a copy, fsync, rename)."""
        attrs = dict(attrs or {})
        self._transact(lambda f: self._write_group(f, key, datasets, attrs, complete))

    def delete(self, key: str) -> None:
        self._transact(lambda f: f.__delitem__(key) if key in f else None)

    def _write_group(self, f: h5py.File, key: str, datasets, attrs, complete: bool) -> None:
        if key in f:
            del f[key]
        g = f.require_group(key)
        for name, ds in datasets.items():
            if not isinstance(ds, Dataset):
                ds = Dataset(np.asarray(ds))
            arr = np.asarray(ds.data)
            if arr.dtype.kind == "U":
                arr = arr.astype(h5py.string_dtype())
            d = g.create_dataset(name, data=arr, compression="gzip" if arr.size > 4096 else None)
            d.attrs["axes"] = _encode(list(ds.axes)) if ds.axes else "json:[]"
            d.attrs["units"] = ds.units
            d.attrs["description"] = ds.description
            for k, v in ds.attrs.items():
                d.attrs[k] = _encode(v)
        for k, v in attrs.items():
            g.attrs[k] = _encode(v)
        g.attrs["complete"] = bool(complete)

    def _transact(self, fn) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix="." + self.path.name + ".", suffix=".tmp", dir=self.path.parent
        )
        os.close(fd)
        try:
            if self.path.exists():
                shutil.copyfile(self.path, tmp)
                mode = "r+"
            else:
                mode = "w"
            with h5py.File(tmp, mode) as f:
                if mode == "w":
                    f.attrs["schema_version"] = SCHEMA_VERSION
                    f.attrs["package"] = PACKAGE
                    f.attrs["package_version"] = package_version()
                    f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
                        timespec="seconds"
                    )
                    f.attrs["commands"] = "json:[]"
                command = " ".join(sys.argv)
                commands = _decode(f.attrs.get("commands", "json:[]")) or []
                if command and (not commands or commands[-1] != command):
                    commands.append(command)
                    f.attrs["commands"] = _encode(commands)
                f.attrs["modified"] = _dt.datetime.now(_dt.timezone.utc).isoformat(
                    timespec="seconds"
                )
                fn(f)
                f.flush()
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, file_mode(self.path))  # mkstemp creates 0600; keep the usual permissions
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
