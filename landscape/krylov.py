"""What every Krylov solver here shares: operators, random vectors, Ritz values, the stopping rule.

The operator ``A`` (``n x n``, symmetric) is given as an object with ``shape`` and ``@``
(a :class:`landscape.hessian.HessianOperator`, a dense ``torch.Tensor``), or as a function
with ``n``: single-vector Lanczos calls it on one vector (``v -> A v``, shape ``(n,)``), the
other solvers on a matrix of columns (``V -> A V``, shapes ``(n, b) -> (n, b)``), the
convention of ``scipy.sparse.linalg.LinearOperator``. Inside, the algorithms keep their
vectors as the rows of a ``(b, n)`` tensor (contiguous, for the reorthogonalisation) and hand
the operator their transpose. Krylov vectors stay in the operator's dtype and device; the
small projected problems are solved in float64.

Stopping rule (one for every eigenvalue solver): a Ritz pair ``(theta_i, y_i)`` with residual
``r_i = ||A y_i - theta_i y_i||`` has an eigenvalue within ``r_i`` of ``theta_i``, and within
``r_i^2 / gap_i`` when the other eigenvalues are at least ``gap_i`` away; the bound used is
``min(r_i, r_i^2 / gap_i)`` (``gap_i`` from the Ritz values, applied only when
``gap_i > r_i``), and a value has converged when its bound is
``<= tol * max(|theta_i|, REL_FLOOR max_j |theta_j|)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.linalg import eigh_tridiagonal
from scipy.linalg.lapack import dstev
from torch import Tensor

from .deprecation import warn_renamed
from .errors import UserError

#: ``x -> A x`` on a vector ``(n,)`` or on the columns of a matrix ``(n, b)``
Product = Callable[[Tensor], Tensor]
#: an operator: an object with ``shape`` and ``@`` (HessianOperator, dense Tensor) or a product function
Operator = Any
#: memory for a Krylov basis that the default step limits respect (bytes)
BASIS_BYTES = 2 * 1024**3
#: eigenvalues below this fraction of max |theta| are resolved to absolute, not relative, accuracy
REL_FLOOR = 1e-3
#: a residual below this fraction of max |theta| is a breakdown: the Krylov space is invariant
BREAKDOWN = 1e-10

NAN_PRODUCT = "a Hessian-vector product is NaN or Inf: the loss is not twice differentiable here (check weights and data)"


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


def on_rows(product: Product, R: Tensor) -> Tensor:
    """``(A r_1, ..., A r_b)`` as rows, for the rows ``r_i`` of ``R``: the operator sees columns."""
    return product(R.T).T


def rng_normal(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Standard normal entries drawn on the CPU in float64, so a seed gives the same vectors on every device and dtype."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def rng_rademacher(
    shape: tuple[int, ...], seed: int, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Entries +-1 with equal probability (drawn on the CPU, as :func:`rng_normal`)."""
    g = torch.Generator().manual_seed(int(seed))
    return (torch.randint(0, 2, shape, generator=g, dtype=torch.int8) * 2 - 1).to(
        device=device, dtype=dtype
    )


def check_finite(w: Tensor) -> None:
    """:class:`UserError` when a product has a NaN or Inf entry."""
    if not torch.isfinite(w).all():
        raise UserError(NAN_PRODUCT)


