"""The one results store: a self-describing HDF5 file.

Layout: ``/<analysis>/<group>/<record>/`` where ``record`` is a seed (``seed0``), a pair
(``seed0-seed1``) or another key the analysis defines. Each record group holds datasets
and attributes; every dataset carries ``axes`` (names of its dimensions, in order),
``units`` and ``description`` attributes, and every record carries its settings, data
description, checkpoint paths and SHA-256 hashes, versions and time. The root carries
``schema_version``, ``package``, ``package_version`` and the list of ``commands`` that
wrote into the file.

netCDF-4 / xarray: every record group is a valid netCDF-4 group whose datasets' ``axes``
are HDF5 dimension scales, so
``xarray.open_dataset(path, group="analysis/group/record", engine="h5netcdf")`` shows the
declared dimension names. How values, booleans and strings are stored, and how a possibly
corrupt file is read with care, is :mod:`landscape.hdf5`; :meth:`ResultsStore.read` gives
back what was written (Python bools, ``str``, decoded JSON).

Crash safety: every write changes the file in memory (HDF5 never writes to disk itself, so
a full disk is a plain OSError and never leaves HDF5 broken), then replaces the file with
the new image by :func:`landscape.atomic.write_atomic` (temporary, fsync, rename), so a
killed process leaves either the old file or the new one, never a half-written one; the
next writer removes temporaries of dead writers. A record's ``complete`` attribute is set in
the same write as its last data; records written in pieces (resumable grids) carry
``complete = False`` until their last piece lands.

One writer per file (:mod:`landscape.locking`): a writer holds an exclusive ``flock`` on the
sidecar ``.<name>.lock`` from its first write until it closes the store, the store is
garbage collected or the process ends. Another process that wants to write is refused with
one line naming the holder, or waits (``wait=``). Readers never lock and never block:
renames are atomic, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import atomic, locking
from .atomic import (
    file_mode,  # noqa: F401 (re-exported: other modules import it from here)
    no_space,
    write_atomic,
    write_error,
)
from .errors import UserError
from .hdf5 import (
    BOOL_DATA_ATTR,
    decode,
    encode,
    get_attrs,
    image_of,
    in_memory_file,
    is_dimension_only,
    read_attr,
    read_data,
    set_attrs,
    string_data,
    write_attr,
    write_dimensions,
)
from .locking import lock_path

SCHEMA_VERSION = 2
"""2: dimension scales, netCDF-compatible attributes (int8 booleans), the records' current
dataset names. 1: none of these; such files are read (readers translate the names) but not
appended to, so that one file holds one schema. Files of either version may hold strings
fixed- or variable-length (:mod:`landscape.hdf5`): readers take both."""
PACKAGE = "landscape"
_WHAT = "results file"  # what the one-line write errors call the file


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


def _file_identity(path: Path) -> tuple[Any, int]:
    """(``package`` attribute or None, schema version) of an existing HDF5 file."""
    try:
        with h5py.File(path, "r") as f:
            package = decode(read_attr(f, "package"))
            version = int(read_attr(f, "schema_version", 0)) if package == PACKAGE else 0
    except OSError as exc:
        raise UserError(
            f"{path}: not a readable HDF5 results file (truncated or corrupt?): delete it or pass another -o"
        ) from exc
    return package, version


def _check_version(path: Path, version: int, *, writing: bool = False) -> None:
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{path}: results schema version {version} is newer than this landscape ({SCHEMA_VERSION}): upgrade the package"
        )
    if writing and version < SCHEMA_VERSION:
        # older records use older dataset names, which readers translate by the root's version:
        # one file holds one schema
        raise UserError(
            f"{path}: results schema version {version} is older than this landscape's "
            f"({SCHEMA_VERSION}): it can be read (report, load) but not added to: "
            "write to another -o file"
        )


def _foreign_message(path: Path) -> str:
    return (
        f"{path} is an HDF5 file not written by landscape: choose another -o, "
        "or pass --force to add landscape records to it"
    )


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


class ResultsStore:
    """Read and write records of one results file. Cheap to create; opens the file per call.

    Reading (:meth:`read`, :meth:`keys`, :meth:`has`, :meth:`root_attrs`) never locks.
    The first write (or :meth:`acquire`) takes the file's writer lock and keeps it until
    :meth:`close`, the end of a ``with`` block, garbage collection of the store or the end of
    the process. ``wait``: what to do when another process holds the lock: ``False`` (default)
    refuse with a :class:`UserError`; ``True`` wait for it; a number: wait at most that many
    seconds. ``adopt_foreign``: write landscape records into an HDF5 file that another
    program wrote (refused by default, so that a wrong ``-o`` does not alter someone's data).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        create: bool = True,
        wait: bool | float = False,
        adopt_foreign: bool = False,
    ):
        self.path = Path(path)
        self.wait = wait
        self.adopt_foreign = adopt_foreign
        self._lock: locking._Lock | None = None
        self._finalizer: weakref.finalize | None = None
        if self.path.exists():
            if self.path.is_dir():
                raise UserError(f"{self.path}: is a folder, expected a results file (.h5)")
            package, version = _file_identity(self.path)
            if package not in (PACKAGE, None) and not adopt_foreign:
                raise UserError(f"{self.path}: not a landscape results file")
            _check_version(self.path, version)
        elif not create:
            raise UserError(f"{self.path}: no such results file")

    # -- the writer lock -----------------------------------------------------------------
    @property
    def lock_path(self) -> Path:
        return lock_path(self.path)

    @property
    def locked(self) -> bool:
        """True while this store holds the file's writer lock."""
        return self._lock is not None and self._lock.valid

    def acquire(self, wait: bool | float | None = None) -> ResultsStore:
        """Become the file's one writer (see the class docstring); ``wait`` overrides the store's.

        The first acquisition in a process also removes temporaries left by killed writers,
        and refuses a file another program wrote unless ``adopt_foreign``.
        """
        self._acquire(wait)
        return self

    def _acquire(self, wait: bool | float | None) -> list[Path]:
        """:meth:`acquire`; returns the temporaries it removed."""
        if self.locked:
            return []
        self._lock = None
        self._check_writable_file()  # bad input leaves nothing behind, not even a lock file
        lk, fresh = locking.acquire(self.path, self.wait if wait is None else wait)
        self._lock = lk
        self._finalizer = weakref.finalize(self, locking.release, lk)
        try:
            self._check_writable_file()  # again: it may have changed while we waited
            return locking.remove_stale(self.path, lk) if fresh else []
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give up the writer lock (if held); the store can still read, and write again later."""
        fin, self._finalizer, self._lock = self._finalizer, None, None
        if fin is not None:
            fin()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _check_writable_file(self) -> None:
        if not self.path.exists():
            return
        package, version = _file_identity(self.path)
        if package != PACKAGE and not self.adopt_foreign:
            raise UserError(_foreign_message(self.path))
        if package == PACKAGE:
            _check_version(self.path, version, writing=True)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary copies left by writers that were killed mid-write.

        Takes the writer lock first (as :meth:`acquire`), since only the file's one writer may
        judge which temporaries are dead: those named with the PID of a process that is gone,
        and old-style ones without a PID. Temporaries of live processes stay.
        """
        removed = self._acquire(None)
        assert self._lock is not None
        return sorted(removed + locking.remove_stale(self.path, self._lock))

    # -- reading -------------------------------------------------------------------------
    def _open(self):
        return h5py.File(self.path, "r")

    def root_attrs(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        with self._open() as f:
            return get_attrs(f)

    def keys(self, analysis: str | None = None, *, complete: bool | None = True) -> list[str]:
        """Record keys (``analysis/group/record``), by default only complete ones."""
        if not self.path.exists():
            return []
        out: list[str] = []
        with self._open() as f:

            def visit(name, obj):
                if isinstance(obj, h5py.Group) and "complete" in obj.attrs:
                    if complete is None or bool(read_attr(obj, "complete")) == complete:
                        # h5py gives a name that is not UTF-8 (a corrupt file) as bytes
                        out.append(
                            name if isinstance(name, str) else name.decode("utf-8", "replace")
                        )

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
            return key in f and bool(read_attr(f[key], "complete", False))

    def read(self, key: str) -> Record:
        with self._open() as f:
            if key not in f:
                raise KeyError(key)
            g = f[key]
            datasets, dattrs = {}, {}
            for name, obj in g.items():
                if not isinstance(obj, h5py.Dataset):
                    continue
                names = list(obj.attrs)
                if not is_dimension_only(obj, names):
                    datasets[name] = read_data(obj)
                    dattrs[name] = get_attrs(obj, names)
            return Record(key, get_attrs(g), datasets, dattrs)

    # -- writing -------------------------------------------------------------------------
    def write(
        self,
        key: str,
        datasets: Mapping[str, Dataset | np.ndarray],
        attrs: Mapping[str, Any] | None = None,
        *,
        complete: bool = True,
    ) -> None:
        """Replace the record at ``key`` atomically (new image to a temporary, fsync, rename).

        Takes the writer lock on first use. A full disk, a read-only or forbidden folder and
        a foreign HDF5 file are :class:`UserError` s of one line; the file is then untouched.
        """
        attrs = dict(attrs or {})
        prepared = {}
        for name, ds in datasets.items():
            if not isinstance(ds, Dataset):
                ds = Dataset(np.asarray(ds))
            prepared[name] = (ds, np.asarray(ds.data))
        new_bytes = sum(
            sum(len(str(s).encode()) for s in arr.flat) if arr.dtype.kind in "UO" else arr.nbytes
            for _, arr in prepared.values()
        )
        self._transact(lambda f: self._write_group(f, key, prepared, attrs, complete), new_bytes)

    def delete(self, key: str) -> None:
        self._transact(lambda f: f.__delitem__(key) if key in f else None)

    @staticmethod
    def _write_group(f: h5py.File, key: str, prepared, attrs, complete: bool) -> None:
        if key in f:
            del f[key]
        g = f.require_group(key)
        created = {}
        for name, (ds, arr) in prepared.items():
            text = arr.dtype.kind == "U"
            if text:
                arr = string_data(arr)
            is_bool = arr.dtype == bool
            if is_bool:  # an HDF5 enum is no netCDF type
                arr = arr.astype(np.int8)
            d = created[name] = g.create_dataset(
                name, data=arr, compression="gzip" if arr.size > 4096 else None
            )
            set_attrs(
                d,
                {
                    "axes": encode(list(ds.axes)) if ds.axes else "json:[]",
                    "units": ds.units,
                    "description": ds.description,
                    **ds.attrs,
                },
                fresh=True,
            )
            if text and h5py.check_string_dtype(arr.dtype).length is not None:
                write_attr(d, "_Encoding", "utf-8")  # netCDF: fixed-length text, not bytes
            if is_bool:
                d.attrs[BOOL_DATA_ATTR] = np.int8(1)
        write_dimensions(g, {n: tuple(ds.axes) for n, (ds, _) in prepared.items()}, created)
        set_attrs(g, {**attrs, "complete": bool(complete)}, fresh=True)

    def _check_space(self, new_bytes: int) -> None:
        """Refuse up front when the copy plus the new data clearly cannot fit."""
        current = self.path.stat().st_size if self.path.exists() else 0
        try:
            free = atomic.free_bytes(self.path.parent)
        except OSError:
            return
        if free < current + new_bytes:
            need = f" (needs about {_megabytes(current + new_bytes)}, {_megabytes(free)} free)"
            raise no_space(self.path, "-o", what=_WHAT, detail=need)

    def _transact(self, fn, new_bytes: int = 0) -> None:
        """Apply ``fn(h5py.File)`` to the file and replace it atomically.

        The file is read into memory and changed there by HDF5; its new image replaces the
        file by :func:`~landscape.atomic.write_atomic`.
        """
        lk = self.acquire()._lock
        assert lk is not None
        if not lk.still_ours():  # its lock file was deleted: lock the one a new writer would use
            locking.forget(lk)
            self.close()
            lk = self.acquire()._lock
            assert lk is not None
        with lk.mutex:
            self._transact_locked(fn, new_bytes)

    def _transact_locked(self, fn, new_bytes: int) -> None:
        self._check_space(new_bytes)
        try:
            new = not self.path.exists()
            f = in_memory_file(None if new else self.path)
            try:
                self._prepare_root(f, new=new)
                fn(f)
                image = image_of(f)
            finally:
                f.close()
        except UserError:
            raise
        except BaseException as exc:  # HDF5 may report a full disk of its own (a core driver)
            err = write_error(self.path, exc, "-o", what=_WHAT, new_bytes=new_bytes)
            if err is not None:
                raise err from exc
            raise
        write_atomic(self.path, image, option="-o", what=_WHAT)

    def _prepare_root(self, f: h5py.File, *, new: bool) -> None:
        """Root attributes: identity and schema (refusing other schemas), command, time."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        package = decode(read_attr(f, "package"))
        # checked again here: a program that ignores the lock may have replaced the file
        if not new and package != PACKAGE and not self.adopt_foreign:
            raise UserError(_foreign_message(self.path))
        if not new and package == PACKAGE:
            _check_version(self.path, int(read_attr(f, "schema_version", 0)), writing=True)
        if new or package != PACKAGE:
            for k in ("package", "schema_version"):  # an adopted file keeps who made it
                if not new and k in f.attrs:
                    write_attr(f, f"adopted_{k}", read_attr(f, k))
            write_attr(f, "package", PACKAGE)
            f.attrs["schema_version"] = SCHEMA_VERSION
            write_attr(f, "package_version", package_version())
            if "created" not in f.attrs:
                write_attr(f, "created", now)
            write_attr(f, "commands", read_attr(f, "commands", "json:[]"))
        command = " ".join(sys.argv)
        commands = decode(read_attr(f, "commands", "json:[]")) or []
        if not isinstance(commands, list):
            commands = [str(commands)]
        if command and (not commands or commands[-1] != command):
            commands.append(command)
            write_attr(f, "commands", encode(commands))
        write_attr(f, "modified", now)
