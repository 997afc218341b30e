"""Calibration metrics against independent computations and torchmetrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassCalibrationError

from checkpoints import zoo
from landscape.calibration import calibrate, calibration_metrics
from landscape.errors import UserError


def _reference(p: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """Plain NumPy, sample by sample: what the metrics mean."""
    n = len(y)
    conf, pred = p.max(1), p.argmax(1)
    hit = (pred == y).astype(float)
    bins: dict[int, list[int]] = {}
    for i in range(n):
        b = n_bins if conf[i] == 1.0 else int(np.floor(conf[i] * n_bins))
        bins.setdefault(b, []).append(i)
    ece = sum(len(ix) / n * abs(hit[ix].mean() - conf[ix].mean()) for ix in bins.values())
    onehot = np.eye(p.shape[1])[y]
    return {
        "accuracy": hit.mean(),
        "nll": -np.mean(np.log(p[np.arange(n), y])),
        "brier": np.mean(((p - onehot) ** 2).sum(1)),
        "ece": ece,
    }


def test_metrics_equal_independent_computations():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 7)) * 3
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 7, 500)
    cal = calibration_metrics(torch.from_numpy(p), torch.from_numpy(y))
    ref = _reference(p, y)
    for k, v in ref.items():
        assert getattr(cal, k) == pytest.approx(v, rel=1e-10, abs=1e-12), k
    assert cal.bin_count.sum() == 500 and len(cal.bin_count) == 16
    assert cal.to_frame().shape == (16, 5)
    # the bins reproduce the ECE
    w = cal.bin_count / 500
    ok = cal.bin_count > 0
    ece = np.sum(w[ok] * np.abs(cal.bin_accuracy[ok] - cal.bin_confidence[ok]))
    assert ece == pytest.approx(cal.ece, rel=1e-12)
    # log-probabilities give the same numbers
    log = calibration_metrics(torch.from_numpy(np.log(p)), torch.from_numpy(y), log=True)
    assert log.nll == pytest.approx(cal.nll, rel=1e-12)


@pytest.mark.parametrize("scale", [0.5, 3.0, 40.0])
def test_ece_equals_torchmetrics(scale):
    """MulticlassCalibrationError(n_bins=15, norm="l1") on random logits; at scale 40 many
    float32 confidences are exactly 1 (torchmetrics' own bin, and ours)."""
    g = torch.Generator().manual_seed(int(scale * 10))
    logits = torch.randn(2000, 10, generator=g) * scale
    y = torch.randint(0, 10, (2000,), generator=g)
    probs = logits.softmax(1)
    if scale == 40.0:
        assert (probs.max(1).values == 1.0).sum() > 100
    tm = MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")
    ours = calibration_metrics(probs, y)
    assert ours.ece == pytest.approx(float(tm(probs, y)), abs=1e-6)


def test_calibrate_a_model_batch_by_batch_is_exact():
    model = zoo.build("mlp", input_dim=5, num_classes=4, width=8, depth=1, seed=1)
    X, y = torch.randn(300, 5), torch.randint(0, 4, (300,))
    whole = calibration_metrics(model(X).softmax(1).detach(), y)
    batched = calibrate(model, [(X[i : i + 64], y[i : i + 64]) for i in range(0, 300, 64)])
    for k in ("accuracy", "nll", "brier", "ece"):
        assert getattr(batched, k) == pytest.approx(getattr(whole, k), rel=1e-6)
    np.testing.assert_array_equal(batched.bin_count, whole.bin_count)


def test_bad_input():
    model = zoo.build("mlp", input_dim=5, num_classes=4, width=8, depth=1)
    X = torch.randn(10, 5)
    with pytest.raises(UserError, match="labels range over 0..6 but the model has 4 outputs"):
        calibrate(model, (X, torch.arange(10) % 7))
    with pytest.raises(UserError, match="integer class labels"):
        calibrate(model, (X, torch.randn(10, 4)))
    with pytest.raises(UserError, match="at least 1"):
        calibrate(model, (X, torch.arange(10) % 4), samples=0)
