"""Deriving permutation specs from a model's computation, and explaining a spec that fails.

Derivation follows where hidden units flow. Each value carries a label ``(group, axis)``:
its ``axis`` holds the units of permutation ``group`` (or no label: inputs, constants).
A Linear/Conv layer reads its input's group on weight axis 1 and starts a new group on
its output; norms, elementwise activations, dropout, pooling and reductions over other
axes pass the label through (adding their affine parameters and running statistics);
flattening ``C x H x W`` keeps the channel group in blocks; adding two labelled values
merges their groups (residual streams); anything else that reads a labelled value,
and the model output, *freezes* the group (left unpermuted, noted in ``spec.notes``).

The graph comes from ``torch.fx`` (leaf modules: layers, norms, activations); when the
model cannot be traced (data-dependent Python control flow), leaf modules are followed
in the order they run on a sample batch, which covers ``nn.Sequential`` and the "lists
of layers run in turn" pattern but not residual additions. Either way the result is
validated by :func:`landscape.spec_resolution.validate_spec`, which sits above this module
(it calls :func:`derive_spec` and, on a failure, :func:`locate_error`); this module never
imports it.

:func:`leaf_calls` is the one recorder of leaf-module calls (forward hooks), used by the
module-order fallback here and by activation matching.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .evaluation import eval_mode
from .permutation import PermutationSpec, SpecBuilder, named_tensors
from .permute import output_change, random_perms

_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
_POOLS = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)
_LEAVES = (nn.Linear, nn.modules.conv._ConvNd, nn.Flatten) + _NORMS + _ELEMENTWISE + _POOLS
_ELEMENTWISE_FNS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.elu,
    F.selu,
    F.celu,
    F.leaky_relu,
    F.softplus,
    F.mish,
    F.hardtanh,
    F.hardswish,
    F.hardsigmoid,
    F.dropout,
    torch.tanh,
    torch.sigmoid,
    F.sigmoid,
    F.tanh,
    torch.abs,
    torch.exp,
}
_ELEMENTWISE_METHODS = {
    "relu",
    "sigmoid",
    "tanh",
    "abs",
    "exp",
    "contiguous",
    "clone",
    "float",
    "double",
    "to",
    "detach",
    "relu_",
}
_BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_"}
_POOL_FNS = {
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool2d,
}
_REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}


class _Builder(SpecBuilder):
    """SpecBuilder with union-find groups: an entry claimed by two groups merges them."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.parent: dict[str, str] = {}
        self.owner: dict[tuple[str, int], str] = {}
        self.frozen: dict[str, str] = {}
        self.order: list[str] = []

    def new(self, name: str) -> str:
        g = name or "input"
        while g in self.parent:
            g += "'"
        self.parent[g] = g
        self.order.append(g)
        return g

    def find(self, g: str) -> str:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: str, b: str) -> str:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            first, second = sorted((ra, rb), key=self.order.index)
            self.parent[second] = first
            if second in self.frozen:
                self.frozen.setdefault(first, self.frozen[second])
        return self.find(a)

    def add(self, group, tensor, axis) -> None:
        if group is None:
            return
        e = (tensor, axis)
        if e in self.owner:
            self.union(self.owner[e], group)
        else:
            self.owner[e] = group

    def freeze(self, label, why: str) -> None:
        if label is not None:
            self.frozen.setdefault(self.find(label[0]), why)

    def result(self, how: str) -> PermutationSpec:
        tensors = named_tensors(self.model)
        groups: dict[str, list] = {}
        for e, g in self.owner.items():
            groups.setdefault(self.find(g), []).append(e)
        notes = [f"derived by {how}"]
        out, sizes = {}, {}
        for g in self.order:
            if g not in groups:
                continue
            if g in self.frozen:
                notes.append(f"{g}: left unpermuted ({self.frozen[g]})")
                continue
            n = min(tensors[t].shape[a] for t, a in groups[g])
            if n < 2 or any(tensors[t].shape[a] % n for t, a in groups[g]):
                notes.append(f"{g}: left unpermuted (sizes do not fit one permutation)")
                continue
            out[g], sizes[g] = tuple(groups[g]), n
        return PermutationSpec(out, sizes, "derived", tuple(notes))


def _flatten(b: _Builder, lab, start: int, end: int, in_shape, where: str):
    if lab is None:
        return None
    nd = len(in_shape)
    start, end = start % nd, end % nd
    g, a = lab
    if a < start:
        return lab
    if a > end:
        return (g, a - (end - start))
    if a == start:  # units are the major index of the merged axis: blocks of consecutive entries
        return lab
    b.freeze(lab, f"{where} interleaves the units with other entries")
    return None


