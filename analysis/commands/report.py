"""landscape report: render a results file as one self-contained HTML page (and optional static figures)."""

from __future__ import annotations

from pathlib import Path

from landscape.errors import UserError

from ..common import check_output, print_table
from ..results import load

HELP = "render a results file as one self-contained HTML report (plotly embedded, works offline); --static DIR for PNG/PDF figures"
EXAMPLE = "landscape report out/study/results.h5 -o report.html --static figures"


def add_arguments(p) -> None:
    p.add_argument(
        "results",
        metavar="RESULTS",
        help="results file (.h5) written by landscape run / interpolate / hessian / ...",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="HTML file (default: report.html beside the results file)",
    )
    p.add_argument(
        "--static",
        metavar="DIR",
        help="also write every figure as PNG and PDF (matplotlib) into DIR",
    )
    p.add_argument("--title", default=None, help="page title (default: from the results file name)")


def run(args) -> int:
    from reports import render_html, write_static

    out = Path(args.output) if args.output else Path(args.results).with_name("report.html")
    if out.is_dir():
        raise UserError(f"{out}: is a folder; -o takes the HTML file to write")
    check_output(out)
    if args.static:
        check_output(args.static, "--static", folder=True)
    res = load(args.results)
    render_html(res, out, title=args.title)
    if args.static:
        written = write_static(res, args.static)
        print(f"{len(written)} static figure files in {args.static}")
    print_table(res.summary(), f"summary ({args.results})")
    missing = res.incomplete()
    if len(missing):
        print_table(missing, "missing")
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
