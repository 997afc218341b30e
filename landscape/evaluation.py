"""The one evaluation kernel: loss and accuracy of a model (or of coordinates theta) on data.

The loss is the exact mean over all units of the data (samples, or tokens for a language
model), ``(1/U) sum_u l_u`` with ``U`` the number of units in the whole data, never a mean of
batch means; the accuracy likewise. What ``l_u`` is comes from the objective
(:mod:`landscape.objectives`): ``auto`` by default, cross-entropy for integer targets (with
top-1 accuracy) and squared error ``sum_j (f_j - y_j)^2`` per sample for float targets (no
accuracy: NaN).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .batch import Batch, call
from .data import Batches, Data, as_batches
from .errors import UserError
from .objectives import (  # noqa: F401  (check_targets: its old home)
    BUILTIN,
    Objective,
    check_targets,
    cross_entropy,
    resolve_objective,
    squared_error,
)

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
    """``loss`` and ``accuracy``: exact means over the ``num_units`` units (samples or tokens)
    of ``num_samples`` samples."""

    loss: float
    accuracy: float
    num_samples: int
    num_units: int = 0


def sample_losses(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample loss of the default (``auto``) objective: cross-entropy for integer targets,
    squared error for float targets.

    Labels are not range-checked here (that would cost a host sync per batch): callers check
    once with :func:`check_targets`, as :func:`evaluate` does.
    """
    if targets.is_floating_point():
        return squared_error(outputs, targets)
    return cross_entropy(outputs, targets)


def loss_sum(outputs: Tensor, targets: Tensor) -> Tensor:
    """Sum of the default objective's per-sample losses (divide by N for the exact mean)."""
    return sample_losses(outputs, targets).sum()


def _outputs(
    model: nn.Module,
    batches: Batches,
    objective: Objective,
    forward: Callable[..., Any] | None = None,
) -> Iterator[tuple[Any, Batch]]:
    """The one loop over the data: ``(outputs, batch)`` per batch, model in eval mode (its
    train/eval state restored afterwards), the objective's checks on the first batch."""
    with eval_mode(model):
        for i, b in enumerate(batches):
            out = call(model if forward is None else forward, b.inputs)
            if i == 0:
                objective.validate(out, b, batches)
            yield out, b


@torch.no_grad()
def batch_outputs(
    model: nn.Module,
    data: Data,
    *,
    device=None,
    forward: Callable[..., Any] | None = None,
    objective: Any = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """``(outputs, targets)`` per batch from the one loop over the data (eval mode, the
    objective's checks, default ``auto``: labels against the outputs, on the first batch).

    ``forward`` replaces ``model(x)`` (a Monte Carlo predictive, say); it runs under the same
    eval mode. Consumers sum per-sample quantities, so means are exact over samples.
    """
    obj = resolve_objective(objective)
    for out, b in _outputs(model, as_batches(data, device=device), obj, forward):
        yield out, b.targets


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data,
    *,
    device=None,
    check_finite: bool = True,
    objective: Any = None,
) -> Evaluation:
    """Loss and accuracy of ``model`` (in eval mode) on ``data``: the exact means over all
    units of the data of the ``objective``'s per-unit losses and hits (default ``auto``;
    a name, an :class:`~landscape.objectives.Objective` or a loss callable).

    The model's train/eval state is restored afterwards. A NaN or infinite loss is bad input
    (:class:`UserError`) unless ``check_finite=False`` (a surface far from its centre may diverge).
    """
    obj = resolve_objective(objective)
    # accumulate on the device: one host sync per evaluation, not per batch
    total, correct, units, samples, scored = None, None, 0, 0, True
    for out, b in _outputs(model, as_batches(data, device=device), obj):
        losses, hits = obj.measure(out, b)
        s = losses.sum().double()
        total = s if total is None else total + s
        scored = scored and hits is not None
        if scored:
            c = hits.sum()
            correct = c if correct is None else correct + c
        units += losses.shape[0]
        samples += b.size
    if units == 0:
        raise UserError(f"the {obj.name} loss counted no units on this data: nothing to average")
    total = float(total)
    loss = total / units
    if check_finite and not math.isfinite(loss):
        raise UserError(
            "the loss is NaN or Inf on this data: check the checkpoint weights and the data normalisation"
            + ("" if obj.spec in BUILTIN else f" (and the loss {obj.name})")
        )
    accuracy = int(correct) / units if scored else float("nan")
    return Evaluation(loss, accuracy, samples, units)


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
            for b in batches:  # the inputs only: no objective, no targets needed
                call(model, b.inputs)
        finally:
            for m, (mom, tr) in zip(bns, saved):
                m.momentum = mom
                m.train(tr)
