"""The self-contained HTML report: one file, plotly.js embedded once, no request to any other host.

Every string that comes from the results file (group names, paths, commands, settings) is
escaped: tables through pandas (``escape=True``) or :func:`html.escape`, figure labels in
:mod:`reports.figures`. The page is plain HTML + CSS; the only script is plotly.js (once) and
one ``Plotly.newPlot`` call per figure.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.io as pio
from plotly.offline import get_plotlyjs

from landscape.atomic import write_atomic
from landscape.records import kind

from .bnn_figures import SECTION as BNN_SECTION
from .bnn_figures import has_section as has_bnn_section
from .bnn_figures import section_body as bnn_section_body
from .figures import build_figures
from .metanet_figures import SECTION as METANET_SECTION
from .metanet_figures import has_section as has_metanet_section
from .metanet_figures import section_body as metanet_section_body
from .plotly_figures import esc, to_plotly
from .spec import Figure
from .tables import provenance_tables

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results

CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#fafbfc}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}header p{margin:0;opacity:.85;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #dde;padding:8px 28px;z-index:5;font-size:13px}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none}main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:6px 18px 14px;margin:16px 0}
h2{font-size:18px;margin:12px 0 4px}h3{font-size:15px;margin:14px 0 4px}p.explain{margin:2px 0 10px;color:#4a5563;font-size:13px}
table.data{border-collapse:collapse;font-size:13px;margin:6px 0 10px}table.data th,table.data td{border-bottom:1px solid #e5e7eb;padding:4px 10px;text-align:left}
table.data th{background:#f3f5f7}td{font-variant-numeric:tabular-nums}.missing{color:#9a3412}.note{color:#6b7280;font-size:13px}
.scroll{overflow-x:auto}code{background:#f3f5f7;padding:1px 4px;border-radius:3px}
"""

SECTIONS = [  # id, title, explanation
    (
        "overview",
        "Overview",
        "One row per group: seeds, accuracy of the trained networks, test loss and accuracy barriers (max over the "
        "linear path, mean ± std over pairs), the same after weight matching for standard groups, share of monotonic MLI curves, "
        "top Hessian eigenvalue and trace (mean ± std over seeds).",
    ),
    (
        "missing",
        "Missing",
        "Records that are not complete yet and analyses with no record: rerun the same command to fill them in.",
    ),
    (
        "interpolation",
        "Interpolation and barriers",
        "Loss and accuracy on the straight line between two trained networks of the same group; "
        "a barrier is the bump above the chord (max over the path) or at the midpoint.",
    ),
    (
        "barriers",
        "Pairwise barriers",
        "Every pair of seeds of a group; low values everywhere mean the group's minima are linearly connected.",
    ),
    (
        "mli",
        "Monotonic linear interpolation",
        "The training loss on the straight line from each network's initialisation to its trained "
        "weights; delta is the largest increase between consecutive points.",
    ),
    (
        "hessian",
        "Hessian spectra",
        "Curvature of the training loss at each trained network: top eigenvalues (Lanczos), trace (Hutch++ by default) "
        "and spectral density (stochastic Lanczos quadrature).",
    ),
    (
        "surfaces",
        "Loss surfaces",
        "The loss on a 2-D plane through each trained network spanned by two random filter-normalised directions.",
    ),
    (
        "symmetry",
        "Symmetry audit",
        "Which permutation symmetries each network has: a symmetric network keeps its function under the "
        "permutation, an asymmetric one should not.",
    ),
    BNN_SECTION,
    METANET_SECTION,
    (
        "other",
        "Other analyses",
        "Records of analyses this report has no dedicated view for, as tables and curves.",
    ),
    (
        "provenance",
        "Provenance",
        "What produced these numbers: commands, versions, data, settings, checkpoints with SHA-256, time.",
    ),
]
EXPLAIN = {s: e for s, _, e in SECTIONS}
RUN_HINT = {
    "interpolation": "landscape interpolate",
    "interpolation_aligned": "landscape interpolate --align",
    "mli": "landscape interpolate",
    "hessian": "landscape hessian",
    "surface": "landscape surface",
    "symmetry": "landscape symmetry",
}


def table_html(df: pd.DataFrame, float_digits: int = 4) -> str:
    if df is None or df.empty:
        return '<p class="note">(no rows)</p>'
    body = df.to_html(
        index=False,
        escape=True,
        border=0,
        classes="data",
        na_rep="-",
        float_format=lambda v: f"{v:.{float_digits}g}",
    )
    return f'<div class="scroll">{body}</div>'


def figure_html(fig: Figure) -> str:
    """A figure's div and its ``Plotly.newPlot`` call; plotly.js itself is not included."""
    pfig = to_plotly(fig)
    div = pio.to_html(
        pfig,
        include_plotlyjs=False,
        full_html=False,
        config=CONFIG,
        div_id=f"fig-{fig.name}",
        default_height=f"{pfig.layout.height}px",
        default_width="100%",
        validate=False,
    )
    if div.lower().count("</script") != div.lower().count(
        "<script"
    ):  # labels are escaped upstream; never let one close the script
        raise ValueError(f"figure {fig.name}: a label would break out of its script")
    return (
        f'<figure class="plot" data-figure="{esc(fig.name)}"><h3>{esc(fig.title)}</h3>'
        f'<p class="explain">{esc(fig.caption)}</p>{div}</figure>'
    )


def _section(sid: str, title: str, body: Iterable[str]) -> str:
    return f'<section id="{sid}"><h2>{esc(title)}</h2><p class="explain">{esc(EXPLAIN[sid])}</p>{"".join(body)}</section>'


