"""Provenance tables of the report (the per-group summaries come from the record definitions)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from landscape.results import Results


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
