"""The one flat view of a model's trainable entries.

Every analysis works on a vector ``theta`` of the model's *trainable* coordinates:
interpolation mixes two of them, surfaces add directions to one, the Hessian acts on
them, alignment permutes the tensors behind them.

Fixed entries are not coordinates. The convention (used by the zoo's W-Asymmetric
layers and by the paper's public code) is a buffer named ``mask`` on the same module as
a ``weight`` parameter, of the same shape, nonzero where the entry is trainable. Such a
layer computes its effective weight as ``W * M + F * (1 - M)``, so entries with ``M = 0``
never change the function and get no coordinate here.

Buffers split in two kinds: *state* buffers (the running statistics of BatchNorm
layers), which interpolation mixes like parameters, and *fixed* buffers (masks, fixed
values, FiGLU matrices and anything else), which define the network family and must be
identical across models that are compared.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import UserError

Selection = None | str | Sequence[str] | Callable[[str], bool]


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding tensor ``name`` and the tensor's own name in it (``"a.b.weight"`` -> (a.b, "weight"))."""
    prefix, _, leaf = name.rpartition(".")
    return (model.get_submodule(prefix) if prefix else model), leaf


def fixed_entry_mask(model: nn.Module, name: str, param: Tensor) -> Tensor | None:
    """Boolean tensor of trainable entries of parameter ``name``, or None if all are trainable."""
    if not name.endswith("weight"):
        return None
    module, leaf = owner(model, name)
    mask = getattr(module, "mask", None) if leaf == "weight" else None
    if isinstance(mask, Tensor) and mask.shape == param.shape:
        return mask != 0
    return None


def _selector(select: Selection) -> Callable[[str], bool]:
    if select is None:
        return lambda name: True
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)

    def match(name: str) -> bool:
        for p in patterns:
            if p.startswith("re:"):
                if re.search(p[3:], name):
                    return True
            elif fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + "."):
                return True
        return False

    return match


@dataclass(frozen=True)
class _Slot:
    name: str
    shape: torch.Size
    start: int
    stop: int
    index: Tensor | None  # flat indices of trainable entries, None when all are trainable


