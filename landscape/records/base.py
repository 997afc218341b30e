"""The building blocks of a record definition: variables, attributes, summary columns.

A :class:`RecordKind` is the one place that spells the names of an analysis's record
(``/<analysis>/<group>/<record>``): its datasets (:class:`Var`: name, dimensions, units,
description, dtype), its attributes (:class:`Attr`) and the columns of its per-group
summary (:class:`Column`, with how each is aggregated over seeds or pairs). Studies write
through :meth:`RecordKind.write`, which checks every name against the definition; readers
find values through the same objects. Nothing here needs torch.

Names may hold ``{split}`` (``{split}_loss``): one variable per data split.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..store import Dataset, Record, ResultsStore

#: the order groups are shown in: standard, W-Asym, sigma-Asym, then others by name
VARIANT_ORDER = {"standard": 0, "w-asym": 1, "sigma-asym": 2}
SPLITS = ("test", "train")


def _expand(template: str, splits: Sequence[str] = SPLITS) -> list[str]:
    return [template.format(split=s) for s in splits] if "{split}" in template else [template]


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{split\}", "(?P<split>[a-z]+)") + "$")


@dataclass(frozen=True)
class Var:
    """A dataset of a record: ``name`` over ``dims`` (dimension names, in order).

    A variable whose name equals its single dimension is that dimension's coordinate.
    """

    name: str
    dims: tuple[str, ...]
    units: str
    description: str
    dtype: str = "float64"
    #: trailing dimensions a record may leave out (a 1-D surface line has no ``y``)
    optional_dims: int = 0

    def at(self, split: str | None = None) -> str:
        """The concrete name (``{split}`` filled in)."""
        return self.name.format(split=split) if "{split}" in self.name else self.name

    def matches(self, name: str) -> re.Match | None:
        return _pattern(self.name).match(name)


@dataclass(frozen=True)
class Attr:
    """A scalar or small attribute of a record."""

    name: str
    description: str
    units: str = ""

    def at(self, split: str | None = None) -> str:
        return self.name.format(split=split) if "{split}" in self.name else self.name

    def matches(self, name: str) -> re.Match | None:
        return _pattern(self.name).match(name)


#: how a column aggregates the records of one group
MEAN_STD = "mean_std"  # mean ± sample std over records
COUNT_TRUE = "count_true"  # k/n records where the value is true
FIRST = "first"  # the value of the first record (constant per group)
PER_SEED = "per_seed"  # [value_A, value_B] per pair, deduplicated by seed, then mean ± std


@dataclass(frozen=True)
class Column:
    """One column of a per-group summary: ``label`` (shown in tables and the report),
    read from the attribute or 0-d dataset ``source``, aggregated by ``how``."""

    label: str
    source: str
    how: str = MEAN_STD
    overview: bool = False  # also a column of the cross-analysis overview table


# Attributes every record carries (see analysis.context.StudyContext.record_attrs).
COMMON = (
    Attr("analysis", "the analysis that wrote the record"),
    Attr("group", "checkpoint group (a folder of seeds)"),
    Attr("variant", "standard, w-asym or sigma-asym (unknown when not recorded)"),
    Attr("seeds", "seed labels of the networks in the record"),
    Attr("checkpoints", "checkpoint paths, in the order of seeds"),
    Attr("checkpoint_sha256", "SHA-256 of each checkpoint file"),
    Attr("data", "per split: spec, source, size, subset seed, normalisation"),
    Attr("settings", "every setting of the study that produced the record"),
    Attr("device", "where the numbers were computed"),
    Attr("package", "the package that wrote the record"),
    Attr("package_version", "its version"),
    Attr("torch_version", "torch version"),
    Attr("numpy_version", "numpy version"),
    Attr("h5py_version", "h5py version"),
    Attr("python_version", "Python version"),
    Attr("time", "when the record was written (UTC, ISO 8601)"),
    Attr("command", "the command line that wrote the record"),
    Attr("complete", "false while a record written in pieces is unfinished"),
)
COMMON_NAMES = frozenset(a.name for a in COMMON)


@dataclass(frozen=True)
class RecordKind:
    """The definition of one analysis's records."""

    analysis: str
    title: str
    key: str  # what the record part of the key is, e.g. "<seedA>-<seedB>"
    variables: tuple[Var, ...]
    attributes: tuple[Attr, ...]
    columns: tuple[Column, ...] = ()
    records_label: str = "seeds"  # what one record is, for the count column of tables
    #: dataset and attribute names of schema-1 files that changed, old -> new
    renamed_v1: Mapping[str, str] = field(default_factory=dict)
    #: written only by a study of its own (not by ``landscape run``): absent is not "not run"
    optional: bool = False

    # -- lookup ---------------------------------------------------------------------------
    def var(self, name: str) -> Var:
        for v in self.variables:
            if v.matches(name):
                return v
        raise KeyError(f"{self.analysis} records declare no dataset {name!r}")

    def attr(self, name: str) -> Attr:
        for a in (*self.attributes, *COMMON):
            if a.matches(name):
                return a
        raise KeyError(f"{self.analysis} records declare no attribute {name!r}")

    def names(self) -> tuple[set[str], set[str]]:
        """Every concrete dataset and attribute name (splits expanded)."""
        ds = {n for v in self.variables for n in _expand(v.name)}
        at = {n for a in self.attributes for n in _expand(a.name)}
        return ds, at

    def outcomes(self) -> list[str]:
        """Attribute names that are outcomes, not provenance (for :meth:`Results.frame`)."""
        return [a.name for a in self.attributes]

    # -- writing --------------------------------------------------------------------------
    def datasets(self, values: Mapping[str, Any]) -> dict[str, Dataset]:
        """Wrap arrays as store datasets with the declared dimensions, units and descriptions.

        A name the definition does not declare, or an array whose number of dimensions
        differs from the declaration, is a programming error (``KeyError`` / ``ValueError``).
        """
        out = {}
        for name, value in values.items():
            v = self.var(name)
            extra = value.attrs if isinstance(value, Dataset) else {}
            arr = np.asarray(value.data if isinstance(value, Dataset) else value)
            if arr.dtype.kind not in "US" and v.dtype not in ("str", "bool"):
                arr = arr.astype(v.dtype, copy=False)
            if v.dtype == "bool":
                arr = arr.astype(np.uint8)
            if not len(v.dims) - v.optional_dims <= arr.ndim <= len(v.dims):
                raise ValueError(
                    f"{self.analysis}/{name}: {arr.ndim}-D array for dimensions {v.dims}"
                )
            split = (v.matches(name).groupdict() or {}).get("split")
            desc = v.description.format(split=split) if split else v.description
            out[name] = Dataset(arr, v.dims[: arr.ndim], v.units, desc, dict(extra))
        return out

    def write(
        self,
        store: ResultsStore,
        key: str,
        values: Mapping[str, Any],
        attrs: Mapping[str, Any],
        *,
        complete: bool = True,
    ) -> None:
        """Write one record at ``key`` (``<analysis>/<group>/<record>``), every name checked."""
        if not key.startswith(self.analysis + "/"):
            raise ValueError(f"key {key!r} is not under /{self.analysis}")
        for a in attrs:
            self.attr(a)
        store.write(key, self.datasets(values), attrs, complete=complete)

    # -- reading --------------------------------------------------------------------------
    def upgrade(self, rec: Record, schema_version: int) -> Record:
        """The record with schema-1 dataset names translated to the current ones."""
        if schema_version >= 2 or not self.renamed_v1:
            return rec
        new = self.renamed_v1.get
        return Record(
            rec.key,
            {new(k, k): v for k, v in rec.attrs.items()},
            {new(k, k): v for k, v in rec.datasets.items()},
            {new(k, k): v for k, v in rec.dataset_attrs.items()},
        )

    def dims_of(self, rec: Record, name: str) -> tuple[str, ...]:
        """Dimension names of dataset ``name``: the declaration, else what the file says."""
        try:
            return self.var(name).dims
        except KeyError:
            return tuple(str(a) for a in rec.dataset_attrs.get(name, {}).get("axes") or ())

    def coordinate(self, rec: Record, dim: str, n: int) -> np.ndarray:
        """The coordinate values of dimension ``dim``: the dataset of that name, else 0..n-1."""
        c = rec.datasets.get(dim)
        if c is not None and np.ndim(c) == 1 and len(c) == n:
            return np.asarray(c)
        return np.arange(n, dtype=float)


