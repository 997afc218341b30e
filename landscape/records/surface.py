"""Records of the surface study: the loss on a line or plane of parameter space."""

from __future__ import annotations

from .base import FIRST, MEAN_STD, Attr, Column, RecordKind, Var

X = Var("x", ("x",), "direction units", "grid coordinates along direction x")
Y = Var("y", ("y",), "direction units", "grid coordinates along direction y")
LOSS = Var(
    "loss",
    ("x", "y"),
    "nats",
    "mean loss over the samples (tokens for a token-level loss; settings.loss names it) at "
    "theta0 + x d_x + y d_y; NaN where not computed yet (see done)",
    optional_dims=1,
)
ACCURACY = Var(
    "accuracy",
    ("x", "y"),
    "fraction",
    "top-1 accuracy; NaN where not computed yet or for regression",
    optional_dims=1,
)
DONE = Var("done", ("x", "y"), "1", "1 where the point has been computed", "bool", optional_dims=1)
DIRECTIONS = Var(
    "directions",
    ("direction", "coordinate"),
    "1",
    "direction vectors over the trainable coordinates of ParamView(model), rows in axis order",
    "float32",
)

TRAJECTORY = Var(
    "trajectory",
    ("checkpoint", "direction"),
    "direction units",
    "PCA directions: grid coordinates of each training checkpoint, the least-squares projection "
    "of theta_t - theta_final onto the directions (the final model at the origin)",
)
CHECKPOINT = Var(
    "checkpoint", ("checkpoint",), "1", "the trajectory's checkpoints, in training order", "str"
)
EXPLAINED_VARIANCE = Var(
    "explained_variance",
    ("direction",),
    "fraction",
    "PCA directions: share of the trajectory's variance along each direction",
)

AXES = Attr("axes", "the grid's dimension names")
SPLIT = Attr("split", "the data split the loss is measured on")
BN = Attr("bn", "BatchNorm statistics at each point: eval or reset")
DEFINITION = Attr("definition", "what loss[i, j] is, in words")
DIRECTIONS_INFO = Attr("directions", "how the directions were made: normalisation, seed, landmarks")
NUM_SAMPLES = Attr("num_samples", "samples the loss is averaged over")
ORIGIN_LOSS = Attr("origin_loss", "the loss at theta0", "nats")
ORIGIN_ACCURACY = Attr("origin_accuracy", "the accuracy at theta0", "fraction")
POINTS_DONE = Attr("points_done", "grid points computed so far")
POINTS_TOTAL = Attr("points_total", "grid points in all")
TOKEN = Attr("token", "hash of model, directions, data and settings: a resume must match it")
MIN_LOSS = Attr("min_loss", "the smallest loss on the grid", "nats")
RADIUS = Attr("radius", "the radius of the sharpness measure", "direction units")
RISE_AT_RADIUS = Attr(
    "rise_at_radius",
    "sharpness: mean loss at distance radius from theta0 minus the loss at theta0",
    "nats",
)

SURFACE = RecordKind(
    "surface",
    "Loss surface on a line or plane through one network (or through three)",
    "<seed> or <A>-<B>-<C>",
    (X, Y, LOSS, ACCURACY, DONE, DIRECTIONS, TRAJECTORY, CHECKPOINT, EXPLAINED_VARIANCE),
    (
        AXES,
        SPLIT,
        BN,
        DEFINITION,
        DIRECTIONS_INFO,
        NUM_SAMPLES,
        ORIGIN_LOSS,
        ORIGIN_ACCURACY,
        POINTS_DONE,
        POINTS_TOTAL,
        TOKEN,
        MIN_LOSS,
        RADIUS,
        RISE_AT_RADIUS,
    ),
    (
        Column("points", POINTS_TOTAL.name, FIRST),
        Column("min loss", MIN_LOSS.name, MEAN_STD),
        Column("origin loss", ORIGIN_LOSS.name, MEAN_STD),
        Column("rise at radius", RISE_AT_RADIUS.name, MEAN_STD),
        Column("radius", RADIUS.name, FIRST),
        Column("origin accuracy", ORIGIN_ACCURACY.name, MEAN_STD),
    ),
    renamed_v1={"xcoordinates": "x", "ycoordinates": "y"},
)
