"""Head-aware permutation specs: nested head groups, ranges of packed tensors, derivation on
``nn.MultiheadAttention`` and hand-written attention, weight matching over heads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import randomise_norms
from torch import nn

from checkpoints.zoo import build
from landscape import (
    PermutationSpec,
    UserError,
    activation_matching,
    apply_permutation,
    permutation_spec,
    validate_spec,
    weight_matching,
)
from landscape.permute import compose_inverse, random_perms
from landscape.sample_inputs import sample_input
from landscape.spec_tracing import derive_spec

SMALL = dict(vocab_size=13, max_len=6, width=16, heads=4, depth=2)


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(t, sb[n]) for n, t in a.state_dict().items())


def _canonical(spec: PermutationSpec):
    """Groups as sets of entries with sizes and their head group's entries (names aside)."""
    return sorted(
        (
            sorted(e),
            spec.sizes[g],
            sorted(spec.groups[spec.parents[g]]) if g in spec.parents else None,
        )
        for g, e in spec.groups.items()
    )


# ----------------------------------------------------------------------------- the convention
def test_nested_permutation_moves_heads_and_their_units_as_written_by_hand():
    """``P[i * d + j] = p[i] * d + q[i, j]`` on Q/K rows, V rows and O columns, checked
    against tensors rearranged by hand."""
    model = build("transformer", "standard", seed=1, **SMALL)
    spec = model.permutation_spec()
    H, d = 4, 4
    p = np.array([2, 0, 3, 1])
    qk = np.stack([np.roll(np.arange(d), i) for i in range(H)])  # head i: units rolled by i
    v = np.stack([np.arange(d)[::-1]] * H)
    moved = apply_permutation(
        model, {"blocks.0.heads": p, "blocks.0.qk": qk, "blocks.0.v": v}, spec=spec
    )
    att, new = model.blocks[0].attn, moved.blocks[0].attn
    for name, within in (("q", qk), ("k", qk), ("v", v)):
        old_w = getattr(att, name).weight.detach().reshape(H, d, -1)
        want = torch.stack([old_w[p[i], within[i]] for i in range(H)]).reshape(H * d, -1)
        assert torch.equal(getattr(new, name).weight, want), name
    old_o = att.o.weight.detach().reshape(-1, H, d)
    want_o = torch.stack([old_o[:, p[i], v[i]] for i in range(H)], dim=1).reshape(-1, H * d)
    assert torch.equal(new.o.weight, want_o)
    assert torch.equal(moved.blocks[1].attn.q.weight, model.blocks[1].attn.q.weight)
    x = sample_input(model, 5)
    assert torch.allclose(_out(moved, x), _out(model, x), atol=1e-5)


def test_order_counts_nested_groups_once_per_head():
    model = build("transformer", "standard", **SMALL)
    spec = model.permutation_spec()
    assert spec.parents == {
        "blocks.0.qk": "blocks.0.heads",
        "blocks.0.v": "blocks.0.heads",
        "blocks.1.qk": "blocks.1.heads",
        "blocks.1.v": "blocks.1.heads",
    }
    lf = lambda n: math.lgamma(n + 1) / math.log(10)  # noqa: E731
    per_block = lf(4) + 2 * 4 * lf(4) + lf(64)  # heads, (d!)^H for qk and v, MLP
    assert spec.log10_order() == pytest.approx(lf(16) + 2 * per_block)


# ----------------------------------------------------------------------------- zoo transformer
@pytest.mark.parametrize("variant", ["standard", "w-asym", "sigma-asym", "head-asym"])
def test_zoo_transformer_spec_is_validated_and_derivation_agrees(variant):
    model = randomise_norms(build("transformer", variant, seed=2, **SMALL))
    spec = permutation_spec(model)  # declared, validated with the fixed buffers moved too
    derived = derive_spec(model, sample_input(model))
    assert _canonical(derived) == _canonical(spec), derived.notes
    validate_spec(model, derived)


