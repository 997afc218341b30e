"""Token data: ``modular:P`` against a hand computation, ``text:FILE`` windows against hand
slices, and integer tokens through the data pipeline and the evaluation kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkpoints import zoo
from checkpoints.sources import load_data
from landscape import UserError, as_batches, evaluate


@pytest.mark.parametrize("spec,frac", [("modular:7", 0.5), ("modular:11:0.3", 0.3)])
def test_modular_addition_matches_a_hand_computation(spec, frac):
    p = int(spec.split(":")[1])
    train, test = load_data(spec, "train"), load_data(spec, "test")
    assert train.X.dtype == torch.int64 and train.X.shape[1] == 3
    rows = {}
    for ds in (train, test):
        for (a, b, eq), y in zip(ds.X.tolist(), ds.y.tolist()):
            assert eq == p and 0 <= a < p and 0 <= b < p
            assert y == (a + b) % p  # the task by hand
            assert (a, b) not in rows  # each pair once, in one split
            rows[(a, b)] = y
    assert len(rows) == p * p
    assert len(train) == round(frac * p * p)
    assert train.description["vocab_size"] == p + 1 and train.num_classes == p
    again = load_data(spec, "train")
    assert torch.equal(again.X, train.X)  # a fixed split


def test_text_windows_equal_hand_slices(tmp_path):
    text = "hello world, the quick brown fox jumps over the lazy dog!\n" * 3 + "ünïcode ok"
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    T = 8
    train, test = load_data(f"text:{path}:{T}", "train"), load_data(f"text:{path}:{T}", "test")
    vocab = sorted(set(text))
    assert train.description["vocabulary"] == "".join(vocab)
    ids = {c: k for k, c in enumerate(vocab)}
    n = (len(text) - 1) // T
    n_train = round(0.9 * n)
    assert len(train) == n_train and len(test) == n - n_train
    windows = list(train.X.tolist()) + list(test.X.tolist())
    targets = list(train.y.tolist()) + list(test.y.tolist())
    for i in range(n):
        assert windows[i] == [ids[c] for c in text[i * T : i * T + T]]
        assert targets[i] == [ids[c] for c in text[i * T + 1 : i * T + T + 1]]
    assert train.num_classes == len(vocab) and train.description["window"] == T
    default = load_data(f"text:{path}", "train")
    assert default.X.shape[1] == 32


def test_text_and_modular_specs_refuse_bad_input(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_data(f"text:{tmp_path / 'none.txt'}")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc" * 50)
    with pytest.raises(UserError, match="not UTF-8"):
        load_data(f"text:{tmp_path / 'bin.txt'}")
    for bad in ("modular:1", "modular:x", "modular:5:1.5", "modular:5:0", "modular:1001"):
        with pytest.raises(UserError, match="modular:P"):
            load_data(bad)


def test_integer_tokens_flow_through_batches_and_the_exact_mean():
    data = load_data("modular:7", "test")
    batches = as_batches(data.pair, batch_size=5, dtype=torch.float64)
    assert all(x.dtype == torch.int64 for x, _ in batches)  # a float dtype casts floats only
    model = zoo.build("transformer", seed=0, vocab_size=8, num_classes=7, max_len=3, width=16)
    ev = evaluate(model, batches)
    with torch.no_grad():
        logits = model(data.X)
    assert ev.loss == pytest.approx(float(F.cross_entropy(logits, data.y)), rel=1e-6)
    assert ev.accuracy == pytest.approx(float((logits.argmax(1) == data.y).double().mean()))
    assert ev.num_samples == len(data) and len(batches) == int(np.ceil(len(data) / 5))
