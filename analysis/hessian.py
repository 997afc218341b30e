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
from landscape.objectives import resolve_objective
from landscape.params import ParamView
from landscape.records import hessian as R
from landscape.results import summarise

from .context import StudyContext
from .executor import Workspace, network_records, run_records

ANALYSIS = R.HESSIAN.analysis
#: trace estimators of a record: the two with queries of their own, and the density's
TRACE_ESTIMATORS = ("hutch++", "hutchinson", "slq")


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
    num_queries: int | None,
    trace_estimator: str | None,
    seed: int,
    block_size: int | str = "auto",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Dataset values and scalar attributes of one record (no store access).

    One Krylov pass serves the three spectra: with ``density``, the SLQ runs come first
    (their most converged run kept), the eigenvalue solve continues that run (no product
    repeated; none at all when it has already converged) and the trace is the Hutchinson
    estimate on the runs' start vectors (``trace_estimator`` ``None`` or ``"slq"``: no
    product of its own). Hutch++ or Hutchinson run only when asked for (``trace_estimator``,
    or ``num_queries`` given); without a density the eigenvalue solve picks its block size
    (``block_size``) and the trace defaults to Hutch++ with 60 queries.
    """
    estimator = _estimator(trace_estimator, num_queries, density)
    t0, h0 = time.perf_counter(), op.hvps
    values: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {
        R.TRACE.name: math.nan,
        R.TRACE_STDERR.name: math.nan,
        R.NEGATIVE_MASS.name: math.nan,
        R.NEGATIVE_ABS_RATIO.name: math.nan,
    }
    d = None
    if density:
        d = spectral_density(
            op,
            num_runs=num_runs,
            lanczos_steps=lanczos_steps,
            sigma=sigma,
            seed=seed,
            keep_run=True,
        )
        values[R.EIGENVALUE.name] = d.grid
        values[R.DENSITY.name] = d.density
        values[R.SLQ_NODES.name] = d.nodes
        values[R.SLQ_WEIGHTS.name] = d.weights
        attrs[R.NEGATIVE_MASS.name] = d.negative_mass()
        attrs[R.NEGATIVE_ABS_RATIO.name] = d.negative_abs_ratio()
        attrs[R.DENSITY_SIGMA.name] = d.sigma
        attrs[R.SLQ_TRACE.name] = d.trace
        attrs[R.DENSITY_HVPS.name] = d.hvps
    eig = hessian_eigenvalues(
        op,
        k=top_k,
        which="both",
        tol=tol,
        max_steps=max_steps,
        seed=seed,
        block_size=block_size if d is None else 1,
        start=d,
    )
    values.update(_ends(eig))
    attrs.update(
        {
            R.LAMBDA_MAX.name: eig.lambda_max,
            R.LAMBDA_MIN.name: eig.lambda_min,
            R.ALL_CONVERGED.name: eig.all_converged,
            R.LANCZOS_STEPS_USED.name: eig.lanczos_steps,
            R.LANCZOS_BLOCK_SIZE.name: eig.block_size,
            R.EIGEN_START.name: eig.start,
            R.EIGEN_HVPS.name: eig.hvps,
            R.COORDINATES.name: op.n,
            R.SAMPLES.name: op.num_samples,
            R.LOSS.name: op.loss,
        }
    )
    if trace:
        if estimator == "slq":
            tr = d.trace_estimate()
        else:
            tr = hessian_trace(op, estimator=estimator, num_queries=num_queries or 60, seed=seed)
        values[R.TRACE_SAMPLES.name] = tr.samples
        attrs[R.TRACE.name], attrs[R.TRACE_STDERR.name] = tr.trace, tr.stderr
        attrs[R.TRACE_ESTIMATOR.name] = tr.estimator
        attrs[R.TRACE_HVPS.name] = tr.hvps
    attrs[R.HVPS.name] = op.hvps - h0
    attrs[R.HVP.name] = op.implementation
    attrs[R.SECONDS.name] = time.perf_counter() - t0
    return values, attrs


def _estimator(trace_estimator: str | None, num_queries: int | None, density: bool) -> str:
    """The trace estimator a record uses: as asked, else Hutch++ when queries are given or
    there is no density, else the density runs' own (``"slq"``)."""
    if trace_estimator is None:
        return "hutch++" if num_queries is not None or not density else "slq"
    if trace_estimator not in TRACE_ESTIMATORS:
        raise UserError(
            f"unknown trace estimator {trace_estimator!r}: use {', '.join(TRACE_ESTIMATORS)}"
        )
    if trace_estimator == "slq" and not density:
        raise UserError(
            "the slq trace comes from the spectral density's runs: add --density, or use hutch++"
        )
    return trace_estimator


def density_budget(num_runs: int, lanczos_steps: int, budget: float) -> tuple[int, int]:
    """SLQ runs and steps scaled by ``budget``: each by ``sqrt(budget)``, so that their
    products (runs x steps) scale by ``budget``; at least 2 runs (a standard error) and 10 steps."""
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise UserError(f"budget must be a positive number, got {budget!r}")
    if budget == 1:
        return int(num_runs), int(lanczos_steps)
    f = math.sqrt(budget)
    return max(2, round(num_runs * f)), max(10, round(lanczos_steps * f))


#: Lanczos steps the eigenvalue solve typically takes for both ends, ``25 + 30 top_k``: trained
#: digits MLPs of width 512 took 61-293 steps for the 5 largest and 5 most negative (mean 176;
#: the most negative ones cluster, and converge last), and 157-213 for 3 (non-sigma groups)
def typical_steps(top_k: int) -> int:
    return 25 + 30 * top_k


