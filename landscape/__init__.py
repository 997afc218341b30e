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

__all__ = [
    "HessianOperator", "hessian_eigenvalues", "hessian_trace", "spectral_density", "EigenResult", "SpectralDensity", "TraceEstimate",
    "UserError", "Batches", "as_batches", "resolve_device", "ParamView", "check_same_family", "fixed_buffers",
    "state_buffers", "Evaluation", "evaluate", "reset_batchnorm", "ResultsStore", "SCHEMA_VERSION",
    "Curve", "MLICurve", "MLIMetrics", "interpolate", "mli", "mli_metrics",
]
