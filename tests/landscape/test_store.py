import h5py
import numpy as np
import pytest

from landscape.errors import UserError
from landscape.store import SCHEMA_VERSION, Dataset, ResultsStore


def test_records_are_self_describing(tmp_path):
    s = ResultsStore(tmp_path / "r.h5")
    s.write(
        "interpolation/g/seed0-seed1",
        {"alphas": Dataset(np.linspace(0, 1, 5), ("alpha",), "1", "coefficient")},
        {"settings": {"bn": "eval"}, "seeds": ["seed0", "seed1"], "x": 1.5},
    )
    rec = s.read("interpolation/g/seed0-seed1")
    assert (
        rec.complete
        and rec.attrs["settings"] == {"bn": "eval"}
        and rec.attrs["seeds"] == ["seed0", "seed1"]
    )
    assert (
        rec.dataset_attrs["alphas"]["axes"] == ["alpha"]
        and rec.dataset_attrs["alphas"]["units"] == "1"
    )
    with h5py.File(tmp_path / "r.h5") as f:  # readable without our code
        # text is fixed-length UTF-8 (no global heap): plain h5py gives bytes, xarray gives str
        assert f.attrs["schema_version"] == SCHEMA_VERSION and f.attrs["package"] == b"landscape"
        assert f["interpolation/g/seed0-seed1/alphas"].attrs["description"] == b"coefficient"
    assert s.keys() == ["interpolation/g/seed0-seed1"] and s.keys("interpolation") == [
        "interpolation/g/seed0-seed1"
    ]


def test_incomplete_records_are_not_complete(tmp_path):
    s = ResultsStore(tmp_path / "r.h5")
    s.write("surface/g/seed0", {"loss": np.zeros(3)}, complete=False)
    assert (
        not s.has("surface/g/seed0")
        and s.keys() == []
        and s.keys(complete=False) == ["surface/g/seed0"]
    )


def test_newer_schema_and_corrupt_files_are_refused(tmp_path):
    p = tmp_path / "new.h5"
    with h5py.File(p, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
        f.attrs["package"] = "landscape"
    with pytest.raises(UserError, match="newer"):
        ResultsStore(p)
    bad = tmp_path / "bad.h5"
    ResultsStore(bad).write("a/b/c", {"x": np.arange(3)})
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(UserError, match="truncated or corrupt"):
        ResultsStore(bad)


def test_failed_write_leaves_old_file(tmp_path):
    p = tmp_path / "r.h5"
    s = ResultsStore(p)
    s.write("a/g/r1", {"x": np.arange(3)})
    before = p.read_bytes()
    with pytest.raises(TypeError):
        s.write("a/g/r2", {"x": np.array([object()])})
    assert p.read_bytes() == before and s.keys() == ["a/g/r1"]
    assert not [q for q in tmp_path.iterdir() if q.name.endswith(".tmp")]


def test_writer_removes_temporaries_of_a_killed_write(tmp_path):
    p = tmp_path / "r.h5"
    s = ResultsStore(p)
    s.write("a/g/r1", {"x": np.arange(3)})
    stale = tmp_path / ".r.h5.abc123.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / ".other.h5.abc.tmp"
    other.write_bytes(b"not ours")
    assert s.remove_stale_temporaries() == [stale]
    assert not stale.exists() and other.exists() and s.keys() == ["a/g/r1"]


def foreign_file(path, **attrs):
    with h5py.File(path, "w") as f:
        f["measurements"] = np.arange(4.0)
        f.attrs.update(attrs)
    return path.read_bytes()


def test_foreign_hdf5_files_are_refused_for_writing_unless_adopted(tmp_path):
    p = tmp_path / "theirs.h5"
    before = foreign_file(p, creator="someone else")
    assert ResultsStore(p).keys() == []  # reading one is harmless
    s = ResultsStore(p)
    with pytest.raises(UserError) as err:
        s.write("a/g/r1", {"x": np.arange(3)})
    assert str(err.value) == (
        f"{p} is an HDF5 file not written by landscape: choose another -o, "
        "or pass --force to add landscape records to it"
    )
    assert p.read_bytes() == before and not s.locked
    assert sorted(q.name for q in tmp_path.iterdir()) == ["theirs.h5"]  # not even a lock file
    with ResultsStore(p, adopt_foreign=True) as s:
        s.write("a/g/r1", {"x": np.arange(3)})
    root = ResultsStore(p).root_attrs()
    assert root["package"] == "landscape" and root["schema_version"] == SCHEMA_VERSION
    assert root["creator"] == "someone else"
    with h5py.File(p) as f:
        assert f["measurements"][()].tolist() == [0, 1, 2, 3]  # their data stay
    ResultsStore(p).write("a/g/r2", {"x": np.arange(3)})  # adopted once is ours from then on
    assert ResultsStore(p).keys() == ["a/g/r1", "a/g/r2"]


def test_files_of_another_package_are_refused_and_adopted_keep_their_mark(tmp_path):
    p = tmp_path / "other.h5"
    foreign_file(p, package="othertool", schema_version=7)
    with pytest.raises(UserError, match="not a landscape results file"):
        ResultsStore(p)
    ResultsStore(p, adopt_foreign=True).write("a/g/r1", {"x": np.arange(3)})
    root = ResultsStore(p).root_attrs()
    assert root["package"] == "landscape" and root["adopted_package"] == "othertool"
    assert root["adopted_schema_version"] == 7 and root["schema_version"] == SCHEMA_VERSION


def test_study_context_adopts_a_foreign_file_only_with_force(tmp_path, monkeypatch):
    import analysis.context as context

    monkeypatch.setattr(context, "discover", lambda roots: {})
    p = tmp_path / "theirs.h5"
    foreign_file(p)
    with pytest.raises(UserError, match="not written by landscape.*--force"):
        context.StudyContext.create([tmp_path], output=p, device="cpu")
    ctx = context.StudyContext.create([tmp_path], output=p, device="cpu", force=True)
    ctx.store.write("a/g/r1", {"x": np.arange(3)})
    ctx.store.close()
    assert ResultsStore(p).keys() == ["a/g/r1"]
