"""The HTML report: self-contained, escaped, complete for what the file holds; static figures."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from analysis.cli import main
from analysis.results import load
from reports import render_html, write_static
from reports.figures import build_figures

PLOTLY_HEAD = get_plotlyjs()[:400]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    from conftest import synthetic_results

    d = tmp_path_factory.mktemp("html")
    res = load(synthetic_results(d / "r.h5", groups=("standard", "w-asym", "sigma-asym"), seeds=4))
    html = render_html(res, d / "report.html").read_text(encoding="utf-8")
    return res, html, d


def test_self_contained_and_plotly_once(full):
    res, html, d = full
    assert html.count(PLOTLY_HEAD) == 1
    assert len(html.encode()) < 10_000_000
    # no element loads anything from a URL: every src/href is a fragment or absent
    page = html.replace(
        get_plotlyjs(), ""
    )  # plotly.js itself mentions URLs it never loads here (maps, CDN notes)
    assert not re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?(?!#)[a-z]+:""", page, flags=re.I)
    assert "https://" not in page and "http://" not in page
    scripts = re.findall(r"<script\b", html, flags=re.I)
    assert len(scripts) == 1 + len(build_figures(res))  # plotly.js, then one newPlot per figure


def test_every_section_and_figure(full):
    res, html, _ = full
    for sid in (
        "overview",
        "interpolation",
        "barriers",
        "mli",
        "hessian",
        "surfaces",
        "symmetry",
        "bnn",
        "provenance",
    ):
        assert f'<section id="{sid}">' in html
    for name in (
        "interpolation",
        "barriers",
        "mli",
        "hessian",
        "surfaces",
        "surface3d",
        "symmetry",
        "bnn-curves",
        "reliability",
    ):
        assert f'id="fig-{name}"' in html
    assert 'id="missing"' not in html
    # overview numbers are the file's numbers
    s = res.summary().set_index("group")
    assert (
        s.loc["w-asym", "loss barrier"] in html
        and s.loc["standard", "aligned loss barrier"] in html
    )
    # provenance: checkpoint hashes and the data description
    sha = hashlib.sha256(b"/ckpt/standard/seed0/final.pt").hexdigest()
    assert "/ckpt/standard/seed0/final.pt" in html and "digits" in html
    row = re.search(
        r"<td>standard</td>\s*<td>/ckpt/standard/seed0/final.pt</td>\s*<td>(\w+)</td>\s*<td>(\d+)</td>",
        html,
    )
    assert (
        row and row.group(1) == sha and int(row.group(2)) == 3 + 3 + 6
    )  # plain and aligned pairs; MLI, Hessian, surface, symmetry, calibration, bnn


def test_group_colours_are_consistent_across_figures(full):
    res, _, _ = full
    figs = {f.name: f for f in build_figures(res)}
    colours = {}
    for name in ("interpolation", "mli", "hessian", "symmetry"):
        for p in figs[name].panels:
            for t in p.traces:
                if t.color:
                    g = t.name.split(" ")[0]
                    assert colours.setdefault(g, t.color) == t.color, (name, g)
    assert len(set(colours.values())) == 3


def test_user_strings_are_escaped(tmp_path, write_results):
    evil = "<script>alert(1)</script>"
    p = write_results(tmp_path / "x.h5", groups=(evil, "w-asym"), seeds=2)
    html = render_html(load(p), tmp_path / "x.html").read_text()
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # every occurrence is escaped: as HTML text, or as JSON inside a figure's script
    assert html.count("alert(1)") == html.count("&lt;script&gt;alert(1)") + html.count(
        "\\u003cscript\\u003ealert(1)"
    )


def test_partial_study_renders_what_is_complete_and_lists_the_rest(tmp_path, write_results):
    p = write_results(
        tmp_path / "p.h5",
        analyses=("interpolation", "hessian"),
        incomplete=("hessian/w-asym/seed1",),
    )
    html = render_html(load(p), tmp_path / "p.html").read_text()
    assert (
        'id="fig-interpolation"' in html
        and 'id="fig-hessian"' in html
        and 'id="fig-surfaces"' not in html
    )
    missing = html[html.index('<section id="missing">') :]
    missing = missing[: missing.index("</section>")]
    assert (
        "seed1" in missing
        and "incomplete" in missing
        and "surface" in missing
        and "not run" in missing
    )
    assert "No complete <code>surface</code> records" in html


def test_only_one_analysis(tmp_path, write_results):
    p = write_results(tmp_path / "s.h5", analyses=("symmetry",))
    html = render_html(load(p), tmp_path / "s.html").read_text()
    assert 'id="fig-symmetry"' in html and 'id="fig-interpolation"' not in html


def test_static_figures(full, tmp_path):
    res, _, _ = full
    written = write_static(res, tmp_path / "static")
    names = {f.name for f in build_figures(res)}
    assert {p.stem for p in written} == names and {p.suffix for p in written} == {".png", ".pdf"}
    for p in written:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")
        assert p.stat().st_size > 5000


def test_report_cli(full, tmp_path, capsys):
    res, _, d = full
    out = tmp_path / "cli.html"
    assert (
        main(
            [
                "report",
                str(res.path),
                "-o",
                str(out),
                "--static",
                str(tmp_path / "fig"),
                "--title",
                "My <study>",
            ]
        )
        == 0
    )
    text = out.read_text()
    assert "<title>My &lt;study&gt;</title>" in text
    assert (tmp_path / "fig" / "interpolation.pdf").is_file()
    printed = capsys.readouterr().out
    assert "loss barrier" in printed and "report:" in printed
    assert main(["report", str(tmp_path / "nope.h5")]) == 2


def test_barrier_matrix_values(full):
    res, _, _ = full
    fig = {f.name: f for f in build_figures(res)}["barriers"]
    t = fig.panels[0].traces[0]
    df = res.frame("interpolation").set_index(["group", "record"])
    seeds = list(t.x)
    i, j = seeds.index("seed1"), seeds.index("seed3")
    assert (
        t.z[i, j]
        == t.z[j, i]
        == pytest.approx(df.loc[("standard", "seed1-seed3"), "test_loss_barrier_max"])
    )
    assert np.all(np.diag(t.z) == 0)
    lo, hi = fig.zrange
    assert lo <= np.nanmin(t.z) and hi == pytest.approx(
        max(np.nanmax(p.traces[0].z) for p in fig.panels)
    )
