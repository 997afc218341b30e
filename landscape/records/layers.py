"""Records of per-layer curvature: top eigenvalues and trace of each layer's Hessian block."""

from __future__ import annotations

from .base import MEAN_STD, Attr, Column, RecordKind, Var

LAYER = Var("layer", ("layer",), "", "the layer: a module path, or a prefix of one", "str")
LAYER_COORDINATES = Var(
    "layer_coordinates", ("layer",), "coordinates", "trainable coordinates of the layer", "int64"
)
LAYER_EIGENVALUES = Var(
    "layer_eigenvalues",
    ("layer", "rank"),
    "loss / coordinate^2",
    "largest eigenvalues of the layer's diagonal block H_ll, descending (NaN past its size)",
)
LAYER_TRACE = Var("layer_trace", ("layer",), "loss / coordinate^2", "tr H_ll")
LAYER_TRACE_STDERR = Var(
    "layer_trace_stderr", ("layer",), "loss / coordinate^2", "standard error of tr H_ll (0: exact)"
)
LAYER_EXACT_TRACE = Var(
    "layer_exact_trace",
    ("layer",),
    "",
    "tr H_ll summed from e_i^T H e_i over every coordinate",
    "bool",
)

TOTAL_TRACE = Attr("total_trace", "sum over layers of tr H_ll = tr H", "loss / coordinate^2")
TOTAL_TRACE_STDERR = Attr("total_trace_stderr", "standard error of total_trace")
LAYERS_BY = Attr("layers_by", "how parameters form layers: 'module' or a module-path depth")
ESTIMATOR = Attr("layer_trace_estimator", "trace estimator of the larger layers")
DEFINITION = Attr("definition", "what was measured, in words")

HESSIAN_LAYERS = RecordKind(
    "hessian_layers",
    "Curvature per layer of one network (diagonal Hessian blocks)",
    "<seed>",
    (
        LAYER,
        LAYER_COORDINATES,
        LAYER_EIGENVALUES,
        LAYER_TRACE,
        LAYER_TRACE_STDERR,
        LAYER_EXACT_TRACE,
    ),
    (TOTAL_TRACE, TOTAL_TRACE_STDERR, LAYERS_BY, ESTIMATOR, DEFINITION),
    (Column("sum of layer traces", TOTAL_TRACE.name, MEAN_STD),),
    records_label="networks",
    optional=True,
)
