"""How modules and operations move unit labels: the rule tables of spec derivation.

The sets below name the functions, methods and modules whose effect on hidden units
derivation knows (elementwise, pooling, reductions, softmax, products, reshapes, splits);
:func:`module_rule` and :func:`mha_rule` say what a leaf module does to the labels of its
input (see :mod:`landscape.spec_labels` for labels and :mod:`landscape.spec_tracing` for the
interpreter that applies these rules to a traced graph).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from .spec_labels import FLAT, HEAD, WITHIN, Label, UnitGraph, Units, reshape_label

ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)  # fmt: skip
POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
NORMS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)
LEAVES = (
    (nn.Linear, nn.modules.conv._ConvNd, nn.Flatten, nn.Embedding, nn.MultiheadAttention)
    + (nn.Softmax, nn.LogSoftmax)
    + NORMS
    + ELEMENTWISE
    + POOLS
)
ELEMENTWISE_FNS = {
    torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu,
    F.softplus, F.mish, F.hardtanh, F.hardswish, F.hardsigmoid, F.dropout, torch.tanh,
    torch.sigmoid, F.sigmoid, F.tanh, torch.abs, torch.exp, operator.neg, torch.neg,
}  # fmt: skip
ELEMENTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "abs", "exp", "contiguous", "clone", "float", "double", "to",
    "detach", "relu_", "neg", "type_as",
}  # fmt: skip
BINARY = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.imul,
    torch.add, torch.sub, torch.mul, torch.div,
}  # fmt: skip
BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "mul_", "masked_fill", "masked_fill_"}
POOL_FNS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d,
}  # fmt: skip
REDUCE = {torch.mean, torch.sum, torch.amax, "mean", "sum", "amax"}
SOFTMAX = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}
MATMUL = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"}
RESHAPE = {
    "view", "reshape", "flatten", "unsqueeze", "squeeze", "view_as", "reshape_as",
    torch.reshape, torch.flatten, torch.unsqueeze, torch.squeeze,
}  # fmt: skip
SPLIT = {"split", "chunk", "unbind", torch.split, torch.chunk, torch.unbind}


def op_name(fn) -> str:
    """A function's or method's name, for notes."""
    return getattr(fn, "__name__", str(fn))


# ----------------------------------------------------------------------------- module rules
def mha_rule(b: UnitGraph, name: str, m: nn.MultiheadAttention, labels: list) -> list:
    """``nn.MultiheadAttention`` (see the module notes): heads, nested query/key and value
    groups on the input projections (ranges of the packed ones), ``out_proj`` reads the value
    units and starts the output's group. Returns the labels of ``(output, weights)``."""
    E, H = m.embed_dim, m.num_heads
    d = E // H
    feats = []
    for lab, nd in labels:
        if lab and set(lab) != {nd - 1} or (lab and lab[nd - 1].kind != FLAT):
            b.freeze(lab, f"{name} reads the units on another axis")
            lab = None
        feats.append(lab[nd - 1].node if lab else None)
    P = b.new(f"{name}.heads", HEAD, H)
    QK, V = b.new(f"{name}.qk", WITHIN, d), b.new(f"{name}.v", WITHIN, d)
    b.head_of[QK] = b.head_of[V] = P
    rows = ((P, QK), (P, QK), (P, V))
    pre = f"{name}."
    if m._qkv_same_embed_dim:
        known = [g for g in feats if g is not None]
        if known and len(known) < 3:
            for g in known:
                b.freeze_node(g, f"{name} reads it and an unpermuted input with one weight")
            known = []
        inp = None
        for g in known:
            inp = g if inp is None else b.union(inp, g)
        b.add(inp, pre + "in_proj_weight", 1)
        for i, r in enumerate(rows):
            b.add(r, pre + "in_proj_weight", 0, (i * E, (i + 1) * E))
    else:
        for i, (w, r) in enumerate(zip(("q", "k", "v"), rows)):
            b.add(r, f"{pre}{w}_proj_weight", 0)
            b.add(feats[i], f"{pre}{w}_proj_weight", 1)
    if m.in_proj_bias is not None:
        for i, r in enumerate(rows):
            b.add(r, pre + "in_proj_bias", 0, (i * E, (i + 1) * E))
    if m.bias_k is not None:
        b.add(rows[1], pre + "bias_k", 2)
        b.add(rows[2], pre + "bias_v", 2)
    out = b.new(pre + "out_proj")
    b.layer(pre + "out_proj", out, None)
    merged = b.merged(P, V)
    b.add(merged, pre + "out_proj.weight", 1)
    return [{labels[0][1] - 1: Units(FLAT, out)}, None]


def module_rule(b: UnitGraph, name: str, m: nn.Module, lab: Label | None, in_shape, out_shape):
    nd = len(in_shape)
    if isinstance(m, nn.Linear) or (
        isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and m.groups == 1
    ):
        feat = nd - 1 if isinstance(m, nn.Linear) else 1
        rest = {a: u for a, u in (lab or {}).items() if a != feat}
        if rest and not isinstance(m, nn.Linear):
            b.freeze(rest, f"{name} reads the units on another axis")
            rest = {}
        u = (lab or {}).get(feat)
        inp = None
        if u is not None:
            if u.kind == WITHIN:
                b.freeze({feat: u}, f"{name} reads the units of every head alike")
            else:
                inp = u.node
        g = b.new(name)
        b.layer(name, g, inp)
        return {**rest, (len(out_shape) - 1 if isinstance(m, nn.Linear) else 1): Units(FLAT, g)}
    if isinstance(m, nn.Embedding):
        b.freeze(lab, f"{name} reads the units as token ids")
        g = b.new(name)
        b.embedding(name, g)
        return {len(out_shape) - 1: Units(FLAT, g)}
    if not lab:
        return None
    if isinstance(m, ELEMENTWISE):
        return lab
    if isinstance(m, (nn.Softmax, nn.LogSoftmax)):
        dim = (m.dim if m.dim is not None else -1) % nd
        if dim in lab:
            b.freeze({dim: lab[dim]}, f"{name} normalises over the units")
            return {a: u for a, u in lab.items() if a != dim} or None
        return lab
    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) or (
        isinstance(m, nn.GroupNorm) and m.num_groups == 1
    ):
        if set(lab) == {1} and lab[1].kind == FLAT:
            b.norm(name, lab[1].node)
            return lab
    elif isinstance(m, nn.LayerNorm):
        k = len(m.normalized_shape)
        inside = {a: u for a, u in lab.items() if a >= nd - k}
        if all(u.kind == FLAT for u in inside.values()):
            for a, u in inside.items():
                for t, _x in b._own(name):
                    b.add(u.node, t, a - (nd - k))
            return lab
    elif isinstance(m, POOLS) and set(lab) == {1}:
        return lab
    elif isinstance(m, nn.Flatten):
        return reshape_label(b, lab, in_shape, out_shape, name)
    b.freeze(lab, f"{name} ({type(m).__name__}) is not a layer, norm or elementwise activation")
    return None
