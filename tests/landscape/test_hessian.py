"""Hessian operator, Lanczos, SLQ and trace against dense Hessians of small models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.sparse.linalg import eigsh
from torch import nn
from torch.func import functional_call

from checkpoints import zoo
from landscape import (
    HessianOperator,
    UserError,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)
from landscape.lanczos import broadened_density, hutchinson, hutchpp


def dense_hessian(
    model: nn.Module, X: torch.Tensor, y: torch.Tensor, select=None, func: bool = True
) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy, over every trainable entry, then restricted to
    the entries a W-Asym mask leaves trainable (independent of ParamView and the operator).

    ``func=False`` uses ``torch.autograd.functional.hessian``: in torch 2.13 ``torch.func.hessian``
    returns a wrong, non-symmetric matrix through an affine ``nn.LayerNorm``.
    """
    model.eval()
    named = [
        (n, p)
        for n, p in model.named_parameters()
        if p.requires_grad and (select is None or n.startswith(select))
    ]
    shapes = [p.shape for _, p in named]
    flat = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(t):
        parts, i = {}, 0
        for (n, _), s in zip(named, shapes):
            parts[n] = t[i : i + s.numel()].reshape(s)
            i += s.numel()
        return F.cross_entropy(functional_call(model, parts, (X,), strict=False), y)

    H = (
        torch.func.hessian(loss)(flat)
        if func
        else torch.autograd.functional.hessian(loss, flat, vectorize=True)
    )
    buffers = dict(model.named_buffers())
    keep = []
    for n, p in named:
        mask = buffers.get(n[: -len("weight")] + "mask") if n.endswith("weight") else None
        keep.append(
            (mask != 0).reshape(-1) if mask is not None else torch.ones(p.numel(), dtype=torch.bool)
        )
    keep = torch.cat(keep)
    return H[keep][:, keep]


def tiny_mlp():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    X, y = torch.randn(240, 8, dtype=torch.float64), torch.randint(0, 3, (240,))
    return model, X, y, True


def tiny_wasym():
    torch.manual_seed(2)
    model = zoo.build(
        "mlp", "w-asym", input_dim=16, width=16, depth=2, num_classes=4, seed=0
    ).double()
    X, y = torch.randn(160, 16, dtype=torch.float64), torch.randint(0, 4, (160,))
    return model, X, y, False  # LayerNorm: see dense_hessian


def tiny_cnn_bn():
    torch.manual_seed(3)
    model = zoo.build(
        "cnn", "standard", in_channels=1, num_classes=3, channels=(4, 6), norm="batch", seed=0
    ).double()
    X, y = torch.randn(96, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (96,))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(X + 0.5)  # running statistics that differ from the batch statistics
    return model, X, y, True


MODELS = {"mlp": tiny_mlp, "w-asym-mlp": tiny_wasym, "cnn-bn": tiny_cnn_bn}
_DENSE: dict[str, tuple] = {}


def case(name):
    if name not in _DENSE:
        model, X, y, func = MODELS[name]()
        H = dense_hessian(model, X, y, func=func)
        _DENSE[name] = (model, X, y, H, np.linalg.eigvalsh(H.numpy()))
    return _DENSE[name]


@pytest.mark.parametrize("block_size", [1, 8])
@pytest.mark.parametrize("name", list(MODELS))
def test_top_and_bottom_eigenvalues_match_the_dense_hessian(name, block_size):
    model, X, y, H, ev = case(name)
    assert torch.allclose(H, H.T, atol=1e-10)
    res = hessian_eigenvalues(
        model, (X, y), k=5, which="both", batch_size=50, block_size=block_size
    )
    top, bottom = ev[::-1][:5], ev[:5]
    assert list(res.which) == ["largest"] * 5 + ["smallest"] * 5
    assert np.all(np.abs(res.eigenvalues[:5] - top) <= 1e-4 * np.abs(top))
    assert np.all(np.abs(res.eigenvalues[5:] - bottom) <= 1e-4 * np.abs(bottom))
    assert (
        bottom[0] < 0
        and res.lambda_min == pytest.approx(bottom[0], rel=1e-4)
        and res.lambda_max == pytest.approx(top[0], rel=1e-4)
    )
    assert res.all_converged and res.lanczos_steps < len(
        ev
    )  # stopped on residuals, not by exhausting the space
    assert res.block_size == block_size and res.hvps == res.lanczos_steps * block_size
    assert np.all(res.residuals >= res.error_bounds)
    assert not model.training


