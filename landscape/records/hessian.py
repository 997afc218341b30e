"""Records of the Hessian study: extreme eigenvalues, trace, spectral density of one network."""

from __future__ import annotations

from .base import COUNT_TRUE, FIRST, MEAN_STD, Attr, Column, RecordKind, Var

UNITS = "nats per squared parameter unit"


def _end(prefix: str, dim: str, what: str) -> tuple[Var, ...]:
    values = "eigenvalues" if not prefix else prefix.rstrip("_")
    return (
        Var(values, (dim,), UNITS, f"the {what} Hessian eigenvalues (Ritz values)"),
        Var(
            prefix + "residuals",
            (dim,),
            UNITS,
            "Ritz residual ||H y - theta y||: an eigenvalue lies within it",
        ),
        Var(prefix + "error_bounds", (dim,), UNITS, "gap-refined error bound min(r, r^2 / gap)"),
        Var(prefix + "converged", (dim,), "1", "1 when the error bound met the tolerance", "bool"),
    )


EIGENVALUES, RESIDUALS, ERROR_BOUNDS, CONVERGED = _end("", "k", "largest (descending)")
SMALLEST, SMALLEST_RESIDUALS, SMALLEST_ERROR_BOUNDS, SMALLEST_CONVERGED = _end(
    "smallest_", "k_smallest", "most negative (ascending)"
)
TRACE_SAMPLES = Var(
    "trace_samples", ("query",), UNITS, "trace-estimator terms z^T A z (deflated for hutch++)"
)
EIGENVALUE = Var("eigenvalue", ("eigenvalue",), UNITS, "points where the density is evaluated")
DENSITY = Var(
    "density",
    ("eigenvalue",),
    f"1 / ({UNITS})",
    "SLQ spectral density with Gaussian broadening (density_sigma); integrates to 1",
)
SLQ_NODES = Var("slq_nodes", ("run", "node"), UNITS, "Ritz values of each SLQ run (NaN: padding)")
SLQ_WEIGHTS = Var(
    "slq_weights",
    ("run", "node"),
    "1",
    "squared first components of the Ritz vectors (sum to 1 per run)",
)

LAMBDA_MAX = Attr("lambda_max", "largest Hessian eigenvalue", UNITS)
LAMBDA_MIN = Attr("lambda_min", "most negative Hessian eigenvalue", UNITS)
ALL_CONVERGED = Attr("all_converged", "every eigenvalue met the tolerance")
LANCZOS_STEPS_USED = Attr("lanczos_steps_used", "Krylov steps the eigenvalue solve took")
COORDINATES = Attr("coordinates", "trainable coordinates (the Hessian's size)")
SAMPLES = Attr("samples", "samples the loss is averaged over")
LOSS = Attr("loss", "the loss at the network", "nats")
TRACE = Attr("trace", "Hessian trace estimate", UNITS)
TRACE_STDERR = Attr("trace_stderr", "standard error of the trace estimate", UNITS)
TRACE_ESTIMATOR = Attr(
    "trace_estimator", "hutch++, hutchinson, or slq (Hutchinson on the density runs' start vectors)"
)
LANCZOS_BLOCK_SIZE = Attr(
    "lanczos_block_size",
    "vectors per Lanczos step of the eigenvalue solve (1: single-vector Lanczos; b > 1: block Lanczos)",
)
EIGEN_START = Attr(
    "eigen_start", "where the eigenvalue solve began: random vectors, or a density run continued"
)
EIGEN_HVPS = Attr("eigen_hvps", "Hessian-vector products of the eigenvalue solve")
TRACE_HVPS = Attr("trace_hvps", "Hessian-vector products of the trace (0: from the density runs)")
DENSITY_HVPS = Attr("density_hvps", "Hessian-vector products of the spectral density")
NEGATIVE_MASS = Attr("negative_mass", "share of the spectral density below zero")
NEGATIVE_ABS_RATIO = Attr(
    "negative_abs_ratio", "|sum of negative eigenvalues| / sum of |eigenvalues| (SLQ)"
)
DENSITY_SIGMA = Attr("density_sigma", "Gaussian broadening of the density", UNITS)
SLQ_TRACE = Attr("slq_trace", "trace implied by the SLQ runs", UNITS)
HVPS = Attr("hvps", "Hessian-vector products used for the record")
HVP = Attr(
    "hvp",
    "how the products were computed: analytic (hand-derived passes through a chain of dense "
    "layers) or double-backward (autograd)",
)
SECONDS = Attr("seconds", "wall time of the record", "s")

HESSIAN = RecordKind(
    "hessian",
    "Hessian spectrum of the training loss at one trained network",
    "<seed>",
    (
        EIGENVALUES,
        RESIDUALS,
        ERROR_BOUNDS,
        CONVERGED,
        SMALLEST,
        SMALLEST_RESIDUALS,
        SMALLEST_ERROR_BOUNDS,
        SMALLEST_CONVERGED,
        TRACE_SAMPLES,
        EIGENVALUE,
        DENSITY,
        SLQ_NODES,
        SLQ_WEIGHTS,
    ),
    (
        LAMBDA_MAX,
        LAMBDA_MIN,
        ALL_CONVERGED,
        LANCZOS_STEPS_USED,
        LANCZOS_BLOCK_SIZE,
        EIGEN_START,
        COORDINATES,
        SAMPLES,
        LOSS,
        TRACE,
        TRACE_STDERR,
        TRACE_ESTIMATOR,
        NEGATIVE_MASS,
        NEGATIVE_ABS_RATIO,
        DENSITY_SIGMA,
        SLQ_TRACE,
        HVPS,
        HVP,
        EIGEN_HVPS,
        TRACE_HVPS,
        DENSITY_HVPS,
        SECONDS,
    ),
    (
        Column("lambda_max", LAMBDA_MAX.name, MEAN_STD, overview=True),
        Column("lambda_min", LAMBDA_MIN.name),
        Column("trace", TRACE.name, MEAN_STD, overview=True),
        Column("trace stderr", TRACE_STDERR.name),
        Column("negative mass", NEGATIVE_MASS.name),
        Column("all converged", ALL_CONVERGED.name, COUNT_TRUE),
        Column("coordinates", COORDINATES.name, FIRST),
        Column("samples", SAMPLES.name, FIRST),
        Column("loss", LOSS.name),
        Column("seconds", SECONDS.name),
    ),
    renamed_v1={"eigenvalue_grid": "eigenvalue", "trace_method": "trace_estimator"},
)
