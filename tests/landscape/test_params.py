import pytest
import torch
from torch import nn

from checkpoints import zoo
from landscape.errors import UserError
from landscape.params import ParamView, check_same_family, fixed_buffers, state_buffers


def test_masked_entries_are_not_coordinates():
    m = zoo.build("mlp", "w-asym", input_dim=16, width=8)
    view = ParamView(m)
    trainable = sum(
        int(p.numel()) for n, p in m.named_parameters() if "lins" not in n or n.endswith("bias")
    )
    trainable += sum(int(lin.mask.sum()) for lin in m.lins)
    assert view.numel == trainable


def test_get_set_round_trip_keeps_fixed_entries():
    m = zoo.build("mlp", "w-asym", input_dim=16, width=8)
    view = ParamView(m)
    fixed_before = m.lins[0].weight[m.lins[0].mask == 0].clone()
    theta = torch.randn(view.numel)
    view.set_(theta)
    assert torch.equal(view.get(), theta)
    assert torch.equal(m.lins[0].weight[m.lins[0].mask == 0], fixed_before)
    full = view.unflatten(theta)
    assert (full["lins.0.weight"][m.lins[0].mask == 0] == 0).all()
    assert torch.equal(view.flatten(full), theta)


def test_functional_matches_set_and_is_differentiable():
    m = zoo.build("mlp", "w-asym", input_dim=16, width=8)
    view = ParamView(m)
    theta = view.get() + 0.1 * torch.randn(view.numel)
    x = torch.randn(4, 16)
    params = view.functional(theta.requires_grad_())
    out = torch.func.functional_call(m, params, (x,))
    out.sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0
    view.set_(theta.detach())
    assert torch.allclose(out, m(x))


def test_selection_by_pattern():
    m = zoo.build("mlp", input_dim=16, width=8)
    assert ParamView(m, "lins.0").names == ["lins.0.weight", "lins.0.bias"]
    assert ParamView(m, "*.bias").numel == sum(
        p.numel() for n, p in m.named_parameters() if n.endswith(".bias")
    )
    assert ParamView(m, "re:^norms").names == [
        f"norms.{i}.{k}" for i in range(3) for k in ("weight", "bias")
    ]
    with pytest.raises(UserError, match="no trainable parameters"):
        ParamView(m, "nothing.here")


def test_buffer_kinds_and_family_check():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    assert set(state_buffers(net)) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert fixed_buffers(net) == {}
    a = zoo.build("mlp", "w-asym", input_dim=16, width=8, mask_seed=0)
    b = zoo.build("mlp", "w-asym", input_dim=16, width=8, mask_seed=1)
    with pytest.raises(UserError, match="not one network family"):
        check_same_family(a, b)
    with pytest.raises(UserError, match="different shapes"):
        check_same_family(
            zoo.build("mlp", input_dim=16, width=8), zoo.build("mlp", input_dim=16, width=9)
        )
