"""landscape train: train zoo models into a checkpoint directory, or a population of networks."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from checkpoints.sources import load_data
from checkpoints.train import SCHEDULES, TrainSettings, normalise_augment, train_group
from landscape.distributed import make_executor
from landscape.errors import UserError

from ..common import (
    add_executor,
    check_output,
    executor_kwargs,
    finite_float,
    nonnegative_int,
    positive_int,
    print_table,
)

HELP = (
    "train zoo models (variants x seeds) into ROOT/<variant>/seed<k>/{init,final}.pt with "
    "sidecars, or a population (--population N) with hyperparameters drawn per network"
)
EXAMPLE = (
    "landscape train --arch mlp --variants standard,w-asym,sigma-asym --seeds 4 --data digits --epochs 20 --out runs\n"
    "  landscape train --population 200 --arch resnet8 --variants standard,w-asym,sigma-asym,standard-small "
    "--data cifar10:DIR --out pops"
)
#: training settings when neither the command line nor a population draws them
DEFAULTS = TrainSettings()


def add_arguments(p) -> None:
    p.add_argument(
        "--arch",
        default=None,
        help="zoo architecture: mlp, cnn, resnet20, resnet8, transformer (default: mlp; resnet8 for a population)",
    )
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated variants (default: standard,w-asym,sigma-asym; a population also "
        "takes standard-small, the parameter-matched standard control)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=4,
        help="number of training seeds 0..N-1 (default: %(default)s)",
    )
    p.add_argument("--data", default="digits", help="training data spec (default: %(default)s)")
    p.add_argument("--epochs", type=nonnegative_int, default=None, help="epochs (default: 25)")
    p.add_argument(
        "--lr",
        type=finite_float(0, strict=True),
        default=None,
        help="learning rate (default: 1e-3)",
    )
    p.add_argument(
        "--weight-decay",
        type=finite_float(0),
        default=None,
        help="AdamW weight decay (default: 0.03)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="batch size (default: 64; 512 for a population)",
    )
    p.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="hidden width (mlp), residual width (transformer) or width multiplier (resnet20, resnet8)",
    )
    p.add_argument(
        "--depth",
        type=nonnegative_int,
        default=None,
        help="hidden layers (mlp), blocks (transformer)",
    )
    p.add_argument(
        "--norm",
        default=None,
        help="norm layer: layer|batch|none (mlp), group|batch|layer (conv nets)",
    )
    p.add_argument(
        "--mask-seed",
        type=int,
        default=None,
        help="seed of the asymmetry constants, shared by all seeds of a group (default: 0)",
    )
    p.add_argument(
        "--samples", type=positive_int, default=None, help="train on a seeded subset of N samples"
    )
    p.add_argument("--out", required=True, metavar="ROOT", help="output checkpoint folder")
    p.add_argument(
        "--save-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="also keep epoch<k>.pt after every K-th epoch: the training trajectory "
        "(surface --directions pca)",
    )
    t = p.add_argument_group("schedule, label smoothing, augmentation")
    t.add_argument(
        "--schedule",
        default=None,
        choices=SCHEDULES,
        help="learning-rate schedule (default: constant; triangular for a population)",
    )
    t.add_argument(
        "--peak-epoch",
        type=finite_float(0),
        default=None,
        help="triangular: epoch of the peak (default: 5)",
    )
    t.add_argument(
        "--warmup-epochs",
        type=finite_float(0),
        default=None,
        help="cosine: linear warm-up epochs (default: 0)",
    )
    t.add_argument(
        "--label-smoothing",
        type=finite_float(0),
        default=None,
        help="label smoothing in [0, 1) (default: 0)",
    )
    t.add_argument(
        "--augment",
        default=None,
        help="none | crop (translate) | flip | crop+flip (images only; default: none; auto for a population)",
    )
    t.add_argument(
        "--augment-pad",
        type=nonnegative_int,
        default=None,
        help="crop: padding in pixels (default: 4; H/8 for a population)",
    )
    g = p.add_argument_group("population (hyperparameters drawn per network)")
    g.add_argument(
        "--population",
        type=positive_int,
        default=None,
        metavar="N",
        help="train N networks per variant, each with drawn hyperparameters",
    )
    g.add_argument(
        "--population-config",
        default=None,
        metavar="TOML",
        help="the [population] table: distributions and settings (see docs/metanet.md)",
    )
    g.add_argument(
        "--population-seed",
        type=int,
        default=None,
        help="seed of the hyperparameter draws (default: 0)",
    )
    g.add_argument(
        "--epochs-scale",
        type=finite_float(0, strict=True),
        default=None,
        help="multiply the drawn epochs and the peak epoch (small data; default: 1)",
    )
    g.add_argument("--group-prefix", default=None, help="text before each variant's folder name")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    g.add_argument(
        "--force", action="store_true", help="retrain networks whose folders are complete"
    )
    add_executor(p, "seeds (or networks of a population)")


def run(args) -> int:
    if args.population is not None or args.population_config is not None:
        return run_population(args)
    for opt in ("epochs_scale", "population_seed", "group_prefix"):
        if getattr(args, opt) is not None:
            raise UserError(
                f"--{opt.replace('_', '-')} applies to a population: add --population N"
            )
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    check_output(args.out, "--out", folder=True)
    train = load_data(args.data, "train", samples=args.samples)
    test = load_data(args.data, "test")
    kw = {k: getattr(args, k) for k in ("width", "depth", "norm") if getattr(args, k) is not None}
    chosen = {
        k: getattr(args, k)
        for k in (
            "epochs", "lr", "weight_decay", "batch_size", "schedule", "peak_epoch",
            "warmup_epochs", "label_smoothing", "augment_pad",
        )
        if getattr(args, k) is not None
    }  # fmt: skip
    if args.augment is not None:
        chosen["augment"] = normalise_augment(args.augment)
    settings = TrainSettings(**chosen).check()
    variants = [v for v in (args.variants or "standard,w-asym,sigma-asym").split(",") if v]
    task = SeedTask(
        args.out,
        args.arch or "mlp",
        train,
        test,
        settings,
        kw,
        args.mask_seed or 0,
        threads=torch.get_num_threads(),
        save_every=args.save_every,
    )
    jobs = [(v, s) for v in variants for s in range(args.seeds)]
    ex = make_executor(**executor_kwargs(args))  # bad flags fail before anything is written
    if not ex.remote:  # inline: one progress bar per model, as always
        runs = train_group(
            args.out, task.arch, variants, range(args.seeds), train, test, settings,
            arch_kwargs=kw, mask_seed=task.mask_seed, progress=not args.quiet,
            save_every=args.save_every,
        )  # fmt: skip
    else:
        if not args.quiet:
            print(f"executor: {ex.describe()}", file=sys.stderr)
        with ex:
            done = dict(
                tqdm(ex.map(task, jobs), total=len(jobs), desc="models", disable=args.quiet)
            )
        runs = [done[j] for j in jobs]
    from checkpoints import read_sidecar

    rows = []
    for r in runs:
        m = read_sidecar(r.final).get("metrics", {})
        rows.append({"group": r.group, "seed": r.seed, **m})  # every metric the sidecar holds
    print_table(pd.DataFrame(rows), f"trained {len(runs)} models under {args.out}")
    return 0


@dataclass
class SeedTask:
    """One (variant, seed) of ``landscape train`` as an executor task: trains and writes its own
    folder (the sidecar last, so a folder is complete only once it has one) and returns the
    :class:`~checkpoints.Run`. ``threads``: torch threads while training (the client's, so a
    worker trains bitwise what the inline run trains)."""

    root: str
    arch: str
    train: Any
    test: Any
    settings: TrainSettings
    arch_kwargs: dict[str, Any]
    mask_seed: int
    threads: int | None = None
    save_every: int | None = None

    def __call__(self, job: tuple[str, int]):
        variant, seed = job
        if self.threads:
            torch.set_num_threads(self.threads)
        (run,) = train_group(
            self.root, self.arch, [variant], [seed], self.train, self.test, self.settings,
            arch_kwargs=self.arch_kwargs, mask_seed=self.mask_seed, progress=False,
            save_every=self.save_every,
        )  # fmt: skip
        return job, run


def run_population(args) -> int:
    """``--population N``: the spec from the TOML (if any), then the command line."""
    if args.save_every is not None:
        raise UserError(
            "--save-every keeps the trajectory of seed runs, not of a population: leave it out"
        )
    from checkpoints.population import (
        read_population_config,
        spec_from_config,
        summary_rows,
        train_population,
    )

    check_output(args.out, "--out", folder=True)
    cfg = read_population_config(args.population_config)
    kw = {k: getattr(args, k) for k in ("width", "depth", "norm") if getattr(args, k) is not None}
    spec = spec_from_config(
        cfg,
        str(args.population_config or "command line"),
        arch=args.arch,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip())
        if args.variants
        else None,
        size=args.population,
        arch_kwargs=({**cfg.get("population", {}).get("arch_kwargs", {}), **kw} if kw else None),
        seed=args.population_seed,
        mask_seed=args.mask_seed,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        epochs=args.epochs,
        epochs_scale=args.epochs_scale,
        batch_size=args.batch_size,
        schedule=args.schedule,
        peak_epoch=args.peak_epoch,
        warmup_epochs=args.warmup_epochs,
        augment=normalise_augment(args.augment) if args.augment else None,
        augment_pad=args.augment_pad,
        group_prefix=args.group_prefix,
    )
    train = load_data(args.data, "train", samples=args.samples)
    test = load_data(args.data, "test")
    results = train_population(
        args.out,
        spec,
        train,
        test,
        **executor_kwargs(args),
        device=args.device,
        force=args.force,
        progress=not args.quiet,
    )
    print_table(
        pd.DataFrame(summary_rows(results)),
        f"population of {len(results)} networks under {args.out} (test accuracy mean ± std)",
    )
    return 0
