"""landscape metanet: predict a property of each network of a population from its weights."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

from landscape.errors import UserError
from landscape.records.metanet import DEFAULT_TARGET, METANETS

from ..common import (
    add_executor,
    add_output,
    add_roots,
    check_output,
    executor_kwargs,
    positive_int,
    print_table,
)

HELP = (
    "train metanetworks (linear, MLP, StatNN, DeepSets, DMC) that predict a sidecar value (test "
    "accuracy, ...) of every network of a population from its trainable weights; test R² and Kendall tau"
)
EXAMPLE = (
    "landscape metanet pops --target test_accuracy --metanets mlp,statnn --seeds 5 -o results.h5"
)
#: settings of the study, their defaults, and how a config file spells them ([metanet] table)
DEFAULTS: dict[str, Any] = {
    "target": DEFAULT_TARGET,
    "metanets": list(METANETS),
    "seeds": 5,
    "epochs": 50,
    "batch_size": 128,
    "lrs": [1e-3, 1e-4],
    "weight_decay": 0.01,
    "hidden": None,
    "split": [0.5, 0.25, 0.25],
    "split_seed": 0,
    "strict": False,
}


def _floats(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not out or not all(math.isfinite(v) for v in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return out


def _names(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def add_arguments(p) -> None:
    add_roots(p)
    add_output(p)
    p.add_argument(
        "--config",
        metavar="TOML",
        help="settings from the [metanet] table of a TOML file (e.g. analysis/presets/"
        "metanet_cifar10_resnet8.toml); options given here win",
    )
    g = p.add_argument_group("target and split")
    g.add_argument(
        "--target",
        help="sidecar value to predict: test_accuracy, train_accuracy, test_loss, generalisation_gap, "
        "a hyperparameter (lr, weight_decay, ...) or a dotted path (default: test_accuracy)",
    )
    g.add_argument(
        "--split",
        type=_floats,
        metavar="F,F,F",
        help="train, validation, test fractions of the networks (default: 0.5,0.25,0.25)",
    )
    g.add_argument("--split-seed", type=int, help="seed of the split (default: 0)")
    g.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="refuse networks with NaN/Inf weights or target (default: leave them out with a count)",
    )
    m = p.add_argument_group("metanets")
    m.add_argument(
        "--metanets",
        type=_names,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(METANETS)} (default: all; mlp_perm runs on "
        "standard populations only)",
    )
    m.add_argument("--seeds", type=positive_int, help="seeds per metanet (default: 5)")
    m.add_argument("--epochs", type=positive_int, help="training epochs (default: 50)")
    m.add_argument("--batch-size", type=positive_int, help="networks per batch (default: 128)")
    m.add_argument(
        "--lrs",
        type=_floats,
        metavar="LR,LR",
        help="learning rates swept; the best validation R² is kept (default: 1e-3,1e-4)",
    )
    m.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.01)")
    m.add_argument("--hidden", type=positive_int, help="hidden width (default: per metanet)")
    d = p.add_argument_group("device and scale")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    d.add_argument(
        "--arch",
        default=None,
        metavar="ARCH",
        help="architecture for checkpoints without a sidecar",
    )
    add_executor(p, "metanet runs")


def _types_ok(key: str, value: Any) -> bool:
    if key in ("target",):
        return isinstance(value, str)
    if key == "metanets":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if key in ("lrs", "split"):
        return isinstance(value, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        )
    if key == "strict":
        return isinstance(value, bool)
    if key == "weight_decay":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, int) and not isinstance(value, bool)  # seeds, epochs, ...


def settings_from(
    config: Mapping[str, Any], source: str, given: Mapping[str, Any]
) -> dict[str, Any]:
    """Defaults, then the ``[metanet]`` table of ``config`` (read from ``source``), then ``given``
    (the command line, None where not given); every value checked, one line per error."""
    table = config.get("metanet", {}) if config else {}
    if not isinstance(table, Mapping):
        raise UserError(f"{source}: metanet must be a table ([metanet])")
    unknown = set(table) - set(DEFAULTS)
    if unknown:
        raise UserError(
            f"{source}: unknown key(s) {sorted(unknown)} in [metanet]; expected {sorted(DEFAULTS)}"
        )
    for k, v in table.items():
        if not _types_ok(k, v) and not (k == "hidden" and v is None):
            raise UserError(f"{source}: [metanet] {k} = {v!r} has the wrong type; fix the file")
    out = {**DEFAULTS, **table, **{k: v for k, v in given.items() if v is not None}}
    bad = [m for m in out["metanets"] if m not in METANETS]
    if bad or not out["metanets"]:
        raise UserError(
            f"--metanets: unknown metanet {bad[0] if bad else ''!r}; use any of {', '.join(METANETS)}"
        )
    if any(not (lr > 0) for lr in out["lrs"]) or not out["lrs"]:
        raise UserError(f"--lrs {out['lrs']}: learning rates must be positive")
    split = out["split"]
    if len(split) != 3 or any(f <= 0 for f in split) or abs(sum(split) - 1) > 1e-6:
        raise UserError(
            f"--split {split}: three positive fractions summing to 1, e.g. 0.5,0.25,0.25"
        )
    for k in ("seeds", "epochs", "batch_size"):
        if out[k] < 1:
            raise UserError(f"--{k.replace('_', '-')} must be a positive integer, got {out[k]}")
    if not (out["weight_decay"] >= 0 and math.isfinite(out["weight_decay"])):
        raise UserError(f"--weight-decay must be a number >= 0, got {out['weight_decay']}")
    return out


def run(args) -> int:
    from checkpoints.population import read_population_config

    from ..metanet import open_study, study

    config = read_population_config(args.config)
    s = settings_from(
        config,
        str(args.config),
        {k: getattr(args, k) for k in DEFAULTS},
    )
    check_output(args.output)
    ctx, pops = open_study(
        args.roots,
        output=args.output,
        target=s["target"],
        strict=s["strict"],
        device=args.device,
        arch=args.arch,
        force=args.force,
        progress=not args.quiet,
        split=s["split"],
        **executor_kwargs(args),
    )
    try:
        df = study(
            ctx,
            target=s["target"],
            metanets=s["metanets"],
            seeds=s["seeds"],
            epochs=s["epochs"],
            batch_size=s["batch_size"],
            lrs=s["lrs"],
            weight_decay=s["weight_decay"],
            hidden=s["hidden"],
            split=s["split"],
            split_seed=s["split_seed"],
            populations=pops,
        )
    finally:
        ctx.store.close()
    print_table(
        df,
        f"metanets predicting {s['target']}: test R² and Kendall tau, mean ± std over "
        f"{s['seeds']} seed(s), one row per population -> {args.output}",
    )
    return 0
