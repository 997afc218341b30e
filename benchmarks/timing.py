"""Timing helpers shared by every benchmark module.

Machines are noisy, so every figure is the median of several repeats with its spread
(min and max) beside it; ratios between two tools are ratios of medians measured in the
same process, back to back.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

_MATMUL_CACHE: dict[tuple, float] = {}


def _sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the work itself."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        if device is None or torch.device(device).type == "cuda":
            torch.cuda.synchronize()


def measure(
    fn: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[float, float, float]:
    """Wall time of ``fn()`` in seconds as ``(median, min, max)`` over ``repeats`` calls.

    ``warmup`` untimed calls come first (allocator, caches, lazy initialisation). Each
    timed call is bracketed by a CUDA synchronisation when CUDA is in use.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    return spread(measure_interleaved({"fn": fn}, repeats, 0)["fn"])


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """``(median, min, max)`` of ``values``."""
    return statistics.median(values), min(values), max(values)


def time_columns(times: Sequence[float]) -> dict[str, float | int]:
    """A report row's time columns: the median and spread of ``times`` and their count."""
    med, lo, hi = spread(times)
    return {"time_s": med, "time_min_s": lo, "time_max_s": hi, "repeats": len(times)}


def measure_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of several functions measured round-robin: every round calls each once.

    Returns the ``repeats`` times of each function. On a shared machine the load drifts
    over seconds; interleaving exposes the functions being compared to the same drift, and
    the ratio of two functions' times within one round (then the median over rounds) is
    steadier than a ratio of medians taken minutes apart. Each round calls the functions in
    its own order (a permutation drawn from a fixed seed), so no function always runs first,
    or always right after the same one: a call that follows one freeing much memory (a
    tool's large run) pays for page faults the next call does not, and that cost must fall
    on every function alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(max(0, warmup)):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for i in order.permutation(len(names)):
            k = names[i]
            fn = fns[k]
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    return times


def matmul_rate_spread(
    n: int = 2048,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 7,
) -> tuple[float, float, float]:
    """Dense matmul rate in GFLOP/s as ``(median, min, max)``: ``2 n^3 / t`` for one ``n x n`` product.

    ``t`` runs over ``repeats`` timed products after two warm-up products, so the median
    is the machine's practical peak with the current torch thread count. The median is
    also remembered for :func:`matmul_rate`.
    """
    dev = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float32).to(dev, dtype)
    b = torch.randn(n, n, generator=g, dtype=torch.float32).to(dev, dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    med, lo, hi = measure(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=2)
    flop = 2.0 * n**3 / 1e9
    _MATMUL_CACHE[(int(n), dtype, str(dev))] = flop / med
    return flop / med, flop / hi, flop / lo


def matmul_rate(
    n: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    repeats: int = 7,
    cached: bool = True,
) -> float:
    """Dense matmul rate of this process in GFLOP/s (median of ``repeats``; see :func:`matmul_rate_spread`).

    With ``cached`` the first measurement for the same ``(n, dtype, device)`` in this
    process is reused, so every benchmark of one run compares against the same figure.
    ``n=None`` takes whatever size the runner measured first for this dtype and device
    (2048 when nothing was measured yet). Use the figure as the denominator of an
    achieved-GFLOP/s share.
    """
    dev = str(torch.device(device))
    if cached:
        for (size, dt, d), rate in _MATMUL_CACHE.items():
            if dt == dtype and d == dev and (n is None or size == n):
                return rate
    return matmul_rate_spread(n or 2048, dtype=dtype, device=device, repeats=repeats)[0]


def forward_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Floating-point operations of one forward pass of ``model`` on ``x``.

    Counted by torch's ``FlopCounterMode`` (matmuls and convolutions, 2 per
    multiply-add; elementwise operations are not counted), the convention of the
    matmul rate above, so ``flops / time / matmul_rate`` is the share of peak reached.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when the denominator is zero or missing."""
    try:
        return float(numerator) / float(denominator) if denominator else float("nan")
    except (TypeError, ValueError):
        return float("nan")
