"""Hessian-vector products by hand-derived passes for chains of dense layers.

Most networks in this field's symmetry studies are multilayer perceptrons: a chain
``flatten -> Linear -> norm -> activation -> ... -> Linear`` under cross-entropy or squared
error. For them the product ``H v`` has a closed form (Pearlmutter's R-operator,
``R{f} = d/dr f(theta + r v)`` at ``r = 0``): one forward pass of directional derivatives
``R{x_l}`` and one backward pass of ``R{dL/dx_l}``, with the parameter outputs
``R{dL/dW} = R{dy}^T x + dy^T R{x}`` along the way. Everything that does not depend on ``v``
(the activations, the backpropagated gradients ``dy``, ``f'(u)``, ``f''(u) dy``, the
normalisation statistics) is computed once per operator and kept, so a product costs about
twice the matrix products of one forward-backward pass, and none of autograd's bookkeeping.

:func:`plan` reads the model with ``torch.fx`` and accepts only what it can differentiate by
hand: a single tensor input flowing through a chain of

- ``nn.Linear`` (and W-Asym linear layers with ``effective_weight()``, ``mask``, ``fixed``),
- ``nn.LayerNorm`` over the last dimension, ``nn.BatchNorm1d`` in eval mode on ``(N, C)``,
- ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.GELU`` (exact or tanh), ``nn.Tanh``, ``nn.Sigmoid``,
  ``nn.SiLU`` (as modules or ``torch``/``F`` functions), and FiGLU, the fixed gate
  ``x * sigmoid(x C^T)`` of sigma-Asym networks,
- ``nn.Identity``, ``nn.Dropout`` (eval: identity), ``flatten(1)`` / ``nn.Flatten()``,

ending in ``(N, C)`` outputs, with the built-in ``classification``, ``squared_error`` or
``auto`` objective. Anything else (residual connections, convolutions, attention, a user
loss, hooks) is not a chain: :class:`~landscape.hessian_operator.HessianOperator` then
uses double backward and says why. A plan is also checked numerically: its forward pass
must reproduce the model's outputs on the first rows of the first batch, or it is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .chain_steps import (
    ACTIVATIONS,
    ActStep,
    BatchNormStep,
    FlattenStep,
    GateStep,
    IdentityStep,
    LayerNormStep,
    LinearStep,
    Step,
    Tangents,
    head,
    head_kind,
    leaky,
)

# ----------------------------------------------------------------------------- planning
_ACT_MODULES: dict[type, Callable[[nn.Module], Callable]] = {
    nn.ReLU: lambda m: ACTIVATIONS["relu"],
    nn.LeakyReLU: lambda m: leaky(m.negative_slope),
    nn.GELU: lambda m: ACTIVATIONS["gelu_tanh" if m.approximate == "tanh" else "gelu"],
    nn.Tanh: lambda m: ACTIVATIONS["tanh"],
    nn.Sigmoid: lambda m: ACTIVATIONS["sigmoid"],
    nn.SiLU: lambda m: ACTIVATIONS["silu"],
}
_ACT_FUNCTIONS: dict[Any, Callable] = {
    torch.relu: ACTIVATIONS["relu"],
    F.relu: ACTIVATIONS["relu"],
    torch.tanh: ACTIVATIONS["tanh"],
    torch.sigmoid: ACTIVATIONS["sigmoid"],
    F.silu: ACTIVATIONS["silu"],
}
_LEAVES = (nn.Linear, nn.LayerNorm, nn.BatchNorm1d, nn.Identity, nn.Dropout, nn.Flatten) + tuple(
    _ACT_MODULES
)


def _is_figlu(m: nn.Module) -> bool:
    """FiGLU of sigma-Asym networks (``x * sigmoid(x C^T)``, a fixed square buffer ``C``), by
    its name and buffer; the plan's numeric check confirms what its forward computes."""
    C = getattr(m, "C", None)
    return (
        type(m).__name__ == "FiGLU"
        and isinstance(C, Tensor)
        and C.dim() == 2
        and C.shape[0] == C.shape[1]
        and not getattr(m, "conv", False)
    )


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or _is_figlu(m) or super().is_leaf_module(m, qualname)


