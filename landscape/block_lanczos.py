"""Block Lanczos with full reorthogonalisation, for extreme eigenvalues of a symmetric operator.

From an orthonormal start block ``X_1`` (``n x b``) the recurrence

    W_j = A X_j - X_j A_j - X_{j-1} B_{j-1}^T = X_{j+1} B_j,      A_j = X_j^T A X_j,

builds an orthonormal basis ``Q_m = [X_1 ... X_m]`` of the block Krylov space
``span{X_1, A X_1, ..., A^{m-1} X_1}`` in which ``Q_m^T A Q_m = T_m`` is block tridiagonal
(diagonal blocks ``A_j``, off-diagonal blocks ``B_j``). Every step is one product with a
block of ``b`` vectors, which is what batched Hessian-vector products make cheap. After the
recurrence, ``W_j`` is orthogonalised against the whole basis (classical Gram-Schmidt, a
second pass where the first lost digits), so no ghost eigenvalues appear and the residuals
stay trustworthy.

Ritz pairs ``(theta_i, Q_m s_i)`` of ``T_m`` (float64, LAPACK's band solvers) have residuals
``||A Q_m s_i - theta_i Q_m s_i|| = ||W_m^T s_i^{(m)}||``, ``s_i^{(m)}`` the last ``b`` entries
of ``s_i``: computed from the Gram matrix ``W_m W_m^T``, so they hold whatever ``B_m`` keeps.
The stopping rule is that of :mod:`landscape.krylov`.

Deflation: when ``W_j`` loses rank (``||W_j u|| <= 1e-10 max|theta|`` for some unit ``u``: the
block Krylov space holds an invariant subspace), the missing directions are replaced by
random vectors orthogonal to the basis, with zero coupling in ``B_j``. The block keeps its
size, so the run goes on into the complement. A block of ``b`` vectors finds up to ``b``
copies of a repeated eigenvalue; single-vector Lanczos finds one.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import eig_banded, eigvals_banded
from torch import Tensor

from .errors import UserError
from .krylov import (
    BREAKDOWN,
    NAN_PRODUCT,
    EigenResult,
    Product,
    converged,
    eigen_result,
    on_rows,
    rng_normal,
)


def block_lanczos_eigen(
    matmat: Product,
    n: int,
    *,
    k: int,
    which: str,
    tol: float,
    max_vectors: int,
    block_size: int,
    seed: int,
    dtype: torch.dtype,
    device: torch.device,
    return_eigenvectors: bool = False,
    start: Tensor | None = None,
    start_products: Tensor | None = None,
    start_label: str = "random",
) -> EigenResult:
    """Extreme eigenvalues by block Lanczos (see the module notes).

    ``matmat`` maps columns ``(n, b)`` to ``(n, b)``. At most ``max_vectors`` basis vectors
    (products) are built, a block of ``block_size`` vectors per step (only a block that
    completes the whole space of ``n`` may be smaller). ``start``: rows
    ``(c, n)`` that begin the first block (orthonormalised; missing rows are random, drawn
    from ``seed``); ``start_products``: their products ``A start`` as rows, when already
    computed (``start`` must then be orthonormal). ``lanczos_steps`` in the result counts
    block steps.
    """
    b = int(max(1, min(block_size, n)))
    limit = int(min(max_vectors, n))
    need = min(n, 2 * k if which == "both" else k)
    rng = _Draws(seed, n, dtype, device)
    if start is None:
        start = rng.rows(b)
    else:
        rng.count = 1  # the seed's own draw is the caller's start (or unused)
        if start.shape[0] < b:
            start = torch.cat([start.to(device, dtype), rng.rows(b - start.shape[0])])
    first = int(min(b, limit))
    if start_products is None:
        X, _ = _orthonormal(start[:first].to(device, dtype), None, 1.0, rng)
    else:
        X = start[:first].to(device, dtype)

    cap = int(min(limit + b, max(8 * b, 64)))
    V = torch.empty(cap, n, dtype=dtype, device=device)
    T = np.zeros((limit + b, limit + b))
    V[:first] = X
    dim, size, steps, prev = 0, first, 0, 0
    theta = S = resid = None
    while True:
        X = V[dim : dim + size]
        W = start_products if steps == 0 and start_products is not None else on_rows(matmat, X)
        W = W.to(device, dtype)
        if not torch.isfinite(W).all():
            raise UserError(NAN_PRODUCT)
        if steps > 0:  # the block recurrence: minus X_{j-1} B_{j-1}^T (rows: B_{j-1} X_{j-1})
            Bp = torch.as_tensor(T[dim : dim + size, prev:dim], dtype=dtype, device=device)
            W = W - Bp @ V[prev:dim]
        A = (X.double() @ W.double().T).cpu().numpy()
        A = 0.5 * (A + A.T)
        T[dim : dim + size, dim : dim + size] = A
        W = W - torch.as_tensor(A, dtype=dtype, device=device) @ X
        # then the whole basis, for what rounding left; a second pass only where the first
        # lost more than 30% of a row's norm (reading a large basis costs like a product)
        basis = V[: dim + size]
        before = W.norm(dim=1)
        W = W - (W @ basis.T) @ basis
        if bool((W.norm(dim=1) < 0.7071 * before).any()):
            W = W - (W @ basis.T) @ basis
        steps, prev, dim = steps + 1, dim, dim + size
        G = (W.double() @ W.double().T).cpu().numpy()  # W_m W_m^T: residuals and the next block
        if not np.all(np.isfinite(G)):
            raise UserError(NAN_PRODUCT)
        exhausted = dim >= n
        # a block cut short would leave part of W_m out of the residuals: only the block that
        # completes the whole space may be smaller
        size = int(min(b, n - dim))
        last_step = exhausted or dim + size > limit
        if dim >= need + 1 or last_step:
            theta, S = _ritz_banded(T, dim, b, k, which)
            resid = np.full(dim, np.nan)
            if exhausted:
                resid[:] = 0.0
            else:
                cols = np.flatnonzero(np.any(S != 0, axis=0))
                last = S[prev:dim, cols]
                resid[cols] = np.sqrt(np.maximum(np.einsum("ji,jk,ki->i", last, G, last), 0.0))
            if last_step or converged(theta, resid, k, which, tol)[3].all():
                break
        # the size of A seen so far: max |theta| <= the infinity norm of T
        scale = max(float(np.abs(T[:dim, :dim]).sum(axis=1).max()), 1e-300)
        Q, B = _next_block(W, G, V[:dim], scale, rng, size)
        if dim + size > V.shape[0]:
            grow = int(min(limit + b, 2 * V.shape[0], dim + max(size, V.shape[0])))
            V = torch.cat([V, torch.empty(grow - V.shape[0], n, dtype=dtype, device=device)])
        V[dim : dim + size] = Q
        T[dim : dim + size, prev:dim] = B
        T[prev:dim, dim : dim + size] = B.T

    return eigen_result(
        theta,
        resid,
        k,
        which,
        tol,
        steps,
        exhausted=dim >= n,
        ritz=(S, V[:dim]) if return_eigenvectors else None,
        block_size=b,
        start=start_label,
    )


def _ritz_banded(
    T: np.ndarray, dim: int, b: int, k: int, which: str
) -> tuple[np.ndarray, np.ndarray]:
    """Every Ritz value (ascending) of the block-tridiagonal ``T[:dim, :dim]`` with blocks of
    ``b``, and ``S`` (``dim x dim``) holding the eigenvectors of the wanted ones only (the other
    columns zero). ``T`` is a band matrix of half-bandwidth ``2b - 1`` (the coupling blocks
    ``B_j`` are full): LAPACK's banded solvers, values for all, vectors for the wanted ends."""
    w = 2 * b - 1
    band = np.zeros((w + 1, dim))
    for d in range(min(w, dim - 1) + 1):
        band[d, : dim - d] = np.diagonal(T[:dim, :dim], -d)
    theta = eigvals_banded(band, lower=True)
    S = np.zeros((dim, dim))
    kk = min(k, dim)
    ranges = {"largest": [(dim - kk, dim - 1)], "smallest": [(0, kk - 1)]}.get(
        which, [(0, kk - 1), (dim - kk, dim - 1)] if 2 * kk < dim else [(0, dim - 1)]
    )
    for lo, hi in ranges:
        vals, vecs = eig_banded(band, lower=True, select="i", select_range=(lo, hi))
        theta[lo : hi + 1] = vals
        S[:, lo : hi + 1] = vecs
    return theta, S


