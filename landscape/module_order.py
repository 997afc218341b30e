"""Leaf modules in the order they run: the recorder of leaf calls and the module-order
fallback of spec derivation.

:func:`leaf_calls` is the one recorder of leaf-module calls (forward hooks), used by
:func:`derive_by_order` (the fallback of :func:`landscape.spec_tracing.derive_spec` for
models fx cannot trace) and by activation matching.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .evaluation import eval_mode
from .permutation import PermutationSpec
from .spec_labels import UnitGraph, reshape_label
from .spec_rules import mha_rule, module_rule


@torch.no_grad()
def leaf_calls(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, Tensor, Tensor]]:
    """``(name, module, first input, output)`` of every leaf module (one without children), in
    the order they run on ``x``, recorded by forward hooks (eval mode; hooks removed after).
    A module returning a tuple (``nn.MultiheadAttention``) records its first element."""
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []

    def record(mod, i, o, n):
        o = o[0] if isinstance(o, tuple) else o
        if i and isinstance(i[0], Tensor) and isinstance(o, Tensor):
            calls.append((n, mod, i[0].detach(), o.detach()))

    hooks = [
        m.register_forward_hook(lambda mod, i, o, n=n: record(mod, i, o, n))
        for n, m in model.named_modules()
        if not any(True for _ in m.children()) or isinstance(m, nn.MultiheadAttention)
    ]
    try:
        with eval_mode(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    inside = {n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [c for c in calls if not any(c[0].startswith(p + ".") for p in inside)]


def derive_by_order(model: nn.Module, x: Tensor, why: str) -> PermutationSpec:
    """A spec from following leaf modules in the order they run on ``x`` (each reads the
    previous one's output, through flattening or pooling): the fallback for models fx
    cannot trace. It cannot see residual additions; validation catches what it gets wrong."""
    b = UnitGraph(model)
    calls = [(n, m, tuple(i.shape), tuple(o.shape)) for n, m, i, o in leaf_calls(model, x)]
    lab, prev = None, tuple(x.shape)
    for name, m, in_shape, out_shape in calls:
        if lab and in_shape != prev:
            pooled = len(in_shape) in (2, len(prev)) and in_shape[1] == prev[1] and set(lab) == {1}
            if math.prod(in_shape) == math.prod(prev):
                lab = reshape_label(b, lab, prev, in_shape, name)
            elif pooled:  # pooling or a global mean over space
                lab = {1: lab[1]}
            else:
                b.freeze(lab, f"{name} reads a reshaped value")
                lab = None
        if isinstance(m, nn.MultiheadAttention):
            lab = mha_rule(b, name, m, [(lab, len(in_shape))] * 3)[0]
        else:
            lab = module_rule(b, name, m, lab, in_shape, out_shape)
        prev = out_shape
    b.freeze(lab, "model output")
    return b.result(f"module order ({why})")
