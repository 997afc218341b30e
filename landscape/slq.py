"""Stochastic Lanczos quadrature: the spectral density, and the trace it gives for free.

``R`` Lanczos runs of ``m`` steps from unit vectors ``v_r = g_r / ||g_r||`` (``g_r`` standard
normal) give, per run, the tridiagonal ``T_r = S_r diag(theta_r) S_r^T``. The quadrature
nodes are the Ritz values ``theta_rj`` and the weights ``w_rj = S_r[0, j]^2``, so that
``sum_j w_rj f(theta_rj) = e_1^T f(T_r) e_1 ~ v_r^T f(A) v_r`` (exact for polynomials of
degree ``< 2m``); averaged over runs and scaled by ``1/n`` it estimates
``(1/n) tr f(A) = (1/n) sum_i f(lambda_i)`` (Ubaru, Chen and Saad 2017).

Each run's first coefficient is ``alpha_r1 = v_r^T A v_r``. A unit vector drawn uniformly
from the sphere has ``E[v v^T] = I / n``, so ``n alpha_r1`` are Hutchinson samples of
``tr A`` on the same vectors, without a product more: ``trace = mean_r n alpha_r1`` with
standard error ``std / sqrt(R)``. (``f(t) = t`` above gives the same number:
``sum_j w_rj theta_rj = alpha_r1``.)

The runs run in lock-step, so every step is one product with a block of ``R`` vectors
(in groups, when the bases would exceed :data:`landscape.krylov.BASIS_BYTES`). With
``keep_run=True`` the run whose extreme Ritz values are closest to converged is kept whole
(:class:`landscape.krylov.LanczosRun`), so an eigenvalue solve can continue it instead of
starting again: see :func:`landscape.lanczos.lanczos_eigen`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .deprecation import renamed_keywords
from .errors import UserError
from .krylov import (
    BASIS_BYTES,
    BREAKDOWN,
    LanczosRun,
    Operator,
    Product,
    as_product,
    check_finite,
    converged,
    on_rows,
    ritz_tridiagonal,
    rng_normal,
)
from .trace import TraceEstimate, standard_error


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: ``density`` on ``grid`` (integrates to 1), raw ``nodes``/``weights``.

    ``nodes[r, j]`` and ``weights[r, j]`` (run ``r``, node ``j``; NaN/0 padding after an
    early breakdown) define the discrete measure ``(1/R) sum_r sum_j w_rj delta(theta_rj)``
    which approximates ``(1/n) sum_i delta(lambda_i)``; ``density`` is it convolved with
    ``N(0, sigma^2)``. ``trace_samples[r] = n v_r^T A v_r`` are the Hutchinson samples of the
    runs' start vectors (see the module notes); ``run`` the kept run (``keep_run=True``).
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    n: int
    hvps: int = 0
    seconds: float = float("nan")
    trace_samples: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    run: LanczosRun | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def trace(self) -> float:
        """SLQ estimate of ``tr A = n E[v^T A v] = n E[sum_j w_j theta_j]``."""
        if self.trace_samples.size:
            return float(np.mean(self.trace_samples))
        return float(
            self.n * np.nanmean(np.nansum(self.weights * np.nan_to_num(self.nodes), axis=1))
        )

    @property
    def trace_stderr(self) -> float:
        """Standard error of :attr:`trace`: ``std(n v_r^T A v_r) / sqrt(R)`` (NaN for one run)."""
        return standard_error(self.trace_samples)

    def trace_estimate(self) -> TraceEstimate:
        """The trace from the runs' start vectors as a :class:`TraceEstimate` (``estimator="slq"``;
        it cost no product beyond the density's, so ``hvps`` is 0)."""
        s = self.trace_samples
        return TraceEstimate(self.trace, self.trace_stderr, "slq", int(s.size), s)

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


