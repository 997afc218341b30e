"""Deriving permutation specs from a model's computation, and explaining a spec that fails.

Derivation follows where hidden units flow. Each value carries a label (see
:mod:`landscape.spec_labels`): which of its axes hold the units of which group, whole
(``flat``) or as heads and the units within each head. The rules:

- a Linear/Conv layer reads its input's group on weight axis 1 and starts a new group on
  its output; an ``nn.Embedding`` starts a group on axis 1 of its table;
- norms, elementwise activations, dropout, pooling, softmax and reductions over other
  axes pass labels through (adding affine parameters and running statistics);
- reshapes keep units in blocks (flattening ``C x H x W``), split a group into heads
  (``(N, T, H * d) -> (N, T, H, d)``) and merge heads back; transposes move labels;
- adding or multiplying labelled values merges their groups (residual streams); a
  parameter combined with them (a learned position table, a per-unit scale) joins the
  group on the matching axis;
- a matrix product merges the groups of its batch axes (the heads) and of the contracted
  axis (a head's query and key dimensions), and keeps the other two; scaled dot-product
  attention is the same two products;
- ``nn.MultiheadAttention`` is one step: its packed ``in_proj_weight`` rows ``0:E``,
  ``E:2E`` and ``2E:3E`` (query, key, value) become ranges of one head group with nested
  query/key and value groups; ``out_proj`` reads the value units;
- anything else that reads a labelled value, and the model output, *freezes* the group
  (left unpermuted, noted in ``spec.notes``). Splitting a layer's outputs into pieces (a
  fused ``qkv`` projection cut by ``split``/``chunk``) is one such case: write separate
  ``q``, ``k``, ``v`` layers or declare ``permutation_spec()``.

The graph comes from ``torch.fx`` (:mod:`landscape.fx_trace`; leaf modules: layers, norms,
activations, embeddings, ``nn.MultiheadAttention``), the rules for modules from
:mod:`landscape.spec_rules` and the label algebra from :mod:`landscape.spec_labels`; this
module applies them to the graph's functions and methods. When the model cannot be traced,
leaf modules are followed in the order they run on a sample batch, which covers
``nn.Sequential`` and the "lists of layers run in turn" pattern but not residual additions.
Either way the result is validated by :func:`landscape.spec_resolution.validate_spec`,
which sits above this module; this module never imports it.

The module-order fallback lives in :mod:`landscape.module_order`.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .evaluation import eval_mode
from .fx_trace import trace
from .module_order import derive_by_order
from .permutation import PermutationSpec, named_tensors
from .spec_labels import (
    FLAT,
    WITHIN,
    Label,
    UnitGraph,
    Units,
    aligned,
    index_axes,
    index_label,
    merge_axis,
    relabel,
    reshape_label,
)
from .spec_rules import (
    BINARY,
    BINARY_METHODS,
    ELEMENTWISE_FNS,
    ELEMENTWISE_METHODS,
    LEAVES,
    MATMUL,
    POOL_FNS,
    REDUCE,
    RESHAPE,
    SOFTMAX,
    SPLIT,
    mha_rule,
    module_rule,
    op_name,
)


# ----------------------------------------------------------------------------- the fx interpreter
class _Labeler(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, b: UnitGraph):
        super().__init__(gm)
        self.b = b
        self.labels: dict[fx.Node, object] = {}
        self.shapes: dict[fx.Node, tuple | None] = {}
        #: parameters and buffers read by get_attr: (name, value axis -> tensor axis or None)
        self.origin: dict[fx.Node, tuple[str, tuple]] = {}
        self.tensors = named_tensors(b.model)

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        self.shapes[n] = tuple(result.shape) if isinstance(result, Tensor) else None
        self.labels[n] = self.rule(n, result)
        return result

    def lab(self, a):
        return self.labels.get(a) if isinstance(a, fx.Node) else None

    def where(self, n: fx.Node) -> str:
        return f"{n.name} ({op_name(n.target)})"

    # -- rules ---------------------------------------------------------------------------
    def rule(self, n: fx.Node, result):
        b = self.b
        if n.op == "placeholder":
            return None
        if n.op == "get_attr":
            if isinstance(result, Tensor) and n.target in self.tensors:
                self.origin[n] = (n.target, tuple(range(result.dim())))
            return None
        if n.op == "output":
            for a in n.all_input_nodes:
                b.freeze(self.lab(a), "model output")
            return None
        if n.op == "call_module":
            return self.module_call(n, result)
        fn = n.target
        x = n.args[0] if n.args else None
        if fn is operator.getitem:
            return self.getitem(n, result)
        self.track_origin(n, result)
        tensors = (
            isinstance(result, (tuple, list))
            and result
            and all(isinstance(r, Tensor) for r in result)
        )
        if not isinstance(result, Tensor) and not tensors:
            return None  # sizes, shapes, devices: no units
        labelled = [a for a in n.all_input_nodes if self.lab(a)]
        if not labelled:
            return None
        if any(isinstance(self.lab(a), list) for a in labelled):
            b.freeze([self.lab(a) for a in labelled], f"{self.where(n)} reads a tuple")
            return None
        lab, in_shape = self.lab(x), self.shapes.get(x) if isinstance(x, fx.Node) else None
        if fn in BINARY or fn in BINARY_METHODS or fn is torch.where:
            return self.broadcast(n, result)
        if fn is F.linear:
            return self.linear(n, result)
        if fn in MATMUL:
            return self.matmul(n, result, n.args[0], n.args[1])
        if fn is F.scaled_dot_product_attention:
            return self.attention(n, result)
        if len(labelled) > 1 or x not in labelled:
            b.freeze(
                [self.lab(a) for a in labelled],
                f"{self.where(n)} combines units in a way derivation does not follow",
            )
            return None
        if fn in ELEMENTWISE_FNS or fn in ELEMENTWISE_METHODS:
            return lab
        if fn in RESHAPE:
            return reshape_label(b, lab, in_shape, tuple(result.shape), self.where(n))
        if fn in ("expand", "expand_as"):
            return aligned(lab, len(in_shape), result.dim()) or None
        if fn in ("transpose", torch.transpose):
            d0, d1 = (d % len(in_shape) for d in n.args[1:3])
            return relabel(lab, {a: d1 if a == d0 else d0 if a == d1 else a for a in lab})
        if fn in ("permute", torch.permute):
            dims = n.args[1:] if fn == "permute" and len(n.args) > 2 else n.args[1]
            dims = [d % len(in_shape) for d in dims]
            return relabel(lab, {a: dims.index(a) for a in lab})
        if fn in SOFTMAX:
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            dim = (dim if dim is not None else -1) % len(in_shape)
            if dim in lab:
                b.freeze({dim: lab[dim]}, f"{self.where(n)} normalises over the units")
                return {a: u for a, u in lab.items() if a != dim} or None
            return lab
        if fn in POOL_FNS and set(lab) == {1}:
            return lab
        if fn in REDUCE:
            dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
            keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
            if dims is not None:
                dims = [d % len(in_shape) for d in ((dims,) if isinstance(dims, int) else dims)]
                if not set(dims) & set(lab):
                    return relabel(
                        lab, {a: a if keep else a - sum(d < a for d in dims) for a in lab}
                    )
        if fn in SPLIT:
            return self.split(n, result, lab, in_shape)
        b.freeze(lab, f"{self.where(n)} is not followed by derivation")
        return None

    def track_origin(self, n: fx.Node, result) -> None:
        """Follow a parameter through views, so that combining it with units can name its axis."""
        if not isinstance(result, Tensor):
            return
        if n.target in BINARY or n.target in BINARY_METHODS:
            self.binary_origin(n, result)
            return
        x = n.args[0] if n.args else None
        org = self.origin.get(x) if isinstance(x, fx.Node) else None
        if org is None:
            return
        fn, (name, axes) = n.target, org
        if fn in ELEMENTWISE_METHODS or fn in ELEMENTWISE_FNS:
            self.origin[n] = org
        elif fn in RESHAPE or fn in ("expand", "expand_as"):
            ins, outs = self.shapes[x], tuple(result.shape)
            # keep the map when only axes of size 1 come or go
            kept = [a for a in range(len(ins)) if ins[a] != 1]
            new = [a for a in range(len(outs)) if outs[a] != 1]
            if fn in ("expand", "expand_as"):
                shift = len(outs) - len(ins)
                self.origin[n] = (
                    name,
                    tuple(
                        [None] * shift
                        + [ax if ins[i] == outs[i + shift] else None for i, ax in enumerate(axes)]
                    ),
                )
            elif [ins[a] for a in kept] == [outs[a] for a in new]:
                m = [None] * len(outs)
                for a, o in zip(kept, new):
                    m[o] = axes[a]
                self.origin[n] = (name, tuple(m))

    def binary_origin(self, n: fx.Node, result) -> None:
        """A parameter times (plus, ...) unlabelled constants keeps its axes where the
        constants do not vary (a per-head slope times a distance matrix is still per head)."""
        ops = [a for a in n.args if isinstance(a, fx.Node) and self.shapes.get(a) is not None]
        src = [a for a in ops if a in self.origin]
        if len(src) != 1 or any(self.lab(a) for a in ops):
            return
        out_nd = result.dim()
        name, axes = self.origin[src[0]]
        m = [None] * out_nd
        shift = out_nd - len(axes)
        for j, ax in enumerate(axes):
            others = [a for a in ops if a is not src[0]]
            flat = all(
                (k := j + shift - (out_nd - len(self.shapes[a]))) < 0 or self.shapes[a][k] == 1
                for a in others
            )
            if ax is not None and flat and self.shapes[src[0]][j] == result.shape[j + shift]:
                m[j + shift] = ax
        self.origin[n] = (name, tuple(m))

    def module_call(self, n: fx.Node, result):
        b = self.b
        m = self.module.get_submodule(n.target)
        if isinstance(m, nn.MultiheadAttention):
            args = (
                list(n.args[:3])
                + [n.kwargs.get(k) for k in ("query", "key", "value")][len(n.args[:3]) :]
            )
            if not all(isinstance(a, fx.Node) and self.shapes.get(a) for a in args):
                b.freeze(
                    [self.lab(a) for a in n.all_input_nodes],
                    f"{n.target} is called in a way derivation does not follow",
                )
                return None
            labels = [(self.lab(a), len(self.shapes[a])) for a in args]
            for a in list(n.args[3:]) + [
                v for k, v in n.kwargs.items() if k not in ("query", "key", "value")
            ]:
                b.freeze(self.lab(a), f"{n.target} reads the units as a mask")
            return mha_rule(b, n.target, m, labels)
        x = n.args[0] if n.args else None
        lab = self.lab(x)
        if isinstance(lab, list):
            b.freeze(lab, f"{n.target} reads a tuple")
            lab = None
        extra = [a for a in n.all_input_nodes if a is not x and self.lab(a)]
        if extra:
            b.freeze([self.lab(a) for a in extra], f"{n.target} reads the units as an extra input")
        in_shape = self.shapes.get(x) if isinstance(x, fx.Node) else ()
        if not isinstance(result, Tensor):
            b.freeze(lab, f"{n.target} returns a {type(result).__name__}")
            return None
        return module_rule(b, n.target, m, lab, in_shape or (), tuple(result.shape))

    def getitem(self, n: fx.Node, result):
        x, idx = n.args[0], n.args[1]
        lab = self.lab(x)
        if isinstance(lab, list):
            return lab[idx] if isinstance(idx, int) else None
        org = self.origin.get(x)
        axes = index_axes(self.shapes[x], idx) if org is not None else None
        if axes is not None and isinstance(result, Tensor):
            m = [None] * result.dim()  # a sliced axis no longer covers the tensor's axis
            for a, (o, whole) in axes.items():
                if o is not None and whole:
                    m[o] = org[1][a]
            self.origin[n] = (org[0], tuple(m))
        if not lab or not isinstance(result, Tensor):
            return None
        return index_label(self.b, lab, self.shapes[x], idx, self.where(n))

    def split(self, n: fx.Node, result, lab: Label, in_shape):
        fn = n.target
        dim = n.kwargs.get("dim", n.args[2] if len(n.args) > 2 else 0)
        if fn in ("unbind", torch.unbind):
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        dim %= len(in_shape)
        if dim in lab:
            self.b.freeze(
                lab,
                f"{self.where(n)} cuts the units into pieces (a fused projection): "
                "use one layer per piece or declare permutation_spec()",
            )
            return None
        if fn in ("unbind", torch.unbind):
            lab = relabel(lab, {a: a - (a > dim) for a in lab})
        return [dict(lab) for _ in result]

    def broadcast(self, n: fx.Node, result):
        """Elementwise ops over broadcast operands: the groups on each axis merge; a parameter
        on a labelled axis joins the group; any other unlabelled operand there freezes it."""
        b, out_nd = self.b, result.dim()
        ops = [a for a in n.args if isinstance(a, fx.Node) and self.shapes.get(a) is not None]
        per_axis: dict[int, list[Units]] = {}
        for a in ops:
            for ax, u in aligned(self.lab(a), len(self.shapes[a]), out_nd).items():
                per_axis.setdefault(ax, []).append(u)
        out: Label = {}
        for ax, units in per_axis.items():
            u = merge_axis(b, units, self.where(n))
            if u is None:
                continue
            keep = True
            for a in ops:
                s = self.shapes[a]
                j = ax - (out_nd - len(s))
                if j < 0 or s[j] == 1 or j in (self.lab(a) or {}):
                    continue
                org = self.origin.get(a)
                if org is not None and org[1][j] is not None and u.kind != WITHIN:
                    b.add(u.node, org[0], org[1][j])
                    continue
                b.freeze_node(u.node, f"{self.where(n)} mixes the units with an unpermuted tensor")
                keep = False
            if keep:
                out[ax] = Units(u.kind, b.find(u.node))
        return out or None

    def linear(self, n: fx.Node, result):
        """``F.linear(x, W, b)`` with a parameter (or buffer) ``W``: as an ``nn.Linear`` whose
        weight is that tensor (a fixed FiGLU matrix ``F`` in ``x * sigmoid(F x)``, say)."""
        x = n.args[0]
        w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
        bias = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
        lab = dict(self.lab(x) or {})
        org = self.origin.get(w)
        whole = org is not None and org[1] == (0, 1)
        borg = self.origin.get(bias) if isinstance(bias, fx.Node) else None
        if not whole or self.lab(w) or (bias is not None and (borg is None or borg[1] != (0,))):
            self.b.freeze([lab, self.lab(w)], f"{self.where(n)} multiplies by a computed matrix")
            return None
        nd = len(self.shapes[x])
        u = lab.pop(nd - 1, None)
        if u is not None and u.kind == WITHIN:
            self.b.freeze({0: u}, f"{self.where(n)} reads the units of every head alike")
            u = None
        g = self.b.new(n.name)
        self.b.add(g, org[0], 0)
        self.b.add(u.node if u else None, org[0], 1)
        if borg is not None:
            self.b.add(g, borg[0], 0)
        return {**lab, result.dim() - 1: Units(FLAT, g)}

    def _batch(self, n, out: Label, operands, out_nd: int, batch_nd: int) -> None:
        """Merge the groups on the broadcast batch axes (all but the last two) of a product."""
        per_axis: dict[int, list[Units]] = {}
        for a, core in operands:
            s = self.shapes[a]
            for ax, u in aligned(self.lab(a), len(s), out_nd).items():
                if ax < out_nd - core:
                    per_axis.setdefault(ax, []).append(u)
        for ax, units in per_axis.items():
            u = merge_axis(self.b, units, self.where(n))
            if u is None:
                continue
            for a, _ in operands:
                s = self.shapes[a]
                j = ax - (out_nd - len(s))
                if j >= 0 and s[j] != 1 and j not in (self.lab(a) or {}):
                    self.b.freeze_node(
                        u.node, f"{self.where(n)} pairs the units with an unpermuted tensor"
                    )
                    break
            else:
                out[ax] = Units(u.kind, self.b.find(u.node))

    def _contract(self, n, ua: Units | None, ub: Units | None) -> None:
        if ua is None and ub is None:
            return
        if ua is None or ub is None or ua.kind != ub.kind:
            for u in (ua, ub):
                if u is not None:
                    self.b.freeze_node(
                        u.node, f"{self.where(n)} contracts the units with other entries"
                    )
            return
        self.b.union(ua.node, ub.node)

    def matmul(self, n: fx.Node, result, x, y):
        if not (isinstance(x, fx.Node) and isinstance(y, fx.Node)):
            self.b.freeze(
                [self.lab(a) for a in (x, y) if isinstance(a, fx.Node)],
                f"{self.where(n)} multiplies by a constant matrix",
            )
            return None
        sx, sy, out_nd = self.shapes[x], self.shapes[y], result.dim()
        lx, ly = self.lab(x) or {}, self.lab(y) or {}
        if len(sx) < 2 or len(sy) < 2:
            self.b.freeze([lx, ly], f"{self.where(n)} is a vector product")
            return None
        out: Label = {}
        self._batch(n, out, [(x, 2), (y, 2)], out_nd, out_nd - 2)
        self._contract(n, lx.get(len(sx) - 1), ly.get(len(sy) - 2))
        if len(sx) - 2 in lx:
            out[out_nd - 2] = lx[len(sx) - 2]
        if len(sy) - 1 in ly:
            out[out_nd - 1] = ly[len(sy) - 1]
        return {a: Units(u.kind, self.b.find(u.node)) for a, u in out.items()} or None

    def attention(self, n: fx.Node, result):
        """``F.scaled_dot_product_attention(q, k, v)``: ``softmax(q k^T) v`` as two products."""
        q, k, v = (n.args + (None,) * 3)[:3]
        q, k, v = (n.kwargs.get(nm, a) for nm, a in zip(("query", "key", "value"), (q, k, v)))
        mask = n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None)
        ops = [(a, 2) for a in (q, k, v) if isinstance(a, fx.Node)]
        if isinstance(mask, fx.Node):
            ops.append((mask, 2))
        out_nd = result.dim()
        lq, lk, lv = (self.lab(a) or {} for a in (q, k, v))
        out: Label = {}
        self._batch(n, out, ops, out_nd, out_nd - 2)
        nq, nk, nv = (len(self.shapes[a]) for a in (q, k, v))
        self._contract(n, lq.get(nq - 1), lk.get(nk - 1))
        self._contract(n, lk.get(nk - 2), lv.get(nv - 2))
        if nq - 2 in lq:
            out[out_nd - 2] = lq[nq - 2]
        if nv - 1 in lv:
            out[out_nd - 1] = lv[nv - 1]
        return {a: Units(u.kind, self.b.find(u.node)) for a, u in out.items()} or None


def derive_spec(model: nn.Module, x: Tensor) -> PermutationSpec:
    """A spec for ``model`` from its fx graph (or module order); see the module notes."""
    try:
        gm = trace(model, x, lambda m: isinstance(m, LEAVES))
    except Exception as exc:  # fx raises many types for untraceable Python
        return derive_by_order(
            model, x, f"fx tracing failed: {type(exc).__name__}: {exc}".splitlines()[0]
        )
    b = UnitGraph(model)
    with eval_mode(model), torch.no_grad():
        _Labeler(gm, b).run(x)
    return b.result("torch.fx tracing")
