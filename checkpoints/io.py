"""Safe checkpoint reading and writing, sidecars, and the paper's public-code layouts.

A checkpoint is a ``.pt`` file holding ``{"state_dict": ..., "landscape": {config}}``
(plain state dicts and the usual wrappers load too) and, beside it, a JSON sidecar with
the architecture, variant, constructor arguments, data, training settings and metrics.
Sidecars are looked up as ``<name>.json`` next to the file, then ``landscape.json`` in
its folder and the folder above (one sidecar for a flat folder of checkpoints).

Loading never runs code from a file: ``torch.load(..., weights_only=True)``; a file that
needs code to unpickle is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError
from landscape.store import file_mode

from . import zoo

SIDECAR_NAME = "landscape.json"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- sidecars
def sidecar_paths(path: Path) -> list[Path]:
    path = Path(path)
    return [
        path.with_suffix(".json"),
        path.parent / SIDECAR_NAME,
        path.parent.parent / SIDECAR_NAME,
    ]


def find_sidecar(path: str | os.PathLike) -> Path | None:
    """The sidecar file that describes checkpoint ``path``, or None."""
    return next((p for p in sidecar_paths(Path(path)) if p.is_file()), None)


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar that describes checkpoint ``path`` (empty dict when there is none)."""
    p = find_sidecar(path)
    if p is None:
        return {}
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: sidecar is not valid JSON ({exc}): fix or delete it") from exc
    if not isinstance(data, dict):
        raise UserError(f"{p}: sidecar must hold a JSON object")
    return data


def write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    os.chmod(tmp, file_mode(path))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- writing
def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sidecar: dict[str, Any] | None = None,
    sidecar_path: str | os.PathLike | None = None,
) -> Path:
    """Write ``model`` to ``path`` (atomically) with its zoo config embedded; optionally a sidecar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = dict(getattr(model, "config", {}) or {})
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "landscape": json.loads(json.dumps(config, default=str)),
    }
    fd, tmp = tempfile.mkstemp(prefix="." + path.name, dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if sidecar is not None:
        write_json_atomic(
            Path(sidecar_path) if sidecar_path else path.with_suffix(".json"), sidecar
        )
    return path


# ----------------------------------------------------------------------------- reading
def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: refused, unpickling it would need code from the file ({str(exc).splitlines()[0][:120]}); "
            "re-save it as a plain state_dict of tensors"
        ) from exc
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {str(exc).splitlines()[0][:120]})"
        ) from exc


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise UserError(
            f"{path}: reading .safetensors needs the optional extra: pip install 'landscape[safetensors]'"
        ) from exc
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, embedded_config)`` from a checkpoint file, unwrapping common wrappers."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(
            f"{path}: is a folder; name a checkpoint file or use a study command on the folder"
        )
    if path.suffix == ".safetensors":
        return _load_safetensors(path), {}
    obj = _torch_load(path)
    config: dict[str, Any] = {}
    if (
        isinstance(obj, tuple) and obj and isinstance(obj[0], dict)
    ):  # (state_dict, test_acc) as in the metanetwork data
        obj = obj[0]
    if isinstance(obj, dict):
        if isinstance(obj.get("landscape"), dict):
            config = obj["landscape"]
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(
            f"{path}: holds no state_dict of tensors (expected a state_dict or a dict with one of {', '.join(WRAPPER_KEYS)})"
        )
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}
    for k, v in sd.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(
                f"{path}: tensor {k} contains NaN or Inf: the checkpoint is broken (diverged training?)"
            )
    return sd, config


# ----------------------------------------------------------------------------- public-code layouts
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


# ----------------------------------------------------------------------------- models
def import_callable(spec: str) -> Callable[..., nn.Module]:
    """``package.module:callable`` or ``path/to/file.py:callable`` (user code the user named)."""
    if ":" not in spec:
        raise UserError(
            f"--arch {spec!r}: expected package.module:callable or path/to/file.py:callable"
        )
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            p = Path(mod_name)
            if not p.is_file():
                raise UserError(f"--arch {spec!r}: no such file {p}")
            s = importlib.util.spec_from_file_location(p.stem, p)
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserError(f"--arch {spec!r}: cannot import {mod_name} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"--arch {spec!r}: {mod_name} has no callable {attr}")
    return fn


def model_config(path: str | os.PathLike, embedded: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The architecture config that the files describe, and the file it came from.

    The embedded config wins over the sidecar key by key; the sidecar's ``kwargs`` object is
    merged in. Types are checked here so that a bad sidecar is named in its error.
    """
    side_path = find_sidecar(path)
    side = read_sidecar(path) if side_path else {}
    cfg = dict(embedded)
    source = str(path)
    for k in ("arch", "variant", "kwargs"):
        if k in side and k not in cfg:
            cfg[k] = side[k]
            source = str(side_path)
    for k in ("arch", "variant"):
        if k in cfg and not isinstance(cfg[k], str):
            raise UserError(f"{source}: {k!r} must be a string, got {cfg[k]!r}: fix the file")
    if "kwargs" in cfg:
        if not isinstance(cfg["kwargs"], dict):
            raise UserError(
                f"{source}: 'kwargs' must be a JSON object of constructor arguments, "
                f'e.g. {{"width": 16}}, got {cfg["kwargs"]!r}'
            )
        cfg = {**cfg.pop("kwargs"), **cfg}
    return cfg, source


