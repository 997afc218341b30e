"""Training zoo models into a checkpoint directory (``ROOT/<group>/<seed>/{init,final}.pt``).

Deterministic for a seed: the seed fixes the trainable initialisation (through
:func:`checkpoints.zoo.build`), the data order and the augmentation draws (two
``torch.Generator`` s); the mask seed of the architecture is shared by every seed of a
group. Defaults follow the paper's MLP recipe: AdamW, lr 1e-3, weight decay 0.03, batch 64,
constant learning rate, no label smoothing, no augmentation.

The data fixes the architecture's input side (:func:`_data_kwargs`): input size and classes
for images; vocabulary, sequence length and classes for token data (``modular:P``) and the
zoo ``transformer``, which alone reads token ids.

Options (all recorded in the sidecar's ``training``):

- learning-rate schedules over the optimiser steps ``t = 0 .. T-1`` (:func:`lr_factor`):
  ``constant``; ``triangular`` (one cycle: linear from 0 up to ``lr`` at ``peak_epoch``,
  then linear down to 0 at the end, as the paper's ResNet-8 zoos); ``cosine`` (linear
  warm-up over ``warmup_epochs``, then ``(1 + cos(pi u)) / 2``);
- label smoothing ``eps``: cross-entropy against ``(1 - eps) onehot(y) + eps / K``;
- image augmentation (inputs ``(N, C, H, W)`` only): ``crop`` (pad by ``augment_pad`` zero
  pixels, i.e. the normalised mean, and crop back at a random offset: a random translation by
  up to ``augment_pad`` pixels; ``translate`` is the same), ``flip`` (horizontal, probability
  1/2), or both (``crop+flip``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from landscape.errors import UserError
from landscape.evaluation import check_targets, evaluate, loss_sum

from . import zoo
from .discover import Run
from .io import SIDECAR_NAME, model_sidecar, save_checkpoint, write_json_atomic
from .sources import DataSet

SCHEDULES = ("constant", "triangular", "cosine")
AUGMENTS = ("none", "crop", "flip", "crop+flip")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 25
    lr: float = 1e-3
    weight_decay: float = 0.03
    batch_size: int = 64
    optimizer: str = "adamw"
    schedule: str = "constant"
    peak_epoch: float = 5.0
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    augment: str = "none"
    augment_pad: int = 4

    def check(self) -> TrainSettings:
        """The settings, or :class:`UserError` naming the first bad one (as its CLI option)."""
        if self.epochs < 0:
            raise UserError(f"--epochs must be >= 0, got {self.epochs}")
        if self.optimizer != "adamw":
            raise UserError(f"optimizer {self.optimizer!r}: only adamw is supported")
        if self.schedule not in SCHEDULES:
            raise UserError(f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.augment not in AUGMENTS:
            raise UserError(f"--augment {self.augment!r}: use one of {', '.join(AUGMENTS)}")
        if self.augment_pad < 0 or self.peak_epoch < 0 or self.warmup_epochs < 0:
            raise UserError("--augment-pad, --peak-epoch and --warmup-epochs must be >= 0")
        return self


def normalise_augment(text: str) -> str:
    """``"translate,flip"`` / ``"flip+crop"`` / ``"crop"`` ... as one of :data:`AUGMENTS`."""
    parts = {p.strip().lower() for p in text.replace(",", "+").split("+") if p.strip()}
    parts = {"crop" if p == "translate" else p for p in parts} - {"none"}
    unknown = parts - {"crop", "flip"}
    if unknown:
        raise UserError(
            f"--augment {text!r}: unknown augmentation {sorted(unknown)[0]!r}; use none, crop "
            "(translate), flip or crop+flip"
        )
    return "+".join(a for a in ("crop", "flip") if a in parts) or "none"


def lr_factor(settings: TrainSettings, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) over ``settings.lr``.

    With ``T = epochs * steps_per_epoch`` steps and ``u = (step + 1/2) / steps_per_epoch``
    (the step's midpoint in epochs, so neither the first nor the last step has rate 0):

    - ``constant``: 1;
    - ``triangular``: ``u / P`` for ``u <= P``, then ``(E - u) / (E - P)`` (``P`` = peak
      epoch, at most ``E`` = epochs): the paper's single triangle;
    - ``cosine``: ``u / W`` during the warm-up ``W`` epochs, then
      ``(1 + cos(pi (u - W) / (E - W))) / 2``.
    """
    u = (step + 0.5) / steps_per_epoch
    total = float(settings.epochs)
    if settings.schedule == "triangular":
        peak = min(float(settings.peak_epoch), total)
        if u <= peak and peak > 0:
            return u / peak
        return max(0.0, (total - u) / (total - peak)) if total > peak else 1.0
    if settings.schedule == "cosine":
        warm = min(float(settings.warmup_epochs), total)
        if u < warm:
            return u / warm
        rest = total - warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (u - warm) / rest))) if rest > 0 else 1.0
    return 1.0