def test_float32_defaults_reach_1e4_on_the_top_five():
    model, X, y, H, ev = case("mlp")
    m32 = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    res = hessian_eigenvalues(m32, (X.float(), y))
    top = ev[::-1][:5]
    assert res.eigenvalues.dtype == np.float64 and np.all(
        np.abs(res.eigenvalues - top) <= 1e-4 * np.abs(top)
    )


def test_eigenvectors_are_parameter_shaped_and_skip_fixed_entries():
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y))
    fixed = model.fixed_entry_count()
    assert fixed > 0 and op.n == sum(p.numel() for p in model.parameters()) - fixed == H.shape[0]
    res = hessian_eigenvalues(op, k=3, return_eigenvectors=True)
    assert len(res.eigenvectors) == 3
    params = dict(model.named_parameters())
    flats = [op.view.flatten(vec) for vec in res.eigenvectors]  # back to coordinates
    for lam, r, vec, flat in zip(res.eigenvalues, res.residuals, res.eigenvectors, flats):
        assert set(vec) == set(params) and all(vec[n].shape == params[n].shape for n in vec)
        for i, lin in enumerate(model.lins):
            assert torch.all(
                vec[f"lins.{i}.weight"][lin.mask == 0] == 0
            )  # fixed entries get no direction
        assert float(flat.norm()) == pytest.approx(1.0, abs=1e-10)
        # the reported residual is the true ||H y - theta y|| (full reorthogonalisation keeps the relation exact)
        assert float((H @ flat - lam * flat).norm()) == pytest.approx(r, rel=1e-3, abs=1e-9)


def test_exact_sample_weighting_with_uneven_batches():
    model, X, y, H, ev = case("mlp")
    v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cuts = [0, 7, 57, 70, 240]
    uneven = [(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=33)
    ref = H @ v
    for data in ((X, y), uneven, loader):
        for cache in (True, False):
            hv = HessianOperator(model, data, cache=cache).matvec(v)
            assert torch.allclose(hv, ref, rtol=1e-10, atol=1e-12)


def test_parameter_subset_gives_the_dense_block():
    model, X, y, H, ev = case("mlp")
    op = HessianOperator(model, (X, y), params="0")  # the first Linear
    assert op.n == 8 * 16 + 16 and op.view.names == ["0.weight", "0.bias"]
    block = dense_hessian(model, X, y, select="0.")
    V = torch.randn(3, op.n, dtype=torch.float64)
    assert torch.allclose(op.matmat(V.T), block @ V.T, atol=1e-12)  # columns are vectors
    assert torch.allclose(block, H[: op.n, : op.n], atol=1e-12)


def test_forward_over_reverse_and_double_backward_agree():
    for name in ("w-asym-mlp", "cnn-bn"):
        model, X, y, H, ev = case(name)
        V = torch.randn(4, H.shape[0], dtype=torch.float64)
        a = HessianOperator(model, (X, y), hvp="forward-over-reverse", batch_size=64).matmat(V.T)
        b = HessianOperator(model, (X, y), cache=False, block=3).matmat(V.T)
        assert torch.allclose(a, H @ V.T, atol=1e-10) and torch.allclose(b, H @ V.T, atol=1e-10)


def test_forward_over_reverse_follows_the_numpy_convention_too():
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y), hvp="forward-over-reverse")
    v = np.random.default_rng(0).standard_normal(H.shape[0])
    out = op @ v
    assert isinstance(out, np.ndarray) and np.allclose(out, H.numpy() @ v, atol=1e-8)
    assert not (op @ torch.from_numpy(v)).requires_grad


