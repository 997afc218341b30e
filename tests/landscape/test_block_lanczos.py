"""Block Lanczos against dense symmetric matrices with known spectra, and against single-vector
Lanczos on the zoo models; the measured choice of the block size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape import HessianOperator, UserError, hessian_eigenvalues
from landscape.lanczos import BLOCK_MARGIN, block_inflation, lanczos_eigen


def planted(eigenvalues, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``: the spectrum is known exactly."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), dtype=torch.float64, generator=g)).Q
    return ((Q * lam) @ Q.T).to(dtype)


def bulk(n: int, lo: float = -1.0, hi: float = 3.0) -> list[float]:
    return np.linspace(lo, hi, n).tolist()


def true_residuals(A: torch.Tensor, res) -> np.ndarray:
    Y = res.eigenvectors
    return (A @ Y - Y * torch.as_tensor(res.eigenvalues, dtype=A.dtype)).norm(dim=0).numpy()


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_top_eigenvalues_and_residuals_of_a_known_spectrum(block_size):
    lam = [12.0, 9.0, 8.5, 7.0, 6.0] + bulk(195)
    A = planted(lam)
    res = lanczos_eigen(A, k=5, tol=1e-10, block_size=block_size, return_eigenvectors=True)
    assert res.block_size == block_size and res.algorithm == "block lanczos"
    assert np.allclose(res.eigenvalues, lam[:5], rtol=1e-10)
    assert res.all_converged and res.lanczos_steps * block_size < 200
    # the reported residuals are the true ||A y - theta y|| of the returned Ritz vectors
    assert np.allclose(true_residuals(A, res), res.residuals, rtol=1e-3, atol=1e-11)
    Y = res.eigenvectors
    assert torch.allclose(Y.T @ Y, torch.eye(5, dtype=Y.dtype), atol=1e-10)


def test_block_lanczos_finds_every_copy_of_a_repeated_eigenvalue_and_single_vector_does_not():
    lam = [10.0, 10.0, 10.0, 7.0, 5.0] + bulk(195)
    A = planted(lam, seed=1)
    block = lanczos_eigen(A, k=4, tol=1e-8, block_size=4, return_eigenvectors=True)
    assert np.allclose(block.eigenvalues, [10, 10, 10, 7], rtol=1e-8)
    # three orthonormal eigenvectors of the triple eigenvalue
    Y = block.eigenvectors[:, :3]
    assert torch.allclose(Y.T @ Y, torch.eye(3, dtype=Y.dtype), atol=1e-8)
    assert torch.allclose(A @ Y, 10 * Y, atol=1e-6)
    # one start vector's Krylov space meets the eigenspace in one direction: further copies
    # come only from rounding errors that grow, and the run stops before all of them have
    single = lanczos_eigen(A, k=4, tol=1e-4, block_size=1)
    assert single.all_converged and single.eigenvalues[0] == pytest.approx(10.0, rel=1e-8)
    assert np.sum(np.isclose(single.eigenvalues, 10.0, rtol=1e-6)) < 3
    assert not np.allclose(single.eigenvalues, [10, 10, 10, 7], rtol=1e-4)


def test_clustered_eigenvalues_at_both_ends():
    top = [5.0 + 1e-5 * i for i in range(4)][::-1]
    bottom = [-2.0 - 1e-5 * i for i in range(4)][::-1]
    lam = top + bulk(292, -1.0, 1.0) + bottom
    A = planted(lam, seed=2)
    res = lanczos_eigen(A, k=4, which="both", tol=1e-9, block_size=6)
    want = np.array(top + sorted(bottom))
    assert list(res.which) == ["largest"] * 4 + ["smallest"] * 4
    assert np.allclose(res.eigenvalues, want, rtol=1e-9, atol=0)


def test_a_low_rank_operator_deflates_and_the_block_goes_on_in_the_complement():
    # rank 3: after one step the block Krylov space is invariant; the lost directions are
    # replaced by random vectors orthogonal to the basis, so the zero eigenvalues are found too
    lam = [4.0, 2.0, -1.0] + [0.0] * 47
    A = planted(lam, seed=3)
    res = lanczos_eigen(A, k=5, tol=1e-10, block_size=4, return_eigenvectors=True)
    assert np.allclose(res.eigenvalues, [4, 2, 0, 0, 0], atol=1e-10)
    Y = res.eigenvectors
    assert torch.allclose(Y.T @ Y, torch.eye(5, dtype=Y.dtype), atol=1e-9)
    assert np.all(true_residuals(A, res) < 1e-9)


def test_exhausting_a_small_space_gives_the_exact_spectrum():
    lam = [3.0, 1.0, 0.5, -0.25, -2.0, 0.1, 0.2, 0.3, 0.4, 0.6]
    A = planted(lam, seed=4)
    res = lanczos_eigen(A, k=3, which="both", tol=1e-14, block_size=4, max_steps=10)
    s = sorted(lam)
    assert np.allclose(res.eigenvalues, s[::-1][:3] + s[:3], atol=1e-12)
    assert res.all_converged and np.all(res.residuals == 0)


def test_the_step_limit_counts_vectors_and_float32_works():
    lam = [8.0, 7.9, 7.8] + bulk(297)
    A = planted(lam, seed=5, dtype=torch.float32)
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return A @ V

    res = lanczos_eigen(matmat, 300, k=3, tol=1e-12, block_size=4, max_steps=40)
    assert sum(calls) <= 40 and res.lanczos_steps * 4 == sum(calls)
    assert not res.all_converged  # tol 1e-12 is beyond float32 in 40 vectors
    ok = lanczos_eigen(A, k=3, tol=1e-4, block_size=4)
    assert ok.all_converged and np.allclose(ok.eigenvalues, lam[:3], rtol=1e-4)


def test_start_vectors_spanning_the_wanted_eigenvectors_converge_in_one_step():
    lam = [6.0, 5.0, 4.0] + bulk(97)
    g = torch.Generator().manual_seed(6)
    Q = torch.linalg.qr(torch.randn(100, 100, dtype=torch.float64, generator=g)).Q
    A = (Q * torch.as_tensor(lam, dtype=torch.float64)) @ Q.T
    calls = []

    def matmat(V):
        calls.append(V.shape[1])
        return A @ V

    start = Q[:, :3] @ torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64)).Q  # mixed
    res = lanczos_eigen(matmat, 100, k=3, tol=1e-10, start=start, dtype=torch.float64)
    assert res.block_size == 3 and res.start == "given"
    assert np.allclose(res.eigenvalues, lam[:3], rtol=1e-12) and res.residuals.max() < 1e-10
    assert len(calls) <= 2  # the first step already holds them; one more for the bound's gap


def test_bad_block_sizes_and_start_vectors_are_user_errors():
    A = planted(bulk(20))
    with pytest.raises(UserError, match="block_size"):
        lanczos_eigen(A, k=2, block_size=0)
    with pytest.raises(UserError, match="start vectors"):
        lanczos_eigen(A, k=2, start=torch.ones(3, 2))


# ------------------------------------------------------------------------------- zoo models
def test_block_results_equal_single_vector_results_on_the_zoo_models():
    from test_hessian import case

    for name in ("w-asym-mlp", "cnn-bn"):
        model, X, y, H, ev = case(name)
        op = HessianOperator(model, (X, y))
        single = hessian_eigenvalues(op, k=4, which="both", block_size=1)
        for b in (3, 8):
            block = hessian_eigenvalues(op, k=4, which="both", block_size=b)
            assert block.block_size == b and block.all_converged
            assert np.allclose(block.eigenvalues, single.eigenvalues, rtol=1e-4, atol=0)
        truth = np.concatenate([ev[::-1][:4], ev[:4]])
        assert np.allclose(single.eigenvalues, truth, rtol=1e-4, atol=0)


class _Priced:
    """A dense operator whose products cost what ``block_costs`` says (the choice's input)."""

    def __init__(self, A, costs):
        self.A, self.costs, self.calls = A, costs, []
        self.shape, self.dtype, self.device = A.shape, A.dtype, A.device

    def __matmul__(self, x):
        self.calls.append(1 if x.ndim == 1 else x.shape[1])
        return self.A @ x

    def block_costs(self):
        return dict(self.costs)


@pytest.mark.parametrize(
    "costs, chosen",
    [
        ({1: 1.0, 2: 0.6, 4: 0.35, 8: 0.1}, 8),  # per-call overhead dominates: a block of 8
        ({1: 1.0, 2: 0.7, 4: 0.35, 8: 0.34}, 4),
        ({1: 1.0, 2: 0.6, 4: 0.45, 8: 0.4}, 1),  # a saving under the margin
        ({1: 1.0, 2: 0.98, 4: 0.97, 8: 0.96}, 1),  # compute-bound: single-vector Lanczos
    ],
)
def test_auto_picks_the_block_size_with_the_least_expected_time_and_wastes_no_product(
    costs, chosen
):
    lam = [9.0, 8.0, 7.5, 7.0, 6.0] + bulk(295)
    op = _Priced(planted(lam, seed=7), costs)
    res = lanczos_eigen(op, k=5, tol=1e-8, block_size="auto")
    expect = min(costs, key=lambda b: costs[b] * block_inflation(b, 5))
    if costs[expect] * block_inflation(expect, 5) > BLOCK_MARGIN * costs[1]:
        expect = 1
    assert expect == chosen and res.block_size == chosen
    assert np.allclose(res.eigenvalues, lam[:5], rtol=1e-8)
    # the first start vector's product is the first step of either algorithm
    assert sum(op.calls) == res.lanczos_steps * chosen


def test_the_operator_measures_block_costs_once_and_auto_agrees_with_the_dense_hessian():
    from test_hessian import case

    model, X, y, H, ev = case("mlp")
    op = HessianOperator(model, (X, y), batch_size=60)
    costs = op.block_costs()
    assert set(costs) == {1, 2, 4, 8} and all(c > 0 for c in costs.values())
    assert op.block_costs() == costs  # kept, not measured again
    res = hessian_eigenvalues(op, k=5, which="both")
    truth = np.concatenate([ev[::-1][:5], ev[:5]])
    assert res.block_size in (1, 2, 4, 8)
    assert np.allclose(res.eigenvalues, truth, rtol=1e-4, atol=0)
