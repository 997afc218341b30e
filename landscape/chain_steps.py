"""The layers of :mod:`landscape.chain_hvp`: each one's forward and backward pass at the
operator's point, and the two R-passes of a Hessian-vector product through it.

Notation: ``R{f} = d/dr f(theta + r v)`` at ``r = 0`` (Pearlmutter's R-operator); tangents
``T`` map ``id(parameter)`` to ``R{parameter}`` with a leading dimension of vectors, and every
per-product tensor has that leading dimension too. ``keep`` holds what a step needs at the
point (computed once per batch), ``state`` what its ``rforward`` hands to its ``rbackward``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import objectives as _obj

Tangents = dict[int, Tensor]  # id(parameter) -> tangent (b, *shape)

_SQRT_2_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_C = 0.044715


def _rows(x: Tensor, what: str) -> Tensor:
    """``x`` if it is ``(N, features)``: the R-passes of these layers assume rows of samples."""
    if x.dim() != 2:
        raise ValueError(f"{what} on a {x.dim()}-D input, not (N, features)")
    return x


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


# ----------------------------------------------------------------------------- activations
def _relu(u: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    return torch.relu(u), (u > 0).to(u.dtype), None


def leaky(slope: float) -> Callable:
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
    # in place where it can: every new tensor at the point is memory touched for the first time
    u2 = u * u
    phi = u2.mul(-0.5).exp_().mul_(_INV_SQRT_2PI)
    cdf = u.mul(1 / math.sqrt(2.0)).erf_().add_(1).mul_(0.5)
    y = u * cdf
    return y, cdf.addcmul_(u, phi), phi.mul_(u2.neg_().add_(2))


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


#: ``u -> (f(u), f'(u), f''(u))`` of the elementwise activations (None: f'' is zero)
ACTIVATIONS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor, Tensor | None]]] = {
    "relu": _relu,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
    "silu": _silu,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
}


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
    """``y = x W^T + b``; W-Asym layers use ``W * mask + fixed``.

    Fixed entries need no masking here: they are never coordinates of a ParamView, so their
    tangents arrive as zeros and their outputs are never read.
    """

    def __init__(self, m: nn.Linear, asym: bool):
        self.m, self.asym = m, asym
        self.weight, self.bias = m.weight, m.bias
        self.params = tuple(p for p in (m.weight, m.bias) if p is not None)

    def _w(self) -> Tensor:
        return (self.m.effective_weight() if self.asym else self.weight).detach()

    def forward(self, x: Tensor, keep: dict) -> Tensor:
        keep["x"], keep["w"] = _rows(x, "Linear"), self._w()
        b = None if self.bias is None else self.bias.detach()
        return F.linear(x, keep["w"], b)

    def backward(self, dy: Tensor, keep: dict, need_dx: bool) -> Tensor | None:
        keep["dy"] = dy
        return dy @ keep["w"] if need_dx else None

    def rforward(self, rx, T, keep, state):
        vw, vb = _tangent(T, self.weight), _tangent(T, self.bias)
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
            _put(out, self.weight, gw)
        _put(out, self.bias, rdy.sum(1))
        if not state.get("need_dx", True):
            return None
        rdx = torch.matmul(rdy, keep["w"])
        vw = _tangent(T, self.weight)
        return rdx if vw is None else _bmm(dy, vw, rdx)


class ActStep(Step):
    """An elementwise activation ``y = f(u)``: ``R{y} = f'(u) R{u}``, ``R{du} = f'(u) R{dy} + f''(u) dy R{u}``."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def forward(self, x, keep):
        y, keep["d1"], keep["d2"] = self.fn(x)
        return y

    def backward(self, dy, keep, need_dx):
        d2 = keep.pop("d2")  # a tensor of its own: scaled in place
        keep["d2dy"] = None if d2 is None else d2.mul_(dy)
        return keep["d1"] * dy

    def rforward(self, rx, T, keep, state):
        return None if rx is None else keep["d1"] * rx

    def rbackward(self, rdy, rx, T, keep, state, out):
        rdx = keep["d1"] * rdy
        if rx is not None and keep["d2dy"] is not None:
            rdx = torch.addcmul(rdx, keep["d2dy"], rx)
        return rdx


class GateStep(Step):
    """FiGLU, ``y = x * sigmoid(z)`` with ``z = x C^T`` and ``C`` fixed (sigma-Asym networks).

    ``R{y} = R{x} s + x s' R{z}`` with ``R{z} = R{x} C^T``; backward ``dx = dy s + g C`` with
    ``g = dy x s'``, so ``R{dx} = R{dy} s + dy s' R{z} + R{g} C`` and
    ``R{g} = R{dy} x s' + dy s' R{x} + dy x s'' R{z}`` (``s' = s(1-s)``, ``s'' = s'(1-2s)``).
    """

    def __init__(self, C: Tensor):
        self.C = C

    def forward(self, x, keep):
        C = self.C.to(_rows(x, "FiGLU").dtype)
        s = torch.sigmoid(x @ C.T)
        s1 = s * (1 - s)
        keep.update(C=C, s=s, s1=s1, x=x)
        return x * s

    def backward(self, dy, keep, need_dx):
        s, s1, x, C = keep["s"], keep["s1"], keep["x"], keep["C"]
        xs1 = x * s1
        dx = dy * s + (dy * xs1) @ C
        keep.update(xs1=xs1, dys1=dy * s1, dyxs2=dy * xs1 * (1 - 2 * s))
        for k in ("s1", "x"):
            keep.pop(k)
        return dx

    def rforward(self, rx, T, keep, state):
        if rx is None:
            return None
        state["rz"] = rz = torch.matmul(rx, keep["C"].T)
        return (rx * keep["s"]).addcmul_(keep["xs1"], rz)

    def rbackward(self, rdy, rx, T, keep, state, out):
        rdx = rdy * keep["s"]
        rg = rdy * keep["xs1"]
        if rx is not None:
            rz = state["rz"]
            rdx.addcmul_(keep["dys1"], rz)
            rg.addcmul_(keep["dys1"], rx).addcmul_(keep["dyxs2"], rz)
        rdx.view(-1, rdx.shape[-1]).addmm_(rg.reshape(-1, rg.shape[-1]), keep["C"])
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
        var, mean = torch.var_mean(_rows(x, "LayerNorm"), dim=-1, keepdim=True, correction=0)
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
        s = torch.rsqrt(self.m.running_var + self.m.eps).to(_rows(x, "BatchNorm1d").dtype)
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
def head(z: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """``(loss sum, dL/dz, rz -> R{dL/dz})`` of cross-entropy (integer targets) or squared error."""
    if targets.is_floating_point():
        diff = z - targets.reshape(z.shape).to(z.dtype)
        return (diff * diff).sum(), 2 * diff, lambda rz: 2 * rz
    logp = torch.log_softmax(z, dim=1)
    p = logp.exp()
    targets = targets.long()
    loss = -logp.gather(1, targets[:, None]).sum()
    dz = p.clone()
    dz[torch.arange(z.shape[0], device=z.device), targets] -= 1

    def rdz(rz: Tensor) -> Tensor:
        prz = p * rz
        return prz - p * prz.sum(-1, keepdim=True)

    return loss, dz, rdz


def head_kind(objective: Any) -> str | None:
    """Which built-in loss (by its loss function) :func:`head` implements for ``objective``, or None."""
    loss = getattr(objective, "loss", None)
    return {
        _obj._classification_loss: "classification",
        _obj._squared_error_loss: "squared_error",
        _obj._auto_loss: "auto",
    }.get(loss)