def test_planted_heads_within_head_and_residual_permutation_is_recovered_exactly():
    a = randomise_norms(build("transformer", "standard", seed=3, **SMALL))
    spec = permutation_spec(a)
    planted = random_perms(spec, seed=8)  # residual, heads, per-head q/k and v, MLP units
    assert all(
        (planted[g] != np.arange(spec.sizes[g])).any() for g in spec.groups
    )  # every group really moves
    b = apply_permutation(a, planted)
    assert not torch.equal(a.blocks[0].attn.q.weight, b.blocks[0].attn.q.weight)
    x = sample_input(a, 16)
    assert torch.allclose(_out(b, x), _out(a, x), atol=1e-5)  # the same function
    result = weight_matching(a, b)
    inverse = compose_inverse(spec, planted)
    for g in spec.groups:
        np.testing.assert_array_equal(result.perms[g], inverse[g], err_msg=g)
    assert _same_state(a, apply_permutation(b, result))
    assert result.function_preserved and result.converged
    inv = result.inverse()
    for g in spec.groups:
        np.testing.assert_array_equal(inv.perms[g], planted[g], err_msg=g)
    frame = result.to_frame().set_index("group")
    assert frame.loc["blocks.0.qk", "moved"] > 0 and frame.loc["blocks.0.qk", "size"] == 16


def test_matching_two_transformer_seeds_improves_the_objective_and_keeps_the_function():
    a = build("transformer", "standard", seed=0, **SMALL)
    b = build("transformer", "standard", seed=1, **SMALL)
    result = weight_matching(a, b, restarts=1)
    assert result.objective > result.objective_identity and result.function_preserved
    aligned = apply_permutation(b, result)
    sa, sb = a.state_dict(), aligned.state_dict()
    names = list(result.spec.moves())
    j = sum(float((sa[n].double() * sb[n].double()).sum()) for n in names)
    assert result.objective == pytest.approx(j, rel=1e-5)  # J recomputed independently


def test_weight_matching_over_heads_is_the_exact_optimum_on_one_block():
    """On one attention block the head + within-head assignment equals a brute-force search
    over every head permutation (within-head parts by linear assignment)."""
    from itertools import permutations

    from scipy.optimize import linear_sum_assignment

    torch.manual_seed(0)
    H, d, D = 3, 3, 6
    a = {n: torch.randn(H * d, D, dtype=torch.float64) for n in "qkv"}
    b = {n: torch.randn(H * d, D, dtype=torch.float64) for n in "qkv"}
    ao, bo = torch.randn(D, H * d, dtype=torch.float64), torch.randn(D, H * d, dtype=torch.float64)

    class Block(nn.Module):
        def __init__(self, w, o):
            super().__init__()
            for n in "qkv":
                setattr(self, n, nn.Linear(D, H * d, bias=False))
                getattr(self, n).weight.data = w[n].float()
            self.o = nn.Linear(H * d, D, bias=False)
            self.o.weight.data = o.float()

        def forward(self, x):
            n, t = x.shape[0], x.shape[1]
            q, k, v = (getattr(self, c)(x).view(n, t, H, d).transpose(1, 2) for c in "qkv")
            y = F.scaled_dot_product_attention(q, k, v)
            return self.o(y.transpose(1, 2).reshape(n, t, H * d))

    A, B = Block(a, ao), Block(b, bo)
    spec = {
        "groups": {
            "heads": [["q.weight", 0], ["k.weight", 0], ["v.weight", 0], ["o.weight", 1]],
            "qk": [["q.weight", 0], ["k.weight", 0]],
            "v": [["v.weight", 0], ["o.weight", 1]],
        },
        "sizes": {"heads": H, "qk": d, "v": d},
        "parents": {"qk": "heads", "v": "heads"},
    }
    x = torch.randn(2, 5, D)
    result = weight_matching(A, B, spec=spec, sample=x)

    def best_within(rows_a, rows_b):
        s = (rows_a @ rows_b.T).numpy()
        r, c = linear_sum_assignment(s, maximize=True)
        return s[r, c].sum()

    best = -np.inf
    for p in permutations(range(H)):
        total = 0.0
        for i, j in enumerate(p):
            sl_a, sl_b = slice(i * d, (i + 1) * d), slice(j * d, (j + 1) * d)
            qk_a = torch.cat([a["q"][sl_a], a["k"][sl_a]], 1)
            qk_b = torch.cat([b["q"][sl_b], b["k"][sl_b]], 1)
            v_a = torch.cat([a["v"][sl_a], ao[:, sl_a].T], 1)
            v_b = torch.cat([b["v"][sl_b], bo[:, sl_b].T], 1)
            total += best_within(qk_a, qk_b) + best_within(v_a, v_b)
        best = max(best, total)
    assert result.objective == pytest.approx(best, rel=1e-5)
    assert result.function_preserved


