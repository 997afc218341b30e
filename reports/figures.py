"""The report's figures, built from a :class:`landscape.results.Results` as plain data (:mod:`reports.spec`).

Labels here are plain text (group names, record names as the file has them); the plotly
renderer escapes them, because plotly reads a subset of HTML in labels, and matplotlib
shows them as they are. Every dataset and attribute is found through its record
definition (:mod:`landscape.records`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from landscape import records as R
from landscape.records import hessian as hess
from landscape.records import interpolation as interp
from landscape.records import layers as lay
from landscape.records import surface as surf
from landscape.records import symmetry as sym

from .spec import Figure, Panel, Trace, group_colors

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results

#: curve -> (panel title, y label)
SPLIT_LABELS = {
    var.at(split): (f"{split} {what}", unit)
    for split in ("test", "train")
    for var, what, unit in (
        (interp.LOSS, "loss", "loss (nats)"),
        (interp.ACCURACY, "accuracy", "accuracy"),
    )
}


def _stack(curves: pd.DataFrame, col: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows: records; columns: points on the common x grid (records with another grid are dropped)."""
    xs, rows = None, []
    for _, df in curves.groupby("record", sort=False):
        if col not in df or df[col].isna().all():
            continue
        xv = df[x].to_numpy(float)
        if xs is None:
            xs = xv
        if len(xv) == len(xs) and np.allclose(xv, xs):
            rows.append(df[col].to_numpy(float))
    return (xs if xs is not None else np.zeros(0)), np.asarray(rows)


def _band_traces(
    name: str, color: str, x: np.ndarray, ys: np.ndarray, legendgroup: str, *, dash: bool = False
) -> list[Trace]:
    out = []
    if len(ys) > 1:
        out.append(
            Trace(
                "band",
                f"{name} range",
                x,
                lo=ys.min(0),
                hi=ys.max(0),
                color=color,
                legend=False,
                legendgroup=legendgroup,
            )
        )
    out.append(Trace("line", name, x, ys.mean(0), color=color, dash=dash, legendgroup=legendgroup))
    return out


def interpolation_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    plain = res.curves(interp.INTERPOLATION.analysis)
    aligned = res.curves(interp.INTERPOLATION_ALIGNED.analysis)
    if plain.empty and aligned.empty:
        return None
    cols = [c for c in SPLIT_LABELS if c in plain or c in aligned]
    panels = []
    for col in cols:
        title, ylabel = SPLIT_LABELS[col]
        p = Panel(title, "alpha (0: network A, 1: network B)", ylabel)
        for g in res.groups():
            for df, suffix, dash in ((plain, "", False), (aligned, " (aligned)", True)):
                if df.empty or g not in set(df.group):
                    continue
                x, ys = _stack(df[df.group == g], col, interp.ALPHA.name)
                if len(ys):
                    p.traces += _band_traces(
                        g + suffix, colors[g], x, ys, f"{g}{suffix}", dash=dash
                    )
        panels.append(p)
    for p in panels[1:]:
        for t in p.traces:
            t.legend = False
    return Figure(
        "interpolation",
        "Linear interpolation between trained networks",
        "Loss and accuracy along theta(a) = (1 - a) theta_A + a theta_B for every pair of seeds: line = mean over pairs, "
        "band = min to max over pairs; dashed = standard networks after weight matching.",
        panels,
        cols=2,
    )


def _matrix(
    res: Results, analysis: str, group: str, col: str
) -> tuple[list[str], np.ndarray] | None:
    seeds: list[str] = []
    pairs = {}
    for k in res.keys(analysis, group):
        rec = res.records[k]
        s = [str(x) for x in rec.attrs.get("seeds") or []]
        if len(s) == 2 and col in rec.attrs:
            pairs[tuple(s)] = float(rec.attrs[col])
            seeds += [x for x in s if x not in seeds]
    if not pairs:
        return None
    idx = {s: i for i, s in enumerate(seeds)}
    m = np.full((len(seeds), len(seeds)), np.nan)
    np.fill_diagonal(m, 0.0)
    for (a, b), v in pairs.items():
        m[idx[a], idx[b]] = m[idx[b], idx[a]] = v
    return seeds, m


