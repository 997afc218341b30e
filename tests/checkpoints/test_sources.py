import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from checkpoints.sources import load_data, read_idx
from landscape.errors import UserError


def _write_idx(path, arr, gz):
    codes = {np.dtype(np.uint8): 0x08}
    head = struct.pack(">BBBB", 0, 0, codes[arr.dtype], arr.ndim) + struct.pack(
        ">" + "I" * arr.ndim, *arr.shape
    )
    raw = head + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_in_torchvision_layout(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs, gz)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, gz)
    ds = load_data(f"mnist:{tmp_path}", "train")
    assert ds.X.shape == (5, 1, 28, 28) and ds.y.tolist() == [3, 1, 4, 1, 5]
    expected = (imgs[2].astype(np.float32) / 255 - 0.1307) / 0.3081
    assert np.allclose(ds.X[2, 0].numpy(), expected, atol=1e-5)
    assert ds.description["normalisation"]["mean"] == [0.1307]


def test_idx_truncated(tmp_path):
    arr = np.zeros((4, 3), dtype=np.uint8)
    _write_idx(tmp_path / "a", arr, False)
    (tmp_path / "a").write_bytes((tmp_path / "a").read_bytes()[:-3])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "a")


def test_cifar10_python_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [7, 2]}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    ds = load_data(f"cifar10:{tmp_path}", "train")
    assert ds.X.shape == (10, 3, 32, 32) and ds.y.tolist() == [7, 2] * 5
    te = load_data(f"cifar10:{tmp_path}", "test")
    assert te.X.shape == (2, 3, 32, 32)


def test_cifar_pickle_with_code_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(UserError, match="not a readable CIFAR-10 batch"):
        load_data(f"cifar10:{tmp_path}", "test")
    assert not marker.exists()


def test_npz_pt_and_subset(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    y = np.arange(50) % 3
    np.savez(tmp_path / "d.npz", X=X, y=y)
    ds = load_data(f"npz:{tmp_path / 'd.npz'}", samples=10, seed=1)
    assert len(ds) == 10 and ds.description["full_size"] == 50
    again = load_data(f"npz:{tmp_path / 'd.npz'}", samples=10, seed=1)
    assert torch.equal(ds.X, again.X)
    torch.save({"X": torch.from_numpy(X), "y": torch.from_numpy(y)}, tmp_path / "d.pt")
    assert torch.equal(load_data(f"pt:{tmp_path / 'd.pt'}").X, torch.from_numpy(X))


def test_digits_embedded():
    tr, te = load_data("digits", "train"), load_data("digits", "test")
    assert len(tr) == 1437 and len(te) == 360 and tr.X.shape[1:] == (1, 8, 8)
    assert set(te.y.tolist()) == set(range(10))


def test_module_callable(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\nclass D(torch.utils.data.Dataset):\n    def __len__(self): return 6\n"
        "    def __getitem__(self, i): return torch.full((2,), float(i)), i % 2\n"
        "def make(split='test'):\n    return D()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ds = load_data("mydata:make")
    assert ds.X.shape == (6, 2) and ds.y.tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("nope", "unknown data spec"),
        ("mnist:", "name the folder"),
        ("npz:/no/such.npz", "no such file"),
    ],
)
def test_bad_specs(spec, msg):
    with pytest.raises(UserError, match=msg):
        load_data(spec)


def test_idx_headers_that_lie_are_refused_before_allocating(tmp_path):
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(UserError, match="header cut short"):
        read_idx(tmp_path / "short")
    head = b"\x00\x00\x08\x03" + struct.pack(">III", 4_000_000_000, 28, 28)
    (tmp_path / "huge").write_bytes(head + bytes(100))
    with pytest.raises(UserError, match="4000000000x28x28"):
        read_idx(tmp_path / "huge")
    (tmp_path / "huge.gz").write_bytes(gzip.compress(head + bytes(100)))
    with pytest.raises(UserError, match="cannot hold"):
        read_idx(tmp_path / "huge.gz")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(40))
    with pytest.raises(UserError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.parametrize(
    "X,message",
    [
        (np.array([object()] * 4, dtype=object), "holds Python objects"),
        (np.array(["a"] * 4), "dtype <U1"),
        (np.full((4, 2), np.nan, np.float32), "the inputs contain NaN"),
    ],
)
def test_npz_contents_are_checked_naming_the_file(tmp_path, X, message):
    np.savez(tmp_path / "d.npz", X=X, y=np.zeros(4, np.int64))
    with pytest.raises(UserError, match=message) as e:
        load_data(f"npz:{tmp_path / 'd.npz'}")
    assert str(e.value).startswith(str(tmp_path / "d.npz"))


def test_a_data_callable_is_named_as_data():
    with pytest.raises(UserError, match=r"^--data 'nosuchmodule_x:make'"):
        load_data("nosuchmodule_x:make")
