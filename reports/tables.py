"""Tables of the report: per-group aggregates of record frames, and the provenance rows."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.results import format_mean_std, mean_std

if TYPE_CHECKING:  # pragma: no cover
    from analysis.results import Results


def group_table(
    df: pd.DataFrame, columns: list[str] | None = None, order: list[str] | None = None
) -> pd.DataFrame:
    """One row per group: record count, then per column ``k/n`` for booleans and ``mean ± std`` over records for numbers."""
    if df is None or df.empty:
        return pd.DataFrame()
    cols = columns or [c for c in df.columns if c not in ("group", "variant", "record")]
    rows = []
    groups = order or list(dict.fromkeys(df.group))
    for g in groups:
        sub = df[df.group == g]
        if sub.empty:
            continue
        row: dict[str, Any] = {"group": g, "records": len(sub)}
        for c in cols:
            if c not in sub:
                continue
            s = sub[c].dropna()
            if s.empty:
                row[c] = "-"
            elif s.map(lambda v: isinstance(v, (bool, np.bool_))).all():
                row[c] = f"{int(s.astype(bool).sum())}/{len(s)}"
            elif s.map(lambda v: isinstance(v, (int, float, np.integer, np.floating))).all():
                row[c] = format_mean_std(*mean_std(s))
            else:
                vals = list(dict.fromkeys(map(str, s)))
                row[c] = ", ".join(vals[:3]) + (" …" if len(vals) > 3 else "")
        rows.append(row)
    return pd.DataFrame(rows)


def barrier_table(res: Results) -> pd.DataFrame:
    """Per group and alignment: every barrier (both definitions, test and train) as mean ± std over pairs."""
    rows = []
    for analysis, label in (("interpolation", "no"), ("interpolation_aligned", "weight matching")):
        df = res.frame(analysis)
        if df.empty:
            continue
        cols = [c for c in df.columns if "barrier" in c]
        t = group_table(df, cols, res.groups())
        t.insert(1, "aligned", label)
        rows.append(t.rename(columns={"records": "pairs"}))
    out = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return (
        out.rename(columns=lambda c: c.replace("_barrier_", " barrier ").replace("_", " "))
        if not out.empty
        else out
    )


def _fmt(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, default=str)
    return str(v)


def provenance_tables(res: Results) -> dict[str, pd.DataFrame]:
    """What produced the file: commands, versions, data, settings per analysis, checkpoints with SHA-256, record times."""
    root = res.root
    out: dict[str, pd.DataFrame] = {}
    rows = [
        ("schema version", root.get("schema_version")),
        ("package", f"{root.get('package')} {root.get('package_version')}"),
        ("created", root.get("created")),
        ("modified", root.get("modified")),
    ]
    rows += [("command", c) for c in root.get("commands") or []]
    out["file"] = pd.DataFrame(rows, columns=["field", "value"]).astype(str)
    recs = list(res.records.values())
    vkeys = (
        "package_version",
        "torch_version",
        "numpy_version",
        "h5py_version",
        "python_version",
        "device",
    )
    versions = {tuple(str(r.attrs.get(k, "-")) for k in vkeys) for r in recs}
    out["versions"] = pd.DataFrame(
        sorted(versions), columns=[k.replace("_version", "") for k in vkeys]
    )
    data = {}
    settings = {}
    for r in recs:
        a = r.key.split("/")[0]
        for split, desc in (
            (r.attrs.get("data") or {}).items() if isinstance(r.attrs.get("data"), dict) else []
        ):
            data.setdefault((split, _fmt(desc)), set()).add(a)
        settings.setdefault((a, _fmt(r.attrs.get("settings", {}))), 0)
    out["data"] = pd.DataFrame(
        [(s, d, ", ".join(sorted(a))) for (s, d), a in sorted(data.items())],
        columns=["split", "description", "analyses"],
    )
    out["settings"] = pd.DataFrame(sorted(settings), columns=["analysis", "settings"])
    ck: dict[
        tuple[str, str, str], int
    ] = {}  # a checkpoint that changed between records shows up with both hashes
    for r in recs:
        for p, h in zip(r.attrs.get("checkpoints") or [], r.attrs.get("checkpoint_sha256") or []):
            k = (str(r.attrs.get("group", "")), str(p), str(h))
            ck[k] = ck.get(k, 0) + 1
    out["checkpoints"] = pd.DataFrame(
        [(*k, n) for k, n in sorted(ck.items())],
        columns=["group", "checkpoint", "sha256", "records"],
    )
    times = sorted(str(r.attrs["time"]) for r in recs if r.attrs.get("time"))
    out["time"] = pd.DataFrame(
        [
            ("first record", times[0] if times else "-"),
            ("last record", times[-1] if times else "-"),
            ("complete records", len(recs)),
            ("incomplete records", len(res.incomplete_records)),
        ],
        columns=["field", "value"],
    ).astype(str)
    return out
