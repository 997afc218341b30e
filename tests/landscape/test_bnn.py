"""The variational posterior: KL against torch.distributions, local reparameterisation against
weight sampling, fixed W-Asym entries, the Monte Carlo predictive, resumable training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import LowRankMultivariateNormal, MultivariateNormal, Normal, kl_divergence

from checkpoints import zoo
from landscape.bnn import (
    PosteriorSettings,
    VariationalTrainer,
    predictive_log_probs,
    variational,
)
from landscape.calibration import calibrate
from landscape.errors import UserError


def _mlp(variant="standard", **kw):
    return zoo.build("mlp", variant, input_dim=6, num_classes=3, width=5, depth=1, **kw).double()


def _cnn(variant="standard"):
    return zoo.build(
        "cnn", variant, in_channels=2, num_classes=3, channels=(3, 4), norm="none"
    ).double()


def _perturb_log_var(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.posteriors.values():
            for n, t in p.named_parameters(recurse=False):
                if n.endswith("log_var"):
                    t.add_(0.5 * torch.randn(t.shape, generator=g, dtype=t.dtype))


@pytest.mark.parametrize("build", [_mlp, _cnn], ids=["linear", "conv"])
@pytest.mark.parametrize("variant", ["standard", "w-asym"])
@pytest.mark.parametrize("rank,learn_diag", [(0, True), (0, False), (3, False), (2, True)])
def test_kl_equals_torch_distributions(build, variant, rank, learn_diag):
    """Per layer, KL(q || N(0, s I)) equals kl_divergence of LowRankMultivariateNormal vs a
    MultivariateNormal prior, and (rank 0) of the product of Normals."""
    vnet = variational(
        build(variant),
        rank=rank,
        learn_diag=learn_diag,
        q_init_logvar=-3.0,
        prior_precision=0.3,
        seed=1,
    )
    _perturb_log_var(vnet)
    total = 0.0
    for key, post in vnet.posteriors.items():
        layer = vnet.layer(key)
        with torch.no_grad():
            ours = float(post.kl(layer))
            mean, factor, diag = post.covariance(layer)
            d = mean.numel()
            assert d == post.size
            q = LowRankMultivariateNormal(mean, factor, diag)
            prior = MultivariateNormal(
                torch.zeros_like(mean), post.prior_variance * torch.eye(d, dtype=mean.dtype)
            )
            ref = float(kl_divergence(q, prior))
            if rank == 0:
                qn = Normal(mean, diag.sqrt())
                pn = Normal(torch.zeros_like(mean), math.sqrt(post.prior_variance))
                assert math.isclose(ours, float(kl_divergence(qn, pn).sum()), rel_tol=1e-9)
        assert math.isclose(ours, ref, rel_tol=1e-9, abs_tol=1e-9), (key, ours, ref)
        total += ours
    assert math.isclose(float(vnet.kl().detach()), total, rel_tol=1e-12)


def test_prior_variance_scales_with_fan():
    m = _cnn()
    fan_in = variational(m, prior_precision=2.0, prior_scaling="fan_in")
    public = variational(m, prior_precision=2.0, prior_scaling="public")
    none = variational(m, prior_precision=2.0, prior_scaling="none")
    assert fan_in.posteriors["convs-1"].prior_variance == pytest.approx(1 / (2.0 * 3 * 9))
    assert public.posteriors["convs-1"].prior_variance == pytest.approx(1 / (2.0 * 3))
    assert public.posteriors["fc"].prior_variance == pytest.approx(1 / (2.0 * 3))  # out_features
    assert fan_in.posteriors["fc"].prior_variance == pytest.approx(1 / (2.0 * 4))
    assert none.posteriors["fc"].prior_variance == pytest.approx(0.5)


def _sample_weights(post, layer, draws, gen):
    """Explicit weight samples w = mu + sqrt(D) xi + V^T eps / sqrt(r) (the definition of q)."""
    w_mean = layer.effective_weight() if hasattr(layer, "effective_weight") else layer.weight
    dw = post.diag_weight()
    shape = (draws, *w_mean.shape)
    w = w_mean + dw.sqrt() * torch.randn(shape, generator=gen, dtype=w_mean.dtype)
    b = None
    if layer.bias is not None:
        db = post.diag_bias()
        b = layer.bias + db.sqrt() * torch.randn((draws, db.numel()), generator=gen, dtype=db.dtype)
    if post.rank:
        eps = torch.randn((draws, post.rank), generator=gen, dtype=w_mean.dtype)
        v = post.factors()
        w = w + torch.einsum("sk,k...->s...", eps, v) / math.sqrt(post.rank)
        if b is not None:
            b = b + eps @ post.bias_factors / math.sqrt(post.rank)
    return w, b


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_local_reparameterisation_matches_weight_sampling(kind):
    """The output mean and variance of the local reparameterisation trick match Monte Carlo
    estimates from sampling whole weight matrices (W-Asym layer, low rank plus learned diagonal)."""
    torch.manual_seed(0)
    if kind == "linear":
        model = _mlp("w-asym")
        x = torch.randn(1, 6, dtype=torch.float64)
        key = "lins-0"
    else:
        model = _cnn("w-asym")
        x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
        key = "convs-0"
    vnet = variational(model, rank=2, learn_diag=True, q_init_logvar=-2.0, seed=3)
    _perturb_log_var(vnet)
    post, layer = vnet.posteriors[key], vnet.layer(key)
    with torch.no_grad():
        for p in post.parameters():
            if p.dim() > 1:  # factors large enough to matter next to the diagonal
                p.mul_(8.0)
    draws = 20_000
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        with vnet.mean_network():  # the layer alone, without its noise hook
            mean_out = layer(x)
        lrt = mean_out + post.noise(layer, x.expand(draws, *x.shape[1:]), gen)
        w, b = _sample_weights(post, layer, draws, torch.Generator().manual_seed(6))
        if kind == "linear":
            ref = torch.einsum("soi,i->so", w, x[0]) + (b if b is not None else 0)
        else:
            cols = F.unfold(x, 3, padding=1)[0]  # (in*k*k, L)
            ref = torch.stack(
                [
                    torch.einsum("sp,pl->sl", w.reshape(draws, w.shape[1], -1)[:, o], cols)
                    for o in range(w.shape[1])
                ],
                1,
            )
            if b is not None:
                ref = ref + b[:, :, None]
            lrt = lrt.reshape(draws, lrt.shape[1], -1)
            mean_out = mean_out.reshape(1, mean_out.shape[1], -1)
    var_ref, var_lrt = ref.var(0), lrt.var(0)
    assert var_ref.min() > 1e-4
    torch.testing.assert_close(var_lrt, var_ref, rtol=0.06, atol=0)
    se = (var_ref / draws).sqrt()
    assert ((lrt.mean(0) - mean_out[0]).abs() < 4.5 * se).all()
    assert ((ref.mean(0) - mean_out[0]).abs() < 4.5 * se).all()


def test_fixed_entries_have_no_variance_no_gradient_and_never_move():
    torch.manual_seed(0)
    model = zoo.build("mlp", "w-asym", input_dim=8, num_classes=3, width=12, depth=2)
    vnet = variational(model, rank=2, learn_diag=True, q_init_logvar=-4.0, seed=0)
    fixed = {
        k: (vnet.layer(k).mask == 0) for k in vnet.posteriors if hasattr(vnet.layer(k), "mask")
    }
    assert fixed and all(m.any() for m in fixed.values())
    before = {k: vnet.layer(k).weight.detach().clone() for k in fixed}
    eff = {k: vnet.layer(k).effective_weight().detach().clone() for k in fixed}
    logvar0 = {k: vnet.posteriors[k].weight_log_var.detach().clone() for k in fixed}
    for k, m in fixed.items():
        post = vnet.posteriors[k]
        assert (post.diag_weight()[m] == 0).all()
        assert (post.factors()[:, m] == 0).all()
        assert post.size == int((~m).sum()) + vnet.layer(k).bias.numel()
    X, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    trainer = VariationalTrainer(vnet, X, y, batch_size=16, lr=1e-2, seed=0)
    trainer.train_step()  # one step: look at the gradients it used
    for k, m in fixed.items():
        post, layer = vnet.posteriors[k], vnet.layer(k)
        for t in (layer.weight.grad, post.weight_log_var.grad):
            assert (t[m] == 0).all()
        assert (post.weight_factors.grad[:, m] == 0).all()
        assert layer.weight.grad[~m].abs().sum() > 0
    trainer.run(30, log_every=10, progress=False)
    for k, m in fixed.items():
        post, layer = vnet.posteriors[k], vnet.layer(k)
        assert torch.equal(layer.weight.detach()[m], before[k][m])
        assert torch.equal(layer.effective_weight().detach()[m], eff[k][m])
        assert not torch.equal(layer.weight.detach()[~m], before[k][~m])
        assert torch.equal(post.weight_log_var.detach()[m], logvar0[k][m])
        assert (post.weight_factors.detach()[:, m] == 0).all()


def test_predictive_with_one_sample_and_zero_variance_is_the_deterministic_network():
    model = zoo.build("mlp", "w-asym", input_dim=8, num_classes=4, width=10, depth=2, seed=2)
    vnet = variational(model, rank=2, learn_diag=True)
    with torch.no_grad():
        for p in vnet.posteriors.values():
            p.weight_factors.zero_()
            p.bias_factors.zero_()
            p.weight_log_var.fill_(-math.inf)
            p.bias_log_var.fill_(-math.inf)
    x, y = torch.randn(50, 8), torch.randint(0, 4, (50,))
    det = F.log_softmax(model.eval()(x), dim=1)
    torch.testing.assert_close(
        predictive_log_probs(vnet.eval(), x, samples=1), det, atol=1e-6, rtol=0
    )
    a, b = calibrate(vnet, (x, y), samples=1), calibrate(model, (x, y))
    assert a.mc_samples == 1 and b.mc_samples == 0
    for k in ("accuracy", "nll", "brier", "ece"):
        assert getattr(a, k) == pytest.approx(getattr(b, k), abs=1e-6)


def test_predictive_averages_probabilities_by_log_sum_exp():
    torch.manual_seed(0)
    vnet = variational(
        zoo.build("mlp", input_dim=4, num_classes=3, width=6, depth=1), q_init_logvar=-1.0
    )
    x = torch.randn(7, 4)
    vnet.reseed(11)
    got = predictive_log_probs(vnet.eval(), x, samples=5)
    vnet.reseed(11)
    with vnet.sampled():
        probs = torch.stack([F.softmax(vnet(x), 1) for _ in range(5)]).mean(0)
    torch.testing.assert_close(got.exp(), probs, atol=1e-6, rtol=1e-5)
    with vnet.mean_network():
        torch.testing.assert_close(vnet(x), vnet.net(x))


def test_elbo_is_nll_plus_kl_over_n_and_resume_repeats_the_run():
    torch.manual_seed(0)
    X, y = torch.randn(100, 6), torch.randint(0, 3, (100,))

    def fresh():
        m = zoo.build("mlp", "w-asym", input_dim=6, num_classes=3, width=8, depth=1, seed=4)
        return VariationalTrainer(
            variational(m, rank=2, seed=4), X, y, batch_size=32, lr=1e-2, seed=4
        )

    full = fresh().run(24, log_every=6, progress=False)
    np.testing.assert_allclose(full.elbo, -(full.nll + full.kl), rtol=1e-12)
    saved = {}
    t = fresh()
    t.run(
        24,
        log_every=6,
        on_log=lambda tr: saved.setdefault(tr.step, tr.state_dict()),
        progress=False,
    )
    resumed = fresh()
    resumed.load_state_dict(saved[12])
    again = resumed.run(24, log_every=6, progress=False)
    for name in ("step", "elbo", "nll", "kl", "accuracy"):
        np.testing.assert_array_equal(getattr(again, name), getattr(full, name))


def test_bad_settings_are_one_line_errors():
    m = zoo.build("mlp", input_dim=3, num_classes=2, width=2, depth=1)
    with pytest.raises(UserError, match="above the size of layer lins.1"):
        variational(m, rank=7)  # lins.1 has 2 x 2 weights + 2 biases = 6 entries
    with pytest.raises(UserError, match="prior-precision must be a positive"):
        variational(m, prior_precision=-1.0)
    with pytest.raises(UserError, match="prior-precision"):
        PosteriorSettings(prior_precision=0.0).check()
    with pytest.raises(UserError, match="at least 1"):
        predictive_log_probs(variational(m), torch.randn(2, 3), samples=0)
