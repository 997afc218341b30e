"""``analysis.load``: a results file read back (:mod:`landscape.results`), with the report's
figures and HTML on top. Nothing here needs torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from landscape import results as _results
from landscape.errors import UserError

__all__ = ["Results", "load"]


class Results(_results.Results):
    """:class:`landscape.results.Results` plus plotly figures, the HTML report and inline display."""

    def figure(self, name: str = "interpolation"):
        """A plotly figure of the report by name (``Results.figure_names()`` lists them)."""
        from reports.figures import build_figures
        from reports.plotly_figures import to_plotly

        figs = {f.name: f for f in build_figures(self)}
        if name not in figs:
            raise UserError(
                f"no figure {name!r} for this results file; available: {', '.join(figs) or 'none'}"
            )
        return to_plotly(figs[name])

    def figure_names(self) -> list[str]:
        from reports.figures import build_figures

        return [f.name for f in build_figures(self)]

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the self-contained HTML report (see :func:`reports.render_html`)."""
        from reports import render_html

        return render_html(self, path, **kwargs)

    def _repr_html_(self) -> str:
        from reports.html import notebook_html

        return notebook_html(self)


def load(path: str | Path) -> Results:
    """Open a results file (see :func:`landscape.results.load`)."""
    return _results.load(path, Results)
