"""The one Hessian-vector-product operator, and the model-level curvature functions.

The Hessian is that of the exact sample-mean loss over the whole data,

    L(theta) = (1/N) sum_{i=1..N} l(f(x_i; theta), y_i),        H = d^2 L / d theta^2,

with ``l`` the per-sample loss of :mod:`landscape.evaluation` (cross-entropy for integer
targets, squared error for float targets), the model in eval mode (BatchNorm uses its
running statistics) and ``theta`` the coordinates of a :class:`~landscape.params.ParamView`:
all trainable entries or a chosen subset, never the fixed entries of W-Asym layers.
Batches of any sizes give the same ``H``: each batch contributes the Hessian of its
*sum* of losses, and the total is divided by ``N`` once.

Hessian-vector products use double backward (``autograd.grad`` of the gradient with
``create_graph=True``). Measured on 2 CPU cores (16.5k-parameter MLP, 2,048 samples):
double backward 7 ms per product, forward-over-reverse (``torch.func.jvp`` of
``torch.func.grad``) 8-10 ms, and double backward through a gradient graph built once and
reused 3-4 ms. So by default the gradient graph of every batch is built once and kept
(``cache="auto"``: when its estimated size fits :data:`CACHE_BYTES_CPU` /
a quarter of free GPU memory), otherwise rebuilt per product. Several vectors at once
(``matmat``) go through one batched backward (``is_grads_batched``, i.e. ``vmap``), in
blocks of ``block`` vectors.
"""

from __future__ import annotations

import copy
import dataclasses
import time

import numpy as np
import torch
from torch import Tensor, nn

from .data import Batches, Data, as_batches, resolve_device
from .errors import UserError
from .evaluation import eval_mode, evaluate, loss_sum
from .lanczos import (
    EigenResult,
    SpectralDensity,
    TraceEstimate,
    default_max_steps,
    hutchinson,
    hutchpp,
    lanczos_eigen,
    slq,
)
from .params import ParamView, Selection

#: largest gradient graph kept between products on the CPU (bytes)
CACHE_BYTES_CPU = 1 * 1024**3
METHODS = ("double-backward", "forward-over-reverse")


