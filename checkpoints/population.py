"""Populations of trained networks: hyperparameters drawn per network, each network in its own folder.

A population is ``size`` networks per variant of one architecture, trained as the paper's
metanetwork zoos are (Lim et al. 2024; Unterthiner et al. 2020 for the idea): every network
draws its hyperparameters from a seeded distribution, so the population spans a range of
accuracies that a metanetwork can learn to predict from the weights. Layout::

    OUT/population.json                 <- the specification (distribution, seed, variants)
    OUT/<prefix><variant>/net00000/
        init.pt  final.pt               <- checkpoints (what ``landscape train`` writes)
        landscape.json                  <- sidecar: arch, variant, kwargs, hyperparameters,
                                           training settings, data, metrics

Hyperparameters of network ``i`` come from ``numpy.random.default_rng([seed, i])`` (drawn in
the order lr, weight decay, label smoothing, epochs), the same ``i`` in every variant: the
variants are paired, and a network's draws do not depend on how many networks there are or
in which order they train. The paper's defaults (:data:`PAPER`): learning rate
``0.5 * 10^-U(0, 2)`` (log-uniform on [0.005, 0.5]), weight decay ``10^-U(1, 5)``, label
smoothing ``U(0, 0.2)``, epochs uniform on the integers 10..40 (times ``epochs_scale``, for
small data), AdamW, batch 512, a triangular schedule peaking at epoch 5 (scaled alike).

Each network is one task of an executor (inline or Dask workers): it trains in a temporary
folder ``.netNNNNN.tmp-<host>-<pid>`` beside its final place and renames it into place when
its sidecar is written, so a folder ``netNNNNN`` is always complete; a killed run leaves at
most temporaries, which the rerun removes before retraining those networks from scratch
(training is deterministic, so the rerun gives the same networks).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from landscape import locking
from landscape.errors import UserError
from landscape.evaluation import evaluate

from . import zoo
from .io import (
    SIDECAR_NAME,
    first_line,
    model_sidecar,
    os_error_line,
    read_sidecar,
    refuse_other_settings,
    save_checkpoint,
    write_json_atomic,
)
from .population_spec import (
    CONTROL,
    DRAWN,
    PAPER,
    Dist,
    PopulationSpec,
    read_population_config,
    resolve_augment,
    spec_from_config,
    variant_build,
)
from .sources import DataSet
from .train import train_model

__all__ = [
    "CONTROL",
    "PAPER",
    "Dist",
    "NetworkResult",
    "PopulationSpec",
    "read_population",
    "read_population_config",
    "spec_from_config",
    "train_network",
    "train_population",
]

SPEC_FILE = "population.json"
LOCK_NAME = "population"  # the lock file is ROOT/.population.lock


# ----------------------------------------------------------------------------- one network
@dataclass(frozen=True)
class NetworkResult:
    """What a task returns to the client."""

    group: str
    index: int
    folder: str
    metrics: dict[str, float]
    trained: bool  # False when the folder was already complete
    seconds: float


def network_name(index: int, size: int) -> str:
    return f"net{index:0{max(5, len(str(size - 1)))}d}"


def fingerprint(
    spec: PopulationSpec, variant: str, index: int, train: DataSet, test: DataSet
) -> dict:
    """What a network must have been trained with to be reused: everything but the size and
    the list of variants (a population may grow, and gain variants)."""
    d = spec.to_dict()
    d.pop("size", None)
    d.pop("variants", None)
    return json.loads(
        json.dumps(
            {
                "spec": d,
                "variant": variant,
                "index": index,
                "data": [train.description, test.description],
            },
            default=str,
        )
    )


def _stale_temporaries(folder: Path) -> list[Path]:
    parent = folder.parent
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]


def complete(folder: Path) -> bool:
    return (folder / SIDECAR_NAME).is_file() and (folder / "final.pt").is_file()


def train_network(
    root: str | Path,
    spec: PopulationSpec,
    variant: str,
    index: int,
    train: DataSet,
    test: DataSet,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
    progress: bool = False,
) -> NetworkResult:
    """Train (or reuse) network ``index`` of ``variant`` into its folder; see the module doc."""
    group = spec.group(variant)
    folder = Path(root) / group / network_name(index, spec.size)
    fp = fingerprint(spec, variant, index, train, test)
    if complete(folder) and not force:
        side = read_sidecar(folder / "final.pt")
        refuse_other_settings(
            folder, "a network", side.get("population", {}).get("fingerprint"), fp
        )
        return NetworkResult(group, index, str(folder), side.get("metrics", {}), False, 0.0)
    t0 = time.perf_counter()
    try:
        for stale in _stale_temporaries(folder):  # a killed run's work on this network
            shutil.rmtree(stale, ignore_errors=True)
        tmp = folder.parent / f".{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise UserError(os_error_line(folder, exc, "write", "choose another --out")) from exc
    zoo_variant, kw = variant_build(spec, variant, train)
    augment, pad = resolve_augment(spec, train)
    hp = spec.draw(index)
    settings = spec.settings(hp, augment, pad)
    from landscape.data import resolve_device

    dev = resolve_device(device)
    model = zoo.build(spec.arch, zoo_variant, seed=index, **kw).to(dev)
    save_checkpoint(model, tmp / "init.pt", option="--out")
    on_dev = DataSet(train.X.to(dev), train.y.to(dev), train.description)
    train_model(
        model, on_dev, settings, seed=index, progress=progress, desc=f"{group} {folder.name}"
    )
    tr = evaluate(model, on_dev.pair, check_finite=False)
    te = evaluate(model, (test.X.to(dev), test.y.to(dev)), check_finite=False)
    save_checkpoint(model, tmp / "final.pt", option="--out")
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    metrics = {
        "train_loss": tr.loss,
        "train_accuracy": tr.accuracy,
        "test_loss": te.loss,
        "test_accuracy": te.accuracy,
        "generalisation_gap": tr.accuracy - te.accuracy,
        "loss_gap": te.loss - tr.loss,
        "finite_weights": bool(finite),
    }
    seconds = time.perf_counter() - t0
    sidecar = {
        **model_sidecar(model),
        "population": {
            "group": group,
            "variant": variant,
            "index": index,
            "seed": spec.seed,
            "distribution": {n: getattr(spec, n).to_dict() for n in DRAWN},
            "fingerprint": fp,
        },
        "hyperparameters": hp,
        "data": {"train": train.description, "test": test.description},
        "training": {**asdict(settings), "seconds": round(seconds, 3), "device": str(dev)},
        "metrics": metrics,
    }
    write_json_atomic(tmp / SIDECAR_NAME, sidecar, option="--out")
    try:
        if folder.exists():  # an incomplete folder (files removed by hand) or --force
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except OSError as exc:
        raise UserError(os_error_line(folder, exc, "write", "choose another --out")) from exc
    return NetworkResult(group, index, str(folder), metrics, True, seconds)


@dataclass
class NetworkTask:
    """One network as an executor task (pickles: the data travels with it once per worker).

    ``threads``: torch CPU threads while the task runs (the caller's count by default, so a
    Dask worker computes exactly what the local run computes).
    """

    root: str
    spec: PopulationSpec
    train: DataSet
    test: DataSet
    device: str = "cpu"
    force: bool = False
    progress: bool = False
    threads: int | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_placed"}

    def placed(self) -> tuple[DataSet, DataSet]:
        """The data on ``device``, moved once per process (a worker's tasks share it)."""
        if getattr(self, "_placed", None) is None:
            from landscape.data import resolve_device

            dev = resolve_device(self.device)
            self._placed = tuple(
                DataSet(d.X.to(dev), d.y.to(dev), d.description) for d in (self.train, self.test)
            )
        return self._placed

    def __call__(self, job: tuple[str, int]) -> NetworkResult:
        variant, index = job
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            train, test = self.placed()
            return train_network(
                self.root,
                self.spec,
                variant,
                index,
                train,
                test,
                device=self.device,
                force=self.force,
                progress=self.progress,
            )
        finally:
            torch.set_num_threads(before)


# ----------------------------------------------------------------------------- the population
def expected_cost(spec: PopulationSpec, train: DataSet, todo: int, total: int) -> str:
    """One line: networks, mean epochs and optimiser steps, and the passes over the data."""
    epochs = spec.epochs.mean() * spec.epochs_scale
    per_epoch = math.ceil(len(train) / spec.batch_size)
    steps = todo * epochs * per_epoch
    return (
        f"population: {total} networks ({spec.arch}, {', '.join(spec.variants)} x {spec.size}), "
        f"{total - todo} already complete; {todo} to train x ~{epochs:.1f} epochs x {per_epoch} "
        f"steps of {spec.batch_size} = ~{steps:,.0f} optimiser steps (~{todo * epochs * len(train):,.0f} "
        f"training samples through forward and backward) on {len(train):,} training samples; "
        f"hyperparameters: {spec.describe()}"
    )


def train_population(
    root: str | Path,
    spec: PopulationSpec,
    train: DataSet,
    test: DataSet,
    *,
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
    connect_timeout: float = 10.0,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> list[NetworkResult]:
    """Train every network of ``spec`` under ``root`` (resumable; see the module doc).

    Networks are tasks of :func:`landscape.distributed.make_executor` (inline by default,
    ``workers`` local Dask processes, one per GPU with ``gpus`` or ``workers="gpu"``, or the
    cluster at ``scheduler``); each writes only its
    own folder. Returns one :class:`NetworkResult` per network, in (variant, index) order.
    """
    from landscape.distributed import make_executor

    spec = spec.check()
    root = Path(root)
    for v in spec.variants:  # bad input before anything is written
        check_fits(spec, v, train, test)
    jobs = [(v, i) for v in spec.variants for i in range(spec.size)]
    done = (
        set()
        if force
        else {
            (v, i) for v, i in jobs if complete(root / spec.group(v) / network_name(i, spec.size))
        }
    )
    # bad --workers / --gpus / --scheduler fail before anything is written
    ex = make_executor(workers, scheduler, gpus=gpus, connect_timeout=connect_timeout)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_line(root, exc, "write", "choose another --out")) from exc
    # one client writes a population at a time (ROOT/.population.lock)
    lock, _ = locking.acquire(
        root / LOCK_NAME,
        wait=False,
        subject=f"the population {root}",
        instead="choose another --out",
    )
    try:
        _write_spec(root, spec, force)
        if progress:
            print(expected_cost(spec, train, len(jobs) - len(done), len(jobs)), file=sys.stderr)
        task = NetworkTask(
            str(root),
            spec,
            train,
            test,
            device,
            force,
            progress=False,
            threads=threads or torch.get_num_threads(),
        )
        results: dict[tuple[str, int], NetworkResult] = {}
        t0 = time.perf_counter()
        with ex:
            bar = tqdm(total=len(jobs), desc="networks", disable=not progress, unit="net")
            bar.update(len(done))
            cached = [j for j in jobs if j in done]
            for j in cached:  # complete networks: checked (fingerprint) without training
                results[j] = task(j)
            for res in ex.map(task, [j for j in jobs if j not in done]):
                results[(_variant_of(spec, res.group), res.index)] = res
                bar.update(1)
                acc = res.metrics.get("test_accuracy")
                if acc is not None:
                    bar.set_postfix_str(f"last test acc {acc:.3f}", refresh=False)
            bar.close()
        if progress:
            trained = sum(r.trained for r in results.values())
            print(
                f"population: trained {trained} network(s) in {time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
        return [results[j] for j in jobs]
    finally:
        locking.release(lock)


def _variant_of(spec: PopulationSpec, group: str) -> str:
    return group[len(spec.group_prefix) :]


def check_fits(spec: PopulationSpec, variant: str, train: DataSet, test: DataSet) -> None:
    """One forward pass of the variant's model on two samples of each split: a model that does
    not fit the data, or labels outside its outputs, is one line before any training."""
    from landscape.evaluation import check_targets

    zoo_variant, kw = variant_build(spec, variant, train)
    aug = resolve_augment(spec, train)[0]
    spec.settings(spec.draw(0), aug, 0).check()
    model = zoo.build(spec.arch, zoo_variant, **kw)
    for split, ds in (("train", train), ("test", test)):
        try:
            with torch.no_grad():
                out = model(ds.X[:2])
        except (RuntimeError, ValueError, IndexError, TypeError) as exc:
            raise UserError(
                f"--data ({split}): inputs of shape {tuple(ds.X.shape[1:])} do not fit the "
                f"{spec.arch} {variant} model ({first_line(exc, 100)}): check --data and --arch"
            ) from exc
        if ds.y.is_floating_point():
            raise UserError("a population needs class labels; the data has float targets")
        check_targets(out, (int(ds.y.min()), int(ds.y.max())))


def _write_spec(root: Path, spec: PopulationSpec, force: bool) -> None:
    """``ROOT/population.json``: the specification (its size grows when a population is extended)."""
    path = root / SPEC_FILE
    data = {"population": spec.to_dict(), "variants": {}}
    for v in spec.variants:
        data["variants"][spec.group(v)] = v
    if path.is_file() and not force:
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("population", {})
        except (OSError, ValueError):
            old = {}
        if old:
            refuse_other_settings(
                path,
                "a population",
                {k: v for k, v in old.items() if k not in ("size", "variants")},
                {k: v for k, v in data["population"].items() if k not in ("size", "variants")},
            )
        if old:
            data["population"]["size"] = max(int(old.get("size", 0)), spec.size)
            data["variants"].update(
                json.loads(path.read_text(encoding="utf-8")).get("variants", {})
            )
    write_json_atomic(path, data, option="--out")


def read_population(root: str | Path) -> dict[str, Any]:
    """``ROOT/population.json`` as written by :func:`train_population` (empty when absent)."""
    path = Path(root) / SPEC_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable population file ({first_line(exc)})") from exc


def summary_rows(results: Sequence[NetworkResult]) -> list[dict[str, Any]]:
    """Per group: networks, test accuracy mean ± std, min and max, networks with NaN weights."""
    from landscape.records import format_mean_std, mean_std

    rows = []
    groups: dict[str, list[NetworkResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    for g, rs in groups.items():
        acc = [r.metrics.get("test_accuracy", float("nan")) for r in rs]
        finite = [a for a in acc if a is not None and math.isfinite(a)]
        rows.append(
            {
                "group": g,
                "networks": len(rs),
                "trained now": sum(r.trained for r in rs),
                "test accuracy": format_mean_std(*mean_std(finite)),
                "min": min(finite) if finite else float("nan"),
                "max": max(finite) if finite else float("nan"),
                "non-finite": sum(not r.metrics.get("finite_weights", True) for r in rs),
            }
        )
    return rows