def ritz_tridiagonal(alpha: np.ndarray, beta: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of the symmetric tridiagonal ``T_m`` (diagonal ``alpha``, off-diagonal ``beta``)
    in float64, ascending, via LAPACK ``dstev``."""
    if m == 1:
        return np.array(alpha[:1], dtype=np.float64), np.ones((1, 1))
    w, z, info = dstev(
        np.array(alpha[:m], dtype=np.float64), np.array(beta[: m - 1], dtype=np.float64)
    )
    if info != 0:  # pragma: no cover - dstev fails only on non-finite input, which is caught before
        return eigh_tridiagonal(alpha[:m], beta[: m - 1])
    return w, z


def wanted(theta: np.ndarray, k: int, which: str) -> tuple[np.ndarray, np.ndarray]:
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


def error_bounds(theta: np.ndarray, resid: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``min(r_i, r_i^2 / gap_i)`` for ascending ``theta``; gap: distance to the nearest other Ritz value."""
    r = resid[idx]
    if theta.size < 2:
        return r.copy()
    d = np.diff(theta)
    gap = np.minimum(np.concatenate([[np.inf], d]), np.concatenate([d, [np.inf]]))[idx]
    return np.where(gap > r, np.minimum(r, r * r / np.maximum(gap, 1e-300)), r)


def converged(
    theta: np.ndarray, resid: np.ndarray, k: int, which: str, tol: float
) -> tuple[np.ndarray, ...]:
    """Indices, labels and error bounds of the wanted Ritz values, and whether each bound is
    ``<= tol * max(|theta_i|, REL_FLOOR max|theta|)``: the one stopping rule, also reported as ``converged``."""
    idx, labels = wanted(theta, k, which)
    bounds = error_bounds(theta, resid, idx)
    floor = REL_FLOOR * max(float(np.max(np.abs(theta))), 1e-300)
    return idx, labels, bounds, bounds <= tol * np.maximum(np.abs(theta[idx]), floor)


def signed_unit_rows(vectors: Tensor) -> Tensor:
    """Rows scaled to unit norm with their largest-magnitude entry positive, so a seed gives one answer."""
    vectors = vectors / vectors.norm(dim=1, keepdim=True)
    pick = vectors.abs().argmax(dim=1)
    return vectors * torch.sign(vectors.gather(1, pick[:, None]))


@dataclass(frozen=True)
class LanczosRun:
    """A single-vector Lanczos run that can be continued (a stochastic Lanczos quadrature run, say).

    ``basis`` holds ``m + 1`` rows: the Lanczos vectors ``v_1 .. v_m`` and the next one,
    ``v_{m+1}`` (unit norm, or zero after a breakdown); ``alpha`` and ``beta`` (``m`` each) are
    the tridiagonal coefficients, ``beta[m-1]`` the norm of the last residual, so that
    ``A V_m = V_m T_m + beta_m v_{m+1} e_m^T``. ``label`` says where the run came from.
    """

    basis: Tensor
    alpha: np.ndarray
    beta: np.ndarray
    label: str = "density run"

    @property
    def steps(self) -> int:
        return int(self.alpha.size)


@dataclass(frozen=True)
class EigenResult:
    """Extreme eigenvalues from (block) Lanczos.

    ``eigenvalues[i]`` with ``which[i]`` (``largest``, in descending order, then
    ``smallest``, ascending); ``residuals`` are the Ritz residuals
    ``||H y_i - theta_i y_i||`` (some eigenvalue lies within that distance);
    ``error_bounds`` the gap-refined bounds ``min(r_i, r_i^2 / gap_i)``; ``converged`` says
    whether the bound met the tolerance; ``lanczos_steps`` is the number of Lanczos steps
    run, each a product with a block of ``block_size`` vectors (1: single-vector Lanczos).
    ``start`` says where the Krylov space began: ``"random"``, ``"given"`` (start vectors
    passed in) or ``"density run"`` (a stochastic Lanczos quadrature run, continued).
    ``hvps`` counts Hessian-vector products.

    ``eigenvectors`` (when asked for; unit norm in coordinates, in the order of
    ``eigenvalues``): from :func:`landscape.hessian_eigenvalues` a tuple of dicts of
    parameter-shaped tensors (zero at fixed entries); from
    :func:`landscape.lanczos.lanczos_eigen` on a bare operator an ``(n, k)`` tensor whose
    columns are the eigenvectors.
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
    block_size: int = 1
    start: str = "random"

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
    def algorithm(self) -> str:
        """``"lanczos"`` (single-vector) or ``"block lanczos"``."""
        return "lanczos" if self.block_size == 1 else "block lanczos"

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


def eigen_result(
    theta: np.ndarray,
    resid: np.ndarray,
    k: int,
    which: str,
    tol: float,
    steps: int,
    *,
    exhausted: bool,
    ritz: tuple[np.ndarray, Tensor] | None,
    block_size: int = 1,
    start: str = "random",
) -> EigenResult:
    """The :class:`EigenResult` of ascending Ritz values ``theta`` with residuals ``resid``.

    ``exhausted``: the Krylov space is the whole space (every value exact); ``ritz``, when
    eigenvectors are wanted: ``(S, basis)``, the eigenvectors of the projected matrix as the
    columns of ``S`` and the Krylov basis as rows, from which the Ritz vectors are formed.
    """
    idx, labels, bounds, conv = converged(theta, resid, k, which, tol)
    vectors = None
    if ritz is not None:
        S, basis = ritz
        coef = torch.as_tensor(S[:, idx].T.copy(), dtype=basis.dtype, device=basis.device)
        vectors = signed_unit_rows(coef @ basis)
    return EigenResult(
        theta[idx].astype(np.float64),
        labels,
        resid[idx],
        bounds,
        np.asarray(conv | exhausted, dtype=bool),
        int(steps),
        float(tol),
        eigenvectors=None if vectors is None else vectors.T,
        _coordinates=vectors,
        block_size=int(block_size),
        start=start,
    )
