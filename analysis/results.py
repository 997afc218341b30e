"""A finished (or partly finished) study read back from its results file.

:func:`load` reads every record of a results file written by the studies
(``/<analysis>/<group>/<record>``) through :class:`landscape.store.ResultsStore` and
returns a :class:`Results`: DataFrames of the scalar outcomes, the curves, the per-group
overview table, the list of what is still missing, and the plotly figures of the report.
Nothing here needs torch, so reports render on machines without it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from landscape.errors import UserError
from landscape.store import Record, ResultsStore

#: analyses the report knows how to draw, in report order
KNOWN = ("interpolation", "interpolation_aligned", "mli", "hessian", "surface", "symmetry")
#: record attributes that are provenance, not outcomes (kept out of :meth:`Results.frame`)
PROVENANCE = {
    "complete",
    "analysis",
    "group",
    "variant",
    "device",
    "data",
    "settings",
    "checkpoints",
    "checkpoint_sha256",
    "seeds",
    "package",
    "package_version",
    "torch_version",
    "numpy_version",
    "h5py_version",
    "python_version",
    "time",
    "command",
}
_VARIANT_ORDER = {"standard": 0, "w-asym": 1, "sigma-asym": 2}


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.bool_, np.integer, np.floating))


def _scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _key_parts(rec: Record) -> tuple[str, str, str]:
    parts = rec.key.strip("/").split("/")
    analysis = str(rec.attrs.get("analysis") or parts[0])
    group = rec.attrs.get("group")
    group = str(group) if group is not None else "/".join(parts[1:-1])
    return parts[0] if len(parts) > 1 else analysis, group, parts[-1]


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; 0 for one value) and count of the finite values."""
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0, int(v.size)


