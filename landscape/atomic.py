"""Writing a file by rename, and the one line for a write that failed.

Every file this package writes (results files, checkpoints, sidecars, reports, figures,
exports) goes through :func:`write_atomic`: the new content goes to a temporary
``.<name>.<pid>.<random>.tmp`` next to the target, is fsynced, gets the old file's
permissions (a new file: 0666 less the umask) and is renamed over the target; the folder is
then fsynced so that the rename itself survives a crash. A killed process therefore leaves
the old file or the new one, never half of one; the PID in the temporary's name lets the
results store's writer tell a dead writer's leftovers from a live one's
(:func:`landscape.locking.remove_stale`).

:func:`write_error` is the one classifier of failed writes: a full disk, a read-only or
forbidden place, a bad name become one :class:`~landscape.errors.UserError` line naming the
file and the option to change; anything else (a failing device, a bug) is left to keep its
traceback. Torch-free and HDF5-free: checkpoints, reports and the store all use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import UserError, display, os_error_line

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
#: what is wrong with the place or the name, said in the system's own words
_BAD_PLACE = (
    errno.ENAMETOOLONG,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENOENT,
    errno.ELOOP,
    errno.EFBIG,
    errno.EINVAL,
)
# how errno values appear in HDF5's error stack text, where h5py does not set OSError.errno
_ERRNO_TEXT = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
}
#: a disk with less free space than this (or than the data being written) counts as full
#: when a write fails without saying why (NFS says EIO when full)
NEARLY_FULL = 64 * 1024


def file_mode(path: str | os.PathLike) -> int:
    """Permissions for a file written by rename: the old file's, else 0666 less the umask."""
    path = Path(path)
    if path.exists():
        return path.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def free_bytes(directory: str | os.PathLike) -> int:
    """Bytes free for this user on the file system of ``directory``."""
    return shutil.disk_usage(directory).free


def mount_point(path: str | os.PathLike) -> str:
    """The mount point holding ``path`` (what ``df`` shows), for messages about space."""
    p = os.path.realpath(path)
    while not os.path.ismount(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return p


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system allows it)."""
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


def errno_of(exc: BaseException | None) -> int | None:
    """The errno of a full or read-only disk behind ``exc``: from ``OSError.errno`` along the
    chain of causes (torch and HDF5 wrap the OSError of a failed write), or from HDF5's
    message text, which names the errno without setting it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (*NO_SPACE, *NOT_WRITABLE):
            return exc.errno
        text = str(exc)
        for code, words in _ERRNO_TEXT.items():
            if words in text or f"errno = {code}," in text:
                return code
        exc = exc.__cause__ or exc.__context__
    return None


def no_space(
    path: str | os.PathLike, option: str = "-o", *, what: str = "file", detail: str = ""
) -> UserError:
    """The line for a full disk: where, which file, whether the old one survived, what to do."""
    path = Path(path)
    kept = "the previous file is intact" if path.exists() else f"no {what} was written"
    return UserError(
        f"no space left on {mount_point(path.parent)} writing {display(path)}{detail}; "
        f"{kept}: free some space or choose another {option}"
    )


def write_error(
    path: str | os.PathLike,
    exc: BaseException,
    option: str = "-o",
    *,
    what: str = "file",
    new_bytes: int = 0,
) -> UserError | None:
    """The one line for a write of ``path`` that failed with ``exc``, or None when the cause
    is not the place written to (then the original exception should propagate).

    Full disk or quota (also an unexplained OSError while the disk is nearly full, which is
    how NFS reports it): ``no space left on MOUNT writing FILE; ...``. Read-only file system,
    no permission: ``cannot write FILE: read-only file system: choose another OPTION``. A name
    too long, a folder in the way, a missing or looping parent: the system's words, the same
    shape. ``what`` names the kind of file in the full-disk line (``no results file was
    written``); ``new_bytes``: the size being written, for the nearly-full test.
    """
    code = errno_of(exc)
    if code is None and isinstance(exc, OSError) and exc.errno not in _BAD_PLACE:
        try:
            if free_bytes(Path(path).parent) < max(NEARLY_FULL, new_bytes):
                code = errno.ENOSPC
        except OSError:
            pass
    if code in NO_SPACE:
        return no_space(path, option, what=what)
    if code in NOT_WRITABLE:
        return UserError(
            f"cannot write {display(path)}: {NOT_WRITABLE[code]}: choose another {option}"
        )
    if isinstance(exc, OSError) and exc.errno in _BAD_PLACE:
        return UserError(os_error_line(path, exc, "write", f"choose another {option}"))
    return None


def write_atomic(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview | Callable[[BinaryIO], object],
    *,
    option: str = "-o",
    what: str = "file",
) -> Path:
    """Replace ``path`` with ``data`` by rename; returns ``path``.

    ``data``: the bytes, or a function that writes them into the binary file object it is
    given (``lambda f: torch.save(obj, f)``). Missing parent folders are created. On any
    failure the temporary is removed and the target is as it was; a failure that
    :func:`write_error` recognises is raised as its :class:`UserError` line naming ``option``
    (chained to the original), anything else as it came.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the writer's PID in the name: a later writer can tell a killed writer's temporary
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        with open(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode(path))  # mkstemp creates 0600; keep the usual permissions
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        size = 0 if callable(data) else len(data)
        err = (
            None
            if isinstance(exc, UserError)
            else write_error(path, exc, option, what=what, new_bytes=size)
        )
        if err is not None:
            raise err from exc
        raise
    return path
