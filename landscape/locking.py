"""One writer per results file: an exclusive ``flock`` on a sidecar lock file.

The lock file is ``.<name>.lock`` next to the results file and holds the writer's PID, so
that a refused writer can name the holder. A process takes the lock once and shares it
among all its stores of that file (:class:`_Lock` counts them); the kernel drops it when
the last descriptor closes, including when the process dies, so a killed writer never
leaves the file locked. A forked child forgets its parent's locks: it must neither write
under them nor keep them alive after the parent.

The lock also decides which temporaries of :func:`landscape.atomic.write_atomic` are
stale: only the file's one writer may remove them, and only those whose writer (the PID in
their name) is gone.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path

from .atomic import write_error
from .errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; writers then warn and rely on being alone
    fcntl = None

_PID_WIDTH = 16  # the lock file is always this many bytes, so a reader never sees it empty


def lock_path(path: str | os.PathLike) -> Path:
    """The sidecar lock file of a results file: ``.<name>.lock`` next to it (hidden, never data)."""
    p = Path(path)
    return p.parent / f".{p.name}.lock"


def pid_alive(pid: int) -> bool:
    """True when a process with this PID exists (ours or someone else's)."""
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


def release(lk: _Lock) -> None:
    """One user of ``lk`` lets go; the last one closes it (the kernel then drops the flock)."""
    with _GUARD:
        lk.users -= 1
        if lk.users > 0 or lk.closed:
            return
        _drop(lk)


def forget(lk: _Lock) -> None:
    """Close ``lk`` for every user in this process (its lock file was deleted or replaced)."""
    with _GUARD:
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
                if holder is not None and pid_alive(holder):
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


def _holder(pid: int | None) -> str:
    return f"process {pid}" if pid is not None else "another process"


def acquire(
    path: Path,
    wait: bool | float,
    *,
    subject: str | None = None,
    instead: str = "write to another -o file",
) -> tuple[_Lock, bool]:
    """This process's writer lock of ``path`` (a results file, or anything one process at a
    time writes: the lock file is ``.<name>.lock`` beside it), and whether it was taken now.

    ``wait``: when another process holds it, ``False`` refuses with a :class:`UserError`
    naming the holder, ``True`` waits (saying so once on stderr), a number waits at most that
    many seconds. ``subject`` and ``instead`` word the message (default: the path, and
    another ``-o``). The caller owns one use of the lock and gives it back with :func:`release`.
    """
    subject = subject or str(path)
    lock = lock_path(path)
    key = os.path.realpath(lock)
    deadline = None if (wait is True or not wait) else time.monotonic() + float(wait)
    announced = False
    while True:
        with _GUARD:
            fresh = False
            lk = _HELD.get(key)
            if lk is None or not lk.valid:
                try:
                    lock.parent.mkdir(parents=True, exist_ok=True)
                    fd, holder = _try_flock(lock)
                except OSError as exc:
                    err = write_error(path, exc, "-o", what="results file")
                    if err is None:
                        raise
                    raise err from exc
                if fd is not None:
                    lk = _HELD[key] = _Lock(key, fd)
                    fresh = True
            if lk is not None:
                lk.users += 1
                return lk, fresh
        now = time.monotonic()
        if not wait or (deadline is not None and now >= deadline):
            waited = "" if not wait else f" after waiting {float(wait):g} s"
            raise UserError(
                f"{subject} is being written by {_holder(holder)} (lock {lock.name}){waited}: "
                f"wait for it to finish or {instead}"
            )
        if not announced:
            limit = "" if deadline is None else f" (at most {float(wait):g} s)"
            print(
                f"landscape: {subject} is being written by {_holder(holder)} "
                f"(lock {lock.name}): waiting for it to finish{limit}",
                file=sys.stderr,
                flush=True,
            )
            announced = True
        time.sleep(0.1)


def remove_stale(path: Path, lk: _Lock) -> list[Path]:
    """Delete temporaries of ``path`` left by killed writers; ``lk`` is the file's writer lock.

    Dead: named with the PID of a process that is gone, or old-style without a PID.
    Temporaries of live processes stay.
    """
    prefix = f".{path.name}."
    removed = []
    with lk.mutex:  # not while this process is writing one of them
        for p in sorted(path.parent.glob(f"{prefix}*.tmp")):
            middle = p.name[len(prefix) : -len(".tmp")]
            pid, dot, _ = middle.partition(".")
            if dot and pid.isdigit() and pid_alive(int(pid)):
                continue
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
