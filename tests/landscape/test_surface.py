"""Surfaces: centre = model's loss, points = independent evaluations, shortcut = plain, planes, resume after kill -9."""

import copy
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
from torch import nn

from checkpoints import zoo
from landscape import UserError, as_batches, evaluate, reset_batchnorm
from landscape.directions import plane_directions, random_directions
from landscape.params import ParamView
from landscape.store import ResultsStore
from landscape.surface import Surface, landmark_grid, surface

ROOT = Path(__file__).resolve().parents[2]


def mlp(variant="standard", seed=0):
    return zoo.build("mlp", variant, input_dim=12, num_classes=4, width=8, depth=2, seed=seed)


def cnn(variant="standard", seed=0):
    return zoo.build("cnn", variant, in_channels=1, num_classes=4, channels=(4, 6), seed=seed)


def data_for(model, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 12) if model.config["arch"] == "mlp" else (n, 1, 6, 6)
    return as_batches(
        (torch.randn(*shape, generator=g), torch.randint(0, 4, (n,), generator=g)), batch_size=20
    )


MODELS = {
    "mlp": lambda: mlp(),
    "mlp-wasym": lambda: mlp("w-asym"),
    "cnn-bn": lambda: cnn(),
    "cnn-wasym": lambda: cnn("w-asym"),
}


def moved(model, d, coeffs):
    """Independent evaluation point: a deep copy with theta0 + sum_k c_k d_k written in."""
    m = copy.deepcopy(model)
    v = ParamView(m)
    theta = v.get().double()
    for c, vec in zip(coeffs, d.vectors):
        theta = theta + c * vec.double()
    v.set_(theta.float())
    return m


