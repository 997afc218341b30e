"""The example notebook runs top to bottom (on the tiny trained set, small samples) through the notebook-facing functions."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[2] / "analysis" / "study.ipynb"


def test_notebook_runs_top_to_bottom(tiny_runs, tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_DEMO_ROOT", str(tiny_runs))
    monkeypatch.setenv("LANDSCAPE_NOTEBOOK_OUT", str(tmp_path / "nb"))
    monkeypatch.setenv("LANDSCAPE_NOTEBOOK_SAMPLES", "60")
    monkeypatch.setenv(
        "OMP_NUM_THREADS", "1"
    )  # the kernel's torch: tiny models, one thread avoids contention on a busy machine
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    html = [
        o.data["text/html"]
        for o in outputs
        if o.output_type == "execute_result" and "text/html" in o.get("data", {})
    ]
    assert any("loss barrier" in h for h in html)  # the Results object showed itself
    assert any(
        "application/vnd.plotly.v1+json" in o.get("data", {}) for o in outputs
    )  # .figure() gave a plotly figure
    assert (tmp_path / "nb" / "report.html").stat().st_size > 1_000_000
    from analysis.results import load

    res = load(tmp_path / "nb" / "results.h5")
    assert {"interpolation", "mli"} <= set(res.analyses())
