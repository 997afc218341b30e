"""The zoo transformer: shapes, causality, attention against a reference, the variants'
constants, and which symmetries each variant keeps (symmetry audit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkpoints import load_model, save_checkpoint, zoo
from checkpoints.asym import AsymLinear, FiGLU
from checkpoints.sources import DataSet
from checkpoints.train import TrainSettings, train_model
from checkpoints.transformer import alibi_slopes
from landscape import UserError, symmetry_audit

SMALL = dict(vocab_size=13, max_len=6, width=16, heads=4, depth=2)


def _tokens(n=5, t=6, seed=0):
    return torch.randint(0, 13, (n, t), generator=torch.Generator().manual_seed(seed))


def test_outputs_at_the_last_position_or_at_every_position():
    last = zoo.build("transformer", seed=1, num_classes=7, **SMALL)
    every = zoo.build("transformer", seed=1, num_classes=7, all_positions=True, **SMALL)
    x = _tokens()
    with torch.no_grad():
        a, b = last(x), every(x)
    assert a.shape == (5, 7) and b.shape == (5, 6, 7)
    assert torch.allclose(a, b[:, -1], atol=1e-6)  # same weights (same seed), same last position
    assert every(x[:, :4]).shape == (5, 4, 7)  # shorter sequences run too


def test_attention_is_causal():
    model = zoo.build("transformer", seed=2, all_positions=True, **SMALL)
    x = _tokens()
    y = x.clone()
    y[:, 4:] = (y[:, 4:] + 1) % 13  # change only the last two tokens
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert not torch.allclose(a[:, 4:], b[:, 4:], atol=1e-3)


@pytest.mark.parametrize("variant", ["standard", "head-asym"])
def test_attention_equals_a_reference_computation(variant):
    """The block's attention against torch's scaled_dot_product_attention with the same
    weights (and ALiBi's bias ``-m_h (i - j)`` as an additive mask for head-asym)."""
    model = zoo.build("transformer", variant, seed=3, **SMALL)
    att = model.blocks[0].attn
    x = torch.randn(3, 6, 16)
    H, d = 4, 4
    q, k, v = (getattr(att, n)(x).view(3, 6, H, d).transpose(1, 2) for n in "qkv")
    i = torch.arange(6)
    mask = torch.zeros(H, 6, 6).masked_fill(i[None, :] > i[:, None], float("-inf"))
    if variant == "head-asym":
        slopes = torch.tensor([2.0 ** (-8 * (h + 1) / H) for h in range(H)])
        mask = mask - slopes[:, None, None] * (i[:, None] - i[None, :]).clamp(min=0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = att.o(ref.transpose(1, 2).reshape(3, 6, 16))
    with torch.no_grad():
        assert torch.allclose(att(x), ref, atol=1e-5)


def test_w_asym_fixes_an_eighth_of_each_fan_in_and_half_of_the_head():
    model = zoo.build("transformer", "w-asym", seed=0, **SMALL)
    layers = dict(model.named_modules())
    for name in ("q", "k", "v", "o"):
        lin = layers[f"blocks.1.attn.{name}"]
        assert isinstance(lin, AsymLinear) and ((lin.mask == 0).sum(1) == 2).all()  # 16 / 8
        assert lin.kappa == 0.25
    fc1, fc2 = model.blocks[0].mlp.fc1, model.blocks[0].mlp.fc2
    assert ((fc1.mask == 0).sum(1) == 2).all() and ((fc2.mask == 0).sum(1) == 8).all()  # 64 / 8
    assert ((model.head.mask == 0).sum(1) == 8).all() and model.head.kappa == 0.25
    assert not isinstance(model.tok, AsymLinear)  # embeddings stay standard
    masks = [m.mask for m in model.modules() if isinstance(m, AsymLinear)]
    assert not torch.equal(masks[0], masks[1])  # every layer draws its own positions
    again = zoo.build("transformer", "w-asym", seed=5, **SMALL)
    assert torch.equal(again.blocks[0].attn.q.fixed, model.blocks[0].attn.q.fixed)  # mask seed


def test_fixed_entries_survive_training_on_tokens():
    model = zoo.build("transformer", "w-asym", seed=1, **SMALL)
    layers = [m for m in model.modules() if isinstance(m, AsymLinear)]
    before = [m.effective_weight().detach().clone() for m in layers]
    data = DataSet(_tokens(48, 6, 3), torch.randint(0, 13, (48,)))
    train_model(model, data, TrainSettings(epochs=2, batch_size=16, lr=1e-2), progress=False)
    moved = 0
    for m, w0 in zip(layers, before):
        w1 = m.effective_weight().detach()
        assert torch.equal(w1[m.mask == 0], w0[m.mask == 0])
        moved += int((w1[m.mask == 1] != w0[m.mask == 1]).sum())
    assert moved > 0


def test_sigma_asym_uses_figlu_and_head_asym_alibi_slopes():
    sigma = zoo.build("transformer", "sigma-asym", **SMALL)
    assert all(isinstance(b.mlp.act, FiGLU) for b in sigma.blocks)
    head = zoo.build("transformer", "head-asym", **SMALL)
    slopes = head.blocks[0].attn.head_slopes.reshape(-1)
    np.testing.assert_allclose(slopes.numpy(), [2**-2, 2**-4, 2**-6, 2**-8])
    assert torch.equal(alibi_slopes(4), slopes)
    assert "head_slopes" not in dict(zoo.build("transformer", **SMALL).named_buffers())


def test_variants_and_arguments_are_checked():
    with pytest.raises(UserError, match="unknown variant"):
        zoo.build("mlp", "head-asym", input_dim=8, width=8)
    with pytest.raises(UserError, match="not a multiple of heads"):
        zoo.build("transformer", width=10, heads=4)
    assert zoo.arch_variants("transformer")[-1] == "head-asym"
    assert zoo.build("transformer", "head", **SMALL).variant == "head-asym"


def test_checkpoint_round_trip_rebuilds_the_variant(tmp_path):
    model = zoo.build("transformer", "head-asym", seed=4, **SMALL)
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert {**back.config, "seed": 4} == model.config  # the seed is the sidecar's business
    x = _tokens()
    with torch.no_grad():
        assert torch.equal(back(x), model(x))


def test_symmetry_audit_shows_which_groups_each_variant_breaks():
    """Standard keeps every group; W-Asym breaks all; sigma-Asym only the MLP's; the per-head
    ALiBi bias only the head permutation (the nested q/k and v groups survive it)."""
    audits = {
        v: symmetry_audit(zoo.build("transformer", v, seed=0, **SMALL), trials=2, samples=32)
        for v in ("standard", "w-asym", "sigma-asym", "head-asym")
    }
    groups = audits["standard"].groups
    assert groups == (
        "residual", "blocks.0.heads", "blocks.0.qk", "blocks.0.v", "blocks.0.mlp",
        "blocks.1.heads", "blocks.1.qk", "blocks.1.v", "blocks.1.mlp",
    )  # fmt: skip
    broken = {v: {g for g, s in zip(a.groups, a.symmetric) if not s} for v, a in audits.items()}
    assert audits["standard"].relative_change.max() < 1e-6
    assert broken["standard"] == set()
    assert broken["w-asym"] == set(groups)
    assert broken["sigma-asym"] == {"blocks.0.mlp", "blocks.1.mlp"}
    assert broken["head-asym"] == {"blocks.0.heads", "blocks.1.heads"}
    for v in ("w-asym", "sigma-asym", "head-asym"):
        a = audits[v]
        changed = a.relative_change[~a.symmetric]
        assert changed.min() > 1e-3, v  # by orders of magnitude above float rounding
        assert (a.relative_change[a.symmetric] < 1e-6).all(), v
