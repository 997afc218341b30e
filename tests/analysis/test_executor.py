"""Every study on Dask workers writes the records the inline run writes; a worker killed
mid-study changes nothing; a client killed mid-study is resumed without recomputing its
complete records; the same flags reach train, bnn and metanet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("distributed")

from analysis import alignment, calibration, hessian, interpolation, surfaces  # noqa: E402
from analysis.cli import main  # noqa: E402
from analysis.common import open_context  # noqa: E402
from analysis.executor import RecordTask, Workspace  # noqa: E402
from landscape.distributed import DaskExecutor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
#: attributes that say when or how long, not what
VOLATILE = {"time", "seconds", "train_seconds", "seconds_per_epoch", "command"}


class Counting:
    """The test cluster, counting the tasks it is given (proof that the workers ran them)."""

    def __init__(self, ex: DaskExecutor):
        self.ex, self.tasks, self.remote = ex, 0, True

    def map(self, fn, items):
        items = list(items)
        self.tasks += len(items)
        return self.ex.map(fn, items)

    def check_importable(self, modules, what=""):
        return self.ex.check_importable(modules, what)

    def close(self):  # the module's cluster outlives each context
        pass


@pytest.fixture(scope="module")
def cluster():
    with DaskExecutor(workers=2, threads=1) as ex:
        yield ex


def records(path: Path) -> dict[str, tuple[dict, dict]]:
    """``{record key: (datasets, attributes)}`` of every record (group with an ``analysis`` attr)."""
    out: dict[str, tuple[dict, dict]] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and "analysis" in obj.attrs:
            data = {
                k: v[()]
                for k, v in obj.items()
                if isinstance(v, h5py.Dataset) and k not in VOLATILE
            }
            attrs = {k: v for k, v in obj.attrs.items() if k not in VOLATILE}
            out[name] = (data, attrs)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return out


def assert_same_records(a: Path, b: Path, folders: tuple[Path, Path] | None = None) -> None:
    """Same records, bitwise; ``folders``: the two runs' output folders, which the checkpoint
    paths in the records may name."""
    ra, rb = records(a), records(b)
    assert ra and sorted(ra) == sorted(rb)
    for key, (data, attrs) in ra.items():
        other_data, other_attrs = rb[key]
        assert sorted(data) == sorted(other_data), key
        for name, v in data.items():
            assert np.array_equal(v, other_data[name], equal_nan=v.dtype.kind == "f"), (key, name)
        assert sorted(attrs) == sorted(other_attrs), key
        for name, v in attrs.items():
            other = repr(other_attrs[name])
            if folders is not None:
                other = other.replace(str(folders[1]), str(folders[0]))
            assert repr(v) == other, (key, name, v, other_attrs[name])


def context(runs: Path, out: Path, executor=None):
    ctx = open_context(
        runs,
        data="digits",
        output=out,
        samples=60,
        progress=False,
        splits=("test", "train"),
        inits=True,
    )
    if executor is not None:
        ctx._executor = executor
    return ctx


STUDIES = {
    "interpolation": (interpolation.study, dict(num_points=5, align=True)),
    "hessian": (
        hessian.study,
        dict(top_k=2, num_runs=2, lanczos_steps=8, num_queries=4, tol=1e-3),
    ),
    "symmetry": (alignment.study, dict(trials=1, audit_samples=16)),
    "surface": (surfaces.study, dict(steps=4, chunk_size=5)),
    "calibration": (calibration.study, {}),
}


@pytest.mark.parametrize("name", list(STUDIES))
def test_two_workers_write_the_inline_records(name, cluster, tiny_runs, tmp_path):
    fn, kw = STUDIES[name]
    ctx = context(tiny_runs, tmp_path / "inline.h5")
    fn(ctx, **kw)
    ctx.store.close()
    counting = Counting(cluster)
    ctx = context(tiny_runs, tmp_path / "dask.h5", counting)
    fn(ctx, **kw)
    ctx.store.close()
    assert counting.tasks > 0  # the workers computed them
    assert_same_records(tmp_path / "inline.h5", tmp_path / "dask.h5")


def test_a_worker_killed_mid_study_gives_the_same_file(cluster, tiny_runs, tmp_path, monkeypatch):
    kw = dict(num_points=41, align=True)
    ctx = context(tiny_runs, tmp_path / "inline.h5")
    interpolation.study(ctx, **kw)
    ctx.store.close()
    ctx = context(tiny_runs, tmp_path / "dask.h5", Counting(cluster))
    killed: list[int] = []
    write = type(ctx.store).write

    def write_then_kill(store, *args, **kwargs):
        out = write(store, *args, **kwargs)
        if not killed:  # after the first record: one worker dies with tasks still to run
            pid = sorted(cluster.pids().values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return out

    monkeypatch.setattr(type(ctx.store), "write", write_then_kill)
    interpolation.study(ctx, **kw)
    monkeypatch.undo()
    ctx.store.close()
    assert killed
    assert_same_records(tmp_path / "inline.h5", tmp_path / "dask.h5")


def _complete(path: Path) -> dict[str, str]:
    """Record key -> time of every complete record (empty while the file cannot be read)."""
    try:
        with h5py.File(path, "r") as f:
            out = {}
            f.visititems(
                lambda n, o: (
                    out.__setitem__(n, str(o.attrs["time"]))
                    if isinstance(o, h5py.Group) and o.attrs.get("complete", False)
                    else None
                )
            )
            return out
    except (OSError, KeyError):
        return {}


def test_a_client_killed_mid_study_resumes_without_recomputing(tiny_runs, tmp_path, monkeypatch):
    out = tmp_path / "r.h5"
    argv = ["interpolate", str(tiny_runs), "--num-points", "301", "--align", "-o", str(out), "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis.cli", *argv, "--workers", "2"],
        cwd=tmp_path,
        env=env,
        start_new_session=True,  # the client and its workers: one process group
        stderr=subprocess.PIPE,
    )
    deadline, before = time.monotonic() + 240, {}
    while time.monotonic() < deadline and proc.poll() is None:
        before = _complete(out)
        if before:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert before, proc.stderr.read().decode()[-2000:]
    before = _complete(out)  # what the file holds after the kill
    total = 7  # 2 groups x 1 pair, 1 aligned pair (standard), 4 MLI curves
    assert 0 < len(before) < total, "killed too late to test a resume"

    computed = []
    real = interpolation.compute

    def counting(ws, job, **kw):
        computed.append(job)
        return real(ws, job, **kw)

    monkeypatch.setattr(interpolation, "compute", counting)
    assert main(argv) == 0  # inline this time: the file does not remember the executor
    after = _complete(out)
    assert len(after) == total and len(computed) == total - len(before)
    assert all(after[k] == t for k, t in before.items())  # complete records kept as they were
    monkeypatch.undo()
    ref = tmp_path / "ref.h5"
    assert main([*argv[:-3], "-o", str(ref), "-q"]) == 0
    assert_same_records(ref, out)


def test_a_command_leaves_no_worker_process_behind(tiny_runs, tmp_path):
    """The CLI's study contexts are dropped without closing their executors: the command's
    end (close_all) must still stop the workers it started, not the interpreter's exit, and
    leave this process's environment as it found it."""
    import multiprocessing

    before = set(multiprocessing.active_children())  # the module's cluster, if started
    environ = dict(os.environ)
    argv = ["interpolate", str(tiny_runs), "--num-points", "3", "-q", "--workers", "2"]
    assert main([*argv, "-o", str(tmp_path / "a.h5")]) == 0
    deadline = time.monotonic() + 20
    while set(multiprocessing.active_children()) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(multiprocessing.active_children()) - before
    # nor one thread for every later subprocess: Dask's nannies set OMP_NUM_THREADS=1 and the
    # like in this process's environment before spawning a worker
    marker = "__DASK_PARENT_PID"  # set once when distributed is imported, for its process titles
    assert {k: v for k, v in os.environ.items() if k != marker} == {
        k: v for k, v in environ.items() if k != marker
    }


