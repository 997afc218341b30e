"""Grids of parameter points ``theta0 + sum_k c_k d_k``: their coordinates, and evaluating them.

:func:`grid_coordinates` and :func:`landmark_grid` give the per-axis coordinates.
A :class:`GridSpec` holds everything one grid needs (model, directions, coordinates, data,
BatchNorm mode); :class:`PointEvaluator` turns it into losses and accuracies of any subset
of points. Each point is evaluated on its own (write the point into one working copy of the
model, one pass of :func:`landscape.evaluation.evaluate`), so a point's value does not depend
on which chunk, process or machine computed it.

:class:`GridTask` is the one task every executor runs: ``task(indices)`` gives a
:class:`ChunkResult`. Anything with ``.map(fn, chunks)`` that yields ``fn(chunk)`` for every
chunk (in order or as finished) can run it: the builtin ``map``, a ``concurrent.futures``
pool, or an executor of :mod:`landscape.distributed`. A task pickles
as a CPU copy of its grid and builds its working model where it is unpickled, once.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .data import Batches, as_batches, resolve_device
from .directions import Directions
from .errors import UserError
from .evaluation import BN_MODES, evaluate, reset_batchnorm
from .first_layer import FirstLayerShortcut
from .objectives import objective_name, resolve_objective
from .params import ParamView

Span = float | tuple[float, float] | Sequence[tuple[float, float]]


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


def trajectory_grid(
    directions: Directions, steps: int = 41, margin: float = 0.1
) -> tuple[np.ndarray, ...]:
    """Per-axis coordinates covering the projected trajectory of PCA directions, with 0 on the grid.

    Axis ``k`` spans the trajectory's range along direction ``k`` and the origin (the final
    model), widened by ``margin`` of that range on both sides, in ``steps`` points with
    spacing ``h = (hi - lo) / (steps - 2)``, shifted so that 0 is a grid point (it then still
    covers ``[lo, hi]``).
    """
    if directions.trajectory is None:
        raise UserError("these directions have no trajectory: give steps and span instead")
    if steps < 3:
        raise UserError(f"a grid around a trajectory needs at least 3 steps, got {steps}")
    pts = np.asarray(directions.trajectory, dtype=float)
    out = []
    for k in range(directions.count):
        lo, hi = min(0.0, float(pts[:, k].min())), max(0.0, float(pts[:, k].max()))
        width = (hi - lo) or 1.0
        lo, hi = lo - margin * width, hi + margin * width
        h = (hi - lo) / (steps - 2)
        r = int(math.ceil(-lo / h - 1e-9))
        out.append((np.arange(steps) - r) * h)
    return tuple(out)


@dataclass(frozen=True, eq=False)
class GridSpec:
    """One grid: point ``p`` (flat C-order index into ``shape``) is ``theta0 + sum_k coordinates[k][i_k] * vectors[k]``.

    ``bn="reset"`` re-estimates BatchNorm statistics on ``train`` at every point before
    evaluating on ``data``; ``shortcut`` enables the first-layer shortcut where it applies.
    ``objective``: the loss (a name, ``module:callable`` or an Objective; default ``auto``),
    resolved where the points are evaluated.
    """

    model: nn.Module
    vectors: Tensor
    coordinates: tuple[np.ndarray, ...]
    data: Batches
    train: Batches | None = None
    bn: str = "eval"
    shortcut: bool = True
    device: str = "cpu"
    cache_bytes: int = 2 * 1024**3
    token: str = ""
    objective: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coordinates)

    @property
    def num_points(self) -> int:
        return int(np.prod(self.shape))

    def __post_init__(self):
        if self.bn not in BN_MODES:
            raise UserError(f"unknown BatchNorm mode {self.bn!r}: use eval or reset")

    def portable(self) -> GridSpec:
        """A copy with every tensor on the CPU, for shipping to other processes once."""
        model = copy.deepcopy(self.model).cpu()
        train = as_batches(self.train, device="cpu") if self.train is not None else None
        return replace(
            self,
            model=model,
            vectors=self.vectors.cpu(),
            data=as_batches(self.data, device="cpu"),
            train=train,
        )


# fingerprints of data sets already hashed, keyed by the Batches object; an entry is reused
# only while that object lives and its tensors are the same, unmodified ones (Tensor._version
# counts in-place writes), so a study hashes its data once, not once per surface
_FINGERPRINTS: dict[int, tuple[weakref.ref, tuple, str]] = {}


def _tensor_state(b: Batches) -> tuple | None:
    try:
        return tuple(
            (t.data_ptr(), t._version, tuple(t.shape)) for p in b.batches for _, t in p.tensors()
        )
    except RuntimeError:  # inference-mode tensors keep no version counter: do not cache
        return None


def batches_fingerprint(b: Batches) -> str:
    """SHA-256 over the shapes, dtypes and bytes of every batch (cached per unchanged Batches)."""
    state = _tensor_state(b)
    hit = _FINGERPRINTS.get(id(b))
    if state is not None and hit is not None and hit[0]() is b and hit[1] == state:
        return hit[2]
    h = hashlib.sha256()
    for batch in b.batches:
        for name, t in batch.tensors():
            # the name only where it is new (dict inputs, a mask): (x, y) data keep their hash
            if name not in ("inputs", "targets"):
                h.update(name.encode())
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if state is not None:
        key = id(b)
        ref = weakref.ref(b, lambda _, k=key: _FINGERPRINTS.pop(k, None))
        _FINGERPRINTS[key] = (ref, state, digest)
    return digest


def spec_token(theta0: Tensor, spec: GridSpec) -> str:
    """SHA-256 over everything that decides the grid's values (model point, directions, grid,
    data, BN mode, and the loss when it is not the default ``auto``)."""
    h = hashlib.sha256()
    for t in (theta0, spec.vectors):
        h.update(t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    for c in spec.coordinates:
        h.update(np.asarray(c, dtype=np.float64).tobytes())
    h.update(spec.bn.encode())
    h.update(batches_fingerprint(spec.data).encode())
    if spec.bn == "reset" and spec.train is not None:
        h.update(batches_fingerprint(spec.train).encode())
    loss = objective_name(spec.objective)
    if loss != "auto":  # grids of the default loss keep the tokens they always had
        h.update(f"loss:{loss}".encode())
    return h.hexdigest()


class PointEvaluator:
    """Losses and accuracies of grid points, on one working copy of the model."""

    def __init__(self, spec: GridSpec):
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.model = copy.deepcopy(spec.model).to(self.device)
        self.view = ParamView(self.model)
        self.theta0 = self.view.get().clone()
        self.vectors = spec.vectors.to(self.device, self.theta0.dtype)
        self.data = as_batches(spec.data, device=self.device)
        self.train = (
            as_batches(spec.train, device=self.device) if spec.train is not None else self.data
        )
        self.coords = [np.asarray(c, dtype=np.float64) for c in spec.coordinates]
        self.objective = resolve_objective(spec.objective)
        self._buf = torch.empty_like(self.theta0)
        self.lock = threading.Lock()
        self.shortcut: FirstLayerShortcut | None = None
        self.shortcut_off = "disabled"
        if spec.shortcut and not isinstance(self.data.batches[0].inputs, Tensor):
            # the shortcut keys its products by the model's one input tensor
            self.shortcut_off = "the inputs are a dict of tensors, not one tensor"
        elif spec.shortcut:
            resident = [x for x, _ in self.data.batches] if self.data.resident else []
            if spec.bn == "reset" and self.train.resident:
                resident += [x for x, _ in self.train.batches]
            probe = self.data.batches[0][0][:8].to(self.device)
            limit = spec.cache_bytes
            if self.device.type == "cuda":  # leave most of the free memory to the forward passes
                limit = min(limit, int(0.3 * torch.cuda.mem_get_info(self.device)[0]))
            self.shortcut = FirstLayerShortcut(
                self.model, self.view, self.vectors, probe, resident, limit
            )
            self.shortcut.install()

    @property
    def shortcut_used(self) -> bool:
        return bool(self.shortcut and self.shortcut.enabled)

    @property
    def shortcut_note(self) -> str:
        """Which first layer the shortcut replaces, or ``off: <why not>``."""
        reason = self.shortcut.reason if self.shortcut is not None else self.shortcut_off
        return reason if self.shortcut_used else f"off: {reason}"

    def point_coefficients(self, index: int) -> list[float]:
        multi = np.unravel_index(int(index), self.spec.shape)
        return [float(c[i]) for c, i in zip(self.coords, multi)]

    @torch.no_grad()
    def evaluate_point(self, coeffs: Sequence[float]) -> tuple[float, float]:
        """``(loss, accuracy)`` at ``theta0 + sum_k coeffs[k] d_k`` (NaN where the loss is not finite)."""
        theta = self._buf.copy_(self.theta0)
        for d, a in zip(self.vectors, coeffs):
            if a != 0.0:
                theta.add_(d, alpha=a)
        self.view.set_(theta)
        if self.shortcut is not None:
            self.shortcut.set_point(coeffs)
        if self.spec.bn == "reset":
            reset_batchnorm(self.model, self.train)
        # a non-finite loss far from the centre is a value of the surface, not an input error
        ev = evaluate(self.model, self.data, check_finite=False, objective=self.objective)
        if not math.isfinite(ev.loss):
            return float("nan"), float("nan")
        return ev.loss, ev.accuracy

    def evaluate(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy of the points with flat indices ``indices``."""
        loss, acc = np.empty(len(indices)), np.empty(len(indices))
        with self.lock:  # one working model: points run one at a time
            for j, p in enumerate(indices):
                loss[j], acc[j] = self.evaluate_point(self.point_coefficients(p))
        return loss, acc

    def close(self) -> None:
        if self.shortcut is not None:
            self.shortcut.remove()


