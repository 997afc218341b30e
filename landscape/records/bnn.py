"""Records of variational (Bayesian) training: ELBO, NLL and KL curves of one posterior."""

from __future__ import annotations

from .base import MEAN_STD, Attr, Column, RecordKind, Var

STEP = Var("step", ("step",), "steps", "optimiser step at the end of each logging window")
ELBO = Var(
    "elbo",
    ("step",),
    "nats per sample",
    "training ELBO per sample, -(NLL + KL/N), mean over the logging window (higher is better)",
)
NLL_TERM = Var(
    "nll_term",
    ("step",),
    "nats",
    "data term: cross-entropy of the sampled network on the training batch, window mean",
)
KL_TERM = Var("kl_term", ("step",), "nats per sample", "KL(q || prior) / N, window mean")
TRAIN_ACCURACY = Var(
    "train_accuracy",
    ("step",),
    "fraction",
    "top-1 accuracy of the sampled network on the training batches, window mean",
)
SECONDS = Var("seconds", ("step",), "s", "training time up to the step")

FINAL_ELBO = Attr("final_elbo", "ELBO per sample over the last logging window", "nats per sample")
FINAL_NLL_TERM = Attr("final_nll_term", "data term over the last logging window", "nats")
FINAL_KL_TERM = Attr("final_kl_term", "KL / N over the last logging window", "nats per sample")
FINAL_TRAIN_ACCURACY = Attr(
    "final_train_accuracy", "training-batch accuracy over the last logging window", "fraction"
)
STEPS = Attr("steps", "optimiser steps")
TRAIN_SECONDS = Attr("train_seconds", "training time (excluding time before a resume)", "s")
NUM_DATA = Attr("num_data", "N of the objective NLL + KL / N")
COORDINATES = Attr("coordinates", "trainable mean entries with a posterior (fixed W-Asym excluded)")
VARIATIONAL_PARAMETERS = Attr(
    "variational_parameters", "entries of the posterior: means, factors, learned log-variances"
)
POSTERIOR = Attr("posterior", "the variational family and prior settings")
OBJECTIVE = Attr("objective", "the training objective, in words")

BNN = RecordKind(
    "bnn",
    "Variational training of one Bayesian network (ELRG posterior)",
    "<seed>",
    (STEP, ELBO, NLL_TERM, KL_TERM, TRAIN_ACCURACY, SECONDS),
    (
        FINAL_ELBO,
        FINAL_NLL_TERM,
        FINAL_KL_TERM,
        FINAL_TRAIN_ACCURACY,
        STEPS,
        TRAIN_SECONDS,
        NUM_DATA,
        COORDINATES,
        VARIATIONAL_PARAMETERS,
        POSTERIOR,
        OBJECTIVE,
    ),
    (
        Column("final ELBO", FINAL_ELBO.name, MEAN_STD, overview=True),
        Column("final NLL term", FINAL_NLL_TERM.name, MEAN_STD),
        Column("final KL/N", FINAL_KL_TERM.name, MEAN_STD),
        Column("final train accuracy", FINAL_TRAIN_ACCURACY.name, MEAN_STD),
        Column("training seconds", TRAIN_SECONDS.name, MEAN_STD),
    ),
    records_label="posteriors",
    optional=True,
)