def test_trace_estimates_lie_within_their_standard_error():
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y))
    truth = float(torch.trace(H))
    for estimator in ("hutch++", "hutchinson"):
        h0 = op.hvps
        est = hessian_trace(op, estimator=estimator, num_queries=60, seed=1)
        assert est.hvps == op.hvps - h0 == 60
        assert 0 < est.stderr < abs(truth)
        assert abs(est.trace - truth) <= 4 * est.stderr
        again = hessian_trace(op, estimator=estimator, num_queries=60, seed=1)
        assert again.trace == est.trace and again.stderr == est.stderr


def test_hutchpp_is_exact_on_a_low_rank_operator_and_hutchinson_is_not():
    g = torch.Generator().manual_seed(0)
    U = torch.linalg.qr(torch.randn(300, 6, dtype=torch.float64, generator=g)).Q
    A = U @ torch.diag(torch.tensor([50.0, 20, 10, -8, 5, 1], dtype=torch.float64)) @ U.T
    matmat = lambda V: A @ V  # noqa: E731  (columns are vectors)
    pp = hutchpp(matmat, 300, num_queries=30, seed=0, dtype=torch.float64)
    hu = hutchinson(matmat, 300, num_queries=30, seed=0, dtype=torch.float64)
    assert (
        pp.trace == pytest.approx(78.0, abs=1e-9)
        and pp.stderr < 1e-9
        and pp.exact_part == pytest.approx(78.0)
    )
    assert hu.stderr > 1 and abs(hu.trace - 78.0) <= 4 * hu.stderr


def test_spectral_density_matches_the_broadened_true_spectrum():
    model, X, y, H, ev = case("w-asym-mlp")
    res = spectral_density(model, (X, y), num_runs=10, lanczos_steps=80, seed=0)
    assert res.nodes.shape == res.weights.shape == (10, 80)
    assert np.allclose(res.weights.sum(axis=1), 1.0)
    assert np.trapezoid(res.density, res.grid) == pytest.approx(1.0, abs=1e-4)
    truth = broadened_density(ev, np.full(ev.size, 1.0 / ev.size), res.grid, res.sigma)
    l1 = np.trapezoid(np.abs(res.density - truth), res.grid)
    assert l1 < 0.15, l1
    # a density of a shifted spectrum is far: the check can fail
    wrong = broadened_density(
        ev + 10 * res.sigma, np.full(ev.size, 1.0 / ev.size), res.grid, res.sigma
    )
    assert np.trapezoid(np.abs(wrong - truth), res.grid) > 5 * l1
    assert res.negative_mass() == pytest.approx(np.mean(ev < -1e-4 * np.abs(ev).max()), abs=0.1)


def test_scipy_linear_operator_and_determinism():
    model, X, y, H, ev = case("cnn-bn")
    op = HessianOperator(model, (X, y))
    vals = np.sort(eigsh(op.aslinearoperator(), k=2, which="LA", tol=1e-10)[0])[::-1]
    assert np.allclose(vals, ev[::-1][:2], rtol=1e-7)
    a = hessian_eigenvalues(op, k=4, seed=3)
    b = hessian_eigenvalues(op, k=4, seed=3)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.lanczos_steps == b.lanczos_steps
    frame = a.to_frame()
    assert (
        list(frame.columns) == ["which", "eigenvalue", "residual", "error_bound", "converged"]
        and len(frame) == 4
    )


def test_model_is_left_as_found():
    model, X, y, H, ev = case("cnn-bn")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hessian_eigenvalues(model, (X, y), k=2)
    assert model.training
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # BN statistics untouched
    model.eval()