class ParamView:
    """Flat coordinates of the trainable entries of ``model`` (optionally a subset).

    ``select`` picks parameters by name: glob patterns (``"lins.0.*"``), exact names or
    module prefixes (``"layer1"``), regular expressions prefixed ``re:``, or a predicate.
    Parameters with ``requires_grad=False`` are never coordinates.
    """

    def __init__(self, model: nn.Module, select: Selection = None):
        self.model = model
        keep = _selector(select)
        slots, start = [], 0
        for name, p in model.named_parameters():
            if not p.requires_grad or not keep(name):
                continue
            mask = fixed_entry_mask(model, name, p)
            if mask is None:
                n, index = p.numel(), None
            else:
                index = mask.reshape(-1).nonzero().squeeze(1)
                n = int(index.numel())
            if n == 0:
                continue
            slots.append(_Slot(name, p.shape, start, start + n, index))
            start += n
        if not slots:
            raise UserError(
                "no trainable parameters in the chosen subset: check the parameter selection"
            )
        self.slots: tuple[_Slot, ...] = tuple(slots)
        self.numel = start
        params = dict(model.named_parameters())
        self._params = [params[s.name] for s in self.slots]
        # built eagerly: filling a cache lazily inside a torch.func transform breaks later calls
        self._gather = {
            s.name: self._gather_index(s, p)
            for s, p in zip(self.slots, self._params)
            if s.index is not None
        }

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def params(self) -> list[nn.Parameter]:
        """The model's parameters behind the coordinates, in slot order."""
        return list(self._params)

    @property
    def device(self) -> torch.device:
        return self._params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self._params[0].dtype

    def __len__(self) -> int:
        return self.numel

    def get(self) -> Tensor:
        """The current coordinates as one detached vector."""
        return self.flatten(p.detach() for p in self._params)

    def flatten(self, tensors: Iterable[Tensor] | dict[str, Tensor]) -> Tensor:
        """Trainable entries of parameter-shaped tensors (dict by name or in slot order)."""
        if isinstance(tensors, dict):
            tensors = [tensors[s.name] for s in self.slots]
        parts = []
        for s, t in zip(self.slots, tensors):
            flat = t.reshape(-1)
            parts.append(flat if s.index is None else flat[s.index.to(flat.device)])
        return torch.cat(parts)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Parameter-shaped tensors from coordinates; fixed entries are zero."""
        self._check(theta)
        out = {}
        for s in self.slots:
            part = theta[s.start : s.stop]
            if s.index is None:
                out[s.name] = part.reshape(s.shape)
            else:
                full = part.new_zeros(s.shape.numel())
                full[s.index.to(part.device)] = part
                out[s.name] = full.reshape(s.shape)
        return out

    @torch.no_grad()
    def set_(self, theta: Tensor) -> None:
        """Write coordinates into the model in place (fixed entries untouched)."""
        self._check(theta)
        for s, p in zip(self.slots, self._params):
            part = theta[s.start : s.stop].to(p.dtype)
            if s.index is None:
                p.copy_(part.reshape(s.shape))
            else:
                p.view(-1)[s.index.to(p.device)] = part

    def functional(self, theta: Tensor) -> dict[str, Tensor]:
        """Differentiable parameter dict for ``torch.func.functional_call``.

        Works under ``grad``, ``jvp`` and ``vmap``: entries come from ``theta`` by a gather,
        fixed entries from the model's current values.
        """
        out = {}
        for s, p in zip(self.slots, self._params):
            part = theta[..., s.start : s.stop]
            if s.index is None:
                out[s.name] = part.reshape(*theta.shape[:-1], *s.shape)
            else:
                # gather from [part, 0]: fixed positions read the appended zero, then take base values
                gather = self._gather[s.name]
                padded = torch.cat([part, part.new_zeros(*theta.shape[:-1], 1)], dim=-1)
                full = padded[..., gather].reshape(*theta.shape[:-1], *s.shape)
                trainable = gather.reshape(s.shape) < (s.stop - s.start)
                out[s.name] = torch.where(trainable, full, p.detach())
        return out

    @staticmethod
    def _gather_index(s: _Slot, p: Tensor) -> Tensor:
        """Index into ``[coordinates, 0]`` for every entry: its coordinate, or the trailing zero if fixed."""
        n = s.stop - s.start
        g = torch.full((s.shape.numel(),), n, dtype=torch.long, device=p.device)
        g[s.index.to(p.device)] = torch.arange(n, device=p.device)
        return g

    def _check(self, theta: Tensor) -> None:
        if theta.shape[-1] != self.numel:
            raise UserError(
                f"coordinate vector has {theta.shape[-1]} entries, the model has {self.numel} trainable entries"
            )

    def layer_slices(self) -> dict[str, slice]:
        """Coordinate range of every parameter (for per-layer analyses)."""
        return {s.name: slice(s.start, s.stop) for s in self.slots}


def is_state_buffer(model: nn.Module, name: str) -> bool:
    """True for BatchNorm running statistics, which are interpolated like parameters."""
    module, leaf = owner(model, name)
    return isinstance(module, nn.modules.batchnorm._NormBase) and leaf in (
        "running_mean",
        "running_var",
        "num_batches_tracked",
    )


def state_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {n: b for n, b in model.named_buffers() if is_state_buffer(model, n)}


def fixed_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Buffers that define the network family (masks, fixed values, FiGLU matrices, ...)."""
    return {n: b for n, b in model.named_buffers() if not is_state_buffer(model, n)}


def check_same_family(a: nn.Module, b: nn.Module, what: str = "the two models") -> None:
    """Raise :class:`UserError` unless ``a`` and ``b`` share parameter shapes and fixed buffers."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys():
        diff = sorted(set(pa) ^ set(pb))[:3]
        raise UserError(
            f"{what} have different architectures (parameters differ: {', '.join(diff)})"
        )
    for n in pa:
        if pa[n].shape != pb[n].shape:
            raise UserError(
                f"{what} have different shapes at {n}: {tuple(pa[n].shape)} vs {tuple(pb[n].shape)}"
            )
    fa, fb = fixed_buffers(a), fixed_buffers(b)
    if fa.keys() != fb.keys():
        diff = sorted(set(fa) ^ set(fb))[:3]
        raise UserError(
            f"{what} have different fixed buffers ({', '.join(diff)}): they are not one network family"
        )
    for n in fa:
        if fa[n].shape != fb[n].shape or not torch.equal(fa[n].cpu(), fb[n].cpu()):
            raise UserError(
                f"{what} differ in fixed buffer {n} (asymmetry masks, fixed values or FiGLU matrices): "
                "they are not one network family; train them with the same mask seed"
            )
