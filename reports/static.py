"""Static figures (PNG and PDF) with matplotlib, drawn from the same figure descriptions as the page."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from landscape.atomic import write_atomic, write_error

from .figures import build_figures
from .spec import COLORSCALE, Figure, Trace

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results


def _draw(ax, t: Trace, fig: Figure):
    cmap = COLORSCALE.lower()
    norm = dict(vmin=fig.zrange[0], vmax=fig.zrange[1]) if fig.zrange else {}
    label = t.name if t.legend else None
    if t.kind == "line":
        ax.plot(t.x, t.y, color=t.color, ls="--" if t.dash else "-", lw=1.6, label=label)
    elif t.kind == "band":
        ax.fill_between(t.x, t.lo, t.hi, color=t.color, alpha=0.18, lw=0)
    elif t.kind == "markers":
        ax.errorbar(t.x, t.y, yerr=t.error, color=t.color, marker="o", ms=4, capsize=3, label=label)
    elif t.kind == "scatter":
        x = [str(v) for v in t.x] if np.asarray(t.x).dtype.kind in "OUS" else t.x
        ax.errorbar(x, t.y, yerr=t.error, color=t.color, marker="o", ms=3, ls="none", label=label)
    elif t.kind == "bar":
        bars = [c.patches for c in ax.containers]
        k, n = len(bars), len(t.x)
        ax.bar(np.arange(n) + 0.2 * k - 0.2, t.y, width=0.2, color=t.color, label=label)
        ax.set_xticks(np.arange(n), [str(s) for s in t.x], rotation=45, ha="right", fontsize=7)
    elif t.kind == "heatmap":
        z = np.asarray(t.z, float)
        im = ax.imshow(z, cmap=cmap, origin="upper", **norm)
        ax.set_xticks(range(len(t.x)), [str(s) for s in t.x], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(t.y)), [str(s) for s in t.y], fontsize=7)
        if t.text is not None and z.shape[0] <= 8:
            for i in range(z.shape[0]):
                for j in range(z.shape[1]):
                    ax.text(j, i, t.text[i][j], ha="center", va="center", fontsize=6, color="w")
        return im
    elif t.kind == "contour":
        levels = np.linspace(*(fig.zrange or (np.nanmin(t.z), np.nanmax(t.z))), 21)
        return ax.contourf(
            t.x, t.y, np.asarray(t.z, float), levels=levels, cmap=cmap, extend="both"
        )
    return None


def draw(fig: Figure):
    """A matplotlib figure of a report figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if fig.three_d:
        mfig = plt.figure(figsize=(6.5, 5))
        p = fig.panels[0]
        ax = mfig.add_subplot(projection="3d")
        t = p.traces[0]
        X, Y = np.meshgrid(t.x, t.y)
        ax.plot_surface(
            X,
            Y,
            np.asarray(t.z, float),
            cmap=COLORSCALE.lower(),
            vmin=fig.zrange[0] if fig.zrange else None,
            vmax=fig.zrange[1] if fig.zrange else None,
            linewidth=0,
        )
        ax.set(xlabel=p.xlabel, ylabel=p.ylabel, zlabel=fig.zlabel, title=t.name)
        return mfig
    mfig, axes = plt.subplots(
        fig.rows,
        fig.cols,
        figsize=(4.2 * fig.cols, 3.4 * fig.rows),
        squeeze=False,
        layout="constrained",
    )
    mappable = None
    for i, ax in enumerate(axes.ravel()):
        if i >= len(fig.panels):
            ax.set_axis_off()
            continue
        p = fig.panels[i]
        for t in p.traces:
            mappable = _draw(ax, t, fig) or mappable
        ax.set(title=p.title, xlabel=p.xlabel, ylabel=p.ylabel)
        if p.ylog:
            ax.set_yscale("log")
        if p.square:
            ax.set_aspect("equal" if not any(t.kind == "contour" for t in p.traces) else "auto")
        if any(t.legend and t.kind in ("line", "markers", "scatter") for t in p.traces):
            ax.legend(fontsize=7)
    if mappable is not None:
        mfig.colorbar(mappable, ax=axes.ravel().tolist(), label=fig.zlabel)
    mfig.suptitle(fig.title)
    return mfig


def write_static(
    results: Results | str | Path,
    directory: str | Path,
    formats: tuple[str, ...] = ("png", "pdf"),
) -> list[Path]:
    """Write every figure of the report as ``DIR/<name>.<format>``; returns the paths written."""
    import matplotlib.pyplot as plt

    from landscape.results import Results, load

    res = results if isinstance(results, Results) else load(results)
    out_dir = Path(directory)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = write_error(out_dir, exc, "--static", what="figure")
        if err is None:
            raise
        raise err from exc
    written = []
    for fig in build_figures(res):
        mfig = draw(fig)
        try:
            for fmt in formats:
                image = io.BytesIO()  # drawn in memory, then written by rename like every output
                mfig.savefig(image, format=fmt, dpi=150 if fmt == "png" else None)
                path = out_dir / f"{fig.name}.{fmt}"
                written.append(
                    write_atomic(path, image.getvalue(), option="--static", what="figure")
                )
        finally:
            plt.close(mfig)
    return written
