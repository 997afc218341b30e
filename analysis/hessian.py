"""Hessian study: extreme eigenvalues, trace and spectral density of every trained network.

Records ``/hessian/<group>/<seedK>`` (one per final checkpoint): the Hessian of the mean
loss over the chosen split (default ``train``), model in eval mode. What each record holds
(the largest and most negative eigenvalues with their residuals and error bounds, the trace
samples, the SLQ density on its eigenvalue grid and the raw quadrature, the scalar
outcomes) is declared in :mod:`landscape.records.hessian`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from landscape.deprecation import warn_renamed
from landscape.errors import UserError
from landscape.evaluation import evaluate
from landscape.hessian import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from landscape.params import ParamView
from landscape.records import hessian as R
from landscape.results import summarise

from .context import StudyContext
from .executor import Workspace, run_records

ANALYSIS = R.HESSIAN.analysis


def _ends(res) -> dict[str, np.ndarray]:
    """Values of both ends of the spectrum: the largest (descending) and most negative (ascending)."""
    out = {}
    for which, (values, residuals, bounds, converged) in (
        ("largest", (R.EIGENVALUES, R.RESIDUALS, R.ERROR_BOUNDS, R.CONVERGED)),
        (
            "smallest",
            (R.SMALLEST, R.SMALLEST_RESIDUALS, R.SMALLEST_ERROR_BOUNDS, R.SMALLEST_CONVERGED),
        ),
    ):
        sel = res.which == which
        out[values.name] = res.eigenvalues[sel]
        out[residuals.name] = res.residuals[sel]
        out[bounds.name] = res.error_bounds[sel]
        out[converged.name] = res.converged[sel]
    return out


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
    trace_estimator: str,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Dataset values and scalar attributes of one record (no store access)."""
    t0, h0 = time.perf_counter(), op.hvps
    eig = hessian_eigenvalues(op, k=top_k, which="both", tol=tol, max_steps=max_steps, seed=seed)
    values = _ends(eig)
    attrs: dict[str, Any] = {
        R.LAMBDA_MAX.name: eig.lambda_max,
        R.LAMBDA_MIN.name: eig.lambda_min,
        R.ALL_CONVERGED.name: eig.all_converged,
        R.LANCZOS_STEPS_USED.name: eig.lanczos_steps,
        R.COORDINATES.name: op.n,
        R.SAMPLES.name: op.num_samples,
        R.LOSS.name: op.loss,
        R.TRACE.name: math.nan,
        R.TRACE_STDERR.name: math.nan,
        R.NEGATIVE_MASS.name: math.nan,
        R.NEGATIVE_ABS_RATIO.name: math.nan,
    }
    if trace:
        tr = hessian_trace(op, estimator=trace_estimator, num_queries=num_queries, seed=seed)
        values[R.TRACE_SAMPLES.name] = tr.samples
        attrs[R.TRACE.name], attrs[R.TRACE_STDERR.name] = tr.trace, tr.stderr
        attrs[R.TRACE_ESTIMATOR.name] = tr.estimator
    if density:
        d = spectral_density(
            op, num_runs=num_runs, lanczos_steps=lanczos_steps, sigma=sigma, seed=seed
        )
        values[R.EIGENVALUE.name] = d.grid
        values[R.DENSITY.name] = d.density
        values[R.SLQ_NODES.name] = d.nodes
        values[R.SLQ_WEIGHTS.name] = d.weights
        attrs[R.NEGATIVE_MASS.name] = d.negative_mass()
        attrs[R.NEGATIVE_ABS_RATIO.name] = d.negative_abs_ratio()
        attrs[R.DENSITY_SIGMA.name] = d.sigma
        attrs[R.SLQ_TRACE.name] = d.trace
    attrs[R.HVPS.name] = op.hvps - h0
    attrs[R.SECONDS.name] = time.perf_counter() - t0
    return values, attrs


def compute(
    ws: Workspace, job: tuple, *, split: str, params, options: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One network's record (:func:`analyse`) on whichever process runs the job."""
    _g, run = job
    op = HessianOperator(ws.model(run), ws.batches(split), params=params, device=ws.device)
    try:
        return analyse(op, **options)
    finally:
        del op  # frees the cached gradient graphs before the next model


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
    trace_estimator: str = "hutch++",
    params: str | list[str] | None = None,
    seed: int = 0,
    seeds: int | None = None,
    groups: Iterable[str] | None = None,
    trace_method: str | None = None,
) -> pd.DataFrame:
    """Top and bottom ``top_k`` eigenvalues, trace and (``density=True``) SLQ density per group and seed.

    ``params`` restricts the Hessian to a parameter subset (glob patterns, see
    :class:`landscape.ParamView`); ``seeds`` limits the seeds per group (first N).
    Returns :func:`summary`. ``trace_method`` is the deprecated name of ``trace_estimator``.
    """
    if trace_method is not None:  # the old name, for one more release
        warn_renamed("the hessian study's trace_method=", "trace_estimator=")
        trace_estimator = trace_method
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
        trace_estimator=trace_estimator,
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
    # the keyword arguments of analyse(): one dict, the same on every executor
    options = dict(
        top_k=top_k,
        tol=tol,
        max_steps=max_steps,
        density=density,
        trace=trace,
        num_runs=num_runs,
        lanczos_steps=lanczos_steps,
        sigma=sigma,
        num_queries=num_queries,
        trace_estimator=trace_estimator,
        seed=seed,
    )

    def write(job, result) -> None:
        g, run = job
        ds, values = result
        attrs = ctx.record_attrs(ANALYSIS, g, run, splits=(split,), **settings)
        attrs.update(values)
        R.HESSIAN.write(ctx.store, f"{ANALYSIS}/{g}/{run.key}", ds, attrs)

    run_records(
        ctx,
        todo,
        partial(compute, split=split, params=params, options=options),
        write,
        splits=[split],
        models=[ctx.model(r) for _g, r in todo[:1]],
        desc="hessian",
        label=lambda job: f"{ANALYSIS}/{job[0]}/{job[1].key}",
    )
    return summary(ctx, names)


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


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: the Hessian definition's columns (top eigenvalue, trace, ... mean ± std over seeds)."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(groups or ctx.groups))
