"""Linear interpolation between two networks: mode-connectivity barriers and MLI.

For parameters ``theta(a) = (1 - a) theta_A + a theta_B`` (trainable coordinates of the
flat view; BatchNorm running statistics are mixed the same way, fixed asymmetry buffers
must be identical) the curve ``L(a)`` is evaluated on a grid of ``a`` in [0, 1].

Barriers of a curve ``v(a)`` against its chord ``c(a) = (1 - a) v(0) + a v(1)``:

- max-over-path (Entezari et al. 2022; Ainsworth et al., Git Re-Basin):
  ``B_max = max_a [v(a) - c(a)]`` for the loss;
- midpoint (Lim et al. 2024, Table 1): ``B_mid = v(1/2) - (v(0) + v(1)) / 2``.

Accuracy barriers are the mirror image, the drop below the chord:
``max_a [c(a) - acc(a)]`` and ``(acc(0) + acc(1)) / 2 - acc(1/2)``. Both are >= 0 for
``B_max`` (the endpoints give 0); ``B_mid`` can be negative.

Monotonic linear interpolation (MLI, Lucas et al. 2021; Lim et al. 2024 Section 5.2) from
``init`` to ``final`` uses: ``delta`` (largest increase between consecutive points,
0 for a non-increasing curve), ``monotonic`` (no increase), ``local_convexity`` (share of
non-negative second differences) and ``global_convexity`` (the curve never rises above the
chord between the true endpoints ``L(init)`` and ``L(final)``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Data, as_batches
from .errors import UserError
from .evaluation import BN_MODES, evaluate, has_batchnorm, reset_batchnorm
from .objectives import resolve_objective
from .params import ParamView, check_same_family, state_buffers

#: recorded with every barrier so a results file states which definition it holds
BARRIER_DEFINITIONS = {
    "loss_barrier_max": "max_a [L(a) - ((1-a) L(0) + a L(1))] (Entezari et al. 2022; Git Re-Basin)",
    "loss_barrier_mid": "L(1/2) - (L(0) + L(1)) / 2 (Lim et al. 2024, Table 1)",
    "accuracy_barrier_max": "max_a [((1-a) acc(0) + a acc(1)) - acc(a)]",
    "accuracy_barrier_mid": "(acc(0) + acc(1)) / 2 - acc(1/2)",
}


def chord(alphas: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(1 - a) v(0) + a v(1)`` with the curve's true endpoints (first and last points)."""
    a = (alphas - alphas[0]) / (alphas[-1] - alphas[0])
    return (1 - a) * values[0] + a * values[-1]


def value_at(alphas: np.ndarray, values: np.ndarray, a: float) -> float:
    """``v(a)``: the grid value, or linear interpolation between the two nearest grid points."""
    hit = np.isclose(alphas, a, atol=1e-9)
    if hit.any():
        return float(values[np.argmax(hit)])
    return float(np.interp(a, alphas, values))


def barrier_max(alphas: np.ndarray, values: np.ndarray, higher_is_worse: bool = True) -> float:
    """``max_a [v(a) - c(a)]`` (loss) or ``max_a [c(a) - v(a)]`` (accuracy)."""
    diff = np.asarray(values) - chord(np.asarray(alphas), np.asarray(values))
    return float(np.max(diff if higher_is_worse else -diff))


def barrier_mid(alphas: np.ndarray, values: np.ndarray, higher_is_worse: bool = True) -> float:
    """``v(1/2) - (v(0) + v(1)) / 2`` (loss) or its negative (accuracy)."""
    values = np.asarray(values)
    d = value_at(np.asarray(alphas), values, 0.5) - 0.5 * (values[0] + values[-1])
    return float(d if higher_is_worse else -d)


