"""Input batches for function checks: a given batch, a sample of data, or random inputs.

Spec validation, the symmetry audit and the matchers' function check compare a network's
outputs before and after a permutation on a batch of inputs. The user may give one; when
not, :func:`sample_input` makes one, seeded so that a check is repeatable:

- a model with an ``example_input(n, generator)`` method (the zoo's transformer) makes its own;
- a model whose first input module is an ``nn.Embedding`` gets random token ids, sequences
  of 8 (or the size of the smallest other embedding table, usually the positions);
- a first ``nn.MultiheadAttention`` gets standard-normal sequences of 8 (batch-first or
  not, as the module says);
- otherwise standard-normal inputs shaped for the first Linear/Conv layer (convolutions get
  8 pixels per spatial side).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .data import as_batches
from .errors import UserError

#: sequence length of random inputs for sequence models that do not say theirs
SEQUENCE_LENGTH = 8


def sample_input(model: nn.Module, n: int = 4, seed: int = 0) -> Tensor:
    """``n`` random inputs for ``model`` (see the module notes), in its dtype and device."""
    gen = torch.Generator().manual_seed(seed)
    p = next(model.parameters(), None)
    device, dtype = (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)
    own = getattr(model, "example_input", None)
    if callable(own):
        return own(n, gen)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            others = [
                e.num_embeddings
                for e in model.modules()
                if isinstance(e, nn.Embedding) and e is not m
            ]
            length = min([SEQUENCE_LENGTH, *others])
            return torch.randint(0, m.num_embeddings, (n, length), generator=gen).to(device)
        if isinstance(m, nn.MultiheadAttention):
            shape = (n, SEQUENCE_LENGTH) if m.batch_first else (SEQUENCE_LENGTH, n)
            return torch.randn(*shape, m.embed_dim, generator=gen, dtype=dtype).to(device)
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
