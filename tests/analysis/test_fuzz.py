"""Seeded fuzz: corrupt checkpoints, results files and IDX files never make the CLI crash.

Inputs are truncations, byte flips, zeroed blocks and random bytes of real files (a
checkpoint of ``tiny_runs`` in both torch formats, a small results file, MNIST-layout IDX
files). Every case must end with exit status 0 or 2, no traceback, and on 2 exactly one
line on stderr. The cases run in-process; results files run in a forked child each, because
HDF5 can spin in C code on a corrupt file (no Python signal can stop it) and could crash.
``LANDSCAPE_FUZZ_SCALE`` multiplies the case counts for a longer local run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import random
import shutil
import signal
import struct
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shown_warnings

from analysis.cli import main
from checkpoints import save_checkpoint, zoo

SCALE = float(os.environ.get("LANDSCAPE_FUZZ_SCALE", "1"))
#: seconds a results-file case may take in its child before it counts as a hang
CHILD_TIMEOUT = 5


def _n(count: int) -> int:
    return max(1, int(count * SCALE))


def mutations(data: bytes, rng: random.Random, n: int) -> Iterator[tuple[str, bytes]]:
    """``n`` corrupt variants of ``data``: (what was done, the bytes)."""
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            cut = rng.randrange(len(data))
            yield f"truncated at {cut}", data[:cut]
        elif r < 0.75:
            b = bytearray(data)
            k = rng.choice([1, 1, 2, 3, 8, 32])
            for _ in range(k):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield f"{k} bytes changed", bytes(b)
        elif r < 0.9:
            b = bytearray(data)
            start = rng.randrange(len(b))
            size = rng.randrange(1, 512)
            b[start : start + size] = bytes(len(b[start : start + size]))
            yield f"{size} bytes zeroed at {start}", bytes(b)
        else:
            size = rng.randrange(0, 4096)
            yield f"{size} random bytes", bytes(rng.randrange(256) for _ in range(size))


def _verdict(rc, err: str) -> str | None:
    """None when the CLI behaved (0, or 2 with one line); else what went wrong."""
    lines = [line for line in err.splitlines() if line.strip()]
    if "Traceback" in err or rc not in (0, 2):
        return f"exit {rc}: {err[-1500:]}"
    if rc == 2 and len(lines) != 1:
        return f"exit 2 with {len(lines)} lines: {err[-1500:]}"
    return None


def _run_here(argv: list[str]) -> tuple[object, str]:
    """Exit status and stderr of ``main(argv)``, warnings included (pytest would hide them)."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
            shown_warnings() as shown,
        ):
            rc = main(argv)
    except BaseException:  # noqa: BLE001 - anything escaping main is what the fuzz looks for
        rc = "exception"
        err.write(traceback.format_exc())
    return rc, err.getvalue() + "".join(shown)


