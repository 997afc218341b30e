"""Interpolation: the barrier pass of ``landscape.interpolate`` against a plain forward loop.

Case: the paper's MNIST MLP shape (``checkpoints.zoo.build("mlp", input_dim=784)``:
784-512x3-10, LayerNorm, GELU) on 10,000 in-memory random samples, 25 points on the line
between two seeds. The headline ratio is

    (time of interpolate / number of points) / (time of one plain forward pass over the data)

where the plain pass is ``model(x)`` for every batch of the same device-resident batches,
under ``torch.no_grad()``. They are timed in alternating blocks of equal work (as many
plain passes as the curve has points) and the ratio is the median of the per-round ratios. One point of a curve needs exactly that pass (plus a loss and an
argmax on the outputs), so the target is a ratio close to 1: at most 1.10. The passes per
point are counted with a forward hook, and the curve's endpoints are checked against the
plain loop's loss of each model (the ground truth column).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .timing import forward_flops, matmul_rate, measure_interleaved, spread

TARGET = 1.10


def _plain_pass(model: torch.nn.Module, batches: list, with_loss: bool) -> float:
    """One forward pass over ``batches``; with ``with_loss`` the mean cross-entropy as well."""
    total, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            if with_loss:
                total += float(F.cross_entropy(out, y, reduction="sum"))
                correct += int((out.argmax(dim=1) == y).sum())
                n += int(y.shape[0])
    return total / n if with_loss else float("nan")


class _PassCounter:
    """Counts samples seen by forward calls of modules of one class (any copy of the model)."""

    def __init__(self, cls: type):
        self.cls, self.samples = cls, 0

    def __enter__(self):
        def hook(module, args, output):
            if type(module) is self.cls and args:
                self.samples += int(args[0].shape[0])

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _case(variant: str, n: int, points: int, repeats: int, device: str) -> list[dict]:
    import landscape
    from checkpoints import zoo
    from landscape.data import as_batches

    model_a = zoo.build("mlp", variant, input_dim=784, seed=0).to(device)
    model_b = zoo.build("mlp", variant, input_dim=784, seed=1).to(device)
    g = torch.Generator().manual_seed(0)
    data = as_batches(
        (torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)), device=device
    )
    batches = data.batches

    # Alternating blocks of equal work (``points`` plain passes vs one curve of ``points``
    # points), so both see the same machine load; the ratio is taken within each round.
    def plain_block(with_loss: bool) -> None:
        for _ in range(points):
            _plain_pass(model_a, batches, with_loss)

    _plain_pass(model_a, batches, True)
    landscape.interpolate(model_a, model_b, data, num_points=2, bn="eval")  # warm-up
    times = measure_interleaved(
        {
            "fwd": lambda: plain_block(False),
            "loss": lambda: plain_block(True),
            "int": lambda: landscape.interpolate(
                model_a, model_b, data, num_points=points, bn="eval"
            ),
        },
        repeats=repeats,
        warmup=0,
    )
    times = {k: [t / points for t in v] for k, v in times.items()}  # seconds per pass / per point
    ratios = [i / f for i, f in zip(times["int"], times["fwd"])]

    with _PassCounter(type(model_a)) as counter:
        curve = landscape.interpolate(model_a, model_b, data, num_points=points, bn="eval")
    passes = counter.samples / (n * points)
    truth = (_plain_pass(model_a, batches, True), _plain_pass(model_b, batches, True))
    err = max(
        abs(curve.loss[0] - truth[0]) / abs(truth[0]),
        abs(curve.loss[-1] - truth[1]) / abs(truth[1]),
    )

    flop = sum(forward_flops(model_a, x) for x, _ in batches)
    peak = matmul_rate(device=device)

    def timing(t: list[float]) -> dict:
        med, lo, hi = spread(t)
        gf = flop / med / 1e9
        return {
            "time_s": med,
            "time_min_s": lo,
            "time_max_s": hi,
            "repeats": len(t),
            "gflops": gf,
            "share_of_matmul": gf / peak,
        }

    r, r_lo, r_hi = spread(ratios)
    case = (
        f"barrier pass, MLP 784-512x3-10 {variant}, {n:,} random samples, {points} points, {device}"
    )
    return [
        {
            "case": case,
            "tool": "plain forward loop, model(x) per batch",
            **timing(times["fwd"]),
            "forward_passes": 1.0,
        },
        {
            "case": case,
            "tool": "plain forward + loss + accuracy",
            **timing(times["loss"]),
            "forward_passes": 1.0,
        },
        {
            "case": case,
            "tool": "landscape.interpolate bn=eval, per point",
            **timing(times["int"]),
            "forward_passes": passes,
            "ratio": r,
            "ratio_min": r_lo,
            "ratio_max": r_hi,
            "ratio_of": "interpolate time per point / plain forward pass time, median over rounds of equal work",
            "error": float(err),
            "error_of": "max relative error of L(0), L(1) vs the plain loop's loss of A and B",
            "target": f"ratio <= {TARGET:.2f}",
            "met": bool(r <= TARGET),
        },
    ]


def run(smoke: bool = False, device: str = "cpu") -> list[dict]:
    """Rows for the standard MLP (and, in the full run, the W-Asym variant, whose masks cost every pass)."""
    if smoke:
        return _case("standard", 256, 3, 2, device)
    return _case("standard", 10_000, 25, 4, device) + _case("w-asym", 10_000, 25, 4, device)
