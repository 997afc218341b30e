"""The metanetwork study: how well a property of a network can be predicted from its weights.

Every group of the checkpoint roots is one *population* (``landscape train --population``
writes them; any folder of networks of one architecture with sidecars works). For each
population, each metanet (:data:`landscape.records.metanet.METANETS`) and each metanet seed,
one record ``/metanet/<population>/<metanet>-seed<k>`` (:mod:`landscape.records.metanet`):
the selected model's prediction for every network with its split, the training curves, and
the test R^2 and Kendall tau.

The input is each network's vector of trainable coordinates (:mod:`landscape.metanet`);
the target any number its sidecar holds (``test_accuracy``, ``generalisation_gap``, a
hyperparameter such as ``lr``; looked up in ``metrics``, ``hyperparameters``, ``training``,
then the top level, or by a dotted path). Networks with NaN or Inf in their weights or target
are left out with a count (the paper drops them), or refused with ``strict``. The split is
seeded and recorded; ``mlp_perm`` (random permutation augmentation) runs on standard
populations only, since a permutation of an asymmetric network is not a symmetry.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from checkpoints import Run, load_model
from checkpoints.io import read_checkpoint
from landscape.errors import UserError
from landscape.metanet import (
    FlatPermuter,
    Layout,
    MetanetFit,
    MetanetSettings,
    Split,
    fit_metanet,
    prepare_inputs,
    split_population,
)
from landscape.params import ParamView, fixed_buffers
from landscape.records import metanet as R
from landscape.results import summarise

from .context import StudyContext

ANALYSIS = R.METANET.analysis
#: where a target name is looked up in a sidecar, in order
SECTIONS = ("metrics", "hyperparameters", "training", "population")
DEFINITIONS = (
    "R^2 = 1 - sum (y - yhat)^2 / sum (y - mean y)^2 over the test networks (sklearn); "
    "kendall_tau = Kendall's tau-b of (y, yhat) over the test networks (scipy's default); "
    "model selection: for each learning rate and epoch the validation R^2, the best kept"
)
_MISSING = object()


# ----------------------------------------------------------------------------- reading populations
def target_value(sidecar: dict[str, Any], name: str) -> Any:
    """The value ``name`` names in a sidecar: a dotted path (``metrics.test_accuracy``), else the
    first of ``metrics``, ``hyperparameters``, ``training``, ``population`` holding it, else a
    top-level key; a private sentinel when absent."""
    if "." in name:
        node: Any = sidecar
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                return _MISSING
            node = node[part]
        return node
    for section in SECTIONS:
        d = sidecar.get(section)
        if isinstance(d, dict) and name in d:
            return d[name]
    return sidecar.get(name, _MISSING)


def _sidecar_path(run: Run) -> str:
    from checkpoints.io import find_sidecar

    return str(find_sidecar(run.final) or run.final)


def _family(run: Run) -> tuple:
    s = run.sidecar
    kwargs = s.get("kwargs") if isinstance(s.get("kwargs"), dict) else {}
    return (s.get("arch"), s.get("variant"), json.dumps(kwargs, sort_keys=True, default=str))


def _finite(path) -> bool:
    sd, _ = read_checkpoint(path, allow_nonfinite=True)
    return all(bool(torch.isfinite(t).all()) for t in sd.values() if t.is_floating_point())


@dataclass
class Population:
    """The networks of one group that a metanet reads: coordinates, targets and provenance."""

    group: str
    variant: str
    runs: list[Run]
    labels: list[str]
    X: Tensor  # (N, D) trainable coordinates, float32
    targets: np.ndarray
    layout: Layout
    model: nn.Module  # the first network (its spec drives the augmentation)
    skipped: list[str]
    architecture: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)


def load_population(
    group: str,
    runs: Sequence[Run],
    target: str,
    *,
    strict: bool = False,
    arch: str | None = None,
    progress: bool = True,
) -> Population:
    """Read every network of a group: one architecture and variant, the target in every
    sidecar, finite weights and targets (else skipped with a count, or refused when ``strict``).

    Raises :class:`UserError` (one line, naming files) for mixed architectures or variants,
    a target missing from some sidecars or not a number, and networks whose tensors or fixed
    entries differ from the first's.
    """
    runs = list(runs)
    families: dict[tuple, Run] = {}
    for r in runs:
        families.setdefault(_family(r), r)
    if len(families) > 1:
        (fa, ra), (fb, rb) = list(families.items())[:2]
        what = [n for n, a, b in zip(("architecture", "variant"), fa, fb) if a != b]
        if not what:
            ka, kb = json.loads(fa[2]), json.loads(fb[2])
            what = [
                "arguments "
                + ", ".join(sorted(k for k in set(ka) | set(kb) if ka.get(k) != kb.get(k)))
            ]
        raise UserError(
            f"population {group}: networks differ in {' and '.join(what)} ({ra.final} vs {rb.final}): "
            "keep one architecture and variant per group folder"
        )
    values = [target_value(r.sidecar, target) for r in runs]
    missing = [_sidecar_path(r) for r, v in zip(runs, values) if v is _MISSING]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(
            f"population {group}: target {target!r} is missing from {len(missing)} of {len(runs)} "
            f"sidecars ({', '.join(missing[:3])}{more}): choose a --target every sidecar has "
            "(e.g. test_accuracy, generalisation_gap, lr)"
        )
    bad = [
        (r, v)
        for r, v in zip(runs, values)
        if isinstance(v, bool) or not isinstance(v, (int, float))
    ]
    if bad:
        raise UserError(
            f"population {group}: target {target!r} is {bad[0][1]!r} in {_sidecar_path(bad[0][0])}, "
            "not a number: choose a numeric --target"
        )
    if not runs:
        raise UserError(f"population {group}: no networks")
    # the template (layout, fixed buffers, spec) is the first network with finite weights
    template = next((r for r in runs if _finite(r.final)), None)
    if template is None:
        raise UserError(
            f"population {group}: every network ({len(runs)}) has NaN or Inf weights: nothing to learn from"
        )
    first = load_model(template.final, arch=arch)
    view = ParamView(first)
    own = {k: v.shape for k, v in first.state_dict().items()}
    fixed = {k: v.cpu() for k, v in fixed_buffers(first).items()}
    rows, labels, kept, targets, skipped = [], [], [], [], []
    bar = tqdm(runs, desc=f"reading {group}", disable=not progress, leave=False, unit="net")
    for r, v in zip(bar, values):
        sd, _ = read_checkpoint(r.final, allow_nonfinite=True)
        if {k: t.shape for k, t in sd.items()} != own:
            raise UserError(
                f"population {group}: {r.final} has other tensors or shapes than {template.final}: "
                "keep one architecture per group folder"
            )
        for k, t in fixed.items():
            if not torch.equal(sd[k].to(t.dtype), t):
                raise UserError(
                    f"population {group}: {r.final} differs from {template.final} in fixed buffer {k} "
                    "(masks, fixed values or FiGLU matrices): train a population with one mask seed"
                )
        row = view.flatten({n: sd[n].to(view.dtype) for n in view.names}).float()
        finite = bool(torch.isfinite(row).all()) and math.isfinite(float(v))
        if not finite:
            if strict:
                what = "weights" if not torch.isfinite(row).all() else f"target {target!r}"
                raise UserError(
                    f"population {group}: {r.final} has NaN or Inf {what} (--strict refuses it; "
                    "without --strict such networks are left out with a count)"
                )
            skipped.append(r.seed)
            continue
        rows.append(row)
        labels.append(r.seed)
        kept.append(r)
        targets.append(float(v))
    cfg = dict(getattr(first, "config", {}) or {})
    variant = str(runs[0].sidecar.get("variant", cfg.get("variant", "unknown")))
    X = torch.stack(rows) if rows else torch.zeros(0, len(view))
    return Population(
        group, variant, kept, labels, X, np.asarray(targets), Layout.of(view), first, skipped, cfg
    )


# ----------------------------------------------------------------------------- tasks
@dataclass
class PreparedPopulation:
    """What the metanet runs of one population share: inputs, targets, split, augmentation."""

    group: str
    inputs: dict[str, Tensor]  # "flat" and "statnn"
    targets: np.ndarray
    split: Split
    layout: Layout
    permuter: FlatPermuter | None


@dataclass
class MetanetTask:
    """One (population, metanet, seed) run as an executor task."""

    data: dict[str, PreparedPopulation]
    settings: MetanetSettings
    device: str = "cpu"

    def __call__(self, job: tuple[str, str, int]) -> tuple[str, str, int, MetanetFit]:
        group, name, seed = job
        p = self.data[group]
        fit = fit_metanet(
            name,
            p.inputs["statnn" if name == "statnn" else "flat"],
            p.targets,
            p.split,
            p.layout,
            self.settings,
            seed=seed,
            device=self.device,
            permuter=p.permuter if name == "mlp_perm" else None,
        )
        return group, name, seed, fit


def _fingerprint(pop: Population, split: Split, target: str, name: str, settings: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([pop.labels, target, name, settings, split.seed, split.fractions]).encode())
    h.update(np.ascontiguousarray(pop.targets, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _augmentation(name: str) -> str:
    if name == "mlp_perm":
        return "each training batch: every network moved by a random permutation of every unit group of its spec"
    return "none"


# ----------------------------------------------------------------------------- the study
def study(
    ctx: StudyContext,
    *,
    target: str = R.DEFAULT_TARGET,
    metanets: Sequence[str] = R.METANETS,
    seeds: int = 5,
    epochs: int = 50,
    batch_size: int = 128,
    lrs: Sequence[float] = (1e-3, 1e-4),
    weight_decay: float = 0.01,
    hidden: int | None = None,
    split: Sequence[float] = (0.5, 0.25, 0.25),
    split_seed: int = 0,
    strict: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    groups: Iterable[str] | None = None,
    populations: dict[str, Population] | None = None,
) -> pd.DataFrame:
    """Train every metanet ``seeds`` times on every population and record the test R^2 and tau.

    ``populations`` (from :func:`load_population`, already checked) saves reading the
    networks again; by default every group of ``ctx`` is read. Returns :func:`summary`.
    """
    from landscape.distributed import make_executor

    names = list(dict.fromkeys(metanets))
    unknown = [m for m in names if m not in R.METANETS]
    if unknown:
        raise UserError(f"unknown metanet {unknown[0]!r}: use any of {', '.join(R.METANETS)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}")
    settings = MetanetSettings(
        epochs, batch_size, tuple(float(x) for x in lrs), weight_decay, hidden
    )
    settings.check()
    groups = list(groups or ctx.groups)
    pops = populations or {
        g: load_population(
            g, ctx.groups[g], target, strict=strict, arch=ctx.arch, progress=ctx.progress
        )
        for g in groups
    }
    prepared, jobs, meta = {}, [], {}
    for g in groups:
        pop = pops[g]
        try:
            sp = split_population(len(pop), split_seed, split)
        except UserError as exc:
            raise UserError(f"population {g}: {exc}") from exc
        run_names = [m for m in names if m != "mlp_perm" or pop.variant == "standard"]
        need = {"statnn" if m == "statnn" else "flat" for m in run_names}
        inputs = {
            k: prepare_inputs(k if k == "statnn" else "flat", pop.X, pop.layout, sp.train)
            for k in need
        }
        permuter = FlatPermuter(pop.model) if "mlp_perm" in run_names else None
        prepared[g] = PreparedPopulation(g, inputs, pop.targets, sp, pop.layout, permuter)
        for m in run_names:
            fp = _fingerprint(pop, sp, target, m, settings.__dict__)
            meta[g, m] = fp
            for s in range(seeds):
                key = f"{ANALYSIS}/{g}/{m}-seed{s}"
                if ctx.force or not _reusable(ctx, key, fp):
                    jobs.append((g, m, s))
    if ctx.progress:
        n = sum(len(p) for p in pops.values())
        print(
            f"metanet: {len(jobs)} run(s) ({len(groups)} population(s), {len(names)} metanet(s) x "
            f"{seeds} seed(s)) x {len(settings.lrs)} learning rate(s) x {epochs} epochs on "
            f"{n} networks (target {target!r}); skipped non-finite: "
            + ", ".join(f"{g} {len(pops[g].skipped)}" for g in groups),
            file=sys.stderr,
        )
        skipped_perm = [g for g in groups if "mlp_perm" in names and pops[g].variant != "standard"]
        if skipped_perm:
            print(
                f"metanet: mlp_perm runs on standard populations only, not on {', '.join(skipped_perm)}",
                file=sys.stderr,
            )
    task = MetanetTask(prepared, settings, str(ctx.device))
    own = workers is not None or scheduler is not None
    with make_executor(workers, scheduler) if own else nullcontext(ctx.executor()) as ex:
        bar = tqdm(total=len(jobs), desc="metanets", disable=not ctx.progress, unit="run")
        for g, m, _seed, fit in ex.map(task, jobs):
            _write(ctx, pops[g], prepared[g], target, fit, meta[g, m])
            bar.update(1)
            bar.set_postfix_str(f"{g} {m}: test R² {fit.test_r2:.3f}", refresh=False)
        bar.close()
    return summary(ctx, groups)


def _reusable(ctx: StudyContext, key: str, fp: str) -> bool:
    if not ctx.store.has(key):
        return False
    return ctx.store.read(key).attrs.get(R.FINGERPRINT.name) == fp


def _write(
    ctx: StudyContext,
    pop: Population,
    prep: PreparedPopulation,
    target: str,
    fit: MetanetFit,
    fp: str,
) -> None:
    sp = prep.split
    attrs = ctx.record_attrs(ANALYSIS, pop.group, *pop.runs, splits=(), **fit.settings)
    attrs["variant"] = pop.variant
    attrs.update(
        {
            R.MODEL.name: fit.name,
            R.METANET_SEED.name: fit.seed,
            R.TARGET_NAME.name: target,
            R.TEST_R2.name: fit.test_r2,
            R.KENDALL_TAU.name: fit.kendall_tau,
            R.TRAIN_R2.name: fit.train_r2,
            R.SELECTED_VALIDATION_R2.name: fit.validation_r2,
            R.SELECTED_LR.name: fit.selected_lr,
            R.SELECTED_EPOCH.name: fit.selected_epoch,
            R.SPLIT_SEED.name: sp.seed,
            R.SPLIT_SIZES.name: sp.sizes,
            R.NETWORKS.name: len(pop),
            R.SKIPPED.name: len(pop.skipped),
            R.INPUT_COORDINATES.name: int(pop.X.shape[1]),
            R.INPUT_FEATURES.name: int(
                prep.inputs["statnn" if fit.name == "statnn" else "flat"].shape[1]
            ),
            R.AUGMENTATION.name: _augmentation(fit.name),
            R.ARCHITECTURE.name: pop.architecture,
            R.SECONDS_PER_EPOCH.name: fit.seconds_per_epoch,
            R.FINGERPRINT.name: fp,
            R.DEFINITIONS.name: DEFINITIONS,
            R.METANET_R2[fit.name].name: fit.test_r2,
            R.METANET_TAU[fit.name].name: fit.kendall_tau,
        }
    )
    values = {
        R.NETWORK.name: np.asarray(pop.labels, dtype=str),
        R.TARGET.name: pop.targets,
        R.PREDICTED.name: fit.predicted,
        R.SPLIT.name: sp.labels(len(pop)),
        R.EPOCH.name: np.arange(1, len(fit.train_mse) + 1, dtype=float),
        R.TRAIN_MSE.name: fit.train_mse,
        R.VALIDATION_R2.name: fit.validation_r2_curve,
    }
    R.METANET.write(ctx.store, f"{ANALYSIS}/{pop.group}/{fit.name}-seed{fit.seed}", values, attrs)


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per population, one column per metanet: test R^2 and Kendall tau, mean ± std over seeds."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(groups or ctx.groups))


def open_study(
    roots,
    *,
    output,
    target: str = R.DEFAULT_TARGET,
    strict: bool = False,
    device: str | None = "auto",
    arch: str | None = None,
    force: bool = False,
    progress: bool = True,
    split: Sequence[float] = (0.5, 0.25, 0.25),
    **executor: Any,
) -> tuple[StudyContext, dict[str, Population]]:
    """The context of a metanet study with every population read and checked (targets, families,
    non-finite networks, enough networks for the split) before the results file is locked."""
    ctx = StudyContext.create(
        roots, data="digits", output=output, device=device, arch=arch, force=force,
        progress=progress, lock=False, **executor,
    )  # fmt: skip
    pops = {
        g: load_population(g, runs, target, strict=strict, arch=arch, progress=progress)
        for g, runs in ctx.groups.items()
    }
    for g, pop in pops.items():
        try:
            split_population(len(pop), 0, split)
        except UserError as exc:
            skipped = f" ({len(pop.skipped)} non-finite left out)" if pop.skipped else ""
            raise UserError(f"population {g}{skipped}: {exc}") from exc
    ctx.check_executor()
    ctx.store.acquire()
    return ctx, pops


# ----------------------------------------------------------------------------- the demo
#: the demo's population: the digits MLP, 40 networks per variant, 1-4 epochs each; metanets:
#: MLP and StatNN, 3 seeds, 60 epochs, two learning rates
DEMO_SIZE = 40
DEMO_METANETS = ("mlp", "statnn")
DEMO_SETTINGS: dict[str, Any] = {"seeds": 3, "epochs": 60, "lrs": (1e-2, 1e-3)}


def demo_spec(size: int = DEMO_SIZE):
    """The demo population: MLP 64-32-32-10 on the digits, four variants, the paper's
    hyperparameter distribution with epochs scaled by 0.1 (1 to 4 epochs of batch 128)."""
    from checkpoints.population import PopulationSpec

    return PopulationSpec(
        arch="mlp",
        arch_kwargs={"width": 32, "depth": 2},
        variants=("standard", "w-asym", "sigma-asym", "standard-small"),
        size=size,
        batch_size=128,
        epochs_scale=0.1,
        augment="none",
        group_prefix="pop-",
    )


def demo(
    out, *, size: int = DEMO_SIZE, device: str = "auto", force: bool = False, progress: bool = True
) -> pd.DataFrame:
    """Train (or reuse) the demo population under ``out/populations`` and run the StatNN and MLP
    metanets on it into ``out/results.h5`` (groups ``pop-<variant>``)."""
    from pathlib import Path

    from checkpoints.population import train_population
    from checkpoints.sources import load_data

    out = Path(out)
    try:
        split_population(size, 0)
    except UserError as exc:
        raise UserError(f"--population {size}: {exc}") from exc
    train_population(
        out / "populations",
        demo_spec(size),
        load_data("digits", "train"),
        load_data("digits", "test"),
        device=device,
        progress=progress,
        threads=1,  # tiny networks: one thread each is fastest
    )
    ctx, pops = open_study(
        [out / "populations"],
        output=out / "results.h5",
        device=device,
        force=force,
        progress=progress,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny metanets: one thread is fastest (two contend on 2 cores)
    try:
        return study(ctx, metanets=DEMO_METANETS, populations=pops, **DEMO_SETTINGS)
    finally:
        torch.set_num_threads(threads)
        ctx.store.close()
