import copy

import numpy as np
import pytest
import torch
from torch import nn

from checkpoints import zoo
from landscape import evaluate, interpolate, mli, mli_metrics
from landscape.errors import UserError
from landscape.interpolation import barrier_max, barrier_mid


def _linear_problem(seed=0, n=40, d=5):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    a, b = nn.Linear(d, 1, bias=False).double(), nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        a.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
        b.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    return X, y, a, b


def test_quadratic_curve_barriers_match_hand_computation():
    X, y, a, b = _linear_problem()
    # L(a) = mean((r + a X delta)^2) = c0 + c1 a + c2 a^2, a convex quadratic below its chord:
    # L(a) - chord(a) = -c2 (a - a^2), so B_max = 0 (at the endpoints) and B_mid = -c2 / 4
    delta = (b.weight - a.weight).detach().reshape(-1)
    r = X @ a.weight.detach().reshape(-1) - y
    c2 = float(((X @ delta) ** 2).mean())
    c1 = float((2 * r * (X @ delta)).mean())
    c0 = float((r**2).mean())
    curve = interpolate(a, b, (X, y), num_points=25, batch_size=7)
    assert np.allclose(curve.loss, c0 + c1 * curve.alphas + c2 * curve.alphas**2, rtol=1e-10)
    assert curve.loss_barrier == pytest.approx(0.0, abs=1e-12)
    assert curve.loss_barrier_mid == pytest.approx(-c2 / 4, rel=1e-9)
    # a grid without 1/2: the midpoint is read by linear interpolation of L(1/3) and L(2/3)
    coarse = interpolate(a, b, (X, y), num_points=4)
    assert coarse.loss_barrier_mid == pytest.approx(-2 / 9 * c2, rel=1e-9)


def test_symmetric_pair_has_the_hand_computed_barrier():
    # f(x) = u v x with A = (1, 1), B = (-1, -1): both compute f(x) = x; on the line u = v = 1 - 2a,
    # so with targets y = x, L(a) = ((1 - 2a)^2 - 1)^2 mean(x^2): B_max = B_mid = mean(x^2) at a = 1/2
    def net(sign):
        m = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(sign)
        return m

    x = torch.linspace(-2, 3, 17, dtype=torch.float64).reshape(-1, 1)
    curve = interpolate(net(1.0), net(-1.0), (x, x.clone()), num_points=21)
    m2 = float((x**2).mean())
    assert np.allclose(
        curve.loss, ((1 - 2 * curve.alphas) ** 2 - 1) ** 2 * m2, rtol=1e-10, atol=1e-14
    )
    assert curve.loss_barrier == pytest.approx(m2, rel=1e-10)
    assert curve.loss_barrier_mid == pytest.approx(m2, rel=1e-10)
    assert np.isnan(curve.accuracy).all()  # regression targets have no accuracy


def test_accuracy_barriers_are_drops_below_the_chord():
    alphas = np.linspace(0, 1, 5)
    acc = np.array([0.9, 0.7, 0.5, 0.8, 1.0])
    # chord: 0.9, 0.925, 0.95, 0.975, 1.0 -> drops 0, 0.225, 0.45, 0.175, 0
    assert barrier_max(alphas, acc, higher_is_worse=False) == pytest.approx(0.45)
    assert barrier_mid(alphas, acc, higher_is_worse=False) == pytest.approx(0.45)
    assert barrier_max(alphas, np.array([1.0, 1.0, 1.0, 1.0, 1.0]), higher_is_worse=False) == 0


def test_endpoints_equal_the_models_own_evaluation():
    a, b = zoo.build("cnn", seed=0), zoo.build("cnn", seed=1)
    x, y = torch.randn(30, 1, 8, 8), torch.randint(0, 10, (30,))
    c = interpolate(a, b, (x, y), num_points=3)
    assert c.loss[0] == pytest.approx(evaluate(a, (x, y)).loss, rel=1e-6)
    assert c.loss[-1] == pytest.approx(evaluate(b, (x, y)).loss, rel=1e-6)
    assert c.accuracy[-1] == pytest.approx(evaluate(b, (x, y)).accuracy)


def _manual_bn_reset_eval(model, theta_model, xtr, xte, yte):
    """Independent re-estimation: full-batch mean / unbiased variance of every BN input, the
    forward pass normalising with the batch's own (biased) statistics as in training mode."""
    m = copy.deepcopy(theta_model).eval()
    h = xtr.flatten(1)
    for lin, norm in zip(m.lins[:-1], m.norms):
        z = lin(h)
        with torch.no_grad():
            norm.running_mean.copy_(z.mean(0))
            norm.running_var.copy_(z.var(0, unbiased=True))
        zn = (z - z.mean(0)) / torch.sqrt(
            z.var(0, unbiased=False) + norm.eps
        ) * norm.weight + norm.bias
        h = torch.nn.functional.gelu(zn)
    return evaluate(m, (xte, yte)).loss


def test_bn_reset_matches_manual_reestimation():
    a = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=0)
    b = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=1)
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(64, 6, generator=g), torch.randn(32, 6, generator=g)
    yte = torch.randint(0, 10, (32,), generator=g)
    ytr = torch.randint(0, 10, (64,), generator=g)
    curve = interpolate(
        a, b, (xte, yte), num_points=3, bn="reset", train_data=(xtr, ytr), batch_size=1000
    )
    mid = copy.deepcopy(a)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_(0.5 * pa + 0.5 * pb)
    assert curve.loss[1] == pytest.approx(_manual_bn_reset_eval(a, mid, xtr, xte, yte), rel=1e-5)
    plain = interpolate(a, b, (xte, yte), num_points=3, bn="eval")
    assert abs(plain.loss[1] - curve.loss[1]) > 1e-4  # the reset really changed the statistics


