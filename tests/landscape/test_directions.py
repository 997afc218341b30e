"""Directions: normalisation per definition on hand-made tensors, masks, planes, user tensors."""

import pytest
import torch
from torch import nn

from checkpoints.asym import AsymLinear
from landscape import UserError
from landscape.directions import (
    directions_from,
    hessian_directions,
    line_direction,
    plane_directions,
    random_directions,
)
from landscape.params import ParamView


def hand_model() -> nn.Module:
    """Linear(3->2), LayerNorm(2), Linear(2->2) with chosen weights."""
    m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2), nn.Linear(2, 2))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[3.0, 4.0, 0.0], [1.0, 2.0, 2.0]]))  # row norms 5 and 3
        m[0].bias.copy_(torch.tensor([0.5, -1.0]))
        m[1].weight.copy_(torch.tensor([2.0, 2.0]))
        m[2].weight.copy_(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        m[2].bias.copy_(torch.tensor([1.0, 1.0]))
    return m


def draws(m: nn.Module, seed: int) -> dict:
    """The Gaussian draws random_directions promises: one full tensor per parameter, in order."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) for n, p in m.named_parameters()}


def test_filter_normalisation_matches_definition():
    m = hand_model()
    d = random_directions(m, count=1, seed=3)
    got = d.unflatten(m, 0)
    z = draws(m, 3)
    for name in ("0.weight", "2.weight"):
        w = dict(m.named_parameters())[name].detach()
        expect = torch.stack(
            [z[name][i] * w[i].norm() / (z[name][i].norm() + 1e-10) for i in range(w.shape[0])]
        )
        torch.testing.assert_close(got[name], expect)
        torch.testing.assert_close(got[name].norm(dim=1), w.norm(dim=1))
    # biases and norm parameters are zero by default
    for name in ("0.bias", "1.weight", "1.bias", "2.bias"):
        assert torch.count_nonzero(got[name]) == 0


def test_layer_weight_none_normalisations():
    m = hand_model()
    z = draws(m, 5)
    params = dict(m.named_parameters())
    layer = random_directions(m, count=1, seed=5, normalization="layer", ignore=()).unflatten(m)
    weight = random_directions(m, count=1, seed=5, normalization="weight", ignore=()).unflatten(m)
    none = random_directions(m, count=1, seed=5, normalization="none", ignore=()).unflatten(m)
    for name, p in params.items():
        w = p.detach()
        torch.testing.assert_close(layer[name], z[name] * w.norm() / (z[name].norm() + 1e-10))
        torch.testing.assert_close(weight[name], z[name] * w)
        torch.testing.assert_close(none[name], z[name])
    # with ignore=() a 1-D tensor is one filter: scaled to the parameter's norm
    filt = random_directions(m, count=1, seed=5, ignore=()).unflatten(m)
    torch.testing.assert_close(filt["0.bias"].norm(), params["0.bias"].detach().norm())
    # glob patterns in ignore
    only = random_directions(m, count=1, seed=5, ignore=("2.*",)).unflatten(m)
    assert torch.count_nonzero(only["2.weight"]) == 0 and torch.count_nonzero(only["0.bias"]) > 0


def test_wasym_direction_zero_on_fixed_entries_and_normalised_on_effective_weight():
    lin = AsymLinear(6, 3, n_fix=2, kappa=2.0, mask_seed=1, layer_index=0)
    m = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2))
    d = random_directions(m, count=2, seed=0)
    assert d.numel == ParamView(m).numel == 6 * 3 - 3 * 2 + 3 + 3 * 2 + 2
    for k in range(2):
        full = d.unflatten(m, k)["0.weight"]
        assert torch.count_nonzero(full[lin.mask == 0]) == 0
        eff = lin.weight.detach() * lin.mask + lin.fixed
        # the filter is scaled to the norm of the effective row, fixed values included
        torch.testing.assert_close(full.norm(dim=1), eff.norm(dim=1))
        assert not torch.allclose(full.norm(dim=1), (lin.weight.detach() * lin.mask).norm(dim=1))


def test_same_seed_same_draws_across_architecture_variants():
    std = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 2))
    asym = nn.Sequential(
        AsymLinear(6, 3, n_fix=2, kappa=1.0, mask_seed=0, layer_index=0), nn.ReLU(), nn.Linear(3, 2)
    )
    a = random_directions(std, seed=7, normalization="none", ignore=()).unflatten(std, 1)
    b = random_directions(asym, seed=7, normalization="none", ignore=()).unflatten(asym, 1)
    keep = asym[0].mask != 0
    torch.testing.assert_close(a["0.weight"][keep], b["0.weight"][keep])
    torch.testing.assert_close(a["2.weight"], b["2.weight"])
    assert not torch.equal(
        random_directions(std, seed=8).vectors, random_directions(std, seed=7).vectors
    )
    assert torch.equal(
        random_directions(std, seed=7).vectors, random_directions(std, seed=7).vectors
    )


def _shifted(m: nn.Module, seed: int) -> nn.Module:
    import copy

    out = copy.deepcopy(m)
    v = ParamView(out)
    v.set_(v.get() + torch.randn(v.numel, generator=torch.Generator().manual_seed(seed)))
    return out


def test_plane_and_line_coordinates():
    a = hand_model()
    b, c = _shifted(a, 1), _shifted(a, 2)
    ta, tb, tc = (ParamView(x).get().double() for x in (a, b, c))
    for orthogonal in (True, False):
        p = plane_directions(a, b, c, orthogonal=orthogonal)
        marks = dict(p.landmarks)
        assert marks["A"] == (0.0, 0.0) and marks["B"] == (1.0, 0.0)
        d = p.vectors.double()
        for name, target in (("B", tb), ("C", tc)):
            x, y = marks[name]
            torch.testing.assert_close(ta + x * d[0] + y * d[1], target, rtol=0, atol=1e-5)
        if orthogonal:
            assert abs(float(d[0] @ d[1])) < 1e-5 * float(d[0] @ d[0])
            torch.testing.assert_close(d[0].norm(), d[1].norm())
        else:
            assert marks["C"] == (0.0, 1.0)
    line = line_direction(a, b)
    torch.testing.assert_close(ta + line.vectors[0].double(), tb, rtol=0, atol=1e-5)
    with pytest.raises(UserError, match="one line"):
        mid = _shifted(a, 1)
        ParamView(mid).set_((ta + 2 * (tb - ta)).float())
        plane_directions(a, b, mid)


def test_user_and_hessian_directions():
    m = hand_model()
    view = ParamView(m)
    flat = torch.arange(view.numel, dtype=torch.float32)
    d = directions_from(m, [flat, 2 * flat])
    assert d.count == 2 and torch.equal(d.vectors[1], 2 * flat)
    # parameter-shaped dicts: missing parameters are zero
    h = hessian_directions(m, [{"0.weight": torch.ones(2, 3)}, {"2.weight": torch.ones(2, 2)}])
    assert h.names == ("v1", "v2") and h.source == "hessian"
    assert float(h.vectors[0].sum()) == 6.0 and float(h.vectors[1].sum()) == 4.0

    class Result:
        eigenvectors = torch.stack([flat, flat, flat]).T  # (n, k): columns are vectors

    assert torch.equal(hessian_directions(m, Result(), count=1).vectors[0], flat)
    with pytest.raises(UserError, match="trainable coordinates"):
        directions_from(m, [torch.ones(3)])
    other = nn.Sequential(nn.Linear(3, 4))
    with pytest.raises(UserError, match="same architecture"):
        random_directions(m).check(ParamView(other))


def test_hessian_eigenvectors_from_the_hessian_capability():
    from landscape import hessian_eigenvalues

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    data = (torch.randn(40, 4), torch.randint(0, 3, (40,)))
    res = hessian_eigenvalues(m, data, k=2, return_eigenvectors=True, max_steps=40)
    d = hessian_directions(m, res)
    assert d.count == 2 and d.names == ("v1", "v2")
    gram = d.vectors.double() @ d.vectors.double().T
    torch.testing.assert_close(gram, torch.eye(2, dtype=torch.float64), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- PCA of a trajectory
def _wasym(seed=0, mask_seed=0):
    from checkpoints import zoo

    return zoo.build(
        "mlp",
        "w-asym",
        input_dim=6,
        num_classes=3,
        width=8,
        depth=2,
        seed=seed,
        mask_seed=mask_seed,
    )


def _walk(final: nn.Module, steps: int, seed: int, plane=None) -> list[nn.Module]:
    """Copies of ``final`` moved along a random walk (or to ``final + a u + b v`` for a plane)."""
    import copy

    g = torch.Generator().manual_seed(seed)
    view = ParamView(final)
    theta, out = view.get().double(), []
    pos = theta.clone()
    for t in range(steps):
        m = copy.deepcopy(final)
        if plane is None:
            pos = pos + 0.05 * torch.randn(view.numel, generator=g, dtype=torch.float64) * (t + 1)
            ParamView(m).set_(pos.float())
        else:
            u, v, a, b = plane
            ParamView(m).set_((theta + a[t] * u + b[t] * v).float())
        out.append(m)
    return out


def test_pca_directions_equal_a_numpy_svd_of_the_trajectory():
    import numpy as np

    from landscape.trajectory import pca_directions

    final = _wasym()
    path = _walk(final, 7, seed=1)
    view = ParamView(final)
    assert view.numel < sum(
        p.numel() for p in final.parameters()
    )  # fixed entries are no coordinates
    M = np.stack([ParamView(m).get().double().numpy() for m in path]) - view.get().double().numpy()
    Mc = M - M.mean(axis=0)
    _, S, Vt = np.linalg.svd(Mc, full_matrices=False)
    d = pca_directions(final, path, labels=[f"step{i}" for i in range(7)])
    got = d.vectors.double().numpy()
    assert got.shape == (2, view.numel) and d.source == "pca" and d.names == ("x", "y")
    for k in range(2):  # equal up to sign
        sign = np.sign(got[k] @ Vt[k])
        np.testing.assert_allclose(got[k], sign * Vt[k], atol=1e-6)
    np.testing.assert_allclose(d.explained_variance, S[:2] ** 2 / (S**2).sum(), rtol=1e-10)
    # projections: the directions are orthonormal, so least squares is the dot product
    np.testing.assert_allclose(d.trajectory, M @ got.T, rtol=1e-5, atol=1e-6)
    assert d.trajectory_labels[0] == "step0" and d.settings()["explained_variance"]
    # state dicts give the same directions as models
    sd = pca_directions(final, [m.state_dict() for m in path])
    assert torch.equal(sd.vectors, d.vectors)
    # uncentred: the SVD of M itself
    _, S0, Vt0 = np.linalg.svd(M, full_matrices=False)
    u = pca_directions(final, path, center=False)
    assert abs(float(u.vectors[0].double().numpy() @ Vt0[0])) == pytest.approx(1.0, abs=1e-6)


def test_pca_projection_of_a_planar_trajectory_is_exact():
    from landscape.trajectory import pca_directions

    final = _wasym(2)
    n = ParamView(final).numel
    g = torch.Generator().manual_seed(5)
    u = torch.randn(n, generator=g, dtype=torch.float64)
    v = 0.5 * u + torch.randn(n, generator=g, dtype=torch.float64)  # not orthogonal to u
    a = [1.0, 0.8, 0.5, 0.3, 0.1]
    b = [-0.4, 0.1, 0.3, 0.2, 0.05]
    path = _walk(final, 5, 0, plane=(u, v, a, b)) + [final]
    d = pca_directions(final, path)
    assert sum(d.explained_variance) == pytest.approx(1.0, abs=1e-9)
    D = d.vectors.double()
    theta = ParamView(final).get().double()
    for t, m in enumerate(path):
        m_t = ParamView(m).get().double() - theta
        rebuilt = D.T @ torch.as_tensor(d.trajectory[t], dtype=torch.float64)
        # in the plane: the projection gives the point back (float32 weights)
        assert float((rebuilt - m_t).norm()) <= 1e-5 * max(1.0, float(m_t.norm()))
    assert tuple(d.trajectory[-1]) == pytest.approx((0.0, 0.0), abs=1e-6)  # final at the origin


def test_pca_bad_inputs():
    from landscape.trajectory import pca_directions

    final = _wasym()
    path = _walk(final, 3, 0)
    with pytest.raises(UserError, match="need at least 3 trajectory checkpoints"):
        pca_directions(final, path[:2])
    with pytest.raises(UserError, match="fewer than 2 directions"):
        pca_directions(final, [path[0], path[0], final])
    with pytest.raises(UserError, match="not one network family|differ in fixed buffer"):
        pca_directions(final, [_wasym(mask_seed=9), *path])  # other masks
    sd = path[0].state_dict()
    sd.pop("lins.0.weight")
    with pytest.raises(UserError, match="no tensor lins.0.weight"):
        pca_directions(final, [sd, *path])
    other = _wasym(mask_seed=9).state_dict()
    with pytest.raises(UserError, match="fixed buffer .* differs"):
        pca_directions(final, [other, *path])
