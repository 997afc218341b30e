"""One Krylov pass for three spectra: the trace from the density runs, the eigenvalue solve
continuing a kept density run, and the density at the budgets the studies use."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_hessian import case

from landscape import HessianOperator, UserError, hessian_eigenvalues, spectral_density
from landscape.lanczos import broadened_density, hutchinson, slq, start_vectors


def test_the_slq_trace_is_hutchinson_on_the_runs_start_vectors():
    g = torch.Generator().manual_seed(0)
    n = 120
    Q = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=g)).Q
    lam = torch.linspace(-2, 9, n, dtype=torch.float64)
    A = (Q * lam) @ Q.T
    dens = slq(A, num_runs=6, lanczos_steps=15, seed=3)
    # sqrt(n) v_r, v_r uniform on the sphere, has E[z z^T] = I: a Hutchinson probe
    probes = math.sqrt(n) * start_vectors(6, n, 3, torch.float64, torch.device("cpu")).T
    hu = hutchinson(A, probes=probes)
    assert dens.trace == pytest.approx(hu.trace, rel=1e-12)
    assert dens.trace_stderr == pytest.approx(hu.stderr, rel=1e-10)
    assert np.allclose(dens.trace_samples, hu.samples, rtol=1e-12)
    # the same number as n * sum_j w_j theta_j, the quadrature of f(t) = t
    quad = n * np.mean(np.nansum(dens.weights * np.nan_to_num(dens.nodes), axis=1))
    assert dens.trace == pytest.approx(quad, rel=1e-10)
    est = dens.trace_estimate()
    assert est.estimator == "slq" and est.num_queries == 6 and est.hvps == 0


def test_the_slq_trace_is_within_its_error_of_the_dense_trace():
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y))
    truth = float(torch.trace(H))
    hits = 0
    for seed in range(4):
        d = spectral_density(op, num_runs=10, lanczos_steps=20, seed=seed)
        assert 0 < d.trace_stderr < abs(truth)
        hits += abs(d.trace - truth) <= 3 * d.trace_stderr
        est = d.trace_estimate()
        assert est.trace == d.trace and est.samples.shape == (10,)
    assert hits >= 3  # 3 standard errors: a miss is a 0.3% event per seed


def test_continuing_a_kept_density_run_costs_no_product_when_it_has_converged():
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y))
    d = spectral_density(op, num_runs=3, lanczos_steps=80, keep_run=True, seed=1)
    assert d.run is not None and d.run.steps == 80 and d.run.basis.shape == (81, op.n)
    h0 = op.hvps
    res = hessian_eigenvalues(op, k=5, which="both", start=d)
    truth = np.concatenate([ev[::-1][:5], ev[:5]])
    assert res.start == "density run" and res.block_size == 1
    assert res.hvps == op.hvps - h0 == 0 and res.lanczos_steps == 80
    assert res.all_converged and np.allclose(res.eigenvalues, truth, rtol=1e-4, atol=0)


def test_a_short_density_run_is_continued_not_restarted():
    model, X, y, H, ev = case("cnn-bn")
    op = HessianOperator(model, (X, y))
    fresh = hessian_eigenvalues(op, k=5, which="both", block_size=1)
    d = spectral_density(op, num_runs=2, lanczos_steps=8, keep_run=True)
    res = hessian_eigenvalues(op, k=5, which="both", start=d, return_eigenvectors=True)
    truth = np.concatenate([ev[::-1][:5], ev[:5]])
    assert res.all_converged and np.allclose(res.eigenvalues, truth, rtol=1e-4, atol=0)
    # the run's 8 steps are not repeated: the solve makes only the products beyond them
    assert res.lanczos_steps > 8 and res.hvps == res.lanczos_steps - 8
    assert res.lanczos_steps <= fresh.lanczos_steps + 8
    # the Ritz vectors of the continued basis are eigenvectors of the dense Hessian
    flat = torch.stack([op.view.flatten(v) for v in res.eigenvectors])
    resid = (flat @ H - torch.as_tensor(res.eigenvalues)[:, None] * flat).norm(dim=1).numpy()
    assert np.allclose(resid, res.residuals, rtol=1e-3, atol=1e-9)


def test_a_density_without_a_kept_run_or_of_another_operator_is_refused():
    model, X, y, H, ev = case("mlp")
    op = HessianOperator(model, (X, y))
    d = spectral_density(op, num_runs=2, lanczos_steps=10)
    assert d.run is None
    with pytest.raises(UserError, match="keep_run=True"):
        hessian_eigenvalues(op, k=2, start=d)
    other = HessianOperator(model, (X, y), params="0")
    kept = spectral_density(other, num_runs=2, lanczos_steps=10, keep_run=True)
    with pytest.raises(UserError, match="same operator"):
        hessian_eigenvalues(op, k=2, start=kept)
    with pytest.raises(UserError, match="single-vector"):
        hessian_eigenvalues(op, k=2, start=kept.run, block_size=4)


@pytest.mark.parametrize("num_runs, lanczos_steps", [(3, 30), (4, 40)])
def test_the_budgeted_densities_stay_within_the_density_tolerance(num_runs, lanczos_steps):
    """The run study's budgets (3 x 30 at --budget 0.56, 4 x 40 by default) against the
    identically broadened true spectrum, on the same model and tolerance as the full 10 x 80."""
    model, X, y, H, ev = case("w-asym-mlp")
    op = HessianOperator(model, (X, y))
    for seed in range(3):
        res = spectral_density(op, num_runs=num_runs, lanczos_steps=lanczos_steps, seed=seed)
        truth = broadened_density(ev, np.full(ev.size, 1.0 / ev.size), res.grid, res.sigma)
        assert np.trapezoid(np.abs(res.density - truth), res.grid) < 0.15


def test_the_operator_makes_one_pass_over_the_data_before_its_products():
    """Construction costs nothing; the first product's pass builds the kept graphs and gives
    the loss; later products make no forward pass at all."""
    model, X, y, H, ev = case("mlp")
    calls = []
    hook = model[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        # (block="auto" would also time a few products on 8 samples, once)
        op = HessianOperator(model, (X, y), batch_size=60, block=2)
        assert calls == []
        v = torch.randn(op.n, dtype=torch.float64)
        assert torch.allclose(op.matvec(v), H @ v, atol=1e-12)
        assert len(calls) == 4 and op.cached  # 240 samples in batches of 60
        op.matmat(torch.randn(op.n, 3, dtype=torch.float64))
        assert len(calls) == 4
        loss = torch.nn.functional.cross_entropy(model(X), y).item()
        assert op.loss == pytest.approx(loss, rel=1e-12)
    finally:
        hook.remove()