def _module_rule(b: _Builder, name: str, m: nn.Module, lab, in_shape, out_shape):
    nd = len(in_shape)
    if isinstance(m, nn.Linear) or (
        isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1
    ):
        feat = nd - 1 if isinstance(m, nn.Linear) else 1
        inp = None
        if lab is not None:
            if lab[1] == feat:
                inp = lab[0]
            else:
                b.freeze(lab, f"{name} reads the units on another axis")
        g = b.new(name)
        b.layer(name, g, inp)
        return (g, len(out_shape) - 1 if isinstance(m, nn.Linear) else 1)
    if lab is None:
        return None
    g, a = lab
    if isinstance(m, _ELEMENTWISE):
        return lab
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) or (
        isinstance(m, nn.GroupNorm) and m.num_groups == 1
    ):
        if a == 1:
            b.norm(name, g)
            return lab
    elif isinstance(m, nn.LayerNorm):
        k = len(m.normalized_shape)
        if a < nd - k:
            return lab
        for t, _x in b._own(name):
            b.add(g, t, a - (nd - k))
        return lab
    elif isinstance(m, _POOLS) and a == 1:
        return lab
    elif isinstance(m, nn.Flatten):
        return _flatten(b, lab, m.start_dim, m.end_dim, in_shape, name)
    b.freeze(lab, f"{name} ({type(m).__name__}) is not a layer, norm or elementwise activation")
    return None


class _Labeler(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, b: _Builder):
        super().__init__(gm)
        self.b = b
        self.labels: dict[fx.Node, object] = {}
        self.shapes: dict[fx.Node, tuple | None] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        self.shapes[n] = tuple(result.shape) if isinstance(result, Tensor) else None
        self.labels[n] = (
            self.rule(n, result) if isinstance(result, Tensor) or n.op == "output" else None
        )
        return result

    def lab(self, a):
        return self.labels.get(a) if isinstance(a, fx.Node) else None

    def rule(self, n: fx.Node, result):
        b = self.b
        if n.op in ("placeholder", "get_attr"):
            return None
        if n.op == "output":
            for a in n.all_input_nodes:
                b.freeze(self.lab(a), "model output")
            return None
        x = n.args[0] if n.args else None
        lab, in_shape = self.lab(x), self.shapes.get(x) if isinstance(x, fx.Node) else None
        if n.op == "call_module":
            return _module_rule(
                b,
                n.target,
                self.module.get_submodule(n.target),
                lab,
                in_shape or (),
                tuple(result.shape),
            )
        fn = n.target
        if fn in _BINARY or fn in _BINARY_METHODS:
            return self.binary(n, result)
        grouped = [self.lab(a) for a in n.all_input_nodes if self.lab(a) is not None]
        if not grouped:
            return None
        if lab is None or len(grouped) > 1:
            for g in grouped:
                b.freeze(g, f"{n.name} combines units in a way derivation does not follow")
            return None
        g, a = lab
        if fn in _ELEMENTWISE_FNS or fn in _ELEMENTWISE_METHODS:
            return lab
        if fn in _POOL_FNS and a == 1:
            return lab
        if fn in (torch.flatten, "flatten"):
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            return _flatten(b, lab, start, end, in_shape, n.name)
        if fn in ("view", "reshape") or fn is torch.reshape:
            out = tuple(result.shape)
            if out == in_shape:
                return lab
            if out[:a] == in_shape[:a] and len(out) == a + 1:
                return lab
        if fn in _REDUCE:
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
            if dims is not None:
                dims = [d % len(in_shape) for d in ((dims,) if isinstance(dims, int) else dims)]
                if a not in dims:
                    return (g, a if keep else a - sum(d < a for d in dims))
        if fn in ("permute", torch.permute):
            dims = n.args[1:] if fn == "permute" and len(n.args) > 2 else n.args[1]
            dims = [d % len(in_shape) for d in dims]
            return (g, dims.index(a))
        if fn in ("transpose", torch.transpose):
            d0, d1 = (d % len(in_shape) for d in n.args[1:3])
            return (g, d1 if a == d0 else d0 if a == d1 else a)
        b.freeze(lab, f"{n.name} ({getattr(fn, '__name__', fn)}) is not followed by derivation")
        return None

    def binary(self, n: fx.Node, result):
        out_nd = result.dim()
        axes, groups = set(), []
        for a in n.args:
            if isinstance(a, fx.Node) and self.lab(a) is not None:
                g, ax = self.lab(a)
                axes.add(ax + out_nd - len(self.shapes[a]))
                groups.append(g)
        if not groups:
            return None
        if len(axes) > 1:
            for g in groups:
                self.b.freeze((g, 0), f"{n.name} adds units on different axes")
            return None
        ax = axes.pop()
        for a in n.args:
            if isinstance(a, fx.Node) and self.lab(a) is None and self.shapes.get(a) is not None:
                s = self.shapes[a]
                j = ax - (out_nd - len(s))
                if j >= 0 and s[j] != 1:
                    self.b.freeze(
                        (groups[0], ax), f"{n.name} mixes the units with an unpermuted tensor"
                    )
                    return None
        for g in groups[1:]:
            self.b.union(groups[0], g)
        return (self.b.find(groups[0]), ax)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


