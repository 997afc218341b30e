"""landscape bnn and landscape calibration: run folders, records, posterior files, resuming, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.cli import main
from analysis.results import load
from checkpoints import is_posterior, load_model, load_posterior
from landscape.records import bnn as B
from landscape.records import calibration as C

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--samples",
    "200",
    "--steps",
    "40",
    "--log-every",
    "10",
    "--batch-size",
    "32",
    "--width",
    "16",
    "--depth",
    "1",
    "--test-samples",
    "4",
    "-q",
    "--no-report",
]


@pytest.fixture(scope="module")
def bnn_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bnn") / "runs"
    assert (
        main(["bnn", "--variants", "standard,w-asym", "--seeds", "2", "--out", str(out), *TINY])
        == 0
    )
    return out


def test_runs_records_and_posterior_files(bnn_out, capsys):
    res = load(bnn_out / "results.h5")
    assert sorted(res.keys(B.BNN.analysis)) == [
        f"bnn/{g}/seed{s}" for g in ("standard", "w-asym") for s in (0, 1)
    ]
    assert len(res.keys(C.CALIBRATION.analysis)) == 4
    assert res.incomplete().query("status == 'incomplete'").empty
    rec = res.record("bnn/w-asym/seed1")
    np.testing.assert_array_equal(rec[B.STEP.name], [10, 20, 30, 40])
    np.testing.assert_allclose(
        rec[B.ELBO.name], -(rec[B.NLL_TERM.name] + rec[B.KL_TERM.name]), rtol=1e-12
    )
    assert rec.attrs[B.FINAL_ELBO.name] == rec[B.ELBO.name][-1]
    # W-Asym has fewer coordinates under the posterior than standard
    std = res.record("bnn/standard/seed1").attrs[B.COORDINATES.name]
    assert rec.attrs[B.COORDINATES.name] < std
    cal = res.record("calibration/w-asym/seed0")
    assert cal.attrs[C.MC_SAMPLES.name] == 4 and cal.attrs[C.NUM_SAMPLES.name] == 200
    table = res.summary([C.CALIBRATION.analysis, B.BNN.analysis], full=True)
    assert {"accuracy", "NLL", "ECE", "Brier", "final ELBO"} <= set(table.columns)
    # the run folder: posterior + sidecar, no resumable state left
    seed = bnn_out / "w-asym" / "seed0"
    assert sorted(p.name for p in seed.iterdir()) == ["landscape.json", "posterior.pt"]
    path = seed / "posterior.pt"
    assert is_posterior(path)
    post = load_posterior(path)
    mean = load_model(path)  # the mean network
    for k, v in mean.state_dict().items():
        assert torch.equal(v, post.net.state_dict()[k])
    x = torch.randn(3, 64)
    with post.mean_network():
        torch.testing.assert_close(post(x), mean(x))
    assert not torch.equal(post(x), post(x))  # sampling draws fresh weights


def test_bnn_records_open_in_xarray_with_named_dimensions(bnn_out):
    xr = pytest.importorskip("xarray")
    path = bnn_out / "results.h5"
    with xr.open_dataset(path, group="bnn/standard/seed0", engine="h5netcdf") as ds:
        assert ds[B.ELBO.name].dims == (B.STEP.name,)
        np.testing.assert_array_equal(ds.coords[B.STEP.name].values, [10, 20, 30, 40])
    with xr.open_dataset(path, group="calibration/standard/seed0", engine="h5netcdf") as ds:
        assert ds[C.BIN_ACCURACY.name].dims == (C.BIN.name,) and ds.sizes[C.BIN.name] == 16


def test_rerun_reuses_and_other_settings_are_refused(bnn_out, capsys):
    before = (bnn_out / "standard" / "seed0" / "posterior.pt").stat().st_mtime_ns
    assert (
        main(["bnn", "--variants", "standard", "--seeds", "1", "--out", str(bnn_out), *TINY]) == 0
    )
    assert (bnn_out / "standard" / "seed0" / "posterior.pt").stat().st_mtime_ns == before
    capsys.readouterr()
    args = ["bnn", "--variants", "standard", "--seeds", "1", "--out", str(bnn_out), *TINY]
    args[args.index("40")] = "50"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "trained with other settings" in err and "--force" in err and "\n" not in err


def test_calibration_verb_on_posteriors_and_deterministic_networks(bnn_out, tiny_runs, tmp_path):
    out = tmp_path / "c.h5"
    args = ["calibration", str(bnn_out), str(tiny_runs), "--samples", "100", "--mc-samples", "3"]
    assert main([*args, "-o", str(out), "-q"]) == 0
    res = load(out)
    by_group = {r.attrs["group"]: r.attrs[C.MC_SAMPLES.name] for r in res.records.values()}
    assert by_group["standard"] == 3 and by_group["w-asym"] == 3  # posteriors: S draws
    assert [v for g, v in by_group.items() if g.endswith("-standard")] == [0]  # deterministic
    frame = res.frame(C.CALIBRATION.analysis)
    assert len(frame) == 8 and (frame[C.ECE.name] >= 0).all()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_input_is_one_line_and_writes_nothing(bnn_out, tmp_path, capsys):
    # a posterior whose factors do not fit its architecture
    bad = tmp_path / "bad"
    shutil.copytree(bnn_out / "standard", bad / "standard")
    path = bad / "standard" / "seed1" / "posterior.pt"
    payload = torch.load(path, weights_only=True)
    layer = next(iter(payload["posterior"]["layers"].values()))
    layer["weight_factors"] = layer["weight_factors"][:, :, :-1].clone()
    torch.save(payload, path)
    out = tmp_path / "r.h5"
    assert main(["calibration", str(bad), "--samples", "50", "-o", str(out), "-q"]) == 2
    assert "do not match the architecture" in _one_line_error(capsys)
    assert not out.exists() and not (tmp_path / ".r.h5.lock").exists()
    # S < 1
    assert main(["calibration", str(bnn_out), "--mc-samples", "0", "-o", str(out)]) == 2
    assert "--mc-samples" in _one_line_error(capsys)
    # a rank above a layer's size; a negative prior precision
    runs = tmp_path / "new"
    base = ["bnn", "--variants", "standard", "--seeds", "1", "--out", str(runs), *TINY]
    assert main([*base, "--rank", "100", "--width", "4"]) == 2
    assert "above the size of layer" in _one_line_error(capsys)
    assert main([*base, "--prior-precision", "-1"]) == 2
    assert "--prior-precision" in _one_line_error(capsys)
    assert not runs.exists()
    # labels beyond the classes of the checkpoints
    X = np.random.default_rng(0).normal(size=(30, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", X=X, y=np.arange(30) % 12)
    spec = f"npz:{tmp_path / 'd.npz'}"
    assert main(["calibration", str(bnn_out), "--data", spec, "-o", str(out), "-q"]) == 2
    assert "labels range over 0..11" in _one_line_error(capsys)
    assert not out.exists()


def _curves(folder: Path) -> dict[str, list[float]]:
    side = json.loads((folder / "landscape.json").read_text())
    c = side["bnn"]["curves"]
    return {k: c[k] for k in ("step", "elbo", "nll", "kl", "accuracy")}


def test_a_killed_run_resumes_to_the_same_curves(tmp_path):
    args = [
        "bnn",
        "--variants",
        "w-asym",
        "--seeds",
        "1",
        "--samples",
        "100",
        "--steps",
        "1200",
        "--log-every",
        "50",
        "--batch-size",
        "16",
        "--width",
        "8",
        "--depth",
        "1",
        "--test-samples",
        "2",
        "-q",
        "--no-report",
    ]
    killed = tmp_path / "killed"
    state = killed / "w-asym" / "seed0" / "state.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "analysis.cli", *args, "--out", str(killed)], cwd=ROOT, env=env
    )
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run did not save its state before the kill"
    assert not (killed / "w-asym" / "seed0" / "posterior.pt").exists(), "killed too late"
    saved = torch.load(state, weights_only=True)["trainer"]["step"]
    assert 0 < saved < 1200
    assert main([*args, "--out", str(killed)]) == 0  # resumes
    side = json.loads((killed / "w-asym" / "seed0" / "landscape.json").read_text())
    assert side["bnn"]["resumed_from"] >= saved
    whole = tmp_path / "whole"
    assert main([*args, "--out", str(whole)]) == 0
    assert _curves(killed / "w-asym" / "seed0") == _curves(whole / "w-asym" / "seed0")
    a = torch.load(killed / "w-asym" / "seed0" / "posterior.pt", weights_only=True)
    b = torch.load(whole / "w-asym" / "seed0" / "posterior.pt", weights_only=True)
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
