"""The report's metanetwork view: test R^2 and tau per population and metanet, predictions
against targets, and each population's target distribution.

Figures are plain data (:mod:`reports.spec`) built from the ``metanet`` records
(:mod:`landscape.records.metanet`); labels are plain text (the renderers escape them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from landscape.records import mean_std
from landscape.records import metanet as M

from .spec import PALETTE, Figure, Panel, Trace

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results

SECTION = (
    "metanet",
    "Metanetworks",
    "How well a network's property (its test accuracy, by default) can be predicted from its "
    "trainable weights, per population of networks: test R² (1 - SS_res / SS_tot) and Kendall's "
    "tau on held-out networks, mean ± std over metanet seeds. Standard networks have permutation "
    "symmetries a metanet must learn to ignore; W-Asym networks have none (Lim et al. 2024). "
    "Fixed W-Asym entries and FiGLU matrices are not part of the input.",
)


def _runs(res: Results, group: str) -> dict[str, list]:
    """The group's records by metanet name, in :data:`METANETS` order."""
    out: dict[str, list] = {}
    for k in res.keys(M.METANET.analysis, group):
        rec = res.records[k]
        out.setdefault(str(rec.attrs.get(M.MODEL.name)), []).append(rec)
    return {m: out[m] for m in M.METANETS if m in out}


def _target_name(res: Results) -> str:
    for k in res.keys(M.METANET.analysis):
        return str(res.records[k].attrs.get(M.TARGET_NAME.name, "target")).replace("_", " ")
    return "target"


def scores_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """Test R^2 and Kendall tau per metanet (x) and population (one trace each): mean ± std over seeds."""
    panels = [
        Panel("test R²", "metanet", "R² (1 is perfect, 0 predicts the mean)"),
        Panel("test Kendall tau", "metanet", "tau"),
    ]
    for g in res.groups(M.METANET.analysis):
        runs = _runs(res, g)
        for panel, attr in zip(panels, (M.TEST_R2, M.KENDALL_TAU)):
            stats = [mean_std(r.attrs.get(attr.name) for r in recs) for recs in runs.values()]
            panel.traces.append(
                Trace(
                    "scatter",
                    g,
                    np.asarray([M.LABELS[m] for m in runs]),
                    np.asarray([s[0] for s in stats]),
                    error=np.asarray([s[1] for s in stats]),
                    color=colors[g],
                    legend=panel is panels[0],
                    legendgroup=g,
                )
            )
    if not panels[0].traces:
        return None
    return Figure(
        "metanet-scores",
        "Metanet test R² and Kendall tau per population",
        "Each point: one metanet on one population's test networks, mean ± std over metanet seeds "
        "(each seed selects its learning rate and epoch by validation R²).",
        panels,
        cols=2,
    )


def scatter_figure(res: Results) -> Figure | None:
    """Per population: predicted against true target of every test network, one colour per metanet
    (the prediction averaged over the metanet's seeds), and the diagonal."""
    panels = []
    for g in res.groups(M.METANET.analysis):
        p = Panel(g, f"true {_target_name(res)}", f"predicted {_target_name(res)}", square=True)
        lo, hi = np.inf, -np.inf
        for m, recs in _runs(res, g).items():
            d = recs[0].datasets
            test = np.asarray(d.get(M.SPLIT.name, []), dtype=str) == "test"
            if not test.any():
                continue
            y = np.asarray(d[M.TARGET.name], float)[test]
            pred = np.mean([np.asarray(r.datasets[M.PREDICTED.name], float)[test] for r in recs], 0)
            lo, hi = min(lo, y.min(), pred.min()), max(hi, y.max(), pred.max())
            p.traces.append(
                Trace(
                    "scatter",
                    M.LABELS[m],
                    y,
                    pred,
                    color=PALETTE[M.METANETS.index(m) % len(PALETTE)],
                    legend=not panels,
                    legendgroup=m,
                )
            )
        if p.traces:
            diag = np.array([lo, hi])
            p.traces.insert(
                0,
                Trace(
                    "line",
                    "predicted = true",
                    diag,
                    diag,
                    color="#888888",
                    dash=True,
                    legend=not panels,
                ),
            )
            panels.append(p)
    if not panels:
        return None
    return Figure(
        "metanet-scatter",
        "Predicted against true, test networks",
        "One panel per population, one colour per metanet: every test network's prediction "
        "(mean over the metanet's seeds) against its true value; on the dashed line is perfect.",
        panels,
        cols=min(3, len(panels)),
    )


def targets_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """The target's distribution per population: the empirical CDF over all its networks."""
    p = Panel("distribution of the target", _target_name(res), "share of networks at or below")
    for g in res.groups(M.METANET.analysis):
        runs = _runs(res, g)
        if not runs:
            continue
        y = np.sort(np.asarray(next(iter(runs.values()))[0].datasets[M.TARGET.name], float))
        p.traces.append(
            Trace("line", g, y, np.arange(1, len(y) + 1) / len(y), color=colors[g], legendgroup=g)
        )
    if not p.traces:
        return None
    return Figure(
        "metanet-targets",
        "Target distribution per population",
        "Empirical cumulative distribution of the predicted quantity over every network of each "
        "population (train, validation and test networks): a narrow range is harder to rank.",
        [p],
        cols=1,
        height=400,
    )


def metanet_figures(res: Results, colors: dict[str, str]) -> list[Figure]:
    """Every figure of the section, in order."""
    figs = (scores_figure(res, colors), scatter_figure(res), targets_figure(res, colors))
    return [f for f in figs if f is not None]


def has_section(res: Results) -> bool:
    return bool(res.keys(M.METANET.analysis))


def section_body(res: Results, figs: dict[str, Figure]) -> list[str]:
    """The section's HTML pieces: the table (one row per population), then the figures."""
    from .html import figure_html, table_html
    from .plotly_figures import esc

    table = res.summary([M.METANET.analysis], full=True)
    body = [
        f"<h3>{esc(f'Predicting {_target_name(res)}: test R² and tau per metanet (mean ± std over seeds)')}</h3>",
        table_html(table),
    ]
    return body + [
        figure_html(figs[n])
        for n in ("metanet-scores", "metanet-scatter", "metanet-targets")
        if n in figs
    ]
