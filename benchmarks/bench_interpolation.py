"""Interpolation: the barrier pass of ``landscape.interpolate`` against a plain forward loop.

Case: the paper's MNIST MLP shape (``checkpoints.zoo.build("mlp", input_dim=784)``:
784-512x3-10, LayerNorm, GELU) on 10,000 in-memory random samples, 25 points on the line
between two seeds. The headline ratio is

    (time of interpolate / number of points) / (time of one plain forward pass over the data)

where the plain pass is ``model(x)`` for every batch of the same device-resident batches,
under ``torch.no_grad()``. One point of a curve needs exactly that pass (plus a loss and an
argmax on the outputs), so the target is a ratio close to 1: at most 1.10. The passes per
point are counted with a forward hook, and the curve's endpoints are checked against the
plain loop's loss of each model (the ground truth column).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .timing import forward_flops, matmul_rate, measure, ratio

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
    data = as_batches((torch.randn(n, 784, generator=g), torch.randint(0, 10, (n,), generator=g)), device=device)
    batches = data.batches

    t_fwd = measure(lambda: _plain_pass(model_a, batches, False), repeats=2 * repeats + 1, warmup=1)
    t_loss = measure(lambda: _plain_pass(model_a, batches, True), repeats=2 * repeats + 1, warmup=1)
    t_int = measure(lambda: landscape.interpolate(model_a, model_b, data, num_points=points, bn="eval"), repeats=repeats, warmup=1)
    per_point = tuple(t / points for t in t_int)

    with _PassCounter(type(model_a)) as counter:
        curve = landscape.interpolate(model_a, model_b, data, num_points=points, bn="eval")
    passes = counter.samples / (n * points)
    truth = (_plain_pass(model_a, batches, True), _plain_pass(model_b, batches, True))
    err = max(abs(curve.loss[0] - truth[0]) / abs(truth[0]), abs(curve.loss[-1] - truth[1]) / abs(truth[1]))

    flop = sum(forward_flops(model_a, x) for x, _ in batches)
    peak = matmul_rate(device=device)

    def timing(t: tuple[float, float, float], reps: int) -> dict:
        gf = flop / t[0] / 1e9
        return {"time_s": t[0], "time_min_s": t[1], "time_max_s": t[2], "repeats": reps, "gflops": gf, "share_of_matmul": gf / peak}

    r = ratio(per_point[0], t_fwd[0])
    case = f"barrier pass, MLP 784-512x3-10 {variant}, {n:,} random samples, {points} points, {device}"
    return [
        {"case": case, "tool": "plain forward loop, model(x) per batch", **timing(t_fwd, 2 * repeats + 1), "forward_passes": 1.0},
        {"case": case, "tool": "plain forward + loss + accuracy", **timing(t_loss, 2 * repeats + 1), "forward_passes": 1.0},
        {"case": case, "tool": "landscape.interpolate bn=eval, per point", **timing(per_point, repeats), "forward_passes": passes,
         "ratio": r, "ratio_of": "interpolate per point / plain forward pass", "error": float(err),
         "error_of": "max relative error of L(0), L(1) vs the plain loop's loss of A, B",
         "target": f"ratio <= {TARGET:.2f}", "met": bool(r <= TARGET)},
    ]


def run(smoke: bool = False, device: str = "cpu") -> list[dict]:
    """Rows for the standard MLP (and, in the full run, the W-Asym variant, whose masks cost every pass)."""
    if smoke:
        return _case("standard", 512, 5, 2, device)
    return _case("standard", 10_000, 25, 5, device) + _case("w-asym", 10_000, 25, 5, device)
