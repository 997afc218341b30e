"""The analytic Hessian-vector products of chains of dense layers (landscape.chain_hvp),
against dense float64 Hessians from ``torch.autograd.functional.hessian`` and against the
operator's autograd products; and every way a model is refused (double backward then)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from checkpoints.zoo import build
from landscape import HessianOperator, hessian_eigenvalues
from landscape.errors import UserError
from landscape.evaluation import evaluate


def dense_hessian(model: nn.Module, X, y, op: HessianOperator) -> torch.Tensor:
    """The Hessian of the sample-mean loss in the operator's coordinates, by autograd (float64)."""
    theta = op.view.get().detach()

    def loss(t):
        out = torch.func.functional_call(model, op.view.functional(t), (X,), strict=False)
        if y.is_floating_point():
            per = ((out - y.reshape(out.shape)) ** 2).sum(1)
        else:
            per = F.cross_entropy(out, y, reduction="none")
        return per.mean()

    return torch.autograd.functional.hessian(loss, theta)


class Functional(nn.Module):
    """A plain module whose forward uses torch functions and a flatten method: traced by fx."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 9), nn.Linear(9, 9), nn.Linear(9, 4)
        self.norm = nn.LayerNorm(9, bias=False)

    def forward(self, x):
        x = torch.tanh(self.a(x.flatten(1)))
        x = F.gelu(self.norm(self.b(x)), approximate="tanh")
        return self.c(torch.relu(x))


def _bn_model():
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Sigmoid(), nn.Linear(8, 4))
    with torch.no_grad():
        m[1].running_mean.normal_()
        m[1].running_var.uniform_(0.5, 2.0)
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.normal_()
    return m


MODELS = {
    "sequential-gelu-tanh": lambda: nn.Sequential(
        nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 4)
    ),
    "flatten-layernorm-silu-leaky": lambda: nn.Sequential(
        nn.Flatten(),
        nn.Linear(6, 8),
        nn.LayerNorm(8),
        nn.SiLU(),
        nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.1)),
        nn.Dropout(0.3),
        nn.Linear(8, 4),
    ),
    "layernorm-without-affine-relu": lambda: nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8, elementwise_affine=False), nn.ReLU(), nn.Linear(8, 4)
    ),
    "batchnorm-eval-sigmoid": _bn_model,
    "functional-forward": Functional,
    "zoo-mlp": lambda: build("mlp", input_dim=6, width=8, depth=2, num_classes=4, seed=1),
    "zoo-mlp-w-asym": lambda: build(
        "mlp", input_dim=6, width=8, depth=2, num_classes=4, seed=1, variant="w-asym"
    ),
    "zoo-mlp-sigma-asym": lambda: build(
        "mlp", input_dim=6, width=8, depth=2, num_classes=4, seed=1, variant="sigma-asym"
    ),
    "zoo-mlp-batchnorm-tanh": lambda: build(
        "mlp", input_dim=6, width=8, depth=2, num_classes=4, seed=1, norm="batch", activation="tanh"
    ),
}


def _data(classes: bool, n: int = 23, shape=(6,)):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    y = (
        torch.randint(0, 4, (n,), generator=g)
        if classes
        else torch.randn(n, 4, generator=g, dtype=torch.float64)
    )
    return X, y


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("loss", ["classification", "squared_error", "auto"])
def test_analytic_products_equal_the_dense_hessian(name, loss):
    torch.manual_seed(0)
    model = MODELS[name]().double().eval()
    classes = loss == "classification" or (loss == "auto" and name != "functional-forward")
    X, y = _data(classes, shape=(2, 3) if name.startswith("flatten") else (6,))
    op = HessianOperator(model, (X, y), objective=loss, batch_size=10)  # three batches
    assert op.implementation == "analytic", op.fallback
    H = dense_hessian(model, X, y, op)
    g = torch.Generator().manual_seed(1)
    V = torch.randn(op.n, 11, generator=g, dtype=torch.float64)  # a block of 8, then 3
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matvec(V[:, 0]), H @ V[:, 0], rtol=1e-10, atol=1e-12)
    assert op.loss == pytest.approx(evaluate(model, (X, y), objective=loss).loss, rel=1e-12)
    assert op.hvps == 12


def test_fixed_entries_and_parameter_subsets_match_autograd():
    """W-Asym fixed entries are not coordinates; a subset of parameters is a block of H."""
    model = MODELS["zoo-mlp-w-asym"]().double().eval()
    X, y = _data(True)
    for params in (None, "lins.1", ["norms.*", "lins.2.bias"]):
        ours = HessianOperator(model, (X, y), params=params)
        ref = HessianOperator(model, (X, y), params=params, hvp="double-backward")
        assert ours.implementation == "analytic" and ref.implementation == "double-backward"
        assert ours.n == ref.n
        V = torch.randn(ours.n, 3, dtype=torch.float64)
        torch.testing.assert_close(ours.matmat(V), ref.matmat(V), rtol=1e-10, atol=1e-12)
    full = HessianOperator(model, (X, y))
    assert full.n < sum(p.numel() for p in model.parameters())  # fixed entries left out


def test_states_recomputed_over_the_budget_give_the_same_products(monkeypatch):
    from landscape import hessian_operator

    model = MODELS["zoo-mlp"]().double().eval()
    X, y = _data(True)
    kept = HessianOperator(model, (X, y), batch_size=8)
    assert kept.cached  # prepared here, under the real budget
    monkeypatch.setattr(hessian_operator, "CACHE_BYTES_CPU", 0)
    redone = HessianOperator(model, (X, y), batch_size=8)
    assert not redone.cached
    assert redone.implementation == "analytic"
    V = torch.randn(kept.n, 2, dtype=torch.float64)
    torch.testing.assert_close(kept.matmat(V), redone.matmat(V), rtol=1e-12, atol=1e-14)


def test_eigenvalues_with_analytic_products_match_double_backward():
    """The whole solve on a trained-looking float32 MLP: the top eigenvalues agree to the tolerance."""
    torch.manual_seed(0)
    model = build("mlp", input_dim=16, width=32, depth=2, num_classes=5, seed=0).eval()
    X = torch.randn(300, 16)
    y = torch.randint(0, 5, (300,))
    a = hessian_eigenvalues(HessianOperator(model, (X, y)), k=3, which="both", tol=1e-5)
    b = hessian_eigenvalues(
        HessianOperator(model, (X, y), hvp="double-backward"), k=3, which="both", tol=1e-5
    )
    torch.testing.assert_close(
        torch.as_tensor(a.eigenvalues), torch.as_tensor(b.eigenvalues), rtol=1e-3, atol=1e-5
    )


def test_repeated_products_are_bitwise_equal():
    """No timing decides how the analytic products batch: the same call gives the same numbers."""
    model = MODELS["zoo-mlp"]().eval()
    X, y = _data(True)
    op = HessianOperator(model, (X.float(), y))
    V = torch.randn(op.n, 5)
    first = op.matmat(V)
    for _ in range(3):
        assert torch.equal(op.matmat(V), first)


# ---------------------------------------------------------------------------- refusals
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 4)

    def forward(self, x):
        return self.b(x + torch.tanh(self.a(x)))


class Doubled(nn.Linear):
    """A Linear subclass whose forward is not nn.Linear's."""

    def forward(self, x):
        return 2 * super().forward(x)