def _own_forward(m: nn.Module, base: type) -> bool:
    return type(m).forward is base.forward


def _module_step(m: nn.Module) -> Step | str:
    if m._forward_hooks or m._forward_pre_hooks:
        return f"{type(m).__name__} with a forward hook"
    if isinstance(m, nn.Linear):
        if _own_forward(m, nn.Linear):
            return LinearStep(m, asym=False)
        asym = callable(getattr(m, "effective_weight", None)) and all(
            isinstance(getattr(m, b, None), Tensor) for b in ("mask", "fixed")
        )
        return LinearStep(m, asym=True) if asym else f"{type(m).__name__} (custom forward)"
    if isinstance(m, nn.LayerNorm):
        if not _own_forward(m, nn.LayerNorm) or len(m.normalized_shape) != 1:
            return f"{type(m).__name__} over {tuple(m.normalized_shape)}"
        return LayerNormStep(m)
    if isinstance(m, nn.BatchNorm1d):
        if not _own_forward(m, nn.BatchNorm1d) or m.running_var is None:
            return f"{type(m).__name__} without running statistics"
        return BatchNormStep(m)
    for kind, make in _ACT_MODULES.items():
        if type(m) is kind:
            return ActStep(make(m))
    if _is_figlu(m):
        return GateStep(m.C)
    if type(m) in (nn.Identity, nn.Dropout):
        return IdentityStep()
    if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
        return FlattenStep()
    return type(m).__name__


def _node_step(node: fx.Node, model: nn.Module) -> Step | str:
    if node.op == "call_module":
        return _module_step(model.get_submodule(node.target))
    alone = len(node.args) == 1  # the input only: no positional options to misread
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS and alone and not node.kwargs:
        return ActStep(_ACT_FUNCTIONS[node.target])
    if node.op == "call_function" and node.target is F.gelu and alone:
        approx = node.kwargs.get("approximate", "none")
        return ActStep(ACTIVATIONS["gelu_tanh" if approx == "tanh" else "gelu"])
    flat = (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten
    )
    if flat and tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs:
        return FlattenStep()
    if node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid") and alone:
        return ActStep(ACTIVATIONS[node.target])
    name = getattr(node.target, "__name__", node.target)
    return f"{node.op} {name}"


@dataclass
class Plan:
    """The steps of a chain (input to outputs) and the kind of its loss head."""

    steps: list[Step]
    head: str

    def __post_init__(self):
        #: index of the first step with parameters: no pass goes further back than it
        self.first = next((i for i, s in enumerate(self.steps) if s.params), len(self.steps))

    def parameters(self) -> list[nn.Parameter]:
        return [p for s in self.steps for p in s.params]


def plan(model: nn.Module, objective: Any) -> Plan | str:
    """The model as a chain of steps, or the reason it is not one (a string)."""
    kind = head_kind(objective)
    if kind is None:
        return f"the loss {getattr(objective, 'name', objective)!s} is not a built-in classification or squared-error loss"
    layers = _sequential(model)
    if layers is not None:  # a plain nn.Sequential needs no tracing
        steps = [_module_step(m) for m in layers]
        bad = next((s for s in steps if isinstance(s, str)), None)
        return _checked(steps, kind) if bad is None else _not_a_layer(bad)
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure only means "not a chain"
        return f"torch.fx cannot trace the model ({type(e).__name__})"
    steps: list[Step] = []
    prev: fx.Node | None = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if prev is not None:
                return "the model takes more than one input"
            prev = node
            continue
        if node.op == "output":
            if node.args[0] is not prev:
                return "the model's output is not its last layer's tensor"
            break
        if node.op == "get_attr":
            return "the model reads its own tensors outside its layers"
        deps = [a for a in node.all_input_nodes]
        if deps != [prev] or len(prev.users) != 1:
            return "the model is not a chain (a value is used twice, as in a residual connection)"
        step = _node_step(node, model)
        if isinstance(step, str):
            return _not_a_layer(step)
        steps.append(step)
        prev = node
    return _checked(steps, kind)


def _not_a_layer(what: str) -> str:
    return f"{what} is not a layer with a hand-derived Hessian product"


