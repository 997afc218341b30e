"""Figures as plain data: what to draw, independent of the drawing library.

The report builds :class:`Figure` objects from a results file (``reports.figures``);
``reports.plotly_figures`` turns them into interactive plotly figures for the HTML page
and ``reports.static`` into matplotlib PNG/PDF files. One description, two renderers, so
the static figures always show what the page shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: one colour per group, in group order (colour-blind friendly, Okabe-Ito then Tableau)
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#F0E442",
    "#000000",
    "#4E79A7",
    "#F28E2B",
    "#59A14F",
    "#B07AA1",
)
#: the colour scale of every heatmap, contour and surface
COLORSCALE = "Viridis"


def group_colors(groups: Sequence[str]) -> dict[str, str]:
    """Stable colours: the i-th group of the study gets ``PALETTE[i]`` in every figure."""
    return {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}


@dataclass
class Trace:
    """One drawn thing.

    kinds: ``line`` (x, y), ``band`` (x, lo, hi: a filled range), ``markers`` (x, y, optional
    symmetric ``error``; joined by lines), ``scatter`` (x, y, optional ``error``; points only, x
    numbers or categories), ``heatmap`` / ``contour`` (x, y, z with z[i, j] at y[i], x[j]),
    ``surface`` (3-D, same layout as contour), ``bar`` (categories x, heights y).
    """

    kind: str
    name: str
    x: np.ndarray
    y: np.ndarray | None = None
    z: np.ndarray | None = None
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    error: np.ndarray | None = None
    color: str | None = None
    dash: bool = False
    legend: bool = True
    legendgroup: str | None = None
    text: list[list[str]] | None = None


@dataclass
class Panel:
    title: str
    xlabel: str = ""
    ylabel: str = ""
    traces: list[Trace] = field(default_factory=list)
    ylog: bool = False
    xlog: bool = False
    square: bool = False


@dataclass
class Figure:
    """A figure of the report: ``name`` (file stem and ``Results.figure`` key), title, a one-line caption, panels."""

    name: str
    title: str
    caption: str
    panels: list[Panel]
    cols: int = 2
    zrange: tuple[float, float] | None = None  # one colour scale shared by every panel
    zlabel: str = ""
    height: int | None = None
    three_d: bool = False

    @property
    def rows(self) -> int:
        return max(1, -(-len(self.panels) // self.cols))
