"""Applying a permutation: moving tensors by a spec's groups, and measuring the output change.

Convention (see :mod:`landscape.permutation`): applying ``p`` to tensor ``T`` along ``axis``
gives ``T'[..., i, ...] = T[..., p[i], ...]``; an axis (or range) of ``k * n`` entries (a
flattened ``C x H x W`` feature map) moves in blocks of ``k`` consecutive entries. A head
group's ``p`` with a nested group's ``q`` (one row per head) acts on their common axes as
the single permutation ``P[i * n_c + j] = p[i] * n_c + q[i, j]``. Fixed buffers move only
with ``permute_fixed=True``.

Everything here takes a spec already resolved against the model
(:meth:`PermutationSpec.resolve`); :func:`landscape.apply_permutation` is the front door
that finds the spec when none is given.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UserError
from .evaluation import eval_mode
from .params import fixed_buffers
from .permutation import AxisMove, PermutationSpec, named_tensors


def _index(p: Tensor, size: int) -> Tensor:
    """Gather index for an axis of ``size = k * n`` entries permuted in blocks of ``k``."""
    n = p.numel()
    if size == n:
        return p
    k = size // n
    return (p[:, None] * k + torch.arange(k, device=p.device)).reshape(-1)


def unit_permutation(p: Tensor | None, q: Tensor | None, n: int, nc: int, device) -> Tensor:
    """The permutation of ``n * nc`` units made of head permutation ``p`` (``n``) and the
    nested permutations ``q`` (``n x nc``): ``P[i * nc + j] = p[i] * nc + q[i, j]``
    (identity where one is None)."""
    if p is None:
        p = torch.arange(n, device=device)
    if q is None:
        return p
    return (p.to(device)[:, None] * nc + q.to(device)).reshape(-1)


def permute_tensor(t: Tensor, moves: Sequence[AxisMove], perms: Mapping[str, Tensor]) -> Tensor:
    """``t`` with every move applied: ``t'[..., i, ...] = t[..., P[i], ...]`` on each axis (or
    range) by the unit permutation ``P`` of its groups in ``perms`` (groups not in ``perms``
    stay put)."""
    by_axis: dict[int, list[AxisMove]] = {}
    for m in moves:
        by_axis.setdefault(m.axis, []).append(m)
    for axis, ms in by_axis.items():
        size = t.shape[axis]
        idx = None
        for m in ms:
            p, q = perms.get(m.group), perms.get(m.child) if m.child else None
            if p is None and q is None:
                continue
            P = unit_permutation(p, q, m.n, m.nc, t.device)
            if m.start is None:
                idx = _index(P.to(t.device), size)
            else:
                if idx is None:
                    idx = torch.arange(size, device=t.device)
                idx[m.start : m.stop] = m.start + _index(P.to(t.device), m.stop - m.start)
        if idx is not None:
            t = t.index_select(axis, idx)
    return t


def check_perms(spec: PermutationSpec, perms: Mapping[str, Any]) -> dict[str, Tensor]:
    """``perms`` as long tensors, checked: a permutation of ``n`` units per group, an
    ``(n_h, n_c)`` array of permutations (one row per head) for a nested group."""
    out = {}
    for g, p in perms.items():
        if g not in spec.sizes:
            raise UserError(f"permutation names group {g!r}, which the spec does not have")
        t = torch.as_tensor(np.asarray(p), dtype=torch.long)
        n = spec.sizes[g]
        h = spec.parents.get(g)
        shape = (spec.sizes[h], n) if h is not None else (n,)
        ok = tuple(t.shape) == shape and torch.equal(
            t.sort(dim=-1).values, torch.arange(n).expand(*shape)
        )
        if not ok:
            what = f"{shape[0]} rows (one per head) of permutations of {n}" if h else f"{n}"
            raise UserError(f"permutation of group {g!r} is not a permutation of {what} units")
        out[g] = t
    return out


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
    idx = check_perms(spec, perms)
    out = dict(tensors)
    for t, mv in spec.axis_moves().items():
        if t in skip:
            continue
        if any(m.group in idx or m.child in idx for m in mv):
            out[t] = permute_tensor(tensors[t].detach(), mv, idx)
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


def random_perm(spec: PermutationSpec, group: str, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of ``group``: ``(n,)``, or ``(n_h, n)`` for a nested group."""
    n = spec.sizes[group]
    h = spec.parents.get(group)
    if h is None:
        return rng.permutation(n)
    return np.stack([rng.permutation(n) for _ in range(spec.sizes[h])])


def identity_perms(spec: PermutationSpec) -> dict[str, np.ndarray]:
    """The identity of every group (``(n_h, n)`` rows of ``0..n-1`` for a nested group)."""
    out = {}
    for g, n in spec.sizes.items():
        h = spec.parents.get(g)
        out[g] = np.tile(np.arange(n), (spec.sizes[h], 1)) if h is not None else np.arange(n)
    return out


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """A uniformly random permutation of every group (NumPy ``default_rng(seed)``, groups in spec order)."""
    rng = np.random.default_rng(seed)
    return {g: random_perm(spec, g, rng) for g in spec.sizes}


def compose_inverse(
    spec: PermutationSpec, perms: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The inverse permutation per group: ``p^-1`` for flat and head groups; for a nested
    group ``q'[a] = (q[p^-1[a]])^-1``, so that ``(p', q')`` undoes ``(p, q)``."""
    out = {g: np.argsort(np.asarray(p), axis=-1) for g, p in perms.items() if g not in spec.parents}
    for g, q in perms.items():
        h = spec.parents.get(g)
        if h is None:
            continue
        q = np.asarray(q)
        p = np.asarray(perms[h]) if h in perms else np.arange(q.shape[0])
        out[g] = np.argsort(q[np.argsort(p)], axis=-1)
    return out


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