def augment_batch(x: Tensor, augment: str, pad: int, gen: torch.Generator) -> Tensor:
    """A randomly translated (``crop``) and/or horizontally flipped (``flip``) copy of ``x`` (N, C, H, W).

    ``crop``: ``out[n, :, i, j] = xpad[n, :, i + dy_n, j + dx_n]`` with ``xpad`` the input
    zero-padded by ``pad`` on every side and ``dy_n, dx_n`` uniform in ``0 .. 2 pad``;
    ``flip``: ``x[n, :, :, ::-1]`` with probability 1/2. Draws come from ``gen`` (CPU).
    """
    n, _, h, w = x.shape
    if "crop" in augment and pad > 0:
        shift = torch.randint(0, 2 * pad + 1, (2, n), generator=gen).to(x.device)
        padded = F.pad(x, (pad, pad, pad, pad))
        rows = (shift[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shift[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if "flip" in augment:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def train_model(
    model: nn.Module,
    train: DataSet,
    settings: TrainSettings,
    *,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place with AdamW on (label-smoothed) cross-entropy, or squared error for
    float targets; the learning rate follows ``settings.schedule`` (:func:`lr_factor`); data
    order and augmentation draws from ``seed``. ``on_epoch(k, model)`` runs after epoch ``k``
    (1-based), e.g. to keep the trajectory's checkpoints."""
    settings.check()
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(10_007 * int(seed) + 1)
    X, y = train.X, train.y
    n = X.shape[0]
    tokens = not y.is_floating_point() and y.dim() > 1  # language modelling (landscape "lm")
    if tokens and settings.label_smoothing:
        raise UserError("label smoothing applies to class labels, not to language modelling")
    if not y.is_floating_point():
        with torch.no_grad():
            out = model.eval()(X[:2])
            if tokens:
                out = out.reshape(-1, out.shape[-1])
            check_targets(out, (int(y.min()), int(y.max())))
    elif settings.label_smoothing:
        raise UserError("label smoothing needs class labels; the data has float targets")
    augment = settings.augment
    if augment != "none" and X.dim() != 4:
        raise UserError(
            f"--augment {augment} needs images (N, C, H, W); the inputs have shape "
            f"{tuple(X.shape[1:])}: use --augment none"
        )
    aug_gen = torch.Generator().manual_seed(10_007 * int(seed) + 2)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    per_epoch = max(1, math.ceil(n / settings.batch_size))
    step = 0
    model.train()
    bar = tqdm(range(settings.epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, settings.batch_size):
            idx = order[i : i + settings.batch_size]
            if settings.schedule != "constant":
                for group in opt.param_groups:
                    group["lr"] = settings.lr * lr_factor(settings, step, per_epoch)
            step += 1
            if idx.numel() < 2 and has_bn:
                continue  # BatchNorm cannot train on one sample
            xb = X[idx]
            if augment != "none":
                xb = augment_batch(xb, augment, settings.augment_pad, aug_gen)
            opt.zero_grad(set_to_none=True)
            if tokens:  # mean over the batch's tokens (the lm objective's unit)
                out = model(xb)
                loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y[idx].reshape(-1))
            elif settings.label_smoothing:
                loss = F.cross_entropy(model(xb), y[idx], label_smoothing=settings.label_smoothing)
            else:
                loss = loss_sum(model(xb), y[idx]) / idx.numel()
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    model.eval()
    return model


def _data_kwargs(arch: str, kw: dict[str, Any], train: DataSet, test: DataSet) -> dict[str, Any]:
    """The constructor arguments the data fixes (input size, classes; for the transformer the
    vocabulary and sequence length), unless given; :class:`UserError` when data and model
    cannot meet (token ids for an image model, images for the transformer)."""
    spec = train.description.get("spec", "the data")
    tokens = not train.X.is_floating_point()
    out = {"num_classes": kw.get("num_classes", train.num_classes)}
    if arch == "transformer":
        if not tokens or train.X.dim() != 2:
            raise UserError(
                f"--data {spec}: --arch transformer reads integer token ids (N, T), the data has "
                f"{train.X.dtype} inputs of shape {tuple(train.X.shape[1:])}: use modular:P or text:FILE"
            )
        if train.y.dim() > 1:  # a target at every position: language modelling, all logits
            out["all_positions"] = kw.get("all_positions", True)
        vocab = train.description.get("vocab_size") or int(max(train.X.max(), test.X.max())) + 1
        out.update(vocab_size=kw.get("vocab_size", int(vocab)))
        out.update(max_len=kw.get("max_len", int(train.X.shape[1])))
    elif tokens:
        raise UserError(
            f"--data {spec} holds integer token ids: train them with --arch transformer"
        )
    elif arch == "mlp":
        out["input_dim"] = kw.get("input_dim", int(torch.tensor(train.input_shape).prod()))
    else:
        out["in_channels"] = kw.get("in_channels", train.input_shape[0])
    return out


def train_group(
    root: str | Path,
    arch: str,
    variants: Sequence[str],
    seeds: Sequence[int],
    train: DataSet,
    test: DataSet,
    settings: TrainSettings,
    *,
    arch_kwargs: dict[str, Any] | None = None,
    mask_seed: int = 0,
    progress: bool = True,
    resume: bool = True,
    option: str = "--out",
    save_every: int | None = None,
) -> list[Run]:
    """Train every (variant, seed) and write ``init``/``final`` checkpoints with a sidecar per seed.

    Seeds whose ``final.pt`` and sidecar already exist are skipped (resume after a kill).
    ``save_every=K`` also keeps the trajectory: ``epoch<k>.pt`` after every K-th epoch but the
    last (that one is ``final.pt``), read back by :func:`checkpoints.discover.trajectory`.
    ``option`` names ``root`` on the command line, for the message when it cannot be written.
    """
    if save_every is not None and (isinstance(save_every, bool) or int(save_every) < 1):
        raise UserError(f"--save-every must be a positive number of epochs, got {save_every}")
    root = Path(root)
    kw = dict(arch_kwargs or {})
    kw.update(_data_kwargs(arch, kw, train, test))
    if settings.label_smoothing and not train.y.is_floating_point() and train.y.dim() > 1:
        raise UserError("label smoothing applies to class labels, not to language modelling")
    runs = []
    jobs = [(v, s) for v in variants for s in seeds]
    bar = tqdm(jobs, desc="models", disable=not progress)
    for variant, seed in bar:
        variant = zoo.check_variant(variant, zoo.arch_variants(arch))
        d = root / variant / f"seed{seed}"
        side = d / SIDECAR_NAME
        if resume and (d / "final.pt").is_file() and side.is_file():
            runs.append(Run(variant, d.name, d / "final.pt", d / "init.pt"))
            continue
        t0 = time.perf_counter()
        model = zoo.build(arch, variant, seed=seed, mask_seed=mask_seed, **kw)
        save_checkpoint(model, d / "init.pt", option=option)

        def keep(epoch: int, m: nn.Module, d: Path = d) -> None:
            if save_every and epoch % save_every == 0 and epoch < settings.epochs:
                save_checkpoint(m, d / f"epoch{epoch}.pt", option=option)

        train_model(
            model,
            train,
            settings,
            seed=seed,
            progress=progress,
            desc=f"{variant} seed{seed}",
            on_epoch=keep if save_every else None,
        )
        objective = "lm" if not train.y.is_floating_point() and train.y.dim() > 1 else None
        tr = evaluate(model, train.pair, objective=objective)
        te = evaluate(model, test.pair, objective=objective)
        save_checkpoint(model, d / "final.pt", option=option)
        sidecar = {
            **model_sidecar(model),
            "data": {"train": train.description, "test": test.description},
            "training": {**settings.__dict__, "seconds": round(time.perf_counter() - t0, 2)},
            "metrics": {
                "train_loss": tr.loss,
                "train_accuracy": tr.accuracy,
                "test_loss": te.loss,
                "test_accuracy": te.accuracy,
            },
        }
        write_json_atomic(side, sidecar, option=option)
        runs.append(Run(variant, d.name, d / "final.pt", d / "init.pt", sidecar))
    return runs
