"""A small pre-norm decoder-only transformer for the zoo (``arch="transformer"``).

``tokens (N, T) -> tok(tokens) + pos(0..T-1) -> depth x block -> LayerNorm -> head``, with

    block(x) = x + O(attention(LN1(x)));  x = x + fc2(act(fc1(LN2(x))))

Causal multi-head attention is written out with separate ``q``, ``k``, ``v``, ``o`` Linear
layers: for head ``h`` (``d = width / heads`` dimensions) the scores are
``s_h[i, j] = q_h(i) . k_h(j) / sqrt(d)`` for ``j <= i`` (``-inf`` above the diagonal),
``a_h = softmax_j(s_h)`` and the output is ``O [a_1 v_1, ..., a_H v_H]``.

The output is the logits at the last position, ``(N, num_classes)``, so a sequence
classification task (``modular:P``: ``a b =`` -> ``(a + b) mod P``) runs through the
classification loss and every analysis unchanged; ``all_positions=True`` gives the logits at
every position, ``(N, T, num_classes)``, for language modelling.

Symmetries of the standard variant (its :meth:`Transformer.permutation_spec`):

- ``residual``: one permutation of the ``width`` features, shared by both embeddings, every
  LayerNorm's weight and bias (LayerNorm is permutation-equivariant: its mean and variance
  do not depend on the order of the features), the input columns of ``q``, ``k``, ``v``,
  ``fc1`` and ``head`` and the output rows of ``o`` and ``fc2``;
- per block ``blocks.i.heads``: a permutation of the heads, with two groups nested in it:
  ``blocks.i.qk`` (per head, the rows of ``q`` and ``k``: the score contracts them
  pairwise) and ``blocks.i.v`` (per head, the rows of ``v`` and the columns of ``o``);
- per block ``blocks.i.mlp``: the MLP's hidden units.

Variants (constants drawn from ``mask_seed``, shared by every seed of a group):

- ``w-asym``: every Linear (``q``, ``k``, ``v``, ``o``, ``fc1``, ``fc2``, ``head``) fixes
  ``n_fix`` entries per row at ``kappa z``, ``z ~ N(0, 1)``. As in the paper's MLP recipe,
  ``n_fix`` scales linearly with the fan-in: a hidden layer fixes 1/8 of it (64 of 512 there),
  ``n_fix = max(1, round(fix_fraction * fan_in))`` with ``fix_fraction = 1/8``, and the
  output layer (``head``) fixes half of it with ``kappa = 0.25``. The hidden layers' ``kappa``
  is 0.25 rather than the MLP's 1: without a norm after Q and K, fixed entries of size 1
  saturate the attention scores (on ``modular:97``, width 64, 25 epochs of the default recipe,
  W-Asym reached training accuracy 0.05 at ``kappa = 1``, 0.24 at 0.5, 0.50 at 0.25 and 0.38
  at 0.1; standard 0.80). Fixed entries at random positions of each row break every group
  above; embeddings, biases and LayerNorms stay standard, as the paper leaves biases and norms.
- ``sigma-asym``: FiGLU ``x * sigmoid(F x)`` (``F`` a fixed N(0, 1) square matrix) replaces
  the MLP's activation. It breaks the MLP's hidden permutation only: attention and the
  residual stream keep their symmetries.
- ``head-asym`` (attention-specific): a fixed positional bias per head, ALiBi's
  ``s_h[i, j] -= m_h (i - j)`` with the geometric slopes ``m_h = 2^(-8 (h + 1) / H)``
  (Press et al. 2022). Heads with different slopes are no longer interchangeable, so the
  head permutation is broken; the nested query/key and value permutations, the residual
  stream and the MLP keep theirs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from landscape.errors import UserError

from .asym import AsymLinear, FiGLU
from .zoo import ZooModel, _activation, _register, check_variant

#: the transformer's variants: the zoo's three and the attention-specific ``head-asym``
VARIANTS = ("standard", "w-asym", "sigma-asym", "head-asym")


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi's per-head slopes ``m_h = 2^(-8 (h + 1) / H)``, ``h = 0 .. H-1``: all distinct."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


class _Linears:
    """Standard or W-Asym Linear layers with consecutive layer indices (distinct masks)."""

    def __init__(self, w_asym: bool, mask_seed: int, kappa: float, fix_fraction: float):
        self.w_asym, self.mask_seed, self.index = w_asym, mask_seed, 0
        self.kappa, self.fix_fraction = float(kappa), float(fix_fraction)

    def __call__(self, fin: int, fout: int, *, output: bool = False) -> nn.Module:
        self.index += 1
        if not self.w_asym:
            return nn.Linear(fin, fout)
        share = 0.5 if output else self.fix_fraction
        return AsymLinear(
            fin,
            fout,
            n_fix=min(max(1, round(share * fin)), fin - 1),
            kappa=0.25 if output else self.kappa,
            mask_seed=self.mask_seed,
            layer_index=self.index - 1,
        )


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate ``q``, ``k``, ``v``, ``o`` projections
    (see the module notes); ``head_slopes`` (a fixed buffer) adds ALiBi's per-head bias."""

    def __init__(self, width: int, heads: int, linear: _Linears, *, head_bias: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.q, self.k, self.v = linear(width, width), linear(width, width), linear(width, width)
        self.o = linear(width, width)
        if head_bias:
            # shaped (H, 1, 1) to broadcast over (T, T) without a view: fx then sees the buffer itself
            self.register_buffer("head_slopes", alibi_slopes(heads).view(heads, 1, 1))
        else:
            self.head_slopes = None

    def forward(self, x: Tensor) -> Tensor:
        n, t, width = x.shape[0], x.shape[1], x.shape[2]  # indexed, not unpacked: fx traces it
        h, d = self.heads, self.head_dim
        q = self.q(x).view(n, t, h, d).transpose(1, 2)  # (N, H, T, d)
        k = self.k(x).view(n, t, h, d).transpose(1, 2)
        v = self.v(x).view(n, t, h, d).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)  # (N, H, T, T)
        pos = torch.arange(t, device=x.device)
        back = pos[:, None] - pos[None, :]  # i - j
        if self.head_slopes is not None:
            scores = scores - self.head_slopes * back.clamp(min=0)
        scores = scores.masked_fill(back < 0, float("-inf"))
        out = scores.softmax(dim=-1) @ v  # (N, H, T, d)
        return self.o(out.transpose(1, 2).reshape(n, t, width))


