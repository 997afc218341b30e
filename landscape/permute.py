"""Applying a permutation: moving tensors by a spec's groups, and measuring the output change.

Convention (see :mod:`landscape.permutation`): applying ``p`` to tensor ``T`` along ``axis``
gives ``T'[..., i, ...] = T[..., p[i], ...]``; an axis of ``k * n`` entries (a flattened
``C x H x W`` feature map) moves in blocks of ``k`` consecutive entries. Fixed buffers move
only with ``permute_fixed=True``.

Everything here takes a spec already resolved against the model
(:meth:`PermutationSpec.resolve`); :func:`landscape.apply_permutation` is the front door
that finds the spec when none is given.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserError
from .evaluation import eval_mode
from .params import fixed_buffers
from .permutation import PermutationSpec, named_tensors


def _index(p: Tensor, size: int) -> Tensor:
    """Gather index for an axis of ``size = k * n`` entries permuted in blocks of ``k``."""
    n = p.numel()
    if size == n:
        return p
    k = size // n
    return (p[:, None] * k + torch.arange(k, device=p.device)).reshape(-1)


def permute_tensor(t: Tensor, moves: list[tuple[int, Tensor]]) -> Tensor:
    """``t`` with each ``(axis, p)`` applied: ``t'[..., i, ...] = t[..., p[i], ...]``."""
    for axis, p in moves:
        t = t.index_select(axis, _index(p.to(t.device), t.shape[axis]))
    return t


def permuted_state(
    model: nn.Module,
    spec: PermutationSpec,
    perms: Mapping[str, Any],
    *,
    permute_fixed: bool = False,
) -> dict[str, Tensor]:
    """Parameters and buffers of ``model`` after applying ``perms`` (groups missing from ``perms`` stay put)."""
    tensors = named_tensors(model)
    skip = set() if permute_fixed else set(fixed_buffers(model))
    idx = {g: torch.as_tensor(np.asarray(p), dtype=torch.long) for g, p in perms.items()}
    for g, p in idx.items():
        if g not in spec.sizes:
            raise UserError(f"permutation names group {g!r}, which the spec does not have")
        if p.numel() != spec.sizes[g] or not torch.equal(p.sort().values, torch.arange(p.numel())):
            raise UserError(
                f"permutation of group {g!r} is not a permutation of {spec.sizes[g]} units"
            )
    out = dict(tensors)
    for t, mv in spec.moves().items():
        if t in skip:
            continue
        moves = [(a, idx[g]) for a, g in mv if g in idx]
        if moves:
            out[t] = permute_tensor(tensors[t].detach(), moves)
    return out


def permuted_copy(
    model: nn.Module,
    spec: PermutationSpec,
    perms: Mapping[str, Any],
    *,
    permute_fixed: bool = False,
) -> nn.Module:
    """A copy of ``model`` with ``perms`` applied by the resolved ``spec``; ``model`` is untouched."""
    state = permuted_state(model, spec, perms, permute_fixed=permute_fixed)
    old = named_tensors(model)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in named_tensors(new).items():
            if state[name] is not old[name]:
                t.copy_(state[name])
    return new


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniformly random permutation of every group (NumPy ``default_rng(seed)``, groups in spec order)."""
    rng = np.random.default_rng(seed)
    return {g: rng.permutation(n) for g, n in spec.sizes.items()}


@torch.no_grad()
def eval_output(model: nn.Module, x: Tensor, state: Mapping[str, Tensor] | None = None) -> Tensor:
    """``f(x)`` in eval mode (the model's mode is restored), with ``state`` swapped in for its tensors when given."""
    with eval_mode(model):
        return model(x) if state is None else torch.func.functional_call(model, dict(state), (x,))


@torch.no_grad()
def output_change(
    model: nn.Module,
    spec: PermutationSpec,
    perms: Mapping[str, Any],
    x: Tensor,
    *,
    permute_fixed: bool = True,
    reference: Tensor | None = None,
) -> tuple[float, float]:
    """``(max |f_pi(x) - f(x)|, max |f(x)|)`` for the model with ``perms`` applied (eval mode)."""
    ref = eval_output(model, x) if reference is None else reference
    out = eval_output(model, x, permuted_state(model, spec, perms, permute_fixed=permute_fixed))
    return float((out - ref).abs().max()), float(ref.abs().max())
