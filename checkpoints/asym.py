"""Asymmetric building blocks (Lim et al., NeurIPS 2024).

W-Asymmetric layers hold, in every output row (output channel), ``n_fix`` entries at
fixed values ``kappa * z`` with ``z ~ N(0, 1)``. Two persistent buffers make a checkpoint
self-contained: ``mask`` (1 = trainable, 0 = fixed; the paper's public-code convention)
and ``fixed`` (the fixed values, zero where trainable). The effective weight is computed
in ``forward`` as ``W * M + F * (1 - M)``, so neither an optimiser, weight decay nor
``load_state_dict`` can move a fixed entry.

sigma-Asymmetric networks replace the elementwise activation by FiGLU,
``FiGLU(x) = x * sigmoid(F x)`` with a fixed random square matrix ``F`` (buffer ``C``).

All random constants come from an explicit ``torch.Generator`` seeded by the caller, so
the same architecture seed gives the same masks in any process.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.errors import UserError


def layer_generator(mask_seed: int, layer_index: int) -> torch.Generator:
    """A generator for one layer's constants, independent of the global RNG and of other layers."""
    return torch.Generator().manual_seed(int(mask_seed) * 1_000_003 + 7919 * int(layer_index) + 17)


def random_subset_mask(
    rows: int, cols: int, n_fix: int, gen: torch.Generator, *, allow_all: bool = False
) -> Tensor:
    """(rows, cols) float mask with exactly ``n_fix`` zeros (fixed entries) per row.

    ``allow_all`` lets ``n_fix == cols`` fix whole rows (the fully fixed stem of the paper's
    W-Asym ResNet-8); otherwise a row must keep at least one trainable entry.
    """
    if allow_all and n_fix == cols:
        return torch.zeros(rows, cols)
    if not 0 < n_fix < cols:
        raise UserError(
            f"n_fix={n_fix} must be between 1 and {cols - 1} for a row of {cols} inputs (fixing every entry leaves nothing to train)"
        )
    order = torch.rand(rows, cols, generator=gen).argsort(dim=1)
    mask = torch.ones(rows, cols)
    mask.scatter_(1, order[:, :n_fix], 0.0)
    return mask


class _AsymMixin:
    mask: Tensor
    fixed: Tensor

    def _init_asym(self, mask: Tensor, kappa: float, gen: torch.Generator) -> None:
        z = torch.randn(mask.shape, generator=gen)
        fixed = kappa * z * (1 - mask)
        self.register_buffer("mask", mask)
        self.register_buffer("fixed", fixed)
        with torch.no_grad():
            # the stored weight shows the fixed values too (as the public code does)
            self.weight.mul_(mask).add_(fixed)
        self.kappa = float(kappa)

    def effective_weight(self) -> Tensor:
        return self.weight * self.mask + self.fixed

    @property
    def n_fixed(self) -> int:
        return int((self.mask == 0).sum())


class AsymLinear(_AsymMixin, nn.Linear):
    """Linear layer with ``n_fix`` fixed entries per output row."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        n_fix: int,
        kappa: float,
        mask_seed: int,
        layer_index: int,
        bias: bool = True,
    ):
        super().__init__(in_features, out_features, bias=bias)
        gen = layer_generator(mask_seed, layer_index)
        self._init_asym(random_subset_mask(out_features, in_features, n_fix, gen), kappa, gen)
        self.n_fix = n_fix

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_fix={self.n_fix}, kappa={self.kappa}"


class AsymConv2d(_AsymMixin, nn.Conv2d):
    """Conv layer with ``n_fix`` fixed entries per output channel.

    ``mode="entry"`` fixes ``n_fix`` of the ``c_in * k * k`` entries; ``mode="filter"``
    fixes ``n_fix`` whole ``k x k`` input filters. ``allow_all`` permits fixing every entry.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        n_fix: int,
        kappa: float,
        mask_seed: int,
        layer_index: int,
        mode: str = "entry",
        allow_all: bool = False,
        **kw,
    ):
        super().__init__(in_channels, out_channels, kernel_size, **kw)
        gen = layer_generator(mask_seed, layer_index)
        k = self.kernel_size[0] * self.kernel_size[1]
        if mode == "entry":
            mask = random_subset_mask(
                out_channels, in_channels * k, n_fix, gen, allow_all=allow_all
            )
        elif mode == "filter":
            m = random_subset_mask(out_channels, in_channels, n_fix, gen, allow_all=allow_all)
            mask = m[:, :, None].expand(out_channels, in_channels, k).reshape(out_channels, -1)
        else:
            raise UserError(f"unknown W-Asym conv mask mode {mode!r}: use 'entry' or 'filter'")
        self._init_asym(mask.reshape(self.weight.shape).contiguous(), kappa, gen)
        self.n_fix, self.mode = n_fix, mode

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_fix={self.n_fix}, kappa={self.kappa}, mode={self.mode}"


class FiGLU(nn.Module):
    """``x * sigmoid(F x)`` over features (dim 1) with a fixed random ``F`` (buffer ``C``).

    For vectors ``F`` has N(0, 1) entries (as in the paper's MLP); for feature maps
    (``conv=True``) it is scaled by ``1/sqrt(C)`` and applied as a 1x1 convolution.
    """

    def __init__(self, dim: int, *, mask_seed: int, layer_index: int, conv: bool = False):
        super().__init__()
        gen = layer_generator(mask_seed, 10_000 + layer_index)
        C = torch.randn(dim, dim, generator=gen)
        if conv:
            C = C / math.sqrt(dim)
        self.register_buffer("C", C)
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:
            gate = F.conv2d(x, self.C[:, :, None, None])
        else:
            gate = F.linear(x, self.C)
        return x * torch.sigmoid(gate)

    def extra_repr(self) -> str:
        return f"dim={self.C.shape[0]}, conv={self.conv}"
