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
  ``nn.SiLU`` (as modules or ``torch``/``F`` functions),
- ``nn.Identity``, ``nn.Dropout`` (eval: identity), ``flatten(1)`` / ``nn.Flatten()``,

ending in ``(N, C)`` outputs, with the built-in ``classification``, ``squared_error`` or
``auto`` objective. Anything else (residual connections, convolutions, FiGLU, attention, a
user loss, hooks) is not a chain: :class:`~landscape.hessian_operator.HessianOperator` then
uses double backward and says why. A plan is also checked numerically: its forward pass
must reproduce the model's outputs on the first batch, or it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from . import objectives as _obj

Tangents = dict[int, Tensor]  # id(parameter) -> tangent (b, *shape)

_SQRT_2_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


# ----------------------------------------------------------------------------- activations
def _relu(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    return torch.relu(u), (u > 0).to(u.dtype), None


def _leaky(slope: float) -> Callable:
    def f(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        d1 = (u > 0).to(u.dtype) * (1 - slope) + slope
        return F.leaky_relu(u, slope), d1, None

    return f


def _tanh(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    y = torch.tanh(u)
    d1 = 1 - y * y
    return y, d1, -2 * y * d1


def _sigmoid(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(u)
    d1 = s * (1 - s)
    return s, d1, d1 * (1 - 2 * s)


def _silu(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    s = torch.sigmoid(u)
    d1 = s * (1 + u * (1 - s))
    return u * s, d1, s * (1 - s) * (2 + u * (1 - 2 * s))


def _gelu(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    u2 = u * u
    phi = torch.exp(u2 * -0.5).mul_(_INV_SQRT_2PI)
    cdf = torch.erf(u * (1 / math.sqrt(2.0))).add_(1).mul_(0.5)
    return u * cdf, torch.addcmul(cdf, u, phi), phi.mul_(u2.neg_().add_(2))


def _gelu_tanh(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    g = _SQRT_2_PI * (u + _GELU_C * u**3)
    g1 = _SQRT_2_PI * (1 + 3 * _GELU_C * u * u)
    g2 = _SQRT_2_PI * 6 * _GELU_C * u
    t = torch.tanh(g)
    sech2 = 1 - t * t
    y = 0.5 * u * (1 + t)
    d1 = 0.5 * (1 + t) + 0.5 * u * sech2 * g1
    d2 = sech2 * (g1 + 0.5 * u * (g2 - 2 * t * g1 * g1))
    return y, d1, d2


# ----------------------------------------------------------------------------- steps
class Step:
    """One layer of the chain: its forward pass, the backward pass at the operator's point
    (kept), and the two R-passes of a product. ``keep`` is the per-batch state of the point;
    ``state`` the per-product state ``rforward`` hands to ``rbackward``."""

    params: tuple[nn.Parameter, ...] = ()

    def forward(self, x: Tensor, keep: dict) -> Tensor:
        raise NotImplementedError

    def backward(self, dy: Tensor, keep: dict, need_dx: bool) -> Tensor | None:
        raise NotImplementedError

    def rforward(self, rx: Tensor | None, T: Tangents, keep: dict, state: dict) -> Tensor | None:
        raise NotImplementedError

    def rbackward(
        self, rdy: Tensor, rx: Tensor | None, T: Tangents, keep: dict, state: dict, out: Tangents
    ) -> Tensor | None:
        raise NotImplementedError


def _put(out: Tangents, p: nn.Parameter | None, value: Tensor | None) -> None:
    if p is None or value is None or not p.requires_grad:
        return
    key = id(p)
    out[key] = value if key not in out else out[key] + value


def _tangent(T: Tangents, p: nn.Parameter | None) -> Tensor | None:
    return None if p is None else T.get(id(p))


def _bmm(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """``a @ b`` over a leading dimension of vectors (a 2-D factor is shared by every vector),
    added into ``out`` when given; one vector goes through a plain ``mm``."""
    nb = max(a.shape[0] if a.dim() == 3 else 1, b.shape[0] if b.dim() == 3 else 1)
    if nb == 1:
        a2, b2 = (a[0] if a.dim() == 3 else a), (b[0] if b.dim() == 3 else b)
        if out is None:
            return torch.mm(a2, b2)[None]
        out[0].addmm_(a2, b2)
        return out
    a3 = a if a.dim() == 3 else a.expand(nb, *a.shape)
    b3 = b if b.dim() == 3 else b.expand(nb, *b.shape)
    return torch.bmm(a3, b3) if out is None else out.baddbmm_(a3, b3)


class LinearStep(Step):
    """``y = x W^T + b``; W-Asym layers use ``W * mask + fixed`` (fixed entries take no tangent)."""

    def __init__(self, m: nn.Linear, asym: bool):
        self.m, self.asym = m, asym
        self.weight, self.bias = m.weight, m.bias
        self.params = tuple(p for p in (m.weight, m.bias) if p is not None)

    def _w(self) -> Tensor:
        return (self.m.effective_weight() if self.asym else self.weight).detach()

    def forward(self, x: Tensor, keep: dict) -> Tensor:
        keep["x"], keep["w"] = x, self._w()
        b = None if self.bias is None else self.bias.detach()
        return F.linear(x, keep["w"], b)

    def backward(self, dy: Tensor, keep: dict, need_dx: bool) -> Tensor | None:
        keep["dy"] = dy
        return dy @ keep["w"] if need_dx else None

    def _vw(self, T: Tangents) -> Tensor | None:
        v = _tangent(T, self.weight)
        return v * self.m.mask if v is not None and self.asym else v

    def rforward(self, rx, T, keep, state):
        vw, vb = self._vw(T), _tangent(T, self.bias)
        ry = None
        if vw is not None:  # x R{W}^T + R{b} in one product
            x = keep["x"]
            if vw.shape[0] == 1:
                ry = (x @ vw[0].T if vb is None else torch.addmm(vb[0], x, vw[0].T))[None]
            else:
                x3 = x.expand(vw.shape[0], *x.shape)
                ry = torch.bmm(x3, vw.mT) if vb is None else torch.baddbmm(vb[:, None], x3, vw.mT)
        elif vb is not None:
            ry = vb[:, None, :].expand(-1, keep["x"].shape[0], -1).clone()
        if rx is not None:  # + R{x} W^T, the vectors folded into the rows of one product
            w = keep["w"].T
            if ry is None:
                ry = torch.matmul(rx, w)
            else:
                ry.view(-1, ry.shape[-1]).addmm_(rx.reshape(-1, rx.shape[-1]), w)
        return ry

    def rbackward(self, rdy, rx, T, keep, state, out):
        x, dy = keep["x"], keep["dy"]
        if self.weight.requires_grad:
            gw = _bmm(rdy.mT, x)
            if rx is not None:
                gw = _bmm(dy.T, rx, gw)
            _put(out, self.weight, gw * self.m.mask if self.asym else gw)
        _put(out, self.bias, rdy.sum(1))
        if not state.get("need_dx", True):
            return None
        rdx = torch.matmul(rdy, keep["w"])
        vw = self._vw(T)
        return rdx if vw is None else _bmm(dy, vw, rdx)


class ActStep(Step):
    """An elementwise activation ``y = f(u)``: ``R{y} = f'(u) R{u}``, ``R{du} = f'(u) R{dy} + f''(u) dy R{u}``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def forward(self, x, keep):
        y, keep["d1"], keep["d2"] = self.fn(x)
        return y

    def backward(self, dy, keep, need_dx):
        d2 = keep.pop("d2")
        keep["d2dy"] = None if d2 is None else d2 * dy
        return keep["d1"] * dy

    def rforward(self, rx, T, keep, state):
        return None if rx is None else keep["d1"] * rx

    def rbackward(self, rdy, rx, T, keep, state, out):
        rdx = keep["d1"] * rdy
        if rx is not None and keep["d2dy"] is not None:
            rdx = torch.addcmul(rdx, keep["d2dy"], rx)
        return rdx


class IdentityStep(Step):
    def forward(self, x, keep):
        return x

    def backward(self, dy, keep, need_dx):
        return dy

    def rforward(self, rx, T, keep, state):
        return rx

    def rbackward(self, rdy, rx, T, keep, state, out):
        return rdy


class FlattenStep(Step):
    """``x.flatten(1)``."""

    def forward(self, x, keep):
        keep["shape"] = x.shape
        return x.flatten(1)

    def backward(self, dy, keep, need_dx):
        return dy.reshape(keep["shape"]) if need_dx else None

    def rforward(self, rx, T, keep, state):
        return None if rx is None else rx.flatten(2)

    def rbackward(self, rdy, rx, T, keep, state, out):
        return rdy.reshape(rdy.shape[0], *keep["shape"])


class LayerNormStep(Step):
    """``y = gamma (x - mean) r + beta`` over the last dimension, ``r = (var + eps)^-1/2``.

    With ``xh`` the normalised input, ``A = r gamma``, ``s = mean(xh R{x})`` and
    ``R{xh} = r (R{x} - mean(R{x}) - xh s)``: ``R{y} = A R{x} - A mean(R{x}) - A xh s +
    xh R{gamma} + R{beta}``. Backward, with ``g = dy gamma``, ``m1 = mean(g xh)`` and
    ``dx = r (g - mean(g) - xh m1)``, the product's pass is written so that every term is a
    kept tensor times a per-row scalar (only the per-row means touch the vectors twice):
    ``R{dx} = A R{dy} + r dy R{gamma} - r^2 m1 R{x} + c0 + c1 xh - r s dx``, with
    ``c0 = -r mean(R{g}) + r^2 m1 mean(R{x})``, ``c1 = -r R{m1} + r^2 m1 s``,
    ``R{g} = R{dy} gamma + dy R{gamma}``, ``R{m1} = mean(R{g} xh) + mean(g R{xh})``.
    """

    def __init__(self, m: nn.LayerNorm):
        self.eps = m.eps
        self.gamma, self.beta = m.weight, m.bias
        self.params = tuple(p for p in (m.weight, m.bias) if p is not None)

    def forward(self, x, keep):
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, correction=0)
        r = torch.rsqrt(var + self.eps)
        xh = (x - mean) * r
        keep["xh"], keep["r"] = xh, r
        y = xh
        if self.gamma is not None:
            y = y * self.gamma.detach()
        if self.beta is not None:
            y = y + self.beta.detach()
        return y

    def backward(self, dy, keep, need_dx):
        xh, r = keep["xh"], keep["r"]
        gamma = None if self.gamma is None else self.gamma.detach()
        g = dy * gamma if gamma is not None else dy
        m1 = (g * xh).mean(-1, keepdim=True)
        dx = r * (g - g.mean(-1, keepdim=True) - xh * m1)
        a = r * gamma if gamma is not None else r.expand_as(xh)
        bdy = r * dy
        keep.update(
            g=g,
            m0=g.mean(-1, keepdim=True),
            m1=m1,
            dx=dx,
            a=a,
            axh=a * xh,
            dy=dy,
            bdy=bdy,
            bdy_xh=bdy * xh,
            dy_xh=dy * xh,
            gamma_xh=gamma * xh if gamma is not None else xh,
            r2m1=r * r * m1,
        )
        return dx

    def rforward(self, rx, T, keep, state):
        xh, a = keep["xh"], keep["a"]
        vg, vb = _tangent(T, self.gamma), _tangent(T, self.beta)
        ry = None
        if rx is not None:
            d = xh.shape[-1]
            state["mrx"] = mrx = rx.mean(-1, keepdim=True)
            state["s"] = s = (rx * xh).sum(-1, keepdim=True) / d
            state["tg"] = (rx * keep["g"]).sum(-1, keepdim=True) / d
            ry = (a * rx).addcmul_(a, mrx, value=-1).addcmul_(keep["axh"], s, value=-1)
        if vg is not None:
            ry = xh * vg[:, None, :] if ry is None else ry.addcmul_(xh, vg[:, None, :])
        if vb is not None:
            ry = (
                vb[:, None, :].expand(-1, xh.shape[0], -1).clone()
                if ry is None
                else ry.add_(vb[:, None, :])
            )
        return ry

    def rbackward(self, rdy, rx, T, keep, state, out):
        r, xh, d = keep["r"], keep["xh"], keep["xh"].shape[-1]
        vg = _tangent(T, self.gamma)
        gamma = None if self.gamma is None else self.gamma.detach()
        # per-row means of R{g} = R{dy} gamma + dy R{gamma} and of R{g} xh, shape (b, N, 1)
        mean_rg = (rdy @ gamma if gamma is not None else rdy.sum(-1))[..., None] / d
        mean_rg_xh = (rdy * keep["gamma_xh"]).sum(-1, keepdim=True) / d
        if vg is not None:
            mean_rg = mean_rg + (keep["dy"] @ vg.T).T[..., None] / d
            mean_rg_xh = mean_rg_xh + (keep["dy_xh"] @ vg.T).T[..., None] / d
        rdx = rdy * keep["a"]
        if vg is not None:
            rdx.addcmul_(keep["bdy"], vg[:, None, :])
        c0, c1 = -r * mean_rg, -r * mean_rg_xh
        if rx is not None:
            mrx, s, r2m1 = state["mrx"], state["s"], keep["r2m1"]
            c1 = c1 - r * r * (state["tg"] - mrx * keep["m0"] - s * keep["m1"]) + r2m1 * s
            c0 = c0 + r2m1 * mrx
            rdx.addcmul_(rx, r2m1, value=-1).addcmul_(keep["dx"], r * s, value=-1)
        rdx.add_(c0).addcmul_(xh, c1)
        if self.gamma is not None and self.gamma.requires_grad:
            gamma_out = (rdy * xh).sum(1)
            if rx is not None:  # sum over rows of dy R{xh} = r dy (R{x} - mean(R{x}) - xh s)
                gamma_out += (rx * keep["bdy"]).sum(1)
                gamma_out -= (state["mrx"].mT @ keep["bdy"])[:, 0]
                gamma_out -= (state["s"].mT @ keep["bdy_xh"])[:, 0]
            _put(out, self.gamma, gamma_out)
        _put(out, self.beta, rdy.sum(1))
        return rdx


class BatchNormStep(Step):
    """BatchNorm1d in eval mode on ``(N, C)``: ``y = gamma (x - mu) s + beta``, ``s = (var + eps)^-1/2`` fixed."""

    def __init__(self, m: nn.BatchNorm1d):
        self.m = m
        self.gamma, self.beta = m.weight, m.bias
        self.params = tuple(p for p in (m.weight, m.bias) if p is not None)

    def forward(self, x, keep):
        s = torch.rsqrt(self.m.running_var + self.m.eps).to(x.dtype)
        xh = (x - self.m.running_mean.to(x.dtype)) * s
        a = s * self.gamma.detach() if self.gamma is not None else s
        keep.update(s=s, xh=xh, a=a)
        return xh * self.gamma.detach() + self.beta.detach() if self.gamma is not None else xh

    def backward(self, dy, keep, need_dx):
        keep["dy"] = dy
        return dy * keep["a"]

    def rforward(self, rx, T, keep, state):
        vg, vb = _tangent(T, self.gamma), _tangent(T, self.beta)
        ry = None if rx is None else rx * keep["a"]
        if vg is not None:
            ry = _add(ry, keep["xh"] * vg[:, None, :])
        if vb is not None:
            ry = _add(ry, vb[:, None, :])
        return ry

    def rbackward(self, rdy, rx, T, keep, state, out):
        dy, s, xh = keep["dy"], keep["s"], keep["xh"]
        rdx = rdy * keep["a"]
        vg = _tangent(T, self.gamma)
        if vg is not None:
            rdx = rdx + dy * (s * vg[:, None, :])
        gamma_out = (rdy * xh).sum(1)
        if rx is not None:
            gamma_out = gamma_out + (dy * rx * s).sum(1)
        _put(out, self.gamma, gamma_out)
        _put(out, self.beta, rdy.sum(1))
        return rdx


# ----------------------------------------------------------------------------- losses
def _head(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """``(loss sum, dL/dz, rz -> R{dL/dz})`` of cross-entropy (integer targets) or squared error."""
    if targets.is_floating_point():
        diff = z - targets.reshape(z.shape).to(z.dtype)
        return (diff * diff).sum(), 2 * diff, lambda rz: 2 * rz
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    loss = -logp.gather(1, targets[:, None]).sum()
    dz = p.clone()
    dz[torch.arange(z.shape[0], device=z.device), targets] -= 1

    def rdz(rz: Tensor) -> Tensor:
        prz = p * rz
        return prz - p * prz.sum(-1, keepdim=True)

    return loss, dz, rdz


#: the built-in losses (by their loss functions) the hand-derived head implements
def _head_kind(objective: Any) -> str | None:
    loss = getattr(objective, "loss", None)
    return {
        _obj._classification_loss: "classification",
        _obj._squared_error_loss: "squared_error",
        _obj._auto_loss: "auto",
    }.get(loss)


# ----------------------------------------------------------------------------- planning
_ACT_MODULES: dict[type, Callable[[nn.Module], Callable]] = {
    nn.ReLU: lambda m: _relu,
    nn.LeakyReLU: lambda m: _leaky(m.negative_slope),
    nn.GELU: lambda m: _gelu_tanh if m.approximate == "tanh" else _gelu,
    nn.Tanh: lambda m: _tanh,
    nn.Sigmoid: lambda m: _sigmoid,
    nn.SiLU: lambda m: _silu,
}
_ACT_FUNCTIONS: dict[Any, Callable] = {
    torch.relu: _relu,
    F.relu: _relu,
    torch.tanh: _tanh,
    torch.sigmoid: _sigmoid,
    F.silu: _silu,
}
_LEAVES = (nn.Linear, nn.LayerNorm, nn.BatchNorm1d, nn.Identity, nn.Dropout, nn.Flatten) + tuple(
    _ACT_MODULES
)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _own_forward(m: nn.Module, base: type) -> bool:
    return type(m).forward is base.forward and not (m._forward_hooks or m._forward_pre_hooks)


def _module_step(m: nn.Module) -> Step | str:
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
        if type(m) is kind and not (m._forward_hooks or m._forward_pre_hooks):
            return ActStep(make(m))
    if type(m) in (nn.Identity, nn.Dropout):
        return IdentityStep()
    if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
        return FlattenStep()
    return type(m).__name__


def _node_step(node: fx.Node, model: nn.Module) -> Step | str:
    if node.op == "call_module":
        return _module_step(model.get_submodule(node.target))
    if node.op == "call_function" and node.target in _ACT_FUNCTIONS and not node.kwargs:
        return ActStep(_ACT_FUNCTIONS[node.target])
    if node.op == "call_function" and node.target is F.gelu:
        approx = node.kwargs.get("approximate", "none")
        return ActStep(_gelu_tanh if approx == "tanh" else _gelu)
    flat = (node.op == "call_method" and node.target == "flatten") or (
        node.op == "call_function" and node.target is torch.flatten
    )
    if flat and tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs:
        return FlattenStep()
    if node.op == "call_method" and node.target in ("relu", "tanh", "sigmoid") and not node.kwargs:
        return ActStep({"relu": _relu, "tanh": _tanh, "sigmoid": _sigmoid}[node.target])
    name = getattr(node.target, "__name__", node.target)
    return f"{node.op} {name}"


@dataclass
class Plan:
    """The steps of a chain (input to outputs) and the kind of its loss head."""

    steps: list[Step]
    head: str

    def parameters(self) -> list[nn.Parameter]:
        return [p for s in self.steps for p in s.params]


def plan(model: nn.Module, objective: Any) -> Plan | str:
    """The model as a chain of steps, or the reason it is not one (a string)."""
    head = _head_kind(objective)
    if head is None:
        return f"the loss {getattr(objective, 'name', objective)!s} is not a built-in classification or squared-error loss"
    layers = _sequential(model)
    if layers is not None:  # a plain nn.Sequential needs no tracing
        steps = [_module_step(m) for m in layers]
        bad = next((s for s in steps if isinstance(s, str)), None)
        return _checked(steps, head) if bad is None else _not_a_layer(bad)
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
    return _checked(steps, head)


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


def _checked(steps: list[Step], head: str) -> Plan | str:
    if not any(isinstance(s, LinearStep) for s in steps):
        return "the model has no linear layer"
    # a parameter outside the chain (a Hessian coordinate the chain never touches) is fine:
    # its products are zero, as they are for autograd; a parameter used twice is not a chain
    seen = [id(p) for p in Plan(steps, head).parameters()]
    if len(seen) != len(set(seen)):
        return "a parameter is used by two layers"
    return Plan(steps, head)


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
        loss, dy, rdz = _head(x, targets)
        first = _first_with_params(plan)
        for i in range(len(plan.steps) - 1, -1, -1):
            dy = plan.steps[i].backward(dy, keeps[i], need_dx=i > first)
            if i <= first:
                break
    return BatchState(keeps, rdz, float(loss), int(x.shape[0]), x)


def _first_with_params(plan: Plan) -> int:
    for i, s in enumerate(plan.steps):
        if s.params:
            return i
    return len(plan.steps)


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
    first = _first_with_params(plan)
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
