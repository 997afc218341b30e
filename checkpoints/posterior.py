"""Posterior checkpoints of variational (Bayesian) networks: write, recognise, read back.

A posterior checkpoint is an ordinary checkpoint of the *mean network* (``state_dict`` and
the zoo config under ``landscape``, so :func:`checkpoints.load_model` reads it as the mean
network) with one more entry::

    "posterior": {
        "format": "landscape-elrg-1",
        "settings": {rank, learn_diag, q_init_logvar, prior_precision, prior_scaling},
        "layers": {"<layer name>": {"weight_factors": (r, *W.shape), "bias_factors": (r, out),
                                     "weight_log_var": W.shape, "bias_log_var": (out,)}},
    }

(factors only when ``rank > 0``, log-variances only when the diagonal was learned; the
fixed diagonal is ``exp(q_init_logvar)``). :func:`load_posterior` rebuilds the
:class:`landscape.bnn.VariationalNet`: the architecture comes, as for every checkpoint,
only from the zoo (a file never decides what code runs), and every factor is checked
against it. Files load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from landscape.bnn import PosteriorSettings, VariationalNet
from landscape.errors import UserError

from .io import (
    check_tensor,
    load_model,
    save_payload,
    torch_load,
)

FORMAT = "landscape-elrg-1"
POSTERIOR_KEY = "posterior"
#: the tensors a layer's posterior may hold, by name
LAYER_TENSORS = ("weight_factors", "bias_factors", "weight_log_var", "bias_log_var")


def posterior_payload(model: VariationalNet) -> dict[str, Any]:
    """What a posterior checkpoint holds (CPU tensors, plain values)."""
    import json

    layers: dict[str, dict[str, Tensor]] = {}
    for key, post in model.posteriors.items():
        tensors = {
            n: t.detach().cpu().clone()
            for n, t in post.named_parameters(recurse=False)
            if n in LAYER_TENSORS
        }
        layers[model.layer_names[key]] = tensors
    return {
        "state_dict": {k: v.detach().cpu() for k, v in model.net.state_dict().items()},
        "landscape": json.loads(json.dumps(dict(model.config), default=str)),
        POSTERIOR_KEY: {
            "format": FORMAT,
            "settings": model.settings.to_dict(),
            "layers": layers,
        },
    }


def save_posterior(
    model: VariationalNet, path: str | os.PathLike, *, option: str = "--out"
) -> Path:
    """Write ``model``'s posterior checkpoint to ``path`` (atomically)."""
    return save_payload(posterior_payload(model), path, option=option, what="posterior")


def _posterior_part(path: Path) -> dict[str, Any] | None:
    if path.suffix == ".safetensors":
        return None
    obj = torch_load(path)
    if not isinstance(obj, dict):
        return None
    part = obj.get(POSTERIOR_KEY)
    return part if part is not None else None


def is_posterior(path: str | os.PathLike) -> bool:
    """True when ``path`` is a posterior checkpoint (it holds posterior factors)."""
    return _posterior_part(Path(path)) is not None


def _settings(part: Any, path: Path) -> PosteriorSettings:
    if not isinstance(part, dict) or part.get("format") != FORMAT:
        raise UserError(
            f"{path}: the posterior entry is not in the format this version reads ({FORMAT}): "
            "retrain it with landscape bnn"
        )
    raw = part.get("settings")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: the posterior holds no settings: the file is corrupt")
    fields = PosteriorSettings.__dataclass_fields__
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(f"{path}: unknown posterior settings {unknown}: the file is corrupt")
    types = {"rank": int, "learn_diag": bool, "q_init_logvar": float, "prior_precision": float}
    for k, t in types.items():
        v = raw.get(k)
        ok = (
            isinstance(v, bool) if t is bool else isinstance(v, (int, float) if t is float else int)
        )
        if k in raw and (not ok or (t is not bool and isinstance(v, bool))):
            raise UserError(f"{path}: posterior setting {k} = {v!r} has the wrong type")
    try:
        return PosteriorSettings(**raw).check()
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc


def load_posterior(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> VariationalNet:
    """The :class:`landscape.bnn.VariationalNet` of a posterior checkpoint (eval mode, sampling on).

    The mean network loads as :func:`checkpoints.load_model` loads any checkpoint (``arch``,
    ``kwargs`` as there); the factors and log-variances must fit it exactly, else
    :class:`UserError` names the layer. ``seed`` seeds the posterior noise.
    """
    path = Path(path)
    mean = load_model(path, arch=arch, **kwargs)
    part = _posterior_part(path)
    if part is None:
        raise UserError(
            f"{path}: not a posterior checkpoint (no posterior factors): it is a deterministic "
            "network; use checkpoints.load_model"
        )
    settings = _settings(part, path)
    try:
        model = VariationalNet(mean, settings, seed=seed)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    layers = part.get("layers")
    if not isinstance(layers, dict):
        raise UserError(f"{path}: the posterior holds no layers: the file is corrupt")
    expected = {
        model.layer_names[k]: {
            n: t for n, t in p.named_parameters(recurse=False) if n in LAYER_TENSORS
        }
        for k, p in model.posteriors.items()
    }
    extra = sorted(set(layers) - set(expected))
    missing = sorted(set(expected) - set(layers))
    if extra or missing:
        what = f"layers {extra[:3]} are not in the architecture" if extra else ""
        what += ("; " if what else "") + (
            f"layers {missing[:3]} have no factors" if missing else ""
        )
        raise UserError(
            f"{path}: the posterior factors do not match the architecture ({what}): "
            "the file is not a posterior of this model"
        )
    for name, own in expected.items():
        got = layers[name]
        if not isinstance(got, dict) or set(got) != set(own):
            have = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise UserError(
                f"{path}: layer {name} holds posterior tensors {have}, the settings "
                f"(rank {settings.rank}, learn_diag {settings.learn_diag}) need {sorted(own)}: "
                "the file is corrupt"
            )
        for n, t in got.items():
            if not isinstance(t, Tensor):
                raise UserError(f"{path}: layer {name} {n} is not a tensor: the file is corrupt")
            check_tensor(path, f"{name}.{n}", t)
            if t.shape != own[n].shape:
                raise UserError(
                    f"{path}: the posterior factors do not match the architecture (layer {name}: "
                    f"{n} has shape {tuple(t.shape)}, the architecture needs {tuple(own[n].shape)}): "
                    "check the sidecar or --arch"
                )
            if not torch.isfinite(t).all():
                raise UserError(f"{path}: layer {name} {n} contains NaN or Inf: the run diverged")
        with torch.no_grad():
            for n, t in got.items():
                own[n].copy_(t.to(own[n].dtype))
    model.checkpoint_path = str(path)
    if device is not None:
        from landscape.data import resolve_device

        model.to(resolve_device(device))
    return model.eval()
