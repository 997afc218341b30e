"""Records of the metanetwork study: one trained metanet (kind and seed) on one population.

``/metanet/<population>/<metanet>-seed<k>``: predictions of the selected model for every
network of the population (with its split), the training curves of the selected learning
rate, and the test R^2 and Kendall tau. The per-group summary has one column per metanet
(mean ± std over the metanet seeds), so the table has one row per population.
"""

from __future__ import annotations

from .base import FIRST, MEAN_STD, Attr, Column, RecordKind, Var

#: the metanets, in table order, with the label of their columns
METANETS = ("linear", "mlp", "mlp_perm", "statnn", "deepsets", "dmc")
LABELS = {
    "linear": "linear",
    "mlp": "MLP",
    "mlp_perm": "MLP+perm",
    "statnn": "StatNN",
    "deepsets": "DeepSets",
    "dmc": "DMC",
}
#: the metanets the demo and the overview table show
OVERVIEW = ("mlp", "statnn")
#: the sidecar value predicted by default (``metrics.test_accuracy`` of a population's sidecars)
DEFAULT_TARGET = "test_accuracy"

NETWORK = Var(
    "network", ("network",), "1", "label of each network of the population (its folder)", "str"
)
TARGET = Var("target", ("network",), "as the sidecar", "the quantity predicted, per network")
PREDICTED = Var(
    "predicted", ("network",), "as the target", "the selected metanet's prediction per network"
)
SPLIT = Var("split", ("network",), "1", "train, validation or test: the network's part", "str")
EPOCH = Var("epoch", ("epoch",), "epochs", "metanet training epoch (1-based)")
TRAIN_MSE = Var(
    "train_mse",
    ("epoch",),
    "1",
    "mean squared error of the standardised targets on the training networks, mean over the "
    "epoch's batches (the selected learning rate's run)",
)
VALIDATION_R2 = Var(
    "validation_r2", ("epoch",), "1", "R^2 on the validation networks after each epoch"
)

MODEL = Attr("metanet", "the metanet: " + ", ".join(METANETS))
METANET_SEED = Attr("metanet_seed", "seed of the metanet's initialisation and batch order")
TARGET_NAME = Attr("target_name", "the sidecar value predicted (e.g. test_accuracy)")
TEST_R2 = Attr("test_r2", "1 - SS_res / SS_tot on the test networks (sklearn's R^2)")
KENDALL_TAU = Attr("kendall_tau", "Kendall's tau-b of predictions and targets on the test networks")
TRAIN_R2 = Attr("train_r2", "R^2 on the training networks")
SELECTED_VALIDATION_R2 = Attr("selected_validation_r2", "R^2 on the validation networks")
SELECTED_LR = Attr("selected_lr", "learning rate of the selected run")
SELECTED_EPOCH = Attr("selected_epoch", "epoch of the selected model (1-based)")
SPLIT_SEED = Attr("split_seed", "seed of the train/validation/test split of the networks")
SPLIT_SIZES = Attr("split_sizes", "[train, validation, test] network counts")
NETWORKS = Attr("networks", "networks of the population used (finite weights and target)")
SKIPPED = Attr("skipped_nonfinite", "networks left out: NaN or Inf in weights or target")
INPUT_COORDINATES = Attr(
    "input_coordinates", "trainable coordinates per network (fixed W-Asym entries excluded)"
)
INPUT_FEATURES = Attr("input_features", "what the metanet reads per network (count)")
AUGMENTATION = Attr("augmentation", "training-time augmentation of the networks, in words")
ARCHITECTURE = Attr("architecture", "the population's zoo architecture and arguments")
SECONDS_PER_EPOCH = Attr("seconds_per_epoch", "metanet training time per epoch", "s")
FINGERPRINT = Attr("fingerprint", "digest of networks, targets, split and settings")
DEFINITIONS = Attr("definitions", "R^2, tau and selection, in words")


#: per-metanet copies of test_r2 and kendall_tau, so the summary has one column per metanet
METANET_R2 = {
    m: Attr(f"{m}_{TEST_R2.name}", f"test R^2 of the {LABELS[m]} metanet (the record's test_r2)")
    for m in METANETS
}
METANET_TAU = {
    m: Attr(
        f"{m}_{KENDALL_TAU.name}",
        f"Kendall tau of the {LABELS[m]} metanet (the record's kendall_tau)",
    )
    for m in METANETS
}

METANET = RecordKind(
    "metanet",
    "A metanetwork predicting a property of the population's networks from their weights",
    "<metanet>-seed<k>",
    (NETWORK, TARGET, PREDICTED, SPLIT, EPOCH, TRAIN_MSE, VALIDATION_R2),
    (
        MODEL,
        METANET_SEED,
        TARGET_NAME,
        TEST_R2,
        KENDALL_TAU,
        TRAIN_R2,
        SELECTED_VALIDATION_R2,
        SELECTED_LR,
        SELECTED_EPOCH,
        SPLIT_SEED,
        SPLIT_SIZES,
        NETWORKS,
        SKIPPED,
        INPUT_COORDINATES,
        INPUT_FEATURES,
        AUGMENTATION,
        ARCHITECTURE,
        SECONDS_PER_EPOCH,
        FINGERPRINT,
        DEFINITIONS,
        *METANET_R2.values(),
        *METANET_TAU.values(),
    ),
    (
        Column("networks", NETWORKS.name, FIRST),
        *(Column(f"{LABELS[m]} R²", METANET_R2[m].name, MEAN_STD, m in OVERVIEW) for m in METANETS),
        *(Column(f"{LABELS[m]} tau", METANET_TAU[m].name, MEAN_STD) for m in METANETS),
    ),
    records_label="metanet runs",
    optional=True,
)
