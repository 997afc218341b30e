"""One writer per results file: real concurrent processes, the lock's lifetime, stale temporaries."""

import gc
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from landscape.errors import UserError
from landscape.store import ResultsStore, lock_path

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

# Writes one record, says so, holds the lock until a line arrives on stdin, writes another.
HOLDER = textwrap.dedent("""
    import sys
    import numpy as np
    from landscape.store import ResultsStore
    s = ResultsStore(sys.argv[1])
    s.write("a/g/first", {"x": np.arange(3)})
    print("holding", flush=True)
    sys.stdin.readline()
    s.write("a/g/last", {"x": np.arange(4)})
""")

# Writes one record as a second writer; argv[2] is the wait argument ("0" refuses).
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from landscape.errors import UserError
    from landscape.store import ResultsStore
    wait = {"true": True, "0": False}.get(sys.argv[2], None)
    wait = float(sys.argv[2]) if wait is None else wait
    try:
        ResultsStore(sys.argv[1], wait=wait).write("a/g/second", {"x": np.arange(5)})
    except UserError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
""")


def start_holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


def release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0


def run_writer(path: Path, wait: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(path), wait],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )


def test_second_writer_is_refused_naming_the_holder_and_readers_do_not_block(tmp_path):
    p = tmp_path / "results.h5"
    holder = start_holder(p)
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError) as err:
            ResultsStore(p).write("a/g/second", {"x": np.arange(5)})
        msg = str(err.value)
        assert "\n" not in msg and time.monotonic() - t0 < 5
        assert msg == (
            f"{p} is being written by process {holder.pid} (lock .results.h5.lock): "
            "wait for it to finish or write to another -o file"
        )
        # readers neither lock nor wait
        t0 = time.monotonic()
        reader = ResultsStore(p)
        assert reader.keys() == ["a/g/first"] and reader.has("a/g/first")
        assert time.monotonic() - t0 < 2 and not reader.locked
        # the same refusal from another process
        other = run_writer(p, "0")
        assert other.returncode == 2 and f"process {holder.pid}" in other.stderr
    finally:
        release(holder)
    ResultsStore(p).write("a/g/second", {"x": np.arange(5)})  # free again
    assert ResultsStore(p).keys() == ["a/g/first", "a/g/last", "a/g/second"]


def test_waiting_writer_waits_with_one_message_then_both_records_are_complete(tmp_path):
    p = tmp_path / "results.h5"
    holder = start_holder(p)
    waiter = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(p), "true"],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        line = waiter.stderr.readline()  # printed once it found the file locked
        assert f"{p} is being written by process {holder.pid}" in line and "waiting" in line
        time.sleep(0.3)
        assert waiter.poll() is None  # still waiting while the holder holds
    finally:
        release(holder)
    assert waiter.wait(timeout=30) == 0
    assert waiter.stderr.read() == ""  # one message only
    store = ResultsStore(p)
    assert store.keys() == ["a/g/first", "a/g/last", "a/g/second"]
    assert all(store.read(k).complete for k in store.keys())


def test_wait_with_a_timeout_gives_up_with_one_line(tmp_path):
    p = tmp_path / "results.h5"
    holder = start_holder(p)
    try:
        t0 = time.monotonic()
        with pytest.raises(UserError, match=f"process {holder.pid} .*after waiting 0.3 s"):
            ResultsStore(p, wait=0.3).write("a/g/second", {"x": np.arange(5)})
        assert 0.3 <= time.monotonic() - t0 < 5
    finally:
        release(holder)


def test_a_killed_holder_releases_the_lock(tmp_path):
    p = tmp_path / "results.h5"
    holder = start_holder(p)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    s = ResultsStore(p)
    s.write("a/g/second", {"x": np.arange(5)})  # no waiting, no refusal
    assert s.keys() == ["a/g/first", "a/g/second"]
    assert lock_path(p).read_text().split() == [str(os.getpid())]


def test_stores_of_one_process_share_the_lock_until_the_last_lets_go(tmp_path):
    p = tmp_path / "results.h5"
    a, b = ResultsStore(p), ResultsStore(p)
    a.write("a/g/r1", {"x": np.arange(3)})
    b.write("a/g/r2", {"x": np.arange(3)})  # same process: no refusal
    assert a.locked and b.locked
    a.close()
    assert run_writer(p, "0").returncode == 2  # b still holds it
    b.close()
    assert run_writer(p, "0").returncode == 0
    # a store that is garbage collected lets go too, and so does a with block
    ResultsStore(p).write("a/g/r3", {"x": np.arange(3)})
    gc.collect()
    assert run_writer(p, "0").returncode == 0
    with ResultsStore(p) as s:
        s.write("a/g/r4", {"x": np.arange(3)})
        assert run_writer(p, "0").returncode == 2
    assert run_writer(p, "0").returncode == 0
    assert len(ResultsStore(p).keys()) == 5


def test_lock_file_holds_the_pid_in_fixed_width_and_is_not_data(tmp_path):
    p = tmp_path / "results.h5"
    with ResultsStore(p) as s:
        s.write("a/g/r1", {"x": np.arange(3)})
        lock = lock_path(p)
        assert lock.name == ".results.h5.lock" and s.lock_path == lock
        raw = lock.read_bytes()
        assert len(raw) == 16 and raw.split() == [str(os.getpid()).encode()]
    assert lock.exists()  # kept: deleting a lock file races with the next writer
    assert sorted(q.name for q in tmp_path.glob("*.h5")) == ["results.h5"]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_neither_writes_under_nor_keeps_the_parents_lock(tmp_path):
    p = tmp_path / "results.h5"
    s = ResultsStore(p)
    s.write("a/g/r1", {"x": np.arange(3)})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: refused (the parent holds the lock), then lingers
        code = 1
        try:
            s.write("a/g/child", {"x": np.arange(3)})
        except UserError as exc:
            code = 0 if f"process {os.getppid()}" in str(exc) else 1
        os.write(w, bytes([code]))
        time.sleep(5)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"\x00"
        s.close()  # the child is alive and had a copy of the descriptor
        assert run_writer(p, "0").returncode == 0
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_temporaries_of_dead_writers_are_removed_and_only_under_the_lock(tmp_path):
    p = tmp_path / "r.h5"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    holder = start_holder(p)
    try:
        dead = tmp_path / f".r.h5.{dead_pid()}.k2j4h5.tmp"
        live = tmp_path / f".r.h5.{sleeper.pid}.a8d7f1.tmp"
        old = tmp_path / ".r.h5.abc123.tmp"  # written before temporaries named their writer
        other = tmp_path / ".other.h5.1.abc.tmp"
        for q in (dead, live, old, other):
            q.write_bytes(b"half")
        try:  # another process holds the lock: nothing may go
            with pytest.raises(UserError, match=f"process {holder.pid}"):
                ResultsStore(p).remove_stale_temporaries()
            assert dead.exists() and old.exists()
        finally:
            release(holder)
        s = ResultsStore(p)
        assert s.remove_stale_temporaries() == sorted([dead, old])
        assert live.exists() and other.exists() and s.keys() == ["a/g/first", "a/g/last"]
        s.close()
        # the first acquisition of a process cleans up by itself
        dead2 = tmp_path / f".r.h5.{dead_pid()}.zz.tmp"
        dead2.write_bytes(b"half")
        ResultsStore(p).acquire().close()
        assert not dead2.exists() and live.exists() and other.exists()
    finally:
        if holder.poll() is None:
            holder.kill()
        sleeper.kill()
        sleeper.wait()


def test_study_context_holds_the_lock_for_the_study(tmp_path, monkeypatch):
    import analysis.context as context

    monkeypatch.setattr(context, "discover", lambda roots: {})
    p = tmp_path / "study.h5"
    ctx = context.StudyContext.create([tmp_path], output=p, device="cpu")
    assert ctx.store.locked and not p.exists()  # locked before anything is written
    refused = run_writer(p, "0")
    assert refused.returncode == 2 and f"process {os.getpid()}" in refused.stderr
    ctx.store.write("a/g/r1", {"x": np.arange(3)})
    ctx.store.close()
    assert run_writer(p, "0").returncode == 0


def test_a_deleted_lock_file_is_locked_anew_before_the_next_write(tmp_path):
    p = tmp_path / "results.h5"
    s = ResultsStore(p)
    s.write("a/g/r1", {"x": np.arange(3)})
    lock_path(p).unlink()  # someone cleaned hidden files while we hold the lock
    holder = start_holder(p)  # a new writer locks the new lock file
    try:
        with pytest.raises(UserError, match=f"process {holder.pid}"):
            s.write("a/g/r2", {"x": np.arange(3)})
    finally:
        release(holder)
    s.write("a/g/r2", {"x": np.arange(3)})
    assert s.keys() == ["a/g/first", "a/g/last", "a/g/r1", "a/g/r2"]
