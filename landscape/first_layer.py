"""The first-layer shortcut for grids of parameter points.

On the grid ``theta = theta0 + sum_k a_k d_k`` the first layer's output is affine in the
coordinates: for a Linear or Conv2d layer with effective weight ``W0`` and bias ``b0``
(W-Asym: ``W0 = W * M + F``, and directions are zero on fixed entries, so
``(W + a D) * M + F = W0 + a D``),

    layer(x; W0 + sum_k a_k D_k, b0 + sum_k a_k e_k) = P0 + sum_k a_k P_k,
    P0 = layer(x; W0, b0),  P_k = layer(x; D_k, e_k).

The products are computed once per resident data batch and reused at every grid point;
the layer's forward is replaced by the combination, which costs one elementwise pass
instead of a matmul or convolution.

When it applies (checked numerically on a probe batch, otherwise :class:`FirstLayerShortcut`
reports a reason and nothing is patched): the first module entered in the forward pass
that owns parameters or BatchNorm statistics is an ``nn.Linear`` or ``nn.Conv2d`` (or a
subclass computing ``layer(x; effective_weight(), bias)``), it runs once per forward, its
input does not change when the parameters move along the directions, and the combination
reproduces the layer's own output at ``theta0`` and at ``theta0 + sum_k d_k``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .directions import effective_tensors
from .evaluation import eval_mode
from .params import ParamView, is_state_buffer


def _owns_state(model: nn.Module, prefix: str, module: nn.Module) -> bool:
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        return True
    return any(
        is_state_buffer(model, f"{prefix}.{b}" if prefix else b)
        for b, _ in module.named_buffers(recurse=False)
    )


def _layer_kind(module: nn.Module) -> str | None:
    custom = callable(getattr(module, "effective_weight", None))
    if isinstance(module, nn.Linear) and (type(module).forward is nn.Linear.forward or custom):
        return "linear"
    if isinstance(module, nn.Conv2d) and (type(module).forward is nn.Conv2d.forward or custom):
        return "conv2d"
    return None


class FirstLayerShortcut:
    """Replaces the first layer's output by ``P0 + sum_k a_k P_k`` while installed.

    ``set_point(coeffs)`` tells it the current grid coordinates (the caller writes the same
    point into the model's parameters, so every other layer sees it too). Products are
    cached per input batch for the batches listed in ``resident`` (tensors that stay alive
    and unchanged), up to ``cache_bytes``; other inputs are computed plainly.
    """

    def __init__(
        self,
        model: nn.Module,
        view: ParamView,
        vectors: Tensor,
        probe: Tensor,
        resident: Iterable[Tensor] = (),
        cache_bytes: int = 2 * 1024**3,
    ):
        self.model, self.view, self.vectors = model, view, vectors
        self.enabled, self.reason = False, ""
        self.module: nn.Module | None = None
        self.name = ""
        self.cache: dict[tuple, list[Tensor]] = {}
        self.cache_bytes, self.used_bytes = int(cache_bytes), 0
        self.allowed = {self._key(x) for x in resident}
        self.coeffs: list[float] = [0.0] * vectors.shape[0]
        self._current: tuple | None = None
        self._handles: list = []
        self._setup(probe)

    @staticmethod
    def _key(x: Tensor) -> tuple:
        return (x.data_ptr(), tuple(x.shape), x.dtype, str(x.device))

    # -- detection ---------------------------------------------------------------------
    def _trace(self, probe: Tensor) -> tuple[list[tuple[str, nn.Module]], dict[str, list[Tensor]]]:
        order, inputs, handles = [], {}, []
        for name, m in self.model.named_modules():

            def pre(mod, args, name=name):
                order.append((name, mod))
                if args and isinstance(args[0], Tensor):
                    inputs.setdefault(name, []).append(args[0].detach().clone())

            handles.append(m.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                self.model(probe)
        finally:
            for h in handles:
                h.remove()
        return order, inputs

    @torch.no_grad()
    def _setup(self, probe: Tensor) -> None:
        model = self.model
        theta0 = self.view.get()
        with eval_mode(model):
            try:
                order, inputs = self._trace(probe)
                first = next(((n, m) for n, m in order if _owns_state(model, n, m)), None)
                if first is None:
                    self.reason = "no layer with parameters was called"
                    return
                name, module = first
                kind = _layer_kind(module)
                if kind is None or not name:
                    self.reason = f"the first layer ({name or 'the model itself'}: {type(module).__name__}) is not a Linear or Conv2d layer"
                    return
                if len(inputs.get(name, [])) != 1:
                    self.reason = f"the first layer {name} runs {len(inputs.get(name, []))} times per forward pass"
                    return
                self.name, self.module, self.kind = name, module, kind
                self._capture_base()
                x0 = inputs[name][0]
                # the layer's input must not move with the parameters (nothing trainable before it)
                shifted = theta0 + self.vectors.sum(0)
                self.view.set_(shifted)
                _, moved = self._trace(probe)
                if not torch.equal(moved.get(name, [None])[0], x0):
                    self.reason = f"the input of the first layer {name} depends on parameters that the directions move"
                    return
                # the combination must reproduce the layer's own output, at theta0 + sum_k d_k ...
                if not self._matches(
                    module(x0), self._combine(self._products(x0), [1.0] * self.vectors.shape[0])
                ):
                    self.reason = f"the first layer {name} ({type(module).__name__}) is not affine in its weight and bias"
                    return
                self.view.set_(theta0)
                # ... and at theta0
                if not self._matches(module(x0), self._products(x0)[0]):
                    self.reason = f"the first layer {name} ({type(module).__name__}) does not compute layer(x; weight, bias)"
                    return
                self.enabled, self.reason = True, f"first layer {name} ({type(module).__name__})"
            finally:
                self.view.set_(theta0)

    @staticmethod
    def _matches(a: Tensor, b: Tensor) -> bool:
        return a.shape == b.shape and bool(
            torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()) + 1e-7)
        )

    def _capture_base(self) -> None:
        eff = effective_tensors(self.model)
        m = self.module
        self.w0 = eff[f"{self.name}.weight"].detach().clone()
        self.b0 = None if m.bias is None else eff[f"{self.name}.bias"].detach().clone()
        self.dw, self.db = [], []
        for k in range(self.vectors.shape[0]):
            full = self.view.unflatten(self.vectors[k])
            self.dw.append(
                full.get(f"{self.name}.weight", torch.zeros_like(self.w0)).to(self.w0.dtype)
            )
            self.db.append(
                None
                if self.b0 is None
                else full.get(f"{self.name}.bias", torch.zeros_like(self.b0)).to(self.b0.dtype)
            )

    # -- evaluation --------------------------------------------------------------------
    def _apply(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        return self.module._conv_forward(x, w, b)

    def _products(self, x: Tensor) -> list[Tensor]:
        return [self._apply(x, self.w0, self.b0)] + [
            self._apply(x, w, b) for w, b in zip(self.dw, self.db)
        ]

    @staticmethod
    def _combine(products: list[Tensor], coeffs: list[float]) -> Tensor:
        out = None  # always a fresh tensor: later layers may work in place on it
        for p, a in zip(products[1:], coeffs):
            if a != 0.0:
                out = torch.add(products[0], p, alpha=a) if out is None else out.add_(p, alpha=a)
        return products[0].clone() if out is None else out

    def set_point(self, coeffs: Iterable[float]) -> None:
        self.coeffs = [float(a) for a in coeffs]

    def _root_pre(self, module, args) -> None:
        x = args[0] if args and isinstance(args[0], Tensor) else None
        self._current = self._key(x) if x is not None else None

    def _forward(self, x: Tensor) -> Tensor:
        key = self._current
        products = self.cache.get(key) if key is not None else None
        if products is None and key in self.allowed:
            products = self._products(x)
            need = sum(p.numel() * p.element_size() for p in products)
            if self.used_bytes + need <= self.cache_bytes:
                self.cache[key], self.used_bytes = products, self.used_bytes + need
        if products is None:
            # not cacheable (host-resident data or cache full): the layer as it is, at the current parameters
            return type(self.module).forward(self.module, x)
        if tuple(products[0].shape[:1]) != tuple(x.shape[:1]):
            return type(self.module).forward(self.module, x)
        return self._combine(products, self.coeffs)

    def install(self) -> None:
        if not self.enabled or self._handles:
            return
        self.module.forward = self._forward  # instance attribute shadows the class's forward
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.module is not None and "forward" in self.module.__dict__:
            del self.module.forward
        self.cache.clear()
        self.used_bytes = 0