@torch.no_grad()
def leaf_calls(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, Tensor, Tensor]]:
    """``(name, module, first input, output)`` of every leaf module (one without children), in
    the order they run on ``x``, recorded by forward hooks (eval mode; hooks removed after)."""
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o, n=n: calls.append((n, mod, i[0].detach(), o.detach()))
        )
        for n, m in model.named_modules()
        if not any(True for _ in m.children())
    ]
    try:
        with eval_mode(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _by_order(model: nn.Module, x: Tensor, why: str) -> PermutationSpec:
    b = _Builder(model)
    calls = [(n, m, tuple(i.shape), tuple(o.shape)) for n, m, i, o in leaf_calls(model, x)]
    lab, prev = None, tuple(x.shape)
    for name, m, in_shape, out_shape in calls:
        if lab is not None and in_shape != prev:
            flat = len(in_shape) == 2 and lab[1] == 1 and in_shape[1] == math.prod(prev[1:])
            pooled = (
                len(in_shape) in (2, len(prev)) and in_shape[1] == prev[1]
            )  # pooling or a global mean over space
            if not (flat or pooled):
                b.freeze(lab, f"{name} reads a reshaped value")
                lab = None
        lab = _module_rule(b, name, m, lab, in_shape, out_shape)
        prev = out_shape
    b.freeze(lab, "model output")
    return b.result(f"module order ({why})")


def derive_spec(model: nn.Module, x: Tensor) -> PermutationSpec:
    """A spec for ``model`` from its fx graph (or module order); see the module notes."""
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except (
        Exception
    ) as exc:  # fx raises many types for untraceable Python; fall back to module order
        return _by_order(model, x, f"fx tracing failed: {type(exc).__name__}")
    b = _Builder(model)
    with eval_mode(model), torch.no_grad():
        _Labeler(gm, b).run(x)
    return b.result("torch.fx tracing")


# ----------------------------------------------------------------------------- explaining failures
def locate_error(
    model: nn.Module, spec: PermutationSpec, x: Tensor, ref: Tensor, tol: float, seed: int
) -> str:
    """One line naming the group and, when a single change repairs it, the tensor that broke the spec."""
    perms = random_perms(spec, seed)

    def change(entries, g) -> float:
        groups = {k: v for k, v in spec.groups.items() if k != g}
        groups[g] = tuple(entries)
        s = PermutationSpec(groups, spec.sizes, spec.source)
        return output_change(model, s, {g: perms[g]}, x, reference=ref)[0]

    for g in spec.groups:
        d = change(spec.groups[g], g)
        if d > tol:
            break
    else:
        return f"permutation spec: every group alone preserves the function but all together do not (tolerance {tol:.2g}): groups that share a unit set must be merged"
    entries = list(spec.groups[g])
    n = spec.sizes[g]
    head = f"permutation spec group {g!r} ({n} units) changes the network output by {d:.3g} (tolerance {tol:.2g})"
    trials = 0
    removal = {}
    for e in entries:
        rest = [f for f in entries if f != e]
        if rest:
            removal[e] = change(rest, g)
            trials += 1
            if removal[e] <= tol:
                return f"{head}: tensor {e[0]} axis {e[1]} breaks it (the function does not permute it by these units); remove it from the group"
    tensors = named_tensors(model)
    covered = {e for es in spec.groups.values() for e in es}
    for t, a in entries:  # same tensor, another axis
        for a2 in range(tensors[t].dim()):
            if a2 != a and (t, a2) not in covered and tensors[t].shape[a2] % n == 0:
                if change([f for f in entries if f != (t, a)] + [(t, a2)], g) <= tol:
                    return f"{head}: tensor {t} is permuted on axis {a} but its units lie on axis {a2}; fix the axis"
    for t, v in tensors.items():
        for a in range(v.dim()):
            if (t, a) in covered or v.shape[a] % n or trials > 400:
                continue
            trials += 1
            if change(entries + [(t, a)], g) <= tol:
                return f"{head}: the spec does not cover tensor {t} axis {a}, which is indexed by these units; add [{t!r}, {a}] to group {g!r}"
    worst = min(removal, key=removal.get) if removal else entries[0]
    return f"{head}; no single tensor explains it, the most involved is {worst[0]} axis {worst[1]}: check the group against the model's forward"