def start_vectors(
    num_runs: int, n: int, seed: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """The runs' start vectors as unit rows ``(num_runs, n)``: normal draws from ``seed``, normalised."""
    start = rng_normal((num_runs, n), seed, dtype, device)
    return start / start.norm(dim=1, keepdim=True)


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
    keep_run: bool = False,
    **renamed: Any,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature with Gaussian broadening.

    ``num_runs`` Lanczos runs (full reorthogonalisation, run in lock-step so every product
    is one operator product on a matrix of ``num_runs`` columns) of ``lanczos_steps`` steps
    from Gaussian unit vectors (:func:`start_vectors`). Default width:
    ``sigma = 0.01 * (max node - min node)`` (1% of the spectral range); the default grid has
    ``grid`` points from ``min node - 5 sigma`` to ``max node + 5 sigma``. ``keep_run``: keep
    the run with the most converged extreme Ritz values as ``result.run`` (one basis of
    ``lanczos_steps + 1`` vectors). (``steps`` is the deprecated name of ``lanczos_steps``.)
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
    group = max(1, min(num_runs, BASIS_BYTES // max(1, (m + 1) * n * item)))
    nodes = np.full((num_runs, m), np.nan)
    weights = np.zeros((num_runs, m))
    first = np.zeros(num_runs)
    start = start_vectors(num_runs, n, seed, dtype, device)
    best, best_score = None, None
    for g0 in range(0, num_runs, group):
        V0 = start[g0 : g0 + group]
        a, b, lens, Q = _lockstep_lanczos(matmat, V0, m)
        first[g0 : g0 + V0.shape[0]] = a[:, 0]
        for r in range(V0.shape[0]):
            th, S = ritz_tridiagonal(a[r], b[r], lens[r])
            nodes[g0 + r, : lens[r]] = th
            weights[g0 + r, : lens[r]] = S[0, :] ** 2
            if keep_run:
                score = _run_score(th, S, b[r, lens[r] - 1])
                if best_score is None or score > best_score:
                    best_score = score
                    best = LanczosRun(
                        Q[: lens[r] + 1, r].clone(), a[r, : lens[r]].copy(), b[r, : lens[r]].copy()
                    )
        del Q
    lo, hi = float(np.nanmin(nodes)), float(np.nanmax(nodes))
    if sigma is None:
        sigma = 0.01 * (hi - lo) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    if np.isscalar(grid):
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, int(grid))
    grid = np.asarray(grid, dtype=np.float64)
    dens = broadened_density(nodes.ravel(), weights.ravel(), grid, float(sigma)) / num_runs
    return SpectralDensity(
        grid, dens, nodes, weights, float(sigma), int(n), trace_samples=n * first, run=best
    )


def _run_score(theta: np.ndarray, S: np.ndarray, beta_last: float) -> tuple[int, int, float]:
    """How far a run's extremes have converged: ``(min(top, bottom), top + bottom, -worst bound)``,
    ``top``/``bottom`` the number of Ritz values from each end in a row that meet tol 1e-4."""
    resid = np.abs(S[-1, :]) * beta_last
    kk = max(1, theta.size // 2)
    _, labels, bounds, ok = converged(theta, resid, kk, "both", 1e-4)
    top = int(np.argmin(np.append(ok[labels == "largest"], False)))
    bottom = int(np.argmin(np.append(ok[labels == "smallest"], False)))
    return (min(top, bottom), top + bottom, -float(np.max(bounds)))


def _lockstep_lanczos(
    matmat: Product, V0: Tensor, lanczos_steps: int
) -> tuple[np.ndarray, np.ndarray, list[int], Tensor]:
    """``R`` independent fully reorthogonalised Lanczos runs in lock-step; rows of ``V0`` are unit vectors.

    Returns ``alpha``, ``beta`` (``(R, steps)``), the steps each run took before a breakdown
    (an invariant subspace: its quadrature is exact), and the bases ``Q`` (``(steps + 1, R, n)``;
    ``Q[lens[r], r]`` is the run's next unit vector, zero after a breakdown).
    """
    R, n = V0.shape
    Q = torch.zeros(lanczos_steps + 1, R, n, dtype=V0.dtype, device=V0.device)
    Q[0] = V0
    alpha, beta = np.zeros((R, lanczos_steps)), np.zeros((R, lanczos_steps))
    lens = [lanczos_steps] * R
    alive = np.ones(R, dtype=bool)
    for j in range(lanczos_steps):
        W = on_rows(matmat, Q[j])
        check_finite(W)
        if j > 0:  # the three-term recurrence (runs that broke down have zero vectors)
            b_prev = np.where(alive, beta[:, j - 1], 0.0)
            W = W - torch.as_tensor(b_prev, dtype=W.dtype, device=W.device)[:, None] * Q[j - 1]
        a = (Q[j] * W).sum(dim=1)
        alpha[:, j] = a.double().cpu().numpy()
        W = W - a[:, None] * Q[j]
        # then the whole basis, for what rounding left; twice where the first pass lost digits
        B = Q[: j + 1]  # (j+1, R, n)
        before = W.norm(dim=1)
        W = W - torch.einsum("jr,jrn->rn", torch.einsum("jrn,rn->jr", B, W), B)
        if bool((W.norm(dim=1) < 0.7071 * before).any()):
            W = W - torch.einsum("jr,jrn->rn", torch.einsum("jrn,rn->jr", B, W), B)
        nb = W.norm(dim=1).double().cpu().numpy()
        beta[:, j] = nb
        for r in range(R):
            scale = max(np.max(np.abs(alpha[r, : j + 1])), 1e-300)
            if alive[r] and nb[r] <= BREAKDOWN * scale:
                alive[r], lens[r] = False, j + 1  # invariant subspace: the quadrature is exact
        mask = torch.as_tensor(alive, device=W.device)
        Q[j + 1] = torch.where(
            mask[:, None],
            W / torch.as_tensor(np.where(alive, nb, 1.0), dtype=W.dtype, device=W.device)[:, None],
            0,
        )
        if not alive.any():
            break
    return alpha, beta, lens, Q