# -- aggregation ----------------------------------------------------------------------------
def mean_std(values: Iterable[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of the finite values."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def format_mean_std(m: float, s: float, n: int) -> str:
    """``mean ± std`` with both to the decimal place set by the spread (two significant
    digits of the spread): ``0.91 ± 0.10``, ``0.0270 ± 0.0050``, ``123 ± 12``; one value: 4
    significant digits; none: ``-``."""
    if n == 0 or math.isnan(m):
        return "-"
    if n == 1 or not math.isfinite(s) or s == 0:
        return f"{m:.4g}"
    decimals = 1 - math.floor(math.log10(s))
    if decimals > 6 or abs(m) >= 1e6:  # tiny spreads or huge values: scientific notation
        return f"{m:.3e} ± {s:.1e}"
    d = max(decimals, 0)
    return f"{round(m, decimals):.{d}f} ± {round(s, decimals):.{d}f}"


def _value(rec: Record, source: str) -> Any:
    if source in rec.attrs:
        return rec.attrs[source]
    arr = rec.datasets.get(source)
    if arr is not None and np.size(arr) == 1:
        return np.asarray(arr).reshape(())[()].item()
    return None


def aggregate(col: Column, records: Sequence[Record]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of a column over the records of one group. ``COUNT_TRUE``: the
    share of true values, 0, and the count; ``FIRST``: the first record's value, 0, 1;
    ``PER_SEED``: mean ± std over seeds of per-seed values read off pairs (each seed once)."""
    if col.how == PER_SEED:
        per_seed: dict[str, float] = {}
        for r in records:
            vals, seeds = _value(r, col.source), r.attrs.get("seeds") or []
            for s, v in zip(seeds, np.atleast_1d(vals if vals is not None else [])):
                per_seed.setdefault(str(s), float(v))
        return mean_std(per_seed.values())
    vals = [_value(r, col.source) for r in records]
    vals = [v for v in vals if v is not None]
    if col.how == COUNT_TRUE:
        if not vals:
            return math.nan, math.nan, 0
        return sum(bool(v) for v in vals) / len(vals), 0.0, len(vals)
    if col.how == FIRST:
        return (float(vals[0]), 0.0, 1) if vals else (math.nan, math.nan, 0)
    return mean_std(vals)


def format_cell(col: Column, stats: tuple[float, float, int]) -> str:
    """The table text of :func:`aggregate`'s result: ``k/n``, a value, or ``mean ± std``."""
    m, s, n = stats
    if col.how == COUNT_TRUE:
        return f"{round(m * n)}/{n}" if n else "-"
    if col.how == FIRST:
        return "-" if n == 0 else f"{m:.4g}"
    return format_mean_std(m, s, n)
