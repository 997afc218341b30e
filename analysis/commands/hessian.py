"""landscape hessian: Hessian eigenvalues, trace and spectral density per group and seed."""

from __future__ import annotations

from landscape.errors import UserError

from ..common import add_data, add_executor, add_output, add_roots, context_from_args, print_table
from ..flags import renamed

HELP = "Hessian spectra of every trained network: top and bottom eigenvalues (Lanczos), trace (Hutch++), spectral density (SLQ)"
EXAMPLE = "landscape hessian runs --data digits --top-k 10 --density -o results.h5"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_output(p)
    add_executor(p, "networks")
    g = p.add_argument_group("hessian")
    g.add_argument(
        "--top-k",
        type=int,
        default=10,
        metavar="K",
        help="eigenvalues at each end of the spectrum (default: %(default)s)",
    )
    g.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="relative accuracy of the eigenvalues (default: %(default)s)",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="M",
        help="Lanczos step limit (default: min(n, 300), memory permitting)",
    )
    g.add_argument(
        "--split",
        default="train",
        choices=("train", "test"),
        help="data split whose mean loss is differentiated (default: %(default)s)",
    )
    g.add_argument(
        "--params",
        default=None,
        metavar="PATTERNS",
        help="comma-separated parameter subset: glob patterns, module prefixes or re:REGEX (default: all trainable)",
    )
    g.add_argument(
        "--density",
        action="store_true",
        help="also estimate the spectral density (stochastic Lanczos quadrature)",
    )
    renamed(
        g,
        "--density-runs",
        g.add_argument(
            "--num-runs",
            type=int,
            default=10,
            metavar="R",
            help="SLQ runs, one random start vector each (default: %(default)s)",
        ),
    )
    g.add_argument(
        "--lanczos-steps",
        type=int,
        default=80,
        metavar="S",
        help="Lanczos steps per SLQ run (default: %(default)s)",
    )
    g.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="Gaussian broadening width (default: 1%% of the spectral range)",
    )
    g.add_argument("--no-trace", action="store_true", help="skip the trace estimate")
    renamed(
        g,
        "--trace-method",
        g.add_argument(
            "--trace-estimator",
            default="hutch++",
            choices=("hutch++", "hutchinson"),
            help="trace estimator (default: %(default)s)",
        ),
    )
    renamed(
        g,
        "--trace-queries",
        g.add_argument(
            "--num-queries",
            type=int,
            default=60,
            metavar="M",
            help="Hessian-vector products for the trace (default: %(default)s)",
        ),
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random start and probe vectors (default: %(default)s)",
    )


def _check(args) -> None:
    for name, lo in (("top_k", 1), ("num_runs", 1), ("lanczos_steps", 1), ("num_queries", 3)):
        if getattr(args, name) < lo:
            raise UserError(
                f"--{name.replace('_', '-')} must be at least {lo}, got {getattr(args, name)}"
            )
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")


def run(args) -> int:
    from ..hessian import study

    _check(args)
    ctx = context_from_args(args)
    params = [p.strip() for p in args.params.split(",") if p.strip()] if args.params else None
    df = study(
        ctx,
        top_k=args.top_k,
        density=args.density,
        trace=not args.no_trace,
        split=args.split,
        tol=args.tol,
        max_steps=args.max_steps,
        num_runs=args.num_runs,
        lanczos_steps=args.lanczos_steps,
        sigma=args.sigma,
        num_queries=args.num_queries,
        trace_estimator=args.trace_estimator,
        params=params,
        seed=args.seed,
    )
    print_table(df, f"Hessian of the {args.split} loss (mean ± std over seeds) -> {args.output}")
    return 0
