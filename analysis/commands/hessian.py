"""landscape hessian: Hessian eigenvalues, trace and spectral density per group and seed."""

from __future__ import annotations

import math

import pandas as pd

from landscape.errors import UserError

from ..common import add_data, add_output, add_roots, context_from_args, print_table

HELP = "Hessian spectra of every trained network: top and bottom eigenvalues (Lanczos), trace (Hutch++), spectral density (SLQ)"
EXAMPLE = "landscape hessian runs --data digits --top-k 10 --density -o results.h5"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_output(p)
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
    g.add_argument(
        "--density-runs",
        type=int,
        default=10,
        metavar="R",
        help="SLQ random vectors (default: %(default)s)",
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
    g.add_argument(
        "--trace-method",
        default="hutch++",
        choices=("hutch++", "hutchinson"),
        help="trace estimator (default: %(default)s)",
    )
    g.add_argument(
        "--trace-queries",
        type=int,
        default=60,
        metavar="M",
        help="Hessian-vector products for the trace (default: %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random start and probe vectors (default: %(default)s)",
    )


def _check(args) -> None:
    for name, lo in (("top_k", 1), ("density_runs", 1), ("lanczos_steps", 1), ("trace_queries", 3)):
        if getattr(args, name) < lo:
            raise UserError(
                f"--{name.replace('_', '-')} must be at least {lo}, got {getattr(args, name)}"
            )
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")


def _ms(m: float, s: float) -> str:
    if math.isnan(m):
        return "-"
    return f"{m:.4g}" if math.isnan(s) else f"{m:.4g} ± {s:.2g}"


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
        num_runs=args.density_runs,
        lanczos_steps=args.lanczos_steps,
        sigma=args.sigma,
        num_queries=args.trace_queries,
        trace_method=args.trace_method,
        params=params,
        seed=args.seed,
    )
    table = pd.DataFrame(
        {
            "group": df.group,
            "variant": df.variant,
            "seeds": df.seeds,
            **{
                c: [_ms(m, s) for m, s in zip(df[f"{c}_mean"], df[f"{c}_std"])]
                for c in ("lambda_max", "lambda_min", "trace")
            },
            "neg_mass": [
                _ms(m, s) for m, s in zip(df["negative_mass_mean"], df["negative_mass_std"])
            ],
        }
    )
    print_table(table, f"Hessian of the {args.split} loss (mean ± std over seeds) -> {args.output}")
    return 0
