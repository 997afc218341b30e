"""Lanczos for extreme eigenvalues: single-vector or block, from random vectors or a run to continue.

The algorithms take any symmetric operator (see :mod:`landscape.krylov` for the
conventions). This module also re-exports the stochastic Lanczos quadrature
(:mod:`landscape.slq`) and the trace estimators (:mod:`landscape.trace`), so
``landscape.lanczos`` keeps every name it has always had.

Krylov iterations are counted in Lanczos steps (``lanczos_steps``), one operator product
on a block of ``block_size`` vectors each; ``max_steps`` bounds the number of Lanczos
vectors, that is the products (a block step counts ``block_size``).

Single-vector Lanczos uses full reorthogonalisation: after the three-term recurrence, one
classical Gram-Schmidt pass against every previous vector, repeated when it loses more than
30% of the norm (DGKS), so no ghost eigenvalues appear and the Ritz residuals are
trustworthy. Block Lanczos is in
:mod:`landscape.block_lanczos`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .block_lanczos import block_lanczos_eigen
from .deprecation import renamed_keywords
from .errors import UserError
from .krylov import (
    BASIS_BYTES,
    BREAKDOWN,
    NAN_PRODUCT,
    REL_FLOOR,
    EigenResult,
    LanczosRun,
    Operator,
    Product,
    as_product,
    converged,
    eigen_result,
    ritz_tridiagonal,
    rng_normal,
)
from .slq import SpectralDensity, broadened_density, slq, start_vectors
from .trace import ESTIMATORS, TraceEstimate, hutchinson, hutchpp

__all__ = [
    "BASIS_BYTES",
    "ESTIMATORS",
    "MAX_STEPS",
    "REL_FLOOR",
    "EigenResult",
    "LanczosRun",
    "SpectralDensity",
    "TraceEstimate",
    "as_product",
    "broadened_density",
    "default_max_steps",
    "hutchinson",
    "hutchpp",
    "lanczos_eigen",
    "slq",
    "start_vectors",
]

#: default Lanczos step limit (products) when memory allows
MAX_STEPS = 300


def default_max_steps(n: int, k: int, which: str, dtype: torch.dtype = torch.float32) -> int:
    """``min(n, max(300, 6k), BASIS_BYTES / (n * itemsize))``, but at least ``min(n, 2k + 2)``."""
    item = torch.empty((), dtype=dtype).element_size()
    want = max(MAX_STEPS, 6 * k * (2 if which == "both" else 1))
    return int(min(n, max(min(want, BASIS_BYTES // max(1, n * item)), 2 * k + 2)))


def lanczos_eigen(
    operator: Operator,
    n: int | None = None,
    *,
    k: int,
    which: str = "largest",
    tol: float = 1e-4,
    max_steps: int = MAX_STEPS,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    return_eigenvectors: bool = False,
    block_size: int | str = 1,
    start: LanczosRun | Tensor | np.ndarray | None = None,
    **renamed: Any,
) -> EigenResult:
    """Extreme eigenvalues by Lanczos with full reorthogonalisation, stopping on Ritz residuals.

    After step ``m`` (``T_m = S diag(theta) S^T``) the Ritz pair ``(theta_i, V_m s_i)`` has
    residual ``r_i = ||A V_m s_i - theta_i V_m s_i||`` (``beta_m |s_{m,i}|`` for single-vector
    Lanczos). The run stops when every wanted pair has
    ``min(r_i, r_i^2/gap_i) <= tol * max(|theta_i|, 1e-3 max|theta|)`` (``gap_i``: distance to
    the nearest other Ritz value), at ``max_steps`` Lanczos vectors, or when the Krylov space
    is exhausted (``r = 0``). A breakdown before enough Ritz values exist restarts from a
    fresh random vector orthogonal to the basis.

    ``block_size``: 1 (single-vector Lanczos), ``b > 1`` (block Lanczos, one product with
    ``b`` vectors per step, :mod:`landscape.block_lanczos`; it finds up to ``b`` copies of a
    repeated eigenvalue) or ``"auto"``: the ``b`` in 1, 2, 4, 8 with the least expected
    time, ``block_inflation(b, need)`` products per single-vector one times the operator's
    measured cost per vector at ``b`` (``operator.block_costs()``; an operator without it
    gets single-vector Lanczos), if that is under ``BLOCK_MARGIN`` of single-vector's. No
    product is spent on the choice: the first start vector's product is the first step of
    either.
    ``start``: a :class:`LanczosRun` to continue (a kept spectral-density run: no product
    is repeated, and none is made if it has already converged), or start vectors, a vector
    ``(n,)`` or the columns of an ``(n, c)`` matrix (``c > 1`` runs block Lanczos with
    ``b >= c``).

    ``operator``: see the module notes (single-vector Lanczos calls a function on one
    vector ``(n,)``, block Lanczos on a matrix of columns).
    ``return_eigenvectors``: the Ritz vectors as the columns of ``eigenvectors`` ``(n, k)``,
    unit norm, largest-magnitude entry positive.
    (``return_vectors`` is the deprecated name of ``return_eigenvectors``.)
    """
    return_eigenvectors = renamed_keywords(
        "lanczos_eigen",
        renamed,
        {"return_vectors": "return_eigenvectors"},
        {"return_eigenvectors": return_eigenvectors},
        {"return_eigenvectors": False},
    )["return_eigenvectors"]
    product, n, dtype, device = as_product(operator, n, dtype, device)
    limit = int(min(max_steps, n))
    common = dict(
        k=k, which=which, tol=tol, seed=seed, dtype=dtype, device=device, want=return_eigenvectors
    )
    if isinstance(start, LanczosRun):
        if block_size not in (1, "auto"):
            raise UserError("a Lanczos run to continue is single-vector: use block_size=1 with it")
        return _single(product, n, limit, run=start, **common)
    rows = _start_rows(start, n, dtype, device)
    if block_size == "auto":
        if rows is not None:
            block_size = max(1, rows.shape[0])
        else:
            return _auto(operator, product, n, limit, **common)
    if not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise UserError(f"block_size must be a positive integer or 'auto', got {block_size!r}")
    b = max(int(block_size), 1 if rows is None else rows.shape[0])
    if b == 1:
        return _single(product, n, limit, v0=None if rows is None else rows[0], **common)
    return block_lanczos_eigen(
        product,
        n,
        k=k,
        which=which,
        tol=tol,
        max_vectors=limit,
        block_size=b,
        seed=seed,
        dtype=dtype,
        device=device,
        return_eigenvectors=return_eigenvectors,
        start=rows,
        start_label="random" if rows is None else "given",
    )


def _start_rows(
    start: Tensor | np.ndarray | None, n: int, dtype: torch.dtype, device: torch.device
) -> Tensor | None:
    """Start vectors as rows ``(c, n)``, from a vector ``(n,)`` or columns ``(n, c)``."""
    if start is None:
        return None
    t = torch.as_tensor(start)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or t.shape[0] != n or t.shape[1] < 1:
        raise UserError(
            f"start vectors must be a vector ({n},) or the columns of an ({n}, c) matrix, got {tuple(t.shape)}"
        )
    return t.T.to(device=device, dtype=dtype).contiguous()


#: block Lanczos runs only when its expected product time is under this share of single-vector
#: Lanczos's: its steps cost more bookkeeping (QR, band eigensolver; about 2 ms a step on 2 CPU
#: cores) and the cost estimates are rough (docs/hessian.md)
BLOCK_MARGIN = 0.7


def block_inflation(b: int, need: int) -> float:
    """Products block Lanczos with ``b`` vectors needs over single-vector Lanczos, for ``need``
    wanted eigenvalues: ``1 + 0.55 (b - 1) / sqrt(need)``, fitted on the spectra of the test
    and benchmark Hessians (b = 2..16, k = 1..10, tol 1e-4; docs/hessian.md)."""
    return 1.0 + 0.55 * (b - 1) / math.sqrt(max(need, 1))


def _auto(operator: Operator, product: Product, n: int, limit: int, **common: Any) -> EigenResult:
    """``block_size="auto"``: the block size with the least expected time, from the operator's
    :meth:`~landscape.hessian_operator.HessianOperator.block_costs` (per-vector cost by block
    size) times :func:`block_inflation`; single-vector Lanczos for operators without it."""
    costs_of = getattr(operator, "block_costs", None)
    need = min(n, 2 * common["k"] if common["which"] == "both" else common["k"])
    if not callable(costs_of) or need >= limit:
        return _single(product, n, limit, **common)
    dtype, device, seed = common["dtype"], common["device"], common["seed"]
    v0 = rng_normal((n,), seed, dtype, device)
    v0 = v0 / v0.norm()
    w0 = product(v0)  # the first single-vector step either way; its time is measured
    costs = costs_of()
    b = min(
        (b for b in costs if b == 1 or 2 * b <= limit),
        key=lambda b: costs[b] * block_inflation(b, need),
    )
    if costs[b] * block_inflation(b, need) > BLOCK_MARGIN * costs[1]:
        b = 1
    if b == 1:
        return _single(product, n, limit, v0=v0, w0=w0, **common)
    # the block's first vector is v0; the rest are the seed's next draws, made orthonormal
    X = torch.cat([v0[None], rng_normal((b, n), seed, dtype, device)[1:]])
    X = torch.linalg.qr(X.T).Q.T.contiguous()
    X[0] = v0
    W = torch.cat([w0[None], product(X[1:].T).T])
    return block_lanczos_eigen(
        product,
        n,
        k=common["k"],
        which=common["which"],
        tol=common["tol"],
        max_vectors=limit,
        block_size=b,
        seed=seed,
        dtype=dtype,
        device=device,
        return_eigenvectors=common["want"],
        start=X,
        start_products=W,
    )


def _single(
    matvec: Product,
    n: int,
    limit: int,
    *,
    k: int,
    which: str,
    tol: float,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    want: bool,
    v0: Tensor | None = None,
    w0: Tensor | None = None,
    run: LanczosRun | None = None,
) -> EigenResult:
    """Single-vector Lanczos from ``v0`` (default: a normal draw from ``seed``; ``w0 = A v0`` when
    known), or continuing ``run``; see :func:`lanczos_eigen`."""
    need = min(n, k if which != "both" else 2 * k)
    m0 = 0 if run is None else run.steps
    size = max(limit, m0)
    alpha, beta = np.zeros(size), np.zeros(size)
    cap = int(min(size + 1, max(64, 2 * (m0 + 1))))
    V = torch.empty(cap, n, dtype=dtype, device=device)
    if run is None:
        v = rng_normal((n,), seed, dtype, device) if v0 is None else v0.to(device, dtype)
        V[0] = v / v.norm()
    else:
        V[: m0 + 1] = run.basis.to(device, dtype)
        alpha[:m0], beta[:m0] = run.alpha, run.beta
    theta = resid = S = None
    restarts, m = 0, m0
    while True:
        if m > 0:  # the Ritz values of T_m and the stopping rule
            theta, S = ritz_tridiagonal(alpha, beta, m)
            scale = max(float(np.max(np.abs(theta))), 1e-300)
            breakdown = beta[m - 1] <= BREAKDOWN * scale
            resid = np.abs(S[-1, :]) * (0.0 if breakdown else beta[m - 1])
            if (
                m >= need
                and m < n
                and (m > need or breakdown)
                and converged(theta, resid, k, which, tol)[3].all()
            ):
                break
            if m >= limit:
                break
            if breakdown:
                # invariant subspace: continue in its complement (T becomes block diagonal)
                restarts += 1
                w = rng_normal((n,), seed + 7919 * restarts, dtype, device)
                for _ in range(2):
                    w = w - V[:m].T @ (V[:m] @ w)
                beta[m - 1] = 0.0
                V[m] = w / w.norm()
        if m + 2 > V.shape[0]:
            cap = int(min(size + 1, 2 * V.shape[0]))
            V = torch.cat([V, torch.empty(cap - V.shape[0], n, dtype=dtype, device=device)])
        w = w0 if (m == 0 and w0 is not None) else matvec(V[m])
        # the three-term recurrence first, then one pass against the whole basis for what
        # rounding left: reading a large basis costs as much as a product, so the second pass
        # runs only when the first lost digits to cancellation (DGKS)
        if m > 0 and beta[m - 1] != 0:
            w = w - beta[m - 1] * V[m - 1]
        alpha[m] = float(torch.dot(V[m], w))
        w = w - alpha[m] * V[m]
        Vm = V[: m + 1]
        before = float(w.norm())
        w = w - Vm.T @ (Vm @ w)
        b = float(w.norm())
        if b < 0.7071 * before:
            w = w - Vm.T @ (Vm @ w)
            b = float(w.norm())
        if not (math.isfinite(alpha[m]) and math.isfinite(b)):
            raise UserError(NAN_PRODUCT)
        beta[m] = b
        if m + 1 < V.shape[0]:
            V[m + 1] = w / b if b > 0 else torch.zeros_like(w)
        m += 1

    return eigen_result(
        theta,
        resid,
        k,
        which,
        tol,
        m,
        exhausted=m == n,
        ritz=(S, V[:m]) if want else None,
        start="random" if run is None and v0 is None else (run.label if run else "given"),
    )
