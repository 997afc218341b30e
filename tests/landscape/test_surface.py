"""Surfaces: centre = model's loss, points = independent evaluations, shortcut = plain, planes,
chunks seen once, resuming computes only the missing points, the core writes no files."""

import ast
import copy
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import landscape.surfaces as surface_module
from checkpoints import zoo
from landscape import UserError, as_batches, evaluate, reset_batchnorm
from landscape.directions import plane_directions, random_directions
from landscape.grid import GridTask, batches_fingerprint
from landscape.params import ParamView
from landscape.surfaces import Surface, landmark_grid, surface, surface_token

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
        assert s.origin_loss == own.loss and s.origin_accuracy == own.accuracy
        assert s.complete and s.done.all() and s.evaluated == s.loss.size


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
    assert abs(s.sharpness(0.5) - 0.25) < 0.01 and s.value_at(0.0, 0.0) == 0.0
    assert s.min_loss == 0.0 and s.complete and s.done.shape == (21, 21)
    frame = s.to_frame()
    assert list(frame.columns) == ["x", "y", "loss", "accuracy"] and len(frame) == 441
    row = frame.iloc[3 * 21 + 5]
    assert row.loss == s.loss[3, 5] and row.x == x[3] and row.y == x[5]
    line = Surface((x,), x**2, np.zeros_like(x), axes=("x",))
    assert abs(line.sharpness(0.3) - 0.09) < 1e-12


def _indices_seen(calls):
    return np.sort(np.concatenate([idx for _, idx in calls])) if calls else np.array([], int)


def test_on_chunk_sees_every_point_exactly_once():
    model = mlp("w-asym")
    data = data_for(model)
    d = random_directions(model, seed=5)
    calls = []
    s = surface(
        model,
        data,
        d,
        steps=(5, 4),
        chunk_size=3,
        progress=False,
        on_chunk=lambda part, idx: calls.append((part, np.array(idx))),
    )
    assert len(calls) == 7  # ceil(20 / 3)
    assert np.array_equal(_indices_seen(calls), np.arange(20))
    done_before = np.zeros((5, 4), dtype=bool)
    for part, idx in calls:  # each snapshot: the earlier points plus exactly this chunk
        assert part.done.sum() == done_before.sum() + len(idx) and part.evaluated == part.done.sum()
        done_before.flat[idx] = True
        assert np.array_equal(part.done, done_before)
        assert np.array_equal(part.loss[part.done], s.loss[part.done])
        assert np.isnan(part.loss[~part.done]).all()
        assert part.token == s.token
    assert calls[-1][0].complete and not calls[0][0].complete
    # the chunk's values are the points' own losses
    part, idx = calls[2]
    i, j = np.unravel_index(idx[0], (5, 4))
    ref = evaluate(moved(model, d, (s.coordinates[0][i], s.coordinates[1][j])), data)
    np.testing.assert_allclose(part.loss.flat[idx[0]], ref.loss, rtol=1e-5)


def test_resume_from_partial_initial_computes_only_missing_points(monkeypatch):
    model = cnn("w-asym")
    data = data_for(model)
    d = random_directions(model, seed=6)
    calls = []
    whole = surface(
        model,
        data,
        d,
        steps=5,
        chunk_size=4,
        progress=False,
        on_chunk=lambda part, idx: calls.append((part, idx)),
    )
    partial = calls[2][0]  # as if killed after three chunks
    assert partial.done.sum() == 12 and not partial.complete
    # the origin is known from the partial grid: no extra pass over the data before the grid
    origin_passes = []
    real = surface_module.evaluate
    monkeypatch.setattr(
        surface_module, "evaluate", lambda *a, **k: origin_passes.append(1) or real(*a, **k)
    )
    again = []
    resumed = surface(
        model,
        data,
        d,
        steps=5,
        chunk_size=4,
        initial=partial,
        progress=False,
        on_chunk=lambda part, idx: again.append((part, idx)),
    )
    assert not origin_passes
    assert resumed.evaluated == 25 - 12
    assert np.array_equal(_indices_seen(again), np.flatnonzero(~partial.done.ravel()))
    assert np.array_equal(resumed.loss, whole.loss) and np.array_equal(
        resumed.accuracy, whole.accuracy
    )
    assert resumed.origin_loss == whole.origin_loss and resumed.complete
    # a complete grid: nothing to compute, no pass over the data at all
    monkeypatch.setattr(surface_module, "GridTask", None)  # would fail if a task were made
    done = surface(model, data, d, steps=5, initial=whole, progress=False)
    assert done.evaluated == 0 and np.array_equal(done.loss, whole.loss) and not origin_passes
    assert done.settings["shortcut_note"] == "no points to compute"


