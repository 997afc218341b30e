"""Transformers through the command line: train on modular:11, interpolate, audit symmetries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.cli import main
from checkpoints import load_model
from checkpoints.sources import load_data
from landscape import evaluate
from landscape.store import ResultsStore


def test_train_interpolate_and_audit_small_transformers(tmp_path, capsys):
    runs, out = tmp_path / "runs", tmp_path / "r.h5"
    train = [
        "train", "--arch", "transformer", "--data", "modular:11", "--variants",
        "standard,w-asym,head-asym", "--seeds", "2", "--epochs", "3", "--width", "16",
        "--out", str(runs), "-q",
    ]  # fmt: skip
    assert main(train) == 0
    assert "trained 6 models" in capsys.readouterr().out
    model = load_model(runs / "head-asym" / "seed1" / "final.pt")
    assert model.config["vocab_size"] == 12 and model.config["num_classes"] == 11
    assert model.config["max_len"] == 3 and model.variant == "head-asym"
    test = load_data("modular:11", "test")
    ev = evaluate(model, test.pair)
    with torch.no_grad():  # the evaluation kernel against a plain forward on the test split
        acc = float((model(test.X).argmax(1) == test.y).double().mean())
    assert ev.accuracy == pytest.approx(acc)

    interp = ["interpolate", str(runs), "--data", "modular:11", "--num-points", "4"]
    assert main([*interp, "-o", str(out), "-q"]) == 0
    assert "loss barrier" in capsys.readouterr().out
    store = ResultsStore(out)
    assert len(store.keys("interpolation")) == 3  # one pair per group
    rec = store.read("interpolation/standard/seed0-seed1")
    ends = rec["test_loss"][[0, -1]]
    a = load_model(runs / "standard" / "seed0" / "final.pt")
    b = load_model(runs / "standard" / "seed1" / "final.pt")
    np.testing.assert_allclose(
        ends, [evaluate(a, test.pair).loss, evaluate(b, test.pair).loss], rtol=1e-5
    )

    assert main(["symmetry", str(runs), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    per_group = {}
    for group in ("standard", "w-asym", "head-asym"):
        r = store.read(f"symmetry/{group}/seed0")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in r["perm_group"]]
        per_group[group] = dict(zip(names, r["group_relative_change"]))
    assert max(per_group["standard"].values()) < 1e-5
    assert min(per_group["w-asym"].values()) > 1e-3
    head = per_group["head-asym"]
    assert head["blocks.0.heads"] > 1e-3  # the per-head bias breaks the head permutation only
    assert max(v for g, v in head.items() if g != "blocks.0.heads") < 1e-5
