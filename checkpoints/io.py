"""Checkpoint files: sidecars, writing, reading, and building the model they describe.

A checkpoint is a ``.pt`` file holding ``{"state_dict": ..., "landscape": {config}}``
(plain state dicts and the usual wrappers load too) and, beside it, a JSON sidecar with
the architecture, variant, constructor arguments, data, training settings and metrics.
Sidecars are looked up as ``<name>.json`` next to the file, then ``landscape.json`` in
its folder and the folder above (one sidecar for a flat folder of checkpoints).

Loading never runs code from a file (:mod:`checkpoints.safe_load`); a file may name only a
zoo architecture. Checkpoints of the paper's public code are recognised by their key
layout (:mod:`checkpoints.public_layout`). Files are written by rename
(:func:`landscape.atomic.write_atomic`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from landscape.atomic import write_atomic
from landscape.errors import UserError, display, first_line, os_error_line
from landscape.user_code import import_object

from . import zoo
from .public_layout import infer_public_layout, public_layout  # noqa: F401 (public here too)
from .safe_load import MAX_ELEMENTS, check_tensor, load_safetensors, torch_load

SIDECAR_NAME = "landscape.json"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "params")
_torch_load = torch_load  # its earlier name, which checkpoints.posterior imports from here


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


def model_sidecar(model: nn.Module) -> dict[str, Any]:
    """The sidecar keys that rebuild a zoo model: ``arch``, ``variant``, ``seed``, ``kwargs``."""
    cfg = dict(model.config)
    return {
        "arch": cfg.pop("arch"),
        "variant": cfg.pop("variant"),
        "seed": cfg.pop("seed"),
        "kwargs": cfg,
    }


def setting_differences(have: Any, want: Any, prefix: str = "") -> list[str]:
    """``key old vs new`` for every leaf where two nested settings dicts differ."""
    if isinstance(have, dict) and isinstance(want, dict):
        out = []
        for k in sorted(set(have) | set(want)):
            out += setting_differences(have.get(k), want.get(k), f"{prefix}{k}.")
        return out
    return [] if have == want else [f"{prefix.rstrip('.')} {have!r} vs {want!r}"]


def refuse_other_settings(where: str | os.PathLike, what: str, have: Any, want: Any) -> None:
    """A folder trained with other settings is never silently reused or overwritten."""
    diff = setting_differences(have, want)
    if diff:
        raise UserError(
            f"{where}: holds {what} trained with other settings ({'; '.join(diff[:2])}): "
            "use --force to retrain it, or another --out"
        )


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar that describes checkpoint ``path`` (empty dict when there is none)."""
    p = find_sidecar(path)
    if p is None:
        return {}
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(os_error_line(p, exc)) from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: sidecar is not UTF-8 text ({exc}): fix or delete it") from exc
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, over-long integers, deep nesting
        raise UserError(
            f"{p}: sidecar is not valid JSON ({first_line(exc)}): fix or delete it"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"{p}: sidecar must hold a JSON object")
    return data


def write_json_atomic(path: Path, data: dict, *, option: str = "-o") -> None:
    """Write ``data`` as JSON to ``path`` by rename; a failed write leaves nothing behind."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    write_atomic(path, text.encode("utf-8"), option=option, what="sidecar")


# ----------------------------------------------------------------------------- writing
def save_payload(
    payload: dict[str, Any], path: str | os.PathLike, *, option: str = "-o", what="checkpoint"
) -> Path:
    """``torch.save`` of tensors and plain values to ``path``, all or nothing (see
    :func:`landscape.atomic.write_atomic`); a failed write is one line naming ``option``."""
    path = Path(path)
    try:
        return write_atomic(path, lambda f: torch.save(payload, f), option=option, what=what)
    except RuntimeError as exc:  # torch.save's own report of a write that failed
        raise UserError(
            f"cannot write {display(path)}: {first_line(exc)}: choose another {option}"
        ) from exc


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sidecar: dict[str, Any] | None = None,
    sidecar_path: str | os.PathLike | None = None,
    option: str = "-o",
) -> Path:
    """Write ``model`` to ``path`` (atomically) with its zoo config embedded; optionally a sidecar.

    A write that fails (read-only file system, no permission, disk full) raises
    :class:`UserError` naming the file and ``option``, and leaves no partial file.
    """
    path = Path(path)
    config = dict(getattr(model, "config", {}) or {})
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "landscape": json.loads(json.dumps(config, default=str)),
    }
    save_payload(payload, path, option=option)
    if sidecar is not None:
        write_json_atomic(
            Path(sidecar_path) if sidecar_path else path.with_suffix(".json"),
            sidecar,
            option=option,
        )
    return path


# ----------------------------------------------------------------------------- reading
def read_checkpoint(
    path: str | os.PathLike, *, allow_nonfinite: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, embedded_config)`` from a checkpoint file, unwrapping common wrappers.

    NaN or Inf in a floating tensor is refused unless ``allow_nonfinite`` (a population study
    counts such networks and leaves them out).
    """
    path = Path(path)
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except OSError as exc:  # a name too long, a folder we may not enter
        raise UserError(os_error_line(path, exc)) from exc
    if not exists:
        raise UserError(f"{path}: no such file")
    if is_dir:
        raise UserError(
            f"{path}: is a folder; name a checkpoint file or use a study command on the folder"
        )
    if path.stat().st_size == 0:
        raise UserError(
            f"{path}: empty file (0 bytes), not a checkpoint: was it written completely?"
        )
    obj = load_safetensors(path) if path.suffix == ".safetensors" else torch_load(path)
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
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        raise UserError(
            f"{path}: holds no state_dict of tensors (expected a state_dict or a dict with one of {', '.join(WRAPPER_KEYS)})"
        )
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}
    for k, v in sd.items():
        check_tensor(path, str(k), v)
        if not allow_nonfinite and v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(
                f"{path}: tensor {k} contains NaN or Inf: the checkpoint is broken (diverged training?)"
            )
    return sd, config


