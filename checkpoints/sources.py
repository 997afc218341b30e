"""Data sources named by one ``--data`` spec.

- ``digits``: the embedded 1,797-image 8x8 handwritten digits (UCI; attribution in
  ``checkpoints/data/DIGITS_LICENSE.txt``), split 1,437 train / 360 test by a fixed seed;
- ``mnist:DIR``, ``fashion-mnist:DIR``: IDX files, gzipped or not, in ``DIR`` or as
  torchvision lays them out (``DIR/MNIST/raw``, ``DIR/FashionMNIST/raw``);
- ``cifar10:DIR``: the python pickle batches (``DIR`` or ``DIR/cifar-10-batches-py``),
  read by a restricted unpickler that only rebuilds plain arrays;
- ``npz:FILE`` / ``pt:FILE``: arrays ``X`` and ``y`` (``pt`` read with ``weights_only``);
- ``module:callable`` (or ``path/file.py:callable``): returns a Dataset of ``(x, y)``
  (or a ``(train, test)`` pair of them, or a callable taking ``split=``);
- ``modular:P[:F]``: modular addition ``a b = -> (a + b) mod P`` as token sequences, embedded
  (no download); ``text:FILE[:T]``: character windows of a UTF-8 text file with next-character
  targets (both in :mod:`checkpoints.sequences`, integer token ids for the transformer).

Images come as float32 ``(N, C, H, W)``, scaled to [0, 1] then standardised with the
source's mean and std (recorded in the description); labels as int64.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.data import subset
from landscape.errors import UserError, first_line, os_error_line

from . import sequences
from .safe_load import check_tensor, torch_load

SPLITS = ("train", "test")
STATS = {
    "digits": ((0.3051,), (0.4170,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class DataSet:
    """Tensors plus the description that results files record."""

    X: Tensor
    y: Tensor
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return self.X, self.y

    @property
    def num_classes(self) -> int:
        if "num_classes" in self.description:  # a task that knows it (a split may miss a class)
            return int(self.description["num_classes"])
        return int(self.y.max()) + 1 if not self.y.is_floating_point() else int(self.y.shape[-1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])


def _standardise(x: np.ndarray, name: str) -> Tensor:
    mean, std = STATS[name]
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (t - m) / s


# ----------------------------------------------------------------------------- digits
def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    with resources.files("checkpoints").joinpath("data/digits.npz").open("rb") as f:
        d = np.load(io.BytesIO(f.read()), allow_pickle=False)
        images, target = d["images"], d["target"]
    order = np.random.default_rng(0).permutation(len(target))
    idx = order[:1437] if split == "train" else order[1437:]
    idx.sort()
    return images[idx][:, None].astype(np.float32) / 16.0, target[idx].astype(np.int64)


# ----------------------------------------------------------------------------- IDX
#: IDX data-type codes
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
#: deflate expands by at most about 1032:1, so a gzipped file cannot hold more than this per byte
_GZIP_MAX_RATIO = 1032


def _read_exactly(f, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = f.read(min(n - len(out), 1 << 24))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims.

    The declared size is checked against the file's size before anything is allocated, so a
    corrupt header (dimensions of 4e9) is refused at once.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw_file:
            gz = path.suffix == ".gz" or raw_file.read(2) == b"\x1f\x8b"
        f = gzip.open(path, "rb") if gz else open(path, "rb")
        with f:
            head = _read_exactly(f, 4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise UserError(f"{path}: not an IDX file (bad magic number)")
            if head[2] not in IDX_TYPES:
                raise UserError(f"{path}: unknown IDX data type 0x{head[2]:02x}")
            ndim = head[3]
            raw_dims = _read_exactly(f, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise UserError(
                    f"{path}: IDX header cut short ({ndim} dimensions declared, "
                    f"{len(raw_dims) // 4} present): the file is truncated"
                )
            dims = struct.unpack(">" + "I" * ndim, raw_dims)
            dt = np.dtype(IDX_TYPES[head[2]])
            need = math.prod(dims) * dt.itemsize
            most = (size * _GZIP_MAX_RATIO) if gz else size - 4 - 4 * ndim
            if need > most:
                raise UserError(
                    f"{path}: the IDX header declares {'x'.join(map(str, dims))} entries "
                    f"({need:,} bytes) but the file {'cannot hold' if gz else 'holds'} "
                    f"{'that many' if gz else f'{most:,}'}: truncated or corrupt"
                )
            body = _read_exactly(f, need)
    except OSError as exc:  # also a broken gzip stream (BadGzipFile)
        if isinstance(exc, gzip.BadGzipFile) or exc.errno is None:
            raise UserError(f"{path}: truncated or corrupt gzip file ({first_line(exc)})") from exc
        raise UserError(os_error_line(path, exc)) from exc
    except (EOFError, zlib.error) as exc:
        raise UserError(f"{path}: truncated or corrupt gzip file ({first_line(exc)})") from exc
    if len(body) < need:
        raise UserError(f"{path}: truncated IDX file ({len(body)} of {need} bytes)")
    return np.frombuffer(body, dtype=dt).reshape(dims)


def _find(dirpath: Path, names: list[str], source: str) -> Path:
    for d in [
        dirpath,
        dirpath / "raw",
        *(dirpath / sub / "raw" for sub in ("MNIST", "FashionMNIST")),
    ]:
        for n in names:
            for cand in (d / n, d / (n + ".gz")):
                if cand.is_file():
                    return cand
    raise UserError(
        f"{source}: {dirpath} has no {names[0]}[.gz]: point at the folder holding the IDX files"
    )


def _idx_source(name: str, dirpath: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    xs_path = _find(
        dirpath, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"], f"{name}:{dirpath}"
    )
    ys_path = _find(
        dirpath, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"], f"{name}:{dirpath}"
    )
    xs, ys = read_idx(xs_path), read_idx(ys_path)
    if xs.ndim != 3:
        raise UserError(
            f"{xs_path}: images must have 3 dimensions (N, height, width), the file declares {xs.shape}"
        )
    if ys.ndim != 1:
        raise UserError(
            f"{ys_path}: labels must have 1 dimension (N), the file declares {ys.shape}"
        )
    if xs.shape[0] != ys.shape[0]:
        raise UserError(f"{name}:{dirpath}: {xs.shape[0]} images but {ys.shape[0]} labels")
    return xs[:, None].astype(np.float32) / 255.0, ys.astype(np.int64)


# ----------------------------------------------------------------------------- CIFAR-10
class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only plain numpy arrays, lists, dicts, strings and numbers."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _cifar(dirpath: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    d = dirpath / "cifar-10-batches-py" if (dirpath / "cifar-10-batches-py").is_dir() else dirpath
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        p = d / n
        if not p.is_file():
            raise UserError(
                f"cifar10:{dirpath}: missing {n}: point at the folder holding the python batches"
            )
        try:
            with open(p, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise UserError(f"{p}: not a readable CIFAR-10 batch ({exc})") from exc
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise UserError(f"{p}: not a CIFAR-10 batch (no data/labels)")
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys)


# ----------------------------------------------------------------------------- files and modules
def _as_numeric(path: Path, name: str, d: Any) -> Tensor:
    """Array ``name`` of an npz/pt data file ``d`` as a tensor; object, string and other
    non-numeric arrays are refused (npz members are only read here)."""
    try:
        value = d[name]
        arr = value if isinstance(value, Tensor) else np.asarray(value)
    except ValueError as exc:  # npz members are read here: object arrays need pickles
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UserError(
                f"{path}: array {name} holds Python objects (dtype=object), which are never unpickled: "
                "save it as a numeric array"
            ) from exc
        raise UserError(f"{path}: array {name} is not readable ({first_line(exc)})") from exc
    except Exception as exc:  # a corrupt member of the zip archive
        raise UserError(
            f"{path}: array {name} is not readable (truncated or corrupt: {first_line(exc)})"
        ) from exc
    if isinstance(arr, Tensor):
        check_tensor(path, name, arr)
        if arr.layout != torch.strided or arr.is_complex() or arr.dtype == torch.bool:
            raise UserError(f"{path}: {name} has dtype {arr.dtype}: expected real numbers")
        return arr
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{path}: {name} has dtype {arr.dtype}: expected an array of real numbers")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _check_npz_member(d: Any, name: str, path: Path) -> None:
    """Refuse an npz member whose header declares more bytes than the archive holds for it."""
    try:
        info = d.zip.getinfo(name + ".npy")
        with d.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(f)
    except Exception as exc:  # a corrupt member: bad magic, bad header, broken zip entry
        raise UserError(
            f"{path}: array {name} is not readable (truncated or corrupt: {first_line(exc)})"
        ) from exc
    need = math.prod(shape) * dtype.itemsize
    if dtype.kind != "O" and need > info.file_size:
        raise UserError(
            f"{path}: array {name} declares shape {shape} ({need:,} bytes) but the archive holds "
            f"{info.file_size:,} bytes for it: truncated or corrupt"
        )


def _array_file(kind: str, path: Path, split: str) -> tuple[Tensor, Tensor]:
    try:
        if not path.is_file():
            raise UserError(f"{kind}:{path}: no such file")
    except OSError as exc:  # a name too long for the file system
        raise UserError(os_error_line(path, exc)) from exc
    if kind == "npz":
        try:
            d = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise UserError(os_error_line(path, exc)) from exc
        except Exception as exc:  # not a zip, a broken zip directory, a .npy with a bad header
            raise UserError(
                f"{path}: not a readable .npz file ({first_line(exc)}): save it with numpy.savez"
            ) from exc
        if not hasattr(d, "files"):  # np.load of a plain .npy returns the array itself
            raise UserError(
                f"{path}: holds one array, not arrays X and y: save it with numpy.savez"
            )
        keys = set(d.files)
    else:
        d = torch_load(path, ".pt data file")
        if isinstance(d, (tuple, list)) and len(d) == 2:
            d = {"X": d[0], "y": d[1]}
        if not isinstance(d, dict):
            raise UserError(f"{path}: expected a dict with X and y or an (X, y) pair")
        keys = set(d)
    for xk, yk in ((f"X_{split}", f"y_{split}"), ("X", "y"), ("x", "y"), ("inputs", "targets")):
        if xk in keys and yk in keys:
            if kind == "npz":
                _check_npz_member(d, xk, path)
                _check_npz_member(d, yk, path)
            x, y = _as_numeric(path, xk, d), _as_numeric(path, yk, d)
            if x.dim() < 2:
                raise UserError(
                    f"{path}: {xk} has shape {tuple(x.shape)}: expected (samples, features...)"
                )
            return x.float(), (y.long() if not y.is_floating_point() else y.float())
    raise UserError(
        f"{path}: needs arrays X and y (or X_{split}/y_{split}); found {', '.join(sorted(map(str, keys))) or 'nothing'}"
    )


def _module_source(spec: str, split: str) -> tuple[Tensor, Tensor]:
    from .io import import_callable

    fn = import_callable(spec, "--data")
    try:
        ds = fn(split=split)
    except TypeError:
        ds = fn()
    if isinstance(ds, (tuple, list)) and len(ds) == 2 and not isinstance(ds[0], Tensor):
        ds = ds[0] if split == "train" else ds[1]
    if isinstance(ds, (tuple, list)) and len(ds) == 2 and isinstance(ds[0], Tensor):
        return ds[0], ds[1]
    try:
        items = [ds[i] for i in range(len(ds))]
    except TypeError as exc:
        raise UserError(
            f"--data {spec}: the callable must return a Dataset of (x, y) pairs or an (X, y) pair"
        ) from exc
    if not items:
        raise UserError(f"--data {spec}: the dataset is empty")
    return torch.stack([torch.as_tensor(x) for x, _ in items]).float(), torch.as_tensor(
        [int(y) for _, y in items]
    )


#: data-spec kinds that read files; any other ``a:b`` spec names a Python callable
FILE_KINDS = (
    "digits",
    "mnist",
    "fashion-mnist",
    "fashion_mnist",
    "fashionmnist",
    "cifar10",
    "npz",
    "pt",
    "modular",
    "text",
)


def names_code(spec: str) -> bool:
    """True when a data spec is ``module:callable`` (code to import), not a file reader."""
    kind, sep, _ = spec.partition(":")
    return bool(sep) and kind.lower() not in FILE_KINDS


def load_data(
    spec: str, split: str = "test", *, samples: int | None = None, seed: int = 0
) -> DataSet:
    """Load the data named by ``spec`` (see module docstring); ``samples`` takes a seeded subset."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use train or test")
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    where = f"--data {spec}"  # what messages about the data name: the file when there is one
    extra: dict[str, Any] = {}  # what a source adds to the description (vocabulary, task)
    if kind == "digits":
        x, y = _digits(split)
        X, Y, source = (
            _standardise(x, "digits"),
            torch.from_numpy(y),
            "digits (UCI optical handwritten digits, 8x8, embedded)",
        )
        norm = STATS["digits"]
    elif kind in ("mnist", "fashion-mnist", "fashion_mnist", "fashionmnist"):
        name = "mnist" if kind == "mnist" else "fashion-mnist"
        if not arg:
            raise UserError(f"--data {spec}: name the folder, e.g. {name}:path/to/dir")
        x, y = _idx_source(name, Path(arg), split)
        X, Y, source, norm = (
            _standardise(x, name),
            torch.from_numpy(y),
            f"{name} IDX files in {arg}",
            STATS[name],
        )
    elif kind == "cifar10":
        if not arg:
            raise UserError(f"--data {spec}: name the folder, e.g. cifar10:path/to/dir")
        x, y = _cifar(Path(arg), split)
        X, Y, source, norm = (
            _standardise(x, "cifar10"),
            torch.from_numpy(y),
            f"cifar10 python batches in {arg}",
            STATS["cifar10"],
        )
    elif kind in ("npz", "pt"):
        X, Y = _array_file(kind, Path(arg), split)
        source, norm, where = f"{kind} file {arg}", None, arg
    elif kind == "modular":
        p, frac = sequences.parse_modular(spec)
        X, Y = sequences.modular(p, split, frac)
        source, norm = f"modular addition mod {p} (embedded)", None
        extra = sequences.modular_description(p, frac)
    elif kind == "text":
        path, window = sequences.parse_text(spec)
        X, Y, vocab = sequences.text_windows(path, window, split)
        source, norm, where = f"text file {path}", None, str(path)
        extra = sequences.text_description(vocab, window)
    elif names_code(spec):
        X, Y = _module_source(spec, split)
        source, norm = f"callable {spec}", None
    else:
        raise UserError(
            f"unknown data spec {spec!r}: use digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, npz:FILE, pt:FILE, modular:P, text:FILE or module:callable"
        )
    if X.dim() == 0 or Y.dim() == 0 or X.shape[0] != Y.shape[0] or X.shape[0] == 0:
        raise UserError(
            f"--data {spec}: {X.shape[0] if X.dim() else 0} inputs and {Y.shape[0] if Y.dim() else 0} labels"
        )
    if X.is_floating_point() and not torch.isfinite(X).all():
        raise UserError(f"{where}: the inputs contain NaN or Inf: clean the data")
    if Y.is_floating_point() and not torch.isfinite(Y).all():
        raise UserError(f"{where}: the targets contain NaN or Inf: clean the data")
    full = int(X.shape[0])
    X, Y, idx = subset(X, Y, samples, seed)
    desc = {
        "spec": spec,
        "source": source,
        "split": split,
        "size": int(X.shape[0]),
        "full_size": full,
        "subset_seed": seed if idx is not None else None,
        "input_shape": list(X.shape[1:]),
        "normalisation": None
        if norm is None
        else {"scale": "to [0, 1]", "mean": list(norm[0]), "std": list(norm[1])},
        **extra,
    }
    return DataSet(X.contiguous(), Y, desc)
