"""Populations: seeded hyperparameter draws, one complete folder per network, resume after kill -9,
and Dask workers that train exactly the networks the local run trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints.population import (
    PAPER,
    Dist,
    PopulationSpec,
    read_population,
    spec_from_config,
    train_population,
)
from checkpoints.sources import load_data
from landscape.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SPEC = dict(
    arch="mlp",
    arch_kwargs={"width": 8, "depth": 1},
    variants=("standard", "w-asym"),
    size=4,
    batch_size=64,
    epochs=Dist("int_uniform", 6, 12),
    augment="none",
)


@pytest.fixture(scope="module")
def data():
    return load_data("digits", "train", samples=200), load_data("digits", "test", samples=100)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted, single-process population."""
    root = tmp_path_factory.mktemp("reference")
    train_population(root, PopulationSpec(**SPEC), *data, progress=False)
    return root


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def _same_networks(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*.pt"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.pt"))
    for f in files:
        sa, sb = _state(a / f), _state(b / f)
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), f
        ma = json.loads((a / f).with_name("landscape.json").read_text())["metrics"]
        mb = json.loads((b / f).with_name("landscape.json").read_text())["metrics"]
        assert ma == mb


def test_draws_are_seeded_per_network_and_follow_the_paper():
    spec = PopulationSpec(size=10)
    draws = [spec.draw(i) for i in range(200)]
    assert spec.draw(7) == PopulationSpec(size=3000).draw(7)  # independent of the size
    assert spec.draw(7) != PopulationSpec(seed=1).draw(7)
    lr = np.array([d["lr"] for d in draws])
    wd = np.array([d["weight_decay"] for d in draws])
    assert 0.005 <= lr.min() and lr.max() <= 0.5 and 0.005 <= wd.max() <= 0.1 and wd.min() >= 1e-5
    # log-uniform: log10(lr / 0.5) = -U(0, 2) has mean -1
    assert abs(np.log10(lr / 0.5).mean() + 1) < 0.15
    assert {d["epochs"] for d in draws} <= set(range(10, 41))
    assert all(0 <= d["label_smoothing"] <= 0.2 for d in draws)
    scaled = PopulationSpec(epochs_scale=0.1).draw(3)
    assert scaled["epochs"] == max(1, round(scaled["epochs_drawn"] * 0.1))
    assert PAPER.schedule == "triangular" and PAPER.peak_epoch == 5 and PAPER.batch_size == 512


def test_config_and_overrides(tmp_path):
    cfg = {
        "population": {
            "arch": "cnn",
            "size": 3,
            "lr": {"distribution": "choice", "values": [0.1, 0.01]},
            "epochs": 2,
        }
    }
    spec = spec_from_config(cfg, "p.toml", size=5, weight_decay=0.0)
    assert spec.arch == "cnn" and spec.size == 5 and spec.epochs == Dist("constant", 2)
    assert spec.weight_decay == Dist("constant", 0.0)
    assert spec.draw(0)["lr"] in (0.1, 0.01)
    for bad, match in (
        (
            {"population": {"lr": {"distribution": "log_uniform", "low": 0.5, "high": 0.1}}},
            "above high",
        ),
        (
            {"population": {"lr": {"distribution": "normal", "low": 0, "high": 1}}},
            "distribution 'normal'",
        ),
        ({"population": {"nope": 1}}, "unknown key"),
        ({"population": {"size": "many"}}, "must be an integer"),
        ({"population": {"arch": "pkg.mod:fn"}}, "not a zoo model"),
        ({"population": {"label_smoothing": 1.5}}, "label_smoothing"),
        ({"other": {}}, "unknown table"),
    ):
        with pytest.raises(UserError, match=match):
            spec_from_config(bad, "p.toml")


def test_population_layout_sidecars_and_reuse(reference, data, tmp_path):
    spec = read_population(reference)["population"]
    assert spec["size"] == 4 and spec["lr"]["distribution"] == "log_uniform"
    side = json.loads((reference / "w-asym" / "net00002" / "landscape.json").read_text())
    assert side["hyperparameters"] == PopulationSpec(**SPEC).draw(2)
    assert side["training"]["epochs"] == side["hyperparameters"]["epochs"]
    assert side["training"]["schedule"] == "triangular" and side["training"]["augment"] == "none"
    m = side["metrics"]
    assert m["generalisation_gap"] == pytest.approx(m["train_accuracy"] - m["test_accuracy"])
    assert {"test_loss", "train_loss", "loss_gap"} <= set(m)
    for v in ("standard", "w-asym"):
        assert sorted(p.name for p in (reference / v).iterdir()) == [
            f"net0000{i}" for i in range(4)
        ]
    # a rerun trains nothing; a larger population trains only the new networks
    again = train_population(reference, PopulationSpec(**SPEC), *data, progress=False)
    assert not any(r.trained for r in again)
    bigger = tmp_path / "bigger"
    train_population(bigger, PopulationSpec(**{**SPEC, "size": 2}), *data, progress=False)
    res = train_population(bigger, PopulationSpec(**SPEC), *data, progress=False)
    assert [r.trained for r in res] == [False, False, True, True] * 2
    _same_networks(reference, bigger)
    # another distribution into the same folder is refused
    with pytest.raises(UserError, match="other settings"):
        train_population(bigger, PopulationSpec(**{**SPEC, "seed": 9}), *data, progress=False)


def test_killed_run_resumes_to_the_same_networks(reference, data, tmp_path):
    root = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(1)
        from checkpoints.population import Dist, PopulationSpec, train_population
        from checkpoints.sources import load_data
        spec = PopulationSpec(arch="mlp", arch_kwargs={{"width": 8, "depth": 1}},
            variants=("standard", "w-asym"), size=4, batch_size=64,
            epochs=Dist("int_uniform", 6, 12), augment="none")
        train_population({str(root)!r}, spec, load_data("digits", "train", samples=200),
            load_data("digits", "test", samples=100), progress=False)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if (root / "standard" / "net00001" / "landscape.json").exists():
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    complete = list(root.glob("*/net*/landscape.json"))
    assert 0 < len(complete) < 8, "the kill did not land mid-population"
    res = train_population(root, PopulationSpec(**SPEC), *data, progress=False)
    assert sum(r.trained for r in res) == 8 - len(complete)
    assert not list(root.glob("*/.net*.tmp-*")), "temporaries of the killed run remain"
    _same_networks(reference, root)


def test_dask_workers_train_bit_identical_networks(reference, data, tmp_path):
    pytest.importorskip("distributed")
    root = tmp_path / "dask"
    train_population(root, PopulationSpec(**SPEC), *data, workers=2, progress=False)
    _same_networks(reference, root)