def barrier_figure(res: Results, col: str = interp.LOSS_BARRIER_MAX.at("test")) -> Figure | None:
    panels, values = [], []
    for analysis, suffix in (
        (interp.INTERPOLATION.analysis, ""),
        (interp.INTERPOLATION_ALIGNED.analysis, " (aligned)"),
    ):
        for g in res.groups(analysis):
            got = _matrix(res, analysis, g, col)
            if got is None:
                continue
            seeds, m = got
            labels = list(seeds)
            text = [["" if np.isnan(v) else f"{v:.3g}" for v in row] for row in m]
            panels.append(
                Panel(
                    g + suffix,
                    "seed",
                    "seed",
                    [
                        Trace(
                            "heatmap",
                            g + suffix,
                            np.asarray(labels),
                            np.asarray(labels),
                            z=m,
                            text=text,
                        )
                    ],
                    square=True,
                )
            )
            values.append(m[np.isfinite(m)])
    if not panels:
        return None
    v = np.concatenate(values)
    what = interp.INTERPOLATION.attr(col).description
    return Figure(
        "barriers",
        "Pairwise barrier matrices",
        f"Barrier {what} for every pair of seeds, one colour scale for all groups "
        "(diagonal 0: a network with itself).",
        panels,
        cols=min(3, len(panels)),
        zrange=(float(v.min()), float(v.max())),
        zlabel="barrier",
    )


def mli_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    curves = res.curves(interp.MLI.analysis)
    if curves.empty:
        return None
    panels = []
    for col in (interp.LOSS.at("train"), interp.ACCURACY.at("train")):
        if col not in curves:
            continue
        title, ylabel = SPLIT_LABELS[col]
        p = Panel(
            title + " from init to final",
            "alpha (0: initialisation, 1: trained)",
            ylabel,
            ylog=(col == interp.LOSS.at("train")),
        )
        for g in res.groups(interp.MLI.analysis):
            first = True
            for _rec, df in curves[curves.group == g].groupby("record", sort=False):
                p.traces.append(
                    Trace(
                        "line",
                        g,
                        df[interp.ALPHA.name].to_numpy(float),
                        df[col].to_numpy(float),
                        color=colors[g],
                        legend=first and not panels,
                        legendgroup=g,
                    )
                )
                first = False
        panels.append(p)
    return Figure(
        "mli",
        "Monotonic linear interpolation (init to final)",
        "Training loss and accuracy along "
        "theta(a) = (1 - a) theta_init + a theta_final, one line per seed; a monotonic loss curve has no bump.",
        panels,
        cols=2,
    )


def hessian_figures(res: Results, colors: dict[str, str]) -> list[Figure]:
    out = []
    top = Panel("top-k eigenvalues", "k (1 = largest)", "eigenvalue")
    dens = Panel("spectral density", "eigenvalue", "density", ylog=True)
    for g in res.groups(hess.HESSIAN.analysis):
        tops, densities = [], []
        for k in res.keys(hess.HESSIAN.analysis, g):
            rec = res.records[k]
            eig, d = rec.datasets.get(hess.EIGENVALUES.name), rec.datasets.get(hess.DENSITY.name)
            if np.ndim(eig) == 1:
                tops.append(np.sort(np.asarray(eig, float))[::-1])
            if np.ndim(d) == 1:
                grid = hess.HESSIAN.coordinate(rec, hess.DENSITY.dims[0], len(d))
                densities.append((np.asarray(grid, float), np.asarray(d, float)))
        if tops:
            n = min(len(t) for t in tops)
            ys = np.asarray([t[:n] for t in tops])
            top.traces.append(
                Trace(
                    "markers",
                    g,
                    np.arange(1, n + 1, dtype=float),
                    ys.mean(0),
                    error=ys.std(0, ddof=1) if len(ys) > 1 else None,
                    color=colors[g],
                    legendgroup=g,
                )
            )
        if densities:  # each seed has its own grid: the union range, zero outside a seed's grid
            lo = min(float(x.min()) for x, _ in densities)
            hi = max(float(x.max()) for x, _ in densities)
            grid = np.linspace(lo, hi, 400)
            ys = np.asarray([np.interp(grid, x, d, left=0.0, right=0.0) for x, d in densities])
            new = _band_traces(g, colors[g], grid, np.maximum(ys, 1e-8), g)
            for t in new:
                t.legend = t.legend and not top.traces
            dens.traces += new
    panels = [p for p in (top, dens) if p.traces]
    if panels:
        out.append(
            Figure(
                "hessian",
                "Hessian spectra",
                "Top eigenvalues of the training-loss Hessian (mean ± std over seeds) and the "
                "spectral density from stochastic Lanczos quadrature (line = mean, band = range over seeds), groups overlaid.",
                panels,
                cols=len(panels),
            )
        )
    layers = layer_figure(res, colors)
    if layers is not None:
        out.append(layers)
    return out


