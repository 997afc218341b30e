"""Every record kind a study writes reads back through its definition and opens in xarray;
files of schema 1 (the previous release) still open and render."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis import load
from landscape import records as R

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "results_v1.h5"
#: what `landscape run` writes (bnn records come from `landscape bnn`: tests/analysis/test_bnn_cli.py)
RUN_KINDS = {a for a, k in R.KINDS.items() if not k.optional}


def test_every_record_kind_reads_back_through_its_definition(tiny_study):
    res = load(tiny_study / "results.h5")
    assert set(res.analyses()) == RUN_KINDS
    for key, rec in res.records.items():
        kind = R.kind(key.split("/")[0])
        for name, arr in rec.datasets.items():
            var = kind.var(name)  # raises for an undeclared name
            assert rec.dataset_attrs[name]["units"] == var.units
            assert np.ndim(arr) <= len(var.dims)
        for name in rec.attrs:
            kind.attr(name)


def test_every_record_opens_in_xarray_with_named_dimensions(tiny_study):
    xr = pytest.importorskip("xarray")
    path = tiny_study / "results.h5"
    res = load(path)
    seen = set()
    for key, rec in res.records.items():
        kind = R.kind(key.split("/")[0])
        with xr.open_dataset(path, group=key, engine="h5netcdf") as ds:
            for name, arr in rec.datasets.items():
                var = kind.var(name)
                assert ds[name].dims == var.dims[: np.ndim(arr)], (key, name)
                np.testing.assert_array_equal(np.asarray(ds[name].values), np.asarray(arr))
            for dim in ds.dims:
                assert not str(dim).startswith("phony_dim"), (key, dim)
                if dim in rec.datasets and np.ndim(rec.datasets[dim]) == 1:
                    assert dim in ds.coords, (key, dim)
                    np.testing.assert_array_equal(ds.coords[dim].values, rec.datasets[dim])
        seen.add(kind.analysis)
    assert seen == RUN_KINDS


def test_schema_1_file_opens_and_renders(tmp_path):
    res = load(FIXTURE)
    assert res.root["schema_version"] == 1
    # the analyses schema 1 had (later ones, such as calibration and bnn, are absent)
    assert set(res.analyses()) == {
        "interpolation",
        "interpolation_aligned",
        "mli",
        "hessian",
        "surface",
        "symmetry",
    }
    # schema-1 names come back in the current ones
    rec = res.record("interpolation/standard/seed0-seed1")
    assert "alpha" in rec.datasets and "alphas" not in rec.datasets
    assert "perm_group" in res.record("symmetry/standard/seed0").datasets
    surface = res.record("surface/standard/seed0")
    assert {"x", "y"} <= set(surface.datasets)
    assert "eigenvalue" in res.record("hessian/standard/seed0").datasets
    overview = res.summary().set_index("group")
    assert overview.loc["standard", "MLI monotonic"] == "2/2"
    assert float(overview.loc["standard", "lambda_max"]) > 0
    curves = res.curves("interpolation")
    assert list(curves.columns[:3]) == ["group", "record", "alpha"]
    html = res.to_html(tmp_path / "report.html").read_text()
    for figure in ("interpolation", "mli", "hessian", "surfaces", "symmetry"):
        assert f'data-figure="{figure}"' in html
