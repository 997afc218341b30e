"""`landscape surface` and `landscape export --format loss-landscape` end to end on tiny checkpoints."""

import sys

import h5py
import numpy as np
import pytest

from analysis.cli import main
from analysis.commands.export import read_loss_landscape_file, write_loss_landscape_file
from checkpoints import load_model, save_checkpoint, zoo
from checkpoints.sources import load_data
from landscape import evaluate, random_directions
from landscape.store import ResultsStore


def test_surface_cli_records_summary_rerun_and_export(tiny_runs, tmp_path, capsys):
    out = tmp_path / "r.h5"
    args = [
        "surface",
        str(tiny_runs),
        "--data",
        "digits",
        "--samples",
        "100",
        "--steps",
        "5",
        "--span",
        "0.5",
        "-o",
        str(out),
        "-q",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "min_loss" in text and "centre_loss" in text and "rise_at_r" in text and "w-asym" in text
    store = ResultsStore(out)
    assert store.keys("surface") == ["surface/standard/seed0", "surface/w-asym/seed0"]
    recs = [store.read(k) for k in store.keys("surface")]
    for rec in recs:
        assert rec["loss"].shape == (5, 5) and rec["done"].all() and rec.attrs["split"] == "train"
        assert rec.attrs["axes"] == ["x", "y"] and rec.dataset_attrs["loss"]["axes"] == ["x", "y"]
        assert (
            rec.attrs["directions"]["seed"] == 0
            and rec.attrs["directions"]["normalization"] == "filter"
        )
        # the centre is the trained network's own train loss on the same samples
        model = load_model(tiny_runs / rec.attrs["group"] / "seed0" / "final.pt")
        train = load_data("digits", "train", samples=100)
        assert rec["loss"][2, 2] == pytest.approx(evaluate(model, train.pair).loss, rel=1e-6)
        # the directions stored with the record are the seed-0 directions of that model
        assert np.array_equal(rec["directions"], random_directions(model, seed=0).vectors.numpy())
    mtime = out.stat().st_mtime_ns
    assert main(args) == 0  # complete records are skipped
    assert out.stat().st_mtime_ns == mtime

    exported = tmp_path / "exported"
    assert main(["export", str(out), "--format", "loss-landscape", "-o", str(exported), "-q"]) == 0
    assert "train_loss" in capsys.readouterr().out
    f = exported / "w-asym__seed0.h5"
    with h5py.File(f, "r") as h:
        assert set(h) == {"xcoordinates", "ycoordinates", "train_loss", "train_acc"}
        raw_loss, raw_acc = h["train_loss"][()], h["train_acc"][()]
    loss, acc = recs[1]["loss"], recs[1]["accuracy"]
    assert np.array_equal(raw_loss, loss.T) and np.allclose(
        raw_acc, 100 * acc.T
    )  # square grid: Z[j, i] at (x[i], y[j])
    back = read_loss_landscape_file(f)
    assert np.array_equal(back.values["train_loss"], loss) and np.allclose(
        back.values["train_acc"], acc
    )
    assert np.array_equal(back.x, recs[1]["xcoordinates"]) and len(back.to_frame()) == 25


def test_loss_landscape_orientation_on_a_non_square_grid(tmp_path):
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 2, 3)
    loss = x[:, None] * 10 + y[None, :]  # loss[i, j] at (x[i], y[j])
    path = write_loss_landscape_file(tmp_path / "s.h5", x, y, loss, np.zeros_like(loss))
    with h5py.File(path, "r") as h:
        raw = h["train_loss"][()]
    assert raw.shape == (4, 3)
    flat = raw.ravel()  # loss-landscape fills in meshgrid(x, y) order: flat index j * len(x) + i
    for i in range(4):
        for j in range(3):
            assert flat[j * 4 + i] == loss[i, j]
    gx, gy = np.meshgrid(x, y)  # what their h5_to_vtp pairs with the raveled values
    assert np.array_equal(flat, gx.ravel() * 10 + gy.ravel())
    back = read_loss_landscape_file(path)
    assert np.array_equal(back.values["train_loss"], loss) and back.y is not None
    line = write_loss_landscape_file(tmp_path / "l.h5", x, None, x**2, np.ones(4), split="test")
    r = read_loss_landscape_file(line)
    assert (
        r.y is None
        and np.array_equal(r.values["test_loss"], x**2)
        and np.allclose(r.values["test_acc"], 1.0)
    )


def test_plane_through_three_seeds(tmp_path, capsys):
    root = tmp_path / "runs"
    for s in range(3):
        save_checkpoint(
            zoo.build("mlp", "w-asym", input_dim=64, width=12, depth=1, seed=s),
            root / "w-asym" / f"seed{s}" / "final.pt",
        )
    out = tmp_path / "r.h5"
    assert (
        main(
            [
                "surface",
                str(root),
                "--data",
                "digits",
                "--samples",
                "60",
                "--steps",
                "7",
                "--plane",
                "seed0,seed1,seed2",
                "--split",
                "test",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    assert "seed0-seed1-seed2" in capsys.readouterr().out
    rec = ResultsStore(out).read("surface/w-asym/seed0-seed1-seed2")
    x = rec["xcoordinates"]
    i0, i1 = int(np.flatnonzero(x == 0.0)[0]), int(np.flatnonzero(x == 1.0)[0])
    test = load_data("digits", "test", samples=60).pair
    la, lb = (
        evaluate(load_model(root / "w-asym" / f"seed{s}" / "final.pt"), test).loss for s in (0, 1)
    )
    assert rec["loss"][i0, i0] == pytest.approx(la, rel=1e-6) and rec["loss"][
        i1, i0
    ] == pytest.approx(lb, rel=1e-5)
    assert set(rec.attrs["directions"]["landmarks"]) == {"A", "B", "C"}
    assert (
        main(
            [
                "surface",
                str(root),
                "--data",
                "digits",
                "--plane",
                "seed0,seed9,seed2",
                "-o",
                str(out),
                "-q",
            ]
        )
        == 2
    )
    assert "no seed" in capsys.readouterr().err


def test_workers_without_dask_is_a_clear_error(tiny_runs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    code = main(
        [
            "surface",
            str(tiny_runs),
            "--samples",
            "50",
            "--steps",
            "3",
            "--workers",
            "2",
            "-o",
            str(tmp_path / "r.h5"),
            "-q",
        ]
    )
    assert code == 2 and "pip install" in capsys.readouterr().err
