"""Checkpoints of the paper's public code, recognised by their key layout and translated.

The public code names its layers ``lins.i`` / ``norms.i`` / ``activations.i`` (MLPs) and
``conv1``, ``layerK.J``, ``linear`` (ResNets), and stores a W-Asym layer's fixed entries in
``weight`` itself, marked by ``mask`` (1 where trainable) and ``normal_mask``. The zoo keeps
``mask`` and a separate ``fixed`` buffer instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from landscape.errors import UserError, first_line


def infer_public_layout(sd: dict[str, Tensor]) -> tuple[dict[str, Any], dict[str, Tensor]] | None:
    """Recognise checkpoints of the paper's public code; return (zoo config, translated state dict).

    MLP: ``lins.i.weight|bias`` (+ ``lins.i.mask``, ``lins.i.normal_mask`` for W-Asym),
    ``norms.i.*``, ``activations.i.C`` (sigma-Asym). ResNet: ``conv1``, ``layerK.J.*``,
    ``linear`` with ``.mask``/``.normal_mask`` on W-Asym convs. The fixed values are
    recovered exactly as ``weight * (1 - mask)`` (the public code writes them into ``weight``).
    """
    out = {k: v for k, v in sd.items() if not k.endswith(".normal_mask")}
    for k in list(out):
        if k.endswith(".mask") and k[: -len("mask")] + "weight" in out:
            w, m = (
                out[k[: -len("mask")] + "weight"],
                out[k].to(out[k[: -len("mask")] + "weight"].dtype),
            )
            out[k] = m
            out[k[: -len("mask")] + "fixed"] = w * (1 - m)
    wasym = any(k.endswith(".mask") for k in out)
    sigma = any(k.endswith(".C") or k.endswith(".F_mat") for k in out)
    variant = "w-asym" if wasym else "sigma-asym" if sigma else "standard"
    if "lins.0.weight" in sd:
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("lins."))
        w0 = sd["lins.0.weight"]
        norm = (
            "batch"
            if "norms.0.running_mean" in sd
            else "layer"
            if "norms.0.weight" in sd
            else "none"
        )
        cfg: dict[str, Any] = dict(
            arch="mlp",
            variant=variant,
            input_dim=int(w0.shape[1]),
            num_classes=int(sd[f"lins.{n - 1}.weight"].shape[0]),
            width=int(w0.shape[0]),
            depth=n - 1,
            norm=norm,
        )
        if wasym:
            cfg["n_fix"] = [int((out[f"lins.{i}.mask"][0] == 0).sum()) for i in range(n)]
        return cfg, out
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd and "linear.weight" in sd:
        if sigma:
            return None  # the public sigma ResNet mixes FiGLU and W-Asym blocks; not a zoo model
        norm = "batch" if "bn1.running_mean" in sd else "group"
        cfg = dict(
            arch="resnet20",
            variant=variant,
            in_channels=int(sd["conv1.weight"].shape[1]),
            num_classes=int(sd["linear.weight"].shape[0]),
            width=int(sd["conv1.weight"].shape[0]) // 16,
            norm=norm,
        )
        return cfg, out
    return None


def public_layout(sd: dict[str, Tensor], path: Path, translate_only: bool = False):
    """:func:`infer_public_layout` with key layouts that only look like the paper's refused in one line.

    ``translate_only``: the architecture is known; return ``(None, translated state dict)``
    when the layout is not recognised as a whole.
    """
    try:
        found = infer_public_layout(sd)
    except (ValueError, IndexError, KeyError, RuntimeError) as exc:
        raise UserError(
            f"{path}: keys look like the paper's public-code layout, but the tensors do not fit it "
            f"({type(exc).__name__}: {first_line(exc)}): pass --arch"
        ) from exc
    if translate_only and found is None:
        return None, {k: v for k, v in sd.items() if not k.endswith(".normal_mask")}
    return found