@pytest.mark.parametrize("name", list(MODELS))
def test_centre_equals_model_loss(name):
    model = MODELS[name]()
    data = data_for(model)
    own = evaluate(model, data)
    for count, steps in ((2, 5), (1, 7)):
        s = surface(
            model,
            data,
            random_directions(model, count=count, seed=1),
            steps=steps,
            span=0.5,
            progress=False,
        )
        centre = tuple(len(c) // 2 for c in s.coordinates)
        assert all(c[len(c) // 2] == 0.0 for c in s.coordinates)
        assert s.loss[centre] == own.loss and s.accuracy[centre] == own.accuracy
        assert s.origin_loss == own.loss and s.center_loss == own.loss


@pytest.mark.parametrize("name", list(MODELS))
def test_grid_point_equals_independent_evaluation(name):
    model = MODELS[name]()
    data = data_for(model)
    d = random_directions(model, seed=2)
    s = surface(model, data, d, steps=(5, 4), span=((-1, 1), (-0.3, 0.6)), progress=False)
    assert s.loss.shape == (5, 4) and s.axes == ("x", "y")
    rng = np.random.default_rng(0)
    for _ in range(2):
        i, j = int(rng.integers(5)), int(rng.integers(4))
        x, y = s.coordinates[0][i], s.coordinates[1][j]
        ref = evaluate(moved(model, d, (x, y)), data)
        np.testing.assert_allclose(s.loss[i, j], ref.loss, rtol=1e-5)
        assert abs(s.accuracy[i, j] - ref.accuracy) <= 1 / 48


@pytest.mark.parametrize("name", list(MODELS))
def test_first_layer_shortcut_equals_plain(name):
    model = MODELS[name]()
    data = data_for(model)
    d = random_directions(model, seed=3)
    fast = surface(model, data, d, steps=3, span=1.0, progress=False)
    plain = surface(model, data, d, steps=3, span=1.0, progress=False, shortcut=False)
    assert fast.settings["shortcut_note"].startswith("first layer")
    assert plain.settings["shortcut_note"].startswith("off")
    np.testing.assert_allclose(fast.loss, plain.loss, rtol=1e-5)
    assert np.abs(fast.accuracy - plain.accuracy).max() <= 1 / 48


class Scaled(nn.Module):
    """A trainable scale before the first Linear: its input moves with the parameters."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.body = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4))

    def forward(self, x):
        return self.body(x * self.scale)


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.LayerNorm(12), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4)), Scaled()],
)
def test_shortcut_falls_back_where_it_does_not_apply(model):
    torch.manual_seed(0)
    data = as_batches((torch.randn(30, 12), torch.randint(0, 4, (30,))))
    d = random_directions(model, seed=0, ignore=())
    s = surface(model, data, d, steps=3, progress=False)
    assert s.settings["shortcut_note"].startswith("off")
    ref = evaluate(moved(model, d, (1.0, -1.0)), data)
    np.testing.assert_allclose(s.loss[2, 0], ref.loss, rtol=1e-6)


def test_batchnorm_reset_at_every_point():
    model = cnn()
    data, train = data_for(model, seed=0), data_for(model, n=40, seed=1)
    d = random_directions(model, seed=4)
    s = surface(model, data, d, steps=3, span=0.5, bn="reset", train_data=train, progress=False)
    ref_model = moved(model, d, (0.5, -0.5))
    reset_batchnorm(ref_model, train)
    np.testing.assert_allclose(s.loss[2, 0], evaluate(ref_model, data).loss, rtol=1e-5)
    assert not np.isclose(
        s.loss[2, 0],
        surface(model, data, d, steps=3, span=0.5, progress=False).loss[2, 0],
        rtol=1e-4,
    )


def test_plane_passes_through_a_b_c():
    a, b, c = mlp(seed=0), mlp(seed=1), mlp(seed=2)
    data = data_for(a)
    la, lb, lc = (evaluate(m, data).loss for m in (a, b, c))
    oblique = plane_directions(a, b, c, orthogonal=False)
    s = surface(a, data, oblique, coordinates=([0.0, 1.0], [0.0, 1.0]), progress=False)
    assert s.loss[0, 0] == la
    np.testing.assert_allclose([s.loss[1, 0], s.loss[0, 1]], [lb, lc], rtol=1e-5)
    ortho = plane_directions(a, b, c)
    grid = landmark_grid(ortho, steps=9)
    s = surface(a, data, ortho, coordinates=grid, progress=False)
    i0, i1 = int(np.flatnonzero(grid[0] == 0.0)[0]), int(np.flatnonzero(grid[0] == 1.0)[0])
    assert s.loss[i0, i0] == la
    np.testing.assert_allclose(s.loss[i1, i0], lb, rtol=1e-5)
    cx, cy = dict(ortho.landmarks)["C"]
    assert grid[0][0] < cx < grid[0][-1] and grid[1][0] < cy < grid[1][-1]
    at_c = surface(a, data, ortho, coordinates=([cx], [cy]), progress=False)
    np.testing.assert_allclose(at_c.loss[0, 0], lc, rtol=1e-5)


def test_surface_value_helpers():
    x = np.linspace(-1, 1, 21)
    gx, gy = np.meshgrid(x, x, indexing="ij")
    s = Surface((x, x), gx**2 + gy**2, np.zeros_like(gx))
    assert abs(s.sharpness(0.5) - 0.25) < 0.01 and s.center_loss == 0.0 and s.min_loss == 0.0
    frame = s.to_frame()
    assert list(frame.columns) == ["x", "y", "loss", "accuracy"] and len(frame) == 441
    row = frame.iloc[3 * 21 + 5]
    assert row.loss == s.loss[3, 5] and row.x == x[3] and row.y == x[5]
    line = Surface((x,), x**2, np.zeros_like(x), axes=("x",))
    assert abs(line.sharpness(0.3) - 0.09) < 1e-12


def test_resume_refuses_other_settings_and_restarts_when_asked(tmp_path):
    model = mlp()
    data = data_for(model)
    out = tmp_path / "r.h5"
    s = surface(
        model,
        data,
        random_directions(model, seed=0),
        steps=3,
        store=out,
        key="surface/g/seed0",
        progress=False,
    )
    again = surface(
        model,
        data,
        random_directions(model, seed=0),
        steps=3,
        store=out,
        key="surface/g/seed0",
        progress=False,
    )
    assert again.evaluated == 0 and np.array_equal(again.loss, s.loss)
    with pytest.raises(UserError, match="another model, directions"):
        surface(
            model,
            data,
            random_directions(model, seed=1),
            steps=3,
            store=out,
            key="surface/g/seed0",
            progress=False,
        )
    fresh = surface(
        model,
        data,
        random_directions(model, seed=1),
        steps=3,
        store=out,
        key="surface/g/seed0",
        progress=False,
        resume=False,
    )
    assert fresh.evaluated == 9


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    from checkpoints import zoo
    from landscape import as_batches, random_directions, surface

    def setup():
        m = zoo.build("mlp", "w-asym", input_dim=12, num_classes=4, width=8, depth=2, seed=0)
        g = torch.Generator().manual_seed(0)
        data = as_batches((torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g)), batch_size=20)
        return m, data, random_directions(m, seed=0)

    if __name__ == "__main__":
        m, data, d = setup()
        surface(m, data, d, steps=7, chunk_size=3, store=sys.argv[1], key="surface/g/seed0", progress=False,
                callback=lambda done, total: time.sleep(0.25))
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
    resumed = surface(
        m, data, d, steps=7, chunk_size=3, store=out, key="surface/g/seed0", progress=False
    )
    assert resumed.evaluated == 49 - done_before
    whole = surface(
        m,
        data,
        d,
        steps=7,
        chunk_size=3,
        store=tmp_path / "whole.h5",
        key="surface/g/seed0",
        progress=False,
    )
    assert np.array_equal(resumed.loss, whole.loss) and np.array_equal(
        resumed.accuracy, whole.accuracy
    )
    rec = ResultsStore(out).read("surface/g/seed0")
    assert rec.complete and rec["done"].all() and np.array_equal(rec["loss"], whole.loss)
    assert rec["directions"].shape == (2, d.numel)
