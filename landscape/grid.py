"""Evaluating grid points ``theta0 + sum_k c_k d_k``: the part of a surface that executors run.

A :class:`GridSpec` holds everything one grid needs (model, directions, coordinates, data,
BatchNorm mode); :class:`PointEvaluator` turns it into losses and accuracies of any subset
of points. Each point is evaluated on its own (write the point into one working copy of the
model, one pass of :func:`landscape.evaluation.evaluate`), so a point's value does not depend
on which chunk, process or machine computed it. Executors (:class:`LocalExecutor` here,
:class:`landscape.distributed.DaskExecutor`) only decide where :func:`evaluate_chunk` runs.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from .data import Batches, as_batches, resolve_device
from .errors import UserError
from .evaluation import BN_MODES, evaluate, reset_batchnorm
from .first_layer import FirstLayerShortcut
from .params import ParamView


@dataclass(frozen=True, eq=False)
class GridSpec:
    """One grid: point ``p`` (flat C-order index into ``shape``) is ``theta0 + sum_k coordinates[k][i_k] * vectors[k]``.

    ``bn="reset"`` re-estimates BatchNorm statistics on ``train`` at every point before
    evaluating on ``data``; ``shortcut`` enables the first-layer shortcut where it applies.
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


def batches_fingerprint(b: Batches) -> str:
    h = hashlib.sha256()
    for x, y in b.batches:
        for t in (x, y):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def spec_token(theta0: Tensor, spec: GridSpec) -> str:
    """SHA-256 over everything that decides the grid's values (model point, directions, grid, data, BN mode)."""
    h = hashlib.sha256()
    for t in (theta0, spec.vectors):
        h.update(t.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
    for c in spec.coordinates:
        h.update(np.asarray(c, dtype=np.float64).tobytes())
    h.update(spec.bn.encode())
    h.update(batches_fingerprint(spec.data).encode())
    if spec.bn == "reset" and spec.train is not None:
        h.update(batches_fingerprint(spec.train).encode())
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
        self._buf = torch.empty_like(self.theta0)
        self.lock = threading.Lock()
        self.shortcut: FirstLayerShortcut | None = None
        if spec.shortcut:
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
        return self.shortcut.reason if self.shortcut is not None else "disabled"

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
        ev = evaluate(self.model, self.data, check_finite=False)
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


# a worker process keeps the evaluator of the grid it is working on, so the model, the data
# and the first-layer products are set up once per process, not once per chunk
_WORKER_CACHE: dict[str, PointEvaluator] = {}
_WORKER_LOCK = threading.Lock()


def evaluate_chunk(
    spec: GridSpec, indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indices, loss, accuracy)`` of one chunk; the task every executor runs."""
    with _WORKER_LOCK:
        ev = _WORKER_CACHE.get(spec.token)
        if ev is None:
            for old in _WORKER_CACHE.values():
                old.close()
            _WORKER_CACHE.clear()
            ev = _WORKER_CACHE[spec.token] = PointEvaluator(spec)
    idx = np.asarray(indices, dtype=np.int64)
    loss, acc = ev.evaluate(idx)
    return idx, loss, acc


class LocalExecutor:
    """Runs chunks one after another in this process (the default)."""

    name = "local"

    def map(
        self, spec: GridSpec, chunks: Sequence[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        ev = PointEvaluator(spec)
        self.shortcut_note = ev.shortcut_note if ev.shortcut_used else f"off: {ev.shortcut_note}"
        try:
            for c in chunks:
                loss, acc = ev.evaluate(c)
                yield np.asarray(c), loss, acc
        finally:
            ev.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self) -> None:
        pass
