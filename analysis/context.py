"""What every study needs: the discovered groups, loaded models, data on the device, the store.

One :class:`StudyContext` is built per command (or notebook call) and handed to each
study function (``analysis.interpolation.study``, ``analysis.hessian.study``, ...). It
caches loaded models and device-resident data so that several analyses in one ``run``
share them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from checkpoints import Run, discover, load_model, sha256
from checkpoints.sources import DataSet, load_data
from landscape.data import Batches, as_batches, resolve_device
from landscape.errors import UserError
from landscape.params import check_same_family
from landscape.store import ResultsStore, provenance


@dataclass
class StudyContext:
    """Groups of runs, data and output store for one study."""

    groups: dict[str, list[Run]]
    data_spec: str = "digits"
    store: ResultsStore = None  # type: ignore[assignment]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    samples: int | None = None
    batch_size: int | None = None
    arch: str | None = None
    force: bool = False
    progress: bool = True
    sample_seed: int = 0
    workers: int | str | None = None
    scheduler: str | None = None
    gpus: str | None = None
    connect_timeout: float = 10.0
    #: the loss every study uses: a name (auto, classification, squared_error, lm) or the
    #: ``module:callable`` the user gave; a string, so it travels to workers (resolved there)
    objective: str = "auto"
    _executor: Any = field(default=None, repr=False)
    _models: dict[tuple[str, str], nn.Module] = field(default_factory=dict, repr=False)
    _data: dict[str, DataSet] = field(default_factory=dict, repr=False)
    _batches: dict[str, Batches] = field(default_factory=dict, repr=False)
    _hashes: dict[str, str] = field(default_factory=dict, repr=False)
    _family_checked: set[str] = field(default_factory=set, repr=False)

    @classmethod
    def create(
        cls,
        roots: Iterable[str | Path] | str | Path,
        *,
        data: str = "digits",
        output: str | Path | None = None,
        device: str | None = "auto",
        samples: int | None = None,
        batch_size: int | None = None,
        arch: str | None = None,
        force: bool = False,
        progress: bool = True,
        lock: bool = True,
        workers: int | str | None = None,
        scheduler: str | None = None,
        gpus: str | None = None,
        connect_timeout: float = 10.0,
        objective: str | None = None,
    ) -> StudyContext:
        """The context of one study. ``lock=False`` leaves the results file unlocked (and
        untouched) so a caller can check every input first, then ``ctx.store.acquire()``.
        ``workers`` / ``gpus`` / ``scheduler``: where the records are computed (see
        :meth:`executor`). ``objective``: the loss (``--loss``), resolved here so that a bad
        name or a module that does not import fails before any work."""
        from landscape.objectives import objective_name, resolve_objective

        resolve_objective(objective, "--loss")
        groups = discover(roots)
        if output is None:  # notebooks: a scratch results file that lives as long as the context
            scratch = tempfile.mkdtemp(prefix="landscape-")
            output = Path(scratch) / "results.h5"
        # refuses a folder or a foreign file without I/O; --force adopts a foreign HDF5 file
        store = ResultsStore(output, adopt_foreign=force)
        if lock:  # the file's one writer from now on: a second one is refused, and temporaries
            store.acquire()  # of killed writers can be removed
        return cls(
            groups,
            data,
            store,
            resolve_device(device),
            samples,
            batch_size,
            arch,
            force,
            progress,
            workers=workers,
            scheduler=scheduler,
            gpus=gpus,
            connect_timeout=connect_timeout,
            objective=objective_name(objective),
        )

    # -- data ------------------------------------------------------------------------------
    def dataset(self, split: str = "test") -> DataSet:
        if split not in self._data:
            self._data[split] = load_data(
                self.data_spec, split, samples=self.samples, seed=self.sample_seed
            )
        return self._data[split]

    def batches(self, split: str = "test") -> Batches:
        """The split on the device, loaded once and shared by every analysis."""
        if split not in self._batches:
            ds = self.dataset(split)
            b = as_batches(ds.pair, device=self.device, batch_size=self.batch_size)
            b.description = dict(ds.description)
            self._batches[split] = b
        return self._batches[split]

    # -- models ----------------------------------------------------------------------------
    def model(self, run: Run, which: str = "final") -> nn.Module:
        """The loaded model (cached; callers must not modify it in place, copy first)."""
        path = run.final if which == "final" else run.init
        if path is None:
            raise UserError(f"group {run.group} seed {run.seed}: no {which} checkpoint")
        key = (str(path), which)
        if key not in self._models:
            self._models[key] = load_model(path, arch=self.arch, device=self.device)
        return self._models[key]

    def group_models(self, group: str) -> list[nn.Module]:
        """Final models of a group, checked to be one network family (same masks, same shapes)."""
        runs = self.groups[group]
        models = [self.model(r) for r in runs]
        if group not in self._family_checked:
            for r, m in zip(runs[1:], models[1:]):
                check_same_family(models[0], m, f"group {group}: {runs[0].final} and {r.final}")
            self._family_checked.add(group)
        return models

    def variant(self, group: str) -> str:
        """The group's variant (sidecar or embedded config), ``unknown`` when not recorded."""
        run = self.groups[group][0]
        v = run.sidecar.get("variant")
        if v is None:
            v = (getattr(self.model(run), "config", None) or {}).get("variant", "unknown")
        return str(v)

    # -- executor --------------------------------------------------------------------------
    def check_executor(self) -> None:
        """Bad executor flags fail here, before anything is written: ``--workers`` that is not
        a positive number or ``gpu``, GPUs without CUDA, a scheduler that cannot be reached,
        workers that cannot import the groups' model classes. The executor (workers, local
        cluster) is started here and kept for every study of this context."""
        from landscape.distributed import parse_workers, visible_gpus

        self.workers = parse_workers(self.workers)
        if self.workers == "gpu" or self.gpus is not None:
            visible_gpus(self.gpus)
        if self.workers is None and self.scheduler is None and self.gpus is None:
            return
        from .executor import code_modules

        models = [self.model(runs[0]) for runs in self.groups.values() if runs]
        try:
            self.executor().check_importable(
                code_modules(models, self.arch, self.objective), "the model classes and the loss"
            )
        except BaseException:
            self.close()
            raise

    def executor(self):
        """The executor every study of this context runs its records on (started once)."""
        if self._executor is None:
            from .executor import start_executor

            self._executor = start_executor(
                self.workers, self.scheduler, self.gpus, self.connect_timeout, self.progress
            )
        return self._executor

    def close(self) -> None:
        """Stop the executor (workers, local cluster) if this context started one."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    # -- provenance ------------------------------------------------------------------------
    def file_hash(self, path: Path | None) -> str | None:
        if path is None:
            return None
        key = str(path)
        if key not in self._hashes:
            self._hashes[key] = sha256(path)
        return self._hashes[key]

    def run_attrs(self, *runs: Run, which: Iterable[str] = ("final",)) -> dict[str, Any]:
        paths, hashes = [], []
        for r in runs:
            for w in which:
                p = r.final if w == "final" else r.init
                paths.append(str(p))
                hashes.append(self.file_hash(p))
        return {"checkpoints": paths, "checkpoint_sha256": hashes, "seeds": [r.seed for r in runs]}

    def record_attrs(
        self,
        analysis: str,
        group: str,
        *runs: Run,
        which: Iterable[str] = ("final",),
        splits: Iterable[str] = ("test",),
        **settings: Any,
    ) -> dict[str, Any]:
        """The attributes every record carries: analysis, group, data, checkpoints, settings, versions."""
        attrs = {
            "analysis": analysis,
            "group": group,
            "variant": self.variant(group),
            "device": str(self.device),
            "data": {s: self.dataset(s).description for s in splits},
            "settings": settings,
        }
        attrs.update(self.run_attrs(*runs, which=which))
        attrs.update(provenance())
        return attrs

    def should_skip(self, key: str) -> bool:
        return not self.force and self.store.has(key)