def expected_products(
    top_k: int,
    density: bool,
    trace: bool,
    num_runs: int,
    lanczos_steps: int,
    trace_estimator: str | None,
    num_queries: int | None,
    max_steps: int | None = None,
) -> tuple[int, int, int]:
    """Hessian-vector products one record is expected to take, as ``(typical, least, most)``:
    the density's ``num_runs x lanczos_steps``, the eigenvalue solve (typically
    :func:`typical_steps` Lanczos steps for both ends, at most ``max_steps``, default 300; a
    continued density run already holds ``lanczos_steps`` of them) and the trace's queries
    (none when it comes from the density)."""
    limit = int(max_steps or 300)
    typical, most = min(limit, typical_steps(top_k)), limit
    least = 2 * top_k + 1
    if density:
        typical, least, most = (max(0, x - lanczos_steps) for x in (typical, least, most))
    fixed = num_runs * lanczos_steps if density else 0
    fixed += (num_queries or 0) if trace and trace_estimator != "slq" else 0
    return fixed + typical, fixed + least, fixed + most


def _expected_cost(
    ctx: StudyContext, todo, split: str, params, per: tuple[int, int, int], budget: float
) -> str:
    """The line announcing the study's cost: records x products, and the time that implies at
    the measured cost of one product (and of building the gradient graphs) on the first model."""
    _g, run = todo[0]
    op = HessianOperator(
        ctx.model(run),
        ctx.batches(split),
        params=params,
        device=ctx.device,
        objective=ctx.objective,
    )
    t0 = time.perf_counter()
    op.loss  # noqa: B018  (builds the gradient graphs: a fixed cost per model)
    build = time.perf_counter() - t0
    g = np.random.default_rng(0).standard_normal(op.n)
    t0 = time.perf_counter()
    op.matvec(g.astype(op.dtype))
    one = time.perf_counter() - t0
    typical, least, most = (len(todo) * (build + p * one) / 60 for p in per)
    return (
        f"hessian: {len(todo)} model(s) x about {per[0]} ({per[1]}-{per[2]}) Hessian-vector "
        f"products (budget {budget:g}; one product {one:.3g} s on {ctx.device}): expected "
        f"about {typical:.1f} min ({least:.1f}-{most:.1f})"
    )


def compute(
    ws: Workspace, job: tuple, *, split: str, params, options: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One network's record (:func:`analyse`) on whichever process runs the job."""
    _g, run = job
    op = HessianOperator(
        ws.model(run), ws.batches(split), params=params, device=ws.device, objective=ws.objective
    )
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
    num_queries: int | None = None,
    trace_estimator: str | None = None,
    block_size: int | str = "auto",
    budget: float = 1.0,
    params: str | list[str] | None = None,
    seed: int = 0,
    seeds: int | None = None,
    groups: Iterable[str] | None = None,
    trace_method: str | None = None,
) -> pd.DataFrame:
    """Top and bottom ``top_k`` eigenvalues, trace and (``density=True``) SLQ density per group and seed.

    ``params`` restricts the Hessian to a parameter subset (glob patterns, see
    :class:`landscape.ParamView`); ``seeds`` limits the seeds per group (first N).
    With a density, one Krylov pass serves all three (see :func:`analyse`): the trace comes
    from the density runs (``trace_estimator="slq"``) unless Hutch++ or Hutchinson is asked
    for (``trace_estimator``, or ``num_queries`` given; 60 queries by default).
    ``budget`` scales the density's products (:func:`density_budget`); ``block_size`` is
    that of the eigenvalue solve without a density (``"auto"``: measured).
    Returns :func:`summary`. ``trace_method`` is the deprecated name of ``trace_estimator``.
    """
    if trace_method is not None:  # the old name, for one more release
        warn_renamed("the hessian study's trace_method=", "trace_estimator=")
        trace_estimator = trace_method
    if trace:
        trace_estimator = _estimator(trace_estimator, num_queries, density)
        if trace_estimator != "slq" and num_queries is None:
            num_queries = 60
    num_runs, lanczos_steps = density_budget(num_runs, lanczos_steps, budget)
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
        block_size=block_size,
        budget=budget,
        params=params,
        seed=seed,
        **resolve_objective(ctx.objective).settings(),
        model_mode="eval",
    )
    names = list(groups or ctx.groups)
    jobs = [
        (g, r)
        for g in names
        for r in (ctx.groups[g] if seeds is None else ctx.groups[g][: int(seeds)])
    ]
    todo = [(g, r) for g, r in jobs if not ctx.should_skip(f"{ANALYSIS}/{g}/{r.key}")]
    _validate(ctx, todo, top_k, split, params)
    if todo and ctx.progress:
        per = expected_products(
            top_k, density, trace, num_runs, lanczos_steps, trace_estimator, num_queries, max_steps
        )
        print(_expected_cost(ctx, todo, split, params, per, budget))
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
        block_size=block_size,
    )

    write, label = network_records(ctx, R.HESSIAN, (split,), settings)

    run_records(
        ctx,
        todo,
        partial(compute, split=split, params=params, options=options),
        write,
        splits=[split],
        models=[ctx.model(r) for _g, r in todo[:1]],
        desc="hessian",
        label=label,
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
        evaluate(model, ctx.batches(split), objective=ctx.objective)


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: the Hessian definition's columns (top eigenvalue, trace, ... mean ± std over seeds)."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(groups or ctx.groups))
