"""Permutation specs: which tensor axes a hidden-unit permutation acts on.

A hidden layer of ``n`` units can be reordered by a permutation ``p`` without changing
the network function, provided every tensor indexed by those units moves with it. A
:class:`PermutationSpec` lists, for each permutation *group*, the ``(tensor, axis)``
pairs it acts on: weights (output axis 0 of the producing layer, input axis 1 of the
consuming layers), biases, norm affine parameters, BatchNorm running statistics and
the W-Asym buffers ``mask``/``fixed`` and FiGLU matrices ``C``. Residual streams share
one group across every block that adds into them.

Convention: applying ``p`` to tensor ``T`` along ``axis`` gives ``T'[..., i, ...] =
T[..., p[i], ...]``. An axis of size ``k * n`` (a flattened ``C x H x W`` feature map
feeding a linear layer) is permuted in blocks of ``k`` consecutive entries.

Fixed buffers (masks, fixed values, FiGLU matrices; see :mod:`landscape.params`) are in
the spec but by default *not* moved by :func:`apply_permutation`: the architecture is held
fixed and only the parameters move, which is exactly the symmetry question the
asymmetric networks of Lim et al. (2024) answer differently. With ``permute_fixed=True``
they move too, which gives an equivalent network with reordered constants; spec
validation uses that, so a spec for a W-Asym or sigma-Asym model is checked in full.
"""

from __future__ import annotations

import copy
import json
import math
import os
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .errors import UserError
from .evaluation import eval_mode
from .params import fixed_buffers

Entry = tuple[str, int]
#: leaf names that the standard layers tie together (same shape -> same permutation)
_LINKED = {"weight", "bias", "mask", "fixed", "running_mean", "running_var", "normal_mask"}


@dataclass(frozen=True)
class PermutationSpec:
    """Plain data: ``groups[name]`` is a tuple of ``(tensor name, axis)``; ``sizes[name]`` its unit count.

    ``notes`` records what derivation left unpermuted and why (empty for declared specs).
    """

    groups: Mapping[str, tuple[Entry, ...]]
    sizes: Mapping[str, int]
    source: str = "declared"
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        groups = {
            str(g): tuple((str(t), int(a)) for t, a in entries)
            for g, entries in self.groups.items()
        }
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "sizes", {str(g): int(n) for g, n in self.sizes.items()})
        object.__setattr__(self, "notes", tuple(self.notes))
        if set(groups) != set(self.sizes):
            raise UserError(
                f"permutation spec: groups {sorted(set(groups) ^ set(self.sizes))[:3]} lack a size or entries"
            )
        seen: dict[Entry, str] = {}
        for g, entries in groups.items():
            if not entries:
                raise UserError(f"permutation spec: group {g!r} acts on no tensor")
            for e in entries:
                if e in seen:
                    raise UserError(
                        f"permutation spec: {e[0]} axis {e[1]} is in two groups ({seen[e]!r} and {g!r}): merge them"
                    )
                seen[e] = g

    # -- views ---------------------------------------------------------------------------
    def moves(self) -> dict[str, list[tuple[int, str]]]:
        """``{tensor: [(axis, group), ...]}``: how each tensor moves."""
        out: dict[str, list[tuple[int, str]]] = {}
        for g, entries in self.groups.items():
            for t, a in entries:
                out.setdefault(t, []).append((a, g))
        return out

    def log10_order(self) -> float:
        """log10 of the symmetry group's size, ``sum_g log10(n_g!)``."""
        return sum(math.lgamma(n + 1) for n in self.sizes.values()) / math.log(10)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "group": g,
                    "size": self.sizes[g],
                    "tensors": len(e),
                    "log10_order": math.lgamma(self.sizes[g] + 1) / math.log(10),
                    "acts_on": ", ".join(f"{t}[{a}]" for t, a in e),
                }
                for g, e in self.groups.items()
            ]
        )

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {g: [[t, a] for t, a in e] for g, e in self.groups.items()},
            "sizes": dict(self.sizes),
            "source": self.source,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        if not isinstance(d, Mapping) or "groups" not in d:
            raise UserError(
                "permutation spec: expected a JSON object with 'groups' ({group: [[tensor, axis], ...]}) and optionally 'sizes'"
            )
        try:
            groups = {g: tuple((t, int(a)) for t, a in e) for g, e in d["groups"].items()}
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"permutation spec: groups must map names to lists of [tensor, axis] pairs ({exc})"
            ) from exc
        sizes = d.get("sizes") or {g: -1 for g in groups}  # -1: taken from the model by resolve()
        return cls(groups, sizes, str(d.get("source", "user")), tuple(d.get("notes", ())))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> PermutationSpec:
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            p = Path(s)
            if not p.is_file():
                raise UserError(f"{p}: no such permutation-spec file")
            s = p.read_text()
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as exc:
            raise UserError(f"permutation spec: not valid JSON ({exc})") from exc

    # -- checks against a model ----------------------------------------------------------
    def resolve(self, model: nn.Module) -> PermutationSpec:
        """Check names, axes and sizes against ``model`` (sizes of -1 are filled in); static part of validation.

        Raises :class:`UserError` naming the tensor for: unknown names, axes out of range,
        an axis whose size is not a multiple of the group size (a non-square similarity),
        and a spec that permutes one tensor of a layer but not its partner (a weight's
        output axis without its bias, mask, fixed values or running statistics).
        """
        tensors = named_tensors(model)
        sizes = dict(self.sizes)
        for g, entries in self.groups.items():
            for t, a in entries:
                if t not in tensors:
                    raise UserError(
                        f"permutation spec group {g!r}: the model has no parameter or buffer {t!r}"
                    )
                if not -tensors[t].dim() <= a < tensors[t].dim():
                    raise UserError(
                        f"permutation spec group {g!r}: {t} has {tensors[t].dim()} axes, axis {a} does not exist"
                    )
            if sizes[g] <= 0:
                sizes[g] = min(tensors[t].shape[a] for t, a in entries)
            for t, a in entries:
                if tensors[t].shape[a] % sizes[g]:
                    raise UserError(
                        f"permutation spec group {g!r} ({sizes[g]} units): {t} axis {a} has size {tensors[t].shape[a]}, "
                        "not a multiple: the similarity would not be square; fix the spec"
                    )
        spec = PermutationSpec(
            {g: tuple((t, a % tensors[t].dim()) for t, a in e) for g, e in self.groups.items()},
            sizes,
            self.source,
            self.notes,
        )
        spec._check_partners(tensors)
        return spec

    def _check_partners(self, tensors: Mapping[str, Tensor]) -> None:
        moves = {t: sorted(m) for t, m in self.moves().items()}
        by_module: dict[str, list[str]] = {}
        for name in tensors:
            prefix, _, leaf = name.rpartition(".")
            if leaf in _LINKED:
                by_module.setdefault(prefix, []).append(name)
        for names in by_module.values():
            for t in names:
                for a, g in moves.get(t, []):
                    for u in names:
                        if u == t:
                            continue
                        same = tensors[u].shape == tensors[t].shape
                        bias_of = (
                            a == 0
                            and tensors[u].dim() == 1
                            and tensors[t].dim() >= 2
                            and tensors[u].shape[0] == tensors[t].shape[0]
                        )
                        if (same or bias_of) and (a, g) not in moves.get(u, []):
                            raise UserError(
                                f"permutation spec group {g!r} permutes {t} axis {a} but not {u} axis {a}, which the same layer "
                                f"indexes by those units: add [{u!r}, {a}] to group {g!r}"
                            )


SpecLike = PermutationSpec | Mapping[str, Any] | str | os.PathLike