class HessianOperator:
    """``v -> H v`` for the Hessian of the sample-mean loss of ``model`` on ``data``.

    ``params`` selects a subset of parameters (see :class:`ParamView`). The operator is a
    snapshot: it is defined at the parameters the model holds when it is created; do not
    change the model while using it. ``hvps`` counts Hessian-vector products (one per
    vector, however batched). The model's train/eval flag is left as found.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        params: Selection = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        method: str = "double-backward",
        cache: bool | str = "auto",
        block: int | None = None,
    ):
        if method not in METHODS:
            raise UserError(
                f"unknown Hessian-vector-product method {method!r}: use {' or '.join(METHODS)}"
            )
        first = next(iter(model.parameters()), None)
        if first is None:
            raise UserError("the model has no parameters: nothing to take a Hessian of")
        dev = resolve_device(device) if device is not None else first.device
        if first.device != dev:
            model = copy.deepcopy(model).to(dev)  # never move the caller's model
        self.model = model
        self.view = ParamView(model, select=params)
        self.batches: Batches = as_batches(
            data, device=dev, batch_size=batch_size, dtype=self.view.dtype
        )
        self.num_samples = self.batches.num_samples
        # batching vectors through vmap measured slower per vector on the CPU (see docs/hessian.md)
        self.method, self.block = (
            method,
            max(1, int(block if block is not None else (8 if dev.type == "cuda" else 1))),
        )
        self.hvps = 0
        self._params = self.view.params
        # one pass, before any graph is built: checks the labels against the outputs and the loss for NaN (UserError)
        self.loss = evaluate(model, self.batches).loss
        self._graphs = self._build_cache(cache) if method == "double-backward" else None

    # -- properties --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.view.numel, self.view.numel)

    @property
    def n(self) -> int:
        return self.view.numel

    @property
    def dtype(self) -> torch.dtype:
        return self.view.dtype

    @property
    def device(self) -> torch.device:
        return self.view.device

    @property
    def cached(self) -> bool:
        """True when gradient graphs are kept between products."""
        return self._graphs is not None

    # -- products ----------------------------------------------------------------------------
    def matvec(self, v: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H v`` for one coordinate vector (a NumPy input gives a NumPy output)."""
        if isinstance(v, np.ndarray):
            return (
                self.matvec(torch.as_tensor(v.reshape(-1), dtype=self.dtype, device=self.device))
                .cpu()
                .numpy()
            )
        return self.matmat(v.reshape(1, -1))[0]

    def matmat(self, V: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``(H v_1, ..., H v_b)`` for the rows of ``V`` (shape ``(b, n)``)."""
        if isinstance(V, np.ndarray):
            # scipy hands columns; we work on rows
            out = self.matmat(
                torch.as_tensor(np.ascontiguousarray(V.T), dtype=self.dtype, device=self.device)
            )
            return out.cpu().numpy().T
        if V.dim() != 2 or V.shape[1] != self.n:
            raise UserError(f"expected vectors of shape (b, {self.n}), got {tuple(V.shape)}")
        V = V.to(self.device, self.dtype)
        outs = [self._products(V[i : i + self.block]) for i in range(0, V.shape[0], self.block)]
        self.hvps += int(V.shape[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    __matmul__ = matvec

    def aslinearoperator(self):
        """The operator as a ``scipy.sparse.linalg.LinearOperator`` (NumPy vectors in the model's dtype)."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(
            self.shape,
            matvec=self.matvec,
            matmat=self.matmat,
            rmatvec=self.matvec,
            dtype=np.dtype(str(self.dtype).replace("torch.", "")),
        )

    def gradient(self) -> Tensor:
        """The gradient ``dL/dtheta`` of the sample-mean loss (one pass over the data)."""
        total = None
        with eval_mode(self.model), torch.enable_grad():
            for x, y in self.batches:
                g = torch.autograd.grad(loss_sum(self.model(x), y), self._params, allow_unused=True)
                g = self.view.flatten(
                    [torch.zeros_like(p) if a is None else a for a, p in zip(g, self._params)]
                )
                total = g if total is None else total + g
        return total / self.num_samples

    # -- internals ---------------------------------------------------------------------------
    def _directions(self, V: Tensor) -> list[Tensor]:
        """Parameter-shaped tangents from coordinate rows (fixed entries zero): ``shape`` for one row, ``(b, *shape)`` for several."""
        if V.shape[0] == 1:
            return list(self.view.unflatten(V[0]).values())
        dicts = [self.view.unflatten(v) for v in V]
        return [torch.stack([d[name] for d in dicts]) for name in self.view.names]

    def _products(self, V: Tensor) -> Tensor:
        if self.method == "forward-over-reverse":
            return self._products_fwd_rev(V)
        b = V.shape[0]
        tangents = self._directions(V)
        total: list[Tensor | None] = [None] * len(tangents)
        # a kept graph was built in eval mode; only rebuilding needs the switch
        with eval_mode(self.model, self._graphs is None), torch.enable_grad():
            for i, (x, y) in enumerate(self.batches):
                g = self._graphs[i] if self._graphs is not None else self._gradient_graph(x, y)
                # one vector: a plain backward (vmap's overhead is not worth it for b = 1)
                h = torch.autograd.grad(
                    g,
                    self._params,
                    grad_outputs=tangents,
                    retain_graph=self._graphs is not None,
                    is_grads_batched=b > 1,
                    allow_unused=True,
                )
                total = [a if t is None else (t if a is None else t + a) for t, a in zip(total, h)]
        total = [torch.zeros_like(t) if a is None else a for a, t in zip(total, tangents)]
        if b == 1:
            return (self.view.flatten(total) / self.num_samples)[None]
        return (
            torch.stack([self.view.flatten([h[i] for h in total]) for i in range(b)])
            / self.num_samples
        )

    def _gradient_graph(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """The batch's gradient of the loss sum, with its graph."""
        g = torch.autograd.grad(
            loss_sum(self.model(x), y), self._params, create_graph=True, allow_unused=True
        )
        # unused parameters (or ones whose gradient does not depend on theta) get a constant
        # zero that still takes part in the second backward
        return tuple(
            a if a is not None and a.requires_grad else (p * 0.0) for a, p in zip(g, self._params)
        )

    def _build_cache(self, cache: bool | str) -> list[tuple[Tensor, ...]] | None:
        """Every batch's gradient graph, or None when they are not kept (``cache`` off, or "auto" and over budget)."""
        if cache is False or cache == "never":
            return None
        nbytes = 0

        def pack(t: Tensor) -> Tensor:
            nonlocal nbytes
            nbytes += t.numel() * t.element_size()
            return t

        graphs = []
        with eval_mode(self.model), torch.enable_grad():
            for i, (x, y) in enumerate(self.batches):
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    graphs.append(self._gradient_graph(x, y))
                # a graph per batch, each about the size of the first
                if (
                    cache == "auto"
                    and i == 0
                    and nbytes * len(self.batches) > _cache_budget(self.device)
                ):
                    return None
        return graphs

    def _products_fwd_rev(self, V: Tensor) -> Tensor:
        from torch.func import functional_call, grad, jvp, vmap

        theta = self.view.get()
        total = torch.zeros_like(V)
        with eval_mode(self.model):
            for x, y in self.batches:

                def f(t, x=x, y=y):
                    return loss_sum(
                        functional_call(self.model, self.view.functional(t), (x,), strict=False), y
                    )

                total += vmap(lambda v: jvp(grad(f), (theta,), (v,))[1])(V)
        return total / self.num_samples


def _cache_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return CACHE_BYTES_CPU


def _operator(model: nn.Module | HessianOperator, data: Data | None, **kw) -> HessianOperator:
    if isinstance(model, HessianOperator):
        return model
    if data is None:
        raise UserError(
            "no data given: pass an (X, y) pair, a DataLoader or an iterable of batches"
        )
    return HessianOperator(model, data, **kw)


def hessian_eigenvalues(
    model: nn.Module | HessianOperator,
    data: Data | None = None,
    *,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    max_steps: int | None = None,
    params: Selection = None,
    return_eigenvectors: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    method: str = "double-backward",
) -> EigenResult:
    """Extreme eigenvalues of the loss Hessian by Lanczos with full reorthogonalisation.

    ``which``: ``"largest"`` (the k algebraically largest), ``"smallest"`` (the k most
    negative) or ``"both"``. Stops when every wanted Ritz value ``theta_i`` has an error
    bound ``min(r_i, r_i^2 / gap_i) <= tol * max(|theta_i|, 1e-3 max_j |theta_j|)``, with
    ``r_i = beta_m |s_{m,i}|`` the Ritz residual ``||H y_i - theta_i y_i||``, or after
    ``max_steps`` products (see :func:`landscape.lanczos.default_max_steps`). Eigenvectors
    (unit norm in coordinates) come as dicts of parameter-shaped tensors, zero at fixed
    entries. ``model`` may be a :class:`HessianOperator` (then ``data`` is not needed).
    """
    op = _operator(model, data, params=params, device=device, batch_size=batch_size, method=method)
    if which not in ("largest", "smallest", "both"):
        raise UserError(f"which={which!r}: use largest, smallest or both")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if k > op.n:
        raise UserError(
            f"k={k} eigenvalues asked for, but the chosen parameters have only {op.n} coordinates: lower k"
        )
    steps = default_max_steps(op.n, k, which, op.dtype) if max_steps is None else int(max_steps)
    need = min(op.n, 2 * k if which == "both" else k)
    if steps < need:
        raise UserError(
            f"max_steps={steps} is fewer than the {need} Ritz values asked for: raise max_steps or lower k"
        )
    t0, h0 = time.perf_counter(), op.hvps
    res = lanczos_eigen(
        op.matvec,
        op.n,
        k=int(k),
        which=which,
        tol=tol,
        max_steps=steps,
        seed=seed,
        dtype=op.dtype,
        device=op.device,
        return_vectors=return_eigenvectors,
    )
    vecs = None
    if return_eigenvectors and res.vectors is not None:
        vecs = tuple(
            {n: t.detach().clone() for n, t in op.view.unflatten(v).items()} for v in res.vectors
        )
    return dataclasses.replace(
        res, hvps=op.hvps - h0, seconds=time.perf_counter() - t0, eigenvectors=vecs
    )


def spectral_density(
    model: nn.Module | HessianOperator,
    data: Data | None = None,
    *,
    num_runs: int = 10,
    lanczos_steps: int = 80,
    sigma: float | None = None,
    grid: int | np.ndarray = 1000,
    seed: int = 0,
    params: Selection = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    method: str = "double-backward",
) -> SpectralDensity:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017).

    For ``num_runs`` random unit vectors ``v_r``, ``lanczos_steps`` Lanczos steps give nodes
    ``theta_rj`` and weights ``w_rj = s_{1j}^2``; the density is
    ``phi(t) = (1/R) sum_r sum_j w_rj N(t; theta_rj, sigma^2)``, an estimate of
    ``(1/n) sum_i N(t; lambda_i, sigma^2)``. Default ``sigma``: 1% of the node range
    (see :func:`landscape.lanczos.slq`); ``grid``: a point count spanning the nodes +- 5 sigma
    (the density then integrates to 1 up to 1e-6) or explicit points.
    """
    op = _operator(model, data, params=params, device=device, batch_size=batch_size, method=method)
    t0, h0 = time.perf_counter(), op.hvps
    res = slq(
        op.matmat,
        op.n,
        num_runs=num_runs,
        steps=lanczos_steps,
        sigma=sigma,
        grid=grid,
        seed=seed,
        dtype=op.dtype,
        device=op.device,
    )
    return dataclasses.replace(res, hvps=op.hvps - h0, seconds=time.perf_counter() - t0)


def hessian_trace(
    model: nn.Module | HessianOperator,
    data: Data | None = None,
    *,
    method: str = "hutch++",
    num_queries: int = 60,
    seed: int = 0,
    params: Selection = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    hvp_method: str = "double-backward",
) -> TraceEstimate:
    """Trace of the Hessian by Hutch++ (Meyer, Musco, Musco and Woodruff 2021) or Hutchinson.

    Hutchinson: ``tr H ~ (1/m) sum_i z_i^T H z_i`` over Rademacher ``z_i``, standard error
    ``std(z_i^T H z_i) / sqrt(m)``. Hutch++: a third of the queries sketch ``Q = orth(H S)``,
    a third give ``tr(Q^T H Q)`` exactly, the rest estimate the trace of the deflated
    ``(I - QQ^T) H (I - QQ^T)`` by Hutchinson, whose standard error is reported.
    """
    op = _operator(
        model, data, params=params, device=device, batch_size=batch_size, method=hvp_method
    )
    if method not in ("hutch++", "hutchinson"):
        raise UserError(f"unknown trace method {method!r}: use hutch++ or hutchinson")
    if num_queries < (3 if method == "hutch++" else 2):
        raise UserError(
            f"num_queries={num_queries} is too few for {method}: use at least {3 if method == 'hutch++' else 2}"
        )
    t0, h0 = time.perf_counter(), op.hvps
    fn = hutchpp if method == "hutch++" else hutchinson
    res = fn(op.matmat, op.n, num_queries=num_queries, seed=seed, dtype=op.dtype, device=op.device)
    return dataclasses.replace(res, hvps=op.hvps - h0, seconds=time.perf_counter() - t0)
