import subprocess
import sys

import pytest
import torch

from checkpoints import zoo
from checkpoints.asym import AsymConv2d, AsymLinear, FiGLU
from checkpoints.sources import DataSet
from checkpoints.train import TrainSettings, train_model
from landscape.errors import UserError


def _data(n=96, shape=(1, 8, 8), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataSet(
        torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)
    )


@pytest.mark.parametrize(
    "arch,kw",
    [
        ("mlp", dict(input_dim=64, width=32)),
        ("cnn", dict(channels=(8, 8))),
        ("resnet20", dict(in_channels=1, width=1)),
    ],
)
def test_fixed_entries_survive_adamw_with_weight_decay(arch, kw):
    model = zoo.build(arch, "w-asym", seed=3, **kw)
    layers = [m for m in model.modules() if isinstance(m, (AsymLinear, AsymConv2d))]
    assert layers, "W-Asym model without asymmetric layers"
    before = [(m.effective_weight().detach().clone(), m.mask.clone()) for m in layers]
    train_model(
        model,
        _data(),
        TrainSettings(epochs=3, lr=1e-2, weight_decay=0.5, batch_size=16),
        progress=False,
    )
    moved = 0
    for m, (w0, mask) in zip(layers, before):
        w1 = m.effective_weight().detach()
        fixed = mask == 0
        assert torch.equal(w1[fixed], w0[fixed]), "a fixed entry moved"
        moved += int((w1[~fixed] != w0[~fixed]).sum())
    assert moved > 0, "training changed nothing"


def test_fixed_entries_ignore_load_state_dict():
    model = zoo.build("mlp", "w-asym", input_dim=16, width=8)
    sd = model.state_dict()
    sd["lins.0.weight"] = torch.full_like(sd["lins.0.weight"], 7.0)
    model.load_state_dict(sd)
    lin = model.lins[0]
    eff = lin.effective_weight()
    assert torch.equal(eff[lin.mask == 0], lin.fixed[lin.mask == 0])
    assert (eff[lin.mask == 1] == 7.0).all()


def test_w_asym_row_counts_and_kappa_scale():
    model = zoo.build("mlp", "w-asym", input_dim=784, width=512)
    assert model.config["n_fix"] == [64, 64, 64, 256]
    assert model.config["kappa"] == [1.0, 1.0, 0.5, 0.25]
    for lin, n in zip(model.lins, [64, 64, 64, 256]):
        assert ((lin.mask == 0).sum(dim=1) == n).all()
    # fixed values are kappa * N(0, 1): the last layer's std is close to 0.25
    last = model.lins[3]
    assert abs(float(last.fixed[last.mask == 0].std()) - 0.25) < 0.02


def test_filter_masks_fix_whole_kernels():
    m = zoo.build("cnn", "w-asym", conv_mask="filter", channels=(8, 8))
    conv = m.convs[1]
    per_filter = conv.mask.sum(dim=(2, 3))  # (out, in): 0 or 9
    assert set(per_filter.unique().tolist()) <= {0.0, 9.0}
    assert ((per_filter == 0).sum(dim=1) == conv.n_fix).all()


def test_fixing_a_whole_row_is_refused():
    with pytest.raises(UserError, match="n_fix"):
        zoo.build("mlp", "w-asym", input_dim=8, width=8, n_fix=[8, 1, 1, 1])


_SNIPPET = (
    "import torch,sys; sys.path.insert(0, {root!r}); from checkpoints import zoo; "
    "m = zoo.build('mlp', '{v}', input_dim=16, width=8, mask_seed=5); "
    "print(repr(sorted((k, v.sum().item(), v.abs().sum().item()) for k, v in m.named_buffers())))"
)


@pytest.mark.parametrize("variant", ["w-asym", "sigma-asym"])
def test_masks_identical_across_processes(variant):
    import os

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = [
        subprocess.run(
            [sys.executable, "-c", _SNIPPET.format(root=root, v=variant)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    ]
    assert outs[0] == outs[1]
    assert ("mask" if variant == "w-asym" else "C") in outs[0]


def test_mask_seed_is_shared_across_training_seeds():
    a = zoo.build("mlp", "w-asym", input_dim=16, width=8, seed=0)
    b = zoo.build("mlp", "w-asym", input_dim=16, width=8, seed=1)
    assert torch.equal(a.lins[1].mask, b.lins[1].mask) and torch.equal(
        a.lins[1].fixed, b.lins[1].fixed
    )
    assert not torch.equal(a.lins[1].weight * a.lins[1].mask, b.lins[1].weight * b.lins[1].mask)
    c = zoo.build("mlp", "w-asym", input_dim=16, width=8, seed=0, mask_seed=1)
    assert not torch.equal(a.lins[1].mask, c.lins[1].mask)


def _permute_hidden(model, layer, perm):
    with torch.no_grad():
        lin, nxt = model.lins[layer], model.lins[layer + 1]
        lin.weight.copy_(lin.weight[perm])
        lin.bias.copy_(lin.bias[perm])
        norm = model.norms[layer]
        norm.weight.copy_(norm.weight[perm])
        norm.bias.copy_(norm.bias[perm])
        nxt.weight.copy_(nxt.weight[:, perm])


@pytest.mark.parametrize(
    "variant,changes", [("standard", False), ("w-asym", True), ("sigma-asym", True)]
)
def test_hidden_permutation_preserves_only_standard(variant, changes):
    model = zoo.build("mlp", variant, input_dim=16, width=12, seed=2)
    x = torch.randn(32, 16)
    with torch.no_grad():
        y0 = model(x)
        _permute_hidden(model, 1, torch.randperm(12, generator=torch.Generator().manual_seed(0)))
        diff = float((model(x) - y0).abs().max())
    if changes:
        assert diff > 1e-3
    else:
        assert diff < 1e-5


def test_figlu_is_not_elementwise():
    f = FiGLU(6, mask_seed=0, layer_index=0)
    x = torch.randn(4, 6)
    perm = torch.tensor([1, 0, 2, 3, 4, 5])
    assert not torch.allclose(f(x[:, perm]), f(x)[:, perm])
    assert torch.allclose(f(x), x * torch.sigmoid(x @ f.C.T))


def test_unknown_arch_and_variant():
    with pytest.raises(UserError, match="unknown architecture"):
        zoo.build("vgg")
    with pytest.raises(UserError, match="unknown variant"):
        zoo.build("mlp", "z-asym")


@pytest.mark.parametrize("norm", ["group", "batch", "layer"])
def test_resnet20_norms_run(norm):
    m = zoo.build("resnet20", "w-asym", norm=norm, in_channels=3, width=1)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    assert m.layer2[0].shortcut[0].weight.shape == (32, 16, 1, 1)
