"""Finding groups and seeds in checkpoint directories.

Recognised layouts (``ROOT`` may be given several times):

- ``ROOT/<group>/<seed>/{init,final}.pt`` (what ``landscape train`` writes; ``init`` optional);
- ``ROOT/<group>/*.pt``: every file one seed (``init_*.pt`` / ``*_init.pt`` pair with their finals);
- ``ROOT/<seed>/{init,final}.pt`` or ``ROOT/*.pt``: one group named after ``ROOT``.

A seed directory or file name yields the seed label as written (``seed3`` or ``3``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape.errors import UserError, check_utf8, os_error_line
from landscape.records import VARIANT_ORDER

from .io import read_sidecar

CKPT_SUFFIXES = (".pt", ".pth", ".safetensors")


@dataclass(frozen=True)
class Run:
    """One trained network: its final checkpoint and, when saved, its initialisation."""

    group: str
    seed: str
    final: Path
    init: Path | None = None
    sidecar: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        return self.seed if self.seed.startswith("seed") else f"seed{self.seed}"


def _ckpts(d: Path) -> list[Path]:
    return sorted(
        p
        for p in d.iterdir()
        if p.is_file() and p.suffix in CKPT_SUFFIXES and not p.name.startswith(".")
    )


def _seed_dir_run(group: str, d: Path) -> Run | None:
    files = {p.stem: p for p in _ckpts(d)}
    final = files.get("final") or files.get("model") or files.get("last")
    if final is None and len(files) == 1:
        final = next(iter(files.values()))
    if final is None:
        return None
    return Run(group, d.name, final, files.get("init"), read_sidecar(final))


def _flat_runs(group: str, d: Path) -> list[Run]:
    files = _ckpts(d)
    inits = {}
    finals = []
    for p in files:
        stem = p.stem
        m = re.fullmatch(r"(?:init[_-](.+))|(?:(.+)[_-]init)", stem)
        if m:
            inits[m.group(1) or m.group(2)] = p
        else:
            finals.append(p)
    runs = []
    for p in finals:
        label = re.sub(r"^(final|model)[_-]|[_-](final|model)$", "", p.stem)
        runs.append(Run(group, label, p, inits.get(label), read_sidecar(p)))
    return runs


def _group_runs(group: str, d: Path) -> list[Run]:
    subdirs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    runs = [r for s in subdirs if (r := _seed_dir_run(group, s)) is not None]
    return runs or _flat_runs(group, d)


def discover(roots: str | Path | Iterable[str | Path]) -> dict[str, list[Run]]:
    """Groups and their runs under one or more roots, as ``{group: [Run, ...]}`` (sorted by seed).

    Every name found must be valid UTF-8 (results files and reports record group names and
    checkpoint paths as UTF-8): a folder or file that is not is refused before any work.
    """
    if isinstance(roots, (str, Path)):
        roots = [roots]
    groups: dict[str, list[Run]] = {}
    for root in map(Path, roots):
        check_utf8(root)
        try:
            found = _discover_root(root)
        except OSError as exc:  # a folder we may not list, a name too long
            raise UserError(os_error_line(exc.filename or root, exc)) from exc
        for g, runs in found.items():
            name = g if g not in groups else f"{root.name}-{g}"
            groups[name] = sorted(runs, key=lambda r: _seed_order(r.seed))
    for g, runs in groups.items():
        for r in runs:
            for p in (r.final, r.init):
                if p is not None:
                    check_utf8(p, f"group {g!r}:" if g.isprintable() else "")
    groups = dict(sorted(groups.items(), key=lambda kv: _group_order(kv[0], kv[1])))
    for g, runs in groups.items():
        archs = {_family(r.sidecar) for r in runs if r.sidecar}
        if len(archs) > 1:
            raise UserError(
                f"group {g}: checkpoints of different architectures or mask seeds ({sorted(archs)[:2]}): keep one family per group folder"
            )
    return groups


def _family(side: dict[str, Any]) -> str:
    """What must agree within a group, from a sidecar: arch, variant, mask seed (as text)."""
    kwargs = side.get("kwargs") if isinstance(side.get("kwargs"), dict) else {}
    key = (side.get("arch"), side.get("variant"), side.get("mask_seed", kwargs.get("mask_seed")))
    return json.dumps(key, default=str)


def _discover_root(root: Path) -> dict[str, list[Run]]:
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if root.is_file():
        if root.suffix not in CKPT_SUFFIXES:
            raise UserError(
                f"{root}: not a checkpoint file (expected {', '.join(CKPT_SUFFIXES)}) or a folder"
            )
        found = {
            root.parent.name or "models": [
                Run(root.parent.name or "models", root.stem, root, None, read_sidecar(root))
            ]
        }
    else:
        found = {}
        direct = _ckpts(root)
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        seed_runs = [r for s in subdirs if (r := _seed_dir_run(root.name, s)) is not None]
        if direct:
            found[root.name] = _flat_runs(root.name, root)
        elif seed_runs and all(not any(q.is_dir() for q in s.iterdir()) for s in subdirs):
            found[root.name] = seed_runs
        else:
            for s in subdirs:
                runs = _group_runs(s.name, s)
                if runs:
                    found[s.name] = runs
    if not found:
        raise UserError(
            f"{root}: no checkpoints found (expected ROOT/<group>/<seed>/final.pt or .pt files): point at a checkpoint folder"
        )
    return found


def _group_order(name: str, runs: list[Run]):
    """Standard, W-Asym, sigma-Asym first (by sidecar variant, else by name), then by name."""
    variant = next((r.sidecar.get("variant") for r in runs if r.sidecar.get("variant")), name)
    return (VARIANT_ORDER.get(str(variant), len(VARIANT_ORDER)), name)


def _seed_order(label: str):
    m = re.search(r"(\d+)$", label)
    return (0, int(m.group(1)), label) if m else (1, 0, label)


#: intermediate checkpoints of one training run, saved in its seed folder: step<k> or epoch<k>
TRAJECTORY_STEM = re.compile(r"(step|epoch)[_-]?(\d+)")


def trajectory(run: Run) -> list[Path]:
    """The checkpoints of ``run``'s training trajectory, in training order: ``init``, the
    intermediate ``step<k>`` (or ``epoch<k>``) files of its seed folder by ``k``, ``final``.

    Only a seed folder (``ROOT/<group>/<seed>/``) holds a trajectory; other layouts give
    ``init`` and ``final``. A folder with both ``step`` and ``epoch`` files is refused.
    """
    folder = run.final.parent
    middle: dict[str, list[tuple[int, Path]]] = {}
    if folder.name == run.seed:
        for p in _ckpts(folder):
            m = TRAJECTORY_STEM.fullmatch(p.stem)
            if m:
                middle.setdefault(m.group(1), []).append((int(m.group(2)), p))
    if len(middle) > 1:
        raise UserError(
            f"{folder}: holds both step<k> and epoch<k> checkpoints: keep one kind per training run"
        )
    steps = [p for _, p in sorted(next(iter(middle.values()), []))]
    return [p for p in (run.init, *steps, run.final) if p is not None]
