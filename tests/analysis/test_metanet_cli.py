"""``landscape train --population`` and ``landscape metanet`` end to end on a tiny population."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import scipy.stats
import torch

import analysis
from analysis.cli import main
from landscape.records import metanet as M
from reports import render_html


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop") / "pop"
    argv = ["train", "--population", "10", "--arch", "mlp", "--width", "8", "--depth", "1"]
    argv += ["--variants", "standard,w-asym", "--data", "digits", "--samples", "200"]
    argv += ["--epochs-scale", "0.1", "--batch-size", "64", "--out", str(root), "-q"]
    assert main(argv) == 0
    return root


@pytest.fixture(scope="module")
def study(population, tmp_path_factory):
    out = tmp_path_factory.mktemp("metanet") / "r.h5"
    argv = ["metanet", str(population), "--seeds", "2", "--epochs", "3", "-o", str(out), "-q"]
    assert main(argv) == 0
    return out


def test_population_cli_writes_one_folder_per_network(population, capsys):
    assert (population / "population.json").is_file()
    for v in ("standard", "w-asym"):
        nets = sorted(p.name for p in (population / v).iterdir())
        assert nets == [f"net{i:05d}" for i in range(10)]
    side = json.loads((population / "w-asym" / "net00005" / "landscape.json").read_text())
    assert side["variant"] == "w-asym" and side["population"]["index"] == 5
    assert {"lr", "weight_decay", "label_smoothing", "epochs"} <= set(side["hyperparameters"])
    assert side["training"]["augment"] == "crop"  # auto: grey images are translated, not flipped


def test_metanet_cli_records_and_table(study, population, capsys):
    res = analysis.load(study)
    frame = res.frame(M.METANET.analysis)
    per_group = frame.groupby("group").size().to_dict()
    assert per_group == {"standard": 6 * 2, "w-asym": 5 * 2}  # mlp_perm on standard only
    for key in res.keys(M.METANET.analysis):
        rec = res.records[key]
        d = rec.datasets
        split = np.asarray(d[M.SPLIT.name], dtype=str)
        counts = dict(zip(*np.unique(split, return_counts=True)))
        assert counts == {"train": 5, "validation": 2, "test": 3}
        y, p = np.asarray(d[M.TARGET.name]), np.asarray(d[M.PREDICTED.name])
        t = split == "test"
        r2 = 1 - ((y[t] - p[t]) ** 2).sum() / ((y[t] - y[t].mean()) ** 2).sum()
        assert rec.attrs[M.TEST_R2.name] == pytest.approx(r2)
        tau = scipy.stats.kendalltau(y[t], p[t]).statistic
        assert rec.attrs[M.KENDALL_TAU.name] == pytest.approx(tau) or np.isnan(tau)
        assert len(d[M.TRAIN_MSE.name]) == 3 and rec.attrs[M.TARGET_NAME.name] == "test_accuracy"
        targets = {
            net: json.loads((population / rec.attrs["group"] / net / "landscape.json").read_text())
            for net in d[M.NETWORK.name]
        }
        assert [v["metrics"]["test_accuracy"] for v in targets.values()] == pytest.approx(list(y))
    table = res.summary([M.METANET.analysis], full=True)
    assert list(table.group) == ["standard", "w-asym"]
    assert table.loc[0, "MLP+perm R²"] != "-" and table.loc[1, "MLP+perm R²"] == "-"
    assert {"MLP R²", "StatNN R²", "DMC tau"} <= set(table.columns)


def test_rerun_reuses_records_and_report_shows_the_section(study, population, tmp_path, capsys):
    before = {k: r.attrs["time"] for k, r in analysis.load(study).records.items()}
    argv = ["metanet", str(population), "--seeds", "2", "--epochs", "3", "-o", str(study)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "metanet: 0 run(s)" in out.err and "one row per population" in out.out
    assert {k: r.attrs["time"] for k, r in analysis.load(study).records.items()} == before
    html = render_html(analysis.load(study), tmp_path / "r.html").read_text()
    assert 'id="metanet"' in html
    for name in ("metanet-scores", "metanet-scatter", "metanet-targets"):
        assert f'data-figure="{name}"' in html


def test_nan_networks_are_left_out_with_a_count(population, tmp_path):
    root = tmp_path / "pop"
    shutil.copytree(population, root)
    for net in ("net00001", "net00002"):
        path = root / "standard" / net / "final.pt"
        payload = torch.load(path, weights_only=True)
        payload["state_dict"]["lins.0.weight"][0, 0] = float("nan")
        torch.save(payload, path)
    res = analysis.metanet_study(root, metanets=["statnn"], seeds=1, epochs=2, progress=False)
    rec = res.records[res.keys(M.METANET.analysis, "standard")[0]]
    assert rec.attrs[M.SKIPPED.name] == 2 and rec.attrs[M.NETWORKS.name] == 8
    assert "net00001" not in list(rec.datasets[M.NETWORK.name])
