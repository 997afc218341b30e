"""Training options: the default path is the plain AdamW loop, schedules follow their formulas,
label smoothing and augmentation do what they say."""

import math

import pytest
import torch
import torch.nn.functional as F

from checkpoints import zoo
from checkpoints.sources import DataSet
from checkpoints.train import (
    TrainSettings,
    augment_batch,
    lr_factor,
    normalise_augment,
    train_model,
)
from landscape.errors import UserError


def _data(n=40, shape=(1, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataSet(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))


def _hand_loop(model, data, lr, wd, batch, epochs, seed, factors=None, smoothing=0.0):
    """The plain loop: AdamW, the seed's data order, mean cross-entropy per batch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    gen = torch.Generator().manual_seed(10_007 * seed + 1)
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen)
        for i in range(0, len(data), batch):
            idx = order[i : i + batch]
            if factors is not None:
                for group in opt.param_groups:
                    group["lr"] = lr * factors[step]
            step += 1
            opt.zero_grad()
            F.cross_entropy(model(data.X[idx]), data.y[idx], label_smoothing=smoothing).backward()
            opt.step()
    return model.eval()


def test_default_settings_are_the_plain_adamw_loop():
    data = _data()
    a = zoo.build("mlp", input_dim=36, width=8, depth=1, seed=4)
    b = zoo.build("mlp", input_dim=36, width=8, depth=1, seed=4)
    train_model(a, data, TrainSettings(epochs=2, batch_size=16), seed=3, progress=False)
    _hand_loop(b, data, 1e-3, 0.03, 16, 2, seed=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_triangular_schedule_and_label_smoothing_match_a_hand_loop():
    data = _data()
    s = TrainSettings(
        epochs=3, lr=1e-2, batch_size=16, schedule="triangular", peak_epoch=1, label_smoothing=0.1
    )
    per_epoch = 3  # ceil(40 / 16)
    # the step's midpoint u = (t + 1/2) / 3 epochs: up to the peak at 1, down to 0 at 3
    factors = [(t + 0.5) / 3 if (t + 0.5) / 3 <= 1 else (3 - (t + 0.5) / 3) / 2 for t in range(9)]
    assert [lr_factor(s, t, per_epoch) for t in range(9)] == pytest.approx(factors)
    a = zoo.build("mlp", input_dim=36, width=8, depth=1, seed=1)
    b = zoo.build("mlp", input_dim=36, width=8, depth=1, seed=1)
    train_model(a, data, s, seed=0, progress=False)
    _hand_loop(b, data, 1e-2, 0.03, 16, 3, seed=0, factors=factors, smoothing=0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_cosine_with_warmup():
    s = TrainSettings(epochs=10, schedule="cosine", warmup_epochs=2)
    assert lr_factor(s, 0, 1) == pytest.approx(0.25)  # u = 0.5 of 2 warm-up epochs
    assert lr_factor(s, 5, 1) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3.5 / 8)))
    assert lr_factor(TrainSettings(), 7, 3) == 1.0


def test_crop_is_a_translation_of_the_padded_image_and_flip_mirrors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 5, generator=g)
    out = augment_batch(x, "crop", 2, torch.Generator().manual_seed(1))
    padded = F.pad(x, (2, 2, 2, 2))
    for n in range(6):
        windows = [padded[n, :, i : i + 5, j : j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[n], w) for w in windows)
    flipped = augment_batch(x, "flip", 0, torch.Generator().manual_seed(1))
    kinds = [
        torch.equal(flipped[n], x[n]) or torch.equal(flipped[n], x[n].flip(-1)) for n in range(6)
    ]
    assert all(kinds) and not torch.equal(flipped, x)
    assert (
        normalise_augment("translate,flip") == "crop+flip" and normalise_augment("none") == "none"
    )
    with pytest.raises(UserError, match="cutout"):
        normalise_augment("cutout")


def test_augmentation_needs_images_and_smoothing_needs_labels():
    flat = DataSet(torch.randn(8, 5), torch.randint(0, 3, (8,)))
    model = zoo.build("mlp", input_dim=5, width=4, depth=1, num_classes=3)
    with pytest.raises(UserError, match="needs images"):
        train_model(model, flat, TrainSettings(epochs=1, augment="crop"), progress=False)
    with pytest.raises(UserError, match="--schedule"):
        TrainSettings(schedule="step").check()


def test_save_every_keeps_the_trajectory_that_a_shorter_run_ends_at(tmp_path):
    """epoch<k>.pt of a 5-epoch run is bit for bit the final weights of a k-epoch run (same
    seed, constant schedule), and discovery lists the trajectory in training order."""
    from checkpoints import discover
    from checkpoints.discover import trajectory
    from checkpoints.train import train_group

    flat = DataSet(torch.randn(40, 8), torch.randint(0, 3, (40,)))
    kw = dict(arch_kwargs={"width": 8, "depth": 1}, progress=False)
    train_group(tmp_path / "long", "mlp", ["standard"], [0], flat, flat, TrainSettings(epochs=5, batch_size=8), save_every=2, **kw)  # fmt: skip
    seed = tmp_path / "long" / "standard" / "seed0"
    assert sorted(p.name for p in seed.glob("*.pt")) == [
        "epoch2.pt", "epoch4.pt", "final.pt", "init.pt",
    ]  # fmt: skip
    for k in (2, 4):
        train_group(tmp_path / f"k{k}", "mlp", ["standard"], [0], flat, flat, TrainSettings(epochs=k, batch_size=8), **kw)  # fmt: skip
        a = torch.load(seed / f"epoch{k}.pt", weights_only=True)["state_dict"]
        b = torch.load(tmp_path / f"k{k}" / "standard" / "seed0" / "final.pt", weights_only=True)
        assert all(torch.equal(a[n], b["state_dict"][n]) for n in a)
    run = discover(tmp_path / "long")["standard"][0]
    assert [p.name for p in trajectory(run)] == ["init.pt", "epoch2.pt", "epoch4.pt", "final.pt"]
    with pytest.raises(UserError, match="--save-every"):
        train_group(tmp_path / "bad", "mlp", ["standard"], [0], flat, flat, TrainSettings(epochs=1), save_every=0, **kw)  # fmt: skip


def test_language_model_training_minimises_the_lm_objective_mean_over_tokens():
    """Targets at every position train a transformer on the lm objective (the mean over the
    batch's tokens), step for step the loop that calls the objective itself."""
    from landscape.batch import Batch
    from landscape.objectives import resolve_objective

    g = torch.Generator().manual_seed(0)
    X = torch.randint(0, 7, (24, 6), generator=g)
    data = DataSet(X, torch.roll(X, -1, dims=1))
    kw = dict(vocab_size=7, max_len=6, num_classes=7, width=8, depth=1, all_positions=True)
    a, b = (zoo.build("transformer", seed=2, **kw) for _ in range(2))
    train_model(a, data, TrainSettings(epochs=2, batch_size=8), seed=5, progress=False)
    lm = resolve_objective("lm")
    opt = torch.optim.AdamW(b.parameters(), lr=1e-3, weight_decay=0.03)
    gen = torch.Generator().manual_seed(10_007 * 5 + 1)
    b.train()
    for _ in range(2):
        order = torch.randperm(24, generator=gen)
        for i in range(0, 24, 8):
            idx = order[i : i + 8]
            opt.zero_grad()
            lm.losses(b(data.X[idx]), Batch(data.X[idx], data.y[idx])).mean().backward()
            opt.step()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
