"""Text in results files is fixed-length UTF-8 (no global heap), and reads back as written."""

import h5py
import numpy as np
import pytest

from landscape import hdf5
from landscape.store import Dataset, ResultsStore


def _string_types(path):
    """(name, variable-length?) of every string attribute and dataset in the file."""
    out = []

    def visit(name, obj):
        for k in obj.attrs:
            if k in ("DIMENSION_LIST", "REFERENCE_LIST"):  # HDF5's own dimension-scale bookkeeping
                continue
            t = obj.attrs.get_id(k).get_type()
            if t.get_class() == h5py.h5t.STRING:
                out.append((f"{name}@{k}", t.is_variable_str()))
        if isinstance(obj, h5py.Dataset) and h5py.check_string_dtype(obj.dtype):
            out.append((name, h5py.check_string_dtype(obj.dtype).length is None))

    with h5py.File(path) as f:
        visit("/", f)
        f.visititems(visit)
    return out


def test_no_variable_length_text_is_written(tmp_path):
    p = tmp_path / "r.h5"
    ResultsStore(p).write(
        "a/g/r",
        {"names": Dataset(np.array(["seed0", "sé", ""]), ("n",), "1", "names")},
        {"note": "ünïcode", "empty": "", "settings": {"bn": "eval"}, "none": None},
    )
    kinds = _string_types(p)
    assert kinds and not [name for name, variable in kinds if variable]
    rec = ResultsStore(p).read("a/g/r")
    assert list(rec["names"]) == ["seed0", "sé", ""]
    assert rec.attrs["note"] == "ünïcode" and rec.attrs["empty"] == ""
    assert rec.attrs["settings"] == {"bn": "eval"} and rec.attrs["none"] is None
    assert rec.dataset_attrs["names"] == {"axes": ["n"], "units": "1", "description": "names"}


def test_text_too_long_for_an_object_header_stays_variable_length(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        hdf5.write_attr(f, "long", "x" * 100_000)
        assert f.attrs["long"] == "x" * 100_000
        assert f.attrs.get_id("long").get_type().is_variable_str()
        hdf5.write_attr(f, "short", "abc")
        assert f.attrs["short"] == b"abc" and hdf5.decode(f.attrs["short"]) == "abc"
        with pytest.raises(ValueError, match="NULL"):  # as h5py always refused it
            hdf5.write_attr(f, "nul", "a\0")
