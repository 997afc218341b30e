"""Variational Bayesian networks: a low-rank plus diagonal Gaussian posterior per layer (ELRG).

:func:`variational` turns a model (any ``nn.Module``, zoo models included) into a
:class:`VariationalNet`: every ``nn.Linear`` and ``nn.Conv2d`` (W-Asym layers included)
gets a Gaussian posterior over its *trainable* entries (weight and bias), after Tomczak et
al. 2020 (ELRG)::

    q(w) = N(mu, Sigma),    Sigma = D + (1/r) V^T V,    V in R^{r x d},  D diagonal

where ``mu`` are the layer's own parameters (the network's weights are the posterior mean),
``V`` holds ``r`` factors (``rank``) and ``D = exp(log_var)`` is either fixed at
``exp(q_init_logvar)`` (the paper's runs) or learned. ``rank=0`` with ``learn_diag=True`` is
mean-field Gaussian VI. Fixed W-Asym entries (``mask == 0``) are not random variables: they
carry no variance, no factor entry and no prior, and stay at their fixed values. Norm-layer
affine parameters and FiGLU matrices are not variational (point estimates and constants).

Noise enters by the local reparameterisation trick: for a layer ``y = W x + b`` and one
input ``x``, ``y`` is Gaussian with mean ``mu_W x + mu_b`` and covariance
``diag(D_W x^2 + D_b) + (1/r) sum_k (V_k x + v_k)(V_k x + v_k)^T``; a sample is drawn as::

    y = mu_W x + mu_b + sqrt(D_W x^2 + D_b) * xi + sqrt(1/r) sum_k eps_k (V_k x + v_k)

with ``xi ~ N(0, I)`` per output and ``eps ~ N(0, I_r)`` per input sample (convolutions: per
output position for ``xi``, per image for ``eps``), so each sample of a batch sees its own
weights. The prior is ``N(0, s I)`` with ``s = 1 / (lambda * fan)`` per layer
(``prior_precision`` = lambda; ``fan`` the fan-in, or 1 with ``prior_scaling="none"``). The
KL term has the closed form (matrix determinant lemma, ``d`` trainable entries)::

    KL(q || p) = 1/2 [ (tr D + ||V||_F^2 / r) / s + ||mu||^2 / s - d + d log s
                       - sum log D - log det(I_r + (1/r) V D^-1 V^T) ]

Training (:class:`VariationalTrainer`) minimises the negative ELBO per sample,
``NLL + KL / N`` (N the training-set size), with one Monte Carlo sample per step by
default; the predictive (:func:`predictive_log_probs`) averages S samples by log-sum-exp.
Nothing here reads or writes files.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import UserError
from .evaluation import check_targets, sample_losses
from .params import fixed_entry_mask

#: how the prior variance of a layer scales: s = 1 / (lambda * fan)
PRIOR_SCALINGS = ("fan_in", "public", "none")
#: scale of the initial low-rank factors, relative to std(mean weight) / sqrt(rank)
FACTOR_INIT = 0.5
BIAS_FACTOR_INIT = 0.01


@dataclass(frozen=True)
class PosteriorSettings:
    """The variational family and prior.

    ``rank`` r of the low-rank part; ``learn_diag``: learn D (else fixed at
    ``exp(q_init_logvar)``); ``prior_precision`` lambda of the prior ``N(0, 1 / (lambda * fan))``;
    ``prior_scaling``: ``fan_in`` (fan = the entries feeding one output: in_features, or
    in_channels x k x k), ``public`` (the paper's public code: out_features of a Linear layer,
    in_channels of a Conv layer) or ``none`` (fan = 1).
    """

    rank: int = 4
    learn_diag: bool = False
    q_init_logvar: float = -10.0
    prior_precision: float = 0.01
    prior_scaling: str = "fan_in"

    def check(self) -> PosteriorSettings:
        """Raise :class:`UserError` for settings no posterior can have."""
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise UserError(f"--rank must be an integer >= 0, got {self.rank!r}")
        p = self.prior_precision
        if not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
            raise UserError(
                f"--prior-precision must be a positive number (lambda of the prior "
                f"N(0, 1/(lambda d))), got {p!r}"
            )
        if not math.isfinite(self.q_init_logvar):
            raise UserError(f"--q-init-logvar must be finite, got {self.q_init_logvar!r}")
        if self.prior_scaling not in PRIOR_SCALINGS:
            raise UserError(
                f"unknown prior scaling {self.prior_scaling!r}: use one of {', '.join(PRIOR_SCALINGS)}"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fan(layer: nn.Module, scaling: str) -> int:
    if scaling == "none":
        return 1
    w = layer.weight
    if scaling == "public":
        return int(w.shape[0] if isinstance(layer, nn.Linear) else w.shape[1])
    return int(w[0].numel())


class LayerPosterior(nn.Module):
    """The Gaussian posterior of one Linear/Conv2d layer's trainable entries (its mean is the layer).

    Parameters: ``weight_factors`` (r, *weight.shape) and ``bias_factors`` (r, out) when
    ``rank > 0``; ``weight_log_var`` / ``bias_log_var`` when the diagonal is learned. Buffer
    ``weight_mask``: 1 where an entry is trainable (0 at fixed W-Asym entries).
    """

    def __init__(
        self,
        layer: nn.Linear | nn.Conv2d,
        name: str,
        settings: PosteriorSettings,
        mask: Tensor | None,
        generator: torch.Generator,
    ):
        super().__init__()
        w = layer.weight
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise UserError(f"layer {name}: grouped convolutions have no variational version here")
        self.name, self.kind = name, "linear" if isinstance(layer, nn.Linear) else "conv"
        m = torch.ones_like(w) if mask is None else mask.to(w.dtype)
        self.register_buffer("weight_mask", m.detach().clone())
        self.has_bias = layer.bias is not None
        self.rank = int(settings.rank)
        self.learn_diag = bool(settings.learn_diag)
        self.q_init_logvar = float(settings.q_init_logvar)
        self.size = int(m.sum()) + (layer.bias.numel() if self.has_bias else 0)
        fan = _fan(layer, settings.prior_scaling)
        self.prior_variance = 1.0 / (float(settings.prior_precision) * fan)
        if self.rank > self.size:
            raise UserError(
                f"--rank {self.rank} is above the size of layer {name} ({self.size} trainable "
                "entries): lower --rank"
            )
        out = self.out = int(w.shape[0])
        if self.rank > 0:
            trainable = w.detach()[m.bool()]
            std = float(trainable.std()) if trainable.numel() > 1 else 1.0
            scale = FACTOR_INIT * std / math.sqrt(self.rank)
            z = torch.randn((self.rank, *w.shape), generator=generator).to(w)
            self.weight_factors = nn.Parameter(scale * z * m)
            if self.has_bias:
                zb = torch.randn((self.rank, out), generator=generator).to(w)
                self.bias_factors = nn.Parameter(BIAS_FACTOR_INIT * zb)
        if self.learn_diag:
            self.weight_log_var = nn.Parameter(torch.full_like(w, self.q_init_logvar))
            if self.has_bias:
                self.bias_log_var = nn.Parameter(torch.full((out,), self.q_init_logvar).to(w))

    # -- the variance parts ----------------------------------------------------------------
    def diag_weight(self) -> Tensor:
        """D on the weight entries, zero at fixed entries."""
        if self.learn_diag:
            return self.weight_log_var.exp() * self.weight_mask
        return math.exp(self.q_init_logvar) * self.weight_mask

    def diag_bias(self) -> Tensor | None:
        if not self.has_bias:
            return None
        if self.learn_diag:
            return self.bias_log_var.exp()
        return self.weight_mask.new_full((self.out,), math.exp(self.q_init_logvar))

    def factors(self) -> Tensor | None:
        """V on the weight entries (r, *weight.shape), zero at fixed entries."""
        return self.weight_factors * self.weight_mask if self.rank > 0 else None

    # -- forward noise ---------------------------------------------------------------------
    def _layer_op(self, layer: nn.Module, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.kind == "linear":
            if x.dim() != 2:
                raise UserError(
                    f"layer {self.name}: variational Linear layers take (batch, features) inputs, "
                    f"got shape {tuple(x.shape)}"
                )
            return F.linear(x, w, b)
        return layer._conv_forward(x, w, b)

    def noise(self, layer: nn.Module, x: Tensor, generator: torch.Generator) -> Tensor:
        """One draw of ``y - E[y]`` for the batch ``x`` (local reparameterisation, see the module doc)."""
        var = self._layer_op(layer, x * x, self.diag_weight(), self.diag_bias())
        # clamp: a zero variance (fixed entries only) must not give an infinite sqrt gradient
        xi = torch.randn(var.shape, generator=generator, device=var.device, dtype=var.dtype)
        out = var.clamp_min(1e-30).sqrt() * xi
        if self.rank == 0:
            return out
        r, n = self.rank, x.shape[0]
        v = self.factors()
        lr = self._layer_op(layer, x, v.reshape(r * v.shape[1], *v.shape[2:]), None)
        lr = lr.reshape(n, r, -1, *lr.shape[2:])  # (n, r, out, ...)
        if self.has_bias:
            lr = lr + self.bias_factors.reshape(1, r, -1, *(1,) * (lr.dim() - 3))
        eps = torch.randn((n, r), generator=generator, device=x.device, dtype=x.dtype)
        eps = eps.reshape(n, r, *(1,) * (lr.dim() - 2))
        return out + (lr * eps).sum(1) / math.sqrt(r)

    # -- KL --------------------------------------------------------------------------------
    def kl(self, layer: nn.Module) -> Tensor:
        """``KL(q || N(0, s I))`` over the layer's trainable entries (closed form, module doc)."""
        s = self.prior_variance
        mw = layer.weight * self.weight_mask
        mean_sq = (mw * mw).sum()
        d_w = self.diag_weight()
        tr = d_w.sum()
        if self.learn_diag:
            sum_log = (self.weight_log_var * self.weight_mask).sum()
        else:
            sum_log = self.weight_mask.sum() * self.q_init_logvar
        if self.has_bias:
            mean_sq = mean_sq + (layer.bias * layer.bias).sum()
            d_b = self.diag_bias()
            tr = tr + d_b.sum()
            sum_log = sum_log + (
                self.bias_log_var.sum() if self.learn_diag else d_b.numel() * self.q_init_logvar
            )
        d = self.size
        total = tr / s + mean_sq / s - d + d * math.log(s) - sum_log
        if self.rank > 0:
            r = self.rank
            v = self.factors().reshape(r, -1)
            # 1/D on trainable entries, 0 at fixed ones (no 1/0 anywhere: its gradient would be NaN)
            m = self.weight_mask.reshape(-1)
            dinv = m / (d_w.reshape(-1) + (1 - m))
            vv = v * v
            inner = (v * dinv) @ v.T
            if self.has_bias:
                vb = self.bias_factors
                vv_b = (vb * vb).sum()
                inner = inner + (vb / self.diag_bias()) @ vb.T
            else:
                vv_b = 0.0
            total = total + (vv.sum() + vv_b) / (r * s)
            eye = torch.eye(r, dtype=v.dtype, device=v.device)
            chol = torch.linalg.cholesky(eye + inner / r)
            total = total - 2 * chol.diagonal().log().sum()
        return 0.5 * total

    def covariance(self, layer: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean, factor, diag)`` over the trainable entries (weight entries in row-major
        order, then the bias), with ``Sigma = diag + factor factor^T``, ``factor = V^T / sqrt(r)``
        (shape (d, r)): the arguments of ``torch.distributions.LowRankMultivariateNormal``."""
        sel = self.weight_mask.reshape(-1) > 0
        mean = [layer.weight.reshape(-1)[sel]]
        diag = [self.diag_weight().reshape(-1)[sel]]
        r = max(self.rank, 1)
        fac = [
            (self.factors().reshape(self.rank, -1)[:, sel].T / math.sqrt(r))
            if self.rank
            else mean[0].new_zeros(int(sel.sum()), 1)
        ]
        if self.has_bias:
            mean.append(layer.bias.reshape(-1))
            diag.append(self.diag_bias())
            fac.append(
                self.bias_factors.T / math.sqrt(r)
                if self.rank
                else mean[0].new_zeros(layer.bias.numel(), 1)
            )
        return torch.cat(mean), torch.cat(fac), torch.cat(diag)


class _NoiseHook:
    """Forward hook adding the posterior noise to a layer's output while sampling is on."""

    def __init__(self, owner: VariationalNet, key: str):
        self.owner, self.key = owner, key

    def __call__(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        owner = self.owner
        if not owner.sampling:
            return None
        return output + owner.posteriors[self.key].noise(module, args[0], owner.generator)


def _key(name: str) -> str:
    return name.replace(".", "-")


class VariationalNet(nn.Module):
    """A network with a Gaussian posterior over its Linear/Conv2d layers (see the module doc).

    ``net`` is the mean network (its parameters are the posterior means); ``forward`` draws a
    fresh weight sample per input while :attr:`sampling` is true and is the mean network
    otherwise (:meth:`mean_network` as a context). ``posteriors`` holds one
    :class:`LayerPosterior` per layer, keyed by the layer's name with dots as dashes.
    """

    def __init__(self, net: nn.Module, settings: PosteriorSettings, *, seed: int = 0):
        super().__init__()
        settings.check()
        self.net = net
        self.settings = settings
        self.posteriors = nn.ModuleDict()
        self.layer_names: dict[str, str] = {}
        gen = torch.Generator().manual_seed(int(seed) * 7919 + 101)
        for name, m in net.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                mask = fixed_entry_mask(net, f"{name}.weight", m.weight)
                k = _key(name)
                self.posteriors[k] = LayerPosterior(m, name, settings, mask, gen)
                self.layer_names[k] = name
                m.register_forward_hook(_NoiseHook(self, k))
        if not self.layer_names:
            raise UserError(
                "the model has no Linear or Conv2d layer: nothing to put a posterior on"
            )
        self.sampling = True
        self._noise_seed = int(seed)
        self.generator = torch.Generator()
        self.reseed(seed)

    @property
    def config(self) -> dict[str, Any]:
        return getattr(self.net, "config", {})

    def layer(self, key: str) -> nn.Module:
        return self.net.get_submodule(self.layer_names[key])

    def reseed(self, seed: int) -> None:
        """Seed the noise generator (on the model's device): the same seed draws the same noise."""
        dev = next(self.net.parameters()).device
        if self.generator.device != dev:
            self.generator = torch.Generator(device=dev)
        self._noise_seed = int(seed) & (2**63 - 1)
        self.generator.manual_seed(self._noise_seed)

    def _apply(self, *args, **kwargs):  # keep the noise generator on the parameters' device
        out = super()._apply(*args, **kwargs)
        self.reseed(self._noise_seed)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def kl(self) -> Tensor:
        """``sum over layers KL(q_l || p_l)`` (nats)."""
        return sum(p.kl(self.layer(k)) for k, p in self.posteriors.items())

    def mean_network(self):
        """Context in which ``forward`` is the mean network (no noise)."""
        return _Sampling(self, False)

    def sampled(self):
        """Context in which ``forward`` draws from the posterior."""
        return _Sampling(self, True)

    def variational_parameters(self) -> int:
        """Entries of the posterior over trainable entries: means, factors (rank x size) and,
        when learned, log-variances."""
        return sum(
            p.size * (1 + p.rank + (1 if p.learn_diag else 0)) for p in self.posteriors.values()
        )


class _Sampling:
    def __init__(self, net: VariationalNet, on: bool):
        self.net, self.on = net, on

    def __enter__(self):
        self.was, self.net.sampling = self.net.sampling, self.on
        return self.net

    def __exit__(self, *exc):
        self.net.sampling = self.was
        return False


def variational(
    model: nn.Module,
    settings: PosteriorSettings | None = None,
    *,
    seed: int = 0,
    copy_model: bool = True,
    **kwargs: Any,
) -> VariationalNet:
    """A :class:`VariationalNet` whose posterior means start at ``model``'s parameters.

    ``settings`` or its fields as keywords (``rank=4, learn_diag=False, q_init_logvar=-10,
    prior_precision=0.01, prior_scaling="fan_in"``); ``seed`` draws the initial factors and the
    noise. The model is copied unless ``copy_model=False``.
    """
    if settings is None:
        settings = PosteriorSettings(**kwargs)
    elif kwargs:
        raise TypeError("give settings or keywords, not both")
    net = copy.deepcopy(model) if copy_model else model
    return VariationalNet(net, settings, seed=seed)


# ----------------------------------------------------------------------------- prediction
@torch.no_grad()
def predictive_log_probs(model: nn.Module, x: Tensor, samples: int = 25) -> Tensor:
    """Log predictive probabilities ``(N, C)`` for inputs ``x``.

    A :class:`VariationalNet`: ``log p(y|x) = logsumexp_s log softmax(f_{w_s}(x))_y - log S``
    over ``S = samples`` posterior draws (each input its own weights); any other model:
    ``log softmax(f(x))`` (S is ignored). The model's sampling state is left as it was.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise UserError(f"the number of Monte Carlo samples S must be at least 1, got {samples!r}")
    if not isinstance(model, VariationalNet):
        return F.log_softmax(model(x).float(), dim=1)
    acc = None
    with model.sampled():
        for _ in range(samples):
            lp = F.log_softmax(model(x).float(), dim=1)
            acc = lp if acc is None else torch.logaddexp(acc, lp)
    return acc - math.log(samples)


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingCurves:
    """Training curves recorded every ``log_every`` steps, each the mean over its window.

    ``elbo = -(nll + kl)`` per sample; ``nll``: the data term (cross-entropy of the sampled
    network on the batch); ``kl``: ``KL(q || p) / N``; ``accuracy``: of the sampled network on
    the training batches; ``seconds``: training time up to the step.
    """

    step: np.ndarray
    elbo: np.ndarray
    nll: np.ndarray
    kl: np.ndarray
    accuracy: np.ndarray
    seconds: np.ndarray

    @property
    def final_elbo(self) -> float:
        return float(self.elbo[-1]) if len(self.elbo) else math.nan

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "step": self.step,
                "elbo": self.elbo,
                "nll": self.nll,
                "kl": self.kl,
                "accuracy": self.accuracy,
                "seconds": self.seconds,
            }
        )


@dataclass
class _History:
    step: list[int] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def step_seed(seed: int, step: int) -> int:
    """The noise seed of one training step: a step's noise never depends on where a run resumed."""
    return (int(seed) * 1_000_003 + int(step) * 7_919 + 12_345) & (2**63 - 1)


class VariationalTrainer:
    """Minimises ``NLL + KL / N`` (the negative ELBO per sample) with Adam.

    Batches of ``batch_size`` come from a permutation of the training set per epoch (seeded
    by ``seed`` and the epoch; an epoch is ``N // batch_size`` batches), and the noise of step
    ``t`` from :func:`step_seed`, so a run resumed from :meth:`state_dict` at any logged step
    repeats the uninterrupted run exactly. ``mc_samples`` forward passes per step average
    the data term. ``num_data`` is N in ``KL / N`` (default: the training-set size).
    """

    def __init__(
        self,
        model: VariationalNet,
        X: Tensor,
        y: Tensor,
        *,
        batch_size: int = 250,
        lr: float = 5e-4,
        num_data: int | None = None,
        mc_samples: int = 1,
        seed: int = 0,
    ):
        if y.is_floating_point():
            raise UserError("variational training needs integer class labels")
        for name, v in (("--batch-size", batch_size), ("--mc-samples", mc_samples)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise UserError(f"--lr must be a positive number, got {lr!r}")
        self.model, self.X, self.y = model, X, y
        self.n = int(X.shape[0])
        self.batch_size = min(int(batch_size), self.n)
        self.steps_per_epoch = max(1, self.n // self.batch_size)
        self.num_data = int(num_data or self.n)
        if self.num_data < 1:
            raise UserError(f"--num-data must be positive, got {num_data}")
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.optimizer = torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad], lr=float(lr)
        )
        self.step = 0
        self.history = _History()
        self.seconds = 0.0
        self._perm: tuple[int, Tensor] | None = None
        with torch.no_grad(), model.mean_network():
            was = model.training
            model.eval()
            check_targets(model(X[:2]), (int(y.min()), int(y.max())))
            model.train(was)

    def _batch(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 7_919 + 104_729 * epoch + 1)
            self._perm = (epoch, torch.randperm(self.n, generator=g).to(self.X.device))
        idx = self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]
        return self.X[idx], self.y[idx]

    def train_step(self) -> tuple[float, float, float, float]:
        """One optimiser step; returns ``(elbo, nll, kl / N, accuracy)`` of that step."""
        model = self.model
        x, y = self._batch(self.step)
        model.reseed(step_seed(self.seed, self.step))
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nll, correct = 0.0, 0.0
        with model.sampled():
            for _ in range(self.mc_samples):
                out = model(x)
                nll = nll + sample_losses(out, y).mean()
                correct = correct + (out.argmax(1) == y).float().mean()
        nll = nll / self.mc_samples
        kl = model.kl() / self.num_data
        loss = nll + kl
        loss.backward()
        self.optimizer.step()
        self.step += 1
        nll_v, kl_v, acc_v = (
            float(v) for v in torch.stack([nll, kl, correct / self.mc_samples]).detach().cpu()
        )
        return -(nll_v + kl_v), nll_v, kl_v, acc_v

    def run(
        self,
        steps: int,
        *,
        log_every: int = 100,
        on_log: Callable[[VariationalTrainer], None] | None = None,
        progress: bool = True,
        desc: str = "bnn",
    ) -> TrainingCurves:
        """Train until ``steps`` steps in total (from wherever the trainer stands).

        Every ``log_every`` steps (and at the last) the window means join the curves and
        ``on_log(self)`` runs (the study saves its resumable state there).
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"--steps must be a positive integer, got {steps!r}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise UserError(f"--log-every must be a positive integer, got {log_every!r}")
        window: list[tuple[float, float, float, float]] = []
        bar = tqdm(total=steps, initial=self.step, desc=desc, leave=False, disable=not progress)
        t0 = time.perf_counter()
        while self.step < steps:
            window.append(self.train_step())
            bar.update(1)
            if self.step % log_every == 0 or self.step == steps:
                w = np.asarray(window, dtype=float).mean(0)
                self.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                h = self.history
                h.step.append(self.step)
                for lst, v in zip((h.elbo, h.nll, h.kl, h.accuracy), w):
                    lst.append(float(v))
                h.seconds.append(self.seconds)
                window = []
                if not math.isfinite(h.elbo[-1]):
                    bar.close()
                    raise UserError(
                        f"the ELBO became NaN or Inf at step {self.step}: lower --lr or "
                        "--q-init-logvar, or raise --prior-precision"
                    )
                bar.set_postfix_str(f"elbo {h.elbo[-1]:.4g}", refresh=False)
                if on_log is not None:
                    on_log(self)
        bar.close()
        self.model.eval()
        return self.curves()

    def curves(self) -> TrainingCurves:
        h = self.history
        return TrainingCurves(*(np.asarray(v, dtype=float) for v in asdict(h).values()))

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of everything a resumed run needs (CPU tensor copies and plain values, for
        ``torch.save``; readable with ``weights_only=True``)."""
        return {
            "step": self.step,
            "seconds": self.seconds,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "history": {k: list(v) for k, v in asdict(self.history).items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.seconds = float(state.get("seconds", 0.0))
        self.history = _History(**{k: list(v) for k, v in state["history"].items()})
        self._perm = None


def iter_layers(model: VariationalNet) -> Iterator[tuple[str, nn.Module, LayerPosterior]]:
    """``(layer name, layer, posterior)`` for every variational layer."""
    for k, p in model.posteriors.items():
        yield model.layer_names[k], model.layer(k), p
