"""`landscape surface` and `landscape export --format loss-landscape` end to end on tiny checkpoints;
the study's persistence: every chunk written, resume after kill -9, stale records refused."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from analysis.cli import main
from analysis.commands.export import read_loss_landscape_file, write_loss_landscape_file
from analysis.surfaces import persistent_surface, surface_from_record
from checkpoints import load_model, save_checkpoint, zoo
from checkpoints.sources import load_data
from landscape import UserError, as_batches, evaluate, random_directions
from landscape.store import ResultsStore
from landscape.surfaces import surface

ROOT = Path(__file__).resolve().parents[2]


def back_rise(rec, r: float) -> float:
    """Mean of the bilinearly interpolated loss on 64 points of the circle of radius r, minus
    the origin loss (an independent reading of the stored grid with scipy)."""
    from scipy.interpolate import RegularGridInterpolator

    f = RegularGridInterpolator((rec["x"], rec["y"]), rec["loss"])
    phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    ring = f(np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)).mean()
    return float(ring - rec.attrs["origin_loss"])


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
    assert "min loss" in text and "origin loss" in text and "rise at radius" in text
    assert "w-asym" in text
    assert "centre" not in text
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
        assert rec.attrs["origin_loss"] == rec["loss"][2, 2] and rec.attrs["points_done"] == 25
        assert set(rec.datasets) == {
            "loss",
            "accuracy",
            "done",
            "x",
            "y",
            "directions",
        }
        assert {"token", "definition", "bn", "num_samples", "settings", "origin_accuracy"} <= set(
            rec.attrs
        )
        # the sharpness in the record: mean rise at the default radius (half the half-span)
        assert rec.attrs["radius"] == pytest.approx(0.25)
        assert rec.attrs["rise_at_radius"] == pytest.approx(back_rise(rec, 0.25))
        assert rec.attrs["settings"]["shortcut_note"].startswith("first layer")
        back = surface_from_record(rec)
        assert back.complete and np.array_equal(back.loss, rec["loss"]) and back.token
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
    assert np.array_equal(back.x, recs[1]["x"]) and len(back.to_frame()) == 25


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
    assert "w-asym" in capsys.readouterr().out
    rec = ResultsStore(out).read("surface/w-asym/seed0-seed1-seed2")
    x = rec["x"]
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


def tiny():
    model = zoo.build("mlp", "standard", input_dim=12, num_classes=4, width=8, depth=2, seed=0)
    g = torch.Generator().manual_seed(0)
    data = as_batches(
        (torch.randn(48, 12, generator=g), torch.randint(0, 4, (48,), generator=g)), batch_size=20
    )
    return model, data


def test_directions_of_any_name_persist_on_the_x_and_y_dimensions(tmp_path):
    """Hessian directions are called v1, v2: the record's grid dimensions stay x and y."""
    from landscape import hessian_directions, hessian_eigenvalues

    model, data = tiny()
    eig = hessian_eigenvalues(model, data, k=2, return_eigenvectors=True)
    dirs = hessian_directions(model, eig.eigenvectors)
    s = persistent_surface(
        tmp_path / "r.h5", "surface/g/seed0", model, data, dirs, steps=3, progress=False
    )
    rec = ResultsStore(tmp_path / "r.h5").read("surface/g/seed0")
    assert rec.attrs["axes"] == list(s.axes) and rec.dataset_attrs["loss"]["axes"] == ["x", "y"]
    back = surface_from_record(rec)
    assert back.axes == s.axes and np.array_equal(back.loss, s.loss)
    assert all(np.array_equal(a, b) for a, b in zip(back.coordinates, s.coordinates))


def test_resume_refuses_other_settings_and_restarts_when_asked(tmp_path):
    model, data = tiny()
    out = tmp_path / "r.h5"
    key = "surface/g/seed0"
    writes = []
    s = persistent_surface(
        out,
        key,
        model,
        data,
        random_directions(model, seed=0),
        steps=3,
        chunk_size=2,
        progress=False,
        on_chunk=lambda part, idx: writes.append(ResultsStore(out).read(key)),
    )
    # every chunk but the last is on disk when on_chunk runs; the last one lands complete
    assert [int(r["done"].sum()) for r in writes[:-1]] == [2, 4, 6, 8]
    assert not any(r.complete for r in writes) and "directions" not in writes[0].datasets
    assert np.array_equal(
        s.loss, surface(model, data, random_directions(model, seed=0), steps=3, progress=False).loss
    )
    rec = ResultsStore(out).read(key)
    assert rec.complete and np.array_equal(rec["loss"], s.loss)
    mtime = out.stat().st_mtime_ns
    again = persistent_surface(
        out, key, model, data, random_directions(model, seed=0), steps=3, progress=False
    )
    assert again.evaluated == 0 and np.array_equal(again.loss, s.loss)
    assert out.stat().st_mtime_ns == mtime  # nothing new: nothing written
    with pytest.raises(UserError, match="another model, directions"):
        persistent_surface(
            out, key, model, data, random_directions(model, seed=1), steps=3, progress=False
        )
    fresh = persistent_surface(
        out,
        key,
        model,
        data,
        random_directions(model, seed=1),
        steps=3,
        progress=False,
        resume=False,
    )
    assert fresh.evaluated == 9
    assert ResultsStore(out).read(key).attrs["token"] == fresh.token != s.token


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from checkpoints import zoo
    from landscape import as_batches, random_directions
    from analysis.surfaces import persistent_surface

    def setup():
        m = zoo.build("mlp", "w-asym", input_dim=12, num_classes=4, width=8, depth=2, seed=0)
        g = torch.Generator().manual_seed(0)
        data = as_batches((torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g)), batch_size=20)
        return m, data, random_directions(m, seed=0)

    if __name__ == "__main__":
        m, data, d = setup()
        persistent_surface(sys.argv[1], "surface/g/seed0", m, data, d, steps=7, chunk_size=3,
                           progress=False, on_chunk=lambda part, idx: time.sleep(0.25))