@dataclass(frozen=True)
class Curve:
    """Loss and accuracy along the line from model A (``a = 0``) to model B (``a = 1``)."""

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    num_samples: int = 0
    bn: str = "eval"

    @property
    def loss_barrier(self) -> float:
        """Max-over-path loss barrier ``max_a [L(a) - c(a)]``."""
        return barrier_max(self.alphas, self.loss)

    @property
    def loss_barrier_mid(self) -> float:
        """Midpoint loss barrier ``L(1/2) - (L(0) + L(1)) / 2`` (the paper's Table 1)."""
        return barrier_mid(self.alphas, self.loss)

    @property
    def accuracy_barrier(self) -> float:
        """Max-over-path accuracy drop ``max_a [c(a) - acc(a)]``."""
        return barrier_max(self.alphas, self.accuracy, higher_is_worse=False)

    @property
    def accuracy_barrier_mid(self) -> float:
        return barrier_mid(self.alphas, self.accuracy, higher_is_worse=False)

    def barriers(self) -> dict[str, float]:
        return {
            "loss_barrier_max": self.loss_barrier,
            "loss_barrier_mid": self.loss_barrier_mid,
            "accuracy_barrier_max": self.accuracy_barrier,
            "accuracy_barrier_mid": self.accuracy_barrier_mid,
        }

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"alpha": self.alphas, "loss": self.loss, "accuracy": self.accuracy})

    def _repr_html_(self) -> str:
        b = self.barriers()
        head = ", ".join(f"{k} = {v:.4g}" for k, v in b.items())
        return (
            f"<p><b>Curve</b> ({len(self.alphas)} points, bn={self.bn}): {head}</p>"
            + self.to_frame().to_html(index=False, max_rows=30)
        )


@dataclass(frozen=True)
class MLIMetrics:
    delta: float
    monotonic: bool
    local_convexity: float
    global_convexity: bool


def mli_metrics(alphas: Sequence[float], loss: Sequence[float], *, tol: float = 0.0) -> MLIMetrics:
    """MLI metrics of a loss curve from init (first point) to final (last point).

    ``delta = max(0, max_i L_{i+1} - L_i)``; ``monotonic``: every step changes by <= ``tol``;
    ``local_convexity``: share of interior points with ``L_{i-1} - 2 L_i + L_{i+1} >= -tol``;
    ``global_convexity``: ``L(a) <= c(a) + tol`` everywhere, ``c`` the chord of the true endpoints.
    """
    a, L = np.asarray(alphas, dtype=float), np.asarray(loss, dtype=float)
    if L.size < 3:
        raise UserError("MLI metrics need at least 3 points on the curve")
    steps = np.diff(L)
    second = L[:-2] - 2 * L[1:-1] + L[2:]
    return MLIMetrics(
        delta=float(max(0.0, steps.max())),
        monotonic=bool((steps <= tol).all()),
        local_convexity=float((second >= -tol).mean()),
        global_convexity=bool((L <= chord(a, L) + tol).all()),
    )


@dataclass(frozen=True)
class MLICurve:
    curve: Curve
    metrics: MLIMetrics

    def to_frame(self):
        return self.curve.to_frame()


class _Line:
    """A working copy of model A whose coordinates and BN statistics are set per ``alpha``."""

    def __init__(self, model_a: nn.Module, model_b: nn.Module):
        check_same_family(model_a, model_b, "the two models")
        self.work = copy.deepcopy(model_a).eval()
        self.view = ParamView(self.work)
        self.theta_a = ParamView(model_a).get().to(self.view.device)
        self.theta_b = ParamView(model_b).get().to(self.view.device)
        sa, sb = state_buffers(model_a), state_buffers(model_b)
        self.buffers = {
            n: (sa[n].clone(), sb[n].to(sa[n].device).clone())
            for n in sa
            if sa[n].is_floating_point()
        }
        self.work_buffers = dict(self.work.named_buffers())

    @torch.no_grad()
    def set(self, alpha: float) -> nn.Module:
        self.view.set_(torch.lerp(self.theta_a, self.theta_b, float(alpha)))
        for n, (ba, bb) in self.buffers.items():
            self.work_buffers[n].copy_(torch.lerp(ba, bb, float(alpha)))
        return self.work


