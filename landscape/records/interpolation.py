"""Records of the interpolation studies: pairwise curves, aligned pairs, MLI from initialisation."""

from __future__ import annotations

from .base import COUNT_TRUE, MEAN_STD, PER_SEED, Attr, Column, RecordKind, Var

ALPHA = Var(
    "alpha", ("alpha",), "1", "interpolation coefficient a: theta(a) = (1 - a) theta_A + a theta_B"
)
LOSS = Var("{split}_loss", ("alpha",), "nats", "mean loss over the {split} split at theta(a)")
ACCURACY = Var(
    "{split}_accuracy", ("alpha",), "fraction", "top-1 accuracy over the {split} split at theta(a)"
)

LOSS_BARRIER_MAX = Attr(
    "{split}_loss_barrier_max",
    "max_a [L(a) - ((1-a) L(0) + a L(1))] (Entezari et al. 2022; Git Re-Basin)",
    "nats",
)
LOSS_BARRIER_MID = Attr(
    "{split}_loss_barrier_mid", "L(1/2) - (L(0) + L(1)) / 2 (Lim et al. 2024, Table 1)", "nats"
)
ACCURACY_BARRIER_MAX = Attr(
    "{split}_accuracy_barrier_max",
    "max_a [((1-a) acc(0) + a acc(1)) - acc(a)]",
    "fraction",
)
ACCURACY_BARRIER_MID = Attr(
    "{split}_accuracy_barrier_mid", "(acc(0) + acc(1)) / 2 - acc(1/2)", "fraction"
)
LOSS_ENDPOINTS = Attr("{split}_loss_endpoints", "[L(A), L(B)]", "nats")
ACCURACY_ENDPOINTS = Attr("{split}_accuracy_endpoints", "[acc(A), acc(B)]", "fraction")
ALIGNED = Attr("aligned", "true when B was permuted onto A before interpolating")
ALIGNMENT = Attr("alignment", "how B was aligned, in words")
MATCHING_OBJECTIVE = Attr("matching_objective", "weight-matching objective sum_l <W_A, P W_B P^T>")
FUNCTION_PRESERVED = Attr("function_preserved", "the permutation left B's function unchanged")
BN = Attr("bn", "BatchNorm statistics along the path: eval (interpolated) or reset")

DELTA = Attr("delta", "max(0, max_i L[i+1] - L[i]): the largest increase along the path", "nats")
MONOTONIC = Attr("monotonic", "the loss never increases from init to final")
LOCAL_CONVEXITY = Attr(
    "local_convexity", "share of second differences L[i-1] - 2L[i] + L[i+1] >= 0"
)
GLOBAL_CONVEXITY = Attr("global_convexity", "L(a) <= (1 - a) L(init) + a L(final) for every a")
MLI_DEFINITIONS = Attr("definitions", "the MLI metrics' definitions, in words")

_CURVE = (ALPHA, LOSS, ACCURACY)
_BARRIERS = (
    LOSS_BARRIER_MAX,
    LOSS_BARRIER_MID,
    ACCURACY_BARRIER_MAX,
    ACCURACY_BARRIER_MID,
    LOSS_ENDPOINTS,
    ACCURACY_ENDPOINTS,
)


def _barrier_columns(prefix: str, overview: bool) -> tuple[Column, ...]:
    cols = []
    for split in ("test", "train"):
        for what, max_attr, mid_attr in (
            ("loss", LOSS_BARRIER_MAX, LOSS_BARRIER_MID),
            ("accuracy", ACCURACY_BARRIER_MAX, ACCURACY_BARRIER_MID),
        ):
            label = (
                f"{prefix}{what} barrier" if split == "test" else f"{prefix}train {what} barrier"
            )
            cols.append(Column(label, max_attr.at(split), MEAN_STD, overview and split == "test"))
            cols.append(Column(label + " (mid)", mid_attr.at(split), MEAN_STD))
    return tuple(cols)


INTERPOLATION = RecordKind(
    "interpolation",
    "Linear interpolation between two trained networks of a group",
    "<seedA>-<seedB>",
    _CURVE,
    (*_BARRIERS, ALIGNED, BN),
    (
        Column("test accuracy", ACCURACY_ENDPOINTS.at("test"), PER_SEED, overview=True),
        *_barrier_columns("", overview=True),
    ),
    records_label="pairs",
    renamed_v1={"alphas": "alpha"},
)

INTERPOLATION_ALIGNED = RecordKind(
    "interpolation_aligned",
    "Linear interpolation after permuting B onto A (weight matching)",
    "<seedA>-<seedB>",
    _CURVE,
    (*_BARRIERS, ALIGNED, BN, ALIGNMENT, MATCHING_OBJECTIVE, FUNCTION_PRESERVED),
    (
        *_barrier_columns("aligned ", overview=True),
        Column("function preserved", FUNCTION_PRESERVED.name, COUNT_TRUE),
    ),
    records_label="pairs",
    renamed_v1={"alphas": "alpha"},
)

MLI = RecordKind(
    "mli",
    "Monotonic linear interpolation from initialisation to the trained network",
    "<seed>",
    _CURVE,
    (*_BARRIERS, BN, DELTA, MONOTONIC, LOCAL_CONVEXITY, GLOBAL_CONVEXITY, MLI_DEFINITIONS),
    (
        Column("MLI monotonic", MONOTONIC.name, COUNT_TRUE, overview=True),
        Column("delta", DELTA.name),
        Column("local convexity", LOCAL_CONVEXITY.name),
        Column("globally convex", GLOBAL_CONVEXITY.name, COUNT_TRUE),
    ),
    renamed_v1={"alphas": "alpha"},
)
