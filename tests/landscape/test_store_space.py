"""A full or read-only disk is one line, the previous file stays byte-identical, no temporary stays."""

import errno
import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import landscape.atomic as atomic_mod
import landscape.store as store_mod
from landscape.errors import UserError
from landscape.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]


def original(tmp_path: Path) -> tuple[Path, bytes]:
    p = tmp_path / "r.h5"
    with ResultsStore(p) as s:
        s.write("a/g/r1", {"x": np.arange(3.0)})
    return p, p.read_bytes()


def temporaries(folder: Path) -> list[Path]:
    return list(folder.glob(".*.tmp"))


def no_space_line(p: Path) -> str:
    return f" writing {p}; the previous file is intact: free some space or choose another -o"


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_enospc_writing_the_new_file_is_one_line_and_keeps_the_old(tmp_path, monkeypatch, where):
    p, before = original(tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "write":  # the temporary is half written when the disk fills
        real_open = open

        class Half:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                full()

        monkeypatch.setattr(
            "builtins.open",
            lambda f, *a, **k: (
                Half(real_open(f, *a, **k)) if isinstance(f, int) else real_open(f, *a, **k)
            ),
        )
    else:  # file systems with delayed allocation may say it only at fsync
        monkeypatch.setattr(atomic_mod.os, "fsync", full)
    with ResultsStore(p) as s, pytest.raises(UserError) as err:
        s.write("a/g/r2", {"x": np.arange(5.0)})
    msg = str(err.value)
    assert msg.startswith("no space left on /") and msg.endswith(no_space_line(p))
    assert "\n" not in msg and isinstance(err.value.__cause__, OSError)
    assert p.read_bytes() == before and not temporaries(tmp_path)


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "Unable to synchronously write data"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        # how HDF5 reports it when h5py does not set errno
        OSError(
            "Can't write data (file write failed: errno = 28, error message = 'No space left on device')"
        ),
    ],
)
def test_disk_full_reported_by_hdf5_is_one_line(tmp_path, monkeypatch, failure):
    p, before = original(tmp_path)

    def fail(*a, **k):
        raise failure

    monkeypatch.setattr(ResultsStore, "_write_group", staticmethod(fail))
    with ResultsStore(p) as s, pytest.raises(UserError, match="^no space left on .*intact"):
        s.write("a/g/r2", {"x": np.arange(5.0)})
    assert p.read_bytes() == before and not temporaries(tmp_path)


def test_an_io_error_without_errno_on_a_full_disk_counts_as_full(tmp_path, monkeypatch):
    p, before = original(tmp_path)

    def fail(*a, **k):
        raise OSError(errno.EIO, "Input/output error")  # what NFS may say when full

    monkeypatch.setattr(atomic_mod.os, "fsync", fail)
    monkeypatch.setattr(ResultsStore, "_check_space", lambda self, n: None)
    monkeypatch.setattr(atomic_mod, "free_bytes", lambda d: 0)
    with ResultsStore(p) as s, pytest.raises(UserError, match="^no space left on"):
        s.write("a/g/r2", {"x": np.arange(5.0)})
    assert p.read_bytes() == before and not temporaries(tmp_path)
    # the same error with space to spare is not a full disk: it keeps its traceback
    monkeypatch.setattr(atomic_mod, "free_bytes", lambda d: 10**12)
    with ResultsStore(p) as s, pytest.raises(OSError, match="Input/output"):
        s.write("a/g/r2", {"x": np.arange(5.0)})
    assert p.read_bytes() == before and not temporaries(tmp_path)


def test_first_write_of_a_new_file_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def fail(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ResultsStore, "_write_group", staticmethod(fail))
    p = tmp_path / "new.h5"
    with ResultsStore(p) as s, pytest.raises(UserError, match="no results file was written"):
        s.write("a/g/r1", {"x": np.arange(5.0)})
    assert not p.exists() and not temporaries(tmp_path)


def test_clearly_too_little_space_is_refused_before_copying(tmp_path, monkeypatch):
    p, before = original(tmp_path)
    monkeypatch.setattr(atomic_mod, "free_bytes", lambda d: 1000)
    opened = []
    monkeypatch.setattr(store_mod, "in_memory_file", lambda *a: opened.append(a))
    with ResultsStore(p) as s, pytest.raises(UserError) as err:
        s.write("a/g/r2", {"x": np.zeros(100_000)})
    msg = str(err.value)
    assert msg.startswith("no space left on") and "(needs about 0.8 MB, 1 kB free)" in msg
    assert not opened and p.read_bytes() == before and not temporaries(tmp_path)


