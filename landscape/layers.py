"""Curvature per layer: the top eigenvalues and the trace of each layer's diagonal Hessian block.

For a split of the trainable coordinates into layers ``theta = (theta_1, ..., theta_L)``,
layer ``l``'s block is ``H_ll = d^2 L / d theta_l^2``: the Hessian of the same mean loss with
every other coordinate held fixed, i.e. :class:`landscape.HessianOperator` restricted to the
layer's parameters. Its largest eigenvalues come from the same Lanczos solver as the full
spectrum, its trace from the same estimators; a layer with no more coordinates than the trace
budget gets its exact trace from one product per coordinate (``e_i^T H e_i``). The blocks'
traces sum to the full trace exactly (``tr H = sum_l tr H_ll``), so the per-layer estimates
add up to the full estimate within their combined standard error.

Layers (``by``): ``"module"``: every module that owns trainable parameters directly (a
Linear, a LayerNorm, an embedding); an integer ``d``: parameters grouped by the first ``d``
components of their module path (``d=2`` makes ``blocks.0`` one layer of a transformer).
Fixed W-Asym entries are not coordinates (:class:`landscape.ParamView`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Data
from .errors import UserError
from .hessian import hessian_eigenvalues, hessian_trace
from .hessian_operator import HessianOperator
from .params import ParamView


def layer_parameters(model: nn.Module, by: str | int = "module") -> dict[str, list[str]]:
    """Layer name -> the names of its trainable parameters, in the model's order."""
    if not (by == "module" or (isinstance(by, int) and not isinstance(by, bool) and by >= 1)):
        raise UserError(f"layers by {by!r}: use 'module' or a positive depth of the module path")
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        path = name.rsplit(".", 1)[0] if "." in name else ""
        if by == "module":
            layer = path or "(model)"
        else:
            parts = name.split(".")[:-1]
            layer = ".".join(parts[:by]) or "(model)"
        out.setdefault(layer, []).append(name)
    if not out:
        raise UserError("the model has no trainable parameters")
    return out


@dataclass(frozen=True)
class LayerCurvature:
    """Per layer: coordinates, top eigenvalues of its block (NaN-padded to ``top_k``), trace
    and the trace's standard error (0 when exact)."""

    layers: tuple[str, ...]
    coordinates: np.ndarray
    eigenvalues: np.ndarray  # (layers, top_k), descending
    trace: np.ndarray
    trace_stderr: np.ndarray
    exact_trace: np.ndarray  # bool: the trace came from e_i^T H e_i over every coordinate
    estimator: str

    @property
    def total_trace(self) -> float:
        """``sum_l tr H_ll = tr H``."""
        return float(self.trace.sum())

    @property
    def total_stderr(self) -> float:
        """Standard error of :attr:`total_trace` (independent estimates per layer)."""
        return float(np.sqrt((self.trace_stderr**2).sum()))

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(
            {
                "layer": list(self.layers),
                "coordinates": self.coordinates,
                "top_eigenvalue": self.eigenvalues[:, 0],
                "trace": self.trace,
                "trace_stderr": self.trace_stderr,
                "exact_trace": self.exact_trace,
            }
        )
        return df


def _exact_trace(op: HessianOperator, chunk: int = 64) -> float:
    """``sum_i e_i^T H e_i`` in blocks of unit vectors (``n`` products)."""
    n, total = op.n, 0.0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        E = torch.zeros(stop - start, n, dtype=op.torch_dtype, device=op.device)
        E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        HE = op.matmat(E.T).T  # rows: H e_i
        total += float(HE[torch.arange(stop - start), torch.arange(start, stop)].double().sum())
    return total


def per_layer_curvature(
    model: nn.Module,
    data: Data,
    *,
    top_k: int = 1,
    num_queries: int = 30,
    estimator: str = "hutchinson",
    by: str | int = "module",
    tol: float = 1e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    hvp: str | None = None,
    objective=None,
) -> LayerCurvature:
    """Top ``top_k`` eigenvalues and trace of every layer's diagonal Hessian block (module doc).

    ``num_queries``: products per trace estimate; a layer with at most that many coordinates
    gets its exact trace instead. ``estimator``: ``"hutchinson"`` or ``"hutch++"``;
    ``objective``: the loss, as for :class:`landscape.HessianOperator`.
    """
    if top_k < 1 or num_queries < 1:
        raise UserError(f"top_k and num_queries must be positive, got {top_k}, {num_queries}")
    groups = layer_parameters(model, by)
    names, coords, eigs, traces, errs, exact = [], [], [], [], [], []
    for layer, params in groups.items():
        chosen = set(params)
        n = ParamView(model, select=lambda name, chosen=chosen: name in chosen).numel
        if n == 0:  # every entry fixed (a fully masked tensor): no coordinates, no block
            continue
        op = HessianOperator(
            model,
            data,
            params=lambda name, chosen=chosen: name in chosen,
            device=device,
            objective=objective,
            **({"hvp": hvp} if hvp else {}),
        )
        k = min(top_k, n)
        eig = hessian_eigenvalues(op, k=k, which="largest", tol=tol, seed=seed)
        row = np.full(top_k, np.nan)
        row[:k] = np.sort(np.asarray(eig.eigenvalues, dtype=float))[::-1][:k]
        if n <= num_queries:
            tr, err, ex = _exact_trace(op), 0.0, True
        else:
            est = hessian_trace(op, estimator=estimator, num_queries=num_queries, seed=seed)
            tr, err, ex = est.trace, est.stderr, False
        names.append(layer)
        coords.append(n)
        eigs.append(row)
        traces.append(tr)
        errs.append(err)
        exact.append(ex)
        del op
    return LayerCurvature(
        tuple(names),
        np.asarray(coords, dtype=np.int64),
        np.vstack(eigs),
        np.asarray(traces, dtype=float),
        np.asarray(errs, dtype=float),
        np.asarray(exact, dtype=bool),
        estimator,
    )
