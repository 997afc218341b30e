"""One definition per analysis of what its records hold: the results file's schema.

Every record of a results file lives at ``/<analysis>/<group>/<record>``. Its definition
(:class:`RecordKind`) declares the datasets (name, dimensions, units, description, dtype),
the attributes and the per-group summary columns. Studies write through
:meth:`RecordKind.write`, and :mod:`landscape.results` (``analysis.load``) and the reports
read through the same objects: no other module spells a dataset or attribute name.

A new analysis adds a module here with its :class:`RecordKind` and registers it in
:data:`KINDS`. Nothing here imports torch.
"""

from __future__ import annotations

from .base import (
    COMMON,
    COMMON_NAMES,
    COUNT_TRUE,
    FIRST,
    MEAN_STD,
    PER_SEED,
    SPLITS,
    VARIANT_ORDER,
    Attr,
    Column,
    RecordKind,
    Var,
    aggregate,
    format_cell,
    format_mean_std,
    mean_std,
)
from .bnn import BNN
from .calibration import CALIBRATION
from .hessian import HESSIAN
from .interpolation import INTERPOLATION, INTERPOLATION_ALIGNED, MLI
from .layers import HESSIAN_LAYERS
from .metanet import METANET
from .surface import SURFACE
from .symmetry import SYMMETRY

#: every analysis with a definition, in report order (a new analysis adds one line)
KINDS: dict[str, RecordKind] = {
    k.analysis: k
    for k in (
        INTERPOLATION,
        INTERPOLATION_ALIGNED,
        MLI,
        HESSIAN,
        HESSIAN_LAYERS,
        SURFACE,
        SYMMETRY,
        CALIBRATION,
        BNN,
        METANET,
    )
}


def kind(analysis: str) -> RecordKind | None:
    """The definition of ``analysis``, or None for an analysis this version does not know."""
    return KINDS.get(analysis)


__all__ = [
    "BNN",
    "CALIBRATION",
    "COMMON",
    "COMMON_NAMES",
    "COUNT_TRUE",
    "FIRST",
    "HESSIAN",
    "INTERPOLATION",
    "INTERPOLATION_ALIGNED",
    "KINDS",
    "MEAN_STD",
    "MLI",
    "PER_SEED",
    "SPLITS",
    "SURFACE",
    "SYMMETRY",
    "VARIANT_ORDER",
    "Attr",
    "Column",
    "RecordKind",
    "Var",
    "aggregate",
    "format_cell",
    "format_mean_std",
    "kind",
    "mean_std",
]
