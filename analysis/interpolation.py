"""Interpolation studies: pairwise barriers per group, aligned barriers, MLI from initialisation.

Records (their definitions: :mod:`landscape.records.interpolation`):

- ``/interpolation/<group>/<seedA>-<seedB>``: the loss and accuracy curves of each split
  along the straight line between two trained networks, and both barrier definitions;
- ``/interpolation_aligned/<group>/<pair>``: the same after weight-matching B onto A
  (standard groups by default), with the matching objective;
- ``/mli/<group>/<seedK>``: init -> final on the train split, with the MLI metrics.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from landscape.interpolation import BARRIER_DEFINITIONS, Curve, interpolate_splits, mli_metrics
from landscape.objectives import resolve_objective
from landscape.records import interpolation as R
from landscape.results import summarise

from .context import StudyContext
from .executor import Workspace, run_records

ANALYSIS = R.INTERPOLATION.analysis
ALIGNED = R.INTERPOLATION_ALIGNED.analysis
MLI = R.MLI.analysis
KINDS = {k.analysis: k for k in (R.INTERPOLATION, R.INTERPOLATION_ALIGNED, R.MLI)}
MLI_DEFINITIONS = (
    "delta = max(0, max_i L[i+1]-L[i]); monotonic: no increase; local_convexity: share of "
    "L[i-1]-2L[i]+L[i+1] >= 0; global_convexity: L(a) <= (1-a)L(init) + a L(final) for all a"
)


def pair_key(a: str, b: str) -> str:
    return f"{a}-{b}"


def _curve_values(curves: dict[str, Curve]) -> dict[str, np.ndarray]:
    any_curve = next(iter(curves.values()))
    out = {R.ALPHA.name: any_curve.alphas}
    for split, c in curves.items():
        out[R.LOSS.at(split)] = c.loss
        out[R.ACCURACY.at(split)] = c.accuracy
    return out


def _barrier_attrs(curves: dict[str, Curve]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for split, c in curves.items():
        attrs[R.LOSS_BARRIER_MAX.at(split)] = c.loss_barrier
        attrs[R.LOSS_BARRIER_MID.at(split)] = c.loss_barrier_mid
        attrs[R.ACCURACY_BARRIER_MAX.at(split)] = c.accuracy_barrier
        attrs[R.ACCURACY_BARRIER_MID.at(split)] = c.accuracy_barrier_mid
        attrs[R.LOSS_ENDPOINTS.at(split)] = [float(c.loss[0]), float(c.loss[-1])]
        attrs[R.ACCURACY_ENDPOINTS.at(split)] = [float(c.accuracy[0]), float(c.accuracy[-1])]
    return attrs


def _curves(
    ws: Workspace, a, b, splits: Sequence[str], num_points: int, bn: str
) -> dict[str, Curve]:
    return interpolate_splits(
        a,
        b,
        {s: ws.batches(s) for s in splits},
        num_points=num_points,
        bn=bn,
        train_data=ws.batches("train") if bn == "reset" else None,
        objective=ws.objective,
    )


def compute(
    ws: Workspace, job: tuple, *, num_points: int, splits: tuple[str, ...], bn: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One record's curves and computed attributes (on whichever process runs the job)."""
    analysis, _g, ra, rb = job
    if analysis == MLI:
        curves = _curves(ws, ws.model(ra, "init"), ws.model(ra), ("train",), num_points, bn)
        c = curves["train"]
        m = mli_metrics(c.alphas, c.loss)
        attrs = {
            R.DELTA.name: m.delta,
            R.MONOTONIC.name: m.monotonic,
            R.LOCAL_CONVEXITY.name: m.local_convexity,
            R.GLOBAL_CONVEXITY.name: m.global_convexity,
            R.MLI_DEFINITIONS.name: MLI_DEFINITIONS,
            **_barrier_attrs(curves),
        }
        return _curve_values(curves), attrs
    a, b = ws.model(ra), ws.model(rb)
    if analysis == ALIGNED:
        from landscape import apply_permutation, weight_matching

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            perm = weight_matching(a, b)
        b = apply_permutation(b, perm)
        attrs = {
            R.ALIGNED.name: True,
            R.ALIGNMENT.name: "weight matching (B permuted onto A)",
            R.MATCHING_OBJECTIVE.name: float(perm.objective),
            R.FUNCTION_PRESERVED.name: bool(perm.function_preserved),
        }
    else:
        attrs = {R.ALIGNED.name: False}
    curves = _curves(ws, a, b, splits, num_points, bn)
    attrs.update(_barrier_attrs(curves))
    return _curve_values(curves), attrs


