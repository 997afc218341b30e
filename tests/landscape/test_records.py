"""The record definitions: one place spells every name; writers are checked against it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from landscape import records as R
from landscape.records import interpolation as IP
from landscape.store import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
#: the code that writes or reads results files; the core numerics never touch a file (their
#: result fields may share a name with a record's attribute: the studies map one onto the other)
FILE_CODE = ("analysis", "reports", "landscape/results.py", "landscape/store.py")


def _study_keywords() -> set[str]:
    """Keyword names of the study functions: a setting may share its name with the record
    attribute that stores it (``audit_samples``), and configs spell settings."""
    import importlib
    import inspect

    names = set()
    for kind in R.KINDS.values():
        for module in ("interpolation", "hessian", "surfaces", "alignment", kind.analysis):
            try:
                study = importlib.import_module(f"analysis.{module}").study
            except (ImportError, AttributeError):
                continue
            names |= set(inspect.signature(study).parameters)
    return names


def _declared_names() -> set[str]:
    """Names only a results file uses: compound dataset and attribute names of every
    definition. One-word names (``loss``, ``x``, ``density``, ``smallest``...) are also plain
    words of the core API (keyword values, DataFrame columns), so they are not searched."""
    names = set()
    for kind in R.KINDS.values():
        ds, at = kind.names()
        names |= {n for n in ds | at if "_" in n}
    return names - R.COMMON_NAMES - _study_keywords()


def test_no_module_outside_the_definitions_spells_a_record_name():
    names = _declared_names()
    assert {"test_loss_barrier_max", "lambda_max", "origin_loss", "group_relative_change"} <= names
    found = []
    for where in FILE_CODE:
        top = ROOT / where
        for path in sorted(top.rglob("*.py")) if top.is_dir() else [top]:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and node.value in names:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "record names spelled outside landscape/records:\n" + "\n".join(found)


def test_reports_do_not_import_analysis_and_nothing_imports_torch():
    code = (
        "import sys; import reports, landscape.results, landscape.records; "
        "print('analysis' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.split() == ["False", "False"]


def test_writer_checks_names_and_dimensions(tmp_path):
    store = ResultsStore(tmp_path / "r.h5")
    key = "interpolation/g/seed0-seed1"
    alphas = np.linspace(0, 1, 5)
    with pytest.raises(KeyError, match="no dataset 'alphas'"):
        IP.INTERPOLATION.write(store, key, {"alphas": alphas}, {})
    with pytest.raises(KeyError, match="no attribute 'loss_barrier'"):
        IP.INTERPOLATION.write(store, key, {"alpha": alphas}, {"loss_barrier": 0.1})
    with pytest.raises(ValueError, match="2-D array"):
        IP.INTERPOLATION.write(store, key, {"test_loss": np.ones((2, 2))}, {})
    with pytest.raises(ValueError, match="not under /mli"):
        IP.MLI.write(store, key, {"alpha": alphas}, {})
    assert not store.keys()
    IP.INTERPOLATION.write(
        store,
        key,
        {"alpha": alphas, "test_loss": alphas**2},
        {"test_loss_barrier_max": 0.25, "group": "g"},
    )
    rec = store.read(key)
    assert rec.dataset_attrs["test_loss"]["units"] == "nats"
    assert "test split" in rec.dataset_attrs["test_loss"]["description"]
    assert rec.attrs["test_loss_barrier_max"] == 0.25


def test_every_summary_column_reads_a_declared_name():
    for kind in R.KINDS.values():
        for col in kind.columns:
            try:
                kind.attr(col.source)
            except KeyError:
                kind.var(col.source)  # a 0-d dataset
        labels = [c.label for c in kind.columns]
        assert len(labels) == len(set(labels)), kind.analysis
    overview = [c.label for k in R.KINDS.values() for c in k.columns if c.overview]
    assert len(overview) == len(set(overview))


def test_coordinates_are_named_like_their_dimension():
    """A 1-D variable over a dimension of the same name is that dimension's coordinate, so
    xarray and netCDF tools pick it up; every dimension with values has one."""
    for kind in R.KINDS.values():
        coords = {v.name for v in kind.variables if v.dims == (v.name,)}
        for v in kind.variables:
            for d in v.dims:
                if d in ("alpha", "x", "y", "eigenvalue", "perm_group"):
                    assert d in coords, (kind.analysis, v.name, d)