class ChunkResult(NamedTuple):
    """What one chunk gives back: its flat point indices, their losses and accuracies."""

    indices: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    shortcut_note: str


class GridTask:
    """``task(indices)``: the :class:`ChunkResult` of the grid points ``indices`` of ``spec``.

    The working model (:class:`PointEvaluator`) is built on the first call and kept for the
    next ones, so a process that runs many chunks sets up the model, the data and the
    first-layer products once. Pickling sends :meth:`GridSpec.portable` (tensors on the CPU);
    the receiving process moves them to ``spec.device``.
    """

    def __init__(self, spec: GridSpec):
        self.spec = spec
        self._ev: PointEvaluator | None = None
        self._release: Callable[[], Any] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec.portable()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["spec"])

    def evaluator(self) -> PointEvaluator:
        with self._lock:
            if self._ev is None:
                self._ev = PointEvaluator(self.spec)
                # the shortcut keeps its products (and a reference cycle) until removed: do it
                # as soon as this task is dropped, also where nobody calls close (a worker)
                self._release = weakref.finalize(self, self._ev.close)
            return self._ev

    def __call__(self, indices: Iterable[int]) -> ChunkResult:
        ev = self.evaluator()
        idx = np.asarray(indices, dtype=np.int64)
        loss, acc = ev.evaluate(idx)
        return ChunkResult(idx, loss, acc, ev.shortcut_note)

    def close(self) -> None:
        """Drop the working model of this process (the task stays usable)."""
        with self._lock:
            if self._release is not None:
                self._release()
            self._ev = self._release = None
