"""Input batches for function checks: a given batch, a sample of data, or random inputs.

Spec validation, the symmetry audit and the matchers' function check compare a network's
outputs before and after a permutation on a batch of inputs. The user may give one; when
not, :func:`sample_input` draws standard-normal inputs shaped for the model's first
Linear/Conv layer (convolutions get 8 pixels per spatial side), seeded so that a check is
repeatable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .data import as_batches
from .errors import UserError


def sample_input(model: nn.Module, n: int = 4, seed: int = 0) -> Tensor:
    """``n`` standard-normal inputs shaped for the model's first Linear/Conv layer, in its dtype and device."""
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return torch.randn(n, m.in_features, generator=gen, dtype=dtype).to(device)
        if isinstance(m, nn.modules.conv._ConvNd):
            d = len(m.kernel_size)
            return torch.randn(n, m.in_channels, *([8] * d), generator=gen, dtype=dtype).to(device)
    raise UserError(
        f"cannot guess an input shape for {type(model).__name__}: pass sample=<a batch of inputs>"
    )


def as_sample(model: nn.Module, sample: Any, n: int = 4) -> Tensor:
    """The inputs to check on: ``sample`` itself if a tensor, the first 64 inputs if data
    (a pair, a DataLoader, batches), or ``sample_input(model, n)`` if ``None``."""
    if sample is None:
        return sample_input(model, n)
    if isinstance(sample, Tensor):
        return sample
    p = next(model.parameters())
    return as_batches(sample, device=p.device).sample(64)
