"""Stochastic trace estimators: Hutchinson and Hutch++, with standard errors.

The operator conventions are those of :mod:`landscape.krylov` (a function is called on a
matrix of columns). The trace that the spectral density gives without extra products is in
:mod:`landscape.slq` (``estimator="slq"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .deprecation import warn_renamed
from .errors import UserError
from .krylov import Operator, Product, as_product, check_finite, on_rows, rng_rademacher

#: trace estimators of :func:`hutchpp` and :func:`hutchinson`
ESTIMATORS = ("hutch++", "hutchinson")


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate with its standard error.

    ``estimator`` is ``"hutch++"``, ``"hutchinson"`` or ``"slq"`` (Hutchinson samples from
    the start vectors of a spectral density's runs); ``samples`` are the Hutchinson terms
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


def standard_error(x: np.ndarray) -> float:
    """``std(x, ddof=1) / sqrt(len(x))``; NaN for fewer than two samples."""
    return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")


def _quad_forms(matmat: Product, Z: Tensor) -> np.ndarray:
    """``z_i^T A z_i`` for the rows ``z_i`` of ``Z``, in float64."""
    HZ = on_rows(matmat, Z)
    check_finite(HZ)
    return (Z.double() * HZ.double()).sum(dim=1).cpu().numpy()


def hutchinson(
    operator: Operator,
    n: int | None = None,
    *,
    num_queries: int = 60,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    probes: Tensor | np.ndarray | None = None,
) -> TraceEstimate:
    """``tr A ~ mean_i z_i^T A z_i`` over Rademacher ``z_i``; standard error ``std / sqrt(m)``.

    ``probes``: your own probe vectors as the columns of an ``(n, m)`` matrix instead (any
    with ``E[z z^T] = I``; ``num_queries`` and ``seed`` are then unused).
    ``operator``: see the module notes (a function is called on a matrix of columns).
    """
    matmat, n, dtype, device = as_product(operator, n, dtype, device)
    if probes is None:
        Z = rng_rademacher((num_queries, n), seed, dtype, device)
    else:
        Z = torch.as_tensor(probes).to(device=device, dtype=dtype)
        if Z.ndim != 2 or Z.shape[0] != n:
            raise UserError(f"probes must be an ({n}, m) matrix of columns, got {tuple(Z.shape)}")
        Z = Z.T.contiguous()
    s = _quad_forms(matmat, Z)
    return TraceEstimate(float(s.mean()), standard_error(s), "hutchinson", int(s.size), s)


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
    Z = rng_rademacher((s + g, n), seed, dtype, device)
    Y = on_rows(matmat, Z[:s])
    check_finite(Y)
    Q = torch.linalg.qr(Y.double().T).Q  # (n, s), float64 for a clean projector
    exact = float(_quad_forms(matmat, Q.T.contiguous().to(dtype)).sum())
    G = Z[s:].double()
    G = (G - (G @ Q) @ Q.T).to(dtype)
    samples = _quad_forms(matmat, G)
    return TraceEstimate(
        exact + float(samples.mean()),
        standard_error(samples),
        "hutch++",
        int(num_queries),
        samples,
        exact,
    )
