"""analysis.results: reading a results file back, the overview numbers, and bad input."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis.cli import main
from analysis.results import load
from landscape.errors import UserError
from landscape.records import format_mean_std
from landscape.store import ResultsStore

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def results(tmp_path, write_results):
    return load(
        write_results(tmp_path / "r.h5", groups=("standard", "w-asym", "sigma-asym"), seeds=4)
    )


def _attrs(path, analysis, group):
    with h5py.File(path, "r") as f:
        return {k: dict(g.attrs) for k, g in f[f"{analysis}/{group}"].items()}


def test_frame_has_one_row_per_complete_record_with_the_stored_values(results):
    df = results.frame("interpolation")
    assert len(df) == 3 * 6  # 3 groups x C(4, 2) pairs
    stored = _attrs(results.path, "interpolation", "w-asym")
    sub = df[df.group == "w-asym"].set_index("record")
    assert sorted(sub.index) == sorted(stored)
    for rec, attrs in stored.items():
        assert sub.loc[rec, "test_loss_barrier_max"] == pytest.approx(
            float(attrs["test_loss_barrier_max"])
        )
    assert df.group.tolist()[:6] == ["standard"] * 6  # standard first, whatever the file order
    sym = results.frame("symmetry")
    assert {"max_output_change", "relative_output_change", "symmetric"} <= set(
        sym.columns
    )  # scalar datasets and attrs


def test_summary_matches_an_independent_computation(results):
    num = results.summary(formatted=False).set_index("group")
    for g in ("standard", "w-asym", "sigma-asym"):
        vals = [
            float(a["test_loss_barrier_max"])
            for a in _attrs(results.path, "interpolation", g).values()
        ]
        assert num.loc[g, "loss barrier_mean"] == pytest.approx(np.mean(vals))
        assert num.loc[g, "loss barrier_std"] == pytest.approx(np.std(vals, ddof=1))
        assert num.loc[g, "loss barrier_n"] == 6
        with h5py.File(results.path, "r") as f:
            top = [f[f"hessian/{g}/seed{k}/eigenvalues"][0] for k in range(4)]
            mono = [bool(f[f"mli/{g}/seed{k}"].attrs["monotonic"]) for k in range(4)]
        assert num.loc[g, "lambda_max_mean"] == pytest.approx(np.mean(top))
        assert num.loc[g, "MLI monotonic_mean"] == pytest.approx(np.mean(mono))
    assert num.loc["standard", "aligned loss barrier_n"] == 6
    assert np.isnan(
        num.loc["w-asym", "aligned loss barrier_mean"]
    )  # aligned only for standard groups
    fmt = results.summary().set_index("group")
    vals = [
        float(a["test_loss_barrier_max"])
        for a in _attrs(results.path, "interpolation", "standard").values()
    ]
    assert fmt.loc["standard", "loss barrier"] == format_mean_std(
        np.mean(vals), np.std(vals, ddof=1), len(vals)
    )
    assert fmt.loc["standard", "seeds"] == 4
    assert (
        fmt.loc["w-asym", "MLI monotonic"] == "0/4"
        and fmt.loc["standard", "MLI monotonic"] == "4/4"
    )


def test_endpoint_accuracy_reads_each_seed_once(results):
    """The test-accuracy column: each seed's accuracy once (read off its pairs' curve ends)."""
    num = results.summary(formatted=False).set_index("group")
    per_seed = {}
    with h5py.File(results.path, "r") as f:
        for a, b in itertools.combinations(range(4), 2):
            acc = f[f"interpolation/standard/seed{a}-seed{b}/test_accuracy"][()]
            per_seed.setdefault(a, acc[0])
            per_seed.setdefault(b, acc[-1])
    assert num.loc["standard", "test accuracy_n"] == 4
    assert num.loc["standard", "test accuracy_mean"] == pytest.approx(
        np.mean(list(per_seed.values()))
    )
    assert num.loc["standard", "test accuracy_std"] == pytest.approx(
        np.std(list(per_seed.values()), ddof=1)
    )


@pytest.mark.parametrize(
    "m, s, n, text",
    [
        (0.9149, 0.1, 5, "0.91 ± 0.10"),
        (0.0272, 0.005, 3, "0.0272 ± 0.0050"),
        (123.4, 12.3, 4, "123 ± 12"),
        (0.5, 0.0, 1, "0.5"),
        (float("nan"), 0.0, 0, "-"),
    ],
)
def test_mean_and_spread_to_the_same_decimal_place(m, s, n, text):
    assert format_mean_std(m, s, n) == text


def test_curves_long_table(results):
    c = results.curves("interpolation", "standard")
    assert list(c.columns[:3]) == ["group", "record", "alpha"]
    assert len(c) == 6 * 11 and set(c.record) == {
        f"seed{a}-seed{b}" for a, b in itertools.combinations(range(4), 2)
    }
    with h5py.File(results.path, "r") as f:
        np.testing.assert_allclose(
            c[c.record == "seed1-seed3"].test_loss,
            f["interpolation/standard/seed1-seed3/test_loss"][()],
        )


def test_incomplete_records_are_listed_not_used(tmp_path, write_results):
    res = load(
        write_results(
            tmp_path / "p.h5",
            analyses=("interpolation", "mli"),
            incomplete=("interpolation/standard/seed0-seed1",),
        )
    )
    assert len(res.frame("interpolation")[lambda d: d.group == "standard"]) == 2
    miss = res.incomplete()
    assert {
        "analysis": "interpolation",
        "group": "standard",
        "record": "seed0-seed1",
        "status": "incomplete",
    } in miss.to_dict("records")
    assert set(miss[miss.status == "not run"].analysis) == {
        "interpolation_aligned",
        "hessian",
        "surface",
        "symmetry",
        "calibration",  # bnn records come only from `landscape bnn`: never "not run"
    }
    with pytest.raises(UserError, match="incomplete"):
        res.record("interpolation/standard/seed0-seed1")
    assert "missing:" in res.describe()


def test_describe_and_inspect(results, capsys):
    text = results.describe()
    assert "interpolation: 18 complete records (standard: 6, w-asym: 6, sigma-asym: 6)" in text
    assert "test_loss (11,) [alpha] nats" in text
    assert main(["inspect", str(results.path)]) == 0
    assert "hessian: 12 complete records" in capsys.readouterr().out


def test_figure_by_name(results):
    assert {
        "interpolation",
        "barriers",
        "mli",
        "hessian",
        "surfaces",
        "surface3d",
        "symmetry",
    } <= set(results.figure_names())
    fig = results.figure("barriers")
    assert len(fig.data) == 4  # three groups + the aligned standard group
    with pytest.raises(UserError, match="available"):
        results.figure("nope")
    assert "<table" in results._repr_html_() and "plotly" in results._repr_html_()


def test_newer_schema_is_a_clear_error(tmp_path, write_results):
    p = write_results(tmp_path / "n.h5", analyses=("mli",))
    with h5py.File(p, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(UserError, match="newer"):
        load(p)


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file_is_a_clear_error(tmp_path, write_results, keep):
    p = write_results(tmp_path / "t.h5", analyses=("interpolation",))
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load(p)


def test_empty_missing_and_foreign_files(tmp_path):
    store = ResultsStore(tmp_path / "e.h5")
    store.write("mli/g/seed0", {"x": np.zeros(3)})
    store.delete("mli/g/seed0")
    with pytest.raises(UserError, match="no records"):
        load(tmp_path / "e.h5")
    with pytest.raises(UserError, match="no such results file"):
        load(tmp_path / "absent.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(UserError, match="truncated or corrupt"):
        load(tmp_path / "text.h5")
    assert main(["report", str(tmp_path / "e.h5"), "-o", str(tmp_path / "r.html")]) == 2


def test_reports_and_results_do_not_import_torch():
    files = sorted((REPO / "reports").glob("*.py")) + [
        REPO / "analysis" / "results.py",
        REPO / "analysis" / "commands" / "report.py",
    ]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            bad = [
                n
                for n in names
                if n.split(".")[0] in ("torch", "checkpoints") or n.endswith("context")
            ]
            assert not bad, f"{path.name} imports {bad}"
