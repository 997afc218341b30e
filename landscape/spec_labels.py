"""Unit labels: what each axis of a traced value holds, and the groups they build.

Spec derivation (:mod:`landscape.spec_tracing`) runs a model on a sample batch and gives
every value a *label*: a map ``{axis: Units}`` saying which axes hold hidden units. A
:class:`Units` is one of

- ``flat``: the units of a group (a layer's outputs, the residual stream), possibly in
  blocks of consecutive entries (a flattened ``C x H x W`` map);
- ``head``: the heads of a head group (the axis ``H`` of ``(N, H, T, d)``);
- ``within``: the units inside each head of a nested group (the axis ``d``).

The groups live in a :class:`UnitGraph`, a union-find over group nodes: two values whose
units must move together (added, contracted by a matrix product, read by one weight)
merge their nodes. Reshaping a ``flat`` axis of ``H * d`` units into ``(H, d)`` *splits*
its node into a head node and a nested node (recorded once per node, so every value with
those units agrees); merging ``(H, d)`` back gives a ``flat`` axis whose node carries the
same split. When the spec is built, a split node's tensor entries go to both its head and
its nested group (see the nesting convention in :mod:`landscape.permutation`).

Anything the rules here cannot follow *freezes* the groups involved: they are left
unpermuted and the reason lands in ``spec.notes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .permutation import PermutationSpec, named_tensors, site
from .spec_builder import SpecBuilder

FLAT, HEAD, WITHIN = "flat", "head", "within"


@dataclass(frozen=True)
class Units:
    """The units one axis holds: ``kind`` (flat, head or within) of group node ``node``."""

    kind: str
    node: str


#: a value's label: which axes hold which units (absent axes hold none)
Label = dict[int, Units]


class UnitGraph(SpecBuilder):
    """Group nodes with union-find, splits into heads, entries and frozen groups.

    ``add(node, tensor, axis, rng)`` claims a tensor axis (or range) for a node; an entry
    claimed by two nodes of the same role merges them (a layer called twice).
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.parent: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        self.size: dict[str, int | None] = {}
        self.split_of: dict[
            str, tuple[int, int, str, str]
        ] = {}  # flat root -> (H, d, head, within)
        self.head_of: dict[str, str] = {}  # within root -> its head node
        self.owner: dict[tuple, str] = {}
        self.frozen: dict[str, str] = {}
        self.order: list[str] = []

    # -- nodes ---------------------------------------------------------------------------
    def new(self, name: str, kind: str = FLAT, size: int | None = None) -> str:
        g = name or "input"
        while g in self.parent:
            g += "'"
        self.parent[g], self.kind[g], self.size[g] = g, kind, size
        self.order.append(g)
        return g

    def find(self, g: str) -> str:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.kind[ra] != self.kind[rb]:
            self.freeze_node(ra, f"its units meet {self.kind[rb]} units of {rb}")
            self.freeze_node(rb, f"its units meet {self.kind[ra]} units of {ra}")
            return ra
        first, second = sorted((ra, rb), key=self.order.index)
        self.parent[second] = first
        if second in self.frozen:
            self.frozen.setdefault(first, self.frozen[second])
        s2, s1 = self.split_of.pop(second, None), self.split_of.get(first)
        if s2 is not None and s1 is not None:
            if s1[:2] == s2[:2]:
                self.union(s1[2], s2[2])
                self.union(s1[3], s2[3])
            else:
                self.freeze_node(
                    first, f"its units are split into heads two ways ({s1[:2]} and {s2[:2]})"
                )
        elif s2 is not None:
            self.split_of[first] = s2
        h2, h1 = self.head_of.pop(second, None), self.head_of.get(first)
        if h2 is not None and h1 is not None:
            self.union(h1, h2)
        elif h2 is not None:
            self.head_of[first] = h2
        return self.find(first)

    def split(self, g: str, heads: int, dim: int) -> tuple[str, str] | None:
        """The head and nested nodes of flat node ``g`` read as ``heads x dim`` (created once)."""
        r = self.find(g)
        if self.kind[r] != FLAT:
            self.freeze_node(r, f"its {self.kind[r]} units are reshaped")
            return None
        if r in self.split_of:
            h, d, P, C = self.split_of[r]
            if (h, d) != (heads, dim):
                self.freeze_node(
                    r, f"its units are split into heads two ways ({(h, d)} and {(heads, dim)})"
                )
                return None
            return self.find(P), self.find(C)
        P = self.new(f"{r}.heads", HEAD, heads)
        C = self.new(f"{r}.dims", WITHIN, dim)
        self.head_of[C] = P
        self.split_of[r] = (heads, dim, P, C)
        return P, C

    def merged(self, head: str, within: str) -> str | None:
        """A flat node for an axis holding ``head``'s heads x ``within``'s units (head-major)."""
        P, C = self.find(head), self.find(within)
        if self.find(self.head_of.get(C, C)) != P:
            self.freeze_node(P, f"its heads are merged with the units of another head group ({C})")
            self.freeze_node(C, "its units are merged with another group's heads")
            return None
        g = self.new(f"{P}+dims")
        self.split_of[g] = (self.size[P], self.size[C], P, C)
        return g

    # -- entries and freezing ------------------------------------------------------------
    def add(self, group, tensor: str, axis: int, rng=None) -> None:
        names = [group] if isinstance(group, str) or group is None else list(group)
        entry = (tensor, axis) if rng is None else (tensor, axis, int(rng[0]), int(rng[1]))
        for g in names:
            if g is None:
                continue
            key = (entry, self.kind[self.find(g)] == WITHIN)
            if key in self.owner:
                self.union(self.owner[key], g)
            else:
                self.owner[key] = g

    def freeze_node(self, g: str, why: str) -> None:
        self.frozen.setdefault(self.find(g), why)

    def freeze(self, label, why: str) -> None:
        """Freeze every group a label (or a list of labels) holds."""
        if label is None:
            return
        if isinstance(label, list):
            for lab in label:
                self.freeze(lab, why)
            return
        for u in label.values():
            self.freeze_node(u.node, why)

    # -- the spec ------------------------------------------------------------------------
    def result(self, how: str) -> PermutationSpec:
        tensors = named_tensors(self.model)
        entries: dict[str, list] = {}
        for (e, _), g in self.owner.items():
            entries.setdefault(self.find(g), []).append(e)
        for g in list(entries):  # a split node's entries belong to its heads and nested units
            if g in self.split_of:
                _, _, P, C = self.split_of[g]
                P, C = self.find(P), self.find(C)
                if g in self.frozen:
                    self.freeze_node(P, self.frozen[g])
                    self.freeze_node(C, self.frozen[g])
                for x in (P, C):
                    entries.setdefault(x, []).extend(e for e in entries[g] if e not in entries[x])
                del entries[g]
        notes = [f"derived by {how}"]
        groups, sizes, parents = {}, {}, {}
        for g in self.order:
            if g not in entries or self.find(g) != g:
                continue
            kind, es = self.kind[g], entries[g]
            if g in self.frozen:
                notes.append(f"{g}: left unpermuted ({self.frozen[g]})")
                continue
            lengths = [site(e).length(tensors) for e in es]
            if kind == FLAT:
                n, units = min(lengths), min(lengths)
            elif kind == HEAD:
                n = units = self.size[g]
            else:
                P = self.find(self.head_of[g])
                if P not in groups:
                    notes.append(f"{g}: left unpermuted (its heads {P} are)")
                    continue
                n, units = self.size[g], self.size[g] * sizes[P]
                parents[g] = P
            if n < 2 or any(x % units for x in lengths):
                notes.append(f"{g}: left unpermuted (sizes do not fit one permutation)")
                parents.pop(g, None)
                continue
            groups[g], sizes[g] = tuple(es), n
        return PermutationSpec(groups, sizes, "derived", tuple(notes), parents)


