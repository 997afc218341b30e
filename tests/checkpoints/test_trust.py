"""The trust model: a file never decides what code runs.

A checkpoint's embedded config, a sidecar (``<name>.json``, ``landscape.json`` in the folder
or the folder above) and a ``run`` TOML config may name only zoo models and file readers. A
``module:callable`` or ``file.py:callable`` in any of them is refused with one line, and the
code it names is neither imported nor called. Each case carries a marker file that the
hostile code would create; the marker must not appear, whatever the verb.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from analysis.cli import main


def _hostile_code(tmp: Path, marker: Path) -> dict[str, str]:
    """Three ways to name code: a stdlib callable, an importable module, a .py file."""
    (tmp / "hostile_mod_landscape.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef build(**kw):\n    return None\n"
    )
    (tmp / "hostile_file.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\ndef build(**kw):\n    return None\n"
    )
    return {
        "os:system": "os:system",
        "module": "hostile_mod_landscape:build",
        "file": f"{tmp / 'hostile_file.py'}:build",
    }


def _plant(root: Path, source: Path, how: str, arch: str, marker: Path) -> None:
    """Rewrite the checkpoint tree under ``root`` so that ``arch`` arrives by ``how``."""
    kwargs = {"command": f"touch {marker}"}
    for ck in sorted(root.rglob("*.pt")):
        sd = torch.load(ck, weights_only=True)["state_dict"]
        if how == "embedded":
            torch.save({"state_dict": sd, "landscape": {"arch": arch, **kwargs}}, ck)
        else:
            torch.save({"state_dict": sd}, ck)
    for js in root.rglob("*.json"):
        js.unlink()
    side = {"arch": arch, "variant": "standard", "kwargs": kwargs}
    for run_dir in {ck.parent for ck in root.rglob("*.pt")}:
        if how == "named_sidecar":
            for ck in run_dir.glob("*.pt"):
                ck.with_suffix(".json").write_text(json.dumps(side))
        elif how == "folder_sidecar":
            (run_dir / "landscape.json").write_text(json.dumps(side))
        elif how == "parent_sidecar":
            (run_dir.parent / "landscape.json").write_text(json.dumps(side))


VERBS = ["inspect", "interpolate", "hessian", "surface", "symmetry", "align", "run"]
WAYS = ["embedded", "named_sidecar", "folder_sidecar", "parent_sidecar"]


def _argv(verb: str, root: Path, out: Path) -> list[str]:
    final = str(root / "standard" / "seed0" / "final.pt")
    other = str(root / "standard" / "seed1" / "final.pt")
    return {
        "inspect": ["inspect", final],
        "interpolate": ["interpolate", str(root), "-o", str(out / "r.h5"), "-q"],
        "hessian": ["hessian", str(root), "-o", str(out / "r.h5"), "-q"],
        "surface": ["surface", str(root), "-o", str(out / "r.h5"), "-q"],
        "symmetry": ["symmetry", str(root), "-o", str(out / "r.h5"), "-q"],
        "align": ["align", final, other, "-o", str(out / "b.pt")],
        "run": ["run", str(root), "-o", str(out / "study"), "-q"],
    }[verb]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("code", ["os:system", "module", "file"])
@pytest.mark.parametrize("verb", VERBS)
def test_file_named_code_never_runs(tiny_runs, tmp_path, capsys, monkeypatch, verb, way, code):
    marker = tmp_path / "PWNED"
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = _hostile_code(tmp_path, marker)[code]
    root = tmp_path / "runs"
    shutil.copytree(tiny_runs, root)
    _plant(root, tiny_runs, way, arch, marker)
    out = tmp_path / "out"
    out.mkdir()

    rc = main(_argv(verb, root, out))

    err = capsys.readouterr().err
    assert not marker.exists(), f"{verb}/{way}/{code}: the file's code ran"
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "interpolation:" not in line]
    assert "Traceback" not in err
    assert any("is code to import" in line and "--arch" in line for line in lines), err


@pytest.mark.parametrize("key", ["arch", "data"])
def test_run_config_cannot_name_code(tiny_runs, tmp_path, capsys, monkeypatch, key):
    marker = tmp_path / "PWNED"
    monkeypatch.syspath_prepend(str(tmp_path))
    arch = _hostile_code(tmp_path, marker)["module"]
    cfg = tmp_path / "study.toml"
    cfg.write_text(f'[study]\n{key} = "{arch}"\n')
    out = tmp_path / "study"
    rc = main(["run", str(tiny_runs), "-o", str(out), "--config", str(cfg), "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not marker.exists()
    assert len(err.splitlines()) == 1 and f"--{key}" in err and "command line" in err, err
    assert not out.exists()


def test_user_named_code_is_honoured(tiny_runs, tmp_path, monkeypatch):
    """The same callable, named by the user in Python (or --arch), builds the model."""
    from checkpoints import load_model

    (tmp_path / "user_arch_landscape.py").write_text(
        "from checkpoints import zoo\n"
        "def build(**kw):\n"
        "    return zoo.build('mlp', 'standard', input_dim=64, width=16, depth=2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tiny_runs / "standard" / "seed0" / "final.pt"
    model = load_model(path, arch="user_arch_landscape:build")
    ref = load_model(path)
    x = torch.randn(5, 64)
    assert torch.equal(model(x), ref(x))
