"""The report's metanetwork section in headless Chromium: every figure draws with data, no errors.

Reuses the browser fixture of ``test_browser`` (skipped where Chromium is missing, required
under CI). The results file is written through the record definitions with known numbers.
"""

from __future__ import annotations

import numpy as np
from test_browser import _open, browser  # noqa: F401  (the fixture)

from analysis.results import load
from landscape.records import metanet as M
from landscape.store import ResultsStore
from reports import render_html
from reports.figures import build_figures

FIGURES = ("metanet-scores", "metanet-scatter", "metanet-targets")


def write_metanet_results(path, groups=("standard", "w-asym"), seeds=2, n=12):
    """Metanet records of two populations: W-Asym predicted better (noise 0.02 vs 0.08)."""
    store = ResultsStore(path)
    rng = np.random.default_rng(0)
    for gi, g in enumerate(groups):
        y = rng.uniform(0.3, 0.9, n)
        split = np.array(
            ["train"] * (n // 2) + ["validation"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
        )
        for m in ("mlp", "statnn"):
            for s in range(seeds):
                pred = y + rng.normal(0, 0.08 if gi == 0 else 0.02, n)
                t = split == "test"
                r2 = 1 - ((y[t] - pred[t]) ** 2).sum() / ((y[t] - y[t].mean()) ** 2).sum()
                attrs = {
                    "analysis": "metanet",
                    "group": g,
                    "variant": g,
                    "seeds": [f"net{i:05d}" for i in range(n)],
                    M.MODEL.name: m,
                    M.METANET_SEED.name: s,
                    M.TARGET_NAME.name: "test_accuracy",
                    M.TEST_R2.name: r2,
                    M.KENDALL_TAU.name: 0.5 + 0.1 * gi,
                    M.NETWORKS.name: n,
                    M.METANET_R2[m].name: r2,
                    M.METANET_TAU[m].name: 0.5 + 0.1 * gi,
                }
                values = {
                    M.NETWORK.name: np.array([f"net{i:05d}" for i in range(n)]),
                    M.TARGET.name: y,
                    M.PREDICTED.name: pred,
                    M.SPLIT.name: split,
                    M.EPOCH.name: np.arange(1.0, 6.0),
                    M.TRAIN_MSE.name: np.linspace(1, 0.2, 5),
                    M.VALIDATION_R2.name: np.linspace(0, 0.8, 5),
                }
                M.METANET.write(store, f"metanet/{g}/{m}-seed{s}", values, attrs)
    return path


def test_metanet_section_draws(browser, tmp_path):  # noqa: F811
    res = load(write_metanet_results(tmp_path / "m.h5"))
    expected = [f.name for f in build_figures(res)]
    assert list(FIGURES) == expected
    page = render_html(res, tmp_path / "m.html")
    _open(browser, page)
    figures = browser.execute_script(
        "return Array.from(document.querySelectorAll('#metanet .plotly-graph-div')).map(e => ({id: e.id,"
        " traces: (e.data || []).length, full: (e._fullData || []).length,"
        " points: e.querySelectorAll('.scatterlayer .point, .scatterlayer .js-line').length}))"
    )
    assert [f["id"] for f in figures] == [f"fig-{n}" for n in FIGURES]
    for f in figures:
        assert f["traces"] > 0 and f["full"] == f["traces"] and f["points"] > 0, f
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#metanet table tbody tr')).map(r => r.textContent)"
    )
    assert len(rows) == 2 and "standard" in rows[0] and "w-asym" in rows[1]
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
