"""Bad input: one line naming what and where, exit status 2, no traceback, nothing written."""

import json
import shutil

import pytest
import torch

from analysis.cli import main
from checkpoints import save_checkpoint, zoo


def _run(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_help_lists_verbs_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for verb in ("train", "interpolate", "inspect"):
        assert verb in out
    with pytest.raises(SystemExit):
        main(["interpolate", "--help"])
    assert "example:" in capsys.readouterr().out


def test_missing_path(capsys, tmp_path):
    rc, err = _run(capsys, "interpolate", str(tmp_path / "nope"), "-o", str(tmp_path / "r.h5"))
    assert rc == 2 and "no such folder" in _one_line(err)
    assert not (tmp_path / "r.h5").exists()


def test_empty_folder(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    rc, err = _run(capsys, "interpolate", str(tmp_path / "empty"), "-o", str(tmp_path / "r.h5"))
    assert rc == 2 and "no checkpoints found" in _one_line(err)


def test_truncated_checkpoint_in_a_group(capsys, tiny_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(tiny_runs, root)
    f = root / "standard" / "seed1" / "final.pt"
    f.write_bytes(f.read_bytes()[:200])
    rc, err = _run(
        capsys, "interpolate", str(root), "--samples", "50", "-o", str(tmp_path / "r.h5"), "-q"
    )
    line = _one_line(err)
    assert rc == 2 and "truncated or corrupt" in line and "seed1/final.pt" in line


def test_group_with_different_masks_is_refused(capsys, tmp_path):
    for seed, mask_seed in ((0, 0), (1, 1)):
        m = zoo.build("mlp", "w-asym", input_dim=64, width=8, seed=seed, mask_seed=mask_seed)
        save_checkpoint(m, tmp_path / "g" / f"seed{seed}.pt")
    rc, err = _run(
        capsys,
        "interpolate",
        str(tmp_path / "g"),
        "--samples",
        "50",
        "-o",
        str(tmp_path / "r.h5"),
        "-q",
    )
    assert rc == 2 and "not one network family" in _one_line(err)
    assert not (tmp_path / "r.h5").exists()


def test_group_with_different_architectures_is_refused(capsys, tmp_path):
    d = tmp_path / "g"
    for seed, width in ((0, 8), (1, 9)):
        save_checkpoint(
            zoo.build("mlp", input_dim=64, width=width, seed=seed), d / f"seed{seed}" / "final.pt"
        )
    rc, err = _run(
        capsys, "interpolate", str(d.parent), "--samples", "50", "-o", str(tmp_path / "r.h5"), "-q"
    )
    assert rc == 2 and "different shapes" in _one_line(err)


def test_unknown_architecture_and_pickled_code(capsys, tmp_path):
    d = tmp_path / "g" / "seed0"
    d.mkdir(parents=True)
    torch.save({"a.weight": torch.zeros(2, 2)}, d / "final.pt")
    (d / "landscape.json").write_text(json.dumps({"arch": "vgg"}))
    rc, err = _run(capsys, "inspect", str(d / "final.pt"))
    assert rc == 2 and "unknown architecture" in _one_line(err)


def test_labels_out_of_range(capsys, tmp_path):
    import numpy as np

    save_checkpoint(
        zoo.build("mlp", input_dim=4, width=8, num_classes=3, seed=0), tmp_path / "g" / "seed0.pt"
    )
    save_checkpoint(
        zoo.build("mlp", input_dim=4, width=8, num_classes=3, seed=1), tmp_path / "g" / "seed1.pt"
    )
    np.savez(tmp_path / "d.npz", X=np.zeros((10, 4), np.float32), y=np.arange(10))
    rc, err = _run(
        capsys,
        "interpolate",
        str(tmp_path / "g"),
        "--data",
        f"npz:{tmp_path / 'd.npz'}",
        "-o",
        str(tmp_path / "r.h5"),
        "-q",
    )
    assert rc == 2 and "labels range over 0..9 but the model has 3 outputs" in _one_line(err)


def test_debug_shows_traceback(tmp_path):
    from landscape.errors import UserError

    with pytest.raises(UserError):
        main(["interpolate", str(tmp_path / "nope"), "--debug"])


def test_inspect_checkpoint(capsys, tiny_runs):
    assert main(["inspect", str(tiny_runs / "w-asym" / "seed0" / "final.pt")]) == 0
    out = capsys.readouterr().out
    assert "w-asym" in out and "fixed entries" in out and "test_accuracy" in out


def test_names_with_line_breaks_stay_on_one_line(capsys, tmp_path):
    sd = zoo.build("mlp", input_dim=4, width=2).state_dict()
    sd["evil\nkey\u2028x"] = torch.zeros(1)
    torch.save(
        {"state_dict": sd, "landscape": {"arch": "mlp", "input_dim": 4, "width": 2}},
        tmp_path / "m.pt",
    )
    rc, err = _run(capsys, "inspect", str(tmp_path / "m.pt"))
    assert rc == 2 and "unexpected keys evil\\nkey\\u2028x" in _one_line(err)


def test_parse_errors_are_one_line_naming_the_verb(capsys):
    assert main(["interpolate", "runs", "--batch-size", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("landscape interpolate: error: argument --batch-size")
    assert "(see landscape interpolate --help)" in line
    assert main(["inspect", "x.pt", "--nope"]) == 2
    assert _one_line(capsys.readouterr().err).startswith("landscape inspect: error: unrecognized")
