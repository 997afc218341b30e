"""`landscape align` and `landscape symmetry`: outputs, sidecars, records, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.cli import main
from checkpoints import build, load_model, read_sidecar, save_checkpoint, sha256
from checkpoints.sources import load_data
from landscape import apply_permutation, weight_matching
from landscape.store import ResultsStore


def _ckpt(root, group, seed):
    return root / group / f"seed{seed}" / "final.pt"


def test_align_writes_permuted_checkpoint_with_sidecar(tiny_runs, tmp_path, capsys):
    a, b, out = (
        _ckpt(tiny_runs, "standard", 0),
        _ckpt(tiny_runs, "standard", 1),
        tmp_path / "B_aligned.pt",
    )
    assert main(["align", str(a), str(b), "-o", str(out)]) == 0
    table = capsys.readouterr().out
    assert "function preserved" in table and "True" in table
    side = read_sidecar(out)
    info = side["aligned_to"]
    assert (
        info["path"] == str(a)
        and info["sha256"] == sha256(a)
        and info["source_sha256"] == sha256(b)
    )
    assert info["method"] == "weight matching" and info["function_preserved"] is True
    model_a, model_b = load_model(a), load_model(b)
    expected = weight_matching(model_a, model_b)
    assert info["objective"] == pytest.approx(expected.objective)
    assert side["alignment_permutation"] == {g: p.tolist() for g, p in expected.perms.items()}
    aligned, reference = load_model(out), apply_permutation(model_b, expected)
    for name, t in reference.state_dict().items():
        assert torch.equal(aligned.state_dict()[name], t), name
    x = load_data("digits", "test", samples=64).X
    with torch.no_grad():
        assert torch.allclose(aligned(x), model_b(x), atol=1e-5)
    assert side["arch"] == "mlp" and side["metrics"] == read_sidecar(b)["metrics"]


def test_align_activation_method(tiny_runs, tmp_path):
    a, b, out = (
        _ckpt(tiny_runs, "standard", 0),
        _ckpt(tiny_runs, "standard", 1),
        tmp_path / "act.pt",
    )
    assert (
        main(
            [
                "align",
                str(a),
                str(b),
                "-o",
                str(out),
                "--method",
                "activation",
                "--data",
                "digits",
                "--samples",
                "200",
            ]
        )
        == 0
    )
    assert read_sidecar(out)["aligned_to"]["method"] == "activation matching"


def test_align_asymmetric_warns(tiny_runs, tmp_path, capsys):
    a, b, out = _ckpt(tiny_runs, "w-asym", 0), _ckpt(tiny_runs, "w-asym", 1), tmp_path / "w.pt"
    assert main(["align", str(a), str(b), "-o", str(out)]) == 0
    assert "does not preserve" in capsys.readouterr().err
    side = read_sidecar(out)
    assert side["aligned_to"]["function_preserved"] is False and "metrics" not in side


def _bad(argv, out, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_align_bad_input_exits_2_and_writes_nothing(tiny_runs, tmp_path, capsys):
    std, wasym = _ckpt(tiny_runs, "standard", 0), _ckpt(tiny_runs, "w-asym", 1)
    out = tmp_path / "out.pt"
    _bad(["align", str(std), str(wasym), "-o", str(out)], out, capsys, "fixed buffers")
    narrow = tmp_path / "narrow.pt"
    save_checkpoint(build("mlp", input_dim=64, width=8, depth=2), narrow)
    _bad(["align", str(std), str(narrow), "-o", str(out)], out, capsys, "different shapes")
    spec = load_model(std).permutation_spec().to_dict()
    spec["groups"]["hidden0"] = [e for e in spec["groups"]["hidden0"] if e[0] != "lins.0.bias"]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _bad(
        [
            "align",
            str(std),
            str(_ckpt(tiny_runs, "standard", 1)),
            "-o",
            str(out),
            "--spec",
            str(tmp_path / "spec.json"),
        ],
        out,
        capsys,
        "lins.0.bias",
    )
    spec = load_model(std).permutation_spec().to_dict()
    spec["groups"]["hidden0"].append(
        ["lins.2.weight", 0]
    )  # 10 classes, 16 units: the similarity would not be square
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _bad(
        [
            "align",
            str(std),
            str(_ckpt(tiny_runs, "standard", 1)),
            "-o",
            str(out),
            "--spec",
            str(tmp_path / "spec.json"),
        ],
        out,
        capsys,
        "not a multiple",
    )
    spec = load_model(std).permutation_spec().to_dict()
    spec["groups"]["hidden0"].append(
        ["lins.0.weight", 1]
    )  # 64 inputs in 16 blocks of 4: fits in size, but is no symmetry
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    _bad(
        [
            "align",
            str(std),
            str(_ckpt(tiny_runs, "standard", 1)),
            "-o",
            str(out),
            "--spec",
            str(tmp_path / "spec.json"),
        ],
        out,
        capsys,
        "tensor lins.0.weight axis 1 breaks it",
    )
    _bad(
        ["align", str(std), str(std), "-o", str(out), "--method", "activation"],
        out,
        capsys,
        "needs --data",
    )
    _bad(["align", str(std), str(std), "-o", str(std)], out, capsys, "overwrite")


def test_symmetry_cli_writes_records_and_resumes(tiny_runs, tmp_path, capsys):
    res = tmp_path / "r.h5"
    assert main(["symmetry", str(tiny_runs), "-o", str(res), "--trials", "1", "-q"]) == 0
    table = capsys.readouterr().out
    assert "standard" in table and "w-asym" in table and "log10 group order" in table
    store = ResultsStore(res)
    keys = store.keys("symmetry")
    assert keys == sorted(f"symmetry/{g}/seed{s}" for g in ("standard", "w-asym") for s in (0, 1))
    std, asym = store.read("symmetry/standard/seed0"), store.read("symmetry/w-asym/seed0")
    assert std.attrs["symmetric"] is True or std.attrs["symmetric"] == 1
    assert not asym.attrs["symmetric"] and asym.attrs["asymmetric_groups"] == 2
    assert float(std["relative_output_change"]) < 1e-5 < float(asym["relative_output_change"])
    assert std.dataset_attrs["group_max_change"]["axes"] == ["perm_group"]
    stamp = std.attrs["time"]
    assert (
        main(["symmetry", str(tiny_runs), "-o", str(res), "-q"]) == 0
    )  # complete records are reused
    assert ResultsStore(res).read("symmetry/standard/seed0").attrs["time"] == stamp


def test_symmetry_cli_single_checkpoint_with_data(tiny_runs, tmp_path, capsys):
    res = tmp_path / "one.h5"
    assert (
        main(
            [
                "symmetry",
                str(_ckpt(tiny_runs, "w-asym", 0)),
                "--data",
                "digits",
                "-o",
                str(res),
                "-q",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "hidden0" in out and "hidden1" in out  # per-permutation-group table for one network
    assert main(["symmetry", str(tmp_path / "missing"), "-o", str(res)]) == 2