class _Draws:
    """Random unit rows for start blocks and deflation, from ``seed`` and a running counter."""

    def __init__(self, seed: int, n: int, dtype: torch.dtype, device: torch.device):
        self.seed, self.n, self.dtype, self.device, self.count = int(seed), n, dtype, device, 0

    def rows(self, c: int) -> Tensor:
        # the first draw is the one single-vector Lanczos takes from the same seed
        seed = self.seed if self.count == 0 else self.seed + 7919 * self.count
        self.count += 1
        return rng_normal((c, self.n), seed, self.dtype, self.device)


def _orthonormal(
    R: Tensor, basis: Tensor | None, scale: float, rng: _Draws
) -> tuple[Tensor, np.ndarray]:
    """Orthonormal rows spanning ``R`` (minus ``basis``), and ``C`` with ``R ~= C^T Q``.

    Householder QR keeps the direction of the first row. Rows that add nothing new
    (``|r_ii| <= 1e-10 scale``) are replaced by random rows orthogonal to everything before,
    with zero coefficients.
    """
    Q, Rf = torch.linalg.qr(R.T)  # (n, c), (c, c): R^T = Q Rf, i.e. R = Rf^T Q^T
    Q = Q.T.contiguous()
    C = Rf.double().cpu().numpy()
    bad = np.abs(np.diag(C)) <= BREAKDOWN * scale * max(1.0, float(np.abs(C).max()))
    if bad.any():
        Q = _replace(Q, bad, basis, rng)
        C[bad, :] = 0.0
    return Q, C


