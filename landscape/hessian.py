"""The one Hessian-vector-product operator, and the model-level curvature functions.

The Hessian is that of the exact sample-mean loss over the whole data,

    L(theta) = (1/N) sum_{i=1..N} l(f(x_i; theta), y_i),        H = d^2 L / d theta^2,

with ``l`` the per-sample loss of :mod:`landscape.evaluation` (cross-entropy for integer
targets, squared error for float targets), the model in eval mode (BatchNorm uses its
running statistics) and ``theta`` the coordinates of a :class:`~landscape.params.ParamView`:
all trainable entries or a chosen subset, never the fixed entries of W-Asym layers.
Batches of any sizes give the same ``H``: each batch contributes the Hessian of its
*sum* of losses, and the total is divided by ``N`` once.

:class:`HessianOperator` follows the conventions of ``scipy.sparse.linalg.LinearOperator``:
``shape == (n, n)``, vectors are columns, ``op @ v`` is ``H v`` for a vector ``(n,)`` and
``H V`` for a matrix ``(n, k)`` (column ``j`` of the result is ``H v_j``), and a NumPy input
gives a NumPy output, a torch input a torch output, with the same numbers. The algorithms
(:func:`hessian_eigenvalues`, :func:`spectral_density`, :func:`hessian_trace`) take either an
operator or a model and data; the construction settings (``params``, ``device``,
``batch_size``, ``hvp``) belong to the operator, so giving them with a built one is an error.

Hessian-vector products (``hvp=``) use double backward (``"double-backward"``:
``autograd.grad`` of the gradient with ``create_graph=True``) or forward-over-reverse
(``"forward-over-reverse"``: ``torch.func.jvp`` of ``torch.func.grad``). Measured on 2 CPU
cores (16.5k-parameter MLP, 2,048 samples): double backward 7 ms per product,
forward-over-reverse 8-10 ms, and double backward through a gradient graph built once and
reused 3-4 ms. So by default the gradient graph of every batch is built once and kept
(``cache="auto"``: when its estimated size fits :data:`CACHE_BYTES_CPU` /
a quarter of free GPU memory), otherwise rebuilt per product. Several vectors at once
(``matmat``) go through one batched backward (``is_grads_batched``, i.e. ``vmap``), in
blocks of ``block`` vectors.

Old keyword names still work for one release, with a ``DeprecationWarning``: ``method=``
(the product implementation, now ``hvp=``) and, in :func:`hessian_trace`, ``method=`` (the
estimator, now ``estimator=``) and ``hvp_method=`` (now ``hvp=``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .data import Batches, Data, as_batches, resolve_device
from .deprecation import renamed_keywords
from .errors import UserError
from .evaluation import eval_mode, evaluate, loss_sum
from .lanczos import (
    ESTIMATORS,
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
#: Hessian-vector-product implementations (``hvp=``)
HVP_IMPLEMENTATIONS = ("double-backward", "forward-over-reverse")


class HessianOperator:
    """The linear operator ``v -> H v`` for the Hessian of the sample-mean loss of ``model`` on ``data``.

    ``H`` is ``n x n`` (``n``: the coordinates of ``ParamView(model, params)``) and symmetric.
    ``op @ v`` / :meth:`matvec` give ``H v`` for ``v`` of shape ``(n,)``; ``op @ V`` /
    :meth:`matmat` give ``H V`` for ``V`` of shape ``(n, k)`` (columns are vectors, as in
    ``scipy.sparse.linalg.LinearOperator``). NumPy in gives NumPy out, torch in gives torch
    out (on the operator's device). ``shape``, ``dtype`` (NumPy) and ``torch_dtype`` describe
    it; :meth:`aslinearoperator` wraps it for SciPy.

    ``params`` selects a subset of parameters (see :class:`ParamView`); ``hvp`` picks the
    product implementation (``"double-backward"`` or ``"forward-over-reverse"``, see the
    module notes; ``method`` is its deprecated name). The operator is a snapshot: it is
    defined at the parameters the model holds when it is created; do not change the model
    while using it. ``hvps`` counts Hessian-vector products (one per vector, however
    batched). The model's train/eval flag is left as found.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        params: Selection = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        hvp: str = "double-backward",
        cache: bool | str = "auto",
        block: int | None = None,
        **renamed: Any,
    ):
        hvp = renamed_keywords(
            "HessianOperator",
            renamed,
            {"method": "hvp"},
            {"hvp": hvp},
            {"hvp": "double-backward"},
        )["hvp"]
        if hvp not in HVP_IMPLEMENTATIONS:
            raise UserError(
                f"unknown Hessian-vector-product implementation hvp={hvp!r}: use {' or '.join(HVP_IMPLEMENTATIONS)}"
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
        self.hvp, self.block = (
            hvp,
            max(1, int(block if block is not None else (8 if dev.type == "cuda" else 1))),
        )
        self.hvps = 0
        self._params = self.view.params
        # one pass, before any graph is built: checks the labels against the outputs and the loss for NaN (UserError)
        self.loss = evaluate(model, self.batches).loss
        self._graphs = self._build_cache(cache) if hvp == "double-backward" else None

    # -- properties --------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.view.numel, self.view.numel)

    @property
    def n(self) -> int:
        return self.view.numel

    @property
    def dtype(self) -> np.dtype:
        """NumPy dtype of the products (``scipy.sparse.linalg.LinearOperator`` convention)."""
        return np.dtype(str(self.view.dtype).replace("torch.", ""))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The model's dtype, in which the products are computed."""
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
        """``H v`` for one vector ``v`` of shape ``(n,)`` (or a column ``(n, 1)``: same shape out)."""
        if v.ndim == 2 and v.shape[1] == 1:
            return self.matvec(v.reshape(-1)).reshape(-1, 1)
        if v.ndim != 1 or v.shape[0] != self.n:
            raise UserError(f"expected a vector of shape ({self.n},), got {tuple(v.shape)}")
        if isinstance(v, np.ndarray):
            rows = torch.as_tensor(v.reshape(1, -1), dtype=self.torch_dtype, device=self.device)
            return self._on_rows(rows)[0].cpu().numpy()
        return self._on_rows(v.reshape(1, -1))[0]

    def matmat(self, V: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H V`` for ``V`` of shape ``(n, k)``: column ``j`` of the result is ``H v_j``."""
        if V.ndim != 2 or V.shape[0] != self.n:
            raise UserError(
                f"expected a matrix of shape ({self.n}, k) (columns are vectors), got {tuple(V.shape)}"
            )
        if isinstance(V, np.ndarray):
            rows = torch.as_tensor(
                np.ascontiguousarray(V.T), dtype=self.torch_dtype, device=self.device
            )
            return self._on_rows(rows).cpu().numpy().T
        return self._on_rows(V.T.contiguous()).T

    def __matmul__(self, x: Tensor | np.ndarray) -> Tensor | np.ndarray:
        """``H x`` for a vector ``(n,)`` or a matrix ``(n, k)``."""
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    # H is symmetric: the adjoint products are the products (scipy looks for these names)
    rmatvec = matvec
    rmatmat = matmat

    def aslinearoperator(self):
        """The operator as a ``scipy.sparse.linalg.LinearOperator`` (NumPy vectors in the model's dtype)."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(
            self.shape,
            matvec=self.matvec,
            matmat=self.matmat,
            rmatvec=self.matvec,
            rmatmat=self.matmat,
            dtype=self.dtype,
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
    def _on_rows(self, V: Tensor) -> Tensor:
        """``(H v_1, ..., H v_b)`` as rows, for the rows of ``V`` (shape ``(b, n)``), in blocks of ``block``."""
        V = V.to(self.device, self.torch_dtype)
        outs = [self._products(V[i : i + self.block]) for i in range(0, V.shape[0], self.block)]
        self.hvps += int(V.shape[0])
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def _directions(self, V: Tensor) -> list[Tensor]:
        """Parameter-shaped tangents from coordinate rows (fixed entries zero): ``shape`` for one row, ``(b, *shape)`` for several."""
        if V.shape[0] == 1:
            return list(self.view.unflatten(V[0]).values())
        dicts = [self.view.unflatten(v) for v in V]
        return [torch.stack([d[name] for d in dicts]) for name in self.view.names]

    def _products(self, V: Tensor) -> Tensor:
        if self.hvp == "forward-over-reverse":
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

        theta = self.view.get().detach()  # products are values, not part of a graph
        total = torch.zeros_like(V)
        with eval_mode(self.model):
            for x, y in self.batches:

                def f(t, x=x, y=y):
                    return loss_sum(
                        functional_call(self.model, self.view.functional(t), (x,), strict=False), y
                    )

                total += vmap(lambda v: jvp(grad(f), (theta,), (v,))[1])(V).detach()
        return total / self.num_samples


def _cache_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return CACHE_BYTES_CPU


def _operator(
    where: str,
    model: nn.Module | HessianOperator,
    data: Data | None,
    settings: dict[str, Any],
) -> HessianOperator:
    """The operator to work on: ``model`` itself, or one built from ``model``, ``data`` and ``settings``.

    ``settings`` are construction keywords (``None``: not given); with an operator they
    would be ignored, so any that is given raises :class:`UserError`.
    """
    if isinstance(model, HessianOperator):
        given = [k for k, v in settings.items() if v is not None]
        if data is not None:
            given.insert(0, "data")
        if given:
            raise UserError(
                f"{where}: {', '.join(given)} given with a HessianOperator, which already fixed them: "
                "pass them to HessianOperator(...), or pass the model and data instead"
            )
        return model
    if data is None:
        raise UserError(
            "no data given: pass an (X, y) pair, a DataLoader or an iterable of batches"
        )
    kw = {k: v for k, v in settings.items() if v is not None}
    return HessianOperator(model, data, **kw)


def hessian_eigenvalues(
    model: nn.Module | HessianOperator,
    data: Data | None = None,
    *,
    k: int = 5,
    which: str = "largest",
    tol: float = 1e-4,
    max_steps: int | None = None,
    return_eigenvectors: bool = False,
    seed: int = 0,
    params: Selection = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    hvp: str | None = None,
    **renamed: Any,
) -> EigenResult:
    """Extreme eigenvalues of the loss Hessian by Lanczos with full reorthogonalisation.

    ``which``: ``"largest"`` (the k algebraically largest), ``"smallest"`` (the k most
    negative) or ``"both"``. Stops when every wanted Ritz value ``theta_i`` has an error
    bound ``min(r_i, r_i^2 / gap_i) <= tol * max(|theta_i|, 1e-3 max_j |theta_j|)``, with
    ``r_i = beta_m |s_{m,i}|`` the Ritz residual ``||H y_i - theta_i y_i||``, or after
    ``max_steps`` Lanczos steps, one product each (default
    :func:`landscape.lanczos.default_max_steps`); ``result.lanczos_steps`` says how many ran.
    Eigenvectors (unit norm in coordinates) come as ``result.eigenvectors``, dicts of
    parameter-shaped tensors, zero at fixed entries.

    ``model`` is a :class:`HessianOperator`, or a model with ``data``, from which one is built
    with ``params``, ``device``, ``batch_size`` and ``hvp`` (default ``"double-backward"``;
    ``method`` is its deprecated name); these settings with an operator raise
    :class:`UserError`.
    """
    hvp = renamed_keywords("hessian_eigenvalues", renamed, {"method": "hvp"}, {"hvp": hvp})["hvp"]
    op = _operator(
        "hessian_eigenvalues",
        model,
        data,
        dict(params=params, device=device, batch_size=batch_size, hvp=hvp),
    )
    if which not in ("largest", "smallest", "both"):
        raise UserError(f"which={which!r}: use largest, smallest or both")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if k > op.n:
        raise UserError(
            f"k={k} eigenvalues asked for, but the chosen parameters have only {op.n} coordinates: lower k"
        )
    limit = (
        default_max_steps(op.n, k, which, op.torch_dtype) if max_steps is None else int(max_steps)
    )
    need = min(op.n, 2 * k if which == "both" else k)
    if limit < need:
        raise UserError(
            f"max_steps={limit} is fewer than the {need} Ritz values asked for: raise max_steps or lower k"
        )
    t0, h0 = time.perf_counter(), op.hvps
    res = lanczos_eigen(
        op,
        k=int(k),
        which=which,
        tol=tol,
        max_steps=limit,
        seed=seed,
        dtype=op.torch_dtype,
        device=op.device,
        return_eigenvectors=return_eigenvectors,
    )
    vecs = None
    if return_eigenvectors and res.eigenvectors is not None:
        # the (n, k) columns back as rows, each unflattened into parameter-shaped tensors
        vecs = tuple(
            {n: t.detach().clone() for n, t in op.view.unflatten(v).items()}
            for v in res.eigenvectors.T
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
    hvp: str | None = None,
    **renamed: Any,
) -> SpectralDensity:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (Ubaru, Chen and Saad 2017).

    For ``num_runs`` random unit vectors ``v_r``, ``lanczos_steps`` Lanczos steps give nodes
    ``theta_rj`` and weights ``w_rj = s_{1j}^2``; the density is
    ``phi(t) = (1/R) sum_r sum_j w_rj N(t; theta_rj, sigma^2)``, an estimate of
    ``(1/n) sum_i N(t; lambda_i, sigma^2)``. Default ``sigma``: 1% of the node range
    (see :func:`landscape.lanczos.slq`); ``grid``: a point count spanning the nodes +- 5 sigma
    (the density then integrates to 1 up to 1e-6) or explicit points. ``model``, ``data``
    and the operator settings as in :func:`hessian_eigenvalues`.
    """
    hvp = renamed_keywords("spectral_density", renamed, {"method": "hvp"}, {"hvp": hvp})["hvp"]
    op = _operator(
        "spectral_density",
        model,
        data,
        dict(params=params, device=device, batch_size=batch_size, hvp=hvp),
    )
    t0, h0 = time.perf_counter(), op.hvps
    res = slq(
        op,
        num_runs=num_runs,
        lanczos_steps=lanczos_steps,
        sigma=sigma,
        grid=grid,
        seed=seed,
        dtype=op.torch_dtype,
        device=op.device,
    )
    return dataclasses.replace(res, hvps=op.hvps - h0, seconds=time.perf_counter() - t0)


def hessian_trace(
    model: nn.Module | HessianOperator,
    data: Data | None = None,
    *,
    estimator: str = "hutch++",
    num_queries: int = 60,
    seed: int = 0,
    params: Selection = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    hvp: str | None = None,
    **renamed: Any,
) -> TraceEstimate:
    """Trace of the Hessian by Hutch++ (Meyer, Musco, Musco and Woodruff 2021) or Hutchinson.

    ``estimator="hutchinson"``: ``tr H ~ (1/m) sum_i z_i^T H z_i`` over Rademacher ``z_i``,
    standard error ``std(z_i^T H z_i) / sqrt(m)``. ``estimator="hutch++"``: a third of the
    queries sketch ``Q = orth(H S)``, a third give ``tr(Q^T H Q)`` exactly, the rest estimate
    the trace of the deflated ``(I - QQ^T) H (I - QQ^T)`` by Hutchinson, whose standard
    error is reported. ``model``, ``data`` and the operator settings as in
    :func:`hessian_eigenvalues`. Deprecated names: ``method`` for ``estimator``,
    ``hvp_method`` for ``hvp``.
    """
    kw = renamed_keywords(
        "hessian_trace",
        renamed,
        {"method": "estimator", "hvp_method": "hvp"},
        {"estimator": estimator, "hvp": hvp},
        {"estimator": "hutch++"},
    )
    estimator, hvp = kw["estimator"], kw["hvp"]
    op = _operator(
        "hessian_trace",
        model,
        data,
        dict(params=params, device=device, batch_size=batch_size, hvp=hvp),
    )
    if estimator not in ESTIMATORS:
        raise UserError(f"unknown trace estimator {estimator!r}: use {' or '.join(ESTIMATORS)}")
    least = 3 if estimator == "hutch++" else 2
    if num_queries < least:
        raise UserError(
            f"num_queries={num_queries} is too few for {estimator}: use at least {least}"
        )
    t0, h0 = time.perf_counter(), op.hvps
    fn = hutchpp if estimator == "hutch++" else hutchinson
    res = fn(op, num_queries=num_queries, seed=seed, dtype=op.torch_dtype, device=op.device)
    return dataclasses.replace(res, hvps=op.hvps - h0, seconds=time.perf_counter() - t0)
