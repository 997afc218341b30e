"""landscape demo: train the embedded default set and run every analysis on it.

MLP on the embedded 8x8 digits, variants standard, W-Asym and sigma-Asym, 4 seeds each,
trained into ``OUTDIR/checkpoints``, and a small BNN comparison (digits MLP posteriors,
standard vs W-Asym, ``OUTDIR/bnn``) and a small metanet population (``OUTDIR/populations``:
40 digits MLPs per variant, StatNN and MLP metanets); then ``landscape run`` with settings
small enough for a laptop CPU (a couple of minutes on 2 cores), writing ``OUTDIR/results.h5`` and
``OUTDIR/report.html``. Rerunning reuses the trained networks and complete records.

``--task modular``: small pre-norm transformers on modular addition ``(a + b) mod 97``
(embedded data), variants standard, W-Asym, sigma-Asym and head-Asym, 2 seeds each by
default, then the same study (no BNN, no population). It takes longer than the digits demo
(each transformer trains for 100 epochs), so it is not part of ``make demo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from landscape.errors import UserError

from ..common import check_output, int_at_least, nonnegative_int, positive_int
from .run import execute

HELP = "train the embedded default set (MLP on digits: standard, W-Asym, sigma-Asym x 4 seeds) and run every analysis on it"
EXAMPLE = "landscape demo -o out/demo"

VARIANTS = ("standard", "w-asym", "sigma-asym")
#: the sequence demo: data, architecture, variants and training recipe (grokking-style weight
#: decay; docs/transformers.md), and the defaults that differ from the digits demo
MODULAR: dict[str, Any] = {
    "data": "modular:97",
    "arch": "transformer",
    "variants": ("standard", "w-asym", "sigma-asym", "head-asym"),
    "train": {"epochs": 100, "batch_size": 256, "weight_decay": 1.0},
    "seeds": 2,
    "width": 64,
}
#: analysis settings of the demo: small, so the whole demo stays within a few minutes on 2 CPU cores
DEMO_CONFIG: dict[str, dict[str, Any]] = {
    "study": {"data": "digits"},
    "interpolation": {"num_points": 15},
    "symmetry": {"trials": 2, "audit_samples": 128},
    "hessian": {"top_k": 3, "num_runs": 2, "lanczos_steps": 30, "num_queries": 10, "seeds": 1},
    "surface": {"steps": 15},
}


def add_arguments(p) -> None:
    p.add_argument(
        "-o",
        "--output",
        default="out/demo",
        metavar="OUTDIR",
        help="output folder (default: %(default)s)",
    )
    p.add_argument(
        "--task",
        choices=("digits", "modular"),
        default="digits",
        help="digits: MLPs on the 8x8 digits (default); modular: transformers on (a + b) mod 97",
    )
    p.add_argument(
        "--seeds",
        type=int_at_least(2),
        default=None,
        help="seeds per variant (default: 4; 2 for --task modular)",
    )
    p.add_argument(
        "--epochs",
        type=nonnegative_int,
        default=None,
        help="training epochs (default: 10; 100 for --task modular)",
    )
    p.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="hidden width (default: 128; 64 for --task modular)",
    )
    p.add_argument(
        "--depth", type=positive_int, default=None, help="MLP hidden layers (default: the zoo's)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: %(default)s)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: torch's choice; 1 is fastest for these tiny models on a busy machine)",
    )
    p.add_argument(
        "--static", metavar="DIR", help="also write every figure as PNG and PDF into DIR"
    )
    p.add_argument(
        "--force", action="store_true", help="recompute analysis records that are already complete"
    )
    p.add_argument(
        "--bnn-seeds",
        type=nonnegative_int,
        default=3,
        help="seeds of the small BNN comparison (digits MLP, standard vs W-Asym; 0: none; default: %(default)s)",
    )
    p.add_argument(
        "--population",
        type=nonnegative_int,
        default=40,
        help="networks per variant of the small metanet population (digits MLP; 0: none; default: %(default)s)",
    )


def train_demo(
    root: str | Path,
    *,
    seeds: int = 4,
    epochs: int = 10,
    width: int = 128,
    depth: int | None = None,
    progress: bool = True,
):
    """Train (or reuse) the demo set under ``root``: ``root/<variant>/seed<k>/{init,final}.pt``."""
    from checkpoints.sources import load_data
    from checkpoints.train import TrainSettings, train_group

    if seeds < 2:
        raise UserError(f"--seeds must be at least 2 (barriers need pairs), got {seeds}")
    kw = {"width": width} | ({"depth": depth} if depth else {})
    return train_group(
        root,
        "mlp",
        VARIANTS,
        range(seeds),
        load_data("digits", "train"),
        load_data("digits", "test"),
        TrainSettings(epochs=epochs),
        arch_kwargs=kw,
        progress=progress,
        option="-o",
    )


def train_modular_demo(
    root: str | Path,
    *,
    seeds: int = MODULAR["seeds"],
    epochs: int = MODULAR["train"]["epochs"],
    width: int = MODULAR["width"],
    depth: int | None = None,
    progress: bool = True,
):
    """Train (or reuse) the sequence demo: transformers on modular addition, every variant."""
    from checkpoints.sources import load_data
    from checkpoints.train import TrainSettings, train_group

    kw = {"width": width} | ({"depth": depth} if depth else {})
    return train_group(
        root,
        MODULAR["arch"],
        MODULAR["variants"],
        range(seeds),
        load_data(MODULAR["data"], "train"),
        load_data(MODULAR["data"], "test"),
        TrainSettings(**{**MODULAR["train"], "epochs": epochs}),
        arch_kwargs=kw,
        progress=progress,
        option="-o",
    )


def bnn_demo(
    out: Path,
    *,
    seeds: int = 3,
    device: str = "auto",
    threads: int | None = 1,
    force: bool = False,
    progress: bool = True,
):
    """The small BNN comparison: digits MLP posteriors, standard vs W-Asym, into ``out/bnn`` and
    ``out/results.h5`` (groups ``bnn-standard``, ``bnn-w-asym``), trained on ``threads`` torch threads."""
    from ..bnn import study

    return study(
        out / "bnn",
        variants=("standard", "w-asym"),
        seeds=seeds,
        data="digits",
        preset="digits-mlp",
        output=out / "results.h5",
        device=device,
        group_prefix="bnn-",
        threads=threads,
        force=force,
        progress=progress,
    )


def run(args) -> int:
    out = Path(args.output)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; -o takes an output folder")
    check_output(out, folder=True)
    modular = args.task == "modular"
    chosen = {
        k: getattr(args, k) for k in ("seeds", "epochs", "width") if getattr(args, k) is not None
    }
    (train_modular_demo if modular else train_demo)(
        out / "checkpoints", depth=args.depth, progress=not args.quiet, **chosen
    )
    config = DEMO_CONFIG
    if modular:
        # a seeded 1,024-sample subset of each split: the transformers' Hessian products cost
        # far more per sample than the digits MLP's
        config = {**DEMO_CONFIG, "study": {"data": MODULAR["data"], "samples": 1024}}
    if args.bnn_seeds and not modular:
        bnn_demo(
            out,
            seeds=args.bnn_seeds,
            device=args.device,
            threads=args.threads or 1,  # small models: one thread is fastest (docs/bnn.md)
            force=args.force,
            progress=not args.quiet,
        )
    if args.population and not modular:
        from ..metanet import demo as metanet_demo

        metanet_demo(
            out, size=args.population, device=args.device, force=args.force, progress=not args.quiet
        )
    rc = execute(
        [out / "checkpoints"],
        out,
        config=config,
        device=None if args.device == "auto" else args.device,
        force=args.force,
        progress=not args.quiet,
        static=args.static,
        source="demo settings",
    )
    print(f"open {(out / 'report.html').resolve()} in a browser (works offline)")
    return rc
