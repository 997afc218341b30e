"""Interpolation studies: pairwise barriers per group, aligned barriers, MLI from initialisation.

Records (see README, "Results file"):

- ``/interpolation/<group>/<seedA>-<seedB>``: datasets ``alphas``, ``<split>_loss``,
  ``<split>_accuracy`` for each split; attrs ``<split>_loss_barrier_max``,
  ``<split>_loss_barrier_mid``, ``<split>_accuracy_barrier_max``,
  ``<split>_accuracy_barrier_mid``, ``bn``, ``aligned``;
- ``/interpolation_aligned/<group>/<pair>``: the same after weight-matching B onto A
  (standard groups by default), with the matching objective;
- ``/mli/<group>/<seedK>``: init -> final on the train split, with the MLI metrics.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from landscape.interpolation import BARRIER_DEFINITIONS, Curve, interpolate_splits, mli_metrics
from landscape.store import Dataset

from .common import mean_std
from .context import StudyContext

ANALYSIS = "interpolation"
ALIGNED = "interpolation_aligned"
MLI = "mli"


def pair_key(a: str, b: str) -> str:
    return f"{a}-{b}"


def _curve_datasets(curves: dict[str, Curve]) -> dict[str, Dataset]:
    any_curve = next(iter(curves.values()))
    out = {
        "alphas": Dataset(
            any_curve.alphas,
            ("alpha",),
            "1",
            "interpolation coefficient a: theta(a) = (1 - a) theta_A + a theta_B",
        )
    }
    for split, c in curves.items():
        out[f"{split}_loss"] = Dataset(
            c.loss, ("alpha",), "nats", f"mean cross-entropy over the {split} split at theta(a)"
        )
        out[f"{split}_accuracy"] = Dataset(
            c.accuracy, ("alpha",), "fraction", f"top-1 accuracy over the {split} split at theta(a)"
        )
    return out


def _barrier_attrs(curves: dict[str, Curve]) -> dict[str, float]:
    attrs = {}
    for split, c in curves.items():
        for name, v in c.barriers().items():
            attrs[f"{split}_{name}"] = v
        attrs[f"{split}_loss_endpoints"] = [float(c.loss[0]), float(c.loss[-1])]
        attrs[f"{split}_accuracy_endpoints"] = [float(c.accuracy[0]), float(c.accuracy[-1])]
    return attrs


def _curves(
    ctx: StudyContext, a, b, splits: Sequence[str], num_points: int, bn: str
) -> dict[str, Curve]:
    return interpolate_splits(
        a,
        b,
        {s: ctx.batches(s) for s in splits},
        num_points=num_points,
        bn=bn,
        train_data=ctx.batches("train") if bn == "reset" else None,
    )


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
    the permutation does not preserve their function). Returns :func:`summary`.
    """
    splits = tuple(splits)
    settings = dict(num_points=num_points, bn=bn, barrier_definitions=BARRIER_DEFINITIONS)
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
    bar = tqdm(todo, desc="interpolation", disable=not ctx.progress)
    for analysis, g, ra, rb in bar:
        key = _key(analysis, g, ra, rb)
        bar.set_postfix_str(key, refresh=False)
        if analysis == MLI:
            curves = _curves(ctx, ctx.model(ra, "init"), ctx.model(ra), ("train",), num_points, bn)
            c = curves["train"]
            m = mli_metrics(c.alphas, c.loss)
            attrs = ctx.record_attrs(
                MLI, g, ra, which=("init", "final"), splits=("train",), **settings
            )
            attrs.update(
                delta=m.delta,
                monotonic=m.monotonic,
                local_convexity=m.local_convexity,
                global_convexity=m.global_convexity,
                definitions="delta = max(0, max_i L[i+1]-L[i]); monotonic: no increase; local_convexity: share of "
                "L[i-1]-2L[i]+L[i+1] >= 0; global_convexity: L(a) <= (1-a)L(init) + a L(final) for all a",
                **_barrier_attrs(curves),
            )
            ctx.store.write(key, _curve_datasets(curves), attrs)
            continue
        ctx.group_models(g)  # one-family check (same masks) before the group's first pair
        a, b = ctx.model(ra), ctx.model(rb)
        attrs = ctx.record_attrs(analysis, g, ra, rb, splits=splits, **settings)
        if analysis == ALIGNED:
            from landscape import apply_permutation, weight_matching

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                perm = weight_matching(a, b)
            b = apply_permutation(b, perm)
            attrs.update(
                aligned=True,
                alignment="weight matching (B permuted onto A)",
                matching_objective=float(perm.objective),
                function_preserved=bool(getattr(perm, "function_preserved", True)),
            )
        else:
            attrs["aligned"] = False
        curves = _curves(ctx, a, b, splits, num_points, bn)
        attrs.update(_barrier_attrs(curves))
        ctx.store.write(key, _curve_datasets(curves), attrs)
    return summary(ctx, names)


def _key(analysis: str, group: str, ra, rb) -> str:
    return f"{analysis}/{group}/{ra.key if rb is None else pair_key(ra.key, rb.key)}"


def _attrs(ctx: StudyContext, analysis: str, group: str) -> list[dict[str, Any]]:
    return [ctx.store.read(k).attrs for k in ctx.store.keys(f"{analysis}/{group}")]


def summary(
    ctx: StudyContext, groups: Iterable[str] | None = None, split: str = "test"
) -> pd.DataFrame:
    """Per group: seeds, endpoint accuracy, barriers mean ± std (plain and aligned), MLI monotonic share."""
    rows = []
    for g in groups or ctx.groups:
        pairs, aligned, mlis = (
            _attrs(ctx, ANALYSIS, g),
            _attrs(ctx, ALIGNED, g),
            _attrs(ctx, MLI, g),
        )
        accs = [
            float(x) for p in pairs for x in np.atleast_1d(p.get(f"{split}_accuracy_endpoints", []))
        ]
        rows.append(
            {
                "group": g,
                "variant": ctx.variant(g),
                "seeds": len(ctx.groups[g]),
                "pairs": len(pairs),
                f"{split}_acc": float(np.mean(accs)) if accs else math.nan,
                "loss_barrier": mean_std(p.get(f"{split}_loss_barrier_max") for p in pairs),
                "loss_barrier_mid": mean_std(p.get(f"{split}_loss_barrier_mid") for p in pairs),
                "acc_barrier": mean_std(p.get(f"{split}_accuracy_barrier_max") for p in pairs),
                "aligned_loss_barrier": mean_std(
                    p.get(f"{split}_loss_barrier_max") for p in aligned
                ),
                "mli_monotonic": f"{sum(bool(m['monotonic']) for m in mlis)}/{len(mlis)}"
                if mlis
                else "-",
            }
        )
    return pd.DataFrame(rows)


def barrier_matrix(pairs: dict[str, float], seeds: Sequence[str]) -> pd.DataFrame:
    """Symmetric seed x seed matrix from ``{"seedA-seedB": barrier}`` (NaN on the diagonal)."""
    m = pd.DataFrame(np.nan, index=list(seeds), columns=list(seeds))
    for k, v in pairs.items():
        a, _, b = k.partition("-")
        if a in m.index and b in m.index:
            m.loc[a, b] = m.loc[b, a] = v
    return m
