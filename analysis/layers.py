"""Per-layer curvature study: the diagonal Hessian block of every layer of every network.

Records ``/hessian_layers/<group>/<seedK>`` (:mod:`landscape.records.layers`): per layer its
coordinates, top eigenvalues and trace (exact for small layers, estimated otherwise, with
the standard error), and the sum of the layer traces, which is the full trace
(:func:`landscape.layers.per_layer_curvature`). ``landscape hessian --per-layer`` runs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from landscape.layers import per_layer_curvature
from landscape.records import layers as R
from landscape.results import summarise

from .context import StudyContext
from .executor import Workspace, network_records, run_records

ANALYSIS = R.HESSIAN_LAYERS.analysis
DEFINITION = (
    "H_ll: the Hessian of the mean loss over the split with respect to layer l's trainable "
    "coordinates only (every other coordinate fixed); sum_l tr H_ll = tr H"
)


def compute(
    ws: Workspace, job: tuple, *, split: str, options: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """One network's per-layer record, on whichever process runs the job."""
    _g, run = job
    res = per_layer_curvature(ws.model(run), ws.batches(split), device=ws.device, **options)
    values = {
        R.LAYER.name: np.array(res.layers, dtype=str),
        R.LAYER_COORDINATES.name: res.coordinates,
        R.LAYER_EIGENVALUES.name: res.eigenvalues,
        R.LAYER_TRACE.name: res.trace,
        R.LAYER_TRACE_STDERR.name: res.trace_stderr,
        R.LAYER_EXACT_TRACE.name: res.exact_trace,
    }
    attrs = {
        R.TOTAL_TRACE.name: res.total_trace,
        R.TOTAL_TRACE_STDERR.name: res.total_stderr,
        R.LAYERS_BY.name: str(options["by"]),
        R.ESTIMATOR.name: res.estimator,
        R.DEFINITION.name: DEFINITION,
    }
    return values, attrs


def study(
    ctx: StudyContext,
    *,
    top_k: int = 1,
    num_queries: int = 30,
    estimator: str = "hutchinson",
    by: str | int = "module",
    split: str = "train",
    tol: float = 1e-3,
    seed: int = 0,
    seeds: int | None = None,
    groups: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Top ``top_k`` eigenvalues and trace of every layer's Hessian block, per group and seed.

    ``by``: ``"module"`` or a module-path depth (see :func:`landscape.layers.layer_parameters`);
    ``seeds`` limits the seeds per group (first N). Returns :func:`summary`.
    """
    options = dict(
        top_k=top_k, num_queries=num_queries, estimator=estimator, by=by, tol=tol, seed=seed
    )
    settings = dict(options, split=split)
    names = list(groups or ctx.groups)
    jobs = [
        (g, r)
        for g in names
        for r in (ctx.groups[g] if seeds is None else ctx.groups[g][: int(seeds)])
    ]
    todo = [(g, r) for g, r in jobs if not ctx.should_skip(f"{ANALYSIS}/{g}/{r.key}")]

    write, label = network_records(ctx, R.HESSIAN_LAYERS, (split,), settings)

    run_records(
        ctx,
        todo,
        partial(compute, split=split, options=options),
        write,
        splits=[split],
        models=[ctx.model(r) for _g, r in todo[:1]],
        desc="hessian per layer",
        label=label,
    )
    return summary(ctx, names)


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: the layer grouping and the sum of the layer traces (mean ± std over seeds)."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(groups or ctx.groups))


def by_layer(store, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (group, network, layer) of a results store: coordinates, top eigenvalue,
    trace and its standard error."""
    wanted = None if groups is None else set(groups)
    rows = []
    for key in store.keys(ANALYSIS):
        rec = store.read(key)
        group = rec.attrs.get("group")
        if wanted is not None and group not in wanted:
            continue
        for i, layer in enumerate(rec[R.LAYER.name]):
            rows.append(
                {
                    "group": group,
                    "network": key.rsplit("/", 1)[-1],
                    "layer": layer.decode() if isinstance(layer, bytes) else str(layer),
                    "coordinates": int(rec[R.LAYER_COORDINATES.name][i]),
                    "top eigenvalue": float(rec[R.LAYER_EIGENVALUES.name][i][0]),
                    "trace": float(rec[R.LAYER_TRACE.name][i]),
                    "trace stderr": float(rec[R.LAYER_TRACE_STDERR.name][i]),
                }
            )
    return pd.DataFrame(rows)
