"""landscape interpolate: pairwise barriers per group and MLI from initialisation."""

from __future__ import annotations

from landscape.errors import UserError

from ..common import (
    add_data,
    add_executor,
    add_objective,
    add_output,
    add_roots,
    context_from_args,
    int_at_least,
    print_table,
)
from ..flags import renamed

HELP = "linear-interpolation barriers between every pair of seeds per group (optionally weight-matched) and MLI curves from init"
EXAMPLE = "landscape interpolate runs --data digits --align -o results.h5 [--loss lm]"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_objective(p)
    add_output(p)
    add_executor(p, "pairs")
    g = p.add_argument_group("interpolation")
    renamed(
        g,
        "--points",
        g.add_argument(
            "--num-points",
            type=int_at_least(2),
            default=25,
            help="points on each curve, alpha in [0, 1] (default: %(default)s)",
        ),
    )
    g.add_argument(
        "--bn",
        choices=("eval", "reset"),
        default="eval",
        help="BatchNorm statistics: interpolate them (eval) or re-estimate on the train split at every point (reset; one extra pass per point)",
    )
    g.add_argument(
        "--splits", default="test,train", help="splits to evaluate (default: %(default)s)"
    )
    g.add_argument(
        "--align",
        action="store_true",
        help="also weight-match each standard pair (B onto A) and store aligned curves",
    )
    g.add_argument(
        "--align-all",
        action="store_true",
        help="align asymmetric groups too (a baseline; the permutation changes their function)",
    )
    g.add_argument("--no-mli", action="store_true", help="skip the init -> final MLI curves")


def run(args) -> int:
    from ..interpolation import study

    splits = [s for s in args.splits.split(",") if s]
    if not splits:
        raise UserError("--splits: name at least one split: train and/or test")
    for s in splits:
        if s not in ("train", "test"):
            raise UserError(f"--splits: unknown split {s!r}: use train and/or test")
    needs_train = not args.no_mli or args.bn == "reset"  # MLI and BN reset use the train split
    ctx = context_from_args(
        args,
        splits=[*splits, *(["train"] if needs_train else [])],
        inits=not args.no_mli,
        keep=True,
    )
    df = study(
        ctx,
        num_points=args.num_points,
        splits=splits,
        bn=args.bn,
        align="all" if args.align_all else args.align,
        mli=not args.no_mli,
    )
    print_table(
        df, f"interpolation barriers ({splits[0]} split, mean ± std over pairs) -> {ctx.store.path}"
    )
    return 0