def format_mean_std(m: float, s: float, n: int) -> str:
    if n == 0 or math.isnan(m):
        return "-"
    return f"{m:.4g}" if n == 1 else f"{m:.4g} ± {s:.2g}"


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
        return [a for a in KNOWN if a in found] + sorted(found - set(KNOWN))

    def groups(self, analysis: str | None = None) -> list[str]:
        """Group names, ordered standard, W-Asym, sigma-Asym, then others (by name)."""
        variants: dict[str, str] = {}
        for r in self.records.values():
            a, g, _ = _key_parts(r)
            if analysis is None or a == analysis:
                variants.setdefault(g, str(r.attrs.get("variant", "")))
        return sorted(variants, key=lambda g: (_VARIANT_ORDER.get(variants[g], 9), g))

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

    # -- tables -------------------------------------------------------------------------
    def frame(self, analysis: str) -> pd.DataFrame:
        """One row per complete record: group, variant, record, then every scalar attribute and scalar dataset."""
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
                if a not in PROVENANCE and _is_scalar(v):
                    row[a] = _scalar(v)
            for d, arr in r.datasets.items():
                if np.ndim(arr) == 0 or np.size(arr) == 1 and np.asarray(arr).dtype.kind in "biuf":
                    row.setdefault(d, _scalar(np.asarray(arr).reshape(())[()]))
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
        self, analysis: str, group: str | None = None, axis: str | None = None
    ) -> pd.DataFrame:
        """Long table of the 1-D datasets: columns group, record, the axis coordinate, then one column per dataset.

        The coordinate of axis ``a`` is the dataset named ``a`` or ``a + "s"`` (``alphas`` for
        ``alpha``), else the index. With several axes, ``axis`` picks one (default: the first).
        """
        frames = []
        for k in self.keys(analysis, group):
            r = self.records[k]
            _, g, name = _key_parts(r)
            by_axis: dict[str, dict[str, np.ndarray]] = {}
            for d, arr in r.datasets.items():
                axes = r.dataset_attrs.get(d, {}).get("axes") or []
                if np.ndim(arr) == 1 and len(axes) == 1 and np.asarray(arr).dtype.kind in "biuf":
                    by_axis.setdefault(str(axes[0]), {})[d] = np.asarray(arr)
            if not by_axis:
                continue
            ax = axis if axis in by_axis else next(iter(by_axis))
            cols = by_axis[ax]
            coord_name = next((c for c in (ax, ax + "s") if c in cols), None)
            n = len(next(iter(cols.values())))
            df = pd.DataFrame({d: v for d, v in cols.items() if len(v) == n and d != coord_name})
            df.insert(0, ax, cols[coord_name] if coord_name else np.arange(n))
            df.insert(0, "record", name)
            df.insert(0, "group", g)
            frames.append(df)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def seeds(self, group: str) -> list[str]:
        """Seed labels seen in any record of the group."""
        seen: list[str] = []
        for k in self.keys(group=group):
            for s in self.records[k].attrs.get("seeds") or []:
                if str(s) not in seen:
                    seen.append(str(s))
        return seen

    def endpoint_accuracy(self, group: str, split: str = "test") -> dict[str, float]:
        """Accuracy of each trained network, read off the ends of its interpolation curves (alpha = 0 and 1)."""
        out: dict[str, float] = {}
        for k in self.keys("interpolation", group):
            r = self.records[k]
            acc = r.datasets.get(f"{split}_accuracy")
            seeds = [str(s) for s in r.attrs.get("seeds") or []]
            if acc is None or len(seeds) < 2:
                continue
            out.setdefault(seeds[0], float(acc[0]))
            out.setdefault(seeds[1], float(acc[-1]))
        return out

    def summary(self, formatted: bool = True) -> pd.DataFrame:
        """The overview table: one row per group.

        Columns: seeds; endpoint test accuracy; test loss and accuracy barriers (max over the
        path) as mean ± std over pairs; the same after weight matching (standard groups);
        share of seeds whose init-to-final loss path is monotonic (MLI); top Hessian
        eigenvalue and trace, mean ± std over seeds. ``formatted=False`` gives numbers
        (``<col>_mean``, ``<col>_std``, ``<col>_n``) instead of strings.
        """
        interp, aligned = self.frame("interpolation"), self.frame("interpolation_aligned")
        mli, hess = self.frame("mli"), self.frame("hessian")
        curvature = (("lambda_max", _first(hess, LAMBDA_MAX)), ("trace", _first(hess, TRACE)))
        rows = []
        for g in self.groups():
            stats: dict[str, tuple[float, float, int]] = {}
            stats["test accuracy"] = mean_std(self.endpoint_accuracy(g).values())
            for label, df, col in (
                ("loss barrier", interp, "test_loss_barrier_max"),
                ("accuracy barrier", interp, "test_accuracy_barrier_max"),
                ("aligned loss barrier", aligned, "test_loss_barrier_max"),
                ("aligned accuracy barrier", aligned, "test_accuracy_barrier_max"),
            ):
                stats[label] = (
                    mean_std(df.loc[df.group == g, col]) if col in df else (math.nan, math.nan, 0)
                )
            if "monotonic" in mli:
                m = mli.loc[mli.group == g, "monotonic"].astype(float)
                stats["MLI monotonic"] = (
                    (float(m.mean()), 0.0, 1) if len(m) else (math.nan, math.nan, 0)
                )
            for label, col in curvature:
                stats[label] = (
                    mean_std(hess.loc[hess.group == g, col]) if col else (math.nan, math.nan, 0)
                )
            row: dict[str, Any] = {
                "group": g,
                "variant": self.variant(g),
                "seeds": len(self.seeds(g)),
            }
            for label, (m, s, n) in stats.items():
                if formatted:
                    if label == "MLI monotonic":
                        sub = mli.loc[mli.group == g, "monotonic"] if "monotonic" in mli else []
                        row[label] = (
                            f"{int(sum(bool(x) for x in sub))}/{len(sub)}" if len(sub) else "-"
                        )
                    else:
                        row[label] = format_mean_std(m, s, n)
                else:
                    row.update({f"{label}_mean": m, f"{label}_std": s, f"{label}_n": n})
            rows.append(row)
        df = pd.DataFrame(rows)
        if formatted and not df.empty:  # drop columns no group has a value for
            keep = [
                c for c in df.columns if c in ("group", "variant", "seeds") or (df[c] != "-").any()
            ]
            df = df[keep]
        return df

    def incomplete(self) -> pd.DataFrame:
        """What is missing: incomplete records, and known analyses without any record."""
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
        for a in KNOWN:
            if a not in present:
                rows.append({"analysis": a, "group": "", "record": "", "status": "not run"})
        return pd.DataFrame(rows, columns=["analysis", "group", "record", "status"])

    def describe(self) -> str:
        """Plain-text overview: file, schema, commands, then per analysis the records per group and the dataset layout."""
        lines = [
            f"results file {self.path}",
            f"  schema {self.root.get('schema_version')}, {self.root.get('package')} "
            f"{self.root.get('package_version')}, created {self.root.get('created', '?')}, modified {self.root.get('modified', '?')}",
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
                axes = ",".join(map(str, da.get("axes") or []))
                lines.append(
                    f"    {d} {tuple(np.shape(arr))} [{axes}] {da.get('units', '')}: {da.get('description', '')}".rstrip(
                        ": "
                    )
                )
        missing = self.incomplete()
        if len(missing):
            lines.append("missing:")
            lines += [
                f"    {r.analysis}/{r.group}/{r.record} {r.status}".replace("// ", " ")
                for r in missing.itertuples()
            ]
        return "\n".join(lines)

    # -- pictures -----------------------------------------------------------------------
    def figure(self, name: str = "interpolation"):
        """A plotly figure of the report by name (``Results.figure_names()`` lists them)."""
        from reports.figures import build_figures
        from reports.plotly_figures import to_plotly

        figs = {f.name: f for f in build_figures(self)}
        if name not in figs:
            raise UserError(
                f"no figure {name!r} for this results file; available: {', '.join(figs) or 'none'}"
            )
        return to_plotly(figs[name])

    def figure_names(self) -> list[str]:
        from reports.figures import build_figures

        return [f.name for f in build_figures(self)]

    def to_frame(self) -> pd.DataFrame:
        return self.summary(formatted=False)

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the self-contained HTML report (see :func:`reports.render_html`)."""
        from reports import render_html

        return render_html(self, path, **kwargs)

    def _repr_html_(self) -> str:
        from reports.html import notebook_html

        return notebook_html(self)

    def __repr__(self) -> str:
        return f"Results({str(self.path)!r}, {len(self.records)} complete records, {len(self.incomplete_records)} incomplete)"


#: record fields the Hessian study may use for the top eigenvalue and the trace
LAMBDA_MAX = ("lambda_max", "top_eigenvalue", "eigenvalue_max")
TRACE = ("trace", "trace_mean", "hessian_trace")


def _first(df: pd.DataFrame, names: Iterable[str]) -> str | None:
    return next((n for n in names if n in df.columns), None)


def load(path: str | Path) -> Results:
    """Open a results file; raise :class:`UserError` for a missing, newer-schema, corrupt or empty file."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"{path}: no such results file; run `landscape run ROOT --data SPEC -o OUTDIR` first"
        )
    store = ResultsStore(path, create=False)  # checks schema version and that HDF5 opens
    records: dict[str, Record] = {}
    incomplete: dict[str, Record] = {}
    try:
        root = store.root_attrs()
        for key in store.keys(complete=None):
            rec = store.read(key)
            (records if rec.complete else incomplete)[key] = rec
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(
            f"{path}: cannot read the results file (truncated or corrupt? {type(exc).__name__}): rerun the study into a new -o"
        ) from exc
    if not records and not incomplete:
        raise UserError(
            f"{path}: the results file holds no records (an empty study): run an analysis into it first"
        )
    return Results(path, root, records, incomplete)
