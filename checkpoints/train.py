"""Training zoo models into a checkpoint directory (``ROOT/<group>/<seed>/{init,final}.pt``).

Deterministic for a seed: the seed fixes the trainable initialisation (through
:func:`checkpoints.zoo.build`) and the data order (a ``torch.Generator``); the mask seed
of the architecture is shared by every seed of a group. Defaults follow the paper's MLP
recipe: AdamW, lr 1e-3, weight decay 0.03, batch 64.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from landscape.errors import UserError
from landscape.evaluation import check_targets, evaluate, loss_sum

from . import zoo
from .discover import Run
from .io import SIDECAR_NAME, save_checkpoint, write_json_atomic
from .sources import DataSet


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 25
    lr: float = 1e-3
    weight_decay: float = 0.03
    batch_size: int = 64
    optimizer: str = "adamw"


def train_model(
    model: nn.Module,
    train: DataSet,
    settings: TrainSettings,
    *,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
) -> nn.Module:
    """Train ``model`` in place with AdamW on cross-entropy; data order from ``seed``."""
    if settings.epochs < 0:
        raise UserError(f"--epochs must be >= 0, got {settings.epochs}")
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(10_007 * int(seed) + 1)
    X, y = train.X, train.y
    n = X.shape[0]
    if not y.is_floating_point():
        with torch.no_grad():
            check_targets(model.eval()(X[:2]), (int(y.min()), int(y.max())))
    model.train()
    bar = tqdm(range(settings.epochs), desc=desc, leave=False, disable=not progress)
    for _ in bar:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, settings.batch_size):
            idx = order[i : i + settings.batch_size]
            if idx.numel() < 2 and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
            ):
                continue  # BatchNorm cannot train on one sample
            opt.zero_grad(set_to_none=True)
            loss = loss_sum(model(X[idx]), y[idx]) / idx.numel()
            loss.backward()
            opt.step()
    model.eval()
    return model


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
) -> list[Run]:
    """Train every (variant, seed) and write ``init``/``final`` checkpoints with a sidecar per seed.

    Seeds whose ``final.pt`` and sidecar already exist are skipped (resume after a kill).
    ``option`` names ``root`` on the command line, for the message when it cannot be written.
    """
    root = Path(root)
    kw = dict(arch_kwargs or {})
    kw.setdefault("num_classes", train.num_classes)
    if arch == "mlp":
        kw.setdefault("input_dim", int(torch.tensor(train.input_shape).prod()))
    else:
        kw.setdefault("in_channels", train.input_shape[0])
    runs = []
    jobs = [(v, s) for v in variants for s in seeds]
    bar = tqdm(jobs, desc="models", disable=not progress)
    for variant, seed in bar:
        variant = zoo._check_variant(variant)
        d = root / variant / f"seed{seed}"
        side = d / SIDECAR_NAME
        if resume and (d / "final.pt").is_file() and side.is_file():
            runs.append(Run(variant, d.name, d / "final.pt", d / "init.pt"))
            continue
        t0 = time.perf_counter()
        model = zoo.build(arch, variant, seed=seed, mask_seed=mask_seed, **kw)
        save_checkpoint(model, d / "init.pt", option=option)
        train_model(
            model, train, settings, seed=seed, progress=progress, desc=f"{variant} seed{seed}"
        )
        tr, te = evaluate(model, train.pair), evaluate(model, test.pair)
        save_checkpoint(model, d / "final.pt", option=option)
        cfg = dict(model.config)
        sidecar = {
            "arch": cfg.pop("arch"),
            "variant": cfg.pop("variant"),
            "seed": cfg.pop("seed"),
            "kwargs": cfg,
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
