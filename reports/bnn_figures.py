"""The report's Bayesian-network and calibration view: training curves, reliability diagrams, a table.

Figures are plain data (:mod:`reports.spec`) built from the ``bnn`` and ``calibration``
records (:mod:`landscape.records.bnn`, :mod:`landscape.records.calibration`); labels are
plain text (the renderers escape them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from landscape.records import bnn as B
from landscape.records import calibration as C

from .spec import Figure, Panel, Trace

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results

SECTION = (
    "bnn",
    "Bayesian networks and calibration",
    "Variational posteriors (low-rank plus diagonal Gaussian, ELRG) of each group, and the "
    "calibration of every network's predictive distribution on the test split: accuracy, NLL, "
    "ECE (15 equal-width confidence bins) and Brier score, mean ± std over seeds; posteriors "
    "predict with the Monte Carlo average of S samples. ELBO values count the KL term only "
    "over trainable entries, so groups with fixed W-Asym entries have fewer coordinates in it.",
)
#: curve -> (panel title, y label)
CURVES = (
    (B.ELBO, "training ELBO per sample", "ELBO (nats per sample)"),
    (B.NLL_TERM, "NLL term", "NLL (nats)"),
    (B.KL_TERM, "KL / N", "KL / N (nats per sample)"),
    (B.TRAIN_ACCURACY, "training accuracy (sampled network)", "accuracy"),
)


def bnn_curves_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """ELBO, NLL term, KL/N and training accuracy against the step: mean over seeds, band = range."""
    from .figures import _band_traces, _stack

    curves = res.curves(B.BNN.analysis, dim=B.STEP.dims[0])
    if curves.empty:
        return None
    panels = []
    for var, title, ylabel in CURVES:
        if var.name not in curves:
            continue
        p = Panel(title, "step", ylabel)
        for g in res.groups(B.BNN.analysis):
            x, ys = _stack(curves[curves.group == g], var.name, B.STEP.name)
            if len(ys):
                p.traces += _band_traces(g, colors[g], x, ys, g)
        if p.traces:
            if panels:
                for t in p.traces:
                    t.legend = False
            panels.append(p)
    if not panels:
        return None
    return Figure(
        "bnn-curves",
        "Variational training curves",
        "Each point is the mean over one logging window of steps: ELBO = -(NLL + KL/N) per "
        "sample, the NLL of the sampled network on the training batches, KL(q || prior) / N "
        "and the batch accuracy; line = mean over seeds, band = min to max over seeds.",
        panels,
        cols=2,
    )


def _pooled_bins(res: Results, group: str) -> tuple[np.ndarray, ...] | None:
    """Confidence, accuracy and count per bin, pooled over the group's records (count-weighted)."""
    conf_sum = acc_sum = count = centre = None
    for k in res.keys(C.CALIBRATION.analysis, group):
        d = res.records[k].datasets
        n = d.get(C.BIN_COUNT.name)
        conf, acc = d.get(C.BIN_CONFIDENCE.name), d.get(C.BIN_ACCURACY.name)
        if n is None or conf is None or acc is None or np.ndim(n) != 1:
            continue
        n = np.asarray(n, float)
        c = np.nan_to_num(np.asarray(conf, float)) * n
        a = np.nan_to_num(np.asarray(acc, float)) * n
        if count is None:
            conf_sum, acc_sum, count = c, a, n
            centre = np.asarray(d.get(C.BIN.name, np.arange(len(n))), float)
        elif len(n) == len(count):
            conf_sum, acc_sum, count = conf_sum + c, acc_sum + a, count + n
    if count is None or count.sum() == 0:
        return None
    keep = count > 0
    return (
        conf_sum[keep] / count[keep],
        acc_sum[keep] / count[keep],
        count[keep] / count.sum(),
        centre[keep],
    )


def reliability_figure(res: Results, colors: dict[str, str]) -> Figure | None:
    """Reliability diagrams of every group overlaid, and the share of samples per confidence bin."""
    rel = Panel("reliability diagram", "confidence (mean per bin)", "accuracy (per bin)")
    hist = Panel("samples per confidence bin", "confidence bin (centre)", "share of samples")
    for g in res.groups(C.CALIBRATION.analysis):
        got = _pooled_bins(res, g)
        if got is None:
            continue
        conf, acc, share, centre = got
        rel.traces.append(Trace("markers", g, conf, acc, color=colors[g], legendgroup=g))
        hist.traces.append(
            Trace("markers", g, centre, share, color=colors[g], legend=False, legendgroup=g)
        )
    if not rel.traces:
        return None
    diag = np.array([0.0, 1.0])
    rel.traces.insert(
        0, Trace("line", "perfect calibration", diag, diag, color="#888888", dash=True)
    )
    return Figure(
        "reliability",
        "Reliability diagrams",
        "Accuracy against confidence in equal-width bins of the top-label confidence, samples "
        "pooled over the seeds of each group (the dashed diagonal is perfect calibration; a "
        "last bin holds confidences of exactly 1); right: how the samples spread over the bins.",
        [rel, hist],
        cols=2,
    )


def bnn_figures(res: Results, colors: dict[str, str]) -> list[Figure]:
    """Every figure of the section, in order."""
    return [f for f in (bnn_curves_figure(res, colors), reliability_figure(res, colors)) if f]


def has_section(res: Results) -> bool:
    return bool(res.keys(B.BNN.analysis) or res.keys(C.CALIBRATION.analysis))


def section_body(res: Results, figs: dict[str, Figure]) -> list[str]:
    """The section's HTML pieces: the per-group table, then the figures."""
    from .html import figure_html, table_html
    from .plotly_figures import esc

    groups = res.groups(C.CALIBRATION.analysis) + [
        g for g in res.groups(B.BNN.analysis) if g not in res.groups(C.CALIBRATION.analysis)
    ]
    table = res.summary([C.CALIBRATION.analysis, B.BNN.analysis], full=True, groups=groups)
    body = []
    if not table.empty:
        body += [
            f"<h3>{esc('Per group: test calibration and final training ELBO (mean ± std over seeds)')}</h3>",
            table_html(table),
        ]
    body += [figure_html(figs[n]) for n in ("bnn-curves", "reliability") if n in figs]
    if not res.keys(B.BNN.analysis):
        body.append(
            '<p class="note">No variational training records in this file (run '
            "<code>landscape bnn</code> for posteriors and their training curves).</p>"
        )
    return body
