"""Reading checkpoint files that may be hostile or corrupt, without running their code.

``torch.load(..., weights_only=True)`` only: a file that needs code to unpickle is refused,
and whatever else goes wrong reading it (empty, truncated, random bytes, a broken zip) is
one :class:`~landscape.errors.UserError` line. Tensors are checked before anything touches
them: a tensor that declares more entries than a checkpoint may hold, or a broadcast view
that shows far more than it stores, is refused rather than allocated.
"""

from __future__ import annotations

import errno
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from landscape.errors import UserError, first_line, os_error_line

#: most entries one tensor, or one model built from a file's config, may have (2**31 float32 =
#: 8 GiB): a file that declares more is corrupt or hostile, and building it would exhaust memory
MAX_ELEMENTS = 2**31
#: a broadcast view (``expand``) stores less than it shows; past this many bytes it is refused
MAX_EXPANSION_BYTES = 1 << 26
#: how torch's legacy (pre-zip) format starts: a protocol-2 pickle of its magic number
_LEGACY_TORCH_HEAD = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _pickle_header(path: Path) -> bool:
    """True when the file starts as a plain pickle of protocol 2 to 5 (not random bytes, and
    not torch's legacy format, whose own pickles a corrupt file breaks)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_HEAD))
    except OSError:
        return False
    if head == _LEGACY_TORCH_HEAD:
        return False
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def torch_load(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with ``weights_only``; whatever goes wrong reading the file is a :class:`UserError`.

    A pickle that names a global (code), or a whole pickle the safe loader cannot follow, is
    refused as such; anything else that fails (empty or truncated files, random bytes, a
    broken zip) is a corrupt ``what``. torch's warnings about the file's pickle are not shown:
    the one line says what is wrong.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        code = next((line for line in lines if "GLOBAL" in line), None)
        if code is not None or _pickle_header(path):
            # a whole pickle that the safe loader stops in: code, or opcodes it does not allow
            why = code or "or pickle features the safe loader does not allow: " + next(
                (line for line in lines if "Unsupported" in line), first_line(exc)
            )
            raise UserError(
                f"{path}: refused, unpickling it would need code from the file ({why[:120]}); "
                "re-save it as a plain state_dict of tensors"
            ) from exc
        detail = next((line for line in lines if "Unsupported" in line), first_line(exc))
        raise UserError(
            f"{path}: not a readable {what} (truncated or corrupt: {detail[:120]})"
        ) from exc
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EISDIR):
            raise UserError(os_error_line(path, exc)) from exc
        raise UserError(
            f"{path}: not a readable {what} (truncated or corrupt: {first_line(exc)})"
        ) from exc
    except MemoryError as exc:
        raise UserError(
            f"{path}: not a readable {what} (it declares more data than fits in memory: corrupt?)"
        ) from exc
    except Exception as exc:  # the unpickler and zip reader raise many types on corrupt input
        detail = first_line(exc)
        if detail != type(exc).__name__:
            detail = f"{type(exc).__name__}: {detail}"
        raise UserError(f"{path}: not a readable {what} (truncated or corrupt: {detail})") from exc


def load_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file (the optional extra), or one line saying why not."""
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


def check_tensor(path: Path | str, key: str, v: Tensor) -> None:
    """Refuse tensors whose declared size is not backed by the file, before anything touches them."""
    if v.layout != torch.strided:
        raise UserError(
            f"{path}: tensor {key} is not a dense tensor ({v.layout}): re-save the checkpoint with dense tensors"
        )
    n = v.numel()
    if n > MAX_ELEMENTS:
        raise UserError(
            f"{path}: tensor {key} declares shape {tuple(v.shape)} ({n:,} entries), more than a "
            f"checkpoint may hold ({MAX_ELEMENTS:,}): the file is corrupt or not a checkpoint"
        )
    need = n * v.element_size()
    if need > max(v.untyped_storage().nbytes(), MAX_EXPANSION_BYTES):
        raise UserError(
            f"{path}: tensor {key} shows shape {tuple(v.shape)} ({need:,} bytes) over "
            f"{v.untyped_storage().nbytes():,} stored bytes (an expanded view): re-save it with .contiguous()"
        )
