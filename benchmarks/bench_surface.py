"""Loss-surface grid points: landscape.surface against the loss-landscapes package.

Case: the paper's MNIST MLP shape 784-512-512-512-10 (LayerNorm, GELU; ``zoo.build("mlp",
input_dim=784)``), 10,000 random in-memory samples, one 2-D plane of filter-normalised
random directions. loss-landscapes evaluates its plane with ``planar_interpolation`` between
the model and two end models built from the same directions, so both tools evaluate the
same points: theirs at ``(i h, (j + 1) h)`` on even rows and ``(i h, j h)`` on odd rows (its
serpentine walk), ours on the grid ``x = i h``, ``y = j h`` that contains all of them. Both
run without autograd. loss-landscapes evaluates its metric on the data as one batch (it has
no other mode); ours is timed with its default batching (batches of 4,096 rows: the target
row) and on the same single batch (``landscape (one batch)``), so the table separates the
first-layer shortcut from the cache benefit of smaller batches. Full runs measure at torch's thread count and
again at one thread (steadier where other work shares the cores). Per-point time is the
wall time of the whole call divided by its points (ours includes set-up, the
centre evaluation and the data hash); ``cpu_per_point_s`` is the process CPU time, steadier
on a shared machine. Achieved GFLOP/s counts the matmul FLOPs of a plain
forward pass (FlopCounterMode) per point; ``executed`` leaves out the first layer, which
the shortcut replaces by an elementwise combination. Target: at least 1.25x faster per point
than loss-landscapes, values equal to 1e-5 relative.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.timing import forward_flops, matmul_rate, matmul_rate_spread
from checkpoints import zoo
from landscape import ParamView, as_batches, random_directions, surface

TARGET = 1.25


def _with(model: torch.nn.Module, theta: torch.Tensor) -> torch.nn.Module:
    m = copy.deepcopy(model)
    ParamView(m).set_(theta.float())
    return m


def _case(
    n: int, S: int, h: float, repeats: int, dev: torch.device, threads: int | None, label: str
) -> list[dict]:
    from loss_landscapes import planar_interpolation
    from loss_landscapes.metrics import Loss

    if threads:
        torch.set_num_threads(threads)
    model = zoo.build("mlp", input_dim=784).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 784, generator=g).to(dev)
    y = torch.randint(0, 10, (n,), generator=g).to(dev)
    one_batch = as_batches((X, y), device=dev, batch_size=n)  # as loss-landscapes takes it
    default = as_batches((X, y), device=dev)  # this toolkit's default batching
    d = random_directions(model, seed=0)
    theta0 = ParamView(model).get().double()
    ends = [_with(model, theta0 + S * h * d.vectors[k].to(dev).double()) for k in range(2)]
    metric = Loss(F.cross_entropy, X, y)
    coords = (np.arange(S) * h, np.arange(S + 1) * h)

    def ours(shortcut: bool = True, data=one_batch):
        return surface(model, data, d, coordinates=coords, progress=False, shortcut=shortcut)

    def theirs():
        with torch.no_grad():
            return planar_interpolation(
                copy.deepcopy(model), ends[0], ends[1], metric, steps=S, deepcopy_model=False
            )

    # warm-up: lazy initialisation and first imports must not land on the first tool timed
    surface(model, one_batch, d, coordinates=([0.0], [h]), progress=False)
    # the dense matmul rate at this thread count, in this process, next to the figures it scales
    peak = (
        matmul_rate_spread(1024 if n < 10000 else 2048, device=dev, repeats=5)[0]
        if threads
        else matmul_rate(device=dev)
    )
    times: dict[str, list[float]] = {
        "landscape": [],
        "landscape (one batch)": [],
        "landscape (no shortcut, one batch)": [],
        "loss-landscapes": [],
    }
    cpu: dict[str, list[float]] = {k: [] for k in times}
    results = {}
    for _ in range(repeats):  # interleaved, so machine noise hits every tool alike
        for name, fn in (
            ("landscape", lambda: ours(data=default)),
            ("landscape (one batch)", ours),
            ("landscape (no shortcut, one batch)", lambda: ours(False)),
            ("loss-landscapes", theirs),
        ):
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    ll = np.asarray(results["loss-landscapes"], dtype=float)

    def same_points(grid: np.ndarray) -> np.ndarray:
        return np.array([[grid[i, k + 1 if i % 2 == 0 else k] for k in range(S)] for i in range(S)])

    err = float(np.max(np.abs(same_points(results["landscape"].loss) - ll) / np.abs(ll)))
    err_one = float(
        np.max(np.abs(same_points(results["landscape (one batch)"].loss) - ll) / np.abs(ll))
    )
    err_plain = float(
        np.max(
            np.abs(same_points(results["landscape (no shortcut, one batch)"].loss) - ll)
            / np.abs(ll)
        )
    )
    flops = forward_flops(model, X)
    first = 2 * n * 784 * 512
    points = {k: S * (S + 1) for k in times}
    points["loss-landscapes"] = S * S
    per = {k: [t / points[k] for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in per.items()}
    ratio = med["loss-landscapes"] / med["landscape"]
    case = f"MNIST MLP 784-512x3-10, {n:,} samples, {S}x{S} plane, {label}"
    rows = []
    for name in times:
        t = med[name]
        executed = flops - first if name in ("landscape", "landscape (one batch)") else flops
        row = {
            "case": case,
            "tool": name,
            "time_per_point_s": t,
            "time_per_point_min_s": min(per[name]),
            "time_per_point_max_s": max(per[name]),
            "cpu_per_point_s": statistics.median(cpu[name]) / points[name],
            "points": points[name],
            "repeats": repeats,
            "threads": torch.get_num_threads(),
            "gflops_effective": flops / t / 1e9,
            "gflops_executed": executed / t / 1e9,
            "share_of_matmul_rate": executed / t / 1e9 / peak,
            "matmul_gflops": peak,
        }
        if name == "landscape":
            row.update(
                ratio=ratio,
                ratio_of="loss-landscapes time per point / landscape time per point",
                error=err,
                error_of="max relative difference of the loss to loss-landscapes at the same points",
                target=f"ratio >= {TARGET} and error <= 1e-5",
                met=bool(ratio >= TARGET and err <= 1e-5),
                note=f"batches of {default.batches[0][0].shape[0]}; "
                + results["landscape"].settings.get("shortcut_note", ""),
            )
        elif name == "landscape (one batch)":
            row.update(
                ratio=med["loss-landscapes"] / t,
                error=err_one,
                note="the same single batch as loss-landscapes; "
                + results[name].settings.get("shortcut_note", ""),
            )
        elif name == "landscape (no shortcut, one batch)":
            row.update(
                ratio=med["loss-landscapes"] / t,
                error=err_plain,
                note="plain evaluation: one full forward pass per point",
            )
        else:
            row.update(note="planar_interpolation, torch.no_grad()")
        rows.append(row)
    return rows


def run(smoke: bool = False, device: str = "cpu") -> list[dict]:
    """Rows of the default-thread case and (full runs) a one-thread case, steadier on a shared machine."""
    dev = torch.device(device)
    if smoke:
        return _case(1000, 3, 0.1, 1, dev, None, "smoke")
    threads = torch.get_num_threads()
    rows = _case(10000, 6, 0.1, 3, dev, None, f"{threads} threads")
    if dev.type == "cpu" and threads > 1:
        try:
            rows += _case(10000, 6, 0.1, 3, dev, 1, "1 thread")
        finally:
            torch.set_num_threads(threads)
    return rows


if __name__ == "__main__":
    import sys

    for r in run(smoke="--smoke" in sys.argv):
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
