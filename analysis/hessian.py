"""Hessian study: extreme eigenvalues, trace and spectral density of every trained network.

Records ``/hessian/<group>/<seedK>`` (one per final checkpoint), Hessian of the mean loss
over the chosen split (default ``train``), model in eval mode:

- datasets ``eigenvalues`` (``k``; the k largest, descending), ``residuals``,
  ``error_bounds``, ``converged``; ``smallest``, ``smallest_residuals``,
  ``smallest_error_bounds``, ``smallest_converged`` (the k most negative, ascending);
- with the trace: ``trace_samples`` (the Hutchinson terms);
- with the density: ``density`` on ``eigenvalue_grid``, and the raw quadrature
  ``slq_nodes`` / ``slq_weights`` (``run`` x ``node``);
- attrs ``lambda_max``, ``lambda_min``, ``trace``, ``trace_stderr``, ``negative_mass``
  (share of eigenvalues below zero, from the quadrature), ``negative_abs_ratio``,
  ``density_sigma``, ``hvps``, ``lanczos_steps_used``, ``all_converged``, ``coordinates``,
  ``loss``, ``seconds``, plus the settings, data and checkpoint provenance.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.hessian import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from landscape.params import ParamView
from landscape.store import Dataset

from .context import StudyContext
from .results import mean_std

ANALYSIS = "hessian"
UNITS = "nats per squared parameter unit"
SUMMARY = ("lambda_max", "lambda_min", "trace", "negative_mass")


def _eig_datasets(res, which: str) -> dict[str, Dataset]:
    """Datasets of one end of the spectrum: ``eigenvalues``, ``residuals``, ... or ``smallest``, ``smallest_residuals``, ..."""
    sel = res.which == which
    pre = "" if which == "largest" else "smallest_"
    what = "largest (descending)" if which == "largest" else "most negative (ascending)"
    return {
        "eigenvalues" if which == "largest" else "smallest": Dataset(
            res.eigenvalues[sel], ("k",), UNITS, f"the {what} Hessian eigenvalues (Ritz values)"
        ),
        pre + "residuals": Dataset(
            res.residuals[sel],
            ("k",),
            UNITS,
            "Ritz residual ||H y - theta y||: an eigenvalue lies within it",
        ),
        pre + "error_bounds": Dataset(
            res.error_bounds[sel], ("k",), UNITS, "gap-refined error bound min(r, r^2 / gap)"
        ),
        pre + "converged": Dataset(
            res.converged[sel].astype(np.uint8),
            ("k",),
            "1",
            "1 when the error bound met the tolerance",
        ),
    }


def analyse(
    op: HessianOperator,
    *,
    top_k: int,
    tol: float,
    max_steps: int | None,
    density: bool,
    trace: bool,
    num_runs: int,
    lanczos_steps: int,
    sigma: float | None,
    num_queries: int,
    trace_method: str,
    seed: int,
) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """Datasets and scalar attrs of one record (no store access)."""
    t0, h0 = time.perf_counter(), op.hvps
    eig = hessian_eigenvalues(op, k=top_k, which="both", tol=tol, max_steps=max_steps, seed=seed)
    ds = {**_eig_datasets(eig, "largest"), **_eig_datasets(eig, "smallest")}
    attrs: dict[str, Any] = {
        "lambda_max": eig.lambda_max,
        "lambda_min": eig.lambda_min,
        "all_converged": eig.all_converged,
        "lanczos_steps_used": eig.lanczos_steps,
        "coordinates": op.n,
        "samples": op.num_samples,
        "loss": op.loss,
        "trace": math.nan,
        "trace_stderr": math.nan,
        "negative_mass": math.nan,
        "negative_abs_ratio": math.nan,
    }
    if trace:
        tr = hessian_trace(op, estimator=trace_method, num_queries=num_queries, seed=seed)
        ds["trace_samples"] = Dataset(
            tr.samples,
            ("query",),
            UNITS,
            f"{tr.estimator} terms z^T A z (deflated operator for hutch++)",
        )
        attrs.update(trace=tr.trace, trace_stderr=tr.stderr, trace_method=tr.estimator)
    if density:
        d = spectral_density(
            op, num_runs=num_runs, lanczos_steps=lanczos_steps, sigma=sigma, seed=seed
        )
        ds["eigenvalue_grid"] = Dataset(
            d.grid, ("eigenvalue",), UNITS, "points where the density is evaluated"
        )
        ds["density"] = Dataset(
            d.density,
            ("eigenvalue",),
            f"1 / ({UNITS})",
            f"SLQ spectral density, Gaussian broadening sigma={d.sigma:.4g}; integrates to 1",
        )
        ds["slq_nodes"] = Dataset(
            d.nodes, ("run", "node"), UNITS, "Ritz values of each SLQ run (NaN: padding)"
        )
        ds["slq_weights"] = Dataset(
            d.weights,
            ("run", "node"),
            "1",
            "squared first components of the Ritz vectors (sum to 1 per run)",
        )
        attrs.update(
            negative_mass=d.negative_mass(),
            negative_abs_ratio=d.negative_abs_ratio(),
            density_sigma=d.sigma,
            slq_trace=d.trace,
        )
    attrs.update(hvps=op.hvps - h0, seconds=time.perf_counter() - t0)
    return ds, attrs


def study(
    ctx: StudyContext,
    *,
    top_k: int = 10,
    density: bool = True,
    trace: bool = True,
    split: str = "train",
    tol: float = 1e-4,
    max_steps: int | None = None,
    num_runs: int = 10,
    lanczos_steps: int = 80,
    sigma: float | None = None,
    num_queries: int = 60,
    trace_method: str = "hutch++",
    params: str | list[str] | None = None,
    seed: int = 0,
    seeds: int | None = None,
    groups: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Top and bottom ``top_k`` eigenvalues, trace and (``density=True``) SLQ density per group and seed.

    ``params`` restricts the Hessian to a parameter subset (glob patterns, see
    :class:`landscape.ParamView`); ``seeds`` limits the seeds per group (first N).
    Returns :func:`summary`: per group mean and std over seeds of ``lambda_max``,
    ``lambda_min``, ``trace`` and ``negative_mass``.
    """
    settings = dict(
        top_k=top_k,
        density=density,
        trace=trace,
        split=split,
        tol=tol,
        max_steps=max_steps,
        num_runs=num_runs,
        lanczos_steps=lanczos_steps,
        sigma=sigma,
        num_queries=num_queries,
        trace_method=trace_method,
        params=params,
        seed=seed,
        loss="mean over all samples of the split (cross-entropy)",
        model_mode="eval",
    )
    names = list(groups or ctx.groups)
    jobs = [
        (g, r)
        for g in names
        for r in (ctx.groups[g] if seeds is None else ctx.groups[g][: int(seeds)])
    ]
    todo = [(g, r) for g, r in jobs if not ctx.should_skip(f"{ANALYSIS}/{g}/{r.key}")]
    if todo and ctx.progress:
        per = (
            2 * min(top_k, 50) * 4
            + (num_queries if trace else 0)
            + (num_runs * lanczos_steps if density else 0)
        )
        print(
            f"hessian: {len(todo)} model(s) x about {per} Hessian-vector products (2-4 passes over the {split} data each)"
        )
    _validate(ctx, todo, top_k, split, params)
    rows: dict[str, list[dict[str, Any]]] = {g: [] for g in names}
    bar = tqdm(todo, desc="hessian", disable=not ctx.progress)
    for g, run in bar:
        key = f"{ANALYSIS}/{g}/{run.key}"
        bar.set_postfix_str(key, refresh=False)
        op = HessianOperator(ctx.model(run), ctx.batches(split), params=params, device=ctx.device)
        ds, values = analyse(
            op,
            top_k=top_k,
            tol=tol,
            max_steps=max_steps,
            density=density,
            trace=trace,
            num_runs=num_runs,
            lanczos_steps=lanczos_steps,
            sigma=sigma,
            num_queries=num_queries,
            trace_method=trace_method,
            seed=seed,
        )
        del op  # frees the cached gradient graphs before the next model
        attrs = ctx.record_attrs(ANALYSIS, g, run, splits=(split,), **settings)
        attrs.update(values)
        if ctx.store is not None:
            ctx.store.write(key, ds, attrs)
        rows[g].append(values)
    return summary(ctx, names, rows)