# ----------------------------------------------------------------------------- nn.MultiheadAttention
class MHANet(nn.Module):
    def __init__(self, batch_first=True, **kw):
        super().__init__()
        self.emb = nn.Linear(5, 16)
        self.ln = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first, **kw)
        self.fc = nn.Linear(16, 3)
        self.batch_first = batch_first

    def forward(self, x):
        h = self.emb(x)
        h = h if self.batch_first else h.transpose(0, 1)
        y = self.ln(h)
        a, _ = self.attn(y, y, y, need_weights=False)
        h = h + a
        h = h if self.batch_first else h.transpose(0, 1)
        return self.fc(h.mean(1))


@pytest.mark.parametrize("kw", [{}, {"batch_first": False}, {"bias": False}, {"add_bias_kv": True}])
def test_multihead_attention_spec_is_derived_with_ranges_and_validated(kw):
    torch.manual_seed(0)
    model = randomise_norms(MHANet(**kw))
    x = torch.randn(3, 7, 5)
    spec = permutation_spec(model, x)
    assert spec.source == "derived"
    assert spec.parents == {"attn.qk": "attn.heads", "attn.v": "attn.heads"}
    assert spec.sizes["attn.heads"] == 4 and spec.sizes["attn.qk"] == spec.sizes["attn.v"] == 4
    qk, v = set(spec.groups["attn.qk"]), set(spec.groups["attn.v"])
    assert {("attn.in_proj_weight", 0, 0, 16), ("attn.in_proj_weight", 0, 16, 32)} <= qk
    assert ("attn.in_proj_weight", 0, 32, 48) in v and ("attn.out_proj.weight", 1) in v
    assert ("attn.in_proj_weight", 1) in spec.groups["emb"]  # the residual stream
    perm = random_perms(spec, seed=3)
    moved = apply_permutation(model, perm, spec=spec)
    assert not torch.equal(moved.attn.in_proj_weight, model.attn.in_proj_weight)
    assert torch.allclose(_out(moved, x), _out(model, x), atol=1e-5)
    b = apply_permutation(model, random_perms(spec, seed=5), spec=spec)
    result = weight_matching(model, b, spec=spec, sample=x)
    assert _same_state(model, apply_permutation(b, result))


def test_multihead_attention_with_other_key_and_value_sizes():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(5, 16), nn.Linear(5, 8), nn.Linear(5, 6)
            self.m = nn.MultiheadAttention(16, 4, kdim=8, vdim=6, batch_first=True)
            self.o = nn.Linear(16, 2)

        def forward(self, x):
            q = self.a(x)
            return self.o(self.m(q, self.b(x), self.c(x))[0] + q)

    model = Cross()
    x = torch.randn(2, 5, 5)
    spec = permutation_spec(model, x)
    assert ("m.k_proj_weight", 1) in spec.groups["b"] and ("m.v_proj_weight", 1) in spec.groups["c"]
    assert ("m.in_proj_bias", 0, 32, 48) in spec.groups["m.v"]
    assert torch.allclose(
        _out(apply_permutation(model, random_perms(spec, 1), spec=spec), x),
        _out(model, x),
        atol=1e-5,
    )


