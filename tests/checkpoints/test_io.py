import os
import pickle

import pytest
import torch

from checkpoints import load_model, save_checkpoint, zoo
from checkpoints.io import read_checkpoint
from landscape.errors import UserError


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_code_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = _Boom()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": torch.zeros(2)}, "x": evil}, f)
    with pytest.raises(UserError, match="refused"):
        load_model(path)
    assert not marker.exists()


def test_round_trip_with_embedded_config(tmp_path):
    m = zoo.build("mlp", "w-asym", input_dim=16, width=8, seed=4)
    save_checkpoint(m, tmp_path / "m.pt")
    m2 = load_model(tmp_path / "m.pt")
    x = torch.randn(5, 16)
    assert torch.equal(m(x), m2(x))
    assert not m2.training


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model_state_dict", "model"])
def test_wrappers_with_arch(tmp_path, wrapper):
    m = zoo.build("cnn", "standard", seed=1)
    sd = m.state_dict()
    torch.save(sd if wrapper is None else {wrapper: sd, "epoch": 3}, tmp_path / "c.pt")
    m2 = load_model(tmp_path / "c.pt", arch="cnn")
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(m(x), m2(x))


def test_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    m = zoo.build("mlp", "standard", input_dim=16, width=8)
    st.save_file(m.state_dict(), str(tmp_path / "m.safetensors"))
    m2 = load_model(tmp_path / "m.safetensors", arch="mlp", input_dim=16, width=8)
    x = torch.randn(3, 16)
    assert torch.allclose(m(x), m2(x))


def _public_mlp_state(variant, seed=0):
    """A state dict in the paper's public-code layout, written independently of the zoo."""
    g = torch.Generator().manual_seed(seed)
    dims = [16, 12, 12, 12, 10]
    sd = {}
    for i in range(4):
        w = torch.randn(dims[i + 1], dims[i], generator=g) * 0.3
        sd[f"lins.{i}.weight"] = w
        sd[f"lins.{i}.bias"] = torch.randn(dims[i + 1], generator=g) * 0.1
        if variant == "w-asym":
            mask = torch.ones_like(w)
            for r in range(w.shape[0]):
                mask[r, torch.randperm(w.shape[1], generator=g)[:3]] = 0
            z = torch.randn(w.shape, generator=g)
            sd[f"lins.{i}.mask"] = mask
            sd[f"lins.{i}.normal_mask"] = z
            sd[f"lins.{i}.weight"] = w * mask + z * (1 - mask)  # fixed values written into weight
    for i in range(3):
        sd[f"norms.{i}.weight"] = 1 + 0.1 * torch.randn(12, generator=g)
        sd[f"norms.{i}.bias"] = 0.1 * torch.randn(12, generator=g)
        if variant == "sigma-asym":
            sd[f"activations.{i}.C"] = torch.randn(12, 12, generator=g)
    return sd


def _public_forward(sd, x, variant):
    x = x.flatten(1)
    for i in range(4):
        w = sd[f"lins.{i}.weight"]
        x = x @ w.T + sd[f"lins.{i}.bias"]
        if i < 3:
            x = torch.nn.functional.layer_norm(
                x, (12,), sd[f"norms.{i}.weight"], sd[f"norms.{i}.bias"]
            )
            x = (
                x * torch.sigmoid(x @ sd[f"activations.{i}.C"].T)
                if variant == "sigma-asym"
                else torch.nn.functional.gelu(x)
            )
    return x


@pytest.mark.parametrize("variant", ["standard", "w-asym", "sigma-asym"])
def test_public_code_layout_loads(tmp_path, variant):
    sd = _public_mlp_state(variant)
    torch.save(sd, tmp_path / "pub.pt")
    m = load_model(tmp_path / "pub.pt")
    assert m.config["variant"] == variant and m.config["width"] == 12 and m.config["depth"] == 3
    x = torch.randn(7, 16)
    assert torch.allclose(m(x), _public_forward(sd, x, variant), atol=1e-5)


