"""The permutation-spec type: which tensor axes a hidden-unit permutation acts on.

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
the spec but by default *not* moved by :func:`landscape.apply_permutation`: the
architecture is held fixed and only the parameters move, which is exactly the symmetry
question the asymmetric networks of Lim et al. (2024) answer differently. With
``permute_fixed=True`` they move too, which gives an equivalent network with reordered
constants; spec validation uses that, so a spec for a W-Asym or sigma-Asym model is
checked in full.

This module is plain data and its checks: :class:`PermutationSpec` (with its JSON round
trip and the static check against a model's tensors) and :class:`SpecBuilder`, with which
models declare their spec. The permutation code is layered, each module importing only
those above it in this list:

- ``permutation`` (this module): the spec type and the builder;
- :mod:`landscape.permute`: applying a permutation to tensors, and the output change;
- :mod:`landscape.sample_inputs`: input batches for function checks;
- :mod:`landscape.spec_tracing`: deriving a spec from the computation, explaining failures;
- :mod:`landscape.spec_resolution`: which spec a model has (declared or derived),
  validation under a random permutation, the cache, and :func:`~landscape.apply_permutation`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor, nn

from .atomic import write_atomic
from .errors import UserError

Entry = tuple[str, int]
#: leaf names that the standard layers tie together (same shape -> same permutation)
_LINKED = {"weight", "bias", "mask", "fixed", "running_mean", "running_var", "normal_mask"}


def log10_factorial(n: int) -> float:
    """``log10(n!)``: log10 of the number of permutations of ``n`` units (``lgamma(n + 1) / ln 10``)."""
    return math.lgamma(n + 1) / math.log(10)


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
                    "log10_order": log10_factorial(self.sizes[g]),
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
            write_atomic(path, text.encode("utf-8"), what="permutation spec")
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