def test_a_spec_that_splits_query_from_key_units_is_refused():
    """Q and K rows of a head must share one permutation (the score contracts them pairwise)."""
    model = build("transformer", "standard", seed=0, **SMALL)
    spec = model.permutation_spec().to_dict()
    spec["groups"]["blocks.0.k"] = [
        e for e in spec["groups"]["blocks.0.qk"] if e[0].startswith("blocks.0.attn.k")
    ]
    spec["groups"]["blocks.0.qk"] = [
        e for e in spec["groups"]["blocks.0.qk"] if e[0].startswith("blocks.0.attn.q")
    ]
    spec["sizes"]["blocks.0.k"] = 4
    spec["parents"]["blocks.0.k"] = "blocks.0.heads"
    with pytest.raises(UserError, match="blocks.0.(qk|k)"):
        validate_spec(model, spec)


# ----------------------------------------------------------------------------- hand-written attention
class HandAttention(nn.Module):
    """Attention as users write it (nanoGPT's shape arithmetic, ``math.sqrt`` on a size)."""

    def __init__(self, d, h, sdpa):
        super().__init__()
        self.h, self.sdpa = h, sdpa
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.h, C // self.h).transpose(1, 2)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            mask = torch.tril(torch.ones(T, T, device=x.device)).view(1, 1, T, T)
            att = F.softmax(att.masked_fill(mask == 0, float("-inf")), dim=-1)
            y = att @ v
        return self.o_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class HandGPT(nn.Module):
    def __init__(self, sdpa=False, fused=False):
        super().__init__()
        self.wte = nn.Embedding(11, 16)
        self.wpe = nn.Parameter(torch.randn(1, 6, 16) * 0.1)  # a learned position table
        self.ln_1, self.ln_2, self.ln_f = nn.LayerNorm(16), nn.LayerNorm(16), nn.LayerNorm(16)
        self.attn = FusedAttention(16, 4) if fused else HandAttention(16, 4, sdpa)
        self.mlp = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 16))
        self.lm_head = nn.Linear(16, 11, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe[:, : idx.size(1), :]
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return self.lm_head(self.ln_f(x))


class FusedAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h, self.c_attn, self.c_proj = h, nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("sdpa", [False, True])
def test_hand_written_attention_spec_is_derived_and_validated(sdpa):
    torch.manual_seed(0)
    model = randomise_norms(HandGPT(sdpa=sdpa))
    x = torch.randint(0, 11, (4, 6))
    spec = permutation_spec(model, x)
    assert "torch.fx" in spec.notes[0]
    heads = spec.parents["attn.q_proj.dims"]
    assert spec.parents == {"attn.q_proj.dims": heads, "attn.v_proj.dims": heads}
    assert set(spec.groups["attn.q_proj.dims"]) == {
        ("attn.q_proj.weight", 0), ("attn.q_proj.bias", 0),
        ("attn.k_proj.weight", 0), ("attn.k_proj.bias", 0),
    }  # fmt: skip
    assert set(spec.groups["attn.v_proj.dims"]) == {
        ("attn.v_proj.weight", 0), ("attn.v_proj.bias", 0), ("attn.o_proj.weight", 1),
    }  # fmt: skip
    residual = set(spec.groups["wte"])
    assert {("wte.weight", 1), ("wpe", 2), ("ln_1.weight", 0), ("lm_head.weight", 1)} <= residual
    assert ("attn.o_proj.weight", 0) in residual and ("mlp.2.bias", 0) in residual
    perm = random_perms(spec, seed=4)
    assert torch.allclose(
        _out(apply_permutation(model, perm, spec=spec), x), _out(model, x), atol=1e-5
    )
    assert not [k for k in vars(model) if k.startswith("_tensor_constant")]  # tracing left no trace


def test_fused_qkv_projection_is_left_unpermuted_with_a_note():
    torch.manual_seed(0)
    model = HandGPT(fused=True)
    x = torch.randint(0, 11, (4, 6))
    spec = permutation_spec(model, x)
    note = next(n for n in spec.notes if n.startswith("attn.c_attn"))
    assert "cuts the units into pieces" in note and "permutation_spec()" in note
    assert not spec.parents  # no head group could be derived
    assert ("attn.c_attn.weight", 1) in spec.groups["wte"]  # the residual stream still is


def test_untraceable_attention_model_raises_one_clear_line():
    class Checked(HandGPT):
        def forward(self, idx):
            if not isinstance(idx, torch.Tensor):  # fx's proxies fail this check
                raise TypeError("token ids expected")
            return super().forward(idx)

    with pytest.raises(
        UserError,
        match=r"cannot derive a permutation spec for Checked: fx tracing failed.*permutation_spec\(\)",
    ):
        permutation_spec(Checked(), torch.randint(0, 11, (2, 6)))


# ----------------------------------------------------------------------------- the type
def test_json_round_trip_keeps_ranges_and_nesting(tmp_path):
    torch.manual_seed(0)
    model = MHANet()
    x = torch.randn(2, 4, 5)
    spec = permutation_spec(model, x)
    path = tmp_path / "spec.json"
    spec.to_json(path)
    back = PermutationSpec.from_json(path)
    assert back.groups == spec.groups and back.parents == spec.parents and back.sizes == spec.sizes
    validate_spec(model, str(path), x)


def test_malformed_nested_specs_are_refused():
    model = build("transformer", "standard", **SMALL)
    good = model.permutation_spec().to_dict()
    bad = {**good, "groups": dict(good["groups"])}
    bad["groups"]["blocks.0.qk"] = bad["groups"]["blocks.0.qk"] + [["blocks.0.attn.v.bias", 0]]
    with pytest.raises(UserError, match="blocks.0.attn.v.bias axis 0 is in two groups"):
        PermutationSpec.from_dict(bad)
    missing = {**good, "groups": dict(good["groups"])}
    missing["groups"]["blocks.0.heads"] = [
        e for e in good["groups"]["blocks.0.heads"] if e[0] != "blocks.0.attn.q.bias"
    ]
    with pytest.raises(UserError, match="does not act on blocks.0.attn.q.bias axis 0"):
        PermutationSpec.from_dict(missing)
    with pytest.raises(UserError, match="one level of nesting"):
        PermutationSpec.from_dict(
            {**good, "parents": {**good["parents"], "blocks.0.heads": "residual"}}
        )
    overlap = {"groups": {"a": [["w", 0, 0, 4]], "b": [["w", 0, 2, 6]]}, "sizes": {"a": 4, "b": 4}}
    with pytest.raises(UserError, match="entries 2:6 is in two groups"):
        PermutationSpec.from_dict(overlap)
    with pytest.raises(UserError, match="not a permutation of 4 rows"):
        apply_permutation(model, {"blocks.0.qk": np.arange(4)})
    with pytest.raises(UserError, match="give its size"):
        PermutationSpec.from_dict({"groups": good["groups"], "parents": good["parents"]}).resolve(
            model
        )


def test_activation_matching_refuses_nested_specs():
    a = build("transformer", "standard", seed=0, **SMALL)
    data = (sample_input(a, 8), torch.zeros(8, dtype=torch.long))
    with pytest.raises(UserError, match="use weight matching"):
        activation_matching(a, build("transformer", "standard", seed=1, **SMALL), data)


def test_metanet_permutation_augmentation_refuses_nested_specs():
    from landscape.metanet import FlatPermuter

    with pytest.raises(UserError, match="nested"):
        FlatPermuter(build("transformer", "standard", **SMALL))
