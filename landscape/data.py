"""Evaluation data in the one form every computation uses.

Accepted inputs (``Data``): an ``(X, y)`` pair of tensors, a dict of tensors (the whole data
set by columns), a tensor of inputs alone, a ``torch.utils.data.DataLoader`` or any
re-iterable of batches (``(x, y)`` tuples, dicts of tensors or tensors: see
:class:`landscape.batch.BatchSpec` for where their inputs, targets and mask are), or an
existing :class:`Batches`. :func:`as_batches` moves the data to the device once; grid points,
interpolation steps and Hessian-vector products then reuse the same device tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch
from torch import Tensor

from .batch import Batch, BatchSpec
from .batch import cat as cat_batches
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
    """A fixed sequence of :class:`~landscape.batch.Batch` es (``(inputs, targets)`` pairs with an
    optional mask), iterated in the same order every time.

    ``resident`` batches already sit on ``device``; otherwise each batch is moved when
    iterated (data sets over :data:`DEVICE_RESIDENT_LIMIT`).
    """

    batches: list[Batch]
    device: torch.device
    resident: bool = True
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(b.size for b in self.batches)

    def __iter__(self) -> Iterator[Batch]:
        for b in self.batches:
            yield b if self.resident else b.to(self.device, non_blocking=True)

    def __len__(self) -> int:
        return len(self.batches)

    def label_range(self) -> tuple[int, int] | None:
        """``(min, max)`` of integer labels over all batches (cached: one host sync per data set), None for float targets."""
        if "_label_range" not in self.__dict__:
            ys = [y for _, y in self.batches]
            if any(not isinstance(y, Tensor) or y.is_floating_point() for y in ys):
                self.__dict__["_label_range"] = None
            else:
                self.__dict__["_label_range"] = (
                    min(int(y.min()) for y in ys),
                    max(int(y.max()) for y in ys),
                )
        return self.__dict__["_label_range"]

    def cat(self) -> Batch:
        """All samples as one batch (an ``(X, y)`` pair) on the device."""
        return cat_batches(list(self))

    def sample(self, n: int) -> Tensor | dict[str, Tensor]:
        """The first ``n`` inputs (for function checks; a dict for dict inputs)."""
        out, have = [], 0
        for b in self:
            out.append(b.rows(0, n - have))
            have += out[-1].size
            if have >= n:
                break
        return cat_batches(out).inputs


def _whole(data: Any) -> Any:
    """The data set when ``data`` is one whole data set (an ``(X, y)`` pair of tensors, a dict of
    tensors or a tensor of inputs); None for an iterable of batches."""
    if isinstance(data, Tensor):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return tuple(data)
    if isinstance(data, Mapping) and data and all(isinstance(v, Tensor) for v in data.values()):
        return data
    return None


def as_batches(
    data: Data,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    spec: BatchSpec | None = None,
) -> Batches:
    """Normalise ``data`` to :class:`Batches` on ``device``.

    One whole data set (an ``(X, y)`` pair, a dict of tensors or a tensor of inputs) is split
    into contiguous slices of ``batch_size`` (default :data:`DEFAULT_BATCH_SIZE`); loaders and
    iterables keep their own batching and are read once. ``spec`` says where each batch keeps
    its inputs, targets and mask (default :class:`~landscape.batch.BatchSpec`: ``(x, y)``
    tuples, dicts by their usual keys). Floating inputs are cast to ``dtype`` when given.
    """
    dev = resolve_device(device) if device is not None else None
    if isinstance(data, Batches):
        if dev is None or data.device == dev:
            return data
        return Batches([b.to(dev) for b in data.batches], dev, True, dict(data.description))
    adapt = spec or BatchSpec()
    whole = _whole(data)
    if whole is not None:
        bs = int(batch_size or DEFAULT_BATCH_SIZE)
        if bs <= 0:
            raise UserError(f"batch size must be positive, got {bs}")
        full = adapt(whole, "data")  # checked once, whole: then sliced
        pairs = [full.rows(i, i + bs) for i in range(0, full.size, bs)]
    else:
        try:
            it = iter(data)
        except TypeError as exc:
            raise UserError(
                f"data must be an (X, y) pair of tensors, a dict of tensors, a DataLoader or an iterable of batches, got {type(data).__name__}"
            ) from exc
        pairs = [adapt(batch, f"batch {i}") for i, batch in enumerate(it)]
        if not pairs:
            raise UserError("the data holds no batches")
    if dtype is not None:
        pairs = [
            b.map(lambda t: t.to(dtype) if t.is_floating_point() else t, inputs_only=True)
            for b in pairs
        ]
    dev = dev or next(pairs[0].tensors())[1].device
    nbytes = sum(b.nbytes for b in pairs)
    resident = nbytes <= DEVICE_RESIDENT_LIMIT or dev.type == "cpu"
    if resident:
        pairs = [b.to(dev) for b in pairs]
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