# ----------------------------------------------------------------------------- models
def import_callable(spec: str, option: str = "--arch") -> Callable[..., nn.Module]:
    """``package.module:callable`` or ``path/to/file.py:callable`` (user code the user named).

    ``option`` is the command-line option that named it, for the error messages.
    """
    fn = import_object(spec, option, "package.module:callable or path/to/file.py:callable")
    if not callable(fn):
        mod_name, _, attr = spec.rpartition(":")
        raise UserError(f"{option} {spec!r}: {mod_name} has no callable {attr}")
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


#: how the zoo constructors' default values read in a message about a wrong type
_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_arguments(arch: str, cfg: dict[str, Any], source: str) -> None:
    """Types of the constructor arguments a file gives, against the zoo constructor's defaults."""
    params = inspect.signature(zoo.ARCHS[arch]).parameters
    for k, v in cfg.items():
        p = params.get(k)
        if p is None or p.default in (inspect.Parameter.empty, None):
            continue  # unknown names: the constructor's own TypeError names them
        d = p.default
        if isinstance(d, bool):
            ok, kind = isinstance(v, bool), _KINDS[bool]
        elif isinstance(d, int):
            ok, kind = isinstance(v, int) and not isinstance(v, bool), _KINDS[int]
        elif isinstance(d, float):
            ok, kind = isinstance(v, (int, float)) and not isinstance(v, bool), _KINDS[float]
        elif isinstance(d, str):
            ok, kind = isinstance(v, str), _KINDS[str]
        elif isinstance(d, (list, tuple)):
            ok, kind = isinstance(v, (list, tuple)), "a list"
        else:
            continue
        if not ok:
            raise UserError(f"{source}: {k!r} must be {kind}, got {v!r}: fix the file")


def _zoo_skeleton(arch: str, cfg: dict[str, Any], source: str) -> nn.Module:
    """The zoo model on the meta device: its shapes, without allocating its entries.

    Lets a config that declares an absurd size (``width: 1e9``) or shapes that do not fit the
    checkpoint be refused before anything is allocated.
    """
    _check_arguments(arch, cfg, source)
    try:
        with torch.device("meta"):
            skeleton = zoo.build(arch, **cfg)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from exc
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError) as exc:
        raise UserError(f"{source}: bad arguments for {arch}: {first_line(exc)}") from exc
    n = sum(t.numel() for t in skeleton.state_dict().values())
    if n > MAX_ELEMENTS:
        raise UserError(
            f"{source}: the {arch} it declares has {n:,} entries, more than this tool builds "
            f"({MAX_ELEMENTS:,}): check width, depth and input sizes"
        )
    return skeleton


def build_from_config(
    cfg: dict[str, Any],
    path: Path | str = "?",
    state: dict[str, Tensor] | None = None,
    state_path: Path | str | None = None,
) -> nn.Module:
    """A zoo model from a config that a file holds (checkpoint or sidecar).

    Only zoo names are honoured: a ``module:callable`` named by a file is refused, because
    loading a file must never decide what code runs. The model is first built on the meta
    device, so that an oversized config, or one whose shapes do not fit ``state`` (the
    checkpoint read from ``state_path``), is refused before any memory is allocated.
    """
    cfg = dict(cfg)
    arch = cfg.pop("arch", None)
    cfg.pop("seed", None)
    if arch is None:
        raise UserError(
            f"{path}: cannot tell the architecture (no sidecar, no embedded config, unknown key layout): pass --arch"
        )
    arch = _zoo_name(str(arch), str(path))
    skeleton = _zoo_skeleton(arch, cfg, str(path))
    if state is not None:
        _check_fit(
            skeleton.state_dict(),
            state,
            state_path or path,
            "" if str(state_path or path) == str(path) else f" (architecture from {path})",
        )
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


def _check_fit(
    own: dict[str, Tensor], sd: dict[str, Tensor], path: Path | str, origin: str = ""
) -> None:
    """Raise :class:`UserError` naming the first few keys unless ``sd`` has exactly ``own``'s keys and shapes."""
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
            f"{path}: does not fit the architecture{origin} ({'; '.join(parts)}): check the sidecar or --arch"
        )
    for k, v in own.items():
        if v.shape != sd[k].shape:
            raise UserError(
                f"{path}: shape mismatch at {k}: file {tuple(sd[k].shape)}, architecture {tuple(v.shape)}{origin}: check width/depth in the sidecar"
            )


def load_state(model: nn.Module, sd: dict[str, Tensor], path: Path | str) -> None:
    """``load_state_dict`` with errors that name the first few bad keys."""
    own = model.state_dict()
    _check_fit(own, sd, path)
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
            found = public_layout(sd, path)
            if found is None:
                raise UserError(
                    f"{path}: cannot tell the architecture (no sidecar, no embedded config, unknown key layout): pass --arch"
                )
            cfg, sd = found
        elif public:
            sd = public_layout(sd, path, translate_only=True)[1]
        model = build_from_config(cfg, source, state=sd, state_path=path)
    load_state(model, sd, path)
    model.checkpoint_path = str(path)
    if device is not None:
        from landscape.data import resolve_device

        model.to(resolve_device(device))
    return model.eval()
