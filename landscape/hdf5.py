"""HDF5 below the results store: netCDF-4 compatible attributes and dimensions, careful
reading of files that may be corrupt, and files held in memory.

Attributes. Values are encoded so that netCDF tools and xarray read them: ``None`` as
``"null"``, lists and dicts as ``"json:..."``, booleans as int8 listed in the object's
``landscape_bools`` attribute (HDF5 enums are not netCDF-4 classic types). Strings are
written as fixed-length UTF-8, not variable-length: a variable-length string lives in the
file's global heap, and libhdf5 follows a corrupt heap reference into a crash or an endless
loop that no Python code can stop, while a fixed-length string lies in the object header
next to its name. Only a string too long for an object header message (about 64 kB) stays
variable-length. String datasets are fixed-length UTF-8 too, marked with netCDF's
``_Encoding = "utf-8"`` so that xarray decodes them to text.

Reading (:func:`get_attrs`, :func:`read_attr`) checks each attribute's declared size
through the low-level API before reading it: a corrupt dataspace that declares billions
of elements is refused as an ``OSError`` instead of making HDF5 allocate and fill them.

Dimensions (:func:`write_dimensions`) are HDF5 dimension scales, so that every record group
is a netCDF-4 group with named dimensions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

BOOLS_ATTR = "landscape_bools"
"""Attribute listing (as ``json:[...]``) the attributes of an object that hold booleans as int8."""
BOOL_DATA_ATTR = "landscape_bool_data"
"""Attribute (1) of a dataset whose int8 data are booleans."""
ENCODING_ATTR = "_Encoding"
"""netCDF's attribute naming the encoding of a fixed-length string variable."""
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable."
#: HDF5 and netCDF bookkeeping that is not a record's own attribute
HIDDEN_ATTRS = frozenset(
    {
        "CLASS",
        "NAME",
        "REFERENCE_LIST",
        "DIMENSION_LIST",
        "DIMENSION_LABELS",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
        "_NCProperties",
        ENCODING_ATTR,
        BOOLS_ATTR,
        BOOL_DATA_ATTR,
    }
)
#: longest string (bytes, with its name) stored fixed-length: an object header message holds
#: at most 64 KiB, and the rest of the message needs some of it
FIXED_STRING_MAX = 60_000
#: most bytes one attribute may declare: this package writes none near it, so a larger one
#: is a corrupt dataspace or datatype
MAX_ATTR_BYTES = 64 << 20
#: most a dataset may declare per byte of its file (the best case of deflate, with room)
MAX_INFLATION = 2048


