"""Metanetworks: predicting a network's properties (test accuracy, ...) from its weights.

The input of a metanetwork is the vector of a network's *trainable* coordinates, in the
order of :class:`~landscape.params.ParamView`: fixed W-Asym entries are not coordinates, and
buffers (FiGLU matrices, masks, BatchNorm statistics) are not parameters, so neither ever
reaches a metanetwork. Standard networks have permutation symmetries (every permutation of
a hidden layer's units gives another vector for the same function), which a metanetwork
must learn to ignore; W-Asym networks do not (Lim et al. 2024).

Pieces (nothing here reads or writes files):

- :func:`population_matrix`: the coordinate vectors of many networks of one architecture;
- :func:`tensor_statistics`: StatNN's features, per tensor
  ``[mean, var, min, max, q25, q50, q75]`` (``var = mean((w - mean)^2)``, quantiles by linear
  interpolation between order statistics, as ``numpy.quantile``);
- :func:`split_population`: a seeded train/validation/test split of the networks;
- :class:`FlatPermuter`: random permutations from a permutation spec applied to coordinate
  vectors (the augmentation for standard networks);
- :func:`fit_metanet`: training with AdamW on the squared error of standardised targets,
  a learning-rate sweep, and the model (learning rate, epoch) of best validation R^2;
- :func:`r2_score` (``1 - SS_res / SS_tot``, sklearn's definition) and :func:`kendall_tau`
  (tau-b, scipy's default).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .errors import UserError
from .metanet_models import HIDDEN, build_metanet
from .params import ParamView, fixed_buffers
from .records.metanet import METANETS

STATISTICS = ("mean", "var", "min", "max", "q25", "q50", "q75")


# ----------------------------------------------------------------------------- metrics
def r2_score(y: Sequence[float], yhat: Sequence[float]) -> float:
    """``1 - sum (y - yhat)^2 / sum (y - mean(y))^2`` (sklearn's ``r2_score``; NaN when y is constant)."""
    y, yhat = np.asarray(y, float), np.asarray(yhat, float)
    tot = float(((y - y.mean()) ** 2).sum())
    return float("nan") if tot == 0 else 1.0 - float(((y - yhat) ** 2).sum()) / tot


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: ``(C - D) / sqrt((n0 - n1)(n0 - n2))`` over all pairs ``i < j``, with
    ``C``/``D`` the concordant/discordant pairs, ``n0 = n(n-1)/2`` and ``n1``/``n2`` the pairs
    tied in ``x``/``y`` (scipy's ``kendalltau`` default). NaN when either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 2:
        return float("nan")
    s, tx, ty = 0.0, 0, 0
    for i in range(0, n - 1, 512):  # rows in blocks: O(n^2) time, O(512 n) memory
        dx = np.sign(x[i : i + 512, None] - x[None, :])
        dy = np.sign(y[i : i + 512, None] - y[None, :])
        upper = np.arange(i, min(i + 512, n))[:, None] < np.arange(n)[None, :]
        s += float((dx * dy)[upper].sum())
        tx += int(((dx == 0) & upper).sum())
        ty += int(((dy == 0) & upper).sum())
    n0 = n * (n - 1) / 2
    denom = math.sqrt((n0 - tx) * (n0 - ty))
    return float("nan") if denom == 0 else s / denom


# ----------------------------------------------------------------------------- features
@dataclass(frozen=True)
class Layout:
    """Where each parameter tensor's trainable coordinates sit in the flat vector."""

    names: tuple[str, ...]
    starts: tuple[int, ...]
    stops: tuple[int, ...]

    @classmethod
    def of(cls, view: ParamView) -> Layout:
        return cls(
            tuple(s.name for s in view.slots),
            tuple(s.start for s in view.slots),
            tuple(s.stop for s in view.slots),
        )

    @property
    def dim(self) -> int:
        return self.stops[-1] if self.stops else 0

    def tensor_ids(self) -> Tensor:
        """The tensor index of every coordinate, ``(D,)``."""
        ids = torch.empty(self.dim, dtype=torch.long)
        for t, (a, b) in enumerate(zip(self.starts, self.stops)):
            ids[a:b] = t
        return ids


def population_matrix(models: Iterable[nn.Module]) -> tuple[Tensor, Layout]:
    """The coordinate vectors of ``models`` as rows of an ``(N, D)`` float32 matrix, and their layout.

    Every model must have the first model's layout (parameter names, shapes and trainable
    entries); otherwise rows would not be comparable and :class:`UserError` says which differs.
    """
    rows, layout = [], None
    for i, m in enumerate(models):
        view = ParamView(m)
        lay = Layout.of(view)
        if layout is None:
            layout = lay
        elif lay != layout:
            raise UserError(
                f"model {i} has another parameter layout than model 0: not one population"
            )
        rows.append(view.get().detach().float().cpu())
    if layout is None:
        raise UserError("no models given")
    return torch.stack(rows), layout


def _quantiles(sorted_rows: Tensor, qs: Sequence[float]) -> list[Tensor]:
    """Quantiles of each row of an already sorted matrix (linear interpolation, numpy's default)."""
    n = sorted_rows.shape[1]
    out = []
    for q in qs:
        pos = (n - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        frac = pos - lo
        out.append(sorted_rows[:, lo] * (1 - frac) + sorted_rows[:, hi] * frac)
    return out


def tensor_statistics(X: Tensor, layout: Layout, chunk: int = 256) -> Tensor:
    """StatNN features: for every tensor ``t`` (in layout order) the 7 statistics of
    :data:`STATISTICS` over its coordinates, as an ``(N, 7 T)`` matrix (tensor-major)."""
    feats = []
    for a, b in zip(layout.starts, layout.stops):
        cols = []
        for i in range(0, X.shape[0], chunk):
            w = X[i : i + chunk, a:b].double()
            mean = w.mean(dim=1)
            var = ((w - mean[:, None]) ** 2).mean(dim=1)
            s = w.sort(dim=1).values
            cols.append(
                torch.stack([mean, var, s[:, 0], s[:, -1], *_quantiles(s, (0.25, 0.5, 0.75))], 1)
            )
        feats.append(torch.cat(cols))
    return torch.cat(feats, dim=1).float()


# ----------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Disjoint index arrays into the population's networks, and how they were drawn."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    seed: int
    fractions: tuple[float, float, float]

    def labels(self, n: int) -> np.ndarray:
        """``"train"``, ``"validation"`` or ``"test"`` for every network."""
        out = np.empty(n, dtype=object)
        out[self.train], out[self.validation], out[self.test] = "train", "validation", "test"
        return out.astype(str)

    @property
    def sizes(self) -> list[int]:
        return [len(self.train), len(self.validation), len(self.test)]


def split_sizes(n: int, fractions: Sequence[float] = (0.5, 0.25, 0.25)) -> tuple[int, int, int]:
    """``(floor(f_train n), floor(f_val n), rest)``."""
    a, b = int(math.floor(fractions[0] * n)), int(math.floor(fractions[1] * n))
    return a, b, n - a - b


def split_population(
    n: int, seed: int = 0, fractions: Sequence[float] = (0.5, 0.25, 0.25)
) -> Split:
    """A seeded random split of ``n`` networks: ``numpy.random.default_rng(seed).permutation(n)``
    cut into :func:`split_sizes`; each part sorted. Needs at least 4 training networks and 2 in
    each of the others (R^2 and tau need pairs), else :class:`UserError`."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or any(f <= 0 for f in fr) or abs(sum(fr) - 1) > 1e-9:
        raise UserError(
            f"--split {fractions}: three positive fractions summing to 1, e.g. 0.5,0.25,0.25"
        )
    a, b, c = split_sizes(n, fr)
    if a < 4 or b < 2 or c < 2:
        raise UserError(
            f"{n} network{'s' if n != 1 else ''} {'are' if n != 1 else 'is'} too few for a {fr[0]:g}/{fr[1]:g}/{fr[2]:g} split ({a}/{b}/{c}): the "
            "split needs at least 4 training networks and 2 each for validation and test; train more"
        )
    order = np.random.default_rng(int(seed)).permutation(n)
    return Split(
        np.sort(order[:a]), np.sort(order[a : a + b]), np.sort(order[a + b :]), int(seed), fr
    )


# ----------------------------------------------------------------------------- augmentation
class FlatPermuter:
    """Random symmetry permutations of flat coordinate vectors (standard networks only).

    For a permutation ``pi`` of every group of the model's spec, the permuted network's
    coordinates are ``theta'[i] = theta[g_pi(i)]``, ``g_pi`` the gather index obtained by
    moving an index tensor of each parameter by the spec
    (the axes and groups of :func:`landscape.permute.permute_tensor`). The model must have no fixed buffers (masks,
    FiGLU matrices): a permutation of their networks is not a symmetry.
    """

    def __init__(self, model: nn.Module, spec=None):
        from .spec_resolution import checked_spec

        if fixed_buffers(model):
            raise UserError(
                "permutation augmentation needs a network whose permutations are symmetries "
                "(a standard network without masks or FiGLU matrices)"
            )
        self.spec = checked_spec(model, spec)
        if not self.spec.flat:
            raise UserError(
                "permutation augmentation moves whole axes; this spec has per-head (nested) groups "
                "or ranges of packed tensors: leave out the mlp_perm metanet"
            )
        self.view = ParamView(model)
        moves = self.spec.moves()
        self.parts = [
            (s.start, s.shape, moves.get(s.name, [])) for s in self.view.slots
        ]  # masks are excluded above, so each slot covers its whole tensor

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Every row of ``x`` (B, D) moved by its own random permutation (all rows at once:
        ``T'[b, ..., i, ...] = T[b, ..., p_b[i], ...]`` by one ``gather`` per tensor axis)."""
        b = x.shape[0]
        perms = {
            g: torch.argsort(torch.rand(b, n, generator=gen), dim=1)
            for g, n in self.spec.sizes.items()
        }
        parts = []
        for start, shape, mv in self.parts:
            t = torch.arange(start, start + shape.numel()).reshape(shape).expand(b, *shape)
            for axis, g in mv:
                p, size = perms[g], shape[axis]
                k = size // p.shape[1]  # a flattened (C x H x W) axis moves in blocks of k
                idx = p if k == 1 else (p[:, :, None] * k + torch.arange(k)).reshape(b, size)
                view = [b] + [1] * len(shape)
                view[axis + 1] = size
                t = torch.gather(t, axis + 1, idx.reshape(view).expand(b, *t.shape[1:]))
            parts.append(t.reshape(b, -1))
        return torch.gather(x, 1, torch.cat(parts, 1).to(x.device))


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class MetanetSettings:
    """Training of one metanet: ``epochs`` of AdamW (``weight_decay``) on minibatches of
    ``batch_size`` networks, minimising the mean squared error of targets standardised with
    the training networks' mean and std; one run per learning rate in ``lrs``; ``hidden``
    overrides the metanet's default width."""

    epochs: int = 50
    batch_size: int = 128
    lrs: tuple[float, ...] = (1e-3, 1e-4)
    weight_decay: float = 0.01
    hidden: int | None = None

    def check(self) -> MetanetSettings:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch-size of the metanets must be positive")
        if not self.lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise UserError(f"--lrs {list(self.lrs)}: positive learning rates, e.g. 1e-3,1e-4")
        if self.weight_decay < 0:
            raise UserError("--weight-decay of the metanets must be >= 0")
        return self


@dataclass(frozen=True)
class MetanetFit:
    """One trained metanet: predictions for every network, test R^2 and tau, the selection.

    ``train_mse`` and ``validation_r2`` are the curves (per epoch) of the selected learning
    rate's run; ``selected_epoch`` is 1-based.
    """

    name: str
    seed: int
    predicted: np.ndarray
    test_r2: float
    kendall_tau: float
    train_r2: float
    validation_r2: float
    selected_lr: float
    selected_epoch: int
    train_mse: np.ndarray
    validation_r2_curve: np.ndarray
    seconds_per_epoch: float
    settings: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"epoch": np.arange(1, len(self.train_mse) + 1), "train_mse": self.train_mse,
             "validation_r2": self.validation_r2_curve}
        )  # fmt: skip


def prepare_inputs(name: str, X: Tensor, layout: Layout, train: np.ndarray) -> Tensor:
    """What metanet ``name`` reads: StatNN's statistics standardised per feature, or the
    coordinates standardised per tensor (one mean and std per tensor, over the training
    networks' entries of it, so a permutation within a tensor commutes with it)."""
    if name == "statnn":
        F = tensor_statistics(X, layout)
        mu, sd = F[train].mean(0), F[train].std(0)
        return (F - mu) / torch.where(sd > 0, sd, torch.ones_like(sd))
    out = torch.empty_like(X)
    for a, b in zip(layout.starts, layout.stops):
        block = X[train, a:b]
        mu, sd = float(block.mean()), float(block.std()) if block.numel() > 1 else 1.0
        out[:, a:b] = (X[:, a:b] - mu) / (sd if sd > 0 else 1.0)
    return out


def fit_metanet(
    name: str,
    inputs: Tensor,
    targets: np.ndarray,
    split: Split,
    layout: Layout,
    settings: MetanetSettings = MetanetSettings(),
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    permuter: FlatPermuter | None = None,
) -> MetanetFit:
    """Train metanet ``name`` on ``inputs`` (:func:`prepare_inputs`) to predict ``targets``.

    For each learning rate, ``settings.epochs`` epochs; after every epoch the validation R^2
    of the predictions is measured and the best (learning rate, epoch) is kept. Returns its
    predictions for every network and its R^2 and Kendall tau on the test networks. ``seed``
    fixes the metanet's initialisation, the batch order and the augmentation draws; ``permuter``
    (``mlp_perm``) permutes each training batch's networks at random.
    """
    if name not in METANETS:
        raise UserError(f"unknown metanet {name!r}: use one of {', '.join(METANETS)}")
    settings.check()
    dev = torch.device(device)
    y = np.asarray(targets, dtype=float)
    mu, sd = float(y[split.train].mean()), float(y[split.train].std())
    sd = sd if sd > 0 else 1.0
    yz = torch.as_tensor((y - mu) / sd, dtype=torch.float32, device=dev)
    x = inputs.to(dev)
    train_idx = torch.as_tensor(split.train, device=dev)
    val_idx = torch.as_tensor(split.validation, device=dev)
    best: tuple[float, float, int, dict, np.ndarray, np.ndarray] | None = None
    seconds, epochs_run = 0.0, 0
    for lr in settings.lrs:
        gen = torch.Generator().manual_seed(seed)  # the same batches for every learning rate
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the same initialisation for every learning rate
            model = build_metanet(name, x.shape[1], layout.tensor_ids(), settings.hidden).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.weight_decay)
        losses, val_curve = [], []
        run_best = (-math.inf, 0, None)
        for epoch in range(settings.epochs):
            t0 = time.perf_counter()
            model.train()
            order = train_idx[torch.randperm(len(train_idx), generator=gen).to(dev)]
            total = 0.0
            for i in range(0, len(order), settings.batch_size):
                idx = order[i : i + settings.batch_size]
                if len(idx) < 2 and name == "dmc":
                    continue  # BatchNorm needs two samples
                xb = x[idx] if permuter is None else permuter(x[idx], gen)
                loss = ((model(xb) - yz[idx]) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(order))
            pred = _predict(model, x[val_idx], settings.batch_size) * sd + mu
            val_curve.append(r2_score(y[split.validation], pred))
            seconds += time.perf_counter() - t0
            epochs_run += 1
            score = val_curve[-1] if math.isfinite(val_curve[-1]) else -math.inf
            if score > run_best[0] or run_best[2] is None:
                run_best = (score, epoch + 1, copy.deepcopy(model.state_dict()))
        if best is None or run_best[0] > best[0]:
            best = (
                run_best[0],
                lr,
                run_best[1],
                run_best[2],
                np.asarray(losses),
                np.asarray(val_curve),
            )
    _, lr, epoch, state, losses, val_curve = best
    model.load_state_dict(state)
    pred = _predict(model, x, settings.batch_size) * sd + mu
    t = split.test
    return MetanetFit(
        name,
        seed,
        pred,
        r2_score(y[t], pred[t]),
        kendall_tau(y[t], pred[t]),
        r2_score(y[split.train], pred[split.train]),
        r2_score(y[split.validation], pred[split.validation]),
        float(lr),
        int(epoch),
        losses,
        val_curve,
        seconds / max(1, epochs_run),
        {
            "epochs": settings.epochs,
            "batch_size": settings.batch_size,
            "lrs": list(settings.lrs),
            "weight_decay": settings.weight_decay,
            "hidden": settings.hidden or HIDDEN[name],
            "optimizer": "adamw",
            "loss": "mean squared error of (target - train mean) / train std",
            "selection": "the (learning rate, epoch) of best validation R^2",
        },
    )


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch: int) -> np.ndarray:
    model.eval()
    out = [model(x[i : i + batch]) for i in range(0, x.shape[0], batch)]
    return torch.cat(out).double().cpu().numpy()
