"""Lanczos, stochastic Lanczos quadrature and trace estimators over any symmetric operator.

The operator ``A`` (``n x n``, symmetric) is given as an object with ``shape`` and ``@``
(a :class:`landscape.hessian.HessianOperator`, a dense ``torch.Tensor``), or as a function
with ``n``: ``lanczos_eigen`` calls it on one vector (``v -> A v``, shape ``(n,)``), the
others on a matrix of columns (``V -> A V``, shapes ``(n, b) -> (n, b)``), the convention of
``scipy.sparse.linalg.LinearOperator``. Inside, the algorithms keep their vectors as the
rows of a ``(b, n)`` tensor (contiguous, for the reorthogonalisation) and hand the operator
their transpose. Krylov vectors stay in the operator's dtype and device; the small
tridiagonal problems are solved in float64 (LAPACK ``dstev``).

Krylov iterations are counted in Lanczos steps (``lanczos_steps``, bounded by
``max_steps``), one operator product each.

Lanczos uses full reorthogonalisation (classical Gram-Schmidt, twice, against every
previous vector), so no ghost eigenvalues appear and the Ritz residuals are trustworthy.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.linalg.lapack import dstev
from torch import Tensor

from .deprecation import renamed_keywords, warn_renamed
from .errors import UserError

#: ``x -> A x`` on a vector ``(n,)`` or on the columns of a matrix ``(n, b)``
Product = Callable[[Tensor], Tensor]
#: an operator: an object with ``shape`` and ``@`` (HessianOperator, dense Tensor) or a product function
Operator = Any
#: trace estimators of :func:`hutchpp` and :func:`hutchinson`
ESTIMATORS = ("hutch++", "hutchinson")
#: memory for the Krylov basis that the default step limit respects (bytes)
BASIS_BYTES = 2 * 1024**3
#: default Lanczos step limit (products) when memory allows
MAX_STEPS = 300
#: eigenvalues below this fraction of max |theta| are resolved to absolute, not relative, accuracy
REL_FLOOR = 1e-3


def default_max_steps(n: int, k: int, which: str, dtype: torch.dtype = torch.float32) -> int:
    """``min(n, max(300, 6k), BASIS_BYTES / (n * itemsize))``, but at least ``min(n, 2k + 2)``."""
    item = torch.empty((), dtype=dtype).element_size()
    want = max(MAX_STEPS, 6 * k * (2 if which == "both" else 1))
    return int(min(n, max(min(want, BASIS_BYTES // max(1, n * item)), 2 * k + 2)))


def as_product(
    operator: Operator,
    n: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[Product, int, torch.dtype, torch.device]:
    """``(x -> A x, n, dtype, device)`` of an operator object, a dense matrix or a product function.

    For an object, ``n`` is ``shape[0]`` and ``dtype``/``device`` default to its own
    (``torch_dtype`` or ``dtype``, and ``device``); for a function, ``n`` is required and they
    default to float32 on the CPU.
    """
    if callable(operator) and not isinstance(operator, Tensor):
        if n is None:
            raise UserError("a product function needs n, the size of the vectors it acts on")
        product = operator
    else:
        shape = getattr(operator, "shape", None)
        if shape is None or len(shape) != 2 or shape[0] != shape[1]:
            raise UserError(
                f"expected a square operator (shape and @) or a product function, got {type(operator).__name__}"
            )
        n = int(shape[0]) if n is None else int(n)
        if dtype is None:
            dtype = getattr(operator, "torch_dtype", getattr(operator, "dtype", None))
        if device is None:
            device = getattr(operator, "device", None)

        def product(x: Tensor) -> Tensor:
            return operator @ x

    dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    return product, int(n), dtype, torch.device(device if device is not None else "cpu")


def _on_rows(product: Product, R: Tensor) -> Tensor:
    """``(A r_1, ..., A r_b)`` as rows, for the rows ``r_i`` of ``R``: the operator sees columns."""
    return product(R.T).T


def _rng_normal(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    # drawn on the CPU in float64, so a seed gives the same vectors on every device and dtype
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _rng_rademacher(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, shape, generator=g, dtype=torch.int8) * 2 - 1).to(
        device=device, dtype=dtype
    )


_NAN = "a Hessian-vector product is NaN or Inf: the loss is not twice differentiable here (check weights and data)"


def _check_finite(w: Tensor) -> None:
    if not torch.isfinite(w).all():
        raise UserError(_NAN)


# ---------------------------------------------------------------------------------------- eigenvalues
@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenvalues from Lanczos.

    ``eigenvalues[i]`` with ``which[i]`` (``largest``, in descending order, then
    ``smallest``, ascending); ``residuals`` are the Ritz residuals
    ``||H y_i - theta_i y_i||`` (some eigenvalue lies within that distance);
    ``error_bounds`` the gap-refined bounds ``min(r_i, r_i^2 / gap_i)``; ``converged`` says
    whether the bound met the tolerance; ``lanczos_steps`` is the number of Lanczos steps
    run. ``hvps`` counts Hessian-vector products.

    ``eigenvectors`` (when asked for; unit norm in coordinates, in the order of
    ``eigenvalues``): from :func:`landscape.hessian_eigenvalues` a tuple of dicts of
    parameter-shaped tensors (zero at fixed entries); from :func:`lanczos_eigen` on a bare
    operator an ``(n, k)`` tensor whose columns are the eigenvectors.
    """

    eigenvalues: np.ndarray
    which: np.ndarray
    residuals: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    lanczos_steps: int
    tol: float
    hvps: int = 0
    seconds: float = float("nan")
    eigenvectors: tuple[dict[str, Tensor], ...] | Tensor | None = dataclasses.field(
        default=None, repr=False
    )
    # the Ritz vectors as coordinate rows (k, n); only behind the deprecated ``vectors``
    _coordinates: Tensor | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def steps(self) -> int:
        """Deprecated name of :attr:`lanczos_steps`."""
        warn_renamed("EigenResult.steps", "EigenResult.lanczos_steps")
        return self.lanczos_steps

    @property
    def vectors(self) -> Tensor | None:
        """Deprecated: the eigenvectors as coordinate rows ``(k, n)``; use :attr:`eigenvectors`."""
        warn_renamed("EigenResult.vectors", "EigenResult.eigenvectors")
        return self._coordinates

    @property
    def all_converged(self) -> bool:
        return bool(np.all(self.converged))

    @property
    def lambda_max(self) -> float:
        sel = self.eigenvalues[self.which == "largest"]
        return float(sel.max()) if sel.size else float("nan")

    @property
    def lambda_min(self) -> float:
        sel = self.eigenvalues[self.which == "smallest"]
        return float(sel.min()) if sel.size else float("nan")

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "which": self.which,
                "eigenvalue": self.eigenvalues,
                "residual": self.residuals,
                "error_bound": self.error_bounds,
                "converged": self.converged,
            }
        )


