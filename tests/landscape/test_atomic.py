"""The one writer by rename and the one classifier of failed writes."""

import errno
import os
import stat

import pytest

import landscape.atomic as atomic
from landscape.atomic import write_atomic, write_error
from landscape.errors import UserError


def test_bytes_or_a_writer_function_replace_the_file_and_keep_its_permissions(tmp_path):
    p = tmp_path / "sub" / "out.bin"
    assert write_atomic(p, b"one") == p and p.read_bytes() == b"one"  # parents are created
    os.chmod(p, 0o640)
    write_atomic(p, lambda f: f.write(b"two"))
    assert p.read_bytes() == b"two" and stat.S_IMODE(p.stat().st_mode) == 0o640
    assert sorted(q.name for q in p.parent.iterdir()) == ["out.bin"]


def test_the_temporary_names_its_writer_and_goes_away_on_failure(tmp_path):
    p = tmp_path / "out.bin"
    seen = []

    def fail(f):
        seen.extend(q.name for q in tmp_path.iterdir())
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):  # not the place: the error as it came
        write_atomic(p, fail)
    (name,) = seen
    assert name.startswith(f".out.bin.{os.getpid()}.") and name.endswith(".tmp")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "code, line",
    [
        (errno.EROFS, "cannot write {p}: read-only file system: choose another --out"),
        (errno.EACCES, "cannot write {p}: permission denied: choose another --out"),
        (errno.EISDIR, "cannot write {p}: is a directory: choose another --out"),
        (errno.ENAMETOOLONG, "{p}: file name too long for the file system: use a shorter name"),
    ],
)
def test_a_failed_write_of_the_place_is_one_line(tmp_path, code, line):
    p = tmp_path / "x.pt"
    err = write_error(p, OSError(code, os.strerror(code)), "--out")
    assert isinstance(err, UserError) and str(err) == line.format(p=p)


def test_a_full_disk_says_where_and_whether_the_old_file_survived(tmp_path, monkeypatch):
    p = tmp_path / "x.pt"
    full = OSError(errno.ENOSPC, "No space left on device")
    new = str(write_error(p, full, what="checkpoint"))
    assert new.startswith("no space left on /") and new.endswith(
        f" writing {p}; no checkpoint was written: free some space or choose another -o"
    )
    p.write_bytes(b"old")
    assert "the previous file is intact" in str(write_error(p, full))
    # an unexplained error counts as a full disk only while the disk is nearly full
    eio = OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(atomic, "free_bytes", lambda d: 10**12)
    assert write_error(p, eio) is None
    monkeypatch.setattr(atomic, "free_bytes", lambda d: 0)
    assert str(write_error(p, eio)).startswith("no space left on")


def test_the_errno_behind_a_wrapped_error_is_found(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("unexpected pos 704 vs 598") from inner  # as torch.save says it
    except RuntimeError as exc:
        assert str(write_error(tmp_path / "m.pt", exc)).startswith("no space left on")