def as_spec(spec: SpecLike) -> PermutationSpec:
    """A :class:`PermutationSpec` from a spec, a dict, JSON text or a JSON file path."""
    if isinstance(spec, PermutationSpec):
        return spec
    if isinstance(spec, Mapping):
        return PermutationSpec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        return PermutationSpec.from_json(spec)
    raise UserError(
        f"permutation spec: expected a PermutationSpec, dict, JSON text or file, got {type(spec).__name__}"
    )


def named_tensors(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers by name (the tensors a spec may name)."""
    out = dict(model.named_parameters())
    out.update(dict(model.named_buffers()))
    return out


# ----------------------------------------------------------------------------- building specs
class SpecBuilder:
    """Declares a spec layer by layer; used by the zoo's ``permutation_spec()`` methods and by derivation.

    ``layer(name, out, inp)`` registers a Linear/Conv layer (W-Asym included): ``out`` acts on
    axis 0 of the weight and of every same-shaped tensor (mask, fixed) and axis 0 of the bias,
    ``inp`` on axis 1. ``norm(name, g)`` adds every 1-D tensor of a norm module (affine
    parameters, running statistics). ``act(name, g)`` adds square fixed matrices (FiGLU ``C``)
    on both axes; elementwise activations hold nothing. Groups given as ``None`` are not permuted.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.groups: dict[str, list[Entry]] = {}

    def add(self, group: str | None, tensor: str, axis: int) -> None:
        if group is not None:
            self.groups.setdefault(group, [])
            if (tensor, axis) not in self.groups[group]:
                self.groups[group].append((tensor, axis))

    def _own(self, name: str, recurse: bool = False):
        m = self.model.get_submodule(name) if name else self.model
        pre = name + "." if name else ""
        yield from ((pre + n, t) for n, t in m.named_parameters(recurse=recurse))
        yield from ((pre + n, t) for n, t in m.named_buffers(recurse=recurse))

    def layer(self, name: str, out: str | None, inp: str | None) -> SpecBuilder:
        w = (self.model.get_submodule(name) if name else self.model).weight
        for t, x in self._own(name):
            if x.shape == w.shape:
                self.add(out, t, 0)
                self.add(inp, t, 1)
            elif x.dim() == 1 and x.shape[0] == w.shape[0]:
                self.add(out, t, 0)
        return self

    def norm(self, name: str, group: str | None) -> SpecBuilder:
        for t, x in self._own(name, recurse=True):
            if x.dim() == 1:
                self.add(group, t, 0)
        return self

    def act(self, name: str, group: str | None) -> SpecBuilder:
        for t, x in self._own(name, recurse=True):
            if x.dim() >= 2 and x.shape[0] == x.shape[1] and all(s == 1 for s in x.shape[2:]):
                self.add(group, t, 0)
                self.add(group, t, 1)
        return self

    def build(self, source: str = "declared", notes: tuple[str, ...] = ()) -> PermutationSpec:
        tensors = named_tensors(self.model)
        groups = {g: tuple(e) for g, e in self.groups.items() if e}
        sizes = {g: min(tensors[t].shape[a] for t, a in e) for g, e in groups.items()}
        return PermutationSpec(groups, sizes, source, notes)


# ----------------------------------------------------------------------------- applying
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


def apply_permutation(
    model: nn.Module, perm: Any, *, spec: SpecLike | None = None, permute_fixed: bool = False
) -> nn.Module:
    """A permuted copy of ``model``; ``model`` itself is untouched.

    ``perm`` is a :class:`landscape.matching.Permutation` (which carries its spec) or a
    mapping ``{group: index array}`` together with ``spec`` (default: the model's own).
    Every tensor the spec names moves by its groups' permutations; fixed buffers move only
    with ``permute_fixed=True`` (see the module notes).
    """
    perms = getattr(perm, "perms", perm)
    if spec is None:
        spec = getattr(perm, "spec", None)
    spec = as_spec(spec).resolve(model) if spec is not None else permutation_spec(model)
    if not isinstance(perms, Mapping):
        raise UserError(
            f"apply_permutation: expected a Permutation or a {{group: indices}} mapping, got {type(perms).__name__}"
        )
    state = permuted_state(model, spec, perms, permute_fixed=permute_fixed)
    old = named_tensors(model)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for name, t in named_tensors(new).items():
            if state[name] is not old[name]:
                t.copy_(state[name])
    return new


# ----------------------------------------------------------------------------- sample inputs
def sample_input(model: nn.Module, n: int = 4, seed: int = 0) -> Tensor:
    """A random input batch shaped for the model's first Linear/Conv layer (8 pixels per spatial side)."""
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return torch.randn(n, m.in_features, generator=gen, dtype=dtype).to(device)
        if isinstance(m, nn.modules.conv._ConvNd):
            d = len(m.kernel_size)
            return torch.randn(n, m.in_channels, *([8] * d), generator=gen, dtype=dtype).to(device)
    raise UserError(
        f"cannot guess an input shape for {type(model).__name__}: pass sample=<a batch of inputs>"
    )


def _as_sample(model: nn.Module, sample: Any, n: int = 4) -> Tensor:
    if sample is None:
        return sample_input(model, n)
    if isinstance(sample, Tensor):
        return sample
    from .data import as_batches

    p = next(model.parameters())
    return as_batches(sample, device=p.device).sample(64)


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


def random_perms(spec: PermutationSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g: rng.permutation(n) for g, n in spec.sizes.items()}


def validate_spec(
    model: nn.Module, spec: SpecLike, sample: Any = None, *, tol: float = 1e-5, seed: int = 0
) -> float:
    """Check that ``spec`` is a symmetry of ``model``; return the measured output change.

    A random permutation of every group is applied (fixed buffers included) and the output
    on ``sample`` (default: a random batch) compared: ``max |f_pi(x) - f(x)|`` must stay
    below ``tol * max(1, max |f(x)|)``. A failure raises :class:`UserError` naming the group
    and, when one change repairs it, the tensor that broke it.
    """
    spec = as_spec(spec).resolve(model)
    x = _as_sample(model, sample)
    ref = eval_output(model, x)
    scale = max(1.0, float(ref.abs().max()))
    diff, _ = output_change(model, spec, random_perms(spec, seed), x, reference=ref)
    if diff <= tol * scale:
        return diff
    from .spec_tracing import locate_error

    raise UserError(locate_error(model, spec, x, ref, tol * scale, seed))


def checked_spec(
    model: nn.Module, spec: SpecLike | None = None, sample: Any = None
) -> PermutationSpec:
    """``spec`` resolved against ``model`` and validated; ``None``: :func:`permutation_spec` of the model."""
    if spec is None:
        return permutation_spec(model, sample)
    spec = as_spec(spec).resolve(model)
    validate_spec(model, spec, sample)
    return spec


def permutation_spec(
    model: nn.Module, sample: Any = None, *, validate: bool = True
) -> PermutationSpec:
    """The model's permutation spec: its own ``permutation_spec()`` if it has one, else derived.

    Derivation traces the model with ``torch.fx`` (or, when tracing fails, follows the
    order in which leaf modules run) through Linear/Conv/norm/elementwise-activation
    chains, residual additions, pooling and flattening; whatever it cannot follow is left
    unpermuted (listed in ``spec.notes``). Every spec is validated (:func:`validate_spec`).
    """
    if sample is None and validate and model in _VALIDATED:
        return _VALIDATED[model]
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        spec = as_spec(own())
    else:
        from .spec_tracing import derive_spec

        spec = derive_spec(model, _as_sample(model, sample))
    spec = spec.resolve(model)
    if validate and spec.groups:
        validate_spec(model, spec, sample)
        if sample is None:
            _VALIDATED[model] = spec
    return spec


#: specs already validated, per model object (a spec depends on the architecture, not on the values)
_VALIDATED: weakref.WeakKeyDictionary[nn.Module, PermutationSpec] = weakref.WeakKeyDictionary()