def study(
    ctx: StudyContext,
    *,
    num_points: int = 25,
    splits: Sequence[str] = ("test", "train"),
    bn: str = "eval",
    align: bool | str = False,
    mli: bool = True,
    groups: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Pairwise interpolation of every group's seeds (and MLI for seeds with ``init``).

    ``align=True`` also weight-matches each pair of a *standard* group (B onto A) and
    stores the aligned curves; ``align="all"`` aligns asymmetric groups too (a baseline:
    the permutation does not preserve their function). Records run on the context's
    executor (:meth:`StudyContext.executor`). Returns :func:`summary`.
    """
    splits = tuple(splits)
    settings = dict(
        num_points=num_points,
        bn=bn,
        barrier_definitions=BARRIER_DEFINITIONS,
        **resolve_objective(ctx.objective).settings(),
    )
    names = list(groups or ctx.groups)
    jobs = []
    for g in names:
        runs = ctx.groups[g]
        for ra, rb in itertools.combinations(runs, 2):
            jobs.append((ANALYSIS, g, ra, rb))
            if align == "all" or (align and ctx.variant(g) == "standard"):
                jobs.append((ALIGNED, g, ra, rb))
        if mli:
            jobs.extend((MLI, g, r, None) for r in runs if r.init is not None)
    todo = [j for j in jobs if not ctx.should_skip(_key(*j))]
    if todo and ctx.progress:
        passes = sum(
            num_points * ((1 if j[0] == MLI else len(splits)) + (1 if bn == "reset" else 0))
            for j in todo
        )
        sizes = ", ".join(f"{s}: {ctx.dataset(s).description['size']} samples" for s in splits)
        print(
            f"interpolation: {len(todo)} curve(s) of {num_points} points = {passes} passes over the data ({sizes})",
            file=sys.stderr,
        )
    for g in {j[1] for j in todo if j[0] != MLI}:
        ctx.group_models(g)  # one-family check (same masks) before the group's first pair

    def write(job: tuple, result: tuple[dict[str, np.ndarray], dict[str, Any]]) -> None:
        analysis, g, ra, rb = job
        values, computed = result
        if analysis == MLI:
            attrs = ctx.record_attrs(
                MLI, g, ra, which=("init", "final"), splits=("train",), **settings
            )
        else:
            attrs = ctx.record_attrs(analysis, g, ra, rb, splits=splits, **settings)
        attrs.update(computed)
        KINDS[analysis].write(ctx.store, _key(*job), values, attrs)

    used = list(splits) + (["train"] if bn == "reset" or any(j[0] == MLI for j in todo) else [])
    run_records(
        ctx,
        todo,
        partial(compute, num_points=num_points, splits=splits, bn=bn),
        write,
        splits=used,
        models=[ctx.model(ctx.groups[g][0]) for g in dict.fromkeys(j[1] for j in todo)],
        desc="interpolation",
        label=lambda j: _key(*j),
    )
    return summary(ctx, names)


def _key(analysis: str, group: str, ra, rb) -> str:
    return f"{analysis}/{group}/{ra.key if rb is None else pair_key(ra.key, rb.key)}"


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: the overview columns of the interpolation, aligned and MLI definitions
    (endpoint accuracy, barriers mean ± std over pairs, MLI monotonic share)."""
    return summarise(ctx.store, KINDS, groups=list(groups or ctx.groups))