def _zoo_name(arch: str, source: str) -> str:
    """A file may name only a zoo architecture: never code to import (the trust model)."""
    if arch in zoo.ARCHS:
        return arch
    if ":" in arch:
        raise UserError(
            f"{source}: names the architecture {arch!r}, which is code to import; a checkpoint or "
            f"sidecar may only name a zoo model ({', '.join(zoo.ARCHS)}): if you trust that code, "
            f"pass --arch {arch} (arch= in Python)"
        )
    raise UserError(
        f"{source}: unknown architecture {arch!r}: the zoo has {', '.join(zoo.ARCHS)}; "
        "fix the file or pass --arch"
    )


def build_from_config(cfg: dict[str, Any], path: Path | str = "?") -> nn.Module:
    """A zoo model from a config that a file holds (checkpoint or sidecar).

    Only zoo names are honoured: a ``module:callable`` named by a file is refused, because
    loading a file must never decide what code runs.
    """
    cfg = dict(cfg)
    arch = cfg.pop("arch", None)
    cfg.pop("seed", None)
    if arch is None:
        raise UserError(
            f"{path}: cannot tell the architecture (no sidecar, no embedded config, unknown key layout): pass --arch"
        )
    arch = _zoo_name(str(arch), str(path))
    try:
        return zoo.build(arch, **cfg)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc


def build_user_model(arch: str, kwargs: dict[str, Any], path: Path | str = "?") -> nn.Module:
    """The user's own ``module:callable`` / ``file.py:callable``, named by the user (CLI or Python)."""
    try:
        return import_callable(arch)(**kwargs)
    except TypeError as exc:
        raise UserError(f"{path}: cannot build {arch} with {kwargs}: {exc}") from exc


def load_state(model: nn.Module, sd: dict[str, Tensor], path: Path | str) -> None:
    """``load_state_dict`` with errors that name the first few bad keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing keys {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
            )
        if unexpected:
            parts.append(
                f"unexpected keys {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"
            )
        raise UserError(
            f"{path}: does not fit the architecture ({'; '.join(parts)}): check the sidecar or --arch"
        )
    for k, v in own.items():
        if v.shape != sd[k].shape:
            raise UserError(
                f"{path}: shape mismatch at {k}: file {tuple(sd[k].shape)}, architecture {tuple(v.shape)}: check width/depth in the sidecar"
            )
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own})


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A ready ``nn.Module`` (eval mode) from a checkpoint file.

    The architecture comes from ``arch`` (a zoo name or ``module:callable``), else the
    embedded config, the sidecar, or the paper's public-code key layout.
    """
    path = Path(path)
    sd, embedded = read_checkpoint(path)
    public = any(k.endswith(".normal_mask") for k in sd)  # the paper's public W-Asym layout
    if arch is not None and ":" in arch:
        # the caller's own code: only the caller's keywords, never the file's
        model = build_user_model(arch, {k: v for k, v in kwargs.items() if k != "variant"}, path)
    else:
        cfg, source = model_config(path, embedded)
        if arch is not None:
            cfg["arch"], source = arch, str(path)
        cfg.update(kwargs)
        if "arch" not in cfg:
            found = infer_public_layout(sd)
            if found is None:
                raise UserError(
                    f"{path}: cannot tell the architecture (no sidecar, no embedded config, unknown key layout): pass --arch"
                )
            cfg, sd = found
        elif public:
            sd = infer_public_layout(sd)[1]
        model = build_from_config(cfg, source)
    load_state(model, sd, path)
    model.checkpoint_path = str(path)
    if device is not None:
        from landscape.data import resolve_device

        model.to(resolve_device(device))
    return model.eval()