# ----------------------------------------------------------------------------- label rules
def relabel(label: Label | None, axes: dict[int, int]) -> Label | None:
    """``label`` with axis ``i`` moved to ``axes[i]`` (axes missing from ``axes`` are dropped)."""
    if not label:
        return None
    return {axes[a]: u for a, u in label.items() if a in axes} or None


def aligned(label: Label | None, nd: int, out_nd: int) -> Label:
    """``label`` of an ``nd``-axis value seen as broadcast to ``out_nd`` axes (right-aligned)."""
    return {a + out_nd - nd: u for a, u in (label or {}).items()}


def _segments(in_shape, out_shape) -> list[tuple[list[int], list[int]]] | None:
    """Axes of a reshape grouped into segments that map onto each other (size-1 axes left out)."""
    if math.prod(in_shape) != math.prod(out_shape):
        return None
    segs, i, j = [], 0, 0
    ni, no = len(in_shape), len(out_shape)
    while True:
        while i < ni and in_shape[i] == 1:
            i += 1
        while j < no and out_shape[j] == 1:
            j += 1
        if i >= ni or j >= no:
            break
        ia, oa, pi, po = [i], [j], in_shape[i], out_shape[j]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                ia.append(i)
                pi *= in_shape[i]
                i += 1
            else:
                oa.append(j)
                po *= out_shape[j]
                j += 1
        segs.append((ia, [a for a in oa if out_shape[a] != 1]))
    return segs


