"""Executors: ``landscape interpolate`` on a 4-seed set, 2 local Dask workers against inline.

Case: four seeds of the digits MLP (64-512x3-10, LayerNorm, GELU; ``landscape train
--epochs 0`` writes their checkpoints), every pair (6 curves) and every MLI curve (4), 25
points on the test and train splits of the digits (360 and 1,437 samples). Both runs go
through the CLI (``analysis.cli.main``) into fresh results files, so the times are what a
user waits for, the 2-worker one including the start of its local cluster (reported on its
own as well). Inline keeps torch's own thread count (every core); each worker gets
``cores // 2`` threads, so neither oversubscribes the machine. The runs alternate, and the
ratio is the median over rounds of inline time / 2-worker time. The two files hold the same
records bitwise (checked).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .timing import spread

TARGET = 1.6


def _records(path: Path) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
    return out


def _case(seeds: int, points: int, width: int, depth: int, rounds: int) -> list[dict]:
    from analysis.cli import main
    from landscape.distributed import DaskExecutor

    with tempfile.TemporaryDirectory(prefix="bench-executor-") as tmp:
        root = Path(tmp) / "runs"
        argv = ["train", "--arch", "mlp", "--variants", "standard", "--seeds", str(seeds)]
        argv += ["--epochs", "0", "--width", str(width), "--depth", str(depth), "-q"]
        assert main([*argv, "--out", str(root)]) == 0
        base = ["interpolate", str(root), "--num-points", str(points), "-q"]
        times: dict[str, list[float]] = {"inline": [], "workers": []}
        for r in range(rounds):
            for name, extra in (("inline", []), ("workers", ["--workers", "2"])):
                out = Path(tmp) / f"{name}{r}.h5"
                t0 = time.perf_counter()
                assert main([*base, "-o", str(out), *extra]) == 0
                times[name].append(time.perf_counter() - t0)
        same = (
            _records(Path(tmp) / "inline0.h5").keys() == _records(Path(tmp) / "workers0.h5").keys()
        )
        a, b = _records(Path(tmp) / "inline0.h5"), _records(Path(tmp) / "workers0.h5")
        same = same and all(np.array_equal(a[k], b[k]) for k in a if a[k].dtype.kind != "S")
        t0 = time.perf_counter()
        with DaskExecutor(workers=2) as ex:
            started = time.perf_counter() - t0
            threads = ex.threads
    ratios = [i / w for i, w in zip(times["inline"], times["workers"])]
    case = (
        f"landscape interpolate, {seeds} seeds of the digits MLP 64-{width}x{depth}-10, "
        f"{points} points, test+train, cpu ({os.cpu_count()} cores)"
    )

    def timing(t: list[float]) -> dict:
        med, lo, hi = spread(t)
        return {"time_s": med, "time_min_s": lo, "time_max_s": hi, "repeats": len(t)}

    r, r_lo, r_hi = spread(ratios)
    return [
        {
            "case": case,
            "tool": f"inline ({torch.get_num_threads()} torch threads)",
            **timing(times["inline"]),
        },
        {
            "case": case,
            "tool": f"--workers 2 ({threads} torch thread(s) each), cluster start included",
            **timing(times["workers"]),
            "ratio": r,
            "ratio_min": r_lo,
            "ratio_max": r_hi,
            "ratio_of": "inline time / 2-worker time, median over alternating rounds",
            "error": 0.0 if same else float("nan"),
            "error_of": "records differing from the inline file (0: bitwise the same)",
            "target": f"ratio >= {TARGET:.1f}",
            "met": bool(r >= TARGET),
            "note": f"starting the local cluster alone took {started:.1f} s",
        },
    ]


def run(smoke: bool = False) -> list[dict]:
    if smoke:
        return _case(2, 3, 16, 1, 1)
    return _case(4, 25, 512, 3, 3)
