"""Dask executor: a local 2-process cluster gives the single-process grid, also when a worker is killed mid-run;
results come back to the client, whose on_chunk sees every point once."""

import os
import signal
import sys

import numpy as np
import pytest
import torch
from torch import nn

from landscape import UserError, as_batches
from landscape.directions import random_directions
from landscape.surfaces import surface

pytest.importorskip("distributed")

from landscape.distributed import DaskExecutor, LocalExecutor, make_executor  # noqa: E402


def problem():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )
    g = torch.Generator().manual_seed(1)
    data = as_batches(
        (torch.randn(120, 10, generator=g), torch.randint(0, 3, (120,), generator=g)), batch_size=50
    )
    return model, data, random_directions(model, seed=0)


@pytest.fixture(scope="module")
def cluster():
    with DaskExecutor(workers=2) as ex:
        yield ex


@pytest.fixture(scope="module")
def reference():
    model, data, d = problem()
    return surface(model, data, d, steps=9, progress=False)


def test_two_workers_give_the_single_process_grid(cluster, reference):
    model, data, d = problem()
    assert len(cluster.pids()) == 2
    seen, client_pid = [], os.getpid()
    s = surface(
        model,
        data,
        d,
        steps=9,
        chunk_size=7,
        executor=cluster,
        progress=False,
        on_chunk=lambda part, idx: seen.append((os.getpid(), idx.tolist())),
    )
    assert s.evaluated == 81 and s.complete
    assert np.array_equal(s.loss, reference.loss) and np.array_equal(s.accuracy, reference.accuracy)
    # on the client, every point exactly once (a file written there is written by one process)
    assert {p for p, _ in seen} == {client_pid} and len(seen) == 12
    assert sorted(i for _, idx in seen for i in idx) == list(range(81))
    assert s.settings["shortcut_note"] == reference.settings["shortcut_note"]


def test_resume_on_the_cluster_computes_only_missing_points(cluster, reference):
    model, data, d = problem()
    parts = []
    surface(
        model,
        data,
        d,
        steps=9,
        chunk_size=10,
        executor=LocalExecutor(),
        progress=False,
        on_chunk=lambda part, idx: parts.append(part),
    )
    partial = parts[3]
    seen = []
    s = surface(
        model,
        data,
        d,
        steps=9,
        chunk_size=10,
        executor=cluster,
        initial=partial,
        progress=False,
        on_chunk=lambda part, idx: seen.extend(idx.tolist()),
    )
    assert s.evaluated == 41 and sorted(seen) == list(range(40, 81))
    assert np.array_equal(s.loss, reference.loss) and np.array_equal(s.accuracy, reference.accuracy)


def test_killed_worker_chunks_are_retried(cluster, reference):
    model, data, d = problem()
    killed = []

    def kill_one(part, idx):
        if not killed:
            pid = sorted(cluster.pids().values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, int(part.done.sum())))

    s = surface(
        model, data, d, steps=9, chunk_size=3, executor=cluster, on_chunk=kill_one, progress=False
    )
    assert killed and killed[0][1] < 81  # killed mid-run
    assert s.evaluated == 81
    assert np.array_equal(s.loss, reference.loss) and np.array_equal(s.accuracy, reference.accuracy)


def test_executor_arguments(monkeypatch):
    assert make_executor().name == "local"
    with pytest.raises(UserError, match="not several"):
        DaskExecutor(workers=2, scheduler="tcp://127.0.0.1:1")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(UserError, match="pip install"):
        DaskExecutor(workers=1)
