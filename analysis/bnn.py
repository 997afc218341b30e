"""Variational (Bayesian) training study: standard vs asymmetric posteriors, one task per seed.

``study(out, arch=..., variants=..., seeds=..., data=...)`` trains an ELRG posterior
(:mod:`landscape.bnn`) per (variant, seed) into its own run folder::

    OUT/<prefix><variant>/seed<k>/
        posterior.pt     <- the posterior checkpoint (checkpoints.load_posterior; load_model
                            reads it as the mean network)
        landscape.json   <- sidecar: arch, variant, kwargs, data, recipe, curves, metrics;
                            written last, so a folder with it is complete
        state.ckpt       <- while training: resumable state, saved every log_every steps

Each seed is one task of ``landscape.distributed.make_executor`` (inline, or Dask workers):
a task writes only its own folder (by rename), and a rerun resumes a killed task from its
last saved state with the same curves. The client alone writes the results file:
``/bnn/<group>/<seedK>`` (the training curves; :mod:`landscape.records.bnn`), then the
calibration study of the posteriors on the test split (``/calibration/...``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from checkpoints import zoo
from checkpoints.discover import Run
from checkpoints.io import (
    SIDECAR_NAME,
    model_sidecar,
    os_error_line,
    read_sidecar,
    refuse_other_settings,
    save_payload,
    write_json_atomic,
)
from checkpoints.posterior import save_posterior
from checkpoints.sources import DataSet, load_data
from landscape.bnn import (
    PosteriorSettings,
    TrainingCurves,
    VariationalTrainer,
    variational,
)
from landscape.data import resolve_device
from landscape.errors import UserError
from landscape.records import bnn as R
from landscape.results import summarise
from landscape.store import ResultsStore

from .context import StudyContext

ANALYSIS = R.BNN.analysis
POSTERIOR_FILE = "posterior.pt"
STATE_FILE = "state.ckpt"
OBJECTIVE = (
    "minimise NLL + KL(q || p) / N per sample (the negative ELBO), NLL from one Monte Carlo "
    "sample per step (local reparameterisation), Adam; elbo = -(NLL + KL/N)"
)


@dataclass(frozen=True)
class Recipe:
    """A BNN training recipe: architecture, optimiser, posterior family and prior.

    ``steps`` Adam steps of ``batch_size`` at learning rate ``lr``; the posterior has
    ``rank`` factors and a fixed (``learn_diag=False``, at ``exp(q_init_logvar)``) or learned
    diagonal; prior ``N(0, 1 / (prior_precision * fan))``; curves and resumable state every
    ``log_every`` steps; ``mc_samples`` forward passes per step; ``num_data`` is N in KL / N
    (None: the training-set size).
    """

    arch: str = "mlp"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    steps: int = 10_000
    batch_size: int = 250
    lr: float = 5e-4
    rank: int = 4
    learn_diag: bool = False
    q_init_logvar: float = -10.0
    prior_precision: float = 0.01
    prior_scaling: str = "fan_in"
    mc_samples: int = 1
    log_every: int = 100
    num_data: int | None = None
    mask_seed: int = 0

    @property
    def posterior(self) -> PosteriorSettings:
        return PosteriorSettings(
            self.rank, self.learn_diag, self.q_init_logvar, self.prior_precision, self.prior_scaling
        )

    def check(self) -> Recipe:
        self.posterior.check()
        for option, v in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--mc-samples", self.mc_samples),
            ("--log-every", self.log_every),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{option} must be a positive integer, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr!r}")
        if self.num_data is not None and (not isinstance(self.num_data, int) or self.num_data < 1):
            raise UserError(f"--num-data must be a positive integer, got {self.num_data!r}")
        if self.arch not in zoo.ARCHS:
            raise UserError(
                f"unknown architecture {self.arch!r} for BNN training: use one of {', '.join(zoo.ARCHS)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


#: the paper's recipes (Lim et al. 2024, BNN experiment) and a small one for the demo
PRESETS: dict[str, Recipe] = {
    "cifar10-mlp": Recipe(
        "mlp",
        {"width": 256, "depth": 8, "norm": "layer", "activation": "relu", "kappa": 0.5},
        steps=10_000,
        batch_size=250,
        lr=5e-4,
        prior_precision=0.01,
        q_init_logvar=-10.0,
    ),
    "cifar10-resnet20": Recipe(
        "resnet20",
        {"width": 1, "norm": "group"},
        steps=5_000,
        batch_size=250,
        lr=1e-3,
        prior_precision=1.0,
        q_init_logvar=-12.0,
    ),
    "digits-mlp": Recipe(
        "mlp",
        {"width": 64, "depth": 2, "norm": "layer", "activation": "relu", "kappa": 0.5},
        steps=300,
        batch_size=128,
        lr=2e-3,
        prior_precision=0.01,
        q_init_logvar=-10.0,
        log_every=20,
    ),
}


def default_preset(arch: str, data: str) -> str:
    """The preset for an architecture and data spec: CIFAR-10 recipes for ``cifar10:``, else digits."""
    cifar = data.lower().startswith("cifar10")
    if arch == "resnet20":
        return "cifar10-resnet20"
    return "cifar10-mlp" if cifar else "digits-mlp"


def make_recipe(
    preset: str | None = None, *, arch: str = "mlp", data: str = "digits", **overrides
) -> Recipe:
    """A preset (default: :func:`default_preset`) with ``overrides`` (None values ignored;
    ``arch_kwargs`` entries merge into the preset's)."""
    name = preset or default_preset(arch, data)
    if name not in PRESETS:
        raise UserError(f"unknown --preset {name!r}: use one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    if preset is None and arch != base.arch:
        base = replace(base, arch=arch, arch_kwargs={})
    kw = {k: v for k, v in overrides.items() if v is not None}
    if "arch_kwargs" in kw:
        kw["arch_kwargs"] = {**base.arch_kwargs, **kw["arch_kwargs"]}
    unknown = set(kw) - set(Recipe.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown BNN setting(s) {sorted(unknown)}")
    return replace(base, **kw).check()


# ----------------------------------------------------------------------------- one seed
@dataclass(frozen=True)
class SeedResult:
    """What a task returns to the client: where the run is, its curves and counts."""

    group: str
    variant: str
    seed: int
    folder: str
    curves: TrainingCurves
    sidecar: dict[str, Any]
    trained: bool  # False when the folder was already complete
    resumed_from: int

    @property
    def run(self) -> Run:
        return Run(
            self.group, f"seed{self.seed}", Path(self.folder) / POSTERIOR_FILE, None, self.sidecar
        )


def _model_kwargs(recipe: Recipe, train: DataSet) -> dict[str, Any]:
    kw = dict(recipe.arch_kwargs)
    kw.setdefault("num_classes", train.num_classes)
    if recipe.arch == "mlp":
        kw.setdefault("input_dim", int(np.prod(train.input_shape)))
    else:
        kw.setdefault("in_channels", int(train.input_shape[0]))
    return kw


def build_posterior(recipe: Recipe, variant: str, seed: int, train: DataSet):
    """The initial :class:`~landscape.bnn.VariationalNet` of one run (means at the zoo's init)."""
    model = zoo.build(
        recipe.arch, variant, seed=seed, mask_seed=recipe.mask_seed, **_model_kwargs(recipe, train)
    )
    return variational(model, recipe.posterior, seed=seed, copy_model=False)


def fingerprint(recipe: Recipe, variant: str, seed: int, train: DataSet) -> dict[str, Any]:
    """What a run folder must have been trained with to be reused or resumed."""
    return json.loads(
        json.dumps(
            {
                "recipe": recipe.to_dict(),
                "variant": variant,
                "seed": seed,
                "data": train.description,
            },
            default=str,
        )
    )


def _curves_from(d: dict[str, Any]) -> TrainingCurves:
    return TrainingCurves(
        *(np.asarray(d.get(k, []), dtype=float) for k in TrainingCurves.__dataclass_fields__)
    )


def train_seed(
    folder: str | Path,
    group: str,
    variant: str,
    seed: int,
    recipe: Recipe,
    train: DataSet,
    *,
    device: str | torch.device = "cpu",
    force: bool = False,
    progress: bool = True,
) -> SeedResult:
    """Train (or resume, or reuse) one posterior in ``folder``; see the module doc for the files."""
    folder = Path(folder)
    side_path, post_path, state_path = (
        folder / SIDECAR_NAME,
        folder / POSTERIOR_FILE,
        folder / STATE_FILE,
    )
    fp = fingerprint(recipe, variant, seed, train)
    if not force and side_path.is_file() and post_path.is_file():
        side = read_sidecar(post_path)
        refuse_other_settings(folder, "a posterior", side.get("bnn", {}).get("fingerprint", {}), fp)
        curves = _curves_from(side.get("bnn", {}).get("curves", {}))
        return SeedResult(group, variant, seed, str(folder), curves, side, False, recipe.steps)
    dev = resolve_device(device)
    model = build_posterior(recipe, variant, seed, train).to(dev)
    trainer = VariationalTrainer(
        model,
        train.X.to(dev),
        train.y.to(dev),
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        num_data=recipe.num_data,
        mc_samples=recipe.mc_samples,
        seed=seed,
    )
    resumed = 0
    if state_path.is_file() and not force:
        try:
            state = torch.load(state_path, map_location=dev, weights_only=True)
        except Exception as exc:  # a corrupt state file: say so, never guess
            raise UserError(
                f"{state_path}: cannot read the saved training state ({type(exc).__name__}): "
                "delete it to start this seed again, or use --force"
            ) from exc
        refuse_other_settings(
            folder, "a partly trained posterior", state.get("fingerprint", {}), fp
        )
        trainer.load_state_dict(state["trainer"])
        resumed = trainer.step

    def save_state(t: VariationalTrainer) -> None:
        if t.step < recipe.steps:
            save_payload({"fingerprint": fp, "trainer": t.state_dict()}, state_path, option="--out")

    curves = trainer.run(
        recipe.steps,
        log_every=recipe.log_every,
        on_log=save_state,
        progress=progress,
        desc=f"{group} seed{seed}",
    )
    save_posterior(model, post_path)
    side = {
        **model_sidecar(model),
        "data": {"train": train.description},
        "training": {**recipe.to_dict(), "seconds": round(float(trainer.seconds), 3)},
        "metrics": {
            R.FINAL_ELBO.name: curves.final_elbo,
            R.FINAL_TRAIN_ACCURACY.name: float(curves.accuracy[-1]),
        },
        "bnn": {
            "fingerprint": fp,
            R.POSTERIOR.name: recipe.posterior.to_dict(),
            R.COORDINATES.name: sum(p.size for p in model.posteriors.values()),
            R.VARIATIONAL_PARAMETERS.name: model.variational_parameters(),
            R.NUM_DATA.name: trainer.num_data,
            "resumed_from": resumed,
            "curves": {k: np.asarray(v).tolist() for k, v in asdict(curves).items()},
        },
    }
    write_json_atomic(side_path, side, option="--out")
    try:
        state_path.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(os_error_line(state_path, exc, "remove")) from exc
    return SeedResult(group, variant, seed, str(folder), curves, side, True, resumed)


@dataclass
class SeedTask:
    """One seed as an executor task (pickles: the training data travels with it)."""

    root: str
    recipe: Recipe
    train: DataSet
    device: str
    force: bool
    progress: bool
    threads: int | None = None

    def __call__(self, job: tuple[str, str, int]) -> SeedResult:
        group, variant, seed = job
        with torch_threads(self.threads):
            return train_seed(
                Path(self.root) / group / f"seed{seed}",
                group,
                variant,
                seed,
                self.recipe,
                self.train,
                device=self.device,
                force=self.force,
                progress=self.progress,
            )


class torch_threads:
    """Context: torch's CPU threads set to ``n`` inside (``None``: unchanged), restored after.

    Small models train fastest on one thread: on the shared 2-core machine a digits posterior
    took 5 s on one thread and 38 s on two (threads waiting on each other under load)."""

    def __init__(self, n: int | None):
        self.n, self.was = n, None

    def __enter__(self):
        if self.n is not None:
            self.was = torch.get_num_threads()
            torch.set_num_threads(int(self.n))
        return self

    def __exit__(self, *exc):
        if self.was is not None:
            torch.set_num_threads(self.was)
        return False


# ----------------------------------------------------------------------------- the study
def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise UserError(f"--seeds must be at least 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise UserError(f"--seeds must be distinct non-negative integers, got {list(seeds)}")
    return out


def _preflight(recipe: Recipe, variants: Sequence[str], train: DataSet, test: DataSet) -> None:
    """Everything that can be bad input, before any training: the model fits the data, the
    rank fits every layer, the labels fit the outputs."""
    from .common import check_data_fits

    if train.y.is_floating_point():
        raise UserError("BNN training needs integer class labels; the data has float targets")
    for v in variants:
        model = build_posterior(recipe, v, 0, train)
        check_data_fits(model.net, train, f"{v} ({recipe.arch})", "--data (train)")
        check_data_fits(model.net, test, f"{v} ({recipe.arch})", "--data (test)")


def record_values(curves: TrainingCurves) -> dict[str, np.ndarray]:
    return {
        R.STEP.name: curves.step,
        R.ELBO.name: curves.elbo,
        R.NLL_TERM.name: curves.nll,
        R.KL_TERM.name: curves.kl,
        R.TRAIN_ACCURACY.name: curves.accuracy,
        R.SECONDS.name: curves.seconds,
    }


def record_outcomes(res: SeedResult) -> dict[str, Any]:
    c, info = res.curves, res.sidecar.get("bnn", {})
    return {
        R.FINAL_ELBO.name: c.final_elbo,
        R.FINAL_NLL_TERM.name: float(c.nll[-1]),
        R.FINAL_KL_TERM.name: float(c.kl[-1]),
        R.FINAL_TRAIN_ACCURACY.name: float(c.accuracy[-1]),
        R.STEPS.name: int(c.step[-1]),
        R.TRAIN_SECONDS.name: float(c.seconds[-1]),
        R.NUM_DATA.name: int(info.get(R.NUM_DATA.name, 0)),
        R.COORDINATES.name: int(info.get(R.COORDINATES.name, 0)),
        R.VARIATIONAL_PARAMETERS.name: int(info.get(R.VARIATIONAL_PARAMETERS.name, 0)),
        R.POSTERIOR.name: info.get(R.POSTERIOR.name, {}),
        R.OBJECTIVE.name: OBJECTIVE,
    }


def study(
    out: str | Path,
    *,
    arch: str = "mlp",
    variants: Sequence[str] = ("standard", "w-asym"),
    seeds: int | Sequence[int] = 3,
    data: str = "digits",
    preset: str | None = None,
    output: str | Path | None = None,
    device: str | None = "auto",
    samples: int | None = None,
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
    connect_timeout: float = 10.0,
    group_prefix: str = "",
    test_samples: int = 25,
    calibration: bool = True,
    threads: int | None = None,
    force: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> pd.DataFrame:
    """Train a posterior per (variant, seed) under ``out`` and record curves and calibration.

    ``preset`` names a recipe of :data:`PRESETS` (default from ``arch`` and ``data``);
    ``overrides`` are :class:`Recipe` fields (``steps=``, ``lr=``, ``rank=``, ...).
    ``output``: the results file (default ``out/results.h5``); ``group_prefix`` is put
    before each variant to name its group folder; ``test_samples``: S of the Monte Carlo
    predictive for the test metrics; ``threads``: torch CPU threads while training (None:
    unchanged; 1 is fastest for small models). Returns the per-group summary of the ``bnn`` and
    ``calibration`` records.
    """
    from checkpoints.zoo import _check_variant
    from landscape.distributed import make_executor

    from . import calibration as cal

    recipe = make_recipe(preset, arch=arch, data=data, **overrides)
    variants = [_check_variant(v) for v in variants]
    if len(set(variants)) != len(variants):
        raise UserError(f"--variants lists a variant twice: {variants}")
    seed_list = _seed_list(seeds)
    cal.check_settings(test_samples, 15, "test")
    if group_prefix and ("/" in group_prefix or group_prefix.startswith(".")):
        raise UserError(f"--group-prefix {group_prefix!r}: must not hold '/' or start with '.'")
    root = Path(out)
    output = Path(output) if output is not None else root / "results.h5"
    dev = resolve_device(device)
    train = load_data(data, "train", samples=samples)
    test = load_data(data, "test", samples=samples)
    _preflight(recipe, variants, train, test)
    # bad --workers / --gpus / --scheduler fail before anything is written
    ex = make_executor(workers, scheduler, gpus=gpus, connect_timeout=connect_timeout)
    store = ResultsStore(output, adopt_foreign=force)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(os_error_line(root, exc, "write", "choose another --out")) from exc
    store.acquire()
    ctx = StudyContext({}, data, store, dev, samples, None, None, force, progress)
    ctx._data.update(train=train, test=test)
    groups = {v: f"{group_prefix}{v}" for v in variants}
    jobs = [(groups[v], v, s) for v in variants for s in seed_list]
    if progress:
        print(
            f"bnn: {len(jobs)} posterior(s) ({recipe.arch}, {', '.join(variants)} x "
            f"{len(seed_list)} seeds) x {recipe.steps} steps of batch {recipe.batch_size} "
            f"on {len(train)} training samples",
            file=sys.stderr,
        )
    inline = not ex.remote
    if threads is not None and (isinstance(threads, bool) or int(threads) < 1):
        raise UserError(f"--threads must be at least 1, got {threads}")
    task = SeedTask(str(root), recipe, train, str(dev), force, progress and inline, threads)
    settings = recipe.to_dict()
    refresh: set[str] = set()
    runs: dict[str, list[Run]] = {g: [] for g in groups.values()}
    t0 = time.perf_counter()
    try:
        with ex:
            bar = tqdm(total=len(jobs), desc="posteriors", disable=not progress or inline)
            for res in ex.map(task, jobs):
                bar.update(1)
                run = res.run
                runs[res.group].append(run)
                ctx.groups = {
                    g: sorted(r, key=lambda r: int(r.seed[4:])) for g, r in runs.items() if r
                }
                key = f"{ANALYSIS}/{res.group}/{run.key}"
                if res.trained:
                    refresh.add(f"{cal.ANALYSIS}/{res.group}/{run.key}")
                if res.trained or not ctx.should_skip(key):
                    attrs = ctx.record_attrs(
                        ANALYSIS, res.group, run, splits=("train",), **settings
                    )
                    attrs.update(record_outcomes(res))
                    R.BNN.write(store, key, record_values(res.curves), attrs)
            bar.close()
        if progress:
            print(f"bnn: training done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if calibration:
            cal.study(ctx, split="test", mc_samples=test_samples, refresh=refresh)
        return summary(store, list(runs))
    finally:
        store.close()


def summary(store: ResultsStore, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: test accuracy, NLL, ECE, Brier (calibration) and the final ELBO and terms (bnn)."""
    from . import calibration as cal

    return summarise(
        store, [cal.ANALYSIS, ANALYSIS], full=True, groups=list(groups) if groups else None
    )