def layer_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """Top eigenvalue and trace of each layer's Hessian block (``hessian_layers`` records), per
    group: mean ± std over the group's networks, layers in model order."""
    top = Panel("top eigenvalue per layer", "layer", "eigenvalue of H_ll")
    trace = Panel("trace per layer", "layer", "tr H_ll")
    for g in res.groups(lay.HESSIAN_LAYERS.analysis):
        rows: dict[str, tuple[list[float], list[float]]] = {}
        for k in res.keys(lay.HESSIAN_LAYERS.analysis, g):
            rec = res.records[k]
            names = rec.datasets.get(lay.LAYER.name)
            eig = rec.datasets.get(lay.LAYER_EIGENVALUES.name)
            tr = rec.datasets.get(lay.LAYER_TRACE.name)
            if names is None or eig is None or tr is None:
                continue
            for i, name in enumerate(names):
                label = name.decode() if isinstance(name, bytes) else str(name)
                e, t = rows.setdefault(label, ([], []))
                e.append(float(np.asarray(eig)[i].reshape(-1)[0]))
                t.append(float(np.asarray(tr)[i]))
        if not rows:
            continue
        x = np.asarray(list(rows))
        for panel, j in ((top, 0), (trace, 1)):
            vals = [np.asarray(v[j]) for v in rows.values()]
            panel.traces.append(
                Trace(
                    "markers",
                    g,
                    x,
                    np.asarray([v.mean() for v in vals]),
                    error=np.asarray([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals]),
                    color=colors[g],
                    legend=panel is top,
                    legendgroup=g,
                )
            )
    if not top.traces:
        return None
    return Figure(
        "hessian-layers",
        "Curvature per layer",
        "Largest eigenvalue and trace of each layer's diagonal Hessian block H_ll (the Hessian "
        "with respect to that layer's coordinates only), mean ± std over each group's networks; "
        "the traces of the layers add up to the full trace.",
        [top, trace],
        cols=2,
    )


def _surface_records(res: Results):
    """(group, record name, Record) of the first complete surface record of every group."""
    out = []
    for g in res.groups(surf.SURFACE.analysis):
        keys = res.keys(surf.SURFACE.analysis, g)
        if keys:
            out.append((g, keys[0].split("/")[-1], res.records[keys[0]]))
    return out


#: the colour of a training trajectory drawn on a contour (it stands out on Viridis)
TRAJECTORY_COLOR = "#E8000B"


def _pca_labels(rec, dims: tuple[str, ...]) -> tuple[str, ...]:
    """Axis labels naming each PCA direction's share of the trajectory's variance."""
    ev = rec.datasets.get(surf.EXPLAINED_VARIANCE.name)
    if ev is None:
        return dims
    ev = np.atleast_1d(np.asarray(ev, float))
    return tuple(
        f"{d}: PC{i + 1} ({ev[i]:.0%} of the variance)" if i < ev.size else d
        for i, d in enumerate(dims)
    )


def surface_figures(res: Results, colors: dict[str, str]) -> list[Figure]:
    """2-D records: contours side by side on one colour scale (with the projected training
    trajectory of PCA directions as a line with markers) plus a 3-D view; 1-D records: loss
    profiles overlaid."""
    grids, lines, paths = [], [], {}
    for g, r, rec in _surface_records(res):
        if surf.LOSS.name not in rec.datasets:
            continue
        z = np.asarray(rec.datasets[surf.LOSS.name], float)
        split = rec.attrs.get(surf.SPLIT.name)
        zname = f"{split} loss" if split else "loss"
        dims = surf.LOSS.dims
        coords = [surf.SURFACE.coordinate(rec, dims[i], z.shape[i]) for i in range(z.ndim)]
        path = rec.datasets.get(surf.TRAJECTORY.name)
        if z.ndim == 2 and path is not None and np.ndim(path) == 2 and np.shape(path)[1] == 2:
            paths[(g, r)] = np.asarray(path, float)
            dims = _pca_labels(rec, dims)
        if z.ndim == 2:  # z[i, j] at (x[i], y[j]): x horizontal, so plotly's z is the transpose
            grids.append((g, r, *coords, z.T, dims[0], dims[1], zname))
        elif z.ndim == 1:
            lines.append((g, r, coords[0], z, dims[0], zname))
    out = []
    if lines:
        p = Panel("loss along one direction", lines[0][4], lines[0][5])
        p.traces = [
            Trace("line", f"{g} ({r})", x, z, color=colors[g], legendgroup=g)
            for g, r, x, z, _, _ in lines
        ]
        out.append(
            Figure(
                "surfaces-1d",
                "1-D loss profiles",
                "The loss along one random filter-normalised direction through each "
                "trained network (first seed of each group).",
                [p],
                cols=1,
            )
        )
    if not grids:
        return out
    zs = np.concatenate([z[np.isfinite(z)].ravel() for *_, z, _a, _b, _c in grids])
    lo, hi = (float(zs.min()), float(np.quantile(zs, 0.98))) if zs.size else (0.0, 1.0)
    panels = [
        Panel(
            f"{g} ({r})",
            xl,
            yl,
            [Trace("contour", g, x, y, z=np.minimum(z, hi))]
            + [
                Trace(
                    "markers",
                    f"training trajectory ({g})",
                    p[:, 0],
                    p[:, 1],
                    color=TRAJECTORY_COLOR,
                    legendgroup=g,
                )
                for p in ([paths[(g, r)]] if (g, r) in paths else [])
            ],
            square=True,
        )
        for g, r, x, y, z, xl, yl, _ in grids
    ]
    zname = grids[0][7]
    out.append(
        Figure(
            "surfaces",
            "2-D loss surfaces",
            f"{zname.capitalize()} on a plane through each trained network (random "
            "filter-normalised directions around the first seed, the plane through three seeds, "
            "or the top two principal components of the first seed's training trajectory, drawn "
            "on it as a line with markers from init to final), one colour scale "
            "for all groups, clipped at its 98th percentile.",
            panels,
            cols=min(3, len(panels)),
            zrange=(lo, hi),
            zlabel=zname,
        )
    )
    out.append(
        Figure(
            "surface3d",
            "Interactive 3-D surface",
            "The same surfaces in 3-D: drag to rotate; click a group in the legend to show it.",
            [
                Panel(
                    "",
                    grids[0][5],
                    grids[0][6],
                    [Trace("surface", g, x, y, z=np.minimum(z, hi)) for g, r, x, y, z, *_ in grids],
                )
            ],
            cols=1,
            zrange=(lo, hi),
            zlabel=zname,
            three_d=True,
            height=600,
        )
    )
    return out