def test_train_seeds_on_workers_are_the_inline_checkpoints(tmp_path):
    base = ["train", "--arch", "mlp", "--variants", "standard,w-asym", "--seeds", "2"]
    base += ["--epochs", "1", "--width", "8", "--depth", "1", "--samples", "200", "-q"]
    assert main([*base, "--out", str(tmp_path / "inline")]) == 0
    assert main([*base, "--out", str(tmp_path / "dask"), "--workers", "2"]) == 0
    finals = sorted(p.relative_to(tmp_path / "inline") for p in (tmp_path / "inline").rglob("*.pt"))
    assert len(finals) == 8
    for rel in finals:
        a = torch.load(tmp_path / "inline" / rel, weights_only=True)["state_dict"]
        b = torch.load(tmp_path / "dask" / rel, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), rel


def test_bnn_seeds_on_workers_write_the_inline_records(tmp_path):
    base = ["bnn", "--variants", "standard", "--seeds", "2", "--samples", "120", "--steps", "20"]
    base += ["--batch-size", "32", "--width", "8", "--depth", "1", "--test-samples", "2"]
    base += ["--log-every", "10", "-q", "--no-report"]
    assert main([*base, "--out", str(tmp_path / "inline")]) == 0
    assert main([*base, "--out", str(tmp_path / "dask"), "--workers", "2"]) == 0
    assert_same_records(
        tmp_path / "inline" / "results.h5",
        tmp_path / "dask" / "results.h5",
        (tmp_path / "inline", tmp_path / "dask"),
    )


