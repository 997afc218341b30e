"""The permutation-spec type: which tensor axes a hidden-unit permutation acts on.

A hidden layer of ``n`` units can be reordered by a permutation ``p`` without changing
the network function, provided every tensor indexed by those units moves with it. A
:class:`PermutationSpec` lists, for each permutation *group*, the tensor axes it acts on:
weights (output axis 0 of the producing layer, input axis 1 of the consuming layers),
biases, norm affine parameters, BatchNorm running statistics, embeddings and the W-Asym
buffers ``mask``/``fixed`` and FiGLU matrices ``C``. Residual streams share one group
across every block that adds into them.

An entry is ``(tensor, axis)`` (the whole axis) or ``(tensor, axis, start, stop)`` (the
entries ``start:stop`` of that axis, for tensors that pack several layers, such as the
``in_proj_weight`` of ``nn.MultiheadAttention`` holding the query, key and value rows).

Convention: applying ``p`` to tensor ``T`` along ``axis`` gives ``T'[..., i, ...] =
T[..., p[i], ...]``. An axis (or range) of size ``k * n`` (a flattened ``C x H x W``
feature map feeding a linear layer) is permuted in blocks of ``k`` consecutive entries.

**Nested groups (attention heads).** A group ``c`` may be nested in a group ``h``
(``parents[c] = h``): ``h`` permutes ``n_h`` heads and ``c`` permutes the ``n_c`` units
inside each head, independently per head. Its permutation is an ``(n_h, n_c)`` array ``q``;
on an axis holding ``n_h * n_c`` units (head-major, ``index = head * n_c + unit``) the
pair ``(p, q)`` acts as the one permutation

    P[i * n_c + j] = p[i] * n_c + q[i, j],

i.e. head ``i`` of the result is head ``p[i]`` of the original, with its units reordered
by row ``i`` of ``q``. Every entry of a nested group is also an entry of its parent (the
same axis and range); the parent may act on more (a per-head parameter). Multi-head
attention has one head group and two nested groups: the query/key dimensions (rows of Q
and K, which a head's score ``q . k`` contracts) and the value dimensions (rows of V,
columns of the output projection O). The size of the symmetry group counts each nested
group once per head: ``log10 |G| = sum_g log10(n_g!) + sum_c n_h(c) log10(n_c!)``.

Fixed buffers (masks, fixed values, FiGLU matrices; see :mod:`landscape.params`) are in
the spec but by default *not* moved by :func:`landscape.apply_permutation`: the
architecture is held fixed and only the parameters move, which is exactly the symmetry
question the asymmetric networks of Lim et al. (2024) answer differently. With
``permute_fixed=True`` they move too, which gives an equivalent network with reordered
constants; spec validation uses that, so a spec for a W-Asym or sigma-Asym model is
checked in full.

This module is plain data and its checks: :class:`PermutationSpec` (with its JSON round
trip and the static check against a model's tensors). The permutation code is layered,
each module importing only those above it in this list:

- ``permutation`` (this module): the spec type;
- :mod:`landscape.spec_builder`: :class:`SpecBuilder`, with which models declare their spec;
- :mod:`landscape.permute`: applying a permutation to tensors, and the output change;
- :mod:`landscape.sample_inputs`: input batches for function checks;
- :mod:`landscape.spec_labels`: what each axis of a traced value holds (unit labels);
- :mod:`landscape.spec_rules`: how layers, norms and attention modules move labels;
- :mod:`landscape.fx_trace`: torch.fx tracing that computes values as it goes;
- :mod:`landscape.spec_tracing`: deriving a spec from the computation;
- :mod:`landscape.spec_resolution`: which spec a model has (declared or derived),
  validation under a random permutation and the explanation of a failure, the cache, and
  :func:`~landscape.apply_permutation`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from torch import Tensor, nn

from .atomic import write_atomic
from .errors import UserError

#: ``(tensor, axis)`` or ``(tensor, axis, start, stop)``
Entry = tuple
#: leaf names that the standard layers tie together (same shape -> same permutation)
_LINKED = {"weight", "bias", "mask", "fixed", "running_mean", "running_var", "normal_mask"}


def log10_factorial(n: int) -> float:
    """``log10(n!)``: log10 of the number of permutations of ``n`` units (``lgamma(n + 1) / ln 10``)."""
    return math.lgamma(n + 1) / math.log(10)


class Site(NamedTuple):
    """One entry unpacked: ``start``/``stop`` are None for a whole axis."""

    tensor: str
    axis: int
    start: int | None = None
    stop: int | None = None

    @property
    def entry(self) -> Entry:
        return (
            (self.tensor, self.axis)
            if self.start is None
            else (self.tensor, self.axis, self.start, self.stop)
        )

    def length(self, tensors: Mapping[str, Tensor]) -> int:
        """Entries of the axis (or range) this site covers."""
        if self.start is None:
            return int(tensors[self.tensor].shape[self.axis])
        return self.stop - self.start

    def where(self) -> str:
        r = "" if self.start is None else f" entries {self.start}:{self.stop}"
        return f"{self.tensor} axis {self.axis}{r}"


def site(entry: Sequence) -> Site:
    """An entry (2 or 4 items) as a :class:`Site`; malformed entries raise :class:`UserError`."""
    try:
        if len(entry) == 2:
            return Site(str(entry[0]), int(entry[1]))
        if len(entry) == 4:
            start, stop = int(entry[2]), int(entry[3])
            if not 0 <= start < stop:
                raise ValueError(f"range {start}:{stop} is empty or negative")
            return Site(str(entry[0]), int(entry[1]), start, stop)
    except (TypeError, ValueError) as exc:
        raise UserError(
            f"permutation spec: bad entry {entry!r} ({exc}): use [tensor, axis] or [tensor, axis, start, stop]"
        ) from exc
    raise UserError(
        f"permutation spec: bad entry {entry!r}: use [tensor, axis] or [tensor, axis, start, stop]"
    )


class AxisMove(NamedTuple):
    """How a group moves one tensor axis (or range): ``group`` (``n`` units) and, when the
    site is in a nested group, ``child`` (``nc`` units per head)."""

    axis: int
    start: int | None
    stop: int | None
    group: str
    n: int
    child: str | None = None
    nc: int = 1

    @property
    def units(self) -> int:
        return self.n * self.nc


def _overlap(a: Site, b: Site) -> bool:
    if a.start is None or b.start is None:
        return True
    return a.start < b.stop and b.start < a.stop


@dataclass(frozen=True)
class PermutationSpec:
    """Plain data: ``groups[name]`` is a tuple of entries; ``sizes[name]`` its unit count;
    ``parents[child] = head group`` for nested groups (see the module notes).

    ``notes`` records what derivation left unpermuted and why (empty for declared specs).
    """

    groups: Mapping[str, tuple[Entry, ...]]
    sizes: Mapping[str, int]
    source: str = "declared"
    notes: tuple[str, ...] = ()
    parents: Mapping[str, str] = None  # type: ignore[assignment]

    def __post_init__(self):
        groups = {
            str(g): tuple(site(e).entry for e in entries) for g, entries in self.groups.items()
        }
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "sizes", {str(g): int(n) for g, n in self.sizes.items()})
        object.__setattr__(self, "notes", tuple(self.notes))
        parents = {str(c): str(h) for c, h in (self.parents or {}).items()}
        object.__setattr__(self, "parents", parents)
        if set(groups) != set(self.sizes):
            raise UserError(
                f"permutation spec: groups {sorted(set(groups) ^ set(self.sizes))[:3]} lack a size or entries"
            )
        for c, h in parents.items():
            if c not in groups or h not in groups:
                raise UserError(
                    f"permutation spec: nested group {c!r} in {h!r}: both must be groups of the spec"
                )
            if h in parents or c == h:
                raise UserError(
                    f"permutation spec: group {h!r} holds {c!r} but is itself nested: one level of nesting only"
                )
        seen: dict[tuple[str, int], list[tuple[Site, str]]] = {}
        for g, entries in groups.items():
            if not entries:
                raise UserError(f"permutation spec: group {g!r} acts on no tensor")
            for e in entries:
                s = site(e)
                for other, g2 in seen.get((s.tensor, s.axis), []):
                    nested = parents.get(g) == g2 or parents.get(g2) == g
                    if not _overlap(s, other):
                        continue
                    if nested and s == other:
                        continue
                    if g2 == g and s == other:
                        raise UserError(f"permutation spec: group {g!r} lists {s.where()} twice")
                    raise UserError(
                        f"permutation spec: {s.where()} is in two groups ({g2!r} and {g!r}): merge them"
                    )
                seen.setdefault((s.tensor, s.axis), []).append((s, g))
        for c, h in parents.items():
            missing = set(groups[c]) - set(groups[h])
            if missing:
                s = site(sorted(missing)[0])
                raise UserError(
                    f"permutation spec: group {c!r} is nested in {h!r} but {h!r} does not act on {s.where()}: "
                    f"add [{', '.join(map(repr, s.entry))}] to group {h!r}"
                )

    # -- views ---------------------------------------------------------------------------
    @property
    def flat(self) -> bool:
        """True when every group acts on whole axes and none is nested (one permutation per group)."""
        return not self.parents and all(len(e) == 2 for es in self.groups.values() for e in es)

    def children(self, group: str) -> list[str]:
        """The groups nested in ``group``."""
        return [c for c, h in self.parents.items() if h == group]

    def moves(self) -> dict[str, list[tuple[int, str]]]:
        """``{tensor: [(axis, group), ...]}``: which groups move each tensor (ranges and
        nesting in :meth:`axis_moves`)."""
        out: dict[str, list[tuple[int, str]]] = {}
        for g, entries in self.groups.items():
            for e in entries:
                if (e[1], g) not in out.setdefault(e[0], []):
                    out[e[0]].append((e[1], g))
        return out

    def axis_moves(self) -> dict[str, list[AxisMove]]:
        """``{tensor: [AxisMove, ...]}``: one move per axis (or range), head and nested group together."""
        out: dict[str, list[AxisMove]] = {}
        child_at = {
            site(e): c for c, h in self.parents.items() for e in self.groups[c]
        }  # a site is in at most one nested group
        for g, entries in self.groups.items():
            if g in self.parents:
                continue
            for e in entries:
                s = site(e)
                c = child_at.get(s)
                out.setdefault(s.tensor, []).append(
                    AxisMove(
                        s.axis,
                        s.start,
                        s.stop,
                        g,
                        self.sizes[g],
                        c,
                        self.sizes[c] if c is not None else 1,
                    )
                )
        return out

    def group_log10_order(self, group: str) -> float:
        """log10 of the number of permutations group ``group`` contributes: ``log10(n!)``, or
        ``n_h log10(n!)`` for a group nested in a head group of ``n_h`` heads."""
        f = log10_factorial(self.sizes[group])
        h = self.parents.get(group)
        return f * self.sizes[h] if h is not None else f

    def log10_order(self) -> float:
        """log10 of the symmetry group's size, ``sum_g log10(n_g!)`` (nested groups once per head)."""
        return sum(self.group_log10_order(g) for g in self.groups)

    def to_frame(self) -> pd.DataFrame:
        """One row per group: size, the head group it is nested in, tensors, log10 order, entries."""
        return pd.DataFrame(
            [
                {
                    "group": g,
                    "size": self.sizes[g],
                    "within": self.parents.get(g, ""),
                    "tensors": len(e),
                    "log10_order": self.group_log10_order(g),
                    "acts_on": ", ".join(site(x).where() for x in e),
                }
                for g, e in self.groups.items()
            ],
            columns=["group", "size", "within", "tensors", "log10_order", "acts_on"],
        )

    # -- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {g: [list(x) for x in e] for g, e in self.groups.items()},
            "sizes": dict(self.sizes),
            "parents": dict(self.parents),
            "source": self.source,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PermutationSpec:
        if not isinstance(d, Mapping) or "groups" not in d:
            raise UserError(
                "permutation spec: expected a JSON object with 'groups' ({group: [[tensor, axis], ...]}) and optionally 'sizes' and 'parents'"
            )
        try:
            groups = {g: tuple(site(x).entry for x in e) for g, e in d["groups"].items()}
            parents = dict(d.get("parents") or {})
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserError(
                f"permutation spec: groups must map names to lists of [tensor, axis] pairs ({exc})"
            ) from exc
        sizes = d.get("sizes") or {g: -1 for g in groups}  # -1: taken from the model by resolve()
        return cls(groups, sizes, str(d.get("source", "user")), tuple(d.get("notes", ())), parents)

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
        """Check names, axes, ranges and sizes against ``model`` (sizes of -1 are filled in);
        the static part of validation.

        Raises :class:`UserError` naming the tensor for: unknown names, axes or ranges out of
        range, an axis whose size is not a multiple of the group's units (a non-square
        similarity; ``n_h * n_c`` for a nested group), and a spec that permutes one tensor of
        a layer but not its partner (a weight's output axis without its bias, mask, fixed
        values or running statistics).
        """
        tensors = named_tensors(model)
        sizes = dict(self.sizes)
        for g, entries in self.groups.items():
            for e in entries:
                t, a = e[0], e[1]
                if t not in tensors:
                    raise UserError(
                        f"permutation spec group {g!r}: the model has no parameter or buffer {t!r}"
                    )
                if not -tensors[t].dim() <= a < tensors[t].dim():
                    raise UserError(
                        f"permutation spec group {g!r}: {t} has {tensors[t].dim()} axes, axis {a} does not exist"
                    )
                if len(e) == 4 and e[3] > tensors[t].shape[a]:
                    raise UserError(
                        f"permutation spec group {g!r}: {t} axis {a} has {tensors[t].shape[a]} entries, range {e[2]}:{e[3]} does not fit"
                    )
        resolved = {
            g: tuple((e[0], e[1] % tensors[e[0]].dim(), *e[2:]) for e in entries)
            for g, entries in self.groups.items()
        }
        for g in self.groups:
            if sizes[g] <= 0:
                if g in self.parents or self.children(g):
                    raise UserError(
                        f"permutation spec group {g!r} is a head group or nested in one: give its size in 'sizes'"
                    )
                sizes[g] = min(site(e).length(tensors) for e in resolved[g])
        for g, entries in resolved.items():
            h = self.parents.get(g)
            units = sizes[g] * (sizes[h] if h is not None else 1)
            for e in entries:
                n = site(e).length(tensors)
                if n % units:
                    what = f"{sizes[h]} heads x {sizes[g]} units" if h else f"{units} units"
                    raise UserError(
                        f"permutation spec group {g!r} ({what}): {site(e).where()} has size {n}, "
                        "not a multiple: the similarity would not be square; fix the spec"
                    )
        spec = PermutationSpec(resolved, sizes, self.source, self.notes, self.parents)
        spec._check_partners(tensors)
        return spec

    def _check_partners(self, tensors: Mapping[str, Tensor]) -> None:
        by_tensor: dict[str, set[tuple]] = {}
        for g, entries in self.groups.items():
            for e in entries:
                by_tensor.setdefault(e[0], set()).add((e[1], e[2:], g))
        by_module: dict[str, list[str]] = {}
        for name in tensors:
            prefix, _, leaf = name.rpartition(".")
            if leaf in _LINKED:
                by_module.setdefault(prefix, []).append(name)
        for names in by_module.values():
            for t in names:
                for a, rng, g in sorted(by_tensor.get(t, ()), key=str):
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
                        if (same or bias_of) and (a, rng, g) not in by_tensor.get(u, ()):
                            entry = [u, a, *rng]
                            raise UserError(
                                f"permutation spec group {g!r} permutes {t} axis {a} but not {u} axis {a}, which the same layer "
                                f"indexes by those units: add {entry!r} to group {g!r}"
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
