"""Surface studies: one 1-D or 2-D loss surface per group, comparable across groups.

Records: ``/surface/<group>/<seedK>`` (random directions around the group's first seed),
``/surface/<group>/<seedK>-pca`` (the top principal components of that seed's training
trajectory, with the trajectory projected onto them) or
``/surface/<group>/<A>-<B>-<C>`` (the plane through three seeds of the group, origin A),
as declared in :mod:`landscape.records.surface`: the loss and accuracy on the grid with the
``done`` mask, the grid coordinates, the direction vectors, the loss at the origin and the
sharpness at a radius, and the token that makes resuming safe.

:func:`landscape.surfaces.surface` computes; this module persists. :func:`persistent_surface`
writes every chunk into the record (``complete=False`` with the ``done`` mask) and, when an
incomplete record with the same token is there, resumes from it, so a killed run continues
where it stopped and ends with the values of an uninterrupted one.

Every group uses the same direction seed, so the Gaussian draws are the same at every
entry that two architectures share: the pictures differ by the networks, not the draw.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from landscape.data import Data
from landscape.directions import Directions, plane_directions, random_directions
from landscape.distributed import make_executor
from landscape.errors import UserError
from landscape.grid import trajectory_grid
from landscape.objectives import resolve_objective
from landscape.records import surface as R
from landscape.results import summarise
from landscape.store import Dataset, Record, ResultsStore, provenance
from landscape.surfaces import DEFINITION, Surface, landmark_grid, surface, surface_token
from landscape.trajectory import pca_directions

from .context import StudyContext
from .executor import code_modules

ANALYSIS = R.SURFACE.analysis


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


def surface_from_record(record: Record) -> Surface:
    """The :class:`Surface` held by a record written by :func:`_record` (complete or not)."""
    a = record.attrs
    axes = tuple(a.get(R.AXES.name) or R.LOSS.dims)
    coords = (R.X.name, R.Y.name)[: len(axes)]  # the grid dimensions, in the directions' order
    return Surface(
        tuple(np.asarray(record[c], dtype=float) for c in coords),
        np.asarray(record[R.LOSS.name], dtype=float),
        np.asarray(record[R.ACCURACY.name], dtype=float),
        axes,
        origin_loss=float(a.get(R.ORIGIN_LOSS.name, math.nan)),
        origin_accuracy=float(a.get(R.ORIGIN_ACCURACY.name, math.nan)),
        bn=str(a.get(R.BN.name, "eval")),
        directions=dict(a.get(R.DIRECTIONS_INFO.name) or {}),
        settings=dict(a.get("settings") or {}),
        done=np.asarray(record[R.DONE.name], dtype=bool)
        if R.DONE.name in record.datasets
        else None,
        token=str(a.get(R.TOKEN.name) or ""),
        num_samples=int(a.get(R.NUM_SAMPLES.name) or 0),
    )


def sharpness(s: Surface, radius: float | None = None) -> tuple[float, float]:
    """``(radius, mean loss rise at that radius)``; NaN where the grid cannot say."""
    r = s.default_radius if radius is None else radius
    try:
        return float(r), s.sharpness(r)
    except UserError:
        return float(r), math.nan


def _record(
    store: ResultsStore,
    key: str,
    s: Surface,
    directions: Directions,
    attrs: Mapping[str, Any] | None,
    *,
    complete: bool,
    radius: float | None = None,
) -> None:
    """Write ``s`` as the record at ``key`` through the surface definition: the grid
    dimensions are ``x`` and ``y`` in the directions' order, whatever the directions are
    called (their names stay in the ``axes`` attribute)."""
    values: dict[str, Any] = {
        R.LOSS.name: s.loss,
        R.ACCURACY.name: s.accuracy,
        R.DONE.name: np.asarray(s.done, dtype=bool),
    }
    for var, c in zip((R.X, R.Y), s.coordinates):
        values[var.name] = c
    if directions.trajectory is not None:  # PCA directions: the path they were made from
        values[R.TRAJECTORY.name] = directions.trajectory
        values[R.EXPLAINED_VARIANCE.name] = np.asarray(directions.explained_variance)
        if directions.trajectory_labels:
            values[R.CHECKPOINT.name] = np.asarray(directions.trajectory_labels, dtype=str)
    out = dict(attrs or {})
    if complete:
        values[R.DIRECTIONS.name] = Dataset(
            directions.vectors.numpy(), attrs={"parameters": list(directions.params)}
        )
        r, rise = sharpness(s, radius)
        out.update({R.MIN_LOSS.name: s.min_loss, R.RADIUS.name: r, R.RISE_AT_RADIUS.name: rise})
    out.update(
        {
            R.AXES.name: list(s.axes),
            R.DEFINITION.name: DEFINITION,
            R.TOKEN.name: s.token,
            R.BN.name: s.bn,
            R.ORIGIN_LOSS.name: s.origin_loss,
            R.ORIGIN_ACCURACY.name: s.origin_accuracy,
            R.NUM_SAMPLES.name: s.num_samples,
            R.DIRECTIONS_INFO.name: s.directions,
            # the study's settings (directions, plane, trajectory, ...) and the grid's own
            "settings": {**dict(out.get("settings") or {}), **s.settings},
        }
    )
    if not attrs:
        out.update(provenance())
    out[R.POINTS_DONE.name] = int(np.sum(s.done))
    out[R.POINTS_TOTAL.name] = int(np.size(s.done))
    R.SURFACE.write(store, key, values, out, complete=complete)


def _existing(store: ResultsStore, key: str) -> Record | None:
    if not store.path.exists():
        return None
    try:
        return store.read(key)
    except KeyError:
        return None


#: the arguments of landscape.surface that decide its token
_TOKEN_ARGS = (
    "steps", "span", "coordinates", "bn", "train_data", "device", "batch_size", "objective",
)  # fmt: skip


def persistent_surface(
    store: ResultsStore | str | os.PathLike,
    key: str,
    model: nn.Module,
    data: Data,
    directions: Directions,
    *,
    attrs: Mapping[str, Any] | None = None,
    resume: bool = True,
    on_chunk: Callable[[Surface, np.ndarray], None] | None = None,
    radius: float | None = None,
    **options: Any,
) -> Surface:
    """:func:`landscape.surfaces.surface` with the grid kept in the record ``key`` of ``store``.

    Every chunk is written (``complete=False``, the ``done`` mask marks the points computed);
    the last write marks the record complete and adds the direction vectors. With
    ``resume``, an existing record must carry this grid's token (same model, directions,
    grid and data): its computed points are kept and only the missing ones are computed
    (``resume=False`` recomputes all). ``options`` go to :func:`landscape.surfaces.surface`;
    ``on_chunk`` is called after each chunk has been written.
    """
    if not isinstance(store, ResultsStore):
        st = ResultsStore(store)
        try:
            return persistent_surface(
                st,
                key,
                model,
                data,
                directions,
                attrs=attrs,
                resume=resume,
                on_chunk=on_chunk,
                radius=radius,
                **options,
            )
        finally:
            close = getattr(st, "close", None)  # give up the writer's lock of a store opened here
            if close is not None:
                close()
    st = store
    initial = None
    existing = _existing(st, key) if resume else None
    if existing is not None:
        token = surface_token(
            model, data, directions, **{k: options[k] for k in _TOKEN_ARGS if k in options}
        )
        if existing.attrs.get(R.TOKEN.name) != token:
            raise UserError(
                f"{st.path}: the record {key} was computed for another model, directions, grid or data: "
                "pass another key or output file, or resume=False (--force) to recompute it"
            )
        initial = surface_from_record(existing)

    def write(partial: Surface, indices: np.ndarray) -> None:
        if not partial.complete:  # the last chunk is written once, complete, below
            _record(st, key, partial, directions, attrs, complete=False)
        if on_chunk is not None:
            on_chunk(partial, indices)

    s = surface(model, data, directions, initial=initial, on_chunk=write, **options)
    if s.evaluated or not st.has(key):
        _record(st, key, s, directions, attrs, complete=True, radius=radius)
    return s


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
    directions: str = "random",
) -> pd.DataFrame:
    """One surface per group; returns the summary table (one row per group).

    Random directions (default): ``dims`` filter-normalised Gaussian directions with seed
    ``direction_seed`` around the group's first seed, grid ``steps`` per axis over
    ``[-span, span]`` (default span 1). ``plane="A,B,C"``: the plane through three seeds of
    each group (origin A); without ``span`` the grid is :func:`landscape.grid.landmark_grid`
    (A and B on grid points). ``directions="pca"``: the top ``dims`` principal components of
    the first seed's training trajectory (every checkpoint of its folder:
    :func:`checkpoints.discover.trajectory`), around its final weights; without ``span`` the
    grid covers the projected trajectory (:func:`landscape.grid.trajectory_grid`). The loss is
    the context's objective (``--loss``). Grid chunks run on ``executor`` (default: the context's,
    :meth:`StudyContext.executor`); ``workers`` / ``scheduler`` are the older way to ask for
    Dask workers for this study alone.
    """
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r}: use train or test")
    if dims not in (1, 2):
        raise UserError(f"--dims must be 1 or 2, got {dims}")
    if directions not in ("random", "pca"):
        raise UserError(f"unknown --directions {directions!r}: use random or pca")
    if plane and directions != "random":
        raise UserError("--plane and --directions pca exclude each other: choose one")
    names = list(groups or ctx.groups)
    if ctx.progress:
        points = steps ** (2 if plane else dims)  # a plane is always 2-D
        passes = points * (2 if bn == "reset" else 1)
        print(
            f"surface: {len(names)} group(s) x {points} points = up to {len(names) * passes} passes over the {split} data "
            f"({ctx.dataset(split).description['size']} samples; complete points are reused)",
            file=sys.stderr,
        )
    own = executor is None and (workers is not None or scheduler is not None)
    if own:
        executor = make_executor(workers, scheduler)
    try:
        for g in names:
            if plane:
                runs = _plane_runs(ctx, g, plane)
                ctx.group_models(g)  # one network family before mixing seeds
                models = [ctx.model(r) for r in runs]
                dirs = plane_directions(*models)
                record = "-".join(r.key for r in runs)
                coords = None if span is not None else landmark_grid(dirs, steps)
            elif directions == "pca":
                runs = [ctx.groups[g][0]]
                models = [ctx.model(runs[0])]
                record = f"{runs[0].key}-pca"
                if ctx.should_skip(f"{ANALYSIS}/{g}/{record}"):
                    continue
                dirs, path = _pca(ctx, g, runs[0], dims)
                coords = None if span is not None else trajectory_grid(dirs, steps)
            else:
                runs = [ctx.groups[g][0]]
                models = [ctx.model(runs[0])]
                dirs = random_directions(
                    models[0], count=dims, normalization=normalization, seed=direction_seed
                )
                record = runs[0].key
                coords = None
            key = f"{ANALYSIS}/{g}/{record}"
            if not ctx.should_skip(key):
                settings = dict(
                    steps=steps,
                    span=span,
                    plane=plane,
                    dims=dirs.count,
                    normalization=dirs.normalization,
                    direction_seed=dirs.seed,
                    bn=bn,
                    split=split,
                    directions=dirs.source,  # random, plane or pca
                    **resolve_objective(ctx.objective).settings(),
                )
                if directions == "pca":
                    settings["trajectory"] = [str(p) for p in path]
                attrs = ctx.record_attrs(ANALYSIS, g, *runs, splits=(split,), **settings)
                attrs[R.SPLIT.name] = split
                ex = executor or ctx.executor()
                if ex.remote:  # the chunks carry the model: its class must import there
                    ex.check_importable(code_modules(models, ctx.arch), "the model classes")
                persistent_surface(
                    ctx.store,
                    key,
                    models[0],
                    ctx.batches(split),
                    dirs,
                    attrs=attrs,
                    resume=not ctx.force,
                    steps=steps,
                    span=1.0 if span is None else span,
                    coordinates=coords,
                    bn=bn,
                    train_data=ctx.batches("train") if bn == "reset" else None,
                    chunk_size=chunk_size,
                    executor=ex,
                    progress=ctx.progress,
                    desc=g,
                    radius=radius,
                    objective=ctx.objective,
                )
    finally:
        if own:
            executor.close()
    return summarise(ctx.store, [ANALYSIS], full=True, groups=names)


def trajectory_files(group: str, run, dims: int) -> list:
    """The checkpoints of ``run``'s training trajectory (:func:`checkpoints.discover.trajectory`),
    or :class:`UserError` when they are too few for ``dims`` principal directions."""
    from checkpoints.discover import trajectory

    path = trajectory(run)
    if len(path) < dims + 2:
        raise UserError(
            f"--directions pca: group {group} {run.key} has {len(path)} checkpoint(s) of its "
            f"training trajectory ({', '.join(p.name for p in path)}); {dims} directions need at "
            f"least {dims + 2}: train with --save-every K (step<k>.pt or epoch<k>.pt beside final.pt)"
        )
    return path


def check_trajectories(groups: Mapping[str, Sequence], dims: int) -> None:
    """Before any work: every group's first seed has a trajectory for ``--directions pca``."""
    for g, runs in groups.items():
        if runs:
            trajectory_files(g, runs[0], dims)


def _pca(ctx: StudyContext, group: str, run, dims: int):
    """PCA directions of ``run``'s training trajectory (checkpoints loaded one at a time) and
    the trajectory's checkpoint paths."""
    from checkpoints import load_model

    path = trajectory_files(group, run, dims)
    final = ctx.model(run)
    models = (load_model(p, arch=ctx.arch, device="cpu") for p in path)
    dirs = pca_directions(final, models, count=dims, labels=[p.stem for p in path])
    return dirs, path