# ----------------------------------------------------------------------------- values
def encode(value: Any) -> Any:
    """A Python value as an attribute value: numbers and numeric arrays as they are, the rest text."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return str(value)  # np.str_ has no HDF5 conversion
    if isinstance(value, (bool, int, float, np.bool_, np.integer, np.floating)):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return np.asarray(value)
    return "json:" + json.dumps(value, default=str)


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` for a value read back (fixed-length strings are bytes)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        if value.startswith("json:"):
            return json.loads(value[5:])
        if value == "null":
            return None
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _fixed(text: str, room: int = FIXED_STRING_MAX) -> np.ndarray | None:
    """``text`` as a fixed-length UTF-8 scalar, or None when it cannot be one: too long for
    ``room``, or holding NUL, which fixed-length strings would cut (and h5py's variable-length
    conversion refuses, as it always did)."""
    raw = text.encode("utf-8")
    if len(raw) > room or b"\0" in raw:
        return None
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


def write_attr(obj: h5py.HLObject, name: str, value: Any) -> None:
    """Set one attribute; a string goes in fixed-length (see the module docstring)."""
    if isinstance(value, str):
        fixed = _fixed(value, FIXED_STRING_MAX - len(name.encode()))
        if fixed is not None:
            obj.attrs.create(name, fixed)  # replaces an old attribute of that name
            return
    obj.attrs[name] = value


def string_data(arr: np.ndarray) -> np.ndarray:
    """A text array as fixed-length UTF-8 (NUL in an entry: variable-length, as before)."""
    raw = [str(s).encode("utf-8") for s in arr.flat]
    if any(b"\0" in r for r in raw):
        return arr.astype(h5py.string_dtype())
    width = max((len(r) for r in raw), default=1) or 1
    return np.array(raw, dtype=h5py.string_dtype("utf-8", width)).reshape(arr.shape)


def set_attrs(obj: h5py.HLObject, values: Mapping[str, Any], *, fresh: bool = False) -> None:
    """Write attributes; booleans become int8 listed in ``landscape_bools`` (netCDF has no bool).

    ``fresh``: ``obj`` was just created, so it has no earlier list to extend.
    """
    bools = set() if fresh else set(decode(read_attr(obj, BOOLS_ATTR, "json:[]")) or [])
    for k, v in values.items():
        v = encode(v)
        if isinstance(v, (bool, np.bool_)) or (isinstance(v, np.ndarray) and v.dtype == bool):
            v = np.asarray(v, dtype=np.int8)[()]
            bools.add(k)
        else:
            bools.discard(k)
        write_attr(obj, k, v)
    if bools:
        write_attr(obj, BOOLS_ATTR, "json:" + json.dumps(sorted(bools)))
    elif not fresh and BOOLS_ATTR in obj.attrs:
        del obj.attrs[BOOLS_ATTR]


# ----------------------------------------------------------------------------- careful reading
def read_attr(obj: h5py.HLObject, name: str | bytes, default: Any = None) -> Any:
    """``obj.attrs[name]`` (``default`` when absent), refusing an attribute whose declared
    size is absurd before HDF5 allocates it: a corrupt dataspace or datatype can declare
    billions of elements, which HDF5 would try to allocate and fill. ``name`` is bytes where
    h5py listed a name that is not UTF-8 (a corrupt one)."""
    key = name if isinstance(name, bytes) else name.encode()
    if not h5py.h5a.exists(obj.id, key):
        return default
    aid = h5py.h5a.open(obj.id, key)
    n = aid.get_space().get_simple_extent_npoints()  # 1 for a scalar, 0 for an empty one
    size = n * aid.get_type().get_size()
    if size > MAX_ATTR_BYTES:
        raise OSError(f"attribute {name!r} declares {size:,} bytes: the file is corrupt")
    return obj.attrs[name]


def get_attrs(obj: h5py.HLObject, names: list[str] | None = None) -> dict[str, Any]:
    """Attributes as written: bookkeeping dropped, JSON decoded, int8 booleans (and old enum ones) as bool.

    ``names``: the object's attribute names, when the caller has listed them already.
    """
    names = list(obj.attrs) if names is None else names
    bools = set(decode(read_attr(obj, BOOLS_ATTR)) or []) if BOOLS_ATTR in names else set()
    out = {}
    for k in names:
        if k in HIDDEN_ATTRS:  # skipped unread: REFERENCE_LIST and the like are slow to read
            continue
        v = read_attr(obj, k)
        if k in bools:
            v = np.asarray(v).astype(bool)
            v = v.item() if v.ndim == 0 else v
        if isinstance(k, bytes):
            k = k.decode("utf-8", "backslashreplace")
        out[k] = decode(v)
    return out


def read_data(obj: h5py.Dataset) -> Any:
    """A dataset's values; strings as ``str`` (fixed- or variable-length), int8 booleans as bool.

    A dataset that declares more bytes than its file could hold even compressed (deflate
    packs at most about 1000:1) has a corrupt dataspace: refused before HDF5 allocates it.
    """
    declared = obj.size * obj.dtype.itemsize
    if declared > MAX_ATTR_BYTES and declared > MAX_INFLATION * obj.file.id.get_filesize():
        raise OSError(f"dataset {obj.name!r} declares {declared:,} bytes: the file is corrupt")
    data = obj.asstr()[()] if h5py.check_string_dtype(obj.dtype) else obj[()]
    if BOOL_DATA_ATTR in obj.attrs:
        data = np.asarray(data).astype(bool)
    return data


# ----------------------------------------------------------------------------- dimensions
def is_dimension_only(obj: h5py.Dataset, names: list[str] | None = None) -> bool:
    """A netCDF dimension without data: bookkeeping of the group, not one of its datasets."""
    if "CLASS" not in (obj.attrs if names is None else names):
        return False
    name = read_attr(obj, "NAME", b"")
    if isinstance(name, str):
        name = name.encode()
    return read_attr(obj, "CLASS") == b"DIMENSION_SCALE" and NOT_A_VARIABLE in bytes(name)


def dimension_plan(
    shapes: Mapping[str, tuple[int, ...]], axes: Mapping[str, tuple[str, ...]]
) -> tuple[dict[str, int], set[str], dict[str, list[str]]]:
    """netCDF dimensions of one record: (size per dimension, coordinate datasets, dimensions per dataset).

    A dimension is named as declared in ``axes``; a 1-D dataset named like its own dimension
    is its coordinate. netCDF needs one length per dimension name and no dataset that shares
    a dimension's name without being its coordinate, so a declared name that breaks either
    rule becomes ``<name>_<length>`` for that dataset (its ``axes`` attribute keeps the
    declared name). Undeclared axes are ``<dataset>_dim<i>``.
    """
    names = set(shapes)
    sizes: dict[str, int] = {}
    coords: set[str] = set()
    for name, shape in shapes.items():
        ax = axes.get(name, ())
        if len(shape) == 1 and ax[:1] == (name,):
            coords.add(name)
            sizes[name] = shape[0]

    def free(d: str, n: int) -> str:
        j, cand = 0, f"{d}_{n}"
        while (cand in names and cand not in coords) or sizes.get(cand, n) != n:
            j += 1
            cand = f"{d}_{n}_{j}"
        return cand

    dims: dict[str, list[str]] = {}
    for name, shape in shapes.items():
        ax = axes.get(name, ())
        out = []
        for i, n in enumerate(shape):
            d = (ax[i] if i < len(ax) and ax[i] else f"{name}_dim{i}").replace("/", "_")
            if name not in coords and ((d in names and d not in coords) or sizes.get(d, n) != n):
                d = free(d, n)
            sizes.setdefault(d, n)
            out.append(d)
        dims[name] = out
    return sizes, coords, dims


def write_dimensions(
    g: h5py.Group,
    axes: Mapping[str, tuple[str, ...]],
    datasets: Mapping[str, h5py.Dataset] | None = None,
) -> None:
    """Make the datasets of record group ``g`` netCDF-4 variables with named dimensions.

    No ``_Netcdf4Dimid``/``_Netcdf4Coordinates``: netCDF readers then take dimensions from the
    scales attached to each dataset, and ids that must be unique across the whole file cannot
    go stale when records are replaced one at a time. ``datasets``: the group's datasets, when
    the caller has them at hand.
    """
    if datasets is None:
        datasets = {n: o for n, o in g.items() if isinstance(o, h5py.Dataset)}
    sizes, coords, dims = dimension_plan({n: d.shape for n, d in datasets.items()}, axes)
    scales = {}
    for d, n in sizes.items():
        if d in coords:
            scales[d] = datasets[d]
            scales[d].make_scale(d)
        else:  # no data is allocated: HDF5 writes storage only when data is written
            scales[d] = g.create_dataset(d, shape=(n,), dtype=">f4")
            scales[d].make_scale(NOT_A_VARIABLE + f"{n:10d}".encode())
    for name, ds_dims in dims.items():
        if name in coords:
            continue
        ds = datasets[name]
        for i, d in enumerate(ds_dims):
            ds.dims[i].attach_scale(scales[d])


# ----------------------------------------------------------------------------- in memory
def in_memory_file(path: Path | None = None) -> h5py.File:
    """The HDF5 file at ``path`` (None: a new one) loaded into memory, to change it there.

    HDF5 never writes to disk here: HDF5 that runs out of disk in the middle of a write can
    stay broken for the rest of the process (later closes fail, the exit can crash), while
    writing the finished image (``f.id.get_file_image()``) with plain file I/O makes a full
    disk an ordinary OSError.
    """
    from .atomic import NOT_WRITABLE, errno_of

    if path is not None:
        try:  # the core driver reads the file once; without HDF5's own lock, readers may have it open
            return h5py.File(path, "r+", driver="core", backing_store=False, locking=False)
        except TypeError:  # h5py < 3.5: no locking argument
            pass
        except OSError as exc:
            if errno_of(exc) not in NOT_WRITABLE:
                raise
        image = path.read_bytes()  # a file we may not open for writing: we replace it anyway
    else:
        image = None
    if hasattr(h5py.File, "in_memory"):  # h5py >= 3.13
        return h5py.File.in_memory(image) if image else h5py.File.in_memory()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fapl_core(backing_store=False)
    name = f"landscape-in-memory-{id(fapl)}".encode()
    if image:
        fapl.set_file_image(image)
        return h5py.File(h5py.h5f.open(name, h5py.h5f.ACC_RDWR, fapl=fapl))
    return h5py.File(h5py.h5f.create(name, h5py.h5f.ACC_EXCL, fapl=fapl))


def image_of(f: h5py.File) -> bytes:
    """The bytes of an in-memory file as it stands (flushed first)."""
    f.flush()
    return f.id.get_file_image()
