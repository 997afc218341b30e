"""The one results store: a self-describing HDF5 file.

Layout: ``/<analysis>/<group>/<record>/`` where ``record`` is a seed (``seed0``), a pair
(``seed0-seed1``) or another key the analysis defines. Each record group holds datasets
and attributes; every dataset carries ``axes`` (names of its dimensions, in order),
``units`` and ``description`` attributes, and every record carries its settings, data
description, checkpoint paths and SHA-256 hashes, versions and time. The root carries
``schema_version``, ``package``, ``package_version`` and the list of ``commands`` that
wrote into the file.

netCDF-4 / xarray: every record group is a valid netCDF-4 group. Each dataset's ``axes``
are HDF5 dimension scales of its group: a 1-D dataset named like its dimension is that
dimension's coordinate, any other dimension gets a dimension-only scale (netCDF's "This is
a netCDF dimension but not a netCDF variable"), so
``xarray.open_dataset(path, group="analysis/group/record", engine="h5netcdf")`` shows the
declared dimension names. Booleans are stored as int8 and listed in the ``landscape_bools``
attribute (HDF5 enums are not netCDF-4 classic types); :meth:`ResultsStore.read` turns
them back into Python bools.

Crash safety: every write changes the file in memory (HDF5 never writes to disk itself, so
a full disk is a plain OSError and never leaves HDF5 broken), writes the new image to a
temporary ``.<name>.<pid>.<random>.tmp`` next to it, fsyncs it and renames it atomically
over the original, so a killed process leaves either the old file or the new one, never a
half-written one; the next writer removes temporaries of dead writers. A record's
``complete`` attribute is set in the same write as its last data; records written in pieces
(resumable grids) carry ``complete = False`` until their last piece lands.

One writer per file: a writer holds an exclusive ``flock`` on the sidecar ``.<name>.lock``
(which holds the writer's PID) from its first write until it closes the store, the store is
garbage collected or the process ends (the kernel drops the lock of a dead process).
Another process that wants to write is refused with one line naming the holder, or waits
(``wait=``). Readers never lock and never block: renames are atomic, so a reader sees the
old file or the new one.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; writers then warn and rely on being alone
    fcntl = None

SCHEMA_VERSION = 2
"""2: dimension scales, netCDF-compatible attributes (int8 booleans), the records' current
dataset names. 1: none of these; such files are read (readers translate the names) but not
appended to, so that one file holds one schema."""
PACKAGE = "landscape"

BOOLS_ATTR = "landscape_bools"
"""Attribute listing (as ``json:[...]``) the attributes of an object that hold booleans as int8."""
BOOL_DATA_ATTR = "landscape_bool_data"
"""Attribute (1) of a dataset whose int8 data are booleans."""
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."
# HDF5 and netCDF bookkeeping that is not a record's own attribute
_HIDDEN_ATTRS = frozenset(
    {
        "CLASS",
        "NAME",
        "REFERENCE_LIST",
        "DIMENSION_LIST",
        "DIMENSION_LABELS",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
        "_NCProperties",
        BOOLS_ATTR,
        BOOL_DATA_ATTR,
    }
)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# how errno values appear in HDF5's error stack text, where h5py does not set OSError.errno
_ERRNO_TEXT = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
}
_PID_WIDTH = 16  # the lock file is always this many bytes, so a reader never sees it empty


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


def _set_attrs(obj: h5py.HLObject, values: Mapping[str, Any], *, fresh: bool = False) -> None:
    """Write attributes; booleans become int8 listed in ``landscape_bools`` (netCDF has no bool).

    ``fresh``: ``obj`` was just created, so it has no earlier list to extend.
    """
    bools = set() if fresh else set(_decode(obj.attrs.get(BOOLS_ATTR, "json:[]")) or [])
    for k, v in values.items():
        v = _encode(v)
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, np.ndarray) and v.dtype == bool):
            v = np.asarray(v, dtype=np.int8)[()]
            bools.add(k)
        else:
            bools.discard(k)
        obj.attrs[k] = v
    if bools:
        obj.attrs[BOOLS_ATTR] = "json:" + json.dumps(sorted(bools))
    elif not fresh and BOOLS_ATTR in obj.attrs:
        del obj.attrs[BOOLS_ATTR]


def _get_attrs(obj: h5py.HLObject, names: list[str] | None = None) -> dict[str, Any]:
    """Attributes as written: bookkeeping dropped, JSON decoded, int8 booleans (and old enum ones) as bool.

    ``names``: the object's attribute names, when the caller has listed them already.
    """
    attrs = obj.attrs
    names = list(attrs) if names is None else names
    bools = set(_decode(attrs[BOOLS_ATTR]) or []) if BOOLS_ATTR in names else set()
    out = {}
    for k in names:
        if k in _HIDDEN_ATTRS:  # skipped unread: REFERENCE_LIST and the like are slow to read
            continue
        v = attrs[k]
        if k in bools:
            v = np.asarray(v).astype(bool)
            v = v.item() if v.ndim == 0 else v
        out[k] = _decode(v)
    return out


def _is_dimension_only(obj: h5py.Dataset, names: list[str] | None = None) -> bool:
    """A netCDF dimension without data: bookkeeping of the group, not one of its datasets."""
    if "CLASS" not in (obj.attrs if names is None else names):
        return False
    name = obj.attrs.get("NAME", b"")
    if isinstance(name, str):
        name = name.encode()
    return obj.attrs.get("CLASS") == b"DIMENSION_SCALE" and NOT_A_VARIABLE in bytes(name)


def _dimension_plan(
    shapes: Mapping[str, tuple[int, ...]], axes: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, int], set[str], dict[str, list[str]]]:
    """netCDF dimensions of one record: (size per dimension, coordinate datasets, dimensions per dataset).

    A dimension is named as declared in ``axes``; a 1-D dataset named like its own dimension
    is its coordinate. netCDF needs one length per dimension name and no dataset that shares
    a dimension's name without being its coordinate, so a declared name that breaks either
    rule becomes ``<name>_<length>`` for that dataset (its ``axes`` attribute keeps the
    declared name). Undeclared axes are ``<dataset>_dim<i>``.
    """
    names = set(shapes)
    sizes: dict[str, int] = {}
    coords: set[str] = set()
    for name, shape in shapes.items():
        ax = axes.get(name, ())
        if len(shape) == 1 and ax[:1] == (name,):
            coords.add(name)
            sizes[name] = shape[0]

    def free(d: str, n: int) -> str:
        j, cand = 0, f"{d}_{n}"
        while (cand in names and cand not in coords) or sizes.get(cand, n) != n:
            j += 1
            cand = f"{d}_{n}_{j}"
        return cand

    dims: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        ax = axes.get(name, ())
        out = []
        for i, n in enumerate(shape):
            d = (ax[i] if i < len(ax) and ax[i] else f"{name}_dim{i}").replace("/", "_")
            if name not in coords and ((d in names and d not in coords) or sizes.get(d, n) != n):
                d = free(d, n)
            sizes.setdefault(d, n)
            out.append(d)
        dims[name] = out
    return sizes, coords, dims


def _write_dimensions(
    g: h5py.Group,
    axes: Mapping[str, tuple[str, ...]],
    datasets: Mapping[str, h5py.Dataset] | None = None,
) -> None:
    """Make the datasets of record group ``g`` netCDF-4 variables with named dimensions.

    No ``_Netcdf4Dimid``/``_Netcdf4Coordinates``: netCDF readers then take dimensions from the
    scales attached to each dataset, and ids that must be unique across the whole file cannot
    go stale when records are replaced one at a time. ``datasets``: the group's datasets, when
    the caller has them at hand.
    """
    if datasets is None:
        datasets = {n: o for n, o in g.items() if isinstance(o, h5py.Dataset)}
    sizes, coords, dims = _dimension_plan({n: d.shape for n, d in datasets.items()}, axes)
    scales = {}
    for d, n in sizes.items():
        if d in coords:
            scales[d] = datasets[d]
            scales[d].make_scale(d)
        else:  # no data is allocated: HDF5 writes storage only when data is written
            scales[d] = g.create_dataset(d, shape=(n,), dtype=">f4")
            scales[d].make_scale(NOT_A_VARIABLE + f"{n:10d}".encode())
    for name, ds_dims in dims.items():
        if name in coords:
            continue
        ds = datasets[name]
        for i, d in enumerate(ds_dims):
            ds.dims[i].attach_scale(scales[d])


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
            package = _decode(f.attrs.get("package"))
            version = int(f.attrs.get("schema_version", 0)) if package == PACKAGE else 0
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


def file_mode(path: Path) -> int:
    """Permissions for a file written by rename: the old file's, else 0666 less the umask."""
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def lock_path(path: str | os.PathLike) -> Path:
    """The sidecar lock file of a results file: ``.<name>.lock`` next to it (hidden, never data)."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except (OverflowError, ValueError):  # not a PID at all
        return False
    return True


def _errno_of(exc: BaseException | None) -> int | None:
    """The disk-related errno behind an exception, from OSError.errno or HDF5's message text."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (*_NO_SPACE, *_NOT_WRITABLE):
            return exc.errno
        text = str(exc)
        for code, words in _ERRNO_TEXT.items():
            if words in text or f"errno = {code}," in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def _mount_point(path: Path) -> str:
    """The mount point holding ``path`` (what ``df`` shows), for messages about space."""
    p = os.path.realpath(path)
    while not os.path.ismount(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _in_memory(path: Path | None) -> h5py.File:
    """The HDF5 file at ``path`` (None: a new one) loaded into memory, to change it there.

    HDF5 never writes to disk here: HDF5 that runs out of disk in the middle of a write can
    stay broken for the rest of the process (later closes fail, the exit can crash), while
    writing the finished image with plain file I/O makes a full disk an ordinary OSError.
    """
    if path is not None:
        try:  # the core driver reads the file once; without HDF5's own lock, readers may have it open
            return h5py.File(path, "r+", driver="core", backing_store=False, locking=False)
        except TypeError:  # h5py < 3.5: no locking argument
            pass
        except OSError as exc:
            if _errno_of(exc) not in _NOT_WRITABLE:
                raise
        image = path.read_bytes()  # a file we may not open for writing: we replace it anyway
    else:
        image = None
    if hasattr(h5py.File, "in_memory"):  # h5py >= 3.13
        return h5py.File.in_memory(image) if image else h5py.File.in_memory()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    name = f"landscape-in-memory-{id(fapl)}".encode()
    if image:
        fapl.set_file_image(image)
        return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl))
    return h5py.File(h5py.h5f.create(name, h5py.h5f.ACC_EXCL, fapl=fapl))


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


