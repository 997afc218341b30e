"""A finished (or partly finished) study read back from its results file.

:func:`load` reads every record of a results file (``/<analysis>/<group>/<record>``)
and returns a :class:`Results`: DataFrames of the scalar outcomes, the curves, the
per-group summaries and what is still missing. Every name is looked up through the record
definitions (:mod:`landscape.records`); files of schema 1 are translated to the current
names as they are read. Nothing here needs torch, and nothing here draws: the reports
(:mod:`reports`) render a :class:`Results`, and ``analysis.load`` adds figures on top.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import records as R
from .errors import UserError, first_line
from .store import Record, ResultsStore


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating))


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _key_parts(rec: Record) -> tuple[str, str, str]:
    """``(analysis, group, record name)`` of a record key."""
    parts = rec.key.strip("/").split("/")
    return parts[0], "/".join(parts[1:-1]), parts[-1]


@dataclass
class Results:
    """Every record of a results file, split into complete and incomplete ones."""

    path: Path
    root: dict[str, Any]
    records: dict[str, Record]
    incomplete_records: dict[str, Record] = field(default_factory=dict)

    # -- structure ----------------------------------------------------------------------
    def analyses(self) -> list[str]:
        """Analyses with at least one complete record, known ones first in report order."""
        found = {_key_parts(r)[0] for r in self.records.values()}
        return [a for a in R.KINDS if a in found] + sorted(found - set(R.KINDS))

    def groups(self, analysis: str | None = None) -> list[str]:
        """Group names, ordered standard, W-Asym, sigma-Asym, then others (by name)."""
        variants: dict[str, str] = {}
        for r in self.records.values():
            a, g, _ = _key_parts(r)
            if analysis is None or a == analysis:
                variants.setdefault(g, str(r.attrs.get("variant", "")))
        return sorted(variants, key=lambda g: (R.VARIANT_ORDER.get(variants[g], 9), g))

    def variant(self, group: str) -> str:
        for r in self.records.values():
            if _key_parts(r)[1] == group:
                return str(r.attrs.get("variant", "unknown"))
        return "unknown"

    def keys(self, analysis: str | None = None, group: str | None = None) -> list[str]:
        out = []
        for k, r in self.records.items():
            a, g, _ = _key_parts(r)
            if (analysis is None or a == analysis) and (group is None or g == group):
                out.append(k)
        return out

    def record(self, key: str) -> Record:
        """The complete record at ``analysis/group/record``."""
        key = key.strip("/")
        if key not in self.records:
            hint = " (it is incomplete)" if key in self.incomplete_records else ""
            raise UserError(
                f"{self.path}: no complete record {key!r}{hint}; see Results.describe() for what the file holds"
            )
        return self.records[key]

    def seeds(self, group: str) -> list[str]:
        """Seed labels seen in any record of the group."""
        seen: list[str] = []
        for k in self.keys(group=group):
            for s in self.records[k].attrs.get("seeds") or []:
                if str(s) not in seen:
                    seen.append(str(s))
        return seen

    # -- tables -------------------------------------------------------------------------
    def frame(self, analysis: str) -> pd.DataFrame:
        """One row per complete record: group, variant, record, then every scalar outcome
        (attributes that are not provenance, and 0-d datasets)."""
        rows = []
        for k in self.keys(analysis):
            r = self.records[k]
            _, g, name = _key_parts(r)
            row: dict[str, Any] = {
                "group": g,
                "variant": r.attrs.get("variant", "unknown"),
                "record": name,
            }
            for a, v in r.attrs.items():
                if a not in R.COMMON_NAMES and _is_scalar(v):
                    row[a] = _scalar(v)
            for d, arr in r.datasets.items():
                if np.ndim(arr) == 0 and np.asarray(arr).dtype.kind in "biuf":
                    row.setdefault(d, _scalar(np.asarray(arr)[()]))
            rows.append(row)
        df = pd.DataFrame(rows)
        if not df.empty:
            order = {g: i for i, g in enumerate(self.groups())}
            df = df.sort_values(
                ["group", "record"],
                key=lambda s: s.map(order) if s.name == "group" else s,
                kind="stable",
            )
        return df.reset_index(drop=True)

    def curves(
        self, analysis: str, group: str | None = None, dim: str | None = None
    ) -> pd.DataFrame:
        """Long table of the 1-D datasets over one dimension: columns group, record, the
        dimension's coordinate, then one column per dataset.

        The coordinate is the dataset named like the dimension (the HDF5 dimension scale),
        else the index. ``dim`` picks the dimension (default: the first one found).
        """
        kind = R.kind(analysis)
        frames = []
        for k in self.keys(analysis, group):
            r = self.records[k]
            _, g, name = _key_parts(r)
            by_dim: dict[str, dict[str, np.ndarray]] = {}
            for d, arr in r.datasets.items():
                dims = kind.dims_of(r, d) if kind else _file_dims(r, d)
                if np.ndim(arr) == 1 and len(dims) >= 1 and np.asarray(arr).dtype.kind in "biuf":
                    by_dim.setdefault(dims[0], {})[d] = np.asarray(arr)
            if not by_dim:
                continue
            ax = dim if dim in by_dim else next(iter(by_dim))
            cols = by_dim[ax]
            n = len(next(iter(cols.values())))
            df = pd.DataFrame({d: v for d, v in cols.items() if len(v) == n and d != ax})
            df.insert(0, ax, cols[ax] if ax in cols else np.arange(n))
            df.insert(0, "record", name)
            df.insert(0, "group", g)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def summary(
        self,
        analyses: Sequence[str] | None = None,
        *,
        full: bool = False,
        formatted: bool = True,
        groups: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """One row per group, the columns the record definitions declare.

        ``analyses=None`` gives the overview table of every analysis in the file (only the
        columns each definition marks ``overview``); ``full=True`` gives every column of
        the named analyses; ``groups`` keeps those groups. ``formatted=False`` gives numbers (``<label>_mean``,
        ``<label>_std``, ``<label>_n``) instead of ``mean ± std`` strings. The CLI tables
        and the report print exactly this.
        """
        names = [a for a in (analyses or self.analyses()) if R.kind(a)]
        one = len(names) == 1
        columns = [(R.KINDS[a], c) for a in names for c in R.KINDS[a].columns if full or c.overview]
        rows = []
        keep = None if groups is None else set(groups)
        for g in self.groups():
            if keep is not None and g not in keep:
                continue
            per_kind = {a: [self.records[k] for k in self.keys(a, g)] for a in names}
            if not any(per_kind.values()):
                continue
            row: dict[str, Any] = {"group": g, "variant": self.variant(g)}
            if one:
                row[R.KINDS[names[0]].records_label] = len(per_kind[names[0]])
            else:
                row["seeds"] = len(self.seeds(g))
            for kind, col in columns:
                stats = R.aggregate(col, per_kind[kind.analysis])
                if formatted:
                    row[col.label] = R.format_cell(col, stats)
                else:
                    m, s, n = stats
                    row.update({f"{col.label}_mean": m, f"{col.label}_std": s, f"{col.label}_n": n})
            rows.append(row)
        df = pd.DataFrame(rows)
        if formatted and not df.empty:  # drop columns no group has a value for
            fixed = {"group", "variant", "seeds", *(R.KINDS[a].records_label for a in names)}
            df = df[[c for c in df.columns if c in fixed or (df[c] != "-").any()]]
        return df

    def to_frame(self) -> pd.DataFrame:
        return self.summary(formatted=False)

    def incomplete(self) -> pd.DataFrame:
        """What is missing: incomplete records, and known analyses without any record (those a
        study of their own writes, such as ``bnn``, only when they have incomplete records)."""
        rows = [
            {
                "analysis": _key_parts(r)[0],
                "group": _key_parts(r)[1],
                "record": _key_parts(r)[2],
                "status": "incomplete",
            }
            for r in self.incomplete_records.values()
        ]
        present = {
            _key_parts(r)[0]
            for r in list(self.records.values()) + list(self.incomplete_records.values())
        }
        for a, k in R.KINDS.items():
            if a not in present and not k.optional:
                rows.append({"analysis": a, "group": "", "record": "", "status": "not run"})
        return pd.DataFrame(rows, columns=["analysis", "group", "record", "status"])

    def describe(self) -> str:
        """Plain-text overview: file, schema, commands, then per analysis the records per
        group and the dataset layout."""
        lines = [
            f"results file {self.path}",
            f"  schema {self.root.get('schema_version')}, {self.root.get('package')} "
            f"{self.root.get('package_version')}, created {self.root.get('created', '?')}, "
            f"modified {self.root.get('modified', '?')}",
        ]
        for c in self.root.get("commands") or []:
            lines.append(f"  command: {c}")
        for a in self.analyses():
            keys = self.keys(a)
            per_group = ", ".join(f"{g}: {len(self.keys(a, g))}" for g in self.groups(a))
            lines.append(f"{a}: {len(keys)} complete records ({per_group})")
            rec = self.records[keys[0]]
            for d, arr in rec.datasets.items():
                da = rec.dataset_attrs.get(d, {})
                dims = ",".join(R.kind(a).dims_of(rec, d) if R.kind(a) else _file_dims(rec, d))
                text = f"    {d} {tuple(np.shape(arr))} [{dims}] {da.get('units', '')}"
                desc = da.get("description", "")
                lines.append(f"{text}: {desc}" if desc else text.rstrip())
        missing = self.incomplete()
        if len(missing):
            lines.append("missing:")
            lines += [
                f"    {r.analysis}/{r.group}/{r.record} {r.status}".replace("// ", " ")
                for r in missing.itertuples()
            ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, {len(self.records)} complete records, "
            f"{len(self.incomplete_records)} incomplete)"
        )


def _file_dims(rec: Record, name: str) -> tuple[str, ...]:
    """Dimension names as the file records them (for analyses this version does not know)."""
    return tuple(str(a) for a in rec.dataset_attrs.get(name, {}).get("axes") or ())


def read_records(path: Path) -> tuple[dict[str, Any], dict[str, Record], dict[str, Record]]:
    """Root attributes, complete and incomplete records, in the current names."""
    store = ResultsStore(path, create=False)  # checks schema version and that HDF5 opens
    records: dict[str, Record] = {}
    incomplete: dict[str, Record] = {}
    try:
        root = store.root_attrs()
        version = int(root.get("schema_version") or 1)
        for key in store.keys(complete=None):
            rec = store.read(key)
            kind = R.kind(key.split("/")[0])
            if kind is not None:
                rec = kind.upgrade(rec, version)
            (records if rec.complete else incomplete)[key] = rec
    except UserError:
        raise
    except Exception as exc:
        if not isinstance(exc, (OSError, KeyError, RuntimeError, ValueError)) and not _in_h5py(exc):
            raise  # not the file: a bug, keep its traceback
        raise UserError(
            f"{path}: cannot read the results file (truncated or corrupt? {type(exc).__name__}: "
            f"{first_line(exc, 80)}): rerun the study into a new -o"
        ) from exc
    return root, records, incomplete


def _in_h5py(exc: BaseException) -> bool:
    """Raised inside h5py (an attribute of unknown type, a broken B-tree): the file's fault."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "h5py" in tb.tb_frame.f_code.co_filename


def load(path: str | Path, cls: type[Results] = Results) -> Results:
    """Open a results file; raise :class:`UserError` for a missing, newer-schema, corrupt or
    empty file."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: no such results file; run `landscape run ROOT --data SPEC -o OUTDIR` first"
        )
    root, records, incomplete = read_records(path)
    if not records and not incomplete:
        raise UserError(
            f"{path}: the results file holds no records (an empty study): run an analysis into it first"
        )
    return cls(path, root, records, incomplete)


def summarise(store: ResultsStore, analyses: Iterable[str], **kwargs: Any) -> pd.DataFrame:
    """:meth:`Results.summary` of what ``store`` holds now (an empty frame for an empty file):
    what each study command prints at its end."""
    if not store.path.exists():
        return pd.DataFrame()
    root, records, incomplete = read_records(store.path)
    return Results(store.path, root, records, incomplete).summary(list(analyses), **kwargs)
