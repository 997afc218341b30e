"""landscape bnn: variational (ELRG) training of standard and asymmetric networks, one task per seed."""

from __future__ import annotations

from pathlib import Path

from landscape.errors import UserError

from ..common import (
    add_executor,
    check_output,
    executor_kwargs,
    finite_float,
    nonnegative_int,
    positive_int,
    print_table,
    write_error,
)

HELP = (
    "train Bayesian networks (low-rank + diagonal Gaussian posteriors) per variant and seed: "
    "OUT/<variant>/seed<k>/posterior.pt, training curves and test calibration in OUT/results.h5"
)
EXAMPLE = (
    "landscape bnn --arch mlp --variants standard,w-asym --seeds 3 --data cifar10:DIR --out bnn/"
)


def add_arguments(p) -> None:
    p.add_argument(
        "--arch", default="mlp", help="zoo architecture: mlp, cnn, resnet20 (default: %(default)s)"
    )
    p.add_argument(
        "--variants",
        default="standard,w-asym",
        help="comma-separated variants (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=3,
        help="seeds 0..N-1 per variant (default: %(default)s)",
    )
    p.add_argument("--out", default="bnn", metavar="DIR", help="run folders (default: %(default)s)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="FILE",
        help="results file (default: OUT/results.h5); OUT/report.html is rendered beside it",
    )
    d = p.add_argument_group("data and device")
    d.add_argument(
        "--data", default="digits", metavar="SPEC", help="data spec (default: %(default)s)"
    )
    d.add_argument(
        "--samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="seeded subset of N samples per split",
    )
    d.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    d.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads while training (default: torch's choice; 1 is fastest for small models)",
    )
    add_executor(p, "seeds")
    r = p.add_argument_group("recipe (a preset; any option below overrides it)")
    r.add_argument(
        "--preset",
        default=None,
        help="cifar10-mlp | cifar10-resnet20 | digits-mlp (default: from --arch and --data)",
    )
    r.add_argument("--steps", type=positive_int, default=None, help="Adam steps")
    r.add_argument("--batch-size", type=positive_int, default=None, help="training batch size")
    r.add_argument(
        "--lr", type=finite_float(0, strict=True), default=None, help="Adam learning rate"
    )
    r.add_argument(
        "--rank", type=nonnegative_int, default=None, help="rank r of the low-rank part (paper: 4)"
    )
    r.add_argument(
        "--learn-diag",
        action="store_true",
        default=None,
        help="learn the diagonal (default: fixed)",
    )
    r.add_argument(
        "--q-init-logvar", type=finite_float(), default=None, help="initial (or fixed) log-variance"
    )
    r.add_argument(
        "--prior-precision",
        type=finite_float(0, strict=True),
        default=None,
        metavar="LAMBDA",
        help="prior N(0, 1/(LAMBDA fan)) per layer",
    )
    r.add_argument("--prior-scaling", default=None, choices=("fan_in", "public", "none"))
    r.add_argument(
        "--mc-samples", type=positive_int, default=None, help="forward passes per step (default 1)"
    )
    r.add_argument(
        "--log-every",
        type=positive_int,
        default=None,
        metavar="K",
        help="curve point and saved state every K steps",
    )
    r.add_argument("--num-data", type=positive_int, default=None, metavar="N", help="N in KL/N")
    r.add_argument(
        "--width", type=positive_int, default=None, help="hidden width / width multiplier"
    )
    r.add_argument("--depth", type=positive_int, default=None, help="hidden layers (mlp)")
    r.add_argument("--kappa", type=finite_float(), default=None, help="W-Asym fixed-value scale")
    r.add_argument("--mask-seed", type=int, default=None, help="seed of the asymmetry constants")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--test-samples",
        type=positive_int,
        default=25,
        metavar="S",
        help="Monte Carlo samples of the test predictive (default: %(default)s)",
    )
    e.add_argument("--group-prefix", default="", help="text before each variant's group name")
    e.add_argument("--no-report", action="store_true", help="do not render OUT/report.html")
    p.add_argument(
        "--force", action="store_true", help="retrain complete runs and recompute records"
    )


def run(args) -> int:
    from ..bnn import study

    out = check_output(args.out, "--out", folder=True)
    output = check_output(args.output or out / "results.h5")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants:
        raise UserError("--variants names no variant: e.g. --variants standard,w-asym")
    arch_kwargs = {
        k: getattr(args, k) for k in ("width", "depth", "kappa") if getattr(args, k) is not None
    }
    df = study(
        out,
        arch=args.arch,
        variants=variants,
        seeds=args.seeds,
        data=args.data,
        preset=args.preset,
        output=output,
        device=args.device,
        samples=args.samples,
        **executor_kwargs(args),
        group_prefix=args.group_prefix,
        test_samples=args.test_samples,
        threads=args.threads,
        force=args.force,
        progress=not args.quiet,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        rank=args.rank,
        learn_diag=args.learn_diag,
        q_init_logvar=args.q_init_logvar,
        prior_precision=args.prior_precision,
        prior_scaling=args.prior_scaling,
        mc_samples=args.mc_samples,
        log_every=args.log_every,
        num_data=args.num_data,
        mask_seed=args.mask_seed,
        arch_kwargs=arch_kwargs or None,
    )
    print_table(
        df,
        f"BNN posteriors: test calibration and final training ELBO (mean ± std over seeds) -> {output}",
    )
    if not args.no_report:
        from reports import render_html

        from ..results import load

        report = (
            Path(output).with_name("report.html")
            if args.output is None
            else Path(output).with_suffix(".html")
        )
        try:
            render_html(load(output), report)
        except OSError as exc:
            raise write_error(report, exc) from exc
        print(f"report: {report}")
    return 0
