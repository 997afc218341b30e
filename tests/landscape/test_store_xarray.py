"""Records open in xarray (h5netcdf) with their declared dimensions and coordinates."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from landscape.errors import UserError
from landscape.store import SCHEMA_VERSION, Dataset, ResultsStore

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "results_v1.h5"


def open_group(path, group=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no phony dimensions, no undecodable attributes
        ds = xr.open_dataset(path, group=group, engine="h5netcdf")
        return ds.load()


def test_curves_have_their_dimension_as_coordinate(tmp_path):
    p = tmp_path / "r.h5"
    alpha = np.linspace(0, 1, 7)
    loss = 0.3 + alpha * (1 - alpha)
    ResultsStore(p).write(
        "interpolation/g/seed0-seed1",
        {
            "alpha": Dataset(alpha, ("alpha",), "1", "coefficient"),
            "test_loss": Dataset(loss, ("alpha",), "nats", "loss"),
            "monotonic": Dataset(np.diff(loss) <= 0, ("step",)),
            "barrier": Dataset(np.array(0.25), (), "nats"),
            "seeds": Dataset(np.array(["seed0", "seed1"]), ("end",)),
        },
        {
            "aligned": True,
            "flags": np.array([True, False]),
            "settings": {"bn": "eval", "num_points": 7},
            "seeds": ["seed0", "seed1"],
            "endpoints": [0.3, 0.3],
            "note": None,
        },
    )
    ds = open_group(p, "interpolation/g/seed0-seed1")
    assert dict(ds.sizes) == {"alpha": 7, "step": 6, "end": 2}
    assert list(ds.coords) == ["alpha"] and np.array_equal(ds["alpha"].values, alpha)
    assert ds["test_loss"].dims == ("alpha",) and np.array_equal(ds["test_loss"].values, loss)
    assert ds["test_loss"].attrs["units"] == "nats"
    assert ds["test_loss"].attrs["description"] == "loss"
    assert ds["barrier"].dims == () and float(ds["barrier"]) == 0.25
    assert list(ds["seeds"].values) == ["seed0", "seed1"] and ds["seeds"].dims == ("end",)
    assert ds["monotonic"].dims == ("step",)
    assert ds.attrs["aligned"] == 1 and ds.attrs["settings"].startswith("json:")
    assert "end" not in ds.data_vars and "step" not in ds.data_vars  # dimension-only scales

    rec = ResultsStore(p).read("interpolation/g/seed0-seed1")  # and back through the store
    assert sorted(rec.datasets) == ["alpha", "barrier", "monotonic", "seeds", "test_loss"]
    assert rec["monotonic"].dtype == bool and np.array_equal(rec["monotonic"], np.diff(loss) <= 0)
    assert list(rec["seeds"]) == ["seed0", "seed1"]
    assert rec.attrs["aligned"] is True and rec.complete is True
    assert rec.attrs["flags"].tolist() == [True, False]
    assert rec.attrs["settings"] == {"bn": "eval", "num_points": 7} and rec.attrs["note"] is None
    assert rec.dataset_attrs["alpha"] == {
        "axes": ["alpha"],
        "units": "1",
        "description": "coefficient",
    }
    assert rec.dataset_attrs["test_loss"] == {
        "axes": ["alpha"],
        "units": "nats",
        "description": "loss",
    }


def test_surfaces_have_both_axes_and_dimensions_without_coordinates(tmp_path):
    p = tmp_path / "r.h5"
    x, y = np.linspace(-1, 1, 5), np.linspace(-2, 2, 3)
    loss = np.add.outer(x**2, y**2)
    ResultsStore(p).write(
        "surface/g/seed0",
        {
            "x": Dataset(x, ("x",), "direction units"),
            "y": Dataset(y, ("y",), "direction units"),
            "loss": Dataset(loss, ("x", "y"), "nats"),
            "done": Dataset(np.ones((5, 3), np.uint8), ("x", "y")),
            "directions": Dataset(np.ones((2, 11), np.float32), ("direction", "coordinate")),
        },
        complete=False,
    )
    ds = open_group(p, "surface/g/seed0")
    assert sorted(ds.coords) == ["x", "y"]
    assert np.array_equal(ds["x"].values, x) and np.array_equal(ds["y"].values, y)
    assert ds["loss"].dims == ("x", "y") and np.array_equal(ds["loss"].values, loss)
    assert np.array_equal(ds["loss"].sel(x=1.0).values, 1 + y**2)  # coordinates work
    assert ds["directions"].dims == ("direction", "coordinate")
    assert dict(ds.sizes) == {"x": 5, "y": 3, "direction": 2, "coordinate": 11}
    assert set(ds.data_vars) == {"loss", "done", "directions"}
    assert ds.attrs["complete"] == 0
    rec = ResultsStore(p).read("surface/g/seed0")
    assert sorted(rec.datasets) == ["directions", "done", "loss", "x", "y"]
    assert rec.complete is False and np.array_equal(rec["loss"], loss)


def test_names_netcdf_cannot_hold_get_a_dimension_of_their_own(tmp_path):
    """netCDF needs one length per dimension and no variable named like a dimension it is not."""
    p = tmp_path / "r.h5"
    ResultsStore(p).write(
        "hessian/g/seed0",
        {
            "eigenvalues": Dataset(np.arange(5.0), ("k",)),
            "smallest": Dataset(-np.arange(3.0), ("k",)),  # fewer converged at this end
            "run": Dataset(np.ones((2, 4)), ("run", "node")),  # 2-D, named like a dimension
            "raw": np.zeros((2, 3)),  # no axes declared
        },
    )
    ds = open_group(p, "hessian/g/seed0")
    assert ds["eigenvalues"].dims == ("k",) and ds["smallest"].dims == ("k_3",)
    assert ds["run"].dims == ("run_2", "node") and ds["raw"].dims == ("raw_dim0", "raw_dim1")
    rec = ResultsStore(p).read("hessian/g/seed0")
    assert sorted(rec.datasets) == ["eigenvalues", "raw", "run", "smallest"]
    assert rec.dataset_attrs["smallest"]["axes"] == ["k"]  # the declared names stay


def test_root_and_rewritten_records_still_open(tmp_path):
    p = tmp_path / "r.h5"
    s = ResultsStore(p)
    for n in (3, 4):  # a record rewritten in place (resumable grids do this every chunk)
        s.write("a/g/r", {"t": Dataset(np.arange(n), ("t",)), "v": Dataset(np.ones(n), ("t",))})
    s.write("a/g/other", {"v": Dataset(np.ones(2), ("t",))})
    s.delete("a/g/other")
    root = open_group(p)
    assert root.attrs["package"] == "landscape" and root.attrs["schema_version"] == SCHEMA_VERSION
    assert open_group(p, "a/g/r").sizes["t"] == 4
    assert s.keys() == ["a/g/r"]


def test_schema_1_files_are_read_but_not_added_to(tmp_path):
    p = tmp_path / "v1.h5"
    shutil.copyfile(V1, p)
    before = p.read_bytes()
    s = ResultsStore(p)
    keys = s.keys()
    assert len(keys) == 15 and s.root_attrs()["schema_version"] == 1
    rec = s.read("symmetry/standard/seed0")
    assert rec.attrs["symmetric"] is True and rec.complete is True  # HDF5 enum booleans
    assert rec.dataset_attrs["group_names"]["axes"] == ["perm_group"]
    with pytest.raises(UserError) as err:
        s.write("extra/g/seed0", {"v": Dataset(np.arange(3.0), ("v",))})
    assert str(err.value) == (
        f"{p}: results schema version 1 is older than this landscape's ({SCHEMA_VERSION}): "
        "it can be read (report, load) but not added to: write to another -o file"
    )
    assert p.read_bytes() == before and not s.locked