def _run_in_child(argv: list[str], timeout: float = CHILD_TIMEOUT) -> tuple[object, str]:
    """:func:`_run_here` in a forked child: a hang or a crash of HDF5 cannot take the test down."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without any cleanup of the parent's
        try:
            os.close(r)
            faulthandler.disable()  # a crash is reported by the parent, not dumped here
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            rc, err = _run_here(argv)
            os.write(w, json.dumps({"rc": rc, "err": err[-4000:]}).encode())
        finally:
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", f"no answer after {timeout} s"
        time.sleep(0.005)
    with os.fdopen(r, "rb") as f:
        raw = f.read()
    if os.WIFSIGNALED(status):
        return "crash", f"killed by signal {os.WTERMSIG(status)}"
    reply = json.loads(raw)
    return reply["rc"], reply["err"]


def _fuzz(cases, run, save_failures: Path) -> None:
    """Run every case; fail with the first few failures (their bytes kept under ``save_failures``)."""
    failures = []
    for i, (label, argv, data) in enumerate(cases):
        rc, err = run(argv)
        verdict = _verdict(rc, err)
        if verdict is not None:
            save_failures.mkdir(exist_ok=True)
            (save_failures / f"case{i}.bin").write_bytes(data)
            failures.append(f"case {i} ({label}): {verdict}")
    assert not failures, f"{len(failures)} of {i + 1} cases failed:\n" + "\n".join(failures[:5])


# ----------------------------------------------------------------------------- checkpoints
def test_fuzz_checkpoints_with_inspect(tiny_runs, tmp_path):
    src = tiny_runs / "w-asym" / "seed0" / "final.pt"
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(src, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    sidecar = json.loads((src.parent / "landscape.json").read_text())
    rng = random.Random(20240611)
    target = tmp_path / "case" / "c.pt"
    target.parent.mkdir()
    (target.parent / "c.json").write_text(json.dumps(sidecar))

    def cases():
        for source, n in ((src, _n(300)), (legacy, _n(200))):
            for label, data in mutations(source.read_bytes(), rng, n):
                target.write_bytes(data)
                yield f"{source.name}: {label}", ["inspect", str(target)], data

    _fuzz(cases(), _run_here, tmp_path / "failures")


# ----------------------------------------------------------------------------- results files
@pytest.fixture(scope="module")
def results_outcomes(tmp_path_factory) -> list[tuple[int, str, object, str, bytes]]:
    """``(case, what was done, exit, stderr, bytes)`` for corrupt variants of a small results
    file, each through ``inspect`` (and every ninth through ``report``) in a forked child."""
    from conftest import synthetic_results

    tmp = tmp_path_factory.mktemp("fuzz_results")
    argv, sys.argv = sys.argv, ["landscape"]  # the file records the command: fix its length
    try:
        src = synthetic_results(
            tmp / "src" / "results.h5", seeds=2, analyses=("interpolation", "mli", "hessian")
        )
    finally:
        sys.argv = argv
    rng = random.Random(20240612)
    target = tmp / "case" / "results.h5"
    target.parent.mkdir()
    outcomes = []
    for i, (label, data) in enumerate(mutations(src.read_bytes(), rng, _n(90))):
        target.write_bytes(data)
        runs = [["inspect", str(target)]]
        if i % 9 == 0:  # a report embeds plotly (5 MB): a sample of the cases
            runs.append(["report", str(target), "-o", str(tmp / "case" / "report.html")])
        for argv in runs:
            rc, err = _run_in_child(argv)
            outcomes.append((i, f"{argv[0]}, {label}", rc, err, data))
    return outcomes


def _report(outcomes, bad, tmp_path: Path) -> None:
    if bad:
        (tmp_path / "failures").mkdir()
        for i, _, _, _, data in bad:
            (tmp_path / "failures" / f"case{i}.h5").write_bytes(data)
    lines = [f"case {i} ({label}): {_verdict(rc, err)}" for i, label, rc, err, _ in bad[:5]]
    assert not bad, f"{len(bad)} of {len(outcomes)} runs failed:\n" + "\n".join(lines)


def test_fuzz_results_files_with_inspect_and_report(results_outcomes, tmp_path):
    """No traceback, and one line on bad input (a crash or hang inside libhdf5 is the next test's)."""
    bad = [o for o in results_outcomes if o[2] not in ("crash", "hang") and _verdict(o[2], o[3])]
    _report(results_outcomes, bad, tmp_path)


def test_fuzz_results_files_never_crash_hdf5(results_outcomes, tmp_path):
    """The store writes no variable-length strings (landscape.hdf5), so libhdf5 never follows a
    corrupt global-heap reference: no crash, no endless loop in C."""
    bad = [o for o in results_outcomes if o[2] in ("crash", "hang")]
    _report(results_outcomes, bad, tmp_path)


# ----------------------------------------------------------------------------- IDX files
def _idx(arr: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(
        ">" + "I" * arr.ndim, *arr.shape
    )
    return head + arr.tobytes()


def test_fuzz_idx_files_with_interpolate(tmp_path):
    import gzip

    root = tmp_path / "models" / "g"
    for seed in (0, 1):
        save_checkpoint(
            zoo.build("mlp", input_dim=784, width=8, depth=1, seed=seed), root / f"s{seed}.pt"
        )
    gen = np.random.default_rng(0)
    originals = {
        "t10k-images-idx3-ubyte": _idx(gen.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": _idx(np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8)),
    }
    rng = random.Random(20240613)
    data_dir, out = tmp_path / "mnist", tmp_path / "out"

    def cases():
        n = _n(120)
        for i in range(n):
            name = rng.choice(sorted(originals))
            gz = i % 4 == 3
            src = gzip.compress(originals[name], mtime=0) if gz else originals[name]
            label, data = next(mutations(src, rng, 1))
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
            data_dir.mkdir()
            for other, raw in originals.items():
                (data_dir / other).write_bytes(raw)
            if gz:
                (data_dir / name).unlink()
            (data_dir / (name + (".gz" if gz else ""))).write_bytes(data)
            argv = [
                "interpolate",
                str(root.parent),
                "--data",
                f"mnist:{data_dir}",
                "--splits",
                "test",
                "--no-mli",
                "--num-points",
                "2",
                "-o",
                str(out / "r.h5"),
                "-q",
            ]
            yield f"{name}{'.gz' if gz else ''}: {label}", argv, data

    _fuzz(cases(), _run_here, tmp_path / "failures")
