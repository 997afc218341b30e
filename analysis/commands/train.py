"""landscape train: train zoo models into a checkpoint directory."""

from __future__ import annotations

import pandas as pd

from checkpoints.sources import load_data
from checkpoints.train import TrainSettings, train_group
from landscape.errors import UserError

from ..common import (
    check_output,
    finite_float,
    nonnegative_int,
    positive_int,
    print_table,
)

HELP = "train zoo models (variants x seeds) and write ROOT/<variant>/seed<k>/{init,final}.pt with sidecars"
EXAMPLE = "landscape train --arch mlp --variants standard,w-asym,sigma-asym --seeds 4 --data digits --epochs 20 --out runs"


def add_arguments(p) -> None:
    p.add_argument(
        "--arch", default="mlp", help="zoo architecture: mlp, cnn, resnet20 (default: %(default)s)"
    )
    p.add_argument(
        "--variants",
        default="standard,w-asym,sigma-asym",
        help="comma-separated variants (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=4,
        help="number of training seeds 0..N-1 (default: %(default)s)",
    )
    p.add_argument("--data", default="digits", help="training data spec (default: %(default)s)")
    p.add_argument("--epochs", type=nonnegative_int, default=25)
    p.add_argument("--lr", type=finite_float(0, strict=True), default=1e-3)
    p.add_argument("--weight-decay", type=finite_float(0), default=0.03)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="hidden width (mlp) or width multiplier (resnet20)",
    )
    p.add_argument("--depth", type=nonnegative_int, default=None, help="hidden layers (mlp)")
    p.add_argument(
        "--norm",
        default=None,
        help="norm layer: layer|batch|none (mlp), group|batch|layer (conv nets)",
    )
    p.add_argument(
        "--mask-seed",
        type=int,
        default=0,
        help="seed of the asymmetry constants, shared by all seeds of a group",
    )
    p.add_argument(
        "--samples", type=positive_int, default=None, help="train on a seeded subset of N samples"
    )
    p.add_argument("--out", required=True, metavar="ROOT", help="output checkpoint folder")


def run(args) -> int:
    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    check_output(args.out, "--out", folder=True)
    train = load_data(args.data, "train", samples=args.samples)
    test = load_data(args.data, "test")
    kw = {k: getattr(args, k) for k in ("width", "depth", "norm") if getattr(args, k) is not None}
    settings = TrainSettings(
        epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size
    )
    runs = train_group(
        args.out,
        args.arch,
        [v for v in args.variants.split(",") if v],
        range(args.seeds),
        train,
        test,
        settings,
        arch_kwargs=kw,
        mask_seed=args.mask_seed,
        progress=not args.quiet,
    )
    from checkpoints import read_sidecar

    rows = []
    for r in runs:
        m = read_sidecar(r.final).get("metrics", {})
        rows.append({"group": r.group, "seed": r.seed, **m})  # every metric the sidecar holds
    print_table(pd.DataFrame(rows), f"trained {len(runs)} models under {args.out}")
    return 0