class MLPBlock(nn.Module):
    """``fc2(act(fc1(x)))``; ``act`` is FiGLU in the sigma-Asym variant."""

    def __init__(self, width: int, hidden: int, linear: _Linears, act: nn.Module):
        super().__init__()
        self.fc1, self.act, self.fc2 = linear(width, hidden), act, linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(self, width: int, heads: int, hidden: int, linear: _Linears, act, head_bias):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, linear, head_bias=head_bias)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = MLPBlock(width, hidden, linear, act)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@_register("transformer")
class Transformer(ZooModel):
    """Pre-norm decoder-only transformer (see the module notes).

    ``vocab_size`` tokens, sequences of at most ``max_len``; ``width`` features in the
    residual stream, ``depth`` blocks of ``heads`` heads and an MLP of ``mlp_ratio * width``
    hidden units; ``num_classes`` outputs (default ``vocab_size``), at the last position or,
    with ``all_positions``, at every position.
    """

    variants = VARIANTS

    def __init__(
        self,
        vocab_size: int = 98,
        num_classes: int | None = None,
        *,
        max_len: int = 3,
        width: int = 64,
        depth: int = 1,
        heads: int = 4,
        mlp_ratio: int = 4,
        activation: str = "gelu",
        all_positions: bool = False,
        variant: str = "standard",
        kappa: float = 0.25,
        fix_fraction: float = 0.125,
        mask_seed: int = 0,
    ):
        super().__init__()
        variant = check_variant(variant, VARIANTS)
        for name, value in (("vocab_size", vocab_size), ("max_len", max_len), ("width", width)):
            if int(value) < 1:
                raise UserError(f"transformer {name} must be positive, got {value}")
        if heads < 1 or width % heads:
            raise UserError(
                f"transformer width {width} is not a multiple of heads {heads}: pick a width divisible by the heads"
            )
        num_classes = int(num_classes if num_classes is not None else vocab_size)
        hidden = int(mlp_ratio) * int(width)
        if not 0 < fix_fraction < 1:
            raise UserError(f"transformer fix_fraction must be in (0, 1), got {fix_fraction}")
        linear = _Linears(variant == "w-asym", mask_seed, kappa, fix_fraction)
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            act = (
                FiGLU(hidden, mask_seed=mask_seed, layer_index=i)
                if variant == "sigma-asym"
                else _activation(activation)
            )
            self.blocks.append(
                Block(width, heads, hidden, linear, act, head_bias=variant == "head-asym")
            )
        self.ln_f = nn.LayerNorm(width)
        self.head = linear(width, num_classes, output=True)
        self.all_positions = bool(all_positions)
        self.config = dict(
            arch="transformer",
            variant=variant,
            vocab_size=int(vocab_size),
            num_classes=num_classes,
            max_len=int(max_len),
            width=int(width),
            depth=int(depth),
            heads=int(heads),
            mlp_ratio=int(mlp_ratio),
            activation=activation,
            all_positions=self.all_positions,
            kappa=float(kappa),  # used by w-asym only
            fix_fraction=float(fix_fraction),
            mask_seed=mask_seed,
        )

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        if not self.all_positions:
            x = x[:, -1]
        return self.head(x)

    def example_input(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` random token sequences of the longest length (for function checks)."""
        cfg = self.config
        tokens = torch.randint(0, cfg["vocab_size"], (n, cfg["max_len"]), generator=generator)
        return tokens.to(self.tok.weight.device)

    def permutation_spec(self):
        """The residual stream, per block the heads with their nested query/key and value
        groups, and the MLP's hidden units (see the module notes)."""
        from landscape.spec_builder import SpecBuilder

        b, res = SpecBuilder(self), "residual"
        b.embedding("tok", res).embedding("pos", res)
        for i, block in enumerate(self.blocks):
            p = f"blocks.{i}"
            heads, qk, v, hidden = f"{p}.heads", f"{p}.qk", f"{p}.v", f"{p}.mlp"
            b.norm(f"{p}.ln1", res)
            b.layer(f"{p}.attn.q", (heads, qk), res).layer(f"{p}.attn.k", (heads, qk), res)
            b.layer(f"{p}.attn.v", (heads, v), res).layer(f"{p}.attn.o", res, (heads, v))
            b.nest(qk, heads, block.attn.heads).nest(v, heads, block.attn.heads)
            if block.attn.head_slopes is not None:
                b.add(heads, f"{p}.attn.head_slopes", 0)
            b.norm(f"{p}.ln2", res)
            b.layer(f"{p}.mlp.fc1", hidden, res).act(f"{p}.mlp.act", hidden)
            b.layer(f"{p}.mlp.fc2", res, hidden)
        return b.norm("ln_f", res).layer("head", None, res).build()