def _alphas(num_points: int, alphas: Sequence[float] | None) -> np.ndarray:
    if alphas is not None:
        a = np.asarray(alphas, dtype=float)
        if a.ndim != 1 or a.size < 2 or np.any(np.diff(a) <= 0):
            raise UserError("alphas must be an increasing sequence of at least 2 values")
        return a
    if num_points < 2:
        raise UserError(f"num_points must be at least 2, got {num_points}")
    return np.linspace(0.0, 1.0, int(num_points))


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    *,
    num_points: int = 25,
    alphas: Sequence[float] | None = None,
    bn: str = "eval",
    train_data: Data | None = None,
    device=None,
    batch_size: int | None = None,
    progress: bool = False,
    objective: Any = None,
) -> Curve:
    """Loss and accuracy of ``(1 - a) A + a B`` on ``data`` for ``num_points`` values of ``a``.

    ``bn="eval"`` mixes BatchNorm running statistics linearly like the weights;
    ``bn="reset"`` re-estimates them at every ``a`` on ``train_data`` (default: ``data``),
    which costs one extra forward pass over that data per point. Evaluation data is moved
    to the device once; one working copy of A is made per call, none per point. ``objective``
    is the loss (:func:`landscape.objectives.resolve_objective`: default ``auto``, a name such as
    ``lm``, an :class:`~landscape.objectives.Objective` or a callable); ``L(a)`` is its exact mean
    over the units of ``data``.
    """
    return interpolate_splits(
        model_a,
        model_b,
        {"data": data},
        num_points=num_points,
        alphas=alphas,
        bn=bn,
        train_data=train_data,
        device=device,
        batch_size=batch_size,
        progress=progress,
        objective=objective,
    )["data"]


def interpolate_splits(
    model_a: nn.Module,
    model_b: nn.Module,
    splits: Mapping[str, Data],
    *,
    num_points: int = 25,
    alphas: Sequence[float] | None = None,
    bn: str = "eval",
    train_data: Data | None = None,
    device=None,
    batch_size: int | None = None,
    progress: bool = False,
    objective: Any = None,
) -> dict[str, Curve]:
    """:func:`interpolate` on several data sets (e.g. ``{"test": ..., "train": ...}``) in one pass
    along the line: each point's parameters (and, for ``bn="reset"``, BatchNorm statistics, on
    ``train_data``, default the first data set) are set once and evaluated on every data set."""
    if bn not in BN_MODES:
        raise UserError(f"unknown bn mode {bn!r}: use eval or reset")
    if not splits:
        raise UserError("interpolate needs at least one data set")
    obj = resolve_objective(objective)
    a = _alphas(num_points, alphas)
    line = _Line(model_a, model_b)
    dev = device if device is not None else line.view.device
    batches = {name: as_batches(d, device=dev, batch_size=batch_size) for name, d in splits.items()}
    reset = bn == "reset" and has_batchnorm(line.work)
    train_batches = None
    if reset:
        train_batches = as_batches(
            train_data if train_data is not None else next(iter(batches.values())),
            device=dev,
            batch_size=batch_size,
        )
    losses = {name: np.empty(a.size) for name in batches}
    accs = {name: np.empty(a.size) for name in batches}
    it = a
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(a, desc="interpolate", leave=False)
    for i, alpha in enumerate(it):
        model = line.set(alpha)
        if reset:
            reset_batchnorm(model, train_batches)
        for name, b in batches.items():
            ev = evaluate(model, b, objective=obj)
            losses[name][i], accs[name][i] = ev.loss, ev.accuracy
    return {
        name: Curve(a, losses[name], accs[name], b.num_samples, bn) for name, b in batches.items()
    }


def mli(
    model_init: nn.Module,
    model_final: nn.Module,
    data: Data,
    *,
    num_points: int = 25,
    bn: str = "eval",
    train_data: Data | None = None,
    device=None,
    batch_size: int | None = None,
    tol: float = 0.0,
    objective: Any = None,
) -> MLICurve:
    """Monotonic linear interpolation from ``model_init`` to ``model_final`` with the MLI metrics."""
    curve = interpolate(
        model_init,
        model_final,
        data,
        num_points=num_points,
        bn=bn,
        train_data=train_data,
        device=device,
        batch_size=batch_size,
        objective=objective,
    )
    return MLICurve(curve, mli_metrics(curve.alphas, curve.loss, tol=tol))