def test_initial_from_another_grid_is_refused():
    model = mlp()
    data = data_for(model)
    s = surface(model, data, random_directions(model, seed=0), steps=3, progress=False)
    assert s.token == surface_token(model, data, random_directions(model, seed=0), steps=3)
    with pytest.raises(UserError, match="another model, directions"):
        surface(model, data, random_directions(model, seed=1), steps=3, initial=s, progress=False)
    with pytest.raises(UserError, match="shape"):
        surface(model, data, random_directions(model, seed=0), steps=4, initial=s, progress=False)
    other = Surface(s.coordinates[::-1], s.loss, s.accuracy, done=s.done)  # no token: coords
    with pytest.raises(UserError, match="coordinates"):
        surface(
            model,
            data,
            random_directions(model, seed=0),
            coordinates=([0.0, 0.5, 1.0], [-1.0, 0.0, 1.0]),
            initial=other,
            progress=False,
        )


def test_token_depends_on_data_and_is_cached_per_unchanged_batches():
    model = mlp()
    data = data_for(model)
    d = random_directions(model, seed=0)
    t = surface_token(model, data, d, steps=3)
    assert t == surface_token(model, data, d, steps=3)
    assert t != surface_token(model, data, d, steps=5)
    assert t != surface_token(model, data, d, steps=3, bn="reset")
    fp = batches_fingerprint(data)
    data.batches[0][0][0, 0] += 1.0  # in place: the cached fingerprint must not be reused
    assert batches_fingerprint(data) != fp and surface_token(model, data, d, steps=3) != t


def test_the_loss_is_part_of_the_token_and_of_every_point(tmp_path, monkeypatch):
    """Another loss is another grid (its token differs; ``auto`` keeps the token grids always
    had); a ``module:callable`` loss travels by name to a task's process and gives the points
    of an independent evaluation."""
    model = mlp()
    data = data_for(model)
    d = random_directions(model, seed=4)
    t = surface_token(model, data, d, steps=3)
    assert surface_token(model, data, d, steps=3, objective="auto") == t
    assert surface_token(model, data, d, steps=3, objective="classification") != t
    (tmp_path / "grid_losses.py").write_text(
        "def double_ce(outputs, batch):\n"
        "    import torch.nn.functional as F\n"
        "    return 2 * F.cross_entropy(outputs, batch.targets, reduction='none')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    s = surface(
        model, data, d, steps=3, span=0.5, objective="grid_losses:double_ce", progress=False
    )
    assert s.settings["loss"] == "grid_losses:double_ce" and np.isnan(s.accuracy).all()
    for i, j in ((0, 0), (2, 1)):
        m = moved(model, d, (s.coordinates[0][i], s.coordinates[1][j]))
        assert s.loss[i, j] == pytest.approx(2 * evaluate(m, data).loss, rel=1e-6)
    g = surface_module._grid(
        model, data, d, 3, 0.5, None, "eval", None, None, None, objective="grid_losses:double_ce"
    )
    shipped = pickle.loads(pickle.dumps(GridTask(g.spec)))
    assert shipped.spec.objective == "grid_losses:double_ce"
    assert np.array_equal(shipped(np.arange(9)).loss, s.loss.ravel())
    shipped.close()


def test_any_map_executor_gives_the_same_grid():
    model = cnn()
    data = data_for(model)
    d = random_directions(model, seed=7)
    ref = surface(model, data, d, steps=4, progress=False)
    with ThreadPoolExecutor(2) as pool:
        s = surface(model, data, d, steps=4, chunk_size=3, executor=pool, progress=False)
    assert np.array_equal(s.loss, ref.loss) and np.array_equal(s.accuracy, ref.accuracy)
    assert s.settings["shortcut_note"] == ref.settings["shortcut_note"]


def test_grid_task_pickles_as_a_cpu_copy_and_evaluates_the_same():
    model = mlp("w-asym")
    data = data_for(model)
    d = random_directions(model, seed=8)
    s = surface(model, data, d, steps=3, progress=False)
    g = surface_module._grid(model, data, d, 3, (-1.0, 1.0), None, "eval", None, None, None)
    shipped = pickle.loads(pickle.dumps(GridTask(g.spec)))  # what a worker process receives
    assert shipped.spec.token == s.token and shipped.spec.model is not model
    r = shipped(np.array([0, 4, 8]))
    assert np.array_equal(r.indices, [0, 4, 8])
    assert np.array_equal(r.loss, s.loss.ravel()[[0, 4, 8]])
    shipped.close()
    assert shipped(np.array([4])).loss[0] == s.loss[1, 1]  # usable again after close
    shipped.close()


FORBIDDEN = {"landscape.store", "h5py", "analysis", "reports", "checkpoints", "distributed", "dask"}


@pytest.mark.parametrize("module", ["surfaces", "grid", "first_layer"])
def test_surface_numerics_import_no_store_and_no_executor(module):
    """The numerics write no files and do not know which executor runs them."""
    tree = ast.parse((ROOT / "landscape" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ("landscape." if node.level else "") + (node.module or "")
            imported.add(base.rstrip("."))
            imported |= {f"{base}.{a.name}".replace("..", ".") for a in node.names}
    bad = {
        m
        for m in imported
        if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
        or m in ("landscape.distributed",)
    }
    assert not bad, f"landscape/{module}.py imports {bad}"


def test_the_surface_function_is_not_shadowed_by_its_module():
    import subprocess
    import sys

    code = "import landscape.surfaces, landscape; print(callable(landscape.surface))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
