"""Evaluation data in the one form every computation uses.

Accepted inputs (``Data``): an ``(X, y)`` pair of tensors, a ``torch.utils.data.DataLoader``,
any re-iterable of ``(X, y)`` batches, or an existing :class:`Batches`. :func:`as_batches`
moves the data to the device once; grid points, interpolation steps and Hessian-vector
products then reuse the same device tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

from .errors import UserError

Data = Union[tuple, "Batches", Iterable]

#: Data sets larger than this (bytes) are kept on the host and moved batch by batch.
DEVICE_RESIDENT_LIMIT = 2 * 1024**3
DEFAULT_BATCH_SIZE = 4096


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} asked for, but CUDA is not available here: use --device cpu"
        )
    return dev


@dataclass
class Batches:
    """A fixed sequence of ``(inputs, targets)`` batches, iterated in the same order every time.

    ``resident`` batches already sit on ``device``; otherwise each batch is moved when
    iterated (data sets over :data:`DEVICE_RESIDENT_LIMIT`).
    """

    batches: list[tuple[Tensor, Tensor]]
    device: torch.device
    resident: bool = True
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(int(y.shape[0]) for _, y in self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.batches:
            if self.resident:
                yield x, y
            else:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.batches)

    def label_range(self) -> tuple[int, int] | None:
        """``(min, max)`` of integer labels over all batches (cached: one host sync per data set), None for float targets."""
        if "_label_range" not in self.__dict__:
            ys = [y for _, y in self.batches]
            if ys[0].is_floating_point():
                self.__dict__["_label_range"] = None
            else:
                self.__dict__["_label_range"] = (
                    min(int(y.min()) for y in ys),
                    max(int(y.max()) for y in ys),
                )
        return self.__dict__["_label_range"]

    def cat(self) -> tuple[Tensor, Tensor]:
        """All samples as one ``(X, y)`` pair on the device."""
        xs, ys = zip(*self)
        return torch.cat(xs), torch.cat(ys)

    def sample(self, n: int) -> Tensor:
        """The first ``n`` inputs (for function checks)."""
        out, have = [], 0
        for x, _ in self:
            out.append(x[: n - have])
            have += out[-1].shape[0]
            if have >= n:
                break
        return torch.cat(out)


def _check_pair(x: Any, y: Any, where: str) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise UserError(
            f"{where}: expected a pair of tensors (inputs, targets), got {type(x).__name__}, {type(y).__name__}"
        )
    if x.shape[0] != y.shape[0]:
        raise UserError(f"{where}: inputs have {x.shape[0]} samples but targets {y.shape[0]}")
    if x.shape[0] == 0:
        raise UserError(f"{where}: the data holds no samples")
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise UserError(f"{where}: the inputs contain NaN or Inf")
    return x, y


def as_batches(
    data: Data,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> Batches:
    """Normalise ``data`` to :class:`Batches` on ``device``.

    An ``(X, y)`` pair is split into contiguous slices of ``batch_size`` (default
    :data:`DEFAULT_BATCH_SIZE`); loaders and iterables keep their own batching and are
    read once. Floating inputs are cast to ``dtype`` when given.
    """
    dev = resolve_device(device) if device is not None else None
    if isinstance(data, Batches):
        if dev is None or data.device == dev:
            return data
        return Batches(
            [(x.to(dev), y.to(dev)) for x, y in data.batches], dev, True, dict(data.description)
        )
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = _check_pair(data[0], data[1], "data")
        bs = int(batch_size or DEFAULT_BATCH_SIZE)
        if bs <= 0:
            raise UserError(f"batch size must be positive, got {bs}")
        pairs = [(x[i : i + bs], y[i : i + bs]) for i in range(0, x.shape[0], bs)]
    else:
        try:
            it = iter(data)
        except TypeError as exc:
            raise UserError(
                f"data must be an (X, y) pair of tensors, a DataLoader or an iterable of batches, got {type(data).__name__}"
            ) from exc
        pairs = []
        for i, batch in enumerate(it):
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise UserError(f"batch {i} is not an (inputs, targets) pair")
            pairs.append(_check_pair(batch[0], batch[1], f"batch {i}"))
        if not pairs:
            raise UserError("the data holds no batches")
    if dtype is not None:
        pairs = [(x.to(dtype) if x.is_floating_point() else x, y) for x, y in pairs]
    dev = dev or pairs[0][0].device
    nbytes = sum(x.numel() * x.element_size() + y.numel() * y.element_size() for x, y in pairs)
    resident = nbytes <= DEVICE_RESIDENT_LIMIT or dev.type == "cpu"
    if resident:
        pairs = [(x.to(dev), y.to(dev)) for x, y in pairs]
    return Batches(pairs, dev, resident)


def subset(
    x: Tensor, y: Tensor, n: int | None, seed: int = 0
) -> tuple[Tensor, Tensor, Sequence[int] | None]:
    """A seeded random subset of ``n`` samples (all samples when ``n`` is None or too large)."""
    if n is None or n >= x.shape[0]:
        return x, y, None
    if n <= 0:
        raise UserError(f"--samples must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=g)[:n].sort().values
    return x[idx], y[idx], idx.tolist()
