"""Declaring permutation specs layer by layer: :class:`SpecBuilder`.

The zoo's ``permutation_spec()`` methods and spec derivation (:class:`landscape.spec_labels.UnitGraph`)
build a :class:`landscape.permutation.PermutationSpec` through it; see that module for the
conventions (entries, ranges, nested groups).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .permutation import Entry, PermutationSpec, named_tensors, site

Groups = str | Sequence[str] | None


class SpecBuilder:
    """Declares a spec layer by layer; used by the zoo's ``permutation_spec()`` methods and by derivation.

    ``layer(name, out, inp)`` registers a Linear/Conv layer (W-Asym included): ``out`` acts on
    axis 0 of the weight and of every same-shaped tensor (mask, fixed) and axis 0 of the bias,
    ``inp`` on axis 1. ``norm(name, g)`` adds every 1-D tensor of a norm module (affine
    parameters, running statistics). ``act(name, g)`` adds square fixed matrices (FiGLU ``C``)
    on both axes; elementwise activations hold nothing. ``embedding(name, g)`` adds axis 1 of
    an embedding table. Groups given as ``None`` are not permuted; a pair ``(head, nested)``
    puts the entries in a head group and its nested group, declared by ``nest(nested, head,
    heads)`` (see the module notes).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.groups: dict[str, list[Entry]] = {}
        self.parents: dict[str, str] = {}
        self.fixed_sizes: dict[str, int] = {}

    def add(
        self, group: Groups, tensor: str, axis: int, rng: tuple[int, int] | None = None
    ) -> None:
        names = [group] if isinstance(group, str) or group is None else list(group)
        entry = (tensor, axis) if rng is None else (tensor, axis, int(rng[0]), int(rng[1]))
        for g in names:
            if g is not None:
                self.groups.setdefault(g, [])
                if entry not in self.groups[g]:
                    self.groups[g].append(entry)

    def nest(self, child: str, parent: str, heads: int) -> SpecBuilder:
        """Make ``child`` a group nested in the head group ``parent`` of ``heads`` heads."""
        self.parents[child] = parent
        self.fixed_sizes[parent] = int(heads)
        return self

    def _own(self, name: str, recurse: bool = False):
        m = self.model.get_submodule(name) if name else self.model
        pre = name + "." if name else ""
        yield from ((pre + n, t) for n, t in m.named_parameters(recurse=recurse))
        yield from ((pre + n, t) for n, t in m.named_buffers(recurse=recurse))

    def layer(self, name: str, out: Groups, inp: Groups) -> SpecBuilder:
        w = (self.model.get_submodule(name) if name else self.model).weight
        for t, x in self._own(name):
            if x.shape == w.shape:
                self.add(out, t, 0)
                self.add(inp, t, 1)
            elif x.dim() == 1 and x.shape[0] == w.shape[0]:
                self.add(out, t, 0)
        return self

    def norm(self, name: str, group: Groups) -> SpecBuilder:
        for t, x in self._own(name, recurse=True):
            if x.dim() == 1:
                self.add(group, t, 0)
        return self

    def act(self, name: str, group: Groups) -> SpecBuilder:
        for t, x in self._own(name, recurse=True):
            if x.dim() >= 2 and x.shape[0] == x.shape[1] and all(s == 1 for s in x.shape[2:]):
                self.add(group, t, 0)
                self.add(group, t, 1)
        return self

    def embedding(self, name: str, group: Groups) -> SpecBuilder:
        """An ``nn.Embedding`` (``num_embeddings x dim``): its features (axis 1) are ``group``'s units."""
        self.add(group, f"{name}.weight" if name else "weight", 1)
        return self

    def build(self, source: str = "declared", notes: tuple[str, ...] = ()) -> PermutationSpec:
        tensors = named_tensors(self.model)
        groups = {g: tuple(e) for g, e in self.groups.items() if e}
        sizes = {}
        for g, e in groups.items():
            if g in self.fixed_sizes:
                sizes[g] = self.fixed_sizes[g]
            elif g in self.parents:
                sizes[g] = (
                    min(site(x).length(tensors) for x in e) // self.fixed_sizes[self.parents[g]]
                )
            else:
                sizes[g] = min(site(x).length(tensors) for x in e)
        parents = {c: h for c, h in self.parents.items() if c in groups and h in groups}
        return PermutationSpec(groups, sizes, source, notes, parents)
