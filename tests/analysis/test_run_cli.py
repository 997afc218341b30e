"""landscape run / demo: every installed analysis into one results file and one report; reruns reuse records."""

from __future__ import annotations

import h5py
import numpy as np

from analysis.cli import main
from analysis.commands import demo, run
from analysis.results import load


def _times(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(
            lambda n, o: (
                out.__setitem__(n, o.attrs["time"])
                if isinstance(o, h5py.Group) and "complete" in o.attrs
                else None
            )
        )
        return out


def test_run_writes_every_installed_analysis(tiny_study):
    res = load(tiny_study / "results.h5")
    expected = {"interpolation", "interpolation_aligned", "mli"}
    for analysis, _module in (
        ("symmetry", "alignment"),
        ("hessian", "hessian"),
        ("surface", "surfaces"),
        ("calibration", "calibration"),
    ):
        if run.study_function(analysis) is not None:
            expected.add(analysis)
    assert set(res.analyses()) == expected
    assert res.groups() == ["standard", "w-asym"]
    assert set(res.groups("interpolation_aligned")) == {
        "standard"
    }  # aligned barriers for standard groups only
    pairs = res.frame("interpolation")
    assert len(pairs) == 2 and (pairs.record == "seed0-seed1").all()
    assert len(res.frame("mli")) == 4
    assert res.incomplete().query("status == 'incomplete'").empty
    # the settings from the config reached the study
    assert len(res.record("interpolation/standard/seed0-seed1")["alpha"]) == 5
    assert res.record("mli/w-asym/seed1").attrs["data"]["train"]["size"] == 120
    html = (tiny_study / "report.html").read_text()
    assert 'id="fig-interpolation"' in html and 'id="fig-barriers"' in html


def test_rerun_reuses_complete_records(tiny_runs, tiny_study, capsys):
    before = _times(tiny_study / "results.h5")
    cfg = tiny_study / "study.toml"
    assert main(["run", str(tiny_runs), "-o", str(tiny_study), "--config", str(cfg), "-q"]) == 0
    assert _times(tiny_study / "results.h5") == before
    out = capsys.readouterr().out
    assert "summary" in out and "standard" in out and "report:" in out


def test_config_errors_are_one_line(tiny_runs, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[interpolation]\nnum_pointz = 3\n")
    assert main(["run", str(tiny_runs), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "num_pointz" in err and "num_points" in err and "Traceback" not in err
    bad.write_text("[hessain]\n")
    assert main(["run", str(tiny_runs), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    bad.write_text("not = [toml")
    assert main(["run", str(tiny_runs), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert (
        main(["run", str(tiny_runs), "-o", str(tmp_path / "o"), "--analyses", "interpolation,nope"])
        == 2
    )
    (tmp_path / "file").write_text("x")
    assert main(["run", str(tiny_runs), "-o", str(tmp_path / "file")]) == 2


def test_study_kwargs_keep_what_the_study_accepts():
    def study(ctx, *, num_points: int = 25, align: bool = False, mli: bool = True):
        return None

    kw = run.study_kwargs(study, "interpolation", {"num_points": 7})
    assert kw == {"num_points": 7, "align": True, "mli": True}


def test_selected_analyses_and_static(tiny_runs, tmp_path):
    out = tmp_path / "sel"
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[study]\nsamples = 60\nanalyses = ['interpolation']\n[interpolation]\nnum_points = 3\nalign = false\nmli = false\n"
    )
    assert (
        main(
            [
                "run",
                str(tiny_runs),
                "-o",
                str(out),
                "--config",
                str(cfg),
                "--static",
                str(tmp_path / "fig"),
                "-q",
            ]
        )
        == 0
    )
    res = load(out / "results.h5")
    assert res.analyses() == ["interpolation"]
    assert sorted(p.name for p in (tmp_path / "fig").iterdir())[:2] == [
        "barriers.pdf",
        "barriers.png",
    ]


def test_demo_trains_then_runs(tmp_path, monkeypatch, capsys):
    tiny = {
        "study": {"data": "digits", "samples": 60, "analyses": ["interpolation"]},
        "interpolation": {"num_points": 3},
    }
    monkeypatch.setattr(demo, "DEMO_CONFIG", tiny)
    from dataclasses import replace

    from analysis import bnn

    small = replace(
        bnn.PRESETS["digits-mlp"], steps=10, log_every=5, arch_kwargs={"width": 8, "depth": 1}
    )
    monkeypatch.setitem(bnn.PRESETS, "digits-mlp", small)
    from analysis import metanet

    monkeypatch.setattr(metanet, "DEMO_SETTINGS", {"seeds": 1, "epochs": 2, "lrs": (1e-3,)})
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "-o",
                str(out),
                "--seeds",
                "2",
                "--epochs",
                "1",
                "--width",
                "8",
                "--bnn-seeds",
                "2",
                "--population",
                "8",
                "-q",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "sigma-asym",
        "standard",
        "w-asym",
    ]
    assert (out / "report.html").is_file()
    res = load(out / "results.h5")
    assert [g for g in res.groups() if not g.startswith(("bnn-", "pop-"))] == [
        "standard",
        "w-asym",
        "sigma-asym",
    ]
    # the small BNN comparison: its own groups, curves and test calibration in the same file
    assert sorted(g for g in res.groups("bnn")) == ["bnn-standard", "bnn-w-asym"]
    assert len(res.keys("calibration")) == 2 * 2  # posteriors only: the config runs interpolation
    # the small metanet population: MLP and StatNN on every variant's population
    assert len(res.keys("metanet")) == 4 * 2
    assert "report.html" in capsys.readouterr().out
    table = res.summary(formatted=False).set_index("group")
    assert np.isfinite(table.loc[["standard", "w-asym", "sigma-asym"], "loss barrier_mean"]).all()
    assert main(["demo", "-o", str(out), "--seeds", "1"]) == 2