def test_metanet_runs_on_workers_write_the_inline_records(tmp_path):
    pop = tmp_path / "pop"
    argv = ["train", "--population", "8", "--arch", "mlp", "--width", "8", "--depth", "1"]
    argv += ["--variants", "standard", "--epochs-scale", "0.1", "--samples", "200", "-q"]
    assert main([*argv, "--out", str(pop)]) == 0
    base = ["metanet", str(pop), "--metanets", "linear,mlp", "--seeds", "2", "--epochs", "2", "-q"]
    assert main([*base, "-o", str(tmp_path / "inline.h5")]) == 0
    assert main([*base, "-o", str(tmp_path / "dask.h5"), "--workers", "2"]) == 0
    assert_same_records(tmp_path / "inline.h5", tmp_path / "dask.h5")


@pytest.mark.gpu
def test_one_worker_per_gpu_is_pinned_to_its_device(tiny_runs, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with DaskExecutor(workers="gpu") as ex:
        seen = ex.client.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
        assert sorted(seen.values()) == sorted(ex.gpus)
        ctx = context(tiny_runs, tmp_path / "gpu.h5", Counting(ex))
        interpolation.study(ctx, num_points=5)
        ctx.store.close()
    assert records(tmp_path / "gpu.h5")


def placement(ws: Workspace, job: int) -> tuple[int, int, int]:
    """Which process ran the job, and which data object (and tensor) it computed on."""
    b = ws.batches("test")
    return os.getpid(), id(b), b.batches[0][0].data_ptr()


def test_each_worker_places_the_data_once(cluster, tiny_runs, tmp_path):
    ctx = context(tiny_runs, tmp_path / "r.h5")
    task = RecordTask(Workspace.of(ctx, ["test"]), placement)
    seen = [result for _job, result in cluster.map(task, range(16))]
    by_worker: dict[int, set] = {}
    for pid, obj, ptr in seen:
        by_worker.setdefault(pid, set()).add((obj, ptr))
    assert os.getpid() not in by_worker and len(by_worker) >= 1
    assert all(len(objs) == 1 for objs in by_worker.values())  # one placement per worker
