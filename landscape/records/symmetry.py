"""Records of the symmetry audit: does permuting each unit group change the network's function?"""

from __future__ import annotations

from .base import COUNT_TRUE, FIRST, MEAN_STD, Attr, Column, RecordKind, Var

PERM_GROUP = Var(
    "perm_group", ("perm_group",), "", "permutation groups of the architecture's spec", "str"
)
GROUP_SIZES = Var("group_sizes", ("perm_group",), "units", "units each group permutes", "int64")
GROUP_LOG10_ORDER = Var("group_log10_order", ("perm_group",), "log10", "log10(n!) per group")
GROUP_MAX_CHANGE = Var(
    "group_max_change",
    ("perm_group",),
    "output units",
    "max over trials and samples of |f_pi(x) - f(x)|, permuting only this group (fixed buffers stay)",
)
GROUP_RELATIVE_CHANGE = Var(
    "group_relative_change", ("perm_group",), "1", "group_max_change / max |f(x)|"
)
MAX_OUTPUT_CHANGE = Var(
    "max_output_change", (), "output units", "max |f_pi(x) - f(x)| with every group permuted"
)
RELATIVE_OUTPUT_CHANGE = Var("relative_output_change", (), "1", "max_output_change / max |f(x)|")

SYMMETRIC = Attr("symmetric", "every permutation group left the function unchanged")
ASYMMETRIC_GROUPS = Attr("asymmetric_groups", "groups whose permutation changed the function")
PERMUTATION_GROUPS = Attr("permutation_groups", "permutation groups in the spec")
LOG10_GROUP_ORDER = Attr("log10_group_order", "log10 of the symmetry group's order", "log10")
AUDIT_SAMPLES = Attr("audit_samples", "inputs the outputs were compared on")
TRIALS = Attr("trials", "random permutations per group")
DEFINITION = Attr("definition", "what was measured, in words")

SYMMETRY = RecordKind(
    "symmetry",
    "Symmetry audit of one network",
    "<seed>",
    (
        PERM_GROUP,
        GROUP_SIZES,
        GROUP_LOG10_ORDER,
        GROUP_MAX_CHANGE,
        GROUP_RELATIVE_CHANGE,
        MAX_OUTPUT_CHANGE,
        RELATIVE_OUTPUT_CHANGE,
    ),
    (
        SYMMETRIC,
        ASYMMETRIC_GROUPS,
        PERMUTATION_GROUPS,
        LOG10_GROUP_ORDER,
        AUDIT_SAMPLES,
        TRIALS,
        DEFINITION,
    ),
    (
        Column("symmetric", SYMMETRIC.name, COUNT_TRUE),
        Column("output change", MAX_OUTPUT_CHANGE.name, MEAN_STD),
        Column("relative change", RELATIVE_OUTPUT_CHANGE.name, MEAN_STD),
        Column("log10 group order", LOG10_GROUP_ORDER.name, FIRST),
    ),
    records_label="networks",
    renamed_v1={"group_names": "perm_group"},
)
