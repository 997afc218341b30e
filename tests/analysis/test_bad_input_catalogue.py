"""The bad-input catalogue: every way a hostile or careless user was found to break the CLI.

Each case builds one bad input in ``tmp_path`` (from a copy of the read-only ``tiny_runs``)
and runs the CLI in-process. Every case must exit with status 2, print exactly one
non-empty line on stderr with no traceback, name its cause (the file or option, checked by
the substrings the case lists), and leave the output folder as it was: nothing half-written,
no empty OUTDIR, no lock file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shown_warnings

from analysis.cli import main
from checkpoints import save_checkpoint, zoo


@dataclass
class Case:
    argv: list[str]
    expect: tuple[str, ...]  # substrings of the one line on stderr
    watch: Path | None = None  # the folder that must stay as it was (default: the case's ``out``)
    patches: list[tuple[object, str, object]] = field(default_factory=list)


@dataclass
class Where:
    """What a case builder gets: a scratch folder, a writable copy of ``tiny_runs``, an empty
    output folder, and :meth:`readonly` for a read-only file system."""

    tmp: Path
    runs: Path
    out: Path
    mount: Callable[[Callable[[Path], None] | None], Path]

    def readonly(self, fill: Callable[[Path], None] | None = None) -> Path:
        return self.mount(fill)


CASES: dict[str, Callable[[Where], Case]] = {}
XFAIL: dict[str, str] = {}


def case(name: str, xfail: str | None = None):
    def register(fn: Callable[[Where], Case]) -> Callable[[Where], Case]:
        CASES[name] = fn
        if xfail:
            XFAIL[name] = xfail
        return fn

    return register


def _interpolate(w: Where, *extra: str, root: Path | None = None) -> list[str]:
    return [
        "interpolate",
        str(root or w.runs),
        "--samples",
        "40",
        "--num-points",
        "3",
        "-o",
        str(w.out / "r.h5"),
        "-q",
        *extra,
    ]


def _plain_state(w: Where) -> dict:
    return torch.load(w.runs / "standard" / "seed0" / "final.pt", weights_only=True)["state_dict"]


def _sidecar_case(w: Where, sidecar: dict | str) -> Path:
    """A plain state dict (no embedded config) with the given sidecar ``m.json`` beside it."""
    d = w.tmp / "side"
    d.mkdir()
    torch.save(_plain_state(w), d / "m.pt")
    text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
    (d / "m.json").write_text(text)
    return d / "m.pt"


MLP16 = {"width": 16, "depth": 2, "input_dim": 64}


# ----------------------------------------------------------------------------- checkpoints
@case("empty_checkpoint")
def _(w):
    (w.runs / "standard" / "seed1" / "final.pt").write_bytes(b"")
    return Case(_interpolate(w), ("standard/seed1/final.pt", "empty file"))


@case("random_bytes_checkpoint")
def _(w):
    # these bytes make torch's unpickler raise IndexError
    (w.runs / "standard" / "seed1" / "final.pt").write_bytes(np.random.default_rng(17).bytes(3000))
    return Case(_interpolate(w), ("standard/seed1/final.pt", "not a readable checkpoint"))


@case("truncated_checkpoint")
def _(w):
    f = w.runs / "w-asym" / "seed0" / "init.pt"
    f.write_bytes(f.read_bytes()[:300])
    return Case(_interpolate(w), ("w-asym/seed0/init.pt", "truncated or corrupt"))


class _Code:
    def __reduce__(self):
        return (os.system, ("true",))


@case("pickle_needing_code")
def _(w):
    with open(w.tmp / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "x": _Code()}, f)
    return Case(["inspect", str(w.tmp / "evil.pt")], ("evil.pt", "refused"))


@case("sidecar_huge_width")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "kwargs": {"width": 10**9, "input_dim": 64}})
    return Case(["inspect", str(ck)], ("m.json", "the mlp it declares has", "width"))


@case("sidecar_width_past_the_checkpoint")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "kwargs": {**MLP16, "width": 4096}})
    return Case(["inspect", str(ck)], ("m.pt", "shape mismatch", "(architecture from", "m.json"))


@case("expanded_tensor_1e6_x_1e6")
def _(w):
    sd = _plain_state(w)
    sd["lins.0.weight"] = torch.zeros(1).expand(10**6, 10**6)
    torch.save(sd, w.tmp / "m.pt")
    (w.tmp / "m.json").write_text(json.dumps({"arch": "mlp", "kwargs": MLP16}))
    return Case(["inspect", str(w.tmp / "m.pt")], ("m.pt", "lins.0.weight", "(1000000, 1000000)"))


@case("expanded_tensor_1e4_x_1e4")
def _(w):
    sd = _plain_state(w)
    sd["lins.0.weight"] = torch.zeros(1).expand(10**4, 10**4)
    torch.save(sd, w.tmp / "m.pt")
    (w.tmp / "m.json").write_text(json.dumps({"arch": "mlp", "kwargs": MLP16}))
    return Case(["inspect", str(w.tmp / "m.pt")], ("m.pt", "lins.0.weight", "expanded view"))


@case("checkpoint_name_too_long")
def _(w):
    return Case(["inspect", str(w.tmp / ("a" * 300 + ".pt"))], ("a" * 300, "file name too long"))


@case("output_name_too_long")
def _(w):
    argv = _interpolate(w)
    argv[argv.index("-o") + 1] = str(w.out / ("b" * 300 + ".h5"))
    return Case(argv, ("-o", "file name too long"))


@case("sidecar_kwargs_string")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "kwargs": "width=16"})
    return Case(["inspect", str(ck)], ("m.json", "'kwargs' must be a JSON object"))


@case("sidecar_arch_integer")
def _(w):
    return Case(["inspect", str(_sidecar_case(w, {"arch": 5}))], ("m.json", "'arch' must be"))


@case("sidecar_arch_unknown")
def _(w):
    ck = _sidecar_case(w, {"arch": "vgg", "kwargs": MLP16})
    return Case(["inspect", str(ck)], ("m.json", "unknown architecture 'vgg'"))


@case("sidecar_variant_unknown")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "variant": "zz", "kwargs": MLP16})
    return Case(["inspect", str(ck)], ("m.json", "unknown variant 'zz'"))


@case("sidecar_variant_integer")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "variant": 3, "kwargs": MLP16})
    return Case(["inspect", str(ck)], ("m.json", "'variant' must be a string"))


@case("sidecar_width_string")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "kwargs": {**MLP16, "width": "sixteen"}})
    return Case(["inspect", str(ck)], ("m.json", "'width' must be an integer", "'sixteen'"))


@case("sidecar_width_negative")
def _(w):
    ck = _sidecar_case(w, {"arch": "mlp", "kwargs": {**MLP16, "width": -3}})
    return Case(["inspect", str(ck)], ("m.json", "bad arguments for mlp"))


@case("sidecar_not_json")
def _(w):
    return Case(["inspect", str(_sidecar_case(w, '{"arch": '))], ("m.json", "not valid JSON"))


@case("sidecar_nested_too_deep")
def _(w):
    return Case(["inspect", str(_sidecar_case(w, "[" * 100_000))], ("m.json", "not valid JSON"))


@case("align_malformed_spec")
def _(w):
    (w.tmp / "spec.json").write_text(json.dumps({"groups": 5}))
    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "--spec", str(w.tmp / "spec.json"), "-o", str(w.out / "b.pt")]
    return Case(argv, ("--spec", "spec.json"))


@case("align_spec_not_json")
def _(w):
    (w.tmp / "spec.json").write_text("{")
    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "--spec", str(w.tmp / "spec.json"), "-o", str(w.out / "b.pt")]
    return Case(argv, ("spec.json", "not valid JSON"))


@case("align_spec_unknown_tensor")
def _(w):
    (w.tmp / "spec.json").write_text(json.dumps({"groups": {"h": [["nope.weight", 0]]}}))
    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "--spec", str(w.tmp / "spec.json"), "-o", str(w.out / "b.pt")]
    return Case(argv, ("spec.json", "nope.weight"))


@case("align_shape_mismatch")
def _(w):
    for width in (8, 9):
        save_checkpoint(zoo.build("mlp", input_dim=64, width=width), w.tmp / f"w{width}.pt")
    argv = ["align", str(w.tmp / "w8.pt"), str(w.tmp / "w9.pt"), "-o", str(w.out / "b.pt")]
    return Case(argv, ("w8.pt", "w9.pt", "different shapes at lins.0.weight"))


# ----------------------------------------------------------------------------- names that are not UTF-8
@case("group_folder_not_utf8")
def _(w):
    root = w.tmp / "root"
    root.mkdir()
    shutil.copytree(w.runs / "standard", root / os.fsdecode(b"\xff"))
    shutil.copytree(w.runs / "w-asym", root / "w-asym")
    return Case(_interpolate(w, root=root), ("\\xff", "not valid UTF-8", "rename"))


@case("output_name_not_utf8")
def _(w):
    argv = _interpolate(w)
    argv[argv.index("-o") + 1] = str(w.out / os.fsdecode(b"r\xff.h5"))
    return Case(argv, ("-o", "\\xff", "not valid UTF-8"))


# ----------------------------------------------------------------------------- IDX files
def _idx_folder(w: Where, images: bytes) -> Path:
    d = w.tmp / "mnist"
    d.mkdir()
    (d / "t10k-images-idx3-ubyte").write_bytes(images)
    labels = b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02"
    (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
    return d


@case("idx_header_cut_short")
def _(w):
    d = _idx_folder(w, b"\x00\x00\x08\x03\x00\x00")
    return Case(
        _interpolate(w, "--data", f"mnist:{d}"), ("t10k-images-idx3-ubyte", "header cut short")
    )


@case("idx_dimensions_4e9")
def _(w):
    d = _idx_folder(w, b"\x00\x00\x08\x03" + struct.pack(">III", 4_000_000_000, 28, 28) + bytes(64))
    return Case(
        _interpolate(w, "--data", f"mnist:{d}"), ("t10k-images-idx3-ubyte", "4000000000x28x28")
    )


@case("idx_gzip_corrupt")
def _(w):
    d = _idx_folder(w, b"")
    (d / "t10k-images-idx3-ubyte").unlink()
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(40))
    return Case(_interpolate(w, "--data", f"mnist:{d}"), ("t10k-images-idx3-ubyte.gz", "gzip"))


@case("idx_images_of_one_dimension")
def _(w):
    d = _idx_folder(w, b"\x00\x00\x08\x01" + struct.pack(">I", 2) + b"\x01\x02")
    return Case(_interpolate(w, "--data", f"mnist:{d}"), ("t10k-images-idx3-ubyte", "3 dimensions"))


# ----------------------------------------------------------------------------- npz files
def _npz(w: Where, **arrays) -> list[str]:
    np.savez(w.tmp / "d.npz", **arrays)
    return _interpolate(w, "--data", f"npz:{w.tmp / 'd.npz'}")


@case("npz_inputs_of_the_wrong_shape")
def _(w):
    argv = _npz(w, X=np.zeros((10, 5), np.float32), y=np.zeros(10, np.int64))
    return Case(argv, ("d.npz", "(5,)", "do not fit", "final.pt"))


@case("npz_object_array")
def _(w):
    argv = _npz(w, X=np.array([object()] * 10, dtype=object), y=np.zeros(10, np.int64))
    return Case(argv, ("d.npz", "array X", "dtype=object"))


@case("npz_strings")
def _(w):
    argv = _npz(w, X=np.array(["a"] * 10), y=np.zeros(10, np.int64))
    return Case(argv, ("d.npz", "X has dtype"))


@case("npz_nan_inputs")
def _(w):
    argv = _npz(w, X=np.full((10, 64), np.nan, np.float32), y=np.zeros(10, np.int64))
    return Case(argv, ("d.npz", "NaN"))


@case("npz_labels_out_of_range")
def _(w):
    argv = _npz(w, X=np.zeros((10, 64), np.float32), y=np.arange(10) * 5)
    return Case(argv, ("d.npz", "labels range over 0..45 but the model has 10 outputs"))


@case("npz_not_a_zip")
def _(w):
    (w.tmp / "d.npz").write_bytes(b"PK\x03\x04" + bytes(100))
    argv = _interpolate(w, "--data", f"npz:{w.tmp / 'd.npz'}")
    return Case(argv, ("d.npz", "not a readable .npz"))


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@case("npz_declares_more_than_it_holds")
def _(w):
    # the same header length: the declared shape grows into the header's padding
    x = _npy(np.zeros((10, 64), np.float32))
    bigger = x.replace(b"'shape': (10, 64), }     ", b"'shape': (1000000, 64), }")
    assert len(bigger) == len(x) and bigger != x
    with zipfile.ZipFile(w.tmp / "d.npz", "w") as z:
        z.writestr("X.npy", bigger)
        z.writestr("y.npy", _npy(np.zeros(10, np.int64)))
    argv = _interpolate(w, "--data", f"npz:{w.tmp / 'd.npz'}")
    return Case(argv, ("d.npz", "array X declares shape (1000000, 64)"))


# ----------------------------------------------------------------------------- run --config
def _run(w: Where, config: str, *extra: str) -> list[str]:
    (w.tmp / "study.toml").write_text(config)
    return [
        "run",
        str(w.runs),
        "-o",
        str(w.out / "study"),
        "--config",
        str(w.tmp / "study.toml"),
        "-q",
        *extra,
    ]


@case("config_samples_many")
def _(w):
    return Case(_run(w, '[study]\nsamples = "many"\n'), ("study.toml", "[study] samples"))


@case("config_num_points_ten")
def _(w):
    argv = _run(w, '[interpolation]\nnum_points = "ten"\n')
    return Case(argv, ("study.toml", "[interpolation] num_points", "integer"))


@case("config_data_seven")
def _(w):
    return Case(_run(w, "[study]\ndata = 7\n"), ("study.toml", "[study] data"))


@case("config_analyses_five")
def _(w):
    return Case(_run(w, "[study]\nanalyses = 5\n"), ("study.toml", "[study] analyses"))


@case("config_analyses_unknown")
def _(w):
    argv = _run(w, '[study]\nanalyses = ["interpolation", "nope"]\n')
    return Case(argv, ("study.toml", "nope"))


@case("config_steps_fractional")
def _(w):
    return Case(_run(w, "[surface]\nsteps = 3.5\n"), ("study.toml", "[surface] steps", "integer"))


@case("config_mli_not_bool")
def _(w):
    argv = _run(w, '[interpolation]\nmli = "yes"\n')
    return Case(argv, ("study.toml", "[interpolation] mli", "true or false"))


@case("config_num_points_one")
def _(w):
    # refused by the study itself, after OUTDIR was made: the run removes it again
    argv = _run(w, "[study]\nsamples = 40\n[interpolation]\nnum_points = 1\n")
    return Case(argv, ("interpolation (settings from", "study.toml): num_points"))


@case("run_with_one_bad_checkpoint")
def _(w):
    (w.runs / "w-asym" / "seed1" / "final.pt").write_bytes(np.random.default_rng(17).bytes(3000))
    return Case(_run(w, "[study]\nsamples = 40\n"), ("w-asym/seed1/final.pt",))


@case("run_data_that_does_not_fit")
def _(w):
    np.savez(w.tmp / "d.npz", X=np.zeros((10, 5), np.float32), y=np.zeros(10, np.int64))
    argv = _run(w, "[study]\nsamples = 40\n", "--data", f"npz:{w.tmp / 'd.npz'}")
    return Case(argv, ("d.npz", "do not fit"))


@case("run_budget_zero")
def _(w):
    return Case(_run(w, "[study]\nsamples = 40\n", "--budget", "0"), ("--budget", "positive"))


@case("config_budget_not_a_number")
def _(w):
    return Case(_run(w, '[study]\nbudget = "big"\n'), ("study.toml", "[study] budget", "number"))


def _hessian(w: Where, *extra: str) -> list[str]:
    out = str(w.out / "r.h5")
    return ["hessian", str(w.runs), "--samples", "40", "--top-k", "2", "-q", *extra, "-o", out]


@case("hessian_budget_negative")
def _(w):
    return Case(_hessian(w, "--density", "--budget", "-1"), ("--budget", "positive"))


@case("hessian_block_size_zero")
def _(w):
    return Case(_hessian(w, "--block-size", "0"), ("--block-size", "positive integer"))


@case("hessian_slq_trace_without_density")
def _(w):
    return Case(_hessian(w, "--trace-estimator", "slq"), ("--trace-estimator slq", "--density"))


# ----------------------------------------------------------------------------- options
@case("data_ftp")
def _(w):
    return Case(_interpolate(w, "--data", "ftp:/x"), ("--data 'ftp:/x'", "cannot import"))


@case("batch_size_zero")
def _(w):
    return Case(_interpolate(w, "--batch-size", "0"), ("--batch-size", "positive integer"))


@case("samples_negative")
def _(w):
    return Case(_interpolate(w, "--samples", "-5"), ("--samples", "positive integer"))


@case("points_one")
def _(w):
    return Case(_interpolate(w, "--num-points", "1"), ("--num-points", ">= 2"))


@case("points_not_a_number")
def _(w):
    return Case(_interpolate(w, "--num-points", "ten"), ("--num-points", "'ten'", "--help"))


@case("unknown_option")
def _(w):
    argv = _interpolate(w, "--frobnicate")
    return Case(argv, ("landscape interpolate: error: unrecognized arguments: --frobnicate",))


@case("train_seeds_zero")
def _(w):
    return Case(["train", "--seeds", "0", "--out", str(w.out / "t"), "-q"], ("--seeds",))


@case("train_learning_rate_nan")
def _(w):
    return Case(["train", "--lr", "nan", "--out", str(w.out / "t"), "-q"], ("--lr", "finite"))


def _train(w: Where, arch: str, data: str) -> list[str]:
    return [
        "train",
        "--arch",
        arch,
        "--data",
        data,
        "--seeds",
        "1",
        "--out",
        str(w.out / "t"),
        "-q",
    ]


@case("modular_modulus_one")
def _(w):
    return Case(_train(w, "transformer", "modular:1"), ("--data modular:1", "P from 2 to 1000"))


@case("modular_fraction_above_one")
def _(w):
    return Case(_train(w, "transformer", "modular:7:1.5"), ("--data modular:7:1.5", "fraction"))


@case("text_file_missing")
def _(w):
    data = f"text:{w.tmp / 'missing.txt'}"
    return Case(_train(w, "transformer", data), ("missing.txt", "no such file"))


@case("text_file_not_utf8")
def _(w):
    (w.tmp / "latin1.txt").write_bytes("caf\xe9 au lait, ".encode("latin-1") * 20)
    data = f"text:{w.tmp / 'latin1.txt'}"
    return Case(_train(w, "transformer", data), ("latin1.txt", "not UTF-8"))


@case("text_file_too_short")
def _(w):
    (w.tmp / "short.txt").write_text("abc")
    data = f"text:{w.tmp / 'short.txt'}"
    return Case(_train(w, "transformer", data), ("short.txt", "windows of 32"))


@case("text_targets_with_label_smoothing")
def _(w):
    (w.tmp / "book.txt").write_text("the quick brown fox jumps over the lazy dog. " * 10)
    data = f"text:{w.tmp / 'book.txt'}"
    argv = _train(w, "transformer", data) + ["--label-smoothing", "0.1"]
    return Case(argv, ("label smoothing", "language modelling"))


@case("transformer_on_images")
def _(w):
    return Case(_train(w, "transformer", "digits"), ("--data digits", "integer token ids"))


@case("tokens_for_an_mlp")
def _(w):
    return Case(_train(w, "mlp", "modular:7"), ("--data modular:7", "--arch transformer"))


@case("demo_seeds_one")
def _(w):
    return Case(["demo", "--seeds", "1", "-o", str(w.out / "demo"), "-q"], ("--seeds",))


@case("align_samples_zero")
def _(w):
    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "--samples", "0", "-o", str(w.out / "b.pt")]
    return Case(argv, ("--samples",))


@case("foreign_hdf5_output")
def _(w):
    import h5py

    with h5py.File(w.out / "foreign.h5", "w") as f:
        f["data"] = np.arange(5)
    argv = _interpolate(w)
    argv[argv.index("-o") + 1] = str(w.out / "foreign.h5")
    return Case(argv, ("foreign.h5", "not written by landscape"))


# ----------------------------------------------------------------------------- losses (--loss)
def _loss_file(w: Where, body: str) -> str:
    """``FILE.py:loss`` for a user loss module written into the scratch folder."""
    f = w.tmp / "my_loss.py"
    f.write_text("import torch\nimport torch.nn.functional as F\n\n\n" + body)
    return f"{f}:loss"


@case("loss_unknown_name")
def _(w):
    return Case(_interpolate(w, "--loss", "hinge"), ("--loss 'hinge'", "unknown loss"))


@case("loss_module_does_not_import")
def _(w):
    argv = _interpolate(w, "--loss", "no_such_module_xyz:loss")
    return Case(argv, ("--loss", "cannot import no_such_module_xyz"))


@case("loss_file_raises_on_import")
def _(w):
    spec = _loss_file(w, "raise RuntimeError('broken on purpose')\n")
    argv = ["surface", str(w.runs), "--samples", "40", "--steps", "3", "-o", str(w.out / "r.h5")]
    return Case([*argv, "-q", "--loss", spec], ("my_loss.py", "cannot import", "broken on purpose"))


@case("loss_wrong_shape")
def _(w):
    spec = _loss_file(
        w,
        "def loss(outputs, batch):\n"
        "    return F.cross_entropy(outputs, batch.targets, reduction='none')[:, None]\n",
    )
    argv = ["surface", str(w.runs), "--samples", "40", "--steps", "3", "-o", str(w.out / "r.h5")]
    return Case([*argv, "-q", "--loss", spec], ("my_loss.py:loss", "one value per sample"))


@case("loss_not_finite")
def _(w):
    spec = _loss_file(
        w, "def loss(outputs, batch):\n    return torch.full((len(outputs),), float('nan'))\n"
    )
    argv = ["hessian", str(w.runs), "--samples", "40", "--top-k", "2", "-o", str(w.out / "r.h5")]
    return Case([*argv, "-q", "--loss", spec], ("my_loss.py:loss", "NaN or Inf", "final.pt"))


@case("loss_lm_on_class_labels")
def _(w):
    return Case(_interpolate(w, "--loss", "lm"), ("--data digits", "needs logits (N, T, V)"))


@case("run_loss_unknown")
def _(w):
    argv = _run(w, "[study]\nsamples = 40\n", "--loss", "mse_typo")
    return Case(argv, ("--loss 'mse_typo'", "unknown loss"))


@case("surface_pca_without_trajectory")
def _(w):
    argv = ["surface", str(w.runs), "--samples", "40", "--steps", "3", "-o", str(w.out / "r.h5")]
    return Case([*argv, "-q", "--directions", "pca"], ("--directions pca", "--save-every"))


@case("surface_pca_and_plane")
def _(w):
    argv = ["surface", str(w.runs), "--samples", "40", "-o", str(w.out / "r.h5"), "-q"]
    argv += ["--directions", "pca", "--plane", "seed0,seed1,seed2"]
    return Case(argv, ("--plane", "--directions pca"))


@case("config_loss_names_code")
def _(w):
    argv = _run(w, '[study]\nloss = "os:system"\n')
    return Case(argv, ("study.toml", "[study] loss", "cannot name code"))


# ----------------------------------------------------------------------------- Bayesian networks
def _posterior_root(w: Where, *, break_factors: bool = False) -> Path:
    """A posterior checkpoint (untrained, from the tiny standard network) in its own root."""
    from checkpoints import load_model, save_posterior
    from landscape.bnn import variational

    root = w.tmp / "posteriors"
    model = load_model(w.runs / "standard" / "seed0" / "final.pt")
    path = root / "standard" / "seed0" / "posterior.pt"
    save_posterior(variational(model, rank=2), path)
    if break_factors:
        payload = torch.load(path, weights_only=True)
        layer = next(iter(payload["posterior"]["layers"].values()))
        layer["weight_factors"] = layer["weight_factors"][:, :, :-1].clone()
        torch.save(payload, path)
    return root


def _bnn(w: Where, *extra: str) -> list[str]:
    base = ["bnn", "--variants", "standard", "--seeds", "1", "--out", str(w.out / "bnn")]
    return [*base, "--samples", "100", "--steps", "5", "-q", "--no-report", *extra]


@case("posterior_factors_do_not_fit_the_architecture")
def _(w):
    root = _posterior_root(w, break_factors=True)
    argv = ["calibration", str(root), "--samples", "40", "-o", str(w.out / "r.h5"), "-q"]
    return Case(argv, ("posterior.pt", "do not match the architecture"))


@case("calibration_mc_samples_zero")
def _(w):
    argv = ["calibration", str(w.runs), "--mc-samples", "0", "-o", str(w.out / "r.h5")]
    return Case(argv, ("--mc-samples",))


@case("calibration_labels_beyond_the_classes")
def _(w):
    X = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
    np.savez(w.tmp / "d.npz", X=X, y=np.arange(30) % 12)
    argv = ["calibration", str(w.runs), "--data", f"npz:{w.tmp / 'd.npz'}"]
    return Case([*argv, "-o", str(w.out / "r.h5"), "-q"], ("d.npz", "labels range over 0..11"))


@case("bnn_rank_above_a_layer_size")
def _(w):
    return Case(_bnn(w, "--rank", "100", "--width", "4"), ("above the size of layer",))


@case("bnn_negative_prior_precision")
def _(w):
    return Case(_bnn(w, "--prior-precision", "-1"), ("--prior-precision",))


# ----------------------------------------------------------------------------- populations and metanets
def _metanet(w: Where, *extra: str) -> list[str]:
    return [
        "metanet",
        str(w.runs),
        "--seeds",
        "1",
        "--epochs",
        "1",
        "-o",
        str(w.out / "m.h5"),
        "-q",
        *extra,
    ]


def _edit_sidecar(path: Path, edit: Callable[[dict], None]) -> None:
    side = json.loads(path.read_text())
    edit(side)
    path.write_text(json.dumps(side))


def _nan_weight(path: Path) -> None:
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["lins.0.weight"][0, 0] = float("nan")
    torch.save(payload, path)


@case("metanet_variants_mixed_in_a_group")
def _(w):
    shutil.copytree(w.runs / "standard" / "seed1", w.runs / "w-asym" / "seed2")
    return Case(_metanet(w), ("group w-asym", "different architectures"))


@case("metanet_widths_mixed_in_a_group")
def _(w):
    d = w.runs / "standard" / "seed2"
    save_checkpoint(zoo.build("mlp", input_dim=64, width=8, depth=2), d / "final.pt")
    shutil.copy(w.runs / "standard" / "seed0" / "landscape.json", d / "landscape.json")
    _edit_sidecar(d / "landscape.json", lambda s: s["kwargs"].update(width=8))
    return Case(_metanet(w), ("population standard", "differ in arguments width", "seed2/final.pt"))


@case("metanet_target_missing_from_some_sidecars")
def _(w):
    side = w.runs / "w-asym" / "seed1" / "landscape.json"
    _edit_sidecar(side, lambda s: s["metrics"].pop("test_accuracy"))
    return Case(
        _metanet(w), ("'test_accuracy' is missing from 1 of 2", "w-asym/seed1/landscape.json")
    )


@case("metanet_too_few_networks_for_the_split")
def _(w):
    return Case(_metanet(w), ("population standard", "2 networks are too few", "train more"))


@case("metanet_nan_weights_strict")
def _(w):
    _nan_weight(w.runs / "standard" / "seed1" / "final.pt")
    return Case(
        _metanet(w, "--strict"), ("standard/seed1/final.pt", "NaN or Inf weights", "--strict")
    )


@case("metanet_nan_target_strict")
def _(w):
    side = w.runs / "standard" / "seed0" / "landscape.json"
    _edit_sidecar(side, lambda s: s["metrics"].update(test_accuracy=float("nan")))
    return Case(_metanet(w, "--strict"), ("standard/seed0/final.pt", "NaN or Inf target"))


@case("metanet_nan_weights_skipped_leave_too_few")
def _(w):
    _nan_weight(w.runs / "standard" / "seed1" / "final.pt")
    return Case(_metanet(w), ("population standard (1 non-finite left out)", "too few"))


@case("metanet_unknown_metanet")
def _(w):
    return Case(_metanet(w, "--metanets", "mlp,resnet"), ("--metanets", "'resnet'"))


def _population(w: Where, toml: str, *extra: str) -> list[str]:
    (w.tmp / "pop.toml").write_text(toml)
    argv = ["train", "--population", "4", "--population-config", str(w.tmp / "pop.toml")]
    return argv + ["--out", str(w.out / "pop"), "-q", *extra]


@case("population_distribution_low_above_high")
def _(w):
    argv = _population(
        w, '[population]\nlr = {distribution = "log_uniform", low = 0.5, high = 0.005}\n'
    )
    return Case(argv, ("pop.toml", "[population] lr", "above high"))


@case("population_config_unknown_key")
def _(w):
    return Case(
        _population(w, "[population]\nlearning_rate = 0.1\n"), ("pop.toml", "learning_rate")
    )


@case("population_control_without_a_width")
def _(w):
    argv = ["train", "--population", "4", "--arch", "resnet20", "--variants", "standard-small"]
    return Case(argv + ["--out", str(w.out / "pop"), "-q"], ("standard-small", "resnet20"))


# ----------------------------------------------------------------------------- executors
@case("workers_zero")
def _(w):
    return Case(_interpolate(w, "--workers", "0"), ("--workers", "at least 1"))


@case("workers_not_a_number")
def _(w):
    return Case(_interpolate(w, "--workers", "many"), ("--workers", "'gpu'", "'many'"))


@case("workers_gpu_without_cuda")
def _(w):
    patch = (torch.cuda, "is_available", lambda: False)
    return Case(
        _interpolate(w, "--workers", "gpu"), ("--workers gpu", "no usable GPU"), patches=[patch]
    )


@case("gpus_past_the_last_gpu")
def _(w):
    patches = [(torch.cuda, "is_available", lambda: True), (torch.cuda, "device_count", lambda: 2)]
    argv = _interpolate(w, "--gpus", "0,5", "--device", "cpu")
    return Case(argv, ("--gpus 0,5", "2 GPU(s)"), patches=patches)


@case("save_every_with_a_population")
def _(w):
    argv = ["train", "--population", "2", "--save-every", "1", "--out", str(w.out / "pop"), "-q"]
    return Case(argv, ("--save-every", "population"))


@case("per_layer_depth_zero")
def _(w):
    argv = ["hessian", str(w.runs), "--per-layer", "--layers-by", "0", "-o", str(w.out / "r.h5")]
    return Case(argv, ("--layers-by", "positive depth"))


@case("unreachable_scheduler")
def _(w):
    argv = _interpolate(w, "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1")
    return Case(argv, ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler"))


@case("run_config_workers_zero")
def _(w):
    cfg = w.tmp / "study.toml"
    cfg.write_text("[study]\nworkers = 0\n")
    argv = ["run", str(w.runs), "-o", str(w.out / "study"), "--config", str(cfg), "-q"]
    return Case(argv, ("study.toml", "[study] workers = 0", '"gpu"'))


@case("workers_cannot_import_the_model_class")
def _(w):
    """A model class that exists only in this process (as in a notebook's kernel): the workers,
    fresh processes, cannot import its module."""
    import types

    from checkpoints.zoo import build

    ghost = types.ModuleType("landscape_ghost_models")

    class GhostMLP(type(build("mlp", "standard", **MLP16))):
        pass

    GhostMLP.__module__ = ghost.__name__

    def mlp():
        m = build("mlp", "standard", **MLP16)
        m.__class__ = GhostMLP
        return m

    ghost.mlp = mlp
    sys.modules[ghost.__name__] = ghost
    argv = _interpolate(
        w, "--arch", "landscape_ghost_models:mlp", "--workers", "1", root=w.runs / "standard"
    )
    return Case(argv, ("cannot import landscape_ghost_models", "install"))


# ----------------------------------------------------------------------------- read-only outputs
@case("readonly_interpolate")
def _(w):
    ro = w.readonly()
    argv = _interpolate(w)
    argv[argv.index("-o") + 1] = str(ro / "r.h5")
    return Case(argv, ("cannot write", "r.h5", "read-only file system", "-o"), watch=ro)


@case("readonly_run")
def _(w):
    ro = w.readonly()
    argv = ["run", str(w.runs), "-o", str(ro / "study"), "--samples", "40", "-q"]
    return Case(argv, ("cannot write", "study", "read-only file system", "-o"), watch=ro)


@case("readonly_align")
def _(w):
    ro = w.readonly()
    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "-o", str(ro / "b.pt")]
    return Case(argv, ("cannot write", "b.pt", "read-only file system", "-o"), watch=ro)


def _results(w: Where) -> Path:
    from conftest import synthetic_results

    return synthetic_results(w.tmp / "results.h5", seeds=2, analyses=("interpolation",))


@case("readonly_report")
def _(w):
    src = _results(w)
    ro = w.readonly(lambda d: shutil.copy(src, d / "results.h5"))
    return Case(
        ["report", str(ro / "results.h5")],
        ("cannot write", "report.html", "read-only file system", "-o"),
        watch=ro,
    )


@case("readonly_report_static")
def _(w):
    src = _results(w)
    ro = w.readonly()
    argv = ["report", str(src), "-o", str(w.out / "r.html"), "--static", str(ro / "fig")]
    return Case(argv, ("cannot write", "fig", "read-only file system", "--static"))


def _fail_with(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@case("write_fails_align")
def _(w):
    import landscape.atomic

    a, b = (w.runs / "standard" / s / "final.pt" for s in ("seed0", "seed1"))
    argv = ["align", str(a), str(b), "-o", str(w.out / "b.pt")]
    patch = (landscape.atomic.tempfile, "mkstemp", _fail_with(errno.EROFS))
    return Case(argv, ("cannot write", "b.pt", "read-only file system", "-o"), patches=[patch])


@case("write_fails_report")
def _(w):
    import landscape.atomic

    src = _results(w)
    argv = ["report", str(src), "-o", str(w.out / "r.html")]
    patch = (landscape.atomic.tempfile, "mkstemp", _fail_with(errno.EACCES))
    return Case(argv, ("cannot write", "r.html", "permission denied", "-o"), patches=[patch])


# ----------------------------------------------------------------------------- the test
def _snapshot(folder: Path) -> list[tuple[str, int, int]] | None:
    """Every file and folder under ``folder`` (hidden ones too) with size and mtime; None when absent."""
    if not folder.exists():
        return None
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            out.append((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return sorted(out)


@pytest.fixture
def mount_readonly(tmp_path):
    """A fresh tmpfs (filled by ``fill``) remounted read-only; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(fill=None) -> Path:
        d = tmp_path / "ro"
        d.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a read-only tmpfs needs root")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(d)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(d)
        if fill is not None:
            fill(d)
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True, capture_output=True)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


PARAMS = [
    pytest.param(
        name,
        id=name,
        marks=[pytest.mark.xfail(strict=False, reason=XFAIL[name])] if name in XFAIL else [],
    )
    for name in CASES
]


@pytest.mark.parametrize("name", PARAMS)
def test_bad_input_is_one_line_and_exit_2(
    name, tiny_runs, tmp_path, capsys, monkeypatch, mount_readonly
):
    runs, out = tmp_path / "runs", tmp_path / "out"
    shutil.copytree(tiny_runs, runs)
    out.mkdir()
    c = CASES[name](Where(tmp_path, runs, out, mount_readonly))
    watch = c.watch or out
    before = _snapshot(watch)
    for target, attr, value in c.patches:
        monkeypatch.setattr(target, attr, value)
    with shown_warnings() as shown:
        rc = main(c.argv)
    monkeypatch.undo()
    err = capsys.readouterr().err + "".join(shown)
    lines = [line for line in err.splitlines() if line.strip()]
    print(lines[0] if lines else err)  # the message, for the report (pytest -rA)
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for expected in c.expect:
        assert expected in lines[0], f"{expected!r} not in {lines[0]!r}"
    assert _snapshot(watch) == before, "the output folder changed"
