"""Surface studies: one 1-D or 2-D loss surface per group, comparable across groups.

Records: ``/surface/<group>/<seedK>`` (random directions around the group's first seed) or
``/surface/<group>/<A>-<B>-<C>`` (the plane through three seeds of the group, origin A),
as written by :func:`landscape.surface.surface`: datasets ``loss``, ``accuracy``, ``done``
(axes ``x``, ``y``), ``xcoordinates``, ``ycoordinates``, ``directions``; attrs: the usual
record attributes plus ``split``, ``axes``, ``definition``, ``origin_loss``, ``directions``
(normalisation, seed, landmarks), ``settings``.

Every group uses the same direction seed, so the Gaussian draws are the same at every
entry that two architectures share: the pictures differ by the networks, not the draw.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from landscape.directions import plane_directions, random_directions
from landscape.distributed import make_executor
from landscape.errors import UserError
from landscape.surface import Surface, landmark_grid, surface

from .context import StudyContext

ANALYSIS = "surface"


def _find_run(ctx: StudyContext, group: str, label: str):
    for r in ctx.groups[group]:
        if label in (r.seed, r.key) or f"seed{label}" in (r.seed, r.key):
            return r
    have = ", ".join(r.key for r in ctx.groups[group])
    raise UserError(f"--plane: group {group} has no seed {label!r} (it has {have})")


def _plane_runs(ctx: StudyContext, group: str, plane: str | Sequence[str]):
    labels = [s.strip() for s in plane.split(",")] if isinstance(plane, str) else list(plane)
    if len(labels) != 3 or len(set(labels)) != 3:
        raise UserError(
            f"--plane needs three different seeds A,B,C (for example seed0,seed1,seed2), got {plane!r}"
        )
    return [_find_run(ctx, group, s) for s in labels]


def summarize(s: Surface, radius: float | None = None) -> dict:
    """Min loss, loss at the centre, mean loss rise at ``radius`` (sharpness), centre accuracy."""
    r = s.default_radius if radius is None else radius
    try:
        rise = s.sharpness(r)
    except UserError:
        rise = math.nan
    return {
        "points": int(np.prod(s.shape)),
        "min_loss": s.min_loss,
        "centre_loss": s.center_loss,
        "rise_at_r": rise,
        "r": float(r),
        "centre_acc": s.value_at(*([0.0] * s.ndim), metric="accuracy"),
    }


def study(
    ctx: StudyContext,
    *,
    steps: int = 41,
    span: float | None = None,
    plane: str | Sequence[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    dims: int = 2,
    normalization: str = "filter",
    direction_seed: int = 0,
    bn: str = "eval",
    split: str = "train",
    radius: float | None = None,
    chunk_size: int | None = None,
    groups: Iterable[str] | None = None,
    executor=None,
) -> pd.DataFrame:
    """One surface per group; returns the summary table (one row per group).

    Random directions (default): ``dims`` filter-normalised Gaussian directions with seed
    ``direction_seed`` around the group's first seed, grid ``steps`` per axis over
    ``[-span, span]`` (default span 1). ``plane="A,B,C"``: the plane through three seeds of
    each group (origin A); without ``span`` the grid is :func:`landscape.surface.landmark_grid`
    (A and B on grid points). ``workers`` / ``scheduler`` run the chunks on Dask.
    """
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}: use train or test")
    if dims not in (1, 2):
        raise UserError(f"--dims must be 1 or 2, got {dims}")
    if ctx.store is None:
        raise UserError("a surface study needs an output results file (-o results.h5)")
    names = list(groups or ctx.groups)
    if ctx.progress:
        points = steps ** (2 if plane else dims)  # a plane is always 2-D
        passes = points * (2 if bn == "reset" else 1)
        print(
            f"surface: {len(names)} group(s) x {points} points = up to {len(names) * passes} passes over the {split} data "
            f"({ctx.dataset(split).description['size']} samples; complete points are reused)",
            file=sys.stderr,
        )
    rows = []
    made: list = []

    def get_executor():  # started only when some record needs computing
        if executor is not None:
            return executor
        if not made:
            made.append(make_executor(workers, scheduler))
        return made[0]

    try:
        for g in names:
            if plane:
                runs = _plane_runs(ctx, g, plane)
                ctx.group_models(g)  # one network family before mixing seeds
                models = [ctx.model(r) for r in runs]
                dirs = plane_directions(*models)
                record = "-".join(r.key for r in runs)
                coords = None if span is not None else landmark_grid(dirs, steps)
            else:
                runs = [ctx.groups[g][0]]
                models = [ctx.model(runs[0])]
                dirs = random_directions(
                    models[0], count=dims, normalization=normalization, seed=direction_seed
                )
                record = runs[0].key
                coords = None
            key = f"{ANALYSIS}/{g}/{record}"
            if ctx.should_skip(key):
                s = Surface.from_record(ctx.store.read(key))
            else:
                settings = dict(
                    steps=steps,
                    span=span,
                    plane=plane,
                    dims=dirs.count,
                    normalization=dirs.normalization,
                    direction_seed=dirs.seed,
                    bn=bn,
                    split=split,
                )
                attrs = ctx.record_attrs(ANALYSIS, g, *runs, splits=(split,), **settings)
                attrs["split"] = split
                s = surface(
                    models[0],
                    ctx.batches(split),
                    dirs,
                    steps=steps,
                    span=1.0 if span is None else span,
                    coordinates=coords,
                    bn=bn,
                    train_data=ctx.batches("train") if bn == "reset" else None,
                    chunk_size=chunk_size,
                    store=ctx.store,
                    key=key,
                    attrs=attrs,
                    resume=not ctx.force,
                    executor=get_executor(),
                    progress=ctx.progress,
                )
            rows.append(
                {"group": g, "variant": ctx.variant(g), "record": record, **summarize(s, radius)}
            )
    finally:
        for ex in made:
            ex.close()
    return pd.DataFrame(rows)
