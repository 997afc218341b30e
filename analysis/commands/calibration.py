"""landscape calibration: accuracy, NLL, Brier score, ECE and reliability bins of every checkpoint."""

from __future__ import annotations

from ..common import (
    add_data,
    add_executor,
    add_output,
    add_roots,
    context_from_args,
    positive_int,
    print_table,
)

HELP = (
    "calibration of every checkpoint (deterministic: softmax; posterior: Monte Carlo predictive): "
    "accuracy, NLL, Brier, ECE (15 bins) and reliability diagrams"
)
EXAMPLE = "landscape calibration bnn --data digits --mc-samples 25 -o results.h5"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_output(p)
    add_executor(p, "networks")
    g = p.add_argument_group("calibration")
    g.add_argument(
        "--mc-samples",
        type=positive_int,
        default=25,
        metavar="S",
        help="posterior samples of the Monte Carlo predictive (default: %(default)s)",
    )
    g.add_argument(
        "--bins",
        type=positive_int,
        default=15,
        help="confidence bins of the ECE (default: %(default)s)",
    )
    g.add_argument(
        "--split",
        default="test",
        choices=("train", "test"),
        help="data split (default: %(default)s)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the posterior noise (default: %(default)s)"
    )


def run(args) -> int:
    from checkpoints import discover
    from checkpoints.posterior import is_posterior, load_posterior

    from ..calibration import study
    from ..common import check_output

    check_output(args.output)
    # posteriors are checked against their architecture before the results file is touched
    for runs in discover(args.roots).values():
        for r in runs:
            if is_posterior(r.final):
                load_posterior(r.final, arch=args.arch)
    ctx = context_from_args(args)
    df = study(ctx, split=args.split, mc_samples=args.mc_samples, n_bins=args.bins, seed=args.seed)
    print_table(
        df, f"calibration on the {args.split} split (mean ± std over seeds) -> {args.output}"
    )
    return 0
