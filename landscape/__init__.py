"""landscape: loss-landscape analysis of standard and asymmetric neural networks.

The numerical core. Works on any ``nn.Module``; knows nothing of checkpoint files,
studies or reports. Names are imported on first use, so ``landscape.store`` (h5py and
numpy only) can be read without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "errors": ["UserError"],
    "data": ["Batches", "as_batches", "resolve_device"],
    "batch": ["Batch", "BatchSpec"],
    "objectives": ["Objective", "resolve_objective"],
    "params": ["ParamView", "check_same_family", "fixed_buffers", "state_buffers"],
    "evaluation": ["Evaluation", "evaluate", "reset_batchnorm"],
    "store": ["ResultsStore", "SCHEMA_VERSION"],
    "interpolation": [
        "Curve",
        "MLICurve",
        "MLIMetrics",
        "interpolate",
        "interpolate_splits",
        "mli",
        "mli_metrics",
    ],
    "hessian": ["HessianOperator", "hessian_eigenvalues", "hessian_trace", "spectral_density"],
    "lanczos": ["EigenResult", "SpectralDensity", "TraceEstimate"],
    "permutation": ["PermutationSpec"],
    "spec_resolution": ["apply_permutation", "permutation_spec", "validate_spec"],
    "matching": ["Permutation", "activation_matching", "weight_matching"],
    "symmetry": ["SymmetryAudit", "symmetry_audit"],
    "directions": [
        "Directions",
        "directions_from",
        "hessian_directions",
        "line_direction",
        "plane_directions",
        "random_directions",
    ],
    "trajectory": ["pca_directions"],
    "surfaces": ["Surface", "surface"],
    "bnn": [
        "PosteriorSettings",
        "TrainingCurves",
        "VariationalNet",
        "VariationalTrainer",
        "predictive_log_probs",
        "variational",
    ],
    "calibration": ["Calibration", "calibrate", "calibration_metrics"],
    "metanet": [
        "FlatPermuter",
        "MetanetFit",
        "MetanetSettings",
        "fit_metanet",
        "kendall_tau",
        "population_matrix",
        "prepare_inputs",
        "r2_score",
        "split_population",
        "tensor_statistics",
    ],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .batch import Batch, BatchSpec
    from .bnn import (
        PosteriorSettings,
        TrainingCurves,
        VariationalNet,
        VariationalTrainer,
        predictive_log_probs,
        variational,
    )
    from .calibration import Calibration, calibrate, calibration_metrics
    from .data import Batches, as_batches, resolve_device
    from .directions import (
        Directions,
        directions_from,
        hessian_directions,
        line_direction,
        plane_directions,
        random_directions,
    )
    from .errors import UserError
    from .evaluation import Evaluation, evaluate, reset_batchnorm
    from .hessian import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
    from .interpolation import (
        Curve,
        MLICurve,
        MLIMetrics,
        interpolate,
        interpolate_splits,
        mli,
        mli_metrics,
    )
    from .lanczos import EigenResult, SpectralDensity, TraceEstimate
    from .matching import Permutation, activation_matching, weight_matching
    from .metanet import (
        FlatPermuter,
        MetanetFit,
        MetanetSettings,
        fit_metanet,
        kendall_tau,
        population_matrix,
        prepare_inputs,
        r2_score,
        split_population,
        tensor_statistics,
    )
    from .objectives import Objective, resolve_objective
    from .params import ParamView, check_same_family, fixed_buffers, state_buffers
    from .permutation import PermutationSpec
    from .spec_resolution import apply_permutation, permutation_spec, validate_spec
    from .store import SCHEMA_VERSION, ResultsStore
    from .surfaces import Surface, surface
    from .symmetry import SymmetryAudit, symmetry_audit
    from .trajectory import pca_directions
