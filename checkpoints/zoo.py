"""Model zoo: the paper's architectures in three variants, built by one call.

``build(arch, variant="standard", *, seed=0, mask_seed=0, **kwargs)`` with ``arch`` in
``mlp``, ``cnn``, ``resnet20``, ``resnet8``, ``transformer`` (in
:mod:`checkpoints.transformer`) and ``variant`` in ``standard``, ``w-asym``, ``sigma-asym``
(the transformer also has ``head-asym``). ``seed`` draws the trainable initialisation; ``mask_seed`` draws the
asymmetry constants (W-Asym masks and fixed values, FiGLU matrices) and belongs to the
architecture: every seed of one group shares it.

W-Asym defaults follow the paper (see the reference notes): MNIST MLP n_fix
[64, 64, 64, 256] with kappa [1, 1, 0.5, 0.25]; at other widths n_fix keeps the paper's
share of the fan-in (64/784 of the input layer, 64/512 of a hidden layer, 256/512 of the
output layer). ResNet-20 (width n): stem 12 of 27, stage convs 36n/54n/72n, shortcuts
4n/6n/8n, final linear 8, kappa 3. ResNet-8 (the metanetwork zoos): kappa 2, 8 whole input
filters per output channel in every 3x3 conv (the stem fully fixed), 8 entries per row in
the 1x1 shortcuts and the final linear.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from landscape.errors import UserError

from .asym import AsymConv2d, AsymLinear, FiGLU

VARIANTS = ("standard", "w-asym", "sigma-asym")
ARCHS: dict[str, Callable[..., nn.Module]] = {}


def _register(name: str):
    def deco(cls):
        ARCHS[name] = cls
        cls.arch_name = name
        return cls

    return deco


def check_variant(variant: str, allowed: tuple[str, ...] = VARIANTS) -> str:
    """The canonical name of ``variant`` (aliases ``w``, ``sigma``, ``std`` ...), one of ``allowed``."""
    if not isinstance(variant, str):
        raise UserError(f"unknown variant {variant!r}: use one of {', '.join(allowed)}")
    v = variant.lower().replace("_", "-")
    aliases = {
        "w": "w-asym",
        "wasym": "w-asym",
        "sigma": "sigma-asym",
        "sigmaasym": "sigma-asym",
        "std": "standard",
        "head": "head-asym",
        "headasym": "head-asym",
    }
    v = aliases.get(v.replace("-", ""), v)
    if v not in allowed:
        raise UserError(f"unknown variant {variant!r}: use one of {', '.join(allowed)}")
    return v


_check_variant = check_variant  # the name other modules import


def arch_variants(arch: str) -> tuple[str, ...]:
    """The variants architecture ``arch`` has (every zoo model has :data:`VARIANTS`)."""
    return getattr(ARCHS.get(arch), "variants", VARIANTS)


def _activation(name: str) -> nn.Module:
    acts = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
    if name not in acts:
        raise UserError(f"unknown activation {name!r}: use one of {', '.join(acts)}")
    return acts[name]()


def _per_layer(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UserError(f"{what} needs {n} values (one per layer), got {len(value)}")
        return list(value)
    return [value] * n


class ZooModel(nn.Module):
    """Base class: remembers the call that built it, so a checkpoint can rebuild it."""

    arch_name = "?"
    config: dict[str, Any]

    @property
    def variant(self) -> str:
        return self.config["variant"]

    def fixed_entry_count(self) -> int:
        return sum(
            int((m.mask == 0).sum())
            for m in self.modules()
            if isinstance(m, (AsymLinear, AsymConv2d))
        )


# ----------------------------------------------------------------------------- MLP
@_register("mlp")
class MLP(ZooModel):
    """``input -> width x depth -> classes`` with norm and activation after each hidden layer.

    Module names follow the paper's public code: ``lins.i``, ``norms.i``, ``activations.i``.
    """

    def __init__(
        self,
        input_dim: int = 784,
        num_classes: int = 10,
        *,
        width: int = 512,
        depth: int = 3,
        norm: str = "layer",
        activation: str = "gelu",
        variant: str = "standard",
        n_fix: Sequence[int] | int | None = None,
        kappa: Sequence[float] | float | None = None,
        mask_seed: int = 0,
    ):
        super().__init__()
        variant = _check_variant(variant)
        dims = [input_dim] + [width] * depth + [num_classes]
        nl = len(dims) - 1
        if variant == "w-asym":
            if n_fix is None:
                n_fix = [
                    max(
                        1,
                        round(dims[i] * (64 / 784 if i == 0 else 64 / 512 if i < nl - 1 else 0.5)),
                    )
                    for i in range(nl)
                ]
            if kappa is None:
                kappa = [1.0 if i < 2 else 0.5 for i in range(nl - 1)] + [0.25]
            n_fix, kappa = _per_layer(n_fix, nl, "n_fix"), _per_layer(kappa, nl, "kappa")
        self.lins = nn.ModuleList()
        for i in range(nl):
            if variant == "w-asym":
                self.lins.append(
                    AsymLinear(
                        dims[i],
                        dims[i + 1],
                        n_fix=int(n_fix[i]),
                        kappa=float(kappa[i]),
                        mask_seed=mask_seed,
                        layer_index=i,
                    )
                )
            else:
                self.lins.append(nn.Linear(dims[i], dims[i + 1]))
        norms = {"layer": nn.LayerNorm, "batch": nn.BatchNorm1d, "none": None}
        if norm not in norms:
            raise UserError(f"unknown MLP norm {norm!r}: use layer, batch or none")
        self.norms = nn.ModuleList(
            [norms[norm](width) if norms[norm] else nn.Identity() for _ in range(depth)]
        )
        self.activations = nn.ModuleList(
            [
                FiGLU(width, mask_seed=mask_seed, layer_index=i)
                if variant == "sigma-asym"
                else _activation(activation)
                for i in range(depth)
            ]
        )
        self.config = dict(
            arch="mlp",
            variant=variant,
            input_dim=input_dim,
            num_classes=num_classes,
            width=width,
            depth=depth,
            norm=norm,
            activation=activation,
            n_fix=list(n_fix) if variant == "w-asym" else None,
            kappa=list(kappa) if variant == "w-asym" else None,
            mask_seed=mask_seed,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        for lin, norm, act in zip(self.lins, self.norms, self.activations):
            x = act(norm(lin(x)))
        return self.lins[-1](x)

    def permutation_spec(self):
        """Hidden units of layer i form group ``hidden{i}`` (see :mod:`landscape.permutation`)."""
        from landscape.spec_builder import SpecBuilder

        b, prev = SpecBuilder(self), None
        for i in range(len(self.norms)):
            g = f"hidden{i}"
            b.layer(f"lins.{i}", g, prev).norm(f"norms.{i}", g).act(f"activations.{i}", g)
            prev = g
        return b.layer(f"lins.{len(self.lins) - 1}", None, prev).build()


# ----------------------------------------------------------------------------- norms for conv nets
class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every spatial position (``norm="layer"`` in conv nets)."""

    def __init__(self, channels: int):
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(1, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return ChannelLayerNorm(channels)
    if kind == "none":
        return nn.Identity()
    raise UserError(f"unknown norm {kind!r}: use group, batch, layer or none")


class _ConvFactory:
    """Makes standard or W-Asym conv/linear layers with consecutive layer indices."""

    def __init__(
        self, variant: str, mask_seed: int, kappa: float, conv_mask: str, allow_full: bool = False
    ):
        self.variant, self.mask_seed, self.kappa, self.conv_mask = (
            variant,
            mask_seed,
            kappa,
            conv_mask,
        )
        # allow_full: a request to fix more than a row holds fixes the whole row (ResNet-8's stem)
        self.allow_full = allow_full
        self.index = 0

    def _next(self) -> int:
        self.index += 1
        return self.index - 1

    def conv(self, cin: int, cout: int, k: int, n_fix: int, **kw) -> nn.Module:
        i = self._next()
        if self.variant != "w-asym":
            return nn.Conv2d(cin, cout, k, **kw)
        mode = (
            self.conv_mask if (k > 1 and cin > 1) else "entry"
        )  # a 1-channel input has only one filter
        if mode == "filter":
            n_fix = max(1, round(n_fix / (k * k)))
        if self.allow_full:
            n_fix = min(n_fix, cin if mode == "filter" else cin * k * k)
        return AsymConv2d(
            cin,
            cout,
            k,
            n_fix=n_fix,
            kappa=self.kappa,
            mask_seed=self.mask_seed,
            layer_index=i,
            mode=mode,
            allow_all=self.allow_full,
            **kw,
        )

    def linear(self, fin: int, fout: int, n_fix: int) -> nn.Module:
        i = self._next()
        if self.variant != "w-asym":
            return nn.Linear(fin, fout)
        return AsymLinear(
            fin, fout, n_fix=n_fix, kappa=self.kappa, mask_seed=self.mask_seed, layer_index=i
        )

    def act(self, channels: int, activation: str = "relu") -> nn.Module:
        if self.variant == "sigma-asym":
            return FiGLU(channels, mask_seed=self.mask_seed, layer_index=self._next(), conv=True)
        return _activation(activation)


# ----------------------------------------------------------------------------- CNN
@_register("cnn")
class CNN(ZooModel):
    """A small conv net for fast tests: two 3x3 conv blocks, max-pool, global average pool, linear."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        *,
        channels: Sequence[int] = (16, 32),
        norm: str = "batch",
        activation: str = "relu",
        variant: str = "standard",
        kappa: float = 1.0,
        fix_fraction: float = 0.25,
        conv_mask: str = "entry",
        mask_seed: int = 0,
        input_dim: int | None = None,
    ):
        super().__init__()
        variant = _check_variant(variant)
        mk = _ConvFactory(variant, mask_seed, kappa, conv_mask)
        chans = [in_channels] + list(channels)
        self.convs, self.norms, self.activations = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i in range(len(channels)):
            self.convs.append(
                mk.conv(
                    chans[i], chans[i + 1], 3, max(1, round(fix_fraction * chans[i] * 9)), padding=1
                )
            )
            self.norms.append(conv_norm(norm, chans[i + 1]))
            self.activations.append(mk.act(chans[i + 1], activation))
        self.fc = mk.linear(chans[-1], num_classes, max(1, round(fix_fraction * chans[-1])))
        self.config = dict(
            arch="cnn",
            variant=variant,
            in_channels=in_channels,
            num_classes=num_classes,
            channels=list(channels),
            norm=norm,
            activation=activation,
            kappa=kappa,
            fix_fraction=fix_fraction,
            conv_mask=conv_mask,
            mask_seed=mask_seed,
        )

    def forward(self, x: Tensor) -> Tensor:
        for i, (conv, norm, act) in enumerate(zip(self.convs, self.norms, self.activations)):
            x = act(norm(conv(x)))
            if i == 0 and min(x.shape[-2:]) >= 4:
                x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))

    def permutation_spec(self):
        """Channels of conv block i form group ``conv{i}`` (pooling keeps channels in place)."""
        from landscape.spec_builder import SpecBuilder

        b, prev = SpecBuilder(self), None
        for i in range(len(self.convs)):
            g = f"conv{i}"
            b.layer(f"convs.{i}", g, prev).norm(f"norms.{i}", g).act(f"activations.{i}", g)
            prev = g
        return b.layer("fc", None, prev).build()


# ----------------------------------------------------------------------------- ResNet-20
class BasicBlock(nn.Module):
    """Two 3x3 convs with norm; option-B shortcut (1x1 conv + norm) when shape changes."""

    def __init__(
        self,
        mk: _ConvFactory,
        cin: int,
        cout: int,
        stride: int,
        norm: str,
        n_fix: int,
        n_fix_short: int,
    ):
        super().__init__()
        self.conv1 = mk.conv(cin, cout, 3, n_fix, stride=stride, padding=1, bias=False)
        self.bn1 = conv_norm(norm, cout)
        self.act1 = mk.act(cout)
        self.conv2 = mk.conv(cout, cout, 3, n_fix, padding=1, bias=False)
        self.bn2 = conv_norm(norm, cout)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                mk.conv(cin, cout, 1, n_fix_short, stride=stride, bias=False), conv_norm(norm, cout)
            )
        else:
            self.shortcut = nn.Sequential()
        self.act2 = mk.act(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


@_register("resnet20")
class ResNet20(ZooModel):
    """CIFAR ResNet-20 (3 stages x 3 basic blocks) with width multiplier ``width``.

    Module names follow the common CIFAR layout (``conv1``, ``bn1``, ``layerK.J.*``,
    ``layerK.J.shortcut.0``, ``linear``); ``bn*`` hold whichever norm is chosen.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        width: int = 1,
        norm: str = "group",
        variant: str = "standard",
        kappa: float = 3.0,
        conv_mask: str = "entry",
        mask_seed: int = 0,
        blocks: int = 3,
        input_dim: int | None = None,
    ):
        super().__init__()
        variant = _check_variant(variant)
        mk = _ConvFactory(variant, mask_seed, kappa, conv_mask)
        w = int(width)
        chans = [16 * w, 32 * w, 64 * w]
        stem_fix = max(1, round(12 / 27 * in_channels * 9))
        self.conv1 = mk.conv(in_channels, chans[0], 3, stem_fix, padding=1, bias=False)
        self.bn1 = conv_norm(norm, chans[0])
        self.act = mk.act(chans[0])
        cin = chans[0]
        for s, (c, nf, ns) in enumerate(
            zip(chans, (36 * w, 54 * w, 72 * w), (4 * w, 6 * w, 8 * w))
        ):
            layers = []
            for b in range(blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                layers.append(BasicBlock(mk, cin, c, stride, norm, nf, ns))
                cin = c
            setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
        self.linear = mk.linear(chans[-1], num_classes, 8)
        self.config = dict(
            arch="resnet20",
            variant=variant,
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            norm=norm,
            kappa=kappa,
            conv_mask=conv_mask,
            mask_seed=mask_seed,
            blocks=blocks,
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean(dim=(2, 3)))

    def permutation_spec(self):
        """One group per residual stream (``stage{k}``, shared by every block adding into it) and one per block interior."""
        from landscape.spec_builder import SpecBuilder

        b = SpecBuilder(self)
        b.layer("conv1", "stage1", None).norm("bn1", "stage1").act("act", "stage1")
        prev = "stage1"
        for s in range(1, 4):
            stream = f"stage{s}"
            for j, block in enumerate(getattr(self, f"layer{s}")):
                p, inner = f"layer{s}.{j}", f"layer{s}.{j}.inner"
                b.layer(f"{p}.conv1", inner, prev).norm(f"{p}.bn1", inner).act(f"{p}.act1", inner)
                b.layer(f"{p}.conv2", stream, inner).norm(f"{p}.bn2", stream).act(
                    f"{p}.act2", stream
                )
                if len(block.shortcut):
                    b.layer(f"{p}.shortcut.0", stream, prev).norm(f"{p}.shortcut.1", stream)
                prev = stream
        return b.layer("linear", None, prev).build()


# ----------------------------------------------------------------------------- ResNet-8
@_register("resnet8")
class ResNet8(ResNet20):
    """CIFAR ResNet-8 (3 stages x 1 basic block) of the paper's metanetwork zoos.

    ``width`` may be fractional: the stages have ``round(16 w)``, ``round(32 w)``,
    ``round(64 w)`` channels (the paper's parameter-matched control uses ``w = 0.875``).
    GroupNorm(1, C) and option-B shortcuts as in ResNet-20; at ``width=1`` on CIFAR-10 it has
    78,042 parameters.

    W-Asym (the paper's ``sparse_resnet8``): ``kappa = 2``; with ``conv_mask="filter"`` every
    3x3 conv fixes ``n_fix`` whole 3x3 input filters per output channel (the stem has only 3
    input channels, so it is fully fixed: no trainable entry), each 1x1 shortcut and the final
    linear layer fix ``n_fix`` entries per row; with ``conv_mask="entry"``, ``n_fix`` counts
    entries in every layer. At ``width=1``: 60,634 trainable entries.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        width: float = 1.0,
        norm: str = "group",
        variant: str = "standard",
        kappa: float = 2.0,
        n_fix: int = 8,
        conv_mask: str = "filter",
        mask_seed: int = 0,
        input_dim: int | None = None,
    ):
        nn.Module.__init__(self)
        variant = _check_variant(variant)
        if not width > 0:
            raise UserError(f"resnet8 width must be positive, got {width}")
        mk = _ConvFactory(variant, mask_seed, kappa, conv_mask, allow_full=True)
        chans = [max(1, round(c * width)) for c in (16, 32, 64)]
        per_conv = n_fix * 9 if conv_mask == "filter" else n_fix  # the factory counts entries
        self.conv1 = mk.conv(in_channels, chans[0], 3, per_conv, padding=1, bias=False)
        self.bn1 = conv_norm(norm, chans[0])
        self.act = mk.act(chans[0])
        cin = chans[0]
        for s, c in enumerate(chans):
            block = BasicBlock(mk, cin, c, 2 if s else 1, norm, per_conv, n_fix)
            setattr(self, f"layer{s + 1}", nn.Sequential(block))
            cin = c
        self.linear = mk.linear(chans[-1], num_classes, n_fix)
        self.config = dict(
            arch="resnet8",
            variant=variant,
            in_channels=in_channels,
            num_classes=num_classes,
            width=width,
            norm=norm,
            kappa=kappa,
            n_fix=n_fix,
            conv_mask=conv_mask,
            mask_seed=mask_seed,
        )


# ----------------------------------------------------------------------------- build
def build(arch: str, variant: str = "standard", *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build a zoo model; ``seed`` fixes the trainable initialisation (the global RNG is left as it was).

    >>> build("mlp", "w-asym", input_dim=64, width=64, seed=1)  # doctest: +ELLIPSIS
    MLP(...)
    """
    if arch not in ARCHS:
        raise UserError(
            f"unknown architecture {arch!r}: the zoo has {', '.join(ARCHS)}; for your own use --arch package.module:callable"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        try:
            model = ARCHS[arch](variant=variant, **kwargs)
        except TypeError as exc:
            raise UserError(f"bad arguments for {arch}: {exc}") from exc
    model.config["seed"] = int(seed)
    return model.eval()


from . import transformer  # noqa: E402,F401  (registers "transformer"; it imports this module)