def test_bad_input_raises_user_error():
    model, X, y, H, ev = case("mlp")
    with pytest.raises(UserError, match="no trainable parameters"):
        hessian_eigenvalues(model, (X, y), params="nothing.*")
    frozen = nn.Sequential(nn.Linear(8, 3)).double().requires_grad_(False)
    with pytest.raises(UserError, match="no trainable parameters"):
        HessianOperator(frozen, (X, y))
    with pytest.raises(UserError, match="labels range"):
        hessian_eigenvalues(model, (X, y + 5))
    with pytest.raises(UserError, match="k=500"):
        hessian_eigenvalues(model, (X, y), k=500)
    with pytest.raises(UserError, match="max_steps=4"):
        hessian_eigenvalues(model, (X, y), k=3, which="both", max_steps=4)
    with pytest.raises(UserError, match="which"):
        hessian_eigenvalues(model, (X, y), which="middle")
    broken = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    with torch.no_grad():
        broken[2].weight[0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        hessian_trace(broken, (X, y))
    with pytest.raises(UserError, match="hutch"):
        hessian_trace(model, (X, y), estimator="exact")


# ---------------------------------------------------------------------------- operator conventions
def test_operator_products_follow_the_linear_operator_conventions():
    """``op @ M`` is ``H M`` (columns are vectors) for torch and NumPy matrices and for vectors,
    against the dense Hessian of ``torch.autograd.functional.hessian`` (affine LayerNorm inside)."""
    from scipy.sparse.linalg import aslinearoperator

    model, X, y, H, ev = case("w-asym-mlp")  # dense_hessian(func=False): autograd.functional
    op = HessianOperator(model, (X, y))
    n = H.shape[0]
    assert op.shape == (n, n) and op.dtype == np.float64 and op.torch_dtype == torch.float64
    g = torch.Generator().manual_seed(5)
    M = torch.randn(n, 3, dtype=torch.float64, generator=g)
    HM = op @ M
    assert isinstance(HM, torch.Tensor) and HM.shape == (n, 3)
    torch.testing.assert_close(HM, H @ M, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(M), H @ M, rtol=1e-10, atol=1e-12)
    HMn = op @ M.numpy()
    assert isinstance(HMn, np.ndarray) and HMn.shape == (n, 3)
    assert np.array_equal(HMn, HM.numpy())  # the same numbers whatever the array type
    v = M[:, 0]
    Hv = op @ v
    assert Hv.shape == (n,)
    torch.testing.assert_close(Hv, H @ v, rtol=1e-10, atol=1e-12)
    assert np.array_equal(op @ v.numpy(), Hv.numpy())
    assert op.matvec(v.numpy()[:, None]).shape == (n, 1)  # a column, as scipy hands it
    # SciPy: the operator's own wrapper, and scipy's duck typing of it
    for lin in (op.aslinearoperator(), aslinearoperator(op)):
        assert np.allclose(lin @ M.numpy(), (H @ M).numpy(), rtol=1e-10, atol=1e-12)
        assert np.allclose(lin.matvec(v.numpy()), (H @ v).numpy(), rtol=1e-10, atol=1e-12)
    with pytest.raises(UserError, match=r"shape \(\d+, k\)"):
        op.matmat(M.T)  # rows are not columns


def test_operator_float32_products_and_numpy_input():
    model, X, y, H, ev = case("mlp")
    m32 = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    op = HessianOperator(m32, (X.float(), y))
    M = np.random.default_rng(0).standard_normal((op.n, 2))  # float64 in: the model's dtype out
    out = op @ M
    assert out.dtype == np.float32 == op.dtype
    assert np.allclose(out, H.numpy() @ M, rtol=1e-4, atol=1e-5)


def test_construction_settings_with_an_operator_are_refused():
    model, X, y, H, ev = case("mlp")
    op = HessianOperator(model, (X, y))
    calls = [
        lambda: hessian_eigenvalues(op, k=2, params="0"),
        lambda: hessian_eigenvalues(op, (X, y), k=2),
        lambda: spectral_density(op, device="cpu"),
        lambda: hessian_trace(op, batch_size=10),
        lambda: hessian_trace(op, hvp="forward-over-reverse"),
    ]
    for call in calls:
        with pytest.raises(UserError, match="given with a HessianOperator") as info:
            call()
        assert "\n" not in str(info.value)


def test_old_keyword_and_attribute_names_warn_and_still_work():
    model, X, y, H, ev = case("mlp")
    op = HessianOperator(model, (X, y))
    new = hessian_trace(op, estimator="hutchinson", num_queries=6, seed=2)
    with pytest.warns(DeprecationWarning, match="estimator="):
        old = hessian_trace(op, method="hutchinson", num_queries=6, seed=2)
    assert old.trace == new.trace and new.estimator == "hutchinson"
    with pytest.warns(DeprecationWarning, match="TraceEstimate.estimator"):
        assert new.method == "hutchinson"
    with pytest.warns(DeprecationWarning, match="hvp="):
        fr = HessianOperator(model, (X, y), method="forward-over-reverse")
    assert fr.hvp == "forward-over-reverse"
    with pytest.warns(DeprecationWarning, match="hvp="):
        res = hessian_eigenvalues(model, (X, y), k=1, method="double-backward")
    with pytest.warns(DeprecationWarning, match="lanczos_steps"):
        assert res.steps == res.lanczos_steps
    with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
        hessian_eigenvalues(op, steps=3)
    with pytest.raises(TypeError, match="both 'method' and its new name 'estimator'"):
        hessian_trace(op, method="hutch++", estimator="hutchinson")


def test_lanczos_algorithms_take_an_operator_object_or_a_product_function():
    from landscape.lanczos import lanczos_eigen, slq

    g = torch.Generator().manual_seed(1)
    Q = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64, generator=g)).Q
    lam = torch.linspace(-3, 10, 40, dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T
    dense = lanczos_eigen(A, k=2, which="both", tol=1e-10, return_eigenvectors=True)
    assert np.allclose(dense.eigenvalues, [10.0, lam[-2], -3.0, lam[1]], atol=1e-8)
    Y = dense.eigenvectors  # columns
    assert Y.shape == (40, 4)
    true_resid = (A @ Y - Y * torch.as_tensor(dense.eigenvalues)).norm(dim=0).numpy()
    assert np.allclose(true_resid, dense.residuals, rtol=1e-3, atol=1e-9)  # Ritz residuals
    fn = lanczos_eigen(lambda v: A @ v, 40, k=2, which="both", tol=1e-10, dtype=torch.float64)
    assert np.array_equal(fn.eigenvalues, dense.eigenvalues)
    with pytest.warns(DeprecationWarning, match="EigenResult.eigenvectors"):
        torch.testing.assert_close(dense.vectors, Y.T)
    a = slq(A, num_runs=3, lanczos_steps=12, seed=0)
    with pytest.warns(DeprecationWarning, match="lanczos_steps="):
        b = slq(lambda V: A @ V, 40, num_runs=3, steps=12, seed=0, dtype=torch.float64)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.density, b.density)
    assert hutchpp(A, num_queries=30).trace == pytest.approx(float(lam.sum()), rel=0.2)


def test_products_fall_back_to_one_vector_at_a_time_where_batching_fails():
    """ResNet-20's double backward has no batching rule in torch 2.13 (is_grads_batched
    raises): a block goes through vector by vector, with the same numbers."""
    torch.manual_seed(0)
    model = zoo.build("resnet20", width=1, in_channels=3).eval()
    X, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 7])
    op = HessianOperator(model, (X, y), block=4)
    V = torch.randn(op.n, 3, generator=torch.Generator().manual_seed(1))
    block = op.matmat(V)
    assert not op._batching and op.hvps == 3
    one = torch.stack([op.matvec(V[:, j]) for j in range(3)], dim=1)
    # float32 convolutions do not repeat bit for bit: compare to their rounding level
    assert float((block - one).norm() / one.norm()) < 1e-5
