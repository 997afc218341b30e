"""1-D and 2-D loss surfaces: ``L(theta0 + x d_x + y d_y)`` on a grid, resumable and executor-agnostic.

Axis order is fixed and recorded: ``loss[i]`` (1-D) is at ``theta0 + x[i] d_x``, and
``loss[i, j]`` (2-D) at ``theta0 + x[i] d_x + y[j] d_y`` (first index along the first
direction). Loss is the exact sample mean of :func:`landscape.evaluation.evaluate`
(cross-entropy for labels), accuracy the top-1 share.

The grid is filled in chunks of points. With a ``store`` every chunk lands in the record at
``key`` (``complete=False`` plus a ``done`` mask); a rerun with the same model, directions,
grid and data computes only the missing points and ends with the same values as an
uninterrupted run; the last chunk marks the record complete and adds the directions.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Data, as_batches
from .directions import Directions
from .errors import UserError
from .evaluation import evaluate
from .grid import GridSpec, LocalExecutor, spec_token
from .params import ParamView
from .store import Dataset, ResultsStore, provenance

Span = float | tuple[float, float] | Sequence[tuple[float, float]]
DEFINITION = "loss[i, j] = mean over samples of the loss at theta0 + x[i] * d_x + y[j] * d_y (1-D: loss[i] at theta0 + x[i] * d_x)"


def grid_coordinates(
    count: int, steps: int | Sequence[int] = 51, span: Span = (-1.0, 1.0)
) -> tuple[np.ndarray, ...]:
    """Per-axis coordinates: ``steps`` points evenly from ``span[0]`` to ``span[1]`` (both included).

    ``span`` is a number ``s`` (meaning ``(-s, s)``), one ``(lo, hi)`` pair for every axis, or
    one pair per axis; ``steps`` an int or one per axis. Values within ``1e-12`` of zero are
    set to exactly zero, so an odd symmetric grid contains the unperturbed model.
    """
    steps_l = (
        [int(steps)] * count if isinstance(steps, (int, np.integer)) else [int(s) for s in steps]
    )
    if isinstance(span, (int, float)):
        spans = [(-abs(float(span)), abs(float(span)))] * count
    else:
        seq = list(span)
        if len(seq) == 2 and all(isinstance(v, (int, float)) for v in seq):
            spans = [(float(seq[0]), float(seq[1]))] * count
        else:
            spans = [(float(lo), float(hi)) for lo, hi in seq]
    if len(steps_l) != count or len(spans) != count:
        raise UserError(
            f"{count} directions need {count} steps and spans, got {len(steps_l)} and {len(spans)}"
        )
    out = []
    for n, (lo, hi) in zip(steps_l, spans):
        if n < 1 or (n == 1 and lo != hi) or not hi >= lo:
            raise UserError(
                f"bad grid axis: {n} steps from {lo} to {hi} (need steps >= 2 and lo < hi)"
            )
        c = np.linspace(lo, hi, n)
        c[np.abs(c) < 1e-12 * max(1.0, abs(lo), abs(hi))] = 0.0
        out.append(c)
    return tuple(out)


def landmark_grid(
    directions: Directions, steps: int = 41, margin: float = 0.2
) -> tuple[np.ndarray, ...]:
    """A square grid around the landmarks of a plane or line (A, B, C) with A and B on grid points.

    Both axes share the spacing ``1/q`` (``q`` nodes per unit), run from below
    ``min(0, landmarks) - margin`` to about ``max(1, landmarks) + margin``, and contain 0 and
    1 exactly, so A = (0, 0) and B = (1, 0) are grid points; C lies inside the grid.
    """
    if not directions.landmarks:
        raise UserError("these directions have no landmarks (A, B, C): give steps and span instead")
    pts = np.array([c for _, c in directions.landmarks], dtype=float)
    lo, hi = min(0.0, float(pts.min())) - margin, max(1.0, float(pts.max())) + margin
    q = max(1, int((steps - 1) / (hi - lo)))
    r = int(math.ceil(-lo * q - 1e-9))
    axis = (np.arange(steps) - r) / q
    return tuple(axis.copy() for _ in range(directions.count))


@dataclass(frozen=True, eq=False)
class Surface:
    """A filled grid. ``loss`` and ``accuracy`` have shape ``tuple(len(c) for c in coordinates)``."""

    coordinates: tuple[np.ndarray, ...]
    loss: np.ndarray
    accuracy: np.ndarray
    axes: tuple[str, ...] = ("x", "y")
    origin_loss: float = float("nan")
    origin_accuracy: float = float("nan")
    bn: str = "eval"
    directions: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    evaluated: int = 0
    seconds: float = 0.0
    key: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.coordinates)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coordinates)

    def value_at(self, *point: float, metric: str = "loss") -> float:
        """The metric at grid coordinates ``point`` (multilinear interpolation between grid points)."""
        from scipy.interpolate import RegularGridInterpolator

        values = self.loss if metric == "loss" else self.accuracy
        coords = [np.asarray(c) for c in self.coordinates]
        if len(point) != self.ndim:
            raise UserError(
                f"a {self.ndim}-D surface needs {self.ndim} coordinates, got {len(point)}"
            )
        if all(len(c) > 1 for c in coords):
            return float(
                RegularGridInterpolator(coords, values, bounds_error=True)(
                    np.asarray(point, dtype=float)
                )[0]
            )
        idx = tuple(int(np.argmin(np.abs(c - p))) for c, p in zip(coords, point))
        return float(values[idx])

    @property
    def center_loss(self) -> float:
        """Loss at the origin of the grid (the unperturbed model, or A of a plane)."""
        return self.value_at(*([0.0] * self.ndim))

    @property
    def min_loss(self) -> float:
        return float(np.nanmin(self.loss))

    @property
    def default_radius(self) -> float:
        """Half the smallest half-span of the grid (the default radius of :meth:`sharpness`)."""
        return 0.5 * min(min(abs(c[0]), abs(c[-1])) for c in self.coordinates)

    def sharpness(self, radius: float | None = None, *, angles: int = 64) -> float:
        """Mean loss rise at ``radius``: ``mean_phi L(r u_phi) - L(0)`` over ``angles`` evenly spaced unit
        vectors ``u_phi`` (2-D) or ``u = +-1`` (1-D), by interpolation; default radius: :attr:`default_radius`."""
        if radius is None:
            radius = self.default_radius
        if self.ndim == 1:
            pts = [(-radius,), (radius,)]
        else:
            phi = np.linspace(0, 2 * np.pi, angles, endpoint=False)
            pts = [(radius * np.cos(a), radius * np.sin(a)) + (0.0,) * (self.ndim - 2) for a in phi]
        try:
            return float(np.mean([self.value_at(*p) for p in pts]) - self.center_loss)
        except ValueError as exc:
            raise UserError(
                f"radius {radius} reaches outside the grid: choose a smaller radius"
            ) from exc

    def to_frame(self) -> pd.DataFrame:
        """One row per grid point: the coordinates (one column per axis), loss, accuracy."""
        mesh = np.meshgrid(*self.coordinates, indexing="ij")
        cols = {a: m.ravel() for a, m in zip(self.axes, mesh)}
        cols.update(loss=self.loss.ravel(), accuracy=self.accuracy.ravel())
        return pd.DataFrame(cols)

    @classmethod
    def from_record(cls, record) -> Surface:
        """A surface read back from a :class:`landscape.store.Record` written by :func:`surface`."""
        a = record.attrs
        axes = tuple(a.get("axes") or ("x", "y"))
        coords = tuple(np.asarray(record[f"{ax}coordinates"]) for ax in axes)
        return cls(
            coords,
            np.asarray(record["loss"]),
            np.asarray(record["accuracy"]),
            axes,
            float(a.get("origin_loss", math.nan)),
            float(a.get("origin_accuracy", math.nan)),
            str(a.get("bn", "eval")),
            dict(a.get("directions") or {}),
            dict(a.get("settings") or {}),
            0,
            0.0,
            record.key,
        )


def _chunks(missing: np.ndarray, size: int) -> list[np.ndarray]:
    return [missing[i : i + size] for i in range(0, len(missing), size)]


def surface(
    model: nn.Module,
    data: Data,
    directions: Directions,
    *,
    steps: int | Sequence[int] = 51,
    span: Span = (-1.0, 1.0),
    coordinates: Sequence[Sequence[float]] | None = None,
    bn: str = "eval",
    train_data: Data | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    store: ResultsStore | str | os.PathLike | None = None,
    key: str | None = None,
    attrs: dict[str, Any] | None = None,
    resume: bool = True,
    executor: Any = None,
    shortcut: bool = True,
    cache_bytes: int = 2 * 1024**3,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
) -> Surface:
    """Loss and accuracy of ``model`` moved along ``directions`` on a 1-D or 2-D grid.

    ``loss[i, j] = L(theta0 + x[i] d_x + y[j] d_y)`` with ``x, y`` from
    :func:`grid_coordinates` (``steps``, ``span``) or given as ``coordinates``. ``bn="eval"``
    keeps the model's BatchNorm statistics at every point; ``bn="reset"`` re-estimates them
    on ``train_data`` (default: ``data``) at every point (:func:`landscape.evaluation.reset_batchnorm`).

    The data go to the device once; each point is one pass over it on a single working copy
    of the model; the first layer's products with the data are computed once and combined
    per point (:mod:`landscape.first_layer`, ``shortcut=False`` turns this off).

    ``store`` / ``key``: write the grid into the results record at ``key`` after every chunk of
    ``chunk_size`` points (default: one row of a 2-D grid, a tenth of a 1-D one), resuming from
    the points already there when the record was made with the same model, directions, grid
    and data (``resume=False`` starts afresh). ``executor``: where chunks run
    (:class:`landscape.grid.LocalExecutor` by default, or a
    :class:`landscape.distributed.DaskExecutor`). ``callback(done, total)`` is called after
    every chunk.
    """
    t_start = time.perf_counter()
    view = ParamView(model)
    directions.check(view)
    if directions.count > 2:
        raise UserError(f"surfaces are 1-D or 2-D, got {directions.count} directions")
    coords = (
        tuple(np.asarray(c, dtype=np.float64) for c in coordinates)
        if coordinates is not None
        else grid_coordinates(directions.count, steps, span)
    )
    if len(coords) != directions.count:
        raise UserError(
            f"{directions.count} directions need {directions.count} coordinate arrays, got {len(coords)}"
        )
    batches = as_batches(
        data, device=device if device is not None else view.device, batch_size=batch_size
    )
    train = (
        as_batches(train_data, device=batches.device, batch_size=batch_size)
        if (bn == "reset" and train_data is not None)
        else None
    )
    spec = GridSpec(
        model,
        directions.vectors,
        coords,
        batches,
        train,
        bn,
        shortcut,
        str(batches.device),
        int(cache_bytes),
    )
    spec = replace(spec, token=spec_token(view.get(), spec))
    shape, total = spec.shape, spec.num_points
    axes = directions.names[: len(coords)]

    loss = np.full(shape, np.nan)
    acc = np.full(shape, np.nan)
    done = np.zeros(shape, dtype=bool)
    st = ResultsStore(store) if store is not None and not isinstance(store, ResultsStore) else store
    key = key or "surface/model/surface"
    if st is not None and resume:
        existing = _existing(st, key)
        if existing is not None:
            if existing.attrs.get("token") != spec.token:
                raise UserError(
                    f"{st.path}: the record {key} was computed for another model, directions, grid or data: "
                    "pass another key or output file, or resume=False (--force) to recompute it"
                )
            loss, acc = (
                np.array(existing["loss"], dtype=float),
                np.array(existing["accuracy"], dtype=float),
            )
            done = np.array(existing["done"], dtype=bool)

    origin = evaluate(
        model if view.device == batches.device else copy.deepcopy(model).to(batches.device), batches
    )
    base_attrs = dict(attrs or {})
    base_attrs.update(
        axes=list(axes),
        definition=DEFINITION,
        token=spec.token,
        bn=bn,
        origin_loss=origin.loss,
        origin_accuracy=origin.accuracy,
        num_samples=batches.num_samples,
        directions=directions.settings(),
        settings={
            "steps": list(shape),
            "span": [[float(c[0]), float(c[-1])] for c in coords],
            "bn": bn,
            "shortcut": shortcut,
            "chunk_size": chunk_size,
            "batch_size": batch_size,
        },
    )
    if not attrs:
        base_attrs.update(provenance())

    def write(complete: bool) -> None:
        if st is None:
            return
        ds = {
            "loss": Dataset(
                loss,
                tuple(axes),
                "nats" if not math.isnan(origin.accuracy) else "squared error",
                "mean loss over the samples; NaN where not computed yet (see done)",
            ),
            "accuracy": Dataset(
                acc,
                tuple(axes),
                "fraction",
                "top-1 accuracy; NaN where not computed yet or for regression",
            ),
            "done": Dataset(
                done.astype(np.uint8), tuple(axes), "", "1 where the point has been computed"
            ),
        }
        for ax, c in zip(axes, coords):
            ds[f"{ax}coordinates"] = Dataset(
                c, (ax,), "direction units", f"grid coordinates along direction {ax}"
            )
        if complete:
            ds["directions"] = Dataset(
                directions.vectors.numpy(),
                ("direction", "coordinate"),
                "",
                "direction vectors over the trainable coordinates of ParamView(model), rows in axis order",
                {"parameters": list(directions.params)},
            )
        st.write(
            key,
            ds,
            {**base_attrs, "points_done": int(done.sum()), "points_total": total},
            complete=complete,
        )

    missing = np.flatnonzero(~done.ravel())
    evaluated, note = 0, "no points to compute"
    if len(missing):
        size = (
            int(chunk_size)
            if chunk_size
            else (shape[1] if len(shape) == 2 else max(1, math.ceil(total / 10)))
        )
        own = executor is None
        ex = executor or LocalExecutor()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=total - len(missing),
            unit="pt",
            desc=key.rsplit("/", 2)[-2] if "/" in key else key,
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )
        try:
            for idx, lo, a in ex.map(spec, _chunks(missing, max(1, size))):
                np.put(loss, idx, lo)
                np.put(acc, idx, a)
                np.put(done, idx, True)
                evaluated += len(idx)
                if not done.all():
                    write(False)
                bar.update(len(idx))
                if callback is not None:
                    callback(int(done.sum()), total)
        finally:
            bar.close()
            if own:
                ex.close()
        note = getattr(ex, "shortcut_note", "")
    base_attrs["settings"]["shortcut_note"] = note
    if st is not None and (evaluated or not st.has(key)):
        write(True)
    return Surface(
        coords,
        loss,
        acc,
        tuple(axes),
        origin.loss,
        origin.accuracy,
        bn,
        directions.settings(),
        base_attrs["settings"],
        evaluated,
        time.perf_counter() - t_start,
        key if st is not None else None,
    )


def _existing(st: ResultsStore, key: str):
    if not st.path.exists():
        return None
    try:
        return st.read(key)
    except KeyError:
        return None