@pytest.mark.parametrize(
    "code, words",
    [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")],
)
@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_read_only_or_forbidden_output_is_one_line(tmp_path, monkeypatch, code, words, where):
    p, before = original(tmp_path)

    def deny(*a, **k):
        raise OSError(code, os.strerror(code))

    if where == "mkstemp":
        monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", deny)
    else:
        monkeypatch.setattr(atomic_mod.os, "replace", deny)
    with ResultsStore(p) as s, pytest.raises(UserError) as err:
        s.write("a/g/r2", {"x": np.arange(5.0)})
    assert str(err.value) == f"cannot write {p}: {words}: choose another -o"
    assert p.read_bytes() == before and not temporaries(tmp_path)


# -- real small and read-only file systems (root only) ------------------------------------


def mount(where: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")


def umount(where: Path) -> None:
    gc.collect()  # stores that hold a lock file open keep the mount busy
    if subprocess.run(["umount", str(where)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    mount(where, "size=600k")
    yield where
    umount(where)


# A write that does not fit, one that does, a bigger one that does not, a last one that does,
# then everything read back: all in one process, which must stay healthy after a full disk.
FILL = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import landscape.store as store
    from landscape.errors import UserError
    store.ResultsStore._check_space = lambda self, n: None  # let every write reach the disk
    p, out = sys.argv[1], []
    s = store.ResultsStore(p)
    rng = np.random.default_rng(0)
    for name, data in [("big", rng.random(100_000)), ("small", np.zeros(1000)),
                       ("bigger", rng.random(1_000_000)), ("last", rng.random(3000))]:
        try:
            s.write("a/g/" + name, {"x": data})
            out.append([name, None])
        except UserError as exc:
            out.append([name, str(exc)])
    out.append(sorted(os.listdir(os.path.dirname(p))))
    out.append({k: s.read(k)["x"].tolist()[:3] for k in s.keys()})
    print(json.dumps(out), flush=True)
""")


def test_a_real_full_disk_leaves_the_process_healthy(small_disk):
    p = small_disk / "r.h5"
    with ResultsStore(p) as s:
        s.write("a/g/r1", {"x": np.arange(3.0)})
    r = subprocess.run(
        [sys.executable, "-c", FILL, str(p)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=120,
    )
    assert r.returncode == 0 and not r.stderr, r.stderr[-2000:]
    *writes, files, records = json.loads(r.stdout)
    line = f"no space left on {small_disk}{no_space_line(p)}"
    assert dict(writes) == {"big": line, "small": None, "bigger": line, "last": None}
    assert files == [".r.h5.lock", "r.h5"]  # no temporary left
    rng = np.random.default_rng(0)
    rng.random(100_000), rng.random(1_000_000)
    assert records == {
        "a/g/last": rng.random(3000)[:3].tolist(),
        "a/g/r1": [0.0, 1.0, 2.0],
        "a/g/small": [0.0, 0.0, 0.0],
    }


def test_a_real_full_disk_keeps_the_file_byte_identical(small_disk):
    p = small_disk / "r.h5"
    with ResultsStore(p) as s:
        s.write("a/g/r1", {"x": np.random.default_rng(1).random(40_000)})  # over half the disk
    before = p.read_bytes()
    with ResultsStore(p) as s:
        with pytest.raises(UserError, match=r"^no space left on .*\(needs about"):
            s.write("a/g/r2", {"x": np.random.default_rng(2).random(60_000)})  # refused up front
        s._check_space = lambda n: None
        with pytest.raises(UserError) as err:
            s.write("a/g/r2", {"x": np.random.default_rng(2).random(60_000)})  # fills the disk
    assert str(err.value) == f"no space left on {small_disk}{no_space_line(p)}"
    assert p.read_bytes() == before and not temporaries(small_disk)
    assert ResultsStore(p).keys() == ["a/g/r1"]


def test_a_real_read_only_file_system(tmp_path):
    where = tmp_path / "ro"
    mount(where, "size=1m")
    try:
        p = where / "r.h5"
        with ResultsStore(p) as s:
            s.write("a/g/r1", {"x": np.arange(3.0)})
        before = p.read_bytes()
        gc.collect()
        if subprocess.run(["mount", "-o", "remount,ro", str(where)]).returncode:
            pytest.skip("cannot remount read-only")
        reader = ResultsStore(p)  # readers need no lock and no write access
        assert reader.keys() == ["a/g/r1"] and reader.read("a/g/r1")["x"].tolist() == [0, 1, 2]
        with pytest.raises(UserError) as err:
            ResultsStore(p).write("a/g/r2", {"x": np.arange(3.0)})
        assert str(err.value) == f"cannot write {p}: read-only file system: choose another -o"
        with pytest.raises(UserError, match="read-only file system"):
            ResultsStore(where / "sub" / "new.h5").write("a/g/r1", {"x": np.arange(3.0)})
        assert p.read_bytes() == before
    finally:
        umount(where)