def reshape_label(
    g: UnitGraph, label: Label | None, in_shape, out_shape, where: str
) -> Label | None:
    """The label after a reshape (view, reshape, flatten, unsqueeze, squeeze).

    One labelled axis onto one axis keeps its label; a labelled major axis merged with
    unlabelled ones keeps it (units in blocks); a ``flat`` axis split into two axes becomes
    ``head`` x ``within`` (:meth:`UnitGraph.split`); ``head`` then ``within`` merged becomes
    ``flat`` (:meth:`UnitGraph.merged`). Anything else freezes the groups involved.
    """
    if not label:
        return None
    segs = _segments(tuple(in_shape), tuple(out_shape))
    if segs is None:
        g.freeze(label, f"{where} changes the number of entries")
        return None
    out: Label = {}
    covered = {a for ia, _ in segs for a in ia}
    for a in set(label) - covered:  # a labelled axis of size 1: nothing to permute
        g.freeze({a: label[a]}, f"{where} drops an axis of one unit")
    for ia, oa in segs:
        labs = [(a, label[a]) for a in ia if a in label]
        if not labs:
            continue
        if len(ia) == 1 and len(oa) == 1:
            out[oa[0]] = labs[0][1]
        elif len(ia) == 1 and len(oa) == 2 and labs[0][1].kind == FLAT:
            nodes = g.split(labs[0][1].node, out_shape[oa[0]], out_shape[oa[1]])
            if nodes is not None:
                out[oa[0]], out[oa[1]] = Units(HEAD, nodes[0]), Units(WITHIN, nodes[1])
        elif len(oa) == 1 and labs[0][0] == ia[0] and len(labs) == 1:
            out[oa[0]] = labs[0][1]  # the units are the major index: blocks of entries
        elif (
            len(oa) == 1
            and len(ia) == 2
            and [u.kind for _, u in labs] == [HEAD, WITHIN]
            and labs[0][0] == ia[0]
        ):
            node = g.merged(labs[0][1].node, labs[1][1].node)
            if node is not None:
                out[oa[0]] = Units(FLAT, node)
        else:
            g.freeze(dict(labs), f"{where} interleaves the units with other entries")
    return out or None


def index_axes(shape, index) -> dict[int, tuple[int | None, bool]] | None:
    """Where ``value[index]`` (ints, slices, None, Ellipsis) puts each axis of ``value``:
    ``{axis: (output axis or None when an int picks one entry, whether the axis is kept whole)}``;
    None for tensor (advanced) indices."""
    items = list(index) if isinstance(index, tuple) else [index]
    if any(not isinstance(x, (int, slice, type(None), type(Ellipsis))) for x in items):
        return None
    nd = len(shape)
    if Ellipsis in items:
        k = items.index(Ellipsis)
        used = sum(1 for x in items if x is not None and x is not Ellipsis)
        items[k : k + 1] = [slice(None)] * (nd - used)
    items += [slice(None)] * (nd - sum(1 for x in items if x is not None))
    out: dict[int, tuple[int | None, bool]] = {}
    a = o = 0
    for x in items:
        if x is None:
            o += 1
            continue
        if isinstance(x, int):
            out[a] = (None, False)
        else:
            out[a] = (o, range(*x.indices(shape[a])) == range(shape[a]))
            o += 1
        a += 1
    return out


def index_label(g: UnitGraph, label: Label | None, shape, index, where: str) -> Label | None:
    """The label after ``value[index]``; picking or slicing inside a labelled axis freezes its group."""
    if not label:
        return None
    axes = index_axes(shape, index)
    if axes is None:
        g.freeze(label, f"{where} indexes the units with a tensor")
        return None
    out: Label = {}
    for a, u in label.items():
        o, whole = axes[a]
        if o is None:
            g.freeze({a: u}, f"{where} picks one unit")
        elif not whole:
            g.freeze({a: u}, f"{where} slices the units")
        else:
            out[o] = u
    return out or None


def merge_axis(g: UnitGraph, units: list[Units], where: str) -> Units | None:
    """One output axis fed by several labelled operands: their groups must move together."""
    kinds = {u.kind for u in units}
    if len(kinds) > 1:
        for u in units:
            g.freeze_node(
                u.node, f"{where} combines {' and '.join(sorted(kinds))} units on one axis"
            )
        return None
    node = units[0].node
    for u in units[1:]:
        node = g.union(node, u.node)
    return Units(units[0].kind, g.find(node))