""")


def test_kill_and_resume_gives_identical_grid(tmp_path):
    script = tmp_path / "grid.py"
    script.write_text(SCRIPT)
    out = tmp_path / "killed.h5"
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"
    )  # the same thread count as this process
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    done_before, deadline = 0, time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.exists():
                try:
                    done_before = ResultsStore(out).read("surface/g/seed0").attrs["points_done"]
                except (KeyError, UserError, OSError):
                    done_before = 0
                if done_before >= 9:
                    break
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    rec = ResultsStore(out).read("surface/g/seed0")  # the file is readable after kill -9
    done_before = int(rec["done"].sum())
    assert 9 <= done_before < 49 and not rec.complete

    ns: dict = {}
    exec(SCRIPT, ns)
    m, data, d = ns["setup"]()
    seen = []
    resumed = persistent_surface(
        out,
        "surface/g/seed0",
        m,
        data,
        d,
        steps=7,
        chunk_size=3,
        progress=False,
        on_chunk=lambda part, idx: seen.extend(idx.tolist()),
    )
    assert resumed.evaluated == 49 - done_before
    assert sorted(seen) == np.flatnonzero(~rec["done"].astype(bool).ravel()).tolist()
    whole = surface(m, data, d, steps=7, chunk_size=3, progress=False)
    assert np.array_equal(resumed.loss, whole.loss) and np.array_equal(
        resumed.accuracy, whole.accuracy
    )
    assert resumed.origin_loss == whole.origin_loss
    rec = ResultsStore(out).read("surface/g/seed0")
    assert rec.complete and rec["done"].all() and np.array_equal(rec["loss"], whole.loss)
    assert rec["directions"].shape == (2, d.numel)


def _trajectory_run(root: Path, steps: int = 5) -> Path:
    """``ROOT/standard/seed0/{init, step<k>, final}.pt``: a small MLP trained by plain full-batch
    SGD on digits, a checkpoint after every 3 steps (what ``train --save-every 3`` keeps)."""
    import torch.nn.functional as F

    X, y = load_data("digits", "train", samples=200).pair
    model = zoo.build("mlp", "standard", input_dim=64, num_classes=10, width=16, depth=2, seed=0)
    d = root / "standard" / "seed0"
    d.mkdir(parents=True)
    save_checkpoint(model, d / "init.pt")
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for k in range(1, steps + 1):
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(X), y).backward()
            opt.step()
        save_checkpoint(model, d / ("final.pt" if k == steps else f"step{3 * k}.pt"))
    return d


def test_surface_on_the_pca_plane_of_the_training_trajectory(tmp_path, capsys):
    from analysis import load
    from checkpoints.discover import discover, trajectory
    from landscape.trajectory import pca_directions
    from reports.figures import surface_figures

    d = _trajectory_run(tmp_path / "runs")
    run = discover(tmp_path / "runs")["standard"][0]
    files = trajectory(run)
    assert [p.name for p in files] == [
        "init.pt", "step3.pt", "step6.pt", "step9.pt", "step12.pt", "final.pt"
    ]  # fmt: skip
    out = tmp_path / "r.h5"
    argv = ["surface", str(tmp_path / "runs"), "--samples", "100", "--steps", "7"]
    assert main([*argv, "--directions", "pca", "-o", str(out), "-q"]) == 0
    assert "standard" in capsys.readouterr().out
    rec = ResultsStore(out).read("surface/standard/seed0-pca")
    final = load_model(d / "final.pt")
    want = pca_directions(final, [load_model(p) for p in files], labels=[p.stem for p in files])
    assert np.array_equal(rec["directions"], want.vectors.numpy())
    np.testing.assert_allclose(rec["explained_variance"], want.explained_variance)
    assert 0.5 < float(np.sum(rec["explained_variance"])) <= 1.0
    np.testing.assert_allclose(rec["trajectory"], want.trajectory)
    assert [str(c) for c in rec["checkpoint"]] == [
        "init",
        "step3",
        "step6",
        "step9",
        "step12",
        "final",
    ]
    path = np.asarray(rec["trajectory"])
    assert np.allclose(path[-1], 0.0, atol=1e-6)  # the final model is the origin
    for k, axis in enumerate(("x", "y")):  # the grid covers the path and holds the origin
        c = np.asarray(rec[axis])
        assert c.min() <= path[:, k].min() and c.max() >= path[:, k].max() and 0.0 in c
    data = as_batches(load_data("digits", "train", samples=100).pair)
    assert rec.attrs["origin_loss"] == evaluate(final, data).loss
    s = rec.attrs["settings"]
    assert s["directions"] == "pca" and len(s["trajectory"]) == 6 and s["loss"] == "auto"
    # the report draws the trajectory as a line with markers on the contour
    figs = {f.name: f for f in surface_figures(load(out), {"standard": "#000000"})}
    traces = figs["surfaces"].panels[0].traces
    assert [t.kind for t in traces] == ["contour", "markers"]
    assert np.array_equal(traces[1].x, path[:, 0]) and np.array_equal(traces[1].y, path[:, 1])
    assert "PC1" in figs["surfaces"].panels[0].xlabel
    html = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(html)]) == 0
    assert "training trajectory (standard)" in html.read_text()


def test_pca_without_a_trajectory_is_one_line(tiny_runs, tmp_path, capsys):
    out = tmp_path / "r.h5"
    argv = ["surface", str(tiny_runs), "--samples", "40", "--steps", "3", "--directions", "pca"]
    assert main([*argv, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--save-every" in err and "init.pt, final.pt" in err
