"""Reports of a results file: a self-contained HTML page and static figures for papers.

``render_html(results, "report.html")`` writes the page (plotly.js embedded once, no request
to any other host); ``write_static(results, DIR)`` writes every figure as PNG and PDF with
matplotlib. Both take a path or a loaded :class:`analysis.results.Results`. Nothing here
imports torch.
"""

from .html import render_html, report_html
from .static import write_static

__all__ = ["render_html", "report_html", "write_static"]
