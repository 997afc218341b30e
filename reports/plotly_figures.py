"""Render :mod:`reports.spec` figures with plotly (interactive, for the HTML page and notebooks).

plotly reads a subset of HTML in every label, so each label is escaped here, at render time:
a group named ``<script>`` shows as text. The figure descriptions themselves hold plain text.
"""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .spec import COLORSCALE, Figure, Trace


def esc(s: object) -> str:
    """HTML-escaped text (quotes too): what every label becomes before plotly or a page sees it."""
    return html.escape(str(s), quote=True)


def _labels(a) -> list | None:
    """Category labels (strings escaped, numbers as they are)."""
    if a is None:
        return None
    return [esc(v) if isinstance(v, str) else v for v in np.asarray(a).tolist()]


def _rgba(hex_color: str | None, alpha: float) -> str | None:
    if not hex_color or not hex_color.startswith("#"):
        return hex_color
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _list(a) -> list:
    return np.asarray(a).tolist() if a is not None else None


def _z(a) -> list:
    z = np.asarray(a, float)
    return np.where(np.isfinite(z), z, None).tolist()  # NaN -> null: JSON has no NaN


def _traces(t: Trace, fig: Figure, show_scale: bool) -> list:
    common = dict(name=esc(t.name), legendgroup=t.legendgroup or t.name, showlegend=t.legend)
    zr = dict(zmin=fig.zrange[0], zmax=fig.zrange[1]) if fig.zrange else {}
    cbar = dict(title=dict(text=esc(fig.zlabel))) if fig.zlabel else {}
    if t.kind == "line":
        return [
            go.Scatter(
                x=_list(t.x),
                y=_list(t.y),
                mode="lines",
                line=dict(color=t.color, dash="dash" if t.dash else None),
                **common,
            )
        ]
    if t.kind == "band":
        x = np.asarray(t.x)
        return [
            go.Scatter(
                x=np.concatenate([x, x[::-1]]).tolist(),
                y=np.concatenate([t.hi, t.lo[::-1]]).tolist(),
                fill="toself",
                fillcolor=_rgba(t.color, 0.18),
                line=dict(width=0),
                hoverinfo="skip",
                **common,
            )
        ]
    if t.kind == "markers":
        err = (
            dict(error_y=dict(type="data", array=_list(t.error), visible=True))
            if t.error is not None
            else {}
        )
        return [
            go.Scatter(
                x=_list(t.x),
                y=_list(t.y),
                mode="lines+markers",
                marker=dict(color=t.color),
                line=dict(color=t.color),
                **err,
                **common,
            )
        ]
    if t.kind == "scatter":
        err = dict(error_y=dict(type="data", array=_list(t.error))) if t.error is not None else {}
        x = _labels(t.x) if np.asarray(t.x).dtype.kind in "OUS" else _list(t.x)
        return [
            go.Scatter(
                x=x, y=_list(t.y), mode="markers", marker=dict(color=t.color), **err, **common
            )
        ]
    if t.kind == "bar":
        return [go.Bar(x=_labels(t.x), y=_list(t.y), marker=dict(color=t.color), **common)]
    # what every coloured grid shares: values, the one colour scale, its bar, the name
    grid = dict(
        z=_z(t.z) if t.z is not None else None,
        colorscale=COLORSCALE,
        showscale=show_scale,
        colorbar=cbar,
        name=esc(t.name),
    )
    if t.kind == "heatmap":
        extra = dict(text=t.text, texttemplate="%{text}") if t.text is not None else {}
        return [
            go.Heatmap(
                x=_labels(t.x),
                y=_labels(t.y),
                **grid,
                **zr,
                **extra,
                hovertemplate="%{y} vs %{x}: %{z:.4g}<extra></extra>",
            )
        ]
    if t.kind == "contour":
        return [
            go.Contour(
                x=_list(t.x),
                y=_list(t.y),
                **grid,
                ncontours=20,
                contours=dict(coloring="heatmap"),
                **zr,
            )
        ]
    if t.kind == "surface":
        return [
            go.Surface(
                x=_list(t.x),
                y=_list(t.y),
                **grid,
                showlegend=True,
                cmin=zr.get("zmin"),
                cmax=zr.get("zmax"),
            )
        ]
    raise ValueError(f"unknown trace kind {t.kind!r}")


def to_plotly(fig: Figure) -> go.Figure:
    """A plotly figure with one subplot per panel, every heatmap/contour on ``fig.zrange``."""
    if fig.three_d:
        p = fig.panels[0]
        out = go.Figure()
        for i, t in enumerate(p.traces):
            for tr in _traces(t, fig, show_scale=(i == 0)):
                tr.visible = True if i == 0 else "legendonly"
                out.add_trace(tr)
        out.update_layout(
            scene=dict(
                xaxis_title=esc(p.xlabel), yaxis_title=esc(p.ylabel), zaxis_title=esc(fig.zlabel)
            )
        )
    else:
        out = make_subplots(
            rows=fig.rows,
            cols=fig.cols,
            subplot_titles=[esc(p.title) for p in fig.panels],
            horizontal_spacing=0.08 if fig.cols < 3 else 0.06,
            vertical_spacing=0.14,
        )
        n_scaled = sum(t.kind in ("heatmap", "contour") for p in fig.panels for t in p.traces)
        seen = 0
        for i, p in enumerate(fig.panels):
            row, col = i // fig.cols + 1, i % fig.cols + 1
            for t in p.traces:
                if t.kind in ("heatmap", "contour"):
                    seen += 1
                for tr in _traces(t, fig, show_scale=(seen == n_scaled)):
                    out.add_trace(tr, row=row, col=col)
            out.update_xaxes(
                title_text=esc(p.xlabel), type="log" if p.xlog else None, row=row, col=col
            )
            out.update_yaxes(
                title_text=esc(p.ylabel),
                type="log" if p.ylog else None,
                row=row,
                col=col,
                autorange="reversed" if any(t.kind == "heatmap" for t in p.traces) else None,
            )
    height = fig.height or (340 * fig.rows + 60)
    out.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=60, r=30, t=50, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.04 if fig.rows == 1 else 1.02, x=0),
        font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12),
    )
    return out
