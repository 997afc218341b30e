"""Calibration study: accuracy, NLL, Brier score, ECE and reliability bins of every checkpoint.

Records ``/calibration/<group>/<seedK>`` (one per final checkpoint; declared in
:mod:`landscape.records.calibration`). A deterministic checkpoint predicts with its softmax;
a posterior checkpoint (written by ``landscape bnn``) with the Monte Carlo predictive of
``mc_samples`` posterior draws, averaged by log-sum-exp (:mod:`landscape.calibration`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import partial
from typing import Any

import pandas as pd

from checkpoints.posterior import is_posterior, load_posterior
from landscape.calibration import DEFAULT_BINS, Calibration, calibrate
from landscape.errors import UserError
from landscape.records import calibration as R
from landscape.results import summarise

from .context import StudyContext
from .executor import Workspace, network_records, run_records

ANALYSIS = R.CALIBRATION.analysis
DEFINITION = (
    "accuracy = mean [argmax p = y]; nll = -mean log p[y] (posterior: log of the mean of S "
    "softmax outputs, by log-sum-exp); brier = mean sum_c (p[c] - [c = y])^2; ece = sum_b "
    "(n_b/N) |acc_b - conf_b| over equal-width top-label confidence bins [b/n, (b+1)/n) and "
    "the point confidence = 1 (torchmetrics MulticlassCalibrationError, norm l1)"
)


def record_values(cal: Calibration) -> dict[str, Any]:
    """Datasets of one record: the reliability bins."""
    return {
        R.BIN.name: cal.bin_center,
        R.BIN_LOWER.name: cal.bin_lower,
        R.BIN_UPPER.name: cal.bin_upper,
        R.BIN_CONFIDENCE.name: cal.bin_confidence,
        R.BIN_ACCURACY.name: cal.bin_accuracy,
        R.BIN_COUNT.name: cal.bin_count,
    }


def record_outcomes(cal: Calibration, split: str) -> dict[str, Any]:
    """Scalar attributes of one record."""
    return {
        R.ACCURACY.name: cal.accuracy,
        R.NLL.name: cal.nll,
        R.BRIER.name: cal.brier,
        R.ECE.name: cal.ece,
        R.NUM_SAMPLES.name: cal.num_samples,
        R.NUM_CLASSES.name: cal.num_classes,
        R.MC_SAMPLES.name: cal.mc_samples,
        R.PREDICTIVE.name: "posterior (Monte Carlo predictive)"
        if cal.mc_samples
        else "deterministic (softmax)",
        R.SPLIT.name: split,
        R.DEFINITION.name: DEFINITION,
    }


def check_settings(mc_samples: int, n_bins: int, split: str) -> None:
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise UserError(f"--mc-samples (S) must be at least 1, got {mc_samples!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise UserError(f"--bins must be a positive integer, got {n_bins!r}")
    if split not in ("train", "test"):
        raise UserError(f"--split must be train or test, got {split!r}")


def compute(
    ws: Workspace, job: tuple, *, split: str, mc_samples: int, n_bins: int, seed: int
) -> tuple[dict, dict]:
    """One network's (or posterior's) calibration record, on whichever process runs it."""
    _g, run = job
    if is_posterior(run.final):
        model = load_posterior(run.final, arch=ws.arch, device=ws.device, seed=seed)
    else:
        model = ws.model(run)
    cal = calibrate(model, ws.batches(split), samples=mc_samples, n_bins=n_bins, seed=seed)
    return record_values(cal), record_outcomes(cal, split)


def study(
    ctx: StudyContext,
    *,
    split: str = "test",
    mc_samples: int = 25,
    n_bins: int = DEFAULT_BINS,
    seed: int = 0,
    groups: Iterable[str] | None = None,
    refresh: Collection[str] = (),
) -> pd.DataFrame:
    """Calibration of every group's final checkpoints on ``split``; returns :func:`summary`.

    ``mc_samples``: S of a posterior's Monte Carlo predictive (deterministic checkpoints
    ignore it); ``seed`` seeds the posterior noise; ``refresh``: record keys to recompute even
    when complete (the BNN study's retrained posteriors).
    """
    check_settings(mc_samples, n_bins, split)
    settings = dict(split=split, mc_samples=mc_samples, n_bins=n_bins, seed=seed)
    names = list(groups or ctx.groups)
    jobs = [(g, r) for g in names for r in ctx.groups[g]]
    todo = [
        (g, r)
        for g, r in jobs
        if (key := f"{ANALYSIS}/{g}/{r.key}") in refresh or not ctx.should_skip(key)
    ]
    # every posterior is read and checked against its architecture before any record is
    # written (each task then loads its own copy, where it runs)
    for _g, r in todo:
        if is_posterior(r.final):
            load_posterior(r.final, arch=ctx.arch, device=ctx.device, seed=seed)

    write, label = network_records(ctx, R.CALIBRATION, (split,), settings)

    run_records(
        ctx,
        todo,
        partial(compute, split=split, mc_samples=mc_samples, n_bins=n_bins, seed=seed),
        write,
        splits=[split],
        models=[ctx.model(r) for _g, r in todo[:1] if not is_posterior(r.final)],
        desc="calibration",
        label=label,
    )
    return summary(ctx, names)


def summary(ctx: StudyContext, groups: Iterable[str] | None = None) -> pd.DataFrame:
    """Per group: accuracy, NLL, ECE and Brier score (mean ± std over seeds)."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(groups or ctx.groups))
