"""landscape: loss-landscape analysis of standard and asymmetric neural networks.

The numerical core. Works on any ``nn.Module``; knows nothing of checkpoint files,
studies or reports.
"""

__version__ = "0.1.0"

from .errors import UserError
from .data import Batches, as_batches, resolve_device
from .params import ParamView, check_same_family, fixed_buffers, state_buffers
from .evaluation import Evaluation, evaluate, reset_batchnorm
from .store import ResultsStore, SCHEMA_VERSION
from .hessian import HessianOperator, hessian_eigenvalues, hessian_trace, spectral_density
from .lanczos import EigenResult, SpectralDensity, TraceEstimate
from .interpolation import Curve, MLICurve, MLIMetrics, interpolate, mli, mli_metrics
from .permutation import PermutationSpec, apply_permutation, permutation_spec, validate_spec
from .matching import Permutation, activation_matching, weight_matching
from .symmetry import SymmetryAudit, symmetry_audit
from .directions import Directions, directions_from, hessian_directions, line_direction, plane_directions, random_directions
from .surface import Surface, surface

__all__ = [
    "HessianOperator", "hessian_eigenvalues", "hessian_trace", "spectral_density", "EigenResult", "SpectralDensity", "TraceEstimate",
    "UserError", "Batches", "as_batches", "resolve_device", "ParamView", "check_same_family", "fixed_buffers",
    "state_buffers", "Evaluation", "evaluate", "reset_batchnorm", "ResultsStore", "SCHEMA_VERSION",
    "Curve", "MLICurve", "MLIMetrics", "interpolate", "mli", "mli_metrics",
    "PermutationSpec", "permutation_spec", "validate_spec", "apply_permutation", "Permutation", "weight_matching", "activation_matching",
    "SymmetryAudit", "symmetry_audit",
    "Directions", "random_directions", "plane_directions", "line_direction", "directions_from", "hessian_directions", "Surface", "surface",
]
