"""ResNet-8 of the paper's metanetwork zoos: parameter counts, W-Asym masks, specs, training."""

import pytest
import torch

import landscape
from checkpoints import load_model, save_checkpoint, zoo
from checkpoints.asym import AsymConv2d, AsymLinear
from checkpoints.population import PopulationSpec
from checkpoints.population_spec import control_kwargs
from checkpoints.sources import DataSet
from checkpoints.train import TrainSettings, train_model
from landscape import ParamView


def test_parameter_counts_match_the_paper():
    """resnet8 78,042; W-Asym 60,634 trainable; width 0.875: 59,944 (the paper's zoo table)."""
    counts = {
        v: (sum(p.numel() for p in m.parameters()), len(ParamView(m)))
        for v, m in ((v, zoo.build("resnet8", v)) for v in zoo.VARIANTS)
    }
    assert counts["standard"] == (78_042, 78_042)
    assert counts["w-asym"] == (78_042, 60_634)
    assert counts["sigma-asym"] == (78_042, 78_042)  # FiGLU matrices are buffers
    small = zoo.build("resnet8", "standard", width=0.875)
    assert sum(p.numel() for p in small.parameters()) == 59_944


def test_control_width_is_chosen_by_parameter_count():
    kw, how = control_kwargs(PopulationSpec(arch="resnet8"), {"in_channels": 3, "num_classes": 10})
    assert kw["width"] == 0.875 and "59,944" in how and "60,634" in how


def test_w_asym_masks_fix_whole_filters_and_a_fully_fixed_stem():
    m = zoo.build("resnet8", "w-asym", mask_seed=3)
    stem = m.conv1
    assert isinstance(stem, AsymConv2d) and int(stem.mask.sum()) == 0  # no trainable stem entry
    assert torch.equal(stem.effective_weight(), stem.fixed)
    z = stem.fixed / 2.0  # kappa 2: fixed values are 2 z, z ~ N(0, 1)
    assert 0.7 < float(z.std()) < 1.3
    for name, layer in m.named_modules():
        if isinstance(layer, AsymConv2d) and layer is not stem:
            fixed = layer.mask == 0  # (out, in, k, k)
            if layer.kernel_size == (3, 3):
                per_filter = fixed.flatten(2)
                assert (per_filter.all(2) | ~per_filter.any(2)).all(), name  # whole filters
                assert (per_filter.all(2).sum(1) == 8).all(), name
            else:
                assert (fixed.flatten(1).sum(1) == 8).all(), name
        if isinstance(layer, AsymLinear):
            assert ((layer.mask == 0).sum(1) == 8).all()


def test_permutation_spec_is_a_symmetry_of_standard_only():
    x = torch.randn(4, 3, 16, 16)
    for variant, symmetric in (("standard", True), ("w-asym", False), ("sigma-asym", False)):
        model = zoo.build("resnet8", variant, seed=1)
        spec = landscape.permutation_spec(model)  # validated against the model
        assert {"stage1", "stage2", "stage3"} <= set(spec.sizes)
        perm = {
            g: torch.randperm(n, generator=torch.Generator().manual_seed(5))
            for g, n in spec.sizes.items()
        }
        moved = landscape.apply_permutation(model, perm, spec=spec)
        with torch.no_grad():
            change = float((moved(x) - model(x)).abs().max())
        assert (change < 1e-4) == symmetric, (variant, change)


def test_fixed_entries_survive_training_and_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = DataSet(torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g))
    model = zoo.build("resnet8", "w-asym", seed=2, width=0.5)
    before = {
        n: m.effective_weight().detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, (AsymConv2d, AsymLinear))
    }
    train_model(
        model,
        data,
        TrainSettings(epochs=1, lr=1e-2, weight_decay=0.5, batch_size=8),
        progress=False,
    )
    for n, m in model.named_modules():
        if n in before:
            fixed = m.mask == 0
            assert torch.equal(m.effective_weight()[fixed], before[n][fixed])
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.config["arch"] == "resnet8" and back.config["width"] == 0.5
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(back(x), model(x))


@pytest.mark.parametrize("variant", ["standard", "w-asym", "sigma-asym"])
def test_one_channel_inputs(variant):
    m = zoo.build("resnet8", variant, in_channels=1)
    assert m(torch.randn(2, 1, 12, 12)).shape == (2, 10)