def _absent(res: Results, analyses: Iterable[str]) -> str:
    lines = []
    for a in analyses:
        if not res.keys(a):
            lines.append(
                f'<p class="missing">No complete <code>{esc(a)}</code> records in this file (run <code>{esc(RUN_HINT.get(a, "landscape run"))}</code>).</p>'
            )
    return "".join(lines)


def sections(res: Results) -> list[tuple[str, str, str]]:
    """(id, title, html) of every section the results support."""
    figs = {f.name: f for f in build_figures(res)}
    out = []

    def add(sid: str, body: list[str]) -> None:
        title = next(t for s, t, _ in SECTIONS if s == sid)
        out.append((sid, title, _section(sid, title, body)))

    def table(analysis: str, heading: str | None = None) -> list[str]:
        """The definition's per-group summary of one analysis (what the CLI prints too)."""
        t = res.summary([analysis], full=True)
        if t.empty:
            return []
        return ([f"<h3>{esc(heading)}</h3>"] if heading else []) + [table_html(t)]

    def fig(*names: str) -> list[str]:
        return [figure_html(figs[n]) for n in names if n in figs]

    interp, aligned, mli = "interpolation", "interpolation_aligned", "mli"
    add("overview", [table_html(res.summary())])
    missing = res.incomplete()
    if len(missing):
        add("missing", [table_html(missing)])
    add(
        "interpolation",
        fig("interpolation")
        + table(interp, "Barriers, both definitions (mean ± std over pairs)")
        + table(aligned, "After weight matching")
        + [_absent(res, [interp, aligned])],
    )
    if "barriers" in figs:
        add("barriers", fig("barriers"))
    add("mli", fig("mli") + table(mli) + [_absent(res, [mli])])
    add(
        "hessian",
        fig("hessian")
        + table("hessian")
        + fig("hessian-layers")
        + (table("hessian_layers") if res.keys("hessian_layers") else [])
        + [_absent(res, ["hessian"])],
    )
    add(
        "surfaces",
        fig("surfaces", "surface3d", "surfaces-1d")
        + table("surface")
        + [_absent(res, ["surface"])],
    )
    sym = res.frame("symmetry")
    add(
        "symmetry",
        table("symmetry")
        + fig("symmetry")
        + (["<h3>Per network</h3>", table_html(sym)] if not sym.empty else [])
        + [_absent(res, ["symmetry"])],
    )
    if has_bnn_section(res):
        add("bnn", bnn_section_body(res, figs))
    if has_metanet_section(res):
        add("metanet", metanet_section_body(res, figs))
    others = [a for a in res.analyses() if kind(a) is None]
    if others:
        body = []
        for a in others:
            body += [f"<h3>{esc(a)}</h3>", table_html(res.frame(a))]
            body += fig(f"curves-{a}")
        add("other", body)
    prov = provenance_tables(res)
    add("provenance", [f"<h3>{esc(k)}</h3>{table_html(v)}" for k, v in prov.items()])
    return out


def report_html(res: Results, title: str | None = None) -> str:
    """The whole page as a string."""
    title = title or f"Loss-landscape report: {Path(res.path).name}"
    secs = sections(res)
    nav = "".join(f'<a href="#{sid}">{esc(t)}</a>' for sid, t, _ in secs)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    groups = ", ".join(res.groups())
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
    )
    header = (
        f"<header><h1>{esc(title)}</h1><p>results file {esc(res.path)} · groups: {esc(groups)} · "
        f"{len(res.records)} complete records · rendered {esc(now)}</p></header><nav>{nav}</nav>"
    )
    return head + header + "<main>" + "".join(h for *_, h in secs) + "</main></body></html>\n"


def render_html(results: Results | str | Path, path: str | Path, title: str | None = None) -> Path:
    """Write the report of a results file (or a loaded :class:`~landscape.results.Results`) to ``path``."""
    from landscape.results import Results, load

    res = results if isinstance(results, Results) else load(results)
    path = Path(path)
    html = report_html(res, title)
    # a corrupt results file may hold text that is not UTF-8: escaped, never a crash
    page = html.encode("utf-8", errors="backslashreplace")
    return write_atomic(path, page, option="-o", what="report")


_PLOTLYJS_SENT = False


def notebook_html(res: Results, figures: Iterable[str] = ("interpolation",)) -> str:
    """Inline view for Jupyter: the overview table, what is missing, and the main figure(s).

    plotly.js is embedded in the first output of a kernel session only (it is 4.8 MB).
    """
    parts = [
        f"<h4>{esc(Path(res.path).name)}: {len(res.records)} complete records</h4>",
        table_html(res.summary()),
    ]
    missing = res.incomplete()
    if len(missing):
        parts += ["<p><b>Missing</b></p>", table_html(missing)]
    figs = {f.name: f for f in build_figures(res)}
    for name in figures:
        if name in figs:
            parts.append(inline_figure(to_plotly(figs[name])))
    return "".join(parts)


def inline_figure(pfig) -> str:
    """A plotly figure for a notebook cell, embedding plotly.js only the first time."""
    global _PLOTLYJS_SENT
    out = pio.to_html(
        pfig,
        include_plotlyjs=not _PLOTLYJS_SENT,
        full_html=False,
        config=CONFIG,
        default_width="100%",
        default_height=f"{pfig.layout.height or 450}px",
    )
    _PLOTLYJS_SENT = True
    return out