def _ritz(alpha: np.ndarray, beta: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal ``T_m`` in float64 (ascending), via LAPACK ``dstev``."""
    if m == 1:
        return alpha[:1].copy(), np.ones((1, 1))
    w, z, info = dstev(
        np.array(alpha[:m], dtype=np.float64), np.array(beta[: m - 1], dtype=np.float64)
    )
    if info != 0:  # pragma: no cover - dstev fails only on non-finite input, which is caught before
        return eigh_tridiagonal(alpha[:m], beta[: m - 1])
    return w, z


def _wanted(theta: np.ndarray, k: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ascending ``theta`` of the wanted Ritz values, and their labels."""
    m = theta.size
    top = np.arange(m - 1, max(m - k, 0) - 1, -1)
    bottom = np.arange(0, min(k, m))
    if which == "largest":
        return top, np.array(["largest"] * top.size)
    if which == "smallest":
        return bottom, np.array(["smallest"] * bottom.size)
    return np.concatenate([top, bottom]), np.array(
        ["largest"] * top.size + ["smallest"] * bottom.size
    )


def _bounds(theta: np.ndarray, resid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``min(r_i, r_i^2 / gap_i)`` for ascending ``theta``; gap: distance to the nearest other Ritz value."""
    r = resid[idx]
    if theta.size < 2:
        return r.copy()
    d = np.diff(theta)
    gap = np.minimum(np.concatenate([[np.inf], d]), np.concatenate([d, [np.inf]]))[idx]
    return np.where(gap > r, np.minimum(r, r * r / np.maximum(gap, 1e-300)), r)


def _converged(
    theta: np.ndarray, resid: np.ndarray, k: int, which: str, tol: float
) -> tuple[np.ndarray, ...]:
    """Indices, labels and error bounds of the wanted Ritz values, and whether each bound is
    ``<= tol * max(|theta_i|, REL_FLOOR max|theta|)``: the one stopping rule, also reported as ``converged``."""
    idx, labels = _wanted(theta, k, which)
    bounds = _bounds(theta, resid, idx)
    floor = REL_FLOOR * max(float(np.max(np.abs(theta))), 1e-300)
    return idx, labels, bounds, bounds <= tol * np.maximum(np.abs(theta[idx]), floor)


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
    **renamed: Any,
) -> EigenResult:
    """Lanczos with full reorthogonalisation, stopping on Ritz residuals.

    After step ``m`` (``T_m = S diag(theta) S^T``, next coefficient ``beta_m``) the Ritz
    pair ``(theta_i, V_m s_i)`` has residual ``r_i = beta_m |s_{m,i}|``. The run stops when
    every wanted pair has ``min(r_i, r_i^2/gap_i) <= tol * max(|theta_i|, 1e-3 max|theta|)``
    (``gap_i``: distance to the nearest other Ritz value), at ``max_steps`` Lanczos steps, or
    when the Krylov space is exhausted (``r = 0``). A breakdown before enough Ritz values
    exist restarts from a fresh random vector orthogonal to the basis.

    ``operator``: see the module notes (a function is called on one vector ``(n,)``).
    ``return_eigenvectors``: the Ritz vectors ``V_m s_i`` as the columns of
    ``eigenvectors`` ``(n, k)``, unit norm, largest-magnitude entry positive.
    (``return_vectors`` is the deprecated name of ``return_eigenvectors``.)
    """
    return_eigenvectors = renamed_keywords(
        "lanczos_eigen",
        renamed,
        {"return_vectors": "return_eigenvectors"},
        {"return_eigenvectors": return_eigenvectors},
        {"return_eigenvectors": False},
    )["return_eigenvectors"]
    matvec, n, dtype, device = as_product(operator, n, dtype, device)
    limit = int(min(max_steps, n))
    need = min(n, k if which != "both" else 2 * k)
    cap = min(limit + 1, 64)
    V = torch.empty(cap, n, dtype=dtype, device=device)
    v = _rng_normal((n,), seed, dtype, device)
    V[0] = v / v.norm()
    alpha, beta = np.zeros(limit), np.zeros(limit)
    theta = resid = None
    restarts = 0
    m = 0
    for j in range(limit):
        w = matvec(V[j])
        alpha[j] = float(torch.dot(V[j], w))
        Vj = V[: j + 1]
        before = float(w.norm())
        w = w - Vj.T @ (Vj @ w)
        b = float(w.norm())
        if (
            b < 0.7071 * before
        ):  # lost digits to cancellation: orthogonalise once more (DGKS; twice is enough)
            w = w - Vj.T @ (Vj @ w)
            b = float(w.norm())
        if not (math.isfinite(alpha[j]) and math.isfinite(b)):
            raise UserError(_NAN)
        beta[j] = b
        m = j + 1
        theta, S = _ritz(alpha, beta, m)
        scale = max(float(np.max(np.abs(theta))), 1e-300)
        breakdown = b <= 1e-10 * scale
        resid = np.abs(S[-1, :]) * (0.0 if breakdown else b)
        if (
            m >= need
            and m < n
            and (m > need or breakdown)
            and _converged(theta, resid, k, which, tol)[3].all()
        ):
            break
        if m == limit:
            break
        if m == cap:
            cap = min(limit + 1, 2 * cap)
            V = torch.cat([V, torch.empty(cap - V.shape[0], n, dtype=dtype, device=device)])
        if breakdown:
            # invariant subspace: continue in its complement (T becomes block diagonal)
            restarts += 1
            w = _rng_normal((n,), seed + 7919 * restarts, dtype, device)
            for _ in range(2):
                w = w - V[:m].T @ (V[:m] @ w)
            b, beta[j] = float(w.norm()), 0.0
        V[j + 1] = w / b
    idx, labels, bounds, conv = _converged(theta, resid, k, which, tol)
    vectors = None
    if return_eigenvectors:
        S_sel = torch.as_tensor(S[:, idx], dtype=dtype, device=device)
        vectors = S_sel.T @ V[:m]
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
        # sign convention: largest-magnitude entry positive, so a seed gives one answer
        pick = vectors.abs().argmax(dim=1)
        vectors = vectors * torch.sign(vectors.gather(1, pick[:, None]))
    return EigenResult(
        theta[idx].astype(np.float64),
        labels,
        resid[idx],
        bounds,
        np.asarray(conv | (m == n), dtype=bool),
        m,
        float(tol),
        eigenvectors=None if vectors is None else vectors.T,
        _coordinates=vectors,
    )


# ---------------------------------------------------------------------------------------- density
@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: ``density`` on ``grid`` (integrates to 1), raw ``nodes``/``weights``.

    ``nodes[r, j]`` and ``weights[r, j]`` (run ``r``, node ``j``; NaN/0 padding after an
    early breakdown) define the discrete measure ``(1/R) sum_r sum_j w_rj delta(theta_rj)``
    which approximates ``(1/n) sum_i delta(lambda_i)``; ``density`` is it convolved with
    ``N(0, sigma^2)``.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n: int
    hvps: int = 0
    seconds: float = float("nan")

    @property
    def trace(self) -> float:
        """SLQ estimate of ``tr H = n * E[sum_j w_j theta_j]``."""
        return float(
            self.n * np.nanmean(np.nansum(self.weights * np.nan_to_num(self.nodes), axis=1))
        )

    def negative_mass(self, rel_zero: float = 1e-4) -> float:
        """Share of eigenvalues below ``-rel_zero * max|theta|`` (estimated fraction of negative eigenvalues)."""
        thr = rel_zero * np.nanmax(np.abs(self.nodes))
        return float(np.sum(np.where(self.nodes < -thr, self.weights, 0.0)) / self.nodes.shape[0])

    def negative_abs_ratio(self) -> float:
        """``sum_{lambda<0} |lambda| / sum |lambda|``: share of curvature magnitude in negative directions."""
        a = self.weights * np.abs(np.nan_to_num(self.nodes))
        tot = float(a.sum())
        return float(a[np.nan_to_num(self.nodes) < 0].sum() / tot) if tot > 0 else 0.0

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"eigenvalue": self.grid, "density": self.density})


def broadened_density(
    nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float
) -> np.ndarray:
    """``sum_j w_j N(t; theta_j, sigma^2)`` on ``grid`` (``nodes``/``weights`` flat, NaN nodes ignored)."""
    ok = np.isfinite(nodes) & (weights > 0)
    d = (grid[:, None] - nodes[ok][None, :]) / sigma
    return (np.exp(-0.5 * d * d) @ weights[ok]) / (sigma * np.sqrt(2 * np.pi))


def slq(
    operator: Operator,
    n: int | None = None,
    *,
    num_runs: int = 10,
    lanczos_steps: int = 80,
    sigma: float | None = None,
    grid: int | np.ndarray = 1000,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **renamed: Any,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature with Gaussian broadening.

    ``num_runs`` Lanczos runs (full reorthogonalisation, run in lock-step so every product
    is one operator product on a matrix of ``num_runs`` columns) of ``lanczos_steps`` steps
    from Gaussian unit vectors. Default width: ``sigma = 0.01 * (max node - min node)`` (1% of
    the spectral range); the default grid has ``grid`` points from ``min node - 5 sigma`` to
    ``max node + 5 sigma``. (``steps`` is the deprecated name of ``lanczos_steps``.)
    """
    lanczos_steps = renamed_keywords(
        "slq",
        renamed,
        {"steps": "lanczos_steps"},
        {"lanczos_steps": lanczos_steps},
        {"lanczos_steps": 80},
    )["lanczos_steps"]
    if num_runs < 1 or lanczos_steps < 1:
        raise UserError(
            f"spectral density needs num_runs >= 1 and lanczos_steps >= 1, got {num_runs} and {lanczos_steps}"
        )
    if sigma is not None and not sigma > 0:
        raise UserError(f"sigma must be positive, got {sigma}")
    matmat, n, dtype, device = as_product(operator, n, dtype, device)
    m = int(min(lanczos_steps, n))
    item = torch.empty((), dtype=dtype).element_size()
    group = max(1, min(num_runs, BASIS_BYTES // max(1, m * n * item)))
    nodes = np.full((num_runs, m), np.nan)
    weights = np.zeros((num_runs, m))
    start = _rng_normal((num_runs, n), seed, dtype, device)
    for g0 in range(0, num_runs, group):
        V0 = start[g0 : g0 + group]
        a, b, lens = _lanczos_block(matmat, V0 / V0.norm(dim=1, keepdim=True), m)
        for r in range(V0.shape[0]):
            th, S = _ritz(a[r], b[r], lens[r])
            nodes[g0 + r, : lens[r]] = th
            weights[g0 + r, : lens[r]] = S[0, :] ** 2
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if np.isscalar(grid):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    dens = broadened_density(nodes.ravel(), weights.ravel(), grid, float(sigma)) / num_runs
    return SpectralDensity(grid, dens, nodes, weights, float(sigma), int(n))


def _lanczos_block(
    matmat: Product, V0: Tensor, lanczos_steps: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """``R`` independent fully reorthogonalised Lanczos runs in lock-step; rows of ``V0`` are unit vectors."""
    R, n = V0.shape
    Q = torch.zeros(lanczos_steps, R, n, dtype=V0.dtype, device=V0.device)
    Q[0] = V0
    alpha, beta = np.zeros((R, lanczos_steps)), np.zeros((R, lanczos_steps))
    lens = [lanczos_steps] * R
    alive = np.ones(R, dtype=bool)
    for j in range(lanczos_steps):
        W = _on_rows(matmat, Q[j])
        _check_finite(W)
        alpha[:, j] = (Q[j] * W).sum(dim=1).double().cpu().numpy()
        B = Q[: j + 1]  # (j+1, R, n)
        for _ in range(2):
            W = W - torch.einsum("jr,jrn->rn", torch.einsum("jrn,rn->jr", B, W), B)
        nb = W.norm(dim=1).double().cpu().numpy()
        beta[:, j] = nb
        if j + 1 == lanczos_steps:
            break
        for r in range(R):
            scale = max(np.max(np.abs(alpha[r, : j + 1])), 1e-300)
            if alive[r] and nb[r] <= 1e-10 * scale:
                alive[r], lens[r] = False, j + 1  # invariant subspace: the quadrature is exact
        mask = torch.as_tensor(alive, device=W.device)
        Q[j + 1] = torch.where(
            mask[:, None],
            W / torch.as_tensor(np.where(alive, nb, 1.0), dtype=W.dtype, device=W.device)[:, None],
            0,
        )
        if not alive.any():
            break
    return alpha, beta, lens


# ---------------------------------------------------------------------------------------- trace
@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its standard error.

    ``estimator`` is ``"hutch++"`` or ``"hutchinson"``; ``samples`` are the Hutchinson terms
    ``z_i^T A z_i`` (of the deflated operator for Hutch++, whose exact low-rank part is
    ``exact_part``).
    """

    trace: float
    stderr: float
    estimator: str
    num_queries: int
    samples: np.ndarray
    exact_part: float = 0.0
    hvps: int = 0
    seconds: float = float("nan")

    @property
    def method(self) -> str:
        """Deprecated name of :attr:`estimator`."""
        warn_renamed("TraceEstimate.method", "TraceEstimate.estimator")
        return self.estimator

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "estimator": self.estimator,
                    "trace": self.trace,
                    "stderr": self.stderr,
                    "num_queries": self.num_queries,
                    "hvps": self.hvps,
                }
            ]
        )


def _quad_forms(matmat: Product, Z: Tensor) -> np.ndarray:
    """``z_i^T A z_i`` for the rows ``z_i`` of ``Z``, in float64."""
    HZ = _on_rows(matmat, Z)
    _check_finite(HZ)
    return (Z.double() * HZ.double()).sum(dim=1).cpu().numpy()


def _stderr(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def hutchinson(
    operator: Operator,
    n: int | None = None,
    *,
    num_queries: int = 60,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """``tr A ~ mean_i z_i^T A z_i`` over Rademacher ``z_i``; standard error ``std / sqrt(m)``.

    ``operator``: see the module notes (a function is called on a matrix of columns).
    """
    matmat, n, dtype, device = as_product(operator, n, dtype, device)
    s = _quad_forms(matmat, _rng_rademacher((num_queries, n), seed, dtype, device))
    return TraceEstimate(float(s.mean()), _stderr(s), "hutchinson", int(num_queries), s)


def hutchpp(
    operator: Operator,
    n: int | None = None,
    *,
    num_queries: int = 60,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> TraceEstimate:
    """Hutch++: ``tr(Q^T A Q) + mean_i g_i^T P A P g_i`` with ``Q = orth(A S)``, ``P = I - QQ^T``.

    ``m/3`` queries sketch (Rademacher ``S``), ``m/3`` give the exact part, the remaining
    ``m - 2 m/3`` Rademacher ``g_i`` the deflated Hutchinson part and its standard error.
    ``operator``: see the module notes (a function is called on a matrix of columns).
    """
    matmat, n, dtype, device = as_product(operator, n, dtype, device)
    s = min(num_queries // 3, n)
    g = num_queries - 2 * s
    Z = _rng_rademacher((s + g, n), seed, dtype, device)
    Y = _on_rows(matmat, Z[:s])
    _check_finite(Y)
    Q = torch.linalg.qr(Y.double().T).Q  # (n, s), float64 for a clean projector
    exact = float(_quad_forms(matmat, Q.T.contiguous().to(dtype)).sum())
    G = Z[s:].double()
    G = (G - (G @ Q) @ Q.T).to(dtype)
    samples = _quad_forms(matmat, G)
    return TraceEstimate(
        exact + float(samples.mean()), _stderr(samples), "hutch++", int(num_queries), samples, exact
    )