def test_truncated_file(tmp_path):
    m = zoo.build("mlp", input_dim=16, width=8)
    save_checkpoint(m, tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(tmp_path / "t.pt")


def test_nan_weights_and_bad_keys(tmp_path):
    m = zoo.build("mlp", input_dim=16, width=8)
    sd = m.state_dict()
    sd["lins.1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(UserError, match="lins.1.weight contains NaN"):
        load_model(tmp_path / "nan.pt", arch="mlp", input_dim=16, width=8)
    sd = zoo.build("mlp", input_dim=16, width=8).state_dict()
    sd.pop("lins.0.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "keys.pt")
    with pytest.raises(UserError, match=r"missing keys lins.0.bias; unexpected keys extra.weight"):
        load_model(tmp_path / "keys.pt", arch="mlp", input_dim=16, width=8)
    torch.save(zoo.build("mlp", input_dim=16, width=8).state_dict(), tmp_path / "shape.pt")
    with pytest.raises(UserError, match="shape mismatch at lins.0.weight"):
        load_model(tmp_path / "shape.pt", arch="mlp", input_dim=16, width=9)


def test_user_architecture_from_file(tmp_path):
    (tmp_path / "net.py").write_text(
        "import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3))\n"
    )
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3)).state_dict(), tmp_path / "s.pt")
    m = load_model(tmp_path / "s.pt", arch=f"{tmp_path / 'net.py'}:make")
    assert m(torch.randn(2, 4)).shape == (2, 3)


def test_no_architecture_known(tmp_path):
    torch.save({"a.weight": torch.zeros(2, 2)}, tmp_path / "x.pt")
    with pytest.raises(UserError, match="pass --arch"):
        load_model(tmp_path / "x.pt")
    sd, _ = read_checkpoint(tmp_path / "x.pt")
    assert list(sd) == ["a.weight"]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty file"),
        (b"\x00" * 64, "not a readable checkpoint"),
        ("random", "not a readable checkpoint"),  # torch's unpickler raises IndexError on these
    ],
)
def test_unreadable_files_are_user_errors_naming_the_file(tmp_path, content, message):
    import numpy as np

    data = np.random.default_rng(17).bytes(3000) if content == "random" else content
    (tmp_path / "bad.pt").write_bytes(data)
    with pytest.raises(UserError, match=message) as e:
        read_checkpoint(tmp_path / "bad.pt")
    assert "bad.pt" in str(e.value) and "\n" not in str(e.value)


def test_expanded_tensors_are_refused_before_they_are_touched(tmp_path):
    torch.save({"w": torch.zeros(1).expand(10**6, 10**6)}, tmp_path / "huge.pt")
    with pytest.raises(UserError, match=r"declares shape \(1000000, 1000000\)"):
        read_checkpoint(tmp_path / "huge.pt")
    torch.save({"w": torch.zeros(1).expand(10**4, 10**4)}, tmp_path / "view.pt")
    with pytest.raises(UserError, match="expanded view"):
        read_checkpoint(tmp_path / "view.pt")
    torch.save({"w": torch.zeros(1).expand(4, 4)}, tmp_path / "small.pt")  # small views are fine
    assert read_checkpoint(tmp_path / "small.pt")[0]["w"].shape == (4, 4)


def test_a_config_is_checked_on_the_meta_device_before_anything_is_built(tmp_path, monkeypatch):
    import json

    sd = zoo.build("mlp", input_dim=16, width=8).state_dict()
    torch.save(sd, tmp_path / "m.pt")
    side = tmp_path / "m.json"
    side.write_text(json.dumps({"arch": "mlp", "kwargs": {"input_dim": 16, "width": 10**9}}))
    with pytest.raises(UserError, match=r"m\.json: the mlp it declares has"):
        load_model(tmp_path / "m.pt")
    side.write_text(json.dumps({"arch": "mlp", "kwargs": {"input_dim": 16, "width": 4096}}))
    built = []
    real_build = zoo.build
    monkeypatch.setattr(zoo, "build", lambda *a, **k: built.append(k) or real_build(*a, **k))
    with pytest.raises(UserError, match=r"shape mismatch at lins\.0\.weight.*m\.json"):
        load_model(tmp_path / "m.pt")
    assert len(built) == 1  # the meta skeleton only: the 4096-wide model was never allocated
    side.write_text(json.dumps({"arch": "mlp", "kwargs": {"input_dim": 16, "width": "eight"}}))
    with pytest.raises(UserError, match=r"m\.json: 'width' must be an integer, got 'eight'"):
        load_model(tmp_path / "m.pt")


def test_import_callable_names_the_option(tmp_path):
    from checkpoints.io import import_callable

    with pytest.raises(UserError, match=r"^--data 'ftp:/x': cannot import ftp"):
        import_callable("ftp:/x", "--data")
    (tmp_path / "broken.py").write_text("def f(:\n")
    with pytest.raises(UserError, match="syntax error"):
        import_callable(f"{tmp_path / 'broken.py'}:f")


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import landscape.atomic

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(landscape.atomic.tempfile, "mkstemp", refuse)
    with pytest.raises(UserError, match=r"cannot write .*m\.pt: read-only file system: choose"):
        save_checkpoint(zoo.build("mlp", input_dim=4, width=2), tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []
