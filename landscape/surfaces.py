"""1-D and 2-D loss surfaces: ``L(theta0 + x d_x + y d_y)`` on a grid, resumable and executor-agnostic.

Axis order is fixed and recorded: ``loss[i]`` (1-D) is at ``theta0 + x[i] d_x``, and
``loss[i, j]`` (2-D) at ``theta0 + x[i] d_x + y[j] d_y`` (first index along the first
direction). Loss is the exact mean over the units of the data (samples, or tokens) of
:func:`landscape.evaluation.evaluate` under the ``objective`` (default ``auto``:
cross-entropy for labels, squared error for float targets); accuracy the objective's share
of hits (top-1 for classification).

The grid is filled in chunks of points, each point evaluated on its own, so a grid is the
same whichever chunk, process or executor computed a point. :func:`surface` returns the
grid and writes nothing: ``on_chunk`` sees the grid after every chunk (a study persists it
there), and ``initial`` (a partial :class:`Surface` with its ``done`` mask) makes a rerun
compute only the missing points and end with the values of an uninterrupted run. The
``token`` of a result (:func:`surface_token`) says which model, directions, grid and data
it belongs to; resuming is safe when it matches.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Batches, Data, as_batches
from .directions import Directions
from .errors import UserError
from .evaluation import evaluate
from .grid import ChunkResult, GridSpec, GridTask, Span, grid_coordinates, landmark_grid, spec_token
from .objectives import resolve_objective
from .params import ParamView

__all__ = [
    "DEFINITION",
    "Executor",
    "Span",
    "Surface",
    "grid_coordinates",  # the grid helpers live in landscape.grid; here for existing imports
    "landmark_grid",
    "surface",
    "surface_token",
]

DEFINITION = "loss[i, j] = mean over samples (tokens for a token-level loss) of the loss at theta0 + x[i] * d_x + y[j] * d_y (1-D: loss[i] at theta0 + x[i] * d_x)"


class Executor(Protocol):
    """Where chunks run: ``map(fn, chunks)`` yields ``fn(chunk)`` for every chunk, in any order."""

    def map(
        self, fn: Callable[[np.ndarray], ChunkResult], chunks: Sequence[np.ndarray]
    ) -> Iterable[ChunkResult]: ...


@dataclass(frozen=True, eq=False)
class Surface:
    """A grid of losses. ``loss``, ``accuracy`` and ``done`` have shape ``tuple(len(c) for c in coordinates)``.

    ``done[i, j]`` is True where the point has been computed (``loss`` is NaN where not, and
    where the loss was not finite); omitted, every point counts as done. ``origin_loss`` and
    ``origin_accuracy`` are measured at ``theta0`` itself (the grid origin: the unperturbed
    model, or A of a plane). ``token`` identifies the model, directions, grid and data
    (:func:`surface_token`); ``evaluated`` counts the points this call computed.
    """

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
    done: np.ndarray | None = None
    token: str = ""
    num_samples: int = 0

    def __post_init__(self):
        if self.done is None:
            object.__setattr__(self, "done", np.ones(np.shape(self.loss), dtype=bool))

    @property
    def ndim(self) -> int:
        return len(self.coordinates)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coordinates)

    @property
    def complete(self) -> bool:
        """True when every point has been computed."""
        return bool(np.all(self.done))

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
    def min_loss(self) -> float:
        return float(np.nanmin(self.loss))

    @property
    def default_radius(self) -> float:
        """Half the smallest half-span of the grid (the default radius of :meth:`sharpness`)."""
        return 0.5 * min(min(abs(c[0]), abs(c[-1])) for c in self.coordinates)

    def sharpness(self, radius: float | None = None, *, angles: int = 64) -> float:
        """Mean loss rise at ``radius``: ``mean_phi L(r u_phi) - L(0)`` over ``angles`` evenly spaced unit
        vectors ``u_phi`` (2-D) or ``u = +-1`` (1-D), by interpolation; default radius: :attr:`default_radius`.

        ``L(0)`` is interpolated like the ring (on a grid through the origin it is the grid
        value there, which equals :attr:`origin_loss`)."""
        if radius is None:
            radius = self.default_radius
        if self.ndim == 1:
            pts = [(-radius,), (radius,)]
        else:
            phi = np.linspace(0, 2 * np.pi, angles, endpoint=False)
            pts = [(radius * np.cos(a), radius * np.sin(a)) + (0.0,) * (self.ndim - 2) for a in phi]
        try:
            ring = np.mean([self.value_at(*p) for p in pts])
            return float(ring - self.value_at(*([0.0] * self.ndim)))
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


def _chunks(missing: np.ndarray, size: int) -> list[np.ndarray]:
    return [missing[i : i + size] for i in range(0, len(missing), size)]


@dataclass(frozen=True, eq=False)
class _Grid:
    spec: GridSpec
    axes: tuple[str, ...]
    batches: Batches
    view: ParamView


def _grid(
    model: nn.Module,
    data: Data,
    directions: Directions,
    steps: int | Sequence[int],
    span: Span,
    coordinates: Sequence[Sequence[float]] | None,
    bn: str,
    train_data: Data | None,
    device: str | torch.device | None,
    batch_size: int | None,
    shortcut: bool = True,
    cache_bytes: int = 2 * 1024**3,
    objective: Any = None,
) -> _Grid:
    """The arguments of :func:`surface` checked and resolved into one :class:`GridSpec` with its token."""
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
        objective=objective,
    )
    spec = replace(spec, token=spec_token(view.get(), spec))
    return _Grid(spec, tuple(directions.names[: len(coords)]), batches, view)


def surface_token(
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
    objective: Any = None,
) -> str:
    """The ``token`` that :func:`surface` with these arguments gives its result, without computing it.

    SHA-256 over the model's trainable coordinates ``theta0``, the direction vectors, the grid
    coordinates, the BatchNorm mode, the data (and ``train_data`` with ``bn="reset"``) and the
    name of the loss when it is not the default ``auto``:
    two grids with the same token have the same values at every point (up to rounding: the
    device and ``shortcut`` are not part of it), so a stored partial grid with this token is
    a safe ``initial``. The data's hash is cached while its tensors are unchanged.
    """
    return _grid(
        model,
        data,
        directions,
        steps,
        span,
        coordinates,
        bn,
        train_data,
        device,
        batch_size,
        objective=objective,
    ).spec.token


def _start(initial: Surface | None, spec: GridSpec) -> tuple[np.ndarray, ...]:
    shape = spec.shape
    if initial is None:
        return np.full(shape, np.nan), np.full(shape, np.nan), np.zeros(shape, dtype=bool)
    if initial.shape != shape or np.shape(initial.done) != shape:
        raise UserError(
            f"initial: a grid of shape {initial.shape} cannot resume a grid of shape {shape}"
        )
    if initial.token and initial.token != spec.token:
        raise UserError(
            "initial was computed for another model, directions, grid or data: "
            "start without it to recompute the grid"
        )
    if not initial.token and not all(
        np.array_equal(a, b) for a, b in zip(initial.coordinates, spec.coordinates)
    ):
        raise UserError("initial has other grid coordinates than this grid")
    return (
        np.array(initial.loss, dtype=float),
        np.array(initial.accuracy, dtype=float),
        np.array(initial.done, dtype=bool),
    )


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
    initial: Surface | None = None,
    on_chunk: Callable[[Surface, np.ndarray], None] | None = None,
    executor: Executor | None = None,
    shortcut: bool = True,
    cache_bytes: int = 2 * 1024**3,
    progress: bool = True,
    desc: str = "surface",
    objective: Any = None,
) -> Surface:
    """Loss and accuracy of ``model`` moved along ``directions`` on a 1-D or 2-D grid.

    ``loss[i, j] = L(theta0 + x[i] d_x + y[j] d_y)`` with ``x, y`` from
    :func:`grid_coordinates` (``steps``, ``span``) or given as ``coordinates``. ``bn="eval"``
    keeps the model's BatchNorm statistics at every point; ``bn="reset"`` re-estimates them
    on ``train_data`` (default: ``data``) at every point (:func:`landscape.evaluation.reset_batchnorm`).

    The data go to the device once; each point is one pass over it on a single working copy
    of the model; the first layer's products with the data are computed once and combined
    per point (:mod:`landscape.first_layer`, ``shortcut=False`` turns this off).

    Points are computed in chunks of ``chunk_size`` (default: one row of a 2-D grid, a tenth
    of a 1-D one). ``on_chunk(partial, indices)`` is called after every chunk with the grid
    so far (a :class:`Surface` whose ``done`` mask marks the points computed) and the flat
    indices of the chunk's points. ``initial``: a partial grid of the same model,
    directions, grid and data (its ``token``, when set, must match): only its missing points
    are computed, and its ``origin_loss`` is reused. ``executor``: anything whose
    ``map(fn, chunks)`` yields ``fn(chunk)`` per chunk (default: one after another here;
    :class:`landscape.distributed.DaskExecutor` for a cluster). ``desc`` labels the progress bar.
    ``objective``: the loss (:func:`landscape.objectives.resolve_objective`; default ``auto``);
    for a remote executor give a name or ``module:callable`` (resolved on the worker) or an
    objective that pickles.
    """
    obj = resolve_objective(objective)
    t_start = time.perf_counter()
    g = _grid(
        model,
        data,
        directions,
        steps,
        span,
        coordinates,
        bn,
        train_data,
        device,
        batch_size,
        shortcut,
        cache_bytes,
        objective if isinstance(objective, str) else obj,
    )
    spec, batches = g.spec, g.batches
    shape, total = spec.shape, spec.num_points
    loss, acc, done = _start(initial, spec)

    if (
        initial is not None and initial.token == spec.token and math.isfinite(initial.origin_loss)
    ):  # known already: no extra pass, no model copy
        origin = (initial.origin_loss, initial.origin_accuracy)
    else:
        ev = evaluate(
            model if g.view.device == batches.device else copy.deepcopy(model).to(batches.device),
            batches,
            objective=obj,
        )
        origin = (ev.loss, ev.accuracy)
    settings: dict[str, Any] = {
        "steps": list(shape),
        "span": [[float(c[0]), float(c[-1])] for c in spec.coordinates],
        "bn": bn,
        "shortcut": shortcut,
        "chunk_size": chunk_size,
        "batch_size": batch_size,
        **obj.settings(),
    }
    about = directions.settings()  # hashes the vectors: once, not per chunk
    evaluated, notes = 0, []

    def result(copy_arrays: bool) -> Surface:
        if notes:
            settings["shortcut_note"] = "; ".join(notes)
        arrays = (loss.copy(), acc.copy(), done.copy()) if copy_arrays else (loss, acc, done)
        return Surface(
            spec.coordinates,
            arrays[0],
            arrays[1],
            g.axes,
            origin_loss=origin[0],
            origin_accuracy=origin[1],
            bn=bn,
            directions=dict(about),
            settings=dict(settings),
            evaluated=evaluated,
            seconds=time.perf_counter() - t_start,
            done=arrays[2],
            token=spec.token,
            num_samples=batches.num_samples,
        )

    missing = np.flatnonzero(~done.ravel())
    if not len(missing):
        notes.append("no points to compute")
    else:
        size = (
            int(chunk_size)
            if chunk_size
            else (shape[1] if len(shape) == 2 else max(1, math.ceil(total / 10)))
        )
        task = GridTask(spec)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=total - len(missing),
            unit="pt",
            desc=desc,
            disable=not progress,
            dynamic_ncols=True,
            leave=False,
        )
        chunks = _chunks(missing, max(1, size))
        results = (executor.map if executor is not None else map)(task, chunks)
        try:
            for r in results:
                idx = np.asarray(r.indices, dtype=np.int64)
                np.put(loss, idx, r.loss)
                np.put(acc, idx, r.accuracy)
                np.put(done, idx, True)
                evaluated += len(idx)
                if r.shortcut_note not in notes:
                    notes.append(r.shortcut_note)
                bar.update(len(idx))
                if on_chunk is not None:
                    on_chunk(result(True), idx)
        finally:
            close = getattr(results, "close", None)
            if close is not None:  # stop a generator's outstanding work (Dask futures) early
                close()
            bar.close()
            task.close()
    return result(False)