@pytest.mark.parametrize(
    "curve,expected",
    [
        (
            [3.0, 2.9, 2.8, 1.0, 0.5],
            dict(delta=0.0, monotonic=True, local_convexity=2 / 3, global_convexity=False),
        ),
        (
            [3.0, 2.0, 2.5, 1.0, 0.5],
            dict(delta=0.5, monotonic=False, local_convexity=2 / 3, global_convexity=False),
        ),
        (
            [3.0, 2.0, 1.5, 1.0, 0.5],
            dict(delta=0.0, monotonic=True, local_convexity=1.0, global_convexity=True),
        ),
        (
            [3.0, 1.0, 0.5, 0.3, 0.2],
            dict(delta=0.0, monotonic=True, local_convexity=1.0, global_convexity=True),
        ),
        (
            [3.0, 3.5, 3.6, 2.0, 0.2],
            dict(delta=0.5, monotonic=False, local_convexity=0.0, global_convexity=False),
        ),
    ],
)
def test_mli_metrics_on_constructed_curves(curve, expected):
    m = mli_metrics(np.linspace(0, 1, len(curve)), curve)
    assert m.delta == pytest.approx(expected["delta"])
    assert m.monotonic == expected["monotonic"]
    assert m.local_convexity == pytest.approx(expected["local_convexity"])
    assert m.global_convexity == expected["global_convexity"]


def test_mli_uses_true_endpoints():
    X, y, a, b = _linear_problem(1)
    res = mli(a, b, (X, y), num_points=9)
    assert res.metrics.global_convexity  # a convex quadratic lies under its chord
    assert res.curve.loss[0] == pytest.approx(evaluate(a, (X, y)).loss)


def test_mismatched_masks_are_refused():
    a = zoo.build("mlp", "w-asym", input_dim=6, width=8, mask_seed=0)
    b = zoo.build("mlp", "w-asym", input_dim=6, width=8, mask_seed=1)
    with pytest.raises(UserError, match="not one network family"):
        interpolate(a, b, (torch.randn(4, 6), torch.randint(0, 10, (4,))))


def test_data_forms_agree():
    a, b = (
        zoo.build("mlp", input_dim=6, width=8, seed=0),
        zoo.build("mlp", input_dim=6, width=8, seed=1),
    )
    x, y = torch.randn(20, 6), torch.randint(0, 10, (20,))
    ref = interpolate(a, b, (x, y), num_points=5)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    assert np.allclose(interpolate(a, b, loader, num_points=5).loss, ref.loss, rtol=1e-5)
    assert np.allclose(
        interpolate(a, b, [(x[:13], y[:13]), (x[13:], y[13:])], num_points=5).loss,
        ref.loss,
        rtol=1e-5,
    )


def test_several_splits_in_one_pass_equal_separate_curves():
    from landscape import interpolate_splits

    a = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=0)
    b = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=1)
    g = torch.Generator().manual_seed(3)
    tr = (torch.randn(40, 6, generator=g), torch.randint(0, 10, (40,), generator=g))
    te = (torch.randn(20, 6, generator=g), torch.randint(0, 10, (20,), generator=g))
    for bn in ("eval", "reset"):
        both = interpolate_splits(
            a, b, {"test": te, "train": tr}, num_points=5, bn=bn, train_data=tr
        )
        for name, d in (("test", te), ("train", tr)):
            one = interpolate(a, b, d, num_points=5, bn=bn, train_data=tr)
            assert np.array_equal(both[name].loss, one.loss) and np.array_equal(
                both[name].accuracy, one.accuracy
            )


def test_the_objective_decides_the_curve():
    """A squared-error curve on the linear problem is the hand-computed quadratic; a user loss
    of twice the default doubles every point; dict batches with BatchNorm reset match tuples."""
    from landscape import BatchSpec, as_batches

    X, y, a, b = _linear_problem(seed=3)
    wa, wb = a.weight.detach().reshape(-1), b.weight.detach().reshape(-1)
    c = mli(a, b, (X, y[:, None]), num_points=5, objective="squared_error")
    hand = [float(((X @ ((1 - t) * wa + t * wb) - y) ** 2).mean()) for t in c.curve.alphas]
    np.testing.assert_allclose(c.curve.loss, hand, rtol=1e-12)
    assert np.isnan(c.curve.accuracy).all()

    m0 = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=0)
    m1 = zoo.build("mlp", input_dim=6, width=10, norm="batch", seed=1)
    g = torch.Generator().manual_seed(4)
    xs, ys = torch.randn(30, 6, generator=g), torch.randint(0, 10, (30,), generator=g)

    def double(out, batch):
        return 2 * torch.nn.functional.cross_entropy(out, batch.targets, reduction="none")

    ref = interpolate(m0, m1, (xs, ys), num_points=4, bn="reset")
    twice = interpolate(m0, m1, (xs, ys), num_points=4, bn="reset", objective=double)
    np.testing.assert_allclose(twice.loss, 2 * ref.loss, rtol=1e-6)
    dicts = as_batches([{"features": xs, "target": ys}], spec=BatchSpec("features", "target"))
    same = interpolate(m0, m1, dicts, num_points=4, bn="reset")
    assert np.array_equal(same.loss, ref.loss) and np.array_equal(same.accuracy, ref.accuracy)
