"""The model-level curvature functions: extreme eigenvalues, spectral density and trace of the loss Hessian.

All three act on the one :class:`~landscape.hessian_operator.HessianOperator` (re-exported
here), built from a model and data or passed in. The algorithms (:func:`hessian_eigenvalues`,
:func:`spectral_density`, :func:`hessian_trace`) take either an operator or a model and
data; the construction settings (``params``, ``device``, ``batch_size``, ``hvp``) belong
to the operator, so giving them with a built one is an error.

One Krylov pass can serve all three: ``spectral_density(op, keep_run=True)`` keeps its most
converged run, ``hessian_eigenvalues(op, start=density)`` continues that run (no product
is repeated), and ``density.trace_estimate()`` is the Hutchinson estimate on the runs'
start vectors, with its standard error, at no product at all.

Old keyword names still work for one release, with a ``DeprecationWarning``: ``method=``
(the product implementation, now ``hvp=``) and, in :func:`hessian_trace`, ``method=`` (the
estimator, now ``estimator=``) and ``hvp_method=`` (now ``hvp=``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Data
from .deprecation import renamed_keywords
from .errors import UserError
from .hessian_operator import CACHE_BYTES_CPU, HVP_IMPLEMENTATIONS, HessianOperator
from .krylov import LanczosRun
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
from .params import Selection

__all__ = [
    "CACHE_BYTES_CPU",
    "HVP_IMPLEMENTATIONS",
    "HessianOperator",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]


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
    block_size: int | str = "auto",
    start: SpectralDensity | LanczosRun | torch.Tensor | np.ndarray | None = None,
    params: Selection = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    hvp: str | None = None,
    **renamed: Any,
) -> EigenResult:
    """Extreme eigenvalues of the loss Hessian by (block) Lanczos with full reorthogonalisation.

    ``which``: ``"largest"`` (the k algebraically largest), ``"smallest"`` (the k most
    negative) or ``"both"``. Stops when every wanted Ritz value ``theta_i`` has an error
    bound ``min(r_i, r_i^2 / gap_i) <= tol * max(|theta_i|, 1e-3 max_j |theta_j|)``, with
    ``r_i`` the Ritz residual ``||H y_i - theta_i y_i||``, or after ``max_steps`` Lanczos
    vectors, one product each (default :func:`landscape.lanczos.default_max_steps`);
    ``result.lanczos_steps`` says how many steps ran, ``result.block_size`` how many vectors
    each step multiplied (1: single-vector Lanczos).
    ``block_size``: 1, ``b > 1`` (block Lanczos: batched products, every copy of a repeated
    eigenvalue up to ``b``) or ``"auto"`` (the default: block Lanczos when the measured cost
    per vector of a batched product makes up for the extra products it needs, see
    :func:`landscape.lanczos.lanczos_eigen`). ``start``: a :class:`SpectralDensity` computed
    with ``keep_run=True`` on the same operator (its kept run is continued: no product is
    repeated), a :class:`~landscape.krylov.LanczosRun`, or start vectors (columns).
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
    if isinstance(start, SpectralDensity):
        if start.run is None:
            raise UserError(
                "the spectral density kept no Lanczos run to continue: compute it with keep_run=True"
            )
        if start.n != op.n:
            raise UserError(
                f"the spectral density is of a {start.n}-coordinate operator, this one has {op.n}: "
                "pass the density of the same operator"
            )
        start = start.run
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
        block_size=block_size,
        start=start,
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
    keep_run: bool = False,
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

    The runs' start vectors give the trace for free: ``result.trace`` (``n`` times the mean
    of ``v_r^T H v_r``), ``result.trace_stderr``, ``result.trace_estimate()``.
    ``keep_run=True`` keeps the run whose extreme Ritz values are closest to converged
    (``result.run``; memory: ``lanczos_steps + 1`` vectors) for
    ``hessian_eigenvalues(op, start=result)``.
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
        keep_run=keep_run,
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
