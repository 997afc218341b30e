"""landscape surface: one 1-D or 2-D loss surface per group, resumable, optionally on Dask."""

from __future__ import annotations

from landscape.errors import UserError

from ..common import (
    add_data,
    add_executor,
    add_objective,
    add_output,
    add_roots,
    context_from_args,
    print_table,
)

HELP = "loss surfaces along filter-normalised random directions (or the plane through three seeds, or the training trajectory's principal components), one per group"
EXAMPLE = "landscape surface runs --data digits --steps 41 --span 1 -o results.h5 [--plane seed0,seed1,seed2 | --directions pca] [--loss lm] [--workers 2]"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_objective(p)
    add_output(p)
    g = p.add_argument_group("surface")
    g.add_argument(
        "--steps", type=int, default=41, help="grid points per axis (default: %(default)s)"
    )
    g.add_argument(
        "--span",
        type=float,
        default=None,
        help="grid from -SPAN to SPAN along each direction (default: 1; with --plane: a square "
        "around A, B, C; with --directions pca: the extent of the projected trajectory)",
    )
    g.add_argument(
        "--dims",
        type=int,
        choices=(1, 2),
        default=2,
        help="1-D line or 2-D plane of random directions (default: %(default)s)",
    )
    g.add_argument(
        "--plane",
        default=None,
        metavar="A,B,C",
        help="the plane through three seeds of each group (origin A) instead of random directions",
    )
    g.add_argument(
        "--directions",
        choices=("random", "pca"),
        default="random",
        help="random: filter-normalised Gaussian directions; pca: the top principal components "
        "of the first seed's training trajectory (init, step<k>.pt or epoch<k>.pt, final; "
        "Li et al. 2018), the trajectory drawn on the plane (default: %(default)s)",
    )
    g.add_argument(
        "--normalization",
        choices=("filter", "layer", "weight", "none"),
        default="filter",
        help="direction normalisation (Li et al. 2018; default: %(default)s)",
    )
    g.add_argument(
        "--direction-seed",
        type=int,
        default=0,
        help="seed of the random directions, the same for every group (default: %(default)s)",
    )
    g.add_argument(
        "--bn",
        choices=("eval", "reset"),
        default="eval",
        help="BatchNorm statistics: the model's own (eval) or re-estimated on the train split at every point (reset)",
    )
    g.add_argument(
        "--split",
        choices=("train", "test"),
        default="train",
        help="data split the loss is measured on (default: %(default)s)",
    )
    g.add_argument(
        "--radius",
        type=float,
        default=None,
        help="radius of the mean loss rise in the summary (default: half the half-span)",
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="grid points per chunk / task (default: one row of the grid)",
    )
    add_executor(p, "grid chunks")


def run(args) -> int:
    from ..surfaces import study

    if args.steps < 2:
        raise UserError(f"--steps must be at least 2, got {args.steps}")
    if args.span is not None and args.span <= 0:
        raise UserError(f"--span must be positive, got {args.span}")
    if args.plane and args.directions != "random":
        raise UserError("--plane and --directions pca exclude each other: choose one")
    if args.directions == "pca":  # before the results file is touched
        from checkpoints import discover

        from ..surfaces import check_trajectories

        check_trajectories(discover(args.roots), args.dims)
    ctx = context_from_args(args)
    df = study(
        ctx,
        steps=args.steps,
        span=args.span,
        plane=args.plane,
        dims=args.dims,
        normalization=args.normalization,
        direction_seed=args.direction_seed,
        bn=args.bn,
        split=args.split,
        radius=args.radius,
        chunk_size=args.chunk_size,
        directions=args.directions,
    )
    print_table(
        df,
        f"loss surfaces ({args.split} split; rise at radius = mean loss rise on the circle of that radius) -> {ctx.store.path}",
    )
    return 0