def _sequential(model: nn.Module) -> list[nn.Module] | None:
    """The layers of a stock ``nn.Sequential`` (nested ones flattened), or None."""
    if type(model) is not nn.Sequential or model._forward_hooks or model._forward_pre_hooks:
        return None
    layers: list[nn.Module] = []
    for m in model:
        inner = _sequential(m) if isinstance(m, nn.Sequential) else [m]
        if inner is None:
            return None
        layers += inner
    return layers


def _checked(steps: list[Step], kind: str) -> Plan | str:
    if not any(isinstance(s, LinearStep) for s in steps):
        return "the model has no linear layer"
    # a parameter outside the chain (a Hessian coordinate the chain never touches) is fine:
    # its products are zero, as they are for autograd; a parameter used twice is not a chain
    seen = [id(p) for p in Plan(steps, kind).parameters()]
    if len(seen) != len(set(seen)):
        return "a parameter is used by two layers"
    return Plan(steps, kind)


# ----------------------------------------------------------------------------- products
@dataclass
class BatchState:
    """What one batch keeps at the operator's point: each step's ``keep``, the loss head's
    ``R{dz}`` map, the loss sum and its units."""

    keeps: list[dict]
    rdz: Callable[[Tensor], Tensor]
    loss: float
    units: int
    outputs: Tensor


def point(plan: Plan, inputs: Tensor, targets: Tensor) -> BatchState:
    """Forward and backward pass at the operator's point on one batch."""
    keeps: list[dict] = [{} for _ in plan.steps]
    with torch.no_grad():
        x = inputs
        for step, keep in zip(plan.steps, keeps):
            x = step.forward(x, keep)
        if x.dim() != 2:
            raise ValueError(f"outputs of shape {tuple(x.shape)}, not (N, C)")
        loss, dy, rdz = head(x, targets)
        first = plan.first
        for i in range(len(plan.steps) - 1, -1, -1):
            dy = plan.steps[i].backward(dy, keeps[i], need_dx=i > first)
            if i <= first:
                break
    return BatchState(keeps, rdz, float(loss), int(x.shape[0]), x)


def nbytes(state: BatchState) -> int:
    """Bytes a kept batch state holds (tensors counted once)."""
    seen: dict[int, int] = {}
    for keep in state.keeps:
        for t in keep.values():
            if isinstance(t, Tensor):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


def products(plan: Plan, state: BatchState, T: Tangents) -> Tangents:
    """``R{dL/dtheta}`` (the Hessian of this batch's loss sum times the tangents) for every
    chain parameter that has a tangent or gets an output, shape ``(b, *shape)``."""
    first = plan.first
    states: list[dict] = [{"need_dx": i > first} for i in range(len(plan.steps))]
    rxs: list[Tensor | None] = []
    rx: Tensor | None = None
    with torch.no_grad():
        for step, keep, st in zip(plan.steps, state.keeps, states):
            rxs.append(rx)
            rx = step.rforward(rx, T, keep, st)
        out: Tangents = {}
        if rx is None:
            return out
        rdy = state.rdz(rx)
        for i in range(len(plan.steps) - 1, first - 1, -1):
            rdy = plan.steps[i].rbackward(rdy, rxs[i], T, state.keeps[i], states[i], out)
    return out


#: rows of the first batch on which a plan's outputs are compared with the model's own
CHECK_ROWS = 64


def check_outputs(model: nn.Module, inputs: Tensor, state: BatchState) -> bool:
    """True when the chain's forward pass reproduces the model's own outputs (float rounding
    aside) on the first :data:`CHECK_ROWS` rows: a layer whose code the plan misread (a hook,
    a subclass) shows on any rows."""
    with torch.no_grad():
        ref = model(inputs[:CHECK_ROWS])
    ours = state.outputs[:CHECK_ROWS]
    if not isinstance(ref, Tensor) or ref.shape != ours.shape:
        return False
    tol = (1e-4 if ref.dtype in (torch.float32, torch.bfloat16, torch.float16) else 1e-10) * (
        1 + float(ref.abs().max())
    )
    return bool((ours - ref).abs().max() <= tol)


__all__ = ["Plan", "BatchState", "check_outputs", "nbytes", "plan", "point", "products"]
