"""Calibration of a classifier's predictive distribution: accuracy, NLL, Brier score, ECE, reliability bins.

For predictive probabilities ``p_i`` (a deterministic network's softmax, or a posterior's
Monte Carlo predictive from :func:`landscape.bnn.predictive_log_probs`) and labels ``y_i``,
over all N samples (exact sample means, accumulated batch by batch):

- accuracy: ``(1/N) sum_i [argmax p_i = y_i]``;
- NLL: ``-(1/N) sum_i log p_i[y_i]`` (from log-probabilities: a posterior's by log-sum-exp);
- Brier score: ``(1/N) sum_i sum_c (p_i[c] - [c = y_i])^2`` (Brier 1950: summed over classes,
  between 0 and 2);
- ECE: top-label confidence ``c_i = max p_i`` in ``n_bins`` equal-width bins
  ``[b/n, (b+1)/n)``, ``ECE = sum_b (n_b / N) |acc_b - conf_b|``, as torchmetrics'
  ``MulticlassCalibrationError(n_bins=15, norm="l1")`` defines it: a confidence of exactly 1
  falls in a bin of its own (``[1, 1]``, the last entry of the reliability bins).

The reliability diagram is the per-bin ``(conf_b, acc_b, n_b)``; empty bins hold NaN.
Nothing here writes files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .data import Data, as_batches
from .errors import UserError
from .evaluation import batch_outputs, check_targets

DEFAULT_BINS = 15


@dataclass(frozen=True)
class Calibration:
    """Calibration metrics of one predictive distribution (see the module doc for definitions).

    ``bin_lower``/``bin_upper`` are the edges of the ``n_bins + 1`` reliability bins (the last
    is the point ``[1, 1]``); ``bin_confidence``/``bin_accuracy`` their mean confidence and
    accuracy (NaN where empty), ``bin_count`` their sample counts. ``mc_samples`` is S of a
    posterior predictive, 0 for a deterministic network.
    """

    accuracy: float
    nll: float
    brier: float
    ece: float
    num_samples: int
    num_classes: int
    mc_samples: int
    bin_lower: np.ndarray
    bin_upper: np.ndarray
    bin_confidence: np.ndarray
    bin_accuracy: np.ndarray
    bin_count: np.ndarray

    @property
    def bin_center(self) -> np.ndarray:
        return (self.bin_lower + self.bin_upper) / 2

    def to_frame(self) -> pd.DataFrame:
        """The reliability bins, one row per bin."""
        return pd.DataFrame(
            {
                "lower": self.bin_lower,
                "upper": self.bin_upper,
                "confidence": self.bin_confidence,
                "accuracy": self.bin_accuracy,
                "count": self.bin_count,
            }
        )

    def summary(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "nll": self.nll, "brier": self.brier, "ece": self.ece}


class CalibrationSums:
    """Running sums over batches of log-probabilities, for exact sample means at the end."""

    def __init__(self, n_bins: int = DEFAULT_BINS, device: torch.device | str = "cpu"):
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise UserError(f"--bins must be a positive integer, got {n_bins!r}")
        self.n_bins = n_bins
        # float64 edges; a confidence of exactly 1 lands at index n_bins (its own bin)
        self.edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=device)
        z = torch.zeros((), dtype=torch.float64, device=device)
        self.nll, self.brier, self.correct, self.n = z.clone(), z.clone(), z.clone(), 0
        self.conf_sum = torch.zeros(n_bins + 1, dtype=torch.float64, device=device)
        self.acc_sum = torch.zeros_like(self.conf_sum)
        self.count = torch.zeros_like(self.conf_sum)
        self.num_classes = 0

    def add(self, log_probs: Tensor, y: Tensor) -> None:
        """Add a batch: ``log_probs`` (B, C) log predictive probabilities, ``y`` (B,) labels."""
        lp = log_probs.double()
        p = lp.exp()
        self.num_classes = int(lp.shape[1])
        self.nll += -lp.gather(1, y[:, None]).sum()
        onehot = torch.nn.functional.one_hot(y, lp.shape[1]).double()
        self.brier += ((p - onehot) ** 2).sum()
        conf, pred = p.max(dim=1)
        hit = (pred == y).double()
        self.correct += hit.sum()
        idx = torch.bucketize(conf, self.edges, right=True) - 1
        idx = idx.clamp(0, self.n_bins)
        self.count.scatter_add_(0, idx, torch.ones_like(conf))
        self.conf_sum.scatter_add_(0, idx, conf)
        self.acc_sum.scatter_add_(0, idx, hit)
        self.n += int(y.shape[0])

    def result(self, mc_samples: int = 0) -> Calibration:
        if self.n == 0:
            raise UserError("calibration needs at least one sample")
        n = self.n
        count = self.count.cpu().numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = self.conf_sum.cpu().numpy() / count
            acc = self.acc_sum.cpu().numpy() / count
        ece = float((self.acc_sum - self.conf_sum).abs().sum()) / n
        edges = self.edges.cpu().numpy()
        return Calibration(
            accuracy=float(self.correct) / n,
            nll=float(self.nll) / n,
            brier=float(self.brier) / n,
            ece=ece,
            num_samples=n,
            num_classes=self.num_classes,
            mc_samples=int(mc_samples),
            bin_lower=np.append(edges[:-1], 1.0),
            bin_upper=np.append(edges[1:], 1.0),
            bin_confidence=np.where(count > 0, conf, np.nan),
            bin_accuracy=np.where(count > 0, acc, np.nan),
            bin_count=count.astype(np.int64),
        )


def calibration_metrics(
    probs: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    *,
    n_bins: int = DEFAULT_BINS,
    log: bool = False,
) -> Calibration:
    """:class:`Calibration` of predictive probabilities ``(N, C)`` (``log=True``: log-probabilities)."""
    p = torch.as_tensor(probs)
    y = torch.as_tensor(labels).long()
    if p.dim() != 2 or y.shape != (p.shape[0],):
        raise UserError(
            f"expected probabilities (N, C) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}"
        )
    check_targets(p, (int(y.min()), int(y.max())))
    sums = CalibrationSums(n_bins, p.device)
    sums.add(p.double() if log else p.double().clamp_min(0).log(), y)
    return sums.result()


@torch.no_grad()
def calibrate(
    model: nn.Module,
    data: Data,
    *,
    samples: int = 25,
    n_bins: int = DEFAULT_BINS,
    seed: int = 0,
    device=None,
) -> Calibration:
    """Calibration of ``model`` on ``data`` (model in eval mode, restored afterwards).

    A :class:`landscape.bnn.VariationalNet` predicts with the Monte Carlo predictive of
    ``samples`` draws (noise seeded by ``seed``); any other model with its softmax. Labels
    outside the model's outputs, or float targets, are bad input.
    """
    from .bnn import VariationalNet, predictive_log_probs

    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"the number of Monte Carlo samples S must be at least 1, got {samples!r}")
    batches = as_batches(data, device=device)
    if batches.label_range() is None:
        raise UserError("calibration needs integer class labels, the data has float targets")
    variational = isinstance(model, VariationalNet)
    if variational:
        model.reseed(seed)
    sums = CalibrationSums(n_bins, batches.device)
    for lp, y in batch_outputs(
        model, batches, forward=lambda x: predictive_log_probs(model, x, samples)
    ):
        sums.add(lp, y)
    res = sums.result(samples if variational else 0)
    if not math.isfinite(res.nll):
        raise UserError(
            "the NLL is NaN or Inf on this data: check the checkpoint and the data normalisation"
        )
    return res
