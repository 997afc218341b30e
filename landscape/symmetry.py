"""Symmetry audit: does permuting hidden units change what a network computes?

For each group ``g`` of the architecture's permutation spec, random permutations of
``g`` are applied to the model's parameters (and BatchNorm statistics) while the
architecture's fixed buffers (W-Asym masks and fixed values, FiGLU matrices) stay in
place, and the output change ``max_x |f_pi(x) - f(x)|`` is measured. A standard network
is invariant (change at float rounding, about 1e-7); W-Asym and sigma-Asym networks are
not (Lim et al. 2024). For them the spec describes the symmetry the architecture would
have without its asymmetry, the standard architecture's groups.

The size of that symmetry group is ``prod_g n_g!``, reported as ``log10``; a group nested
in a head group of ``n_h`` heads (the query/key or value dimensions of attention) counts
``(n_g!)^(n_h)``, one permutation per head, and its trials permute every head's units
independently while the heads stay in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .data import Data, as_batches
from .permutation import PermutationSpec, SpecLike
from .permute import eval_output, output_change, random_perm
from .sample_inputs import sample_input
from .spec_resolution import checked_spec

#: relative output change below which a permutation counts as a symmetry (float32 rounding is ~1e-7)
SYMMETRY_TOL = 1e-5


@dataclass(frozen=True, eq=False)
class SymmetryAudit:
    """Per group: ``sizes``, ``log10_order = log10(n!)`` (``n_h log10(n!)`` for a group nested
    in ``n_h`` heads), ``max_change`` (max over trials and
    samples of ``|f_pi(x) - f(x)|``) and ``relative_change`` (divided by ``max |f(x)|``);
    ``all_groups_change`` permutes every group at once."""

    groups: tuple[str, ...]
    sizes: np.ndarray
    log10_order: np.ndarray
    max_change: np.ndarray
    relative_change: np.ndarray
    all_groups_change: float
    all_groups_relative: float
    output_scale: float
    trials: int
    samples: int
    variant: str | None = None

    @property
    def total_log10_order(self) -> float:
        """log10 of the symmetry group's size, ``sum_g log10(n_g!)``."""
        return float(self.log10_order.sum())

    @property
    def symmetric(self) -> np.ndarray:
        """Per group: True where the permutations left the function unchanged (relative change < 1e-5)."""
        return self.relative_change < SYMMETRY_TOL

    @property
    def is_symmetric(self) -> bool:
        return bool(self.all_groups_relative < SYMMETRY_TOL)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "group": list(self.groups),
                "size": self.sizes,
                "log10_order": self.log10_order,
                "max_change": self.max_change,
                "relative_change": self.relative_change,
                "symmetric": self.symmetric,
            }
        )

    def _repr_html_(self) -> str:
        head = (
            f"<p>variant {self.variant or '?'}: all groups change the output by {self.all_groups_change:.3g} "
            f"(relative {self.all_groups_relative:.3g}); log10 |G| = {self.total_log10_order:.1f}</p>"
        )
        return head + self.to_frame().to_html(index=False)


def _perm(spec: PermutationSpec, group: str, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of ``group`` that is not the identity (an identity draw tests nothing)."""
    p = random_perm(spec, group, rng)
    n = spec.sizes[group]
    if n > 1 and (p == np.arange(n)).all():
        p = p.copy()
        p.reshape(-1, n)[0] = np.roll(np.arange(n), 1)
    return p


@torch.no_grad()
def symmetry_audit(
    model: nn.Module,
    data: Data | None = None,
    *,
    spec: SpecLike | None = None,
    trials: int = 3,
    samples: int = 256,
    seed: int = 0,
) -> SymmetryAudit:
    """Output change of ``model`` under random permutations of each group of its spec.

    ``data``: inputs to measure on (the first ``samples``); default random inputs shaped
    for the first layer. ``spec`` defaults to :func:`landscape.permutation_spec` (a zoo
    model's own, which for asymmetric variants is the standard architecture's). Fixed
    buffers are never permuted here: that is what makes an asymmetric network asymmetric.
    """
    spec = checked_spec(model, spec)
    if data is None:
        x = sample_input(model, min(samples, 64))
    else:
        x = as_batches(data, device=next(model.parameters()).device).sample(samples)
    ref = eval_output(model, x)
    scale = float(ref.abs().max())
    rng = np.random.default_rng(seed)
    names = tuple(spec.groups)
    change = np.zeros(len(names))
    for i, g in enumerate(names):
        for _ in range(trials):
            d, _ = output_change(
                model, spec, {g: _perm(spec, g, rng)}, x, permute_fixed=False, reference=ref
            )
            change[i] = max(change[i], d)
    all_change = 0.0
    for _ in range(trials):
        d, _ = output_change(
            model,
            spec,
            {g: _perm(spec, g, rng) for g in spec.sizes},
            x,
            permute_fixed=False,
            reference=ref,
        )
        all_change = max(all_change, d)
    sizes = np.array([spec.sizes[g] for g in names], dtype=np.int64)
    order = np.array([spec.group_log10_order(g) for g in names])
    denom = max(scale, 1e-30)
    variant = (getattr(model, "config", None) or {}).get("variant")
    return SymmetryAudit(
        names,
        sizes,
        order,
        change,
        change / denom,
        float(all_change),
        float(all_change / denom),
        scale,
        trials,
        int(x.shape[0]),
        variant,
    )
