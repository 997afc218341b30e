"""landscape hessian: Hessian eigenvalues, trace and spectral density per group and seed."""

from __future__ import annotations

import math

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
from ..flags import renamed

HELP = "Hessian spectra of every trained network: top and bottom eigenvalues (Lanczos), trace (Hutch++, or from the density), spectral density (SLQ)"
EXAMPLE = "landscape hessian runs --data digits --top-k 10 --density -o results.h5"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p)
    add_objective(p)
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
        "--budget",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="scale the density's products (runs x steps) by FACTOR (default: %(default)s)",
    )
    g.add_argument(
        "--block-size",
        default="auto",
        metavar="B",
        help="vectors per Lanczos step of the eigenvalue solve without --density: 1 "
        "(single-vector), B > 1 (block Lanczos) or auto, measured (default: %(default)s)",
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
            default=None,
            choices=("hutch++", "hutchinson", "slq"),
            help="trace estimator (default: slq, from the density runs at no extra product, with "
            "--density and no --num-queries; hutch++ otherwise)",
        ),
    )
    renamed(
        g,
        "--trace-queries",
        g.add_argument(
            "--num-queries",
            type=int,
            default=None,
            metavar="M",
            help="Hessian-vector products for a hutch++ or hutchinson trace (default: 60)",
        ),
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random start and probe vectors (default: %(default)s)",
    )
    g.add_argument(
        "--per-layer",
        action="store_true",
        help="also the top eigenvalue(s) and trace of every layer's diagonal Hessian block "
        "(records hessian_layers/; their traces add up to the full trace)",
    )
    g.add_argument(
        "--layers-by",
        default="module",
        metavar="module|DEPTH",
        help="--per-layer: one layer per parameter-owning module, or per module-path prefix of "
        "DEPTH components (2: blocks.0 of a transformer) (default: %(default)s)",
    )


def _check(args) -> None:
    for name, lo in (("top_k", 1), ("num_runs", 1), ("lanczos_steps", 1), ("num_queries", 3)):
        value = getattr(args, name)
        if value is not None and value < lo:
            raise UserError(f"--{name.replace('_', '-')} must be at least {lo}, got {value}")
    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps must be positive, got {args.max_steps}")
    if not args.tol > 0:
        raise UserError(f"--tol must be positive, got {args.tol}")
    if not (args.budget > 0 and math.isfinite(args.budget)):
        raise UserError(f"--budget must be a positive number, got {args.budget}")
    if args.trace_estimator == "slq" and not args.density:
        raise UserError(
            "--trace-estimator slq takes the trace from the density's runs: add --density, or use hutch++"
        )
    args.block_size = block_size(args.block_size)
    args.layers_by = layers_by(args.layers_by) if args.per_layer else args.layers_by


def _word_or_count(text: str, word: str, option: str, count: str) -> str | int:
    """``word`` itself, or a positive integer (``count`` names it in the error)."""
    if text == word:
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise UserError(f"{option} must be {word} or a positive {count}, got {text!r}")
    return n


def block_size(text: str) -> int | str:
    """``--block-size``: ``auto`` or a positive integer."""
    return _word_or_count(text, "auto", "--block-size", "integer")


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
        block_size=args.block_size,
        budget=args.budget,
        params=params,
        seed=args.seed,
    )
    print_table(df, f"Hessian of the {args.split} loss (mean ± std over seeds) -> {args.output}")
    if args.per_layer:
        from ..layers import by_layer
        from ..layers import study as layers_study

        layers_study(
            ctx,
            top_k=min(args.top_k, 3),
            num_queries=args.num_queries or 30,
            by=args.layers_by,
            split=args.split,
            tol=max(args.tol, 1e-3),
            seed=args.seed,
        )
        table = by_layer(ctx.store, ctx.groups)
        cols = ["coordinates", "top eigenvalue", "trace"]
        per = table.groupby(["group", "layer"], sort=False)[cols].mean().reset_index()
        print_table(per, f"per layer (mean over networks) -> {args.output}")
    return 0


def layers_by(text: str) -> str | int:
    """``--layers-by``: ``module`` or a positive module-path depth."""
    return _word_or_count(text, "module", "--layers-by", "depth")