def symmetry_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """Relative output change per permutation group of the architecture (max over seeds), one bar group per network group."""
    p = Panel(
        "output change when permuting one unit group",
        "permutation group",
        "relative output change",
        ylog=True,
    )
    for g in res.groups(sym.SYMMETRY.analysis):
        vals: dict[str, float] = {}
        for k in res.keys(sym.SYMMETRY.analysis, g):
            rec = res.records[k]
            names = rec.datasets.get(sym.PERM_GROUP.name)
            change = rec.datasets.get(sym.GROUP_RELATIVE_CHANGE.name)
            if names is None or change is None:
                continue
            for n, c in zip(names, np.asarray(change, float)):
                n = str(n)
                vals[n] = max(vals.get(n, 0.0), float(c))
        if vals:
            p.traces.append(
                Trace(
                    "bar",
                    g,
                    np.asarray(list(vals)),
                    np.maximum(np.asarray(list(vals.values())), 1e-12),
                    color=colors[g],
                    legendgroup=g,
                )
            )
    if not p.traces:
        return None
    return Figure(
        "symmetry",
        "Symmetry audit per permutation group",
        "Max over seeds of max_x |f_pi(x) - f(x)| / max |f(x)| when only "
        "this group of hidden units is permuted: about 1e-7 (float rounding) means the permutation is a symmetry; "
        "asymmetric networks should be far above.",
        [p],
        cols=1,
        height=420,
    )


def generic_figures(res: Results, colors: dict[str, str], analysis: str) -> list[Figure]:
    """1-D datasets of an analysis the report has no dedicated view for: one panel per dataset, one line per record."""
    curves = res.curves(analysis)
    if curves.empty:
        return []
    axis = curves.columns[2]
    panels = []
    for col in curves.columns[3:]:
        p = Panel(col.replace("_", " "), axis, "")
        for g in res.groups(analysis):
            for i, (_, df) in enumerate(curves[curves.group == g].groupby("record", sort=False)):
                if df[col].notna().any():
                    p.traces.append(
                        Trace(
                            "line",
                            g,
                            df[axis].to_numpy(float),
                            df[col].to_numpy(float),
                            color=colors[g],
                            legend=(not panels and i == 0),
                            legendgroup=g,
                        )
                    )
        if p.traces:
            panels.append(p)
    if not panels:
        return []
    return [
        Figure(
            f"curves-{analysis}",
            f"{analysis}: curves",
            f"Every 1-D dataset of the {analysis} records, one line per record.",
            panels[:6],
            cols=2,
        )
    ]


def build_figures(res: Results) -> list[Figure]:
    """Every figure the results support, in report order."""
    colors = group_colors(res.groups())
    figs: list[Figure | None] = [
        interpolation_figure(res, colors),
        barrier_figure(res),
        mli_figure(res, colors),
    ]
    figs += hessian_figures(res, colors)
    figs += surface_figures(res, colors)
    figs.append(symmetry_figure(res, colors))
    from .bnn_figures import bnn_figures  # here: bnn_figures reuses this module's band helpers

    figs += bnn_figures(res, colors)
    from .metanet_figures import metanet_figures

    figs += metanet_figures(res, colors)
    for a in res.analyses():
        if R.kind(a) is None:
            figs += generic_figures(res, colors, a)
    return [f for f in figs if f is not None]