def _validate(ctx: StudyContext, todo, top_k: int, split: str, params) -> None:
    """Bad input raises before any record is written: subset, k, labels, NaN loss (one forward pass per model)."""
    for _g, run in todo:
        model = ctx.model(run)
        n = ParamView(model, select=params).numel
        if top_k > n:
            raise UserError(
                f"k={top_k} eigenvalues asked for, but {run.final} has only {n} coordinates in the chosen parameters: lower --top-k"
            )
        evaluate(model, ctx.batches(split))


def summary(
    ctx: StudyContext,
    groups: Iterable[str] | None = None,
    fresh: dict[str, list[dict[str, Any]]] | None = None,
) -> pd.DataFrame:
    """Per group: ``seeds`` and ``<name>_mean`` / ``<name>_std`` for lambda_max, lambda_min, trace, negative_mass."""
    out = []
    for g in list(groups or ctx.groups):
        if ctx.store is not None:
            vals = [ctx.store.read(k).attrs for k in ctx.store.keys(f"{ANALYSIS}/{g}")]
        else:
            vals = (fresh or {}).get(g, [])
        row: dict[str, Any] = {"group": g, "variant": ctx.variant(g), "seeds": len(vals)}
        for name in SUMMARY:
            m, s, n = mean_std(v.get(name, math.nan) for v in vals)
            row[f"{name}_mean"], row[f"{name}_std"] = m, (s if n > 1 else math.nan)
        out.append(row)
    return pd.DataFrame(out)