def _next_block(
    W: Tensor, G: np.ndarray, basis: Tensor, scale: float, rng: _Draws, size: int
) -> tuple[Tensor, np.ndarray]:
    """The next block ``X_{j+1}`` (``size`` rows) and ``B_j`` with ``W ~= B_j^T X_{j+1}`` (rows).

    Rank-revealing through ``W W^T = U diag(s) U^T``: the directions with
    ``sqrt(s) > 1e-10 scale``, largest first, are ``diag(s)^{-1/2} U^T W``; the others become
    random rows orthogonal to the basis (zero coupling). The block is then orthogonalised
    against the basis once more and orthonormalised by QR (``X = R2^T X'``), which repairs
    what forming ``W W^T`` costs in accuracy.
    """
    s, U = np.linalg.eigh(G)
    order = np.argsort(s)[::-1][:size]
    s, U = np.maximum(s[order], 0.0), U[:, order]
    sig = np.sqrt(s)
    good = sig > BREAKDOWN * scale
    coef = torch.as_tensor((U[:, good] / sig[good]).T.copy(), dtype=W.dtype, device=W.device)
    rows = coef @ W
    C = np.zeros((size, W.shape[0]))
    C[: int(good.sum())] = (U[:, good] * sig[good]).T  # W = C^T rows (+ what was dropped)
    if not good.all():
        rows = torch.cat([rows, rng.rows(size - int(good.sum()))])
        rows = _orthogonalise(rows, basis, start=int(good.sum()))
    rows = rows - (rows @ basis.T) @ basis
    Q, R2 = torch.linalg.qr(rows.T)
    R2 = R2.double().cpu().numpy()
    # rows = R2^T Q^T, so W = C^T R2^T Q^T = (R2 C)^T X_{j+1}
    return Q.T.contiguous(), R2 @ C


def _replace(Q: Tensor, bad: np.ndarray, basis: Tensor | None, rng: _Draws) -> Tensor:
    """``Q`` with its ``bad`` rows replaced by random unit rows orthogonal to ``basis`` and the other rows."""
    idx = np.flatnonzero(bad)
    keep = Q[torch.as_tensor(~bad, device=Q.device)]
    fresh = rng.rows(idx.size)
    fresh = _orthogonalise(torch.cat([keep, fresh]), basis, start=keep.shape[0])[keep.shape[0] :]
    Q = Q.clone()
    Q[torch.as_tensor(idx, device=Q.device)] = fresh
    return Q


def _orthogonalise(rows: Tensor, basis: Tensor | None, start: int) -> Tensor:
    """Rows ``start:`` made unit and orthogonal to ``basis`` and to every row before them (twice)."""
    rows = rows.clone()
    for i in range(start, rows.shape[0]):
        v = rows[i]
        for _ in range(2):
            if basis is not None and basis.shape[0]:
                v = v - basis.T @ (basis @ v)
            if i:
                prior = rows[:i]
                v = v - prior.T @ (prior @ v)
        rows[i] = v / v.norm()
    return rows