class _Lock:
    """This process's flock on one lock file, shared by every store of that file in the process."""

    def __init__(self, key: str, fd: int):
        self.key, self.fd, self.pid = key, fd, os.getpid()
        self.users = 0
        self.closed = False
        self.mutex = threading.RLock()  # one transaction at a time within the process

    @property
    def valid(self) -> bool:
        return not self.closed and self.pid == os.getpid()

    def still_ours(self) -> bool:
        """False when someone deleted or replaced the lock file: a new writer could lock that one."""
        return _same_file(self.fd, self.key)


_HELD: dict[str, _Lock] = {}
_GUARD = threading.Lock()


def _same_file(fd: int, path: str | os.PathLike) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _release(lk: _Lock) -> None:
    with _GUARD:
        lk.users -= 1
        if lk.users > 0 or lk.closed:
            return
        _drop(lk)


def _drop(lk: _Lock) -> None:
    """Forget ``lk`` for the whole process (the caller holds ``_GUARD``)."""
    lk.closed = True
    if _HELD.get(lk.key) is lk:
        del _HELD[lk.key]
    if lk.pid == os.getpid():
        os.close(lk.fd)  # the last descriptor of the open file: the kernel drops the flock


def _forget_locks_in_child() -> None:
    """A forked child must not write under its parent's lock, nor keep it alive after the parent."""
    global _GUARD
    _GUARD = threading.Lock()
    for lk in _HELD.values():
        try:
            os.close(lk.fd)  # not LOCK_UN: that would release the parent's lock too
        except OSError:
            pass
        lk.closed = True
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks_in_child)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).split()
        return int(text[0]) if text else None
    except (OSError, ValueError, AttributeError):
        return None


