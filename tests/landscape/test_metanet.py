"""The metanetwork core: StatNN features, what reaches the input, splits, metrics, augmentation,
and metanets that learn a known function of the weights."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats
import torch

from checkpoints import zoo
from landscape import ParamView
from landscape.errors import UserError
from landscape.metanet import (
    FlatPermuter,
    Layout,
    MetanetSettings,
    fit_metanet,
    kendall_tau,
    population_matrix,
    prepare_inputs,
    r2_score,
    split_population,
    tensor_statistics,
)


def test_statnn_features_equal_a_hand_computation():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 9)).astype(np.float32)
    layout = Layout(("a", "b"), (0, 4), (4, 9))
    F = tensor_statistics(torch.from_numpy(X), layout).numpy()
    assert F.shape == (3, 14)
    for n in range(3):
        for t, (a, b) in enumerate(((0, 4), (4, 9))):
            w = X[n, a:b].astype(np.float64)
            hand = [w.mean(), ((w - w.mean()) ** 2).mean(), w.min(), w.max()]
            hand += [np.quantile(w, q) for q in (0.25, 0.5, 0.75)]
            np.testing.assert_allclose(F[n, 7 * t : 7 * t + 7], hand, rtol=1e-6, atol=1e-6)


def test_fixed_w_asym_entries_never_reach_the_input():
    model = zoo.build("mlp", "w-asym", input_dim=20, width=8, depth=1, seed=1)
    X0, layout = population_matrix([model])
    fixed = sum(int((m.mask == 0).sum()) for m in model.lins)
    assert X0.shape[1] == sum(p.numel() for p in model.parameters()) - fixed
    changed = copy.deepcopy(model)
    with torch.no_grad():
        for lin in changed.lins:
            lin.weight[lin.mask == 0] += 5.0  # the stored copy of a fixed entry
            lin.fixed.mul_(3.0)  # the fixed values themselves
    X1, _ = population_matrix([changed])
    assert torch.equal(X0, X1)
    assert torch.equal(tensor_statistics(X0, layout), tensor_statistics(X1, layout))
    # a trainable entry does reach it
    with torch.no_grad():
        changed.lins[0].weight[changed.lins[0].mask == 1] += 1.0
    assert not torch.equal(population_matrix([changed])[0], X0)


def test_figlu_matrices_are_not_input():
    model = zoo.build("mlp", "sigma-asym", input_dim=10, width=6, depth=1)
    X, layout = population_matrix([model])
    assert X.shape[1] == sum(p.numel() for p in model.parameters())
    assert not any(".C" in n for n in layout.names)


def test_splits_are_disjoint_reproducible_and_sized():
    s = split_population(41, seed=3)
    parts = [set(s.train), set(s.validation), set(s.test)]
    assert s.sizes == [20, 10, 11] and set().union(*parts) == set(range(41))
    assert sum(map(len, parts)) == 41  # disjoint
    again = split_population(41, seed=3)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            (s.train, s.validation, s.test), (again.train, again.validation, again.test)
        )
    )
    assert not np.array_equal(s.train, split_population(41, seed=4).train)
    assert list(s.labels(41)[s.test]) == ["test"] * 11
    with pytest.raises(UserError, match="too few"):
        split_population(7)


def test_kendall_tau_equals_scipy_and_r2_its_definition():
    rng = np.random.default_rng(1)
    for n in (5, 40, 1300):  # 1300: more than one block of rows
        x = rng.integers(0, 6, n).astype(float)  # ties
        y = x + rng.integers(0, 4, n)
        assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
    y, yhat = rng.standard_normal(30), rng.standard_normal(30)
    assert r2_score(y, yhat) == pytest.approx(
        1 - ((y - yhat) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    )
    assert r2_score(y, y) == 1.0


def test_permutation_augmentation_keeps_the_function():
    model = zoo.build("cnn", "standard", in_channels=1, channels=(4, 6), seed=2)
    view = ParamView(model)
    theta = view.get()
    perm = FlatPermuter(model)
    moved = perm(theta[None].repeat(3, 1), torch.Generator().manual_seed(0))
    x = torch.randn(5, 1, 8, 8)
    for row in moved:
        other = copy.deepcopy(model)
        ParamView(other).set_(row)
        other.eval(), model.eval()
        with torch.no_grad():
            assert torch.allclose(other(x), model(x), atol=1e-5)
    assert not torch.equal(moved[0], theta) and torch.equal(
        moved[0].sort().values, theta.sort().values
    )
    with pytest.raises(UserError, match="symmetries"):
        FlatPermuter(zoo.build("cnn", "w-asym", in_channels=1, channels=(4, 6)))


def _synthetic(n=2000, seed=0):
    """Networks of one small layout (an MLP 6-4-3: 51 coordinates) whose weight scale varies per
    network (U(0.2, 3)); target: the norm of layer 0's weight (24 coordinates)."""
    g = torch.Generator().manual_seed(seed)
    model = zoo.build("mlp", "standard", input_dim=6, width=4, depth=1, num_classes=3)
    _, layout = population_matrix([model])
    scale = 0.2 + 2.8 * torch.rand(n, 1, generator=g)
    X = torch.randn(n, layout.dim, generator=g) * scale
    a, b = layout.starts[0], layout.stops[0]
    return X, X[:, a:b].norm(dim=1).double().numpy(), layout, model


@pytest.mark.parametrize("name", ["mlp", "statnn"])
def test_metanets_learn_a_known_function_of_the_weights(name):
    X, y, layout, _ = _synthetic()
    split = split_population(len(y), seed=0)
    fit = fit_metanet(
        name,
        prepare_inputs(name, X, layout, split.train),
        y,
        split,
        layout,
        MetanetSettings(epochs=45, batch_size=64, lrs=(3e-3,)),
        seed=0,
    )
    assert fit.test_r2 > 0.9, fit.test_r2  # measured: MLP 0.921, StatNN 0.995
    assert fit.kendall_tau > 0.8
    assert fit.predicted.shape == y.shape and len(fit.train_mse) == 45
    assert 1 <= fit.selected_epoch <= 45
    assert fit.validation_r2 == pytest.approx(np.nanmax(fit.validation_r2_curve))


@pytest.mark.parametrize("name", ["linear", "mlp_perm", "deepsets", "dmc"])
def test_every_metanet_trains(name):
    X, y, layout, model = _synthetic(n=24)
    split = split_population(24, seed=1)
    fit = fit_metanet(
        name,
        prepare_inputs(name, X, layout, split.train),
        y,
        split,
        layout,
        MetanetSettings(epochs=2, batch_size=8, lrs=(1e-3, 1e-4)),
        permuter=FlatPermuter(model) if name == "mlp_perm" else None,
    )
    assert np.isfinite(fit.predicted).all() and fit.selected_lr in (1e-3, 1e-4)
    again = fit_metanet(
        name, prepare_inputs(name, X, layout, split.train), y, split, layout,
        MetanetSettings(epochs=2, batch_size=8, lrs=(1e-3, 1e-4)),
        permuter=FlatPermuter(model) if name == "mlp_perm" else None,
    )  # fmt: skip
    np.testing.assert_array_equal(fit.predicted, again.predicted)  # seeded
