"""The one evaluation kernel: loss and accuracy of a model (or of coordinates theta) on data.

Loss is the exact sample mean ``(1/N) sum_i l(f(x_i), y_i)`` over all samples, never a
mean of batch means. Classification (integer targets) uses cross-entropy and top-1
accuracy; float targets use squared error ``sum_j (f_j - y_j)^2`` per sample and report
no accuracy (NaN).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import Data, as_batches
from .errors import UserError

#: BatchNorm handling along a path or grid: running statistics as they are, or re-estimated per point
BN_MODES = ("eval", "reset")


@contextlib.contextmanager
def eval_mode(model: nn.Module, active: bool = True):
    """Eval mode inside the block, the caller's mode (``model.training``) restored after; a no-op when not ``active``."""
    if not active:
        yield model
        return
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    num_samples: int


def check_targets(outputs: Tensor, label_range: tuple[int, int] | None) -> None:
    """Raise :class:`UserError` unless integer labels ``lo..hi`` fit the model's outputs ``(N, classes)``.

    Checked once per evaluation against the data's cached label range, so the per-batch
    loss needs no host synchronisation.
    """
    if label_range is None:
        return
    if outputs.dim() != 2:
        raise UserError(
            f"classification needs model outputs of shape (N, classes), got {tuple(outputs.shape)}"
        )
    lo, hi = label_range
    if lo < 0 or hi >= outputs.shape[1]:
        raise UserError(
            f"labels range over {lo}..{hi} but the model has {outputs.shape[1]} outputs: check --data against the checkpoint"
        )


def sample_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample loss: cross-entropy for integer targets, squared error for float targets.

    Labels are not range-checked here (that would cost a host sync per batch): callers check
    once with :func:`check_targets`, as :func:`evaluate` does.
    """
    if targets.is_floating_point():
        diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1).to(
            outputs.dtype
        )
        return (diff * diff).sum(dim=1)
    return F.cross_entropy(outputs, targets, reduction="none")


def loss_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum of per-sample losses (divide by N for the exact mean)."""
    return sample_losses(outputs, targets).sum()


@torch.no_grad()
def batch_outputs(
    model: nn.Module,
    data: Data,
    *,
    device=None,
    forward: Callable[[Tensor], Tensor] | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """The one loop over the data: ``(outputs, targets)`` per batch, model in eval mode
    (its train/eval state restored afterwards), labels checked against the outputs once.

    ``forward`` replaces ``model(x)`` (a Monte Carlo predictive, say); it runs under the same
    eval mode. Consumers sum per-sample quantities, so means are exact over samples.
    """
    batches = as_batches(data, device=device)
    with eval_mode(model):
        for i, (x, y) in enumerate(batches):
            out = model(x) if forward is None else forward(x)
            if i == 0:
                check_targets(out, batches.label_range())
            yield out, y


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, *, device=None, check_finite: bool = True) -> Evaluation:
    """Loss and accuracy of ``model`` (in eval mode) on ``data``.

    The model's train/eval state is restored afterwards. A NaN or infinite loss is bad input
    (:class:`UserError`) unless ``check_finite=False`` (a surface far from its centre may diverge).
    """
    # accumulate on the device: one host sync per evaluation, not per batch
    total, correct, n, classify = None, None, 0, True
    for out, y in batch_outputs(model, data, device=device):
        s = loss_sum(out, y).double()
        total = s if total is None else total + s
        classify = classify and not y.is_floating_point()
        if classify:
            c = (out.argmax(dim=1) == y).sum()
            correct = c if correct is None else correct + c
        n += y.shape[0]
    total = float(total)
    correct = int(correct) if classify else 0
    loss = total / n
    if check_finite and not math.isfinite(loss):
        raise UserError(
            "the loss is NaN or Inf on this data: check the checkpoint weights and the data normalisation"
        )
    return Evaluation(loss, correct / n if classify else float("nan"), n)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_batchnorm(model: nn.Module, data: Data, *, device=None) -> None:
    """Re-estimate BatchNorm running statistics on ``data`` (Jordan et al.'s REPAIR "reset").

    Statistics are the exact mean and (unbiased) variance over all samples of ``data``
    (cumulative averaging, ``momentum=None``; exact when ``data`` is one batch, otherwise
    the average of per-batch statistics), one extra forward pass over the data. As in
    training mode (and ``torch.optim.swa_utils.update_bn``), deeper layers see inputs
    normalised by the batch's own statistics during that pass. Models without BatchNorm
    are left untouched.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    batches = as_batches(data, device=device)
    saved = [(m.momentum, m.training) for m in bns]
    with eval_mode(model):
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for x, _ in batches:
                model(x)
        finally:
            for m, (mom, tr) in zip(bns, saved):
                m.momentum = mom
                m.train(tr)