def _try_flock(lock: Path) -> tuple[int | None, int | None]:
    """``(fd, None)`` when this process now holds the lock, ``(None, holder PID or None)`` when another does."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except PermissionError:
            if not lock.exists():
                raise
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)  # someone else's: flock works read-only
        try:
            if fcntl is None:
                raise OSError(errno.ENOSYS, "no flock")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            # the holder may sit between flock and writing its PID: the file names the last one
            for _ in range(5):
                if holder is not None and _pid_alive(holder):
                    break
                time.sleep(0.02)
                holder = _read_pid(fd)
            os.close(fd)
            return None, holder
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            print(
                f"landscape: {lock}: cannot lock files here; make sure only one process writes",
                file=sys.stderr,
            )
            return fd, None
        if _same_file(fd, lock):
            break
        os.close(fd)  # the file was deleted or replaced between open and flock: lock the new one
    try:  # fixed width, written in place: a reader sees a whole PID, never an empty file
        os.pwrite(fd, f"{os.getpid():<{_PID_WIDTH - 1}d}\n".encode(), 0)
        os.ftruncate(fd, _PID_WIDTH)
    except (
        OSError,
        AttributeError,
    ):  # a read-only lock file or a full disk: the PID is information
        pass
    return fd, None


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
        self._lock: _Lock | None = None
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
        wait = self.wait if wait is None else wait
        lock = self.lock_path
        key = os.path.realpath(lock)
        deadline = None if (wait is True or not wait) else time.monotonic() + float(wait)
        announced, fresh = False, False
        while True:
            with _GUARD:
                lk = _HELD.get(key)
                if lk is None or not lk.valid:
                    try:
                        lock.parent.mkdir(parents=True, exist_ok=True)
                        fd, holder = _try_flock(lock)
                    except OSError as exc:
                        err = self._disk_error(exc)
                        if err is None:
                            raise
                        raise err from exc
                    if fd is not None:
                        lk = _HELD[key] = _Lock(key, fd)
                        fresh = True
                if lk is not None:
                    lk.users += 1
                    self._lock = lk
                    self._finalizer = weakref.finalize(self, _release, lk)
                    break
            now = time.monotonic()
            if not wait or (deadline is not None and now >= deadline):
                waited = "" if not wait else f" after waiting {float(wait):g} s"
                raise UserError(
                    f"{self.path} is being written by {self._holder(holder)} (lock {lock.name}){waited}: "
                    "wait for it to finish or write to another -o file"
                )
            if not announced:
                limit = "" if deadline is None else f" (at most {float(wait):g} s)"
                print(
                    f"landscape: {self.path} is being written by {self._holder(holder)} "
                    f"(lock {lock.name}): waiting for it to finish{limit}",
                    file=sys.stderr,
                    flush=True,
                )
                announced = True
            time.sleep(0.1)
        try:
            self._check_writable_file()  # again: it may have changed while we waited
            return self._remove_stale(lk) if fresh else []
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _holder(pid: int | None) -> str:
        return f"process {pid}" if pid is not None else "another process"

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
        return sorted(removed + self._remove_stale(self._lock))

    def _remove_stale(self, lk: _Lock) -> list[Path]:
        prefix = f".{self.path.name}."
        removed = []
        with lk.mutex:  # not while this process is writing one of them
            for p in sorted(self.path.parent.glob(f"{prefix}*.tmp")):
                middle = p.name[len(prefix) : -len(".tmp")]
                pid, dot, _ = middle.partition(".")
                if dot and pid.isdigit() and _pid_alive(int(pid)):
                    continue
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
            return _get_attrs(f)

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
                if not isinstance(obj, h5py.Dataset):
                    continue
                names = list(obj.attrs)
                if not _is_dimension_only(obj, names):
                    # string datasets come back as str, not bytes
                    data = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
                    if BOOL_DATA_ATTR in names:
                        data = np.asarray(data).astype(bool)
                    datasets[name] = data
                    dattrs[name] = _get_attrs(obj, names)
            return Record(key, _get_attrs(g), datasets, dattrs)

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
            if arr.dtype.kind == "U":
                arr = arr.astype(h5py.string_dtype())
            is_bool = arr.dtype == bool
            if is_bool:  # an HDF5 enum is no netCDF type
                arr = arr.astype(np.int8)
            d = created[name] = g.create_dataset(
                name, data=arr, compression="gzip" if arr.size > 4096 else None
            )
            _set_attrs(
                d,
                {
                    "axes": _encode(list(ds.axes)) if ds.axes else "json:[]",
                    "units": ds.units,
                    "description": ds.description,
                    **ds.attrs,
                },
                fresh=True,
            )
            if is_bool:
                d.attrs[BOOL_DATA_ATTR] = np.int8(1)
        _write_dimensions(g, {n: tuple(ds.axes) for n, (ds, _) in prepared.items()}, created)
        _set_attrs(g, {**attrs, "complete": bool(complete)}, fresh=True)

    def _disk_error(self, exc: BaseException, new_bytes: int = 0) -> UserError | None:
        """The one-line error for a full or read-only disk behind ``exc``, else None."""
        code = _errno_of(exc)
        if code is None and isinstance(exc, OSError):
            # some file systems (NFS) say EIO when full: a disk that is now (nearly) full explains it
            try:
                if _free_bytes(self.path.parent) < max(64 * 1024, new_bytes):
                    code = errno.ENOSPC
            except OSError:
                pass
        if code in _NO_SPACE:
            return UserError(self._no_space_message())
        if code in _NOT_WRITABLE:
            return UserError(f"cannot write {self.path}: {_NOT_WRITABLE[code]}: choose another -o")
        return None

    def _no_space_message(self, detail: str = "") -> str:
        kept = (
            "the previous file is intact" if self.path.exists() else "no results file was written"
        )
        return (
            f"no space left on {_mount_point(self.path.parent)} writing {self.path}{detail}; "
            f"{kept}: free some space or choose another -o"
        )

    def _check_space(self, new_bytes: int) -> None:
        """Refuse up front when the copy plus the new data clearly cannot fit."""
        current = self.path.stat().st_size if self.path.exists() else 0
        try:
            free = _free_bytes(self.path.parent)
        except OSError:
            return
        if free < current + new_bytes:
            need = f" (needs about {_megabytes(current + new_bytes)}, {_megabytes(free)} free)"
            raise UserError(self._no_space_message(need))

    def _transact(self, fn, new_bytes: int = 0) -> None:
        """Apply ``fn(h5py.File)`` to the file and replace it atomically.

        The file is read into memory and changed there by HDF5; its new image goes to a
        temporary next to the file, which is fsynced and renamed over the original.
        """
        lk = self.acquire()._lock
        assert lk is not None
        if not lk.still_ours():  # its lock file was deleted: lock the one a new writer would use
            with _GUARD:
                _drop(lk)
            self.close()
            lk = self.acquire()._lock
            assert lk is not None
        with lk.mutex:
            self._transact_locked(fn, new_bytes)

    def _transact_locked(self, fn, new_bytes: int) -> None:
        self._check_space(new_bytes)
        tmp = None
        try:
            new = not self.path.exists()
            f = _in_memory(None if new else self.path)
            try:
                self._prepare_root(f, new=new)
                fn(f)
                f.flush()
                image = f.id.get_file_image()
            finally:
                f.close()
            # the writer's PID in the name: cleanup can tell a killed writer's temporary
            fd, tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.{os.getpid()}.", suffix=".tmp", dir=self.path.parent
            )
            with open(fd, "wb") as fh:
                fh.write(image)
                fh.flush()
                os.fsync(fh.fileno())
            del image
            os.chmod(tmp, file_mode(self.path))  # mkstemp creates 0600; keep the usual permissions
            os.replace(tmp, self.path)
            tmp = None
            _fsync_dir(self.path.parent)
        except BaseException as exc:
            err = None if isinstance(exc, UserError) else self._disk_error(exc, new_bytes)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if err is not None:
                raise err from exc
            raise

    def _prepare_root(self, f: h5py.File, *, new: bool) -> None:
        """Root attributes: identity and schema (refusing other schemas), command, time."""
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        package = _decode(f.attrs.get("package"))
        # checked again here: a program that ignores the lock may have replaced the file
        if not new and package != PACKAGE and not self.adopt_foreign:
            raise UserError(_foreign_message(self.path))
        if not new and package == PACKAGE:
            _check_version(self.path, int(f.attrs.get("schema_version", 0)), writing=True)
        if new or package != PACKAGE:
            for k in ("package", "schema_version"):  # an adopted file keeps who made it
                if not new and k in f.attrs:
                    f.attrs[f"adopted_{k}"] = f.attrs[k]
            f.attrs["package"] = PACKAGE
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["package_version"] = package_version()
            if "created" not in f.attrs:
                f.attrs["created"] = now
            f.attrs["commands"] = f.attrs.get("commands", "json:[]")
        command = " ".join(sys.argv)
        commands = _decode(f.attrs.get("commands", "json:[]")) or []
        if not isinstance(commands, list):
            commands = [str(commands)]
        if command and (not commands or commands[-1] != command):
            commands.append(command)
            f.attrs["commands"] = _encode(commands)
        f.attrs["modified"] = now
