"""Records of the calibration study: accuracy, NLL, Brier score, ECE and reliability bins of one network."""

from __future__ import annotations

from .base import FIRST, MEAN_STD, Attr, Column, RecordKind, Var

BIN = Var(
    "bin",
    ("bin",),
    "confidence",
    "centre of each confidence bin [lower, upper); the last bin is the point confidence = 1",
)
BIN_LOWER = Var("bin_lower", ("bin",), "confidence", "lower edge of each confidence bin")
BIN_UPPER = Var("bin_upper", ("bin",), "confidence", "upper edge of each confidence bin")
BIN_CONFIDENCE = Var(
    "bin_confidence",
    ("bin",),
    "probability",
    "mean top-label confidence max_c p(c|x) of the samples in the bin (NaN when empty)",
)
BIN_ACCURACY = Var(
    "bin_accuracy",
    ("bin",),
    "fraction",
    "share of the bin's samples whose top label is right (NaN when empty)",
)
BIN_COUNT = Var("bin_count", ("bin",), "samples", "samples in the bin", "int64")

ACCURACY = Attr("accuracy", "(1/N) sum_i [argmax p_i = y_i]", "fraction")
NLL = Attr("nll", "-(1/N) sum_i log p_i[y_i] of the predictive distribution", "nats")
BRIER = Attr("brier", "(1/N) sum_i sum_c (p_i[c] - [c = y_i])^2 (between 0 and 2)")
ECE = Attr(
    "ece",
    "sum_b (n_b / N) |acc_b - conf_b| over equal-width top-label confidence bins "
    "(torchmetrics MulticlassCalibrationError, norm l1)",
    "probability",
)
NUM_SAMPLES = Attr("num_samples", "samples the metrics average over")
NUM_CLASSES = Attr("classes", "classes of the predictive distribution")
MC_SAMPLES = Attr("mc_samples", "Monte Carlo samples S of a posterior predictive; 0: deterministic")
PREDICTIVE = Attr("predictive", "deterministic (softmax) or posterior (Monte Carlo predictive)")
SPLIT = Attr("split", "the data split the metrics are measured on")
DEFINITION = Attr("definition", "the metrics' definitions, in words")

CALIBRATION = RecordKind(
    "calibration",
    "Calibration of one network's (or posterior's) predictive distribution",
    "<seed>",
    (BIN, BIN_LOWER, BIN_UPPER, BIN_CONFIDENCE, BIN_ACCURACY, BIN_COUNT),
    (
        ACCURACY,
        NLL,
        BRIER,
        ECE,
        NUM_SAMPLES,
        NUM_CLASSES,
        MC_SAMPLES,
        PREDICTIVE,
        SPLIT,
        DEFINITION,
    ),
    (
        Column("accuracy", ACCURACY.name, MEAN_STD),
        Column("NLL", NLL.name, MEAN_STD, overview=True),
        Column("ECE", ECE.name, MEAN_STD, overview=True),
        Column("Brier", BRIER.name, MEAN_STD),
        Column("MC samples", MC_SAMPLES.name, FIRST),
    ),
    records_label="networks",
)