def _hooked():
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    m[1].register_forward_hook(lambda mod, inp, out: out * 0.5)
    return m


def _hooked_top():
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    m.register_forward_hook(lambda mod, inp, out: out + 1.0)
    return m


class ShiftedAsym(nn.Linear):
    """Looks like a W-Asym layer (``effective_weight``, ``mask``, ``fixed``) but adds a
    constant in its forward: the plan accepts it, the numeric check must not."""

    def __init__(self, i, o):
        super().__init__(i, o)
        self.register_buffer("mask", torch.ones(o, i))
        self.register_buffer("fixed", torch.zeros(o, i))

    def effective_weight(self):
        return self.weight * self.mask + self.fixed

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias) + 1.0


REFUSED = {
    "residual connection": (Residual, "not a chain"),
    "custom Linear forward": (lambda: nn.Sequential(Doubled(6, 4)), "Doubled"),
    "hook on a layer": (_hooked, "Tanh with a forward hook"),
    "hook on the model": (_hooked_top, "does not reproduce the model's outputs"),
    "plan passes, outputs differ": (
        lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), ShiftedAsym(8, 4)),
        "does not reproduce the model's outputs",
    ),
    "linear on rows of tokens": (
        lambda: nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 4)),
        "Linear on a 3-D input",
    ),
    "convolution": (
        lambda: nn.Sequential(
            nn.Unflatten(1, (1, 6)), nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4)
        ),
        "Unflatten",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_is_not_a_chain_falls_back_to_double_backward(case):
    make, why = REFUSED[case]
    model = make().double().eval()
    X, y = _data(True, shape=(2, 3) if "tokens" in case else (6,))
    op = HessianOperator(model, (X, y))
    assert op.implementation == "double-backward"
    assert op.fallback is not None and re.search(why, op.fallback), op.fallback
    H = dense_hessian(model, X, y, op)
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-11)
    with pytest.raises(UserError, match="hvp='analytic' needs a chain"):
        HessianOperator(model, (X, y), hvp="analytic").matvec(v)


def test_losses_other_than_the_built_ins_fall_back():
    model = MODELS["zoo-mlp"]().double().eval()
    X, y = _data(True)

    def my_loss(outputs, batch):
        return F.cross_entropy(outputs, batch.targets, reduction="none")

    op = HessianOperator(model, (X, y), objective=my_loss)
    assert op.implementation == "double-backward"
    assert "not a built-in" in op.fallback
    ref = HessianOperator(model, (X, y))
    v = torch.randn(op.n, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), ref.matvec(v), rtol=1e-10, atol=1e-12)
