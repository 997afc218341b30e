import pytest

from checkpoints import discover, save_checkpoint, zoo
from checkpoints.io import write_json_atomic
from landscape.errors import UserError


def _save(path, **kw):
    save_checkpoint(zoo.build("mlp", input_dim=4, width=4, **kw), path)


def test_group_seed_tree(tmp_path):
    for g in ("standard", "w-asym"):
        for s in (0, 1, 10):
            _save(tmp_path / g / f"seed{s}" / "final.pt", variant=g)
            _save(tmp_path / g / f"seed{s}" / "init.pt", variant=g)
    groups = discover(tmp_path)
    assert list(groups) == ["standard", "w-asym"]
    assert [r.seed for r in groups["w-asym"]] == ["seed0", "seed1", "seed10"]
    assert groups["standard"][0].init.name == "init.pt"


def test_flat_folder_with_one_sidecar(tmp_path):
    d = tmp_path / "mine"
    for s in (2, 1):
        _save(d / f"model_{s}.pt")
    _save(d / "init_1.pt")
    write_json_atomic(
        d / "landscape.json",
        {"arch": "mlp", "variant": "standard", "kwargs": {"input_dim": 4, "width": 4}},
    )
    groups = discover(d)
    runs = groups["mine"]
    assert (
        [r.seed for r in runs] == ["1", "2"]
        and runs[0].init.name == "init_1.pt"
        and runs[1].init is None
    )
    assert runs[0].sidecar["arch"] == "mlp"


def test_several_roots_and_name_clash(tmp_path):
    _save(tmp_path / "a" / "standard" / "seed0" / "final.pt")
    _save(tmp_path / "b" / "standard" / "seed0" / "final.pt")
    assert list(discover([tmp_path / "a", tmp_path / "b"])) == ["standard", "b-standard"]


def test_mixed_architectures_in_sidecars(tmp_path):
    for s, arch in ((0, "mlp"), (1, "cnn")):
        d = tmp_path / "g" / f"seed{s}"
        _save(d / "final.pt")
        write_json_atomic(d / "landscape.json", {"arch": arch, "variant": "standard"})
    with pytest.raises(UserError, match="different architectures"):
        discover(tmp_path)
