"""What a population is: the hyperparameter distribution, the variants, and how each is built.

:class:`PopulationSpec` holds the architecture, the variants, the number of networks per
variant and the distribution of the hyperparameters drawn per network (:class:`Dist`);
:func:`spec_from_config` reads it from a TOML ``[population]`` table. The paper's defaults
(:data:`PAPER`, Lim et al. 2024, metanetwork zoos): learning rate ``0.5 * 10^-U(0, 2)``
(log-uniform on [0.005, 0.5]), weight decay ``10^-U(1, 5)`` (log-uniform on [1e-5, 0.1]),
label smoothing ``U(0, 0.2)``, epochs uniform on the integers 10..40, AdamW, batch 512, a
triangular learning-rate schedule peaking at epoch 5.

Network ``i`` draws from ``numpy.random.default_rng([seed, i])`` in the order lr, weight
decay, label smoothing, epochs: the same draws in every variant (paired networks), whatever
the population's size or the order networks train in.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from landscape.errors import UserError

from . import zoo
from .io import first_line, os_error_line
from .sources import DataSet
from .train import TrainSettings, normalise_augment

DISTRIBUTIONS = ("constant", "uniform", "log_uniform", "int_uniform", "choice")
#: population variant names beyond the zoo's: a standard network with fewer parameters
CONTROL = "standard-small"
#: the hyperparameters drawn per network, in the order they are drawn
DRAWN = ("lr", "weight_decay", "label_smoothing", "epochs")


# ----------------------------------------------------------------------------- distributions
@dataclass(frozen=True)
class Dist:
    """One hyperparameter's distribution.

    ``constant``: ``low``; ``uniform``: ``U(low, high)``; ``log_uniform``:
    ``10^U(log10 low, log10 high)``; ``int_uniform``: an integer uniform on ``low..high``
    (both included); ``choice``: one of ``values``, uniformly.
    """

    distribution: str
    low: float = 0.0
    high: float = 0.0
    values: tuple[float, ...] = ()

    def draw(self, rng: np.random.Generator) -> float | int:
        d = self.distribution
        if d == "constant":
            return self.low
        if d == "uniform":
            return float(rng.uniform(self.low, self.high))
        if d == "log_uniform":
            return float(10 ** rng.uniform(math.log10(self.low), math.log10(self.high)))
        if d == "int_uniform":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        return self.values[int(rng.integers(len(self.values)))]

    def support(self) -> tuple[float, float]:
        """The smallest and largest value a draw can take."""
        if self.distribution == "constant":
            return self.low, self.low
        if self.distribution == "choice":
            return min(self.values), max(self.values)
        return self.low, self.high

    def mean(self) -> float:
        """The expected value (for the cost estimate)."""
        d = self.distribution
        if d in ("uniform", "int_uniform"):
            return (self.low + self.high) / 2
        if d == "log_uniform":
            lo, hi = math.log(self.low), math.log(self.high)
            return (self.high - self.low) / (hi - lo) if hi > lo else self.low
        if d == "choice":
            return float(np.mean(self.values))
        return float(self.low)

    def describe(self) -> str:
        d = self.distribution
        if d == "constant":
            return f"{self.low:g}"
        if d == "choice":
            return f"one of {list(self.values)}"
        name = {"uniform": "U", "log_uniform": "logU", "int_uniform": "integer U"}[d]
        return f"{name}({self.low:g}, {self.high:g})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"distribution": self.distribution}
        if self.distribution == "choice":
            out["values"] = list(self.values)
        elif self.distribution == "constant":
            out["value"] = self.low
        else:
            out.update(low=self.low, high=self.high)
        return out

    @classmethod
    def parse(cls, value: Any, where: str) -> Dist:
        """A number (a constant) or a table ``{distribution, low, high}`` / ``{distribution =
        "choice", values}`` / ``{distribution = "constant", value}``; ``where`` names it in errors."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls("constant", value).check(where)
        if not isinstance(value, Mapping):
            raise UserError(
                f"{where} = {value!r}: must be a number or a table such as "
                '{distribution = "log_uniform", low = 0.005, high = 0.5}'
            )
        kind = value.get("distribution")
        if kind not in DISTRIBUTIONS:
            raise UserError(
                f"{where}: distribution {kind!r}: use one of {', '.join(DISTRIBUTIONS)}"
            )
        allowed = {
            "constant": {"value"},
            "choice": {"values"},
        }.get(kind, {"low", "high"})
        extra = set(value) - allowed - {"distribution"}
        missing = allowed - set(value)
        if extra or missing:
            raise UserError(
                f"{where}: a {kind} distribution takes {', '.join(sorted(allowed))}"
                + (f" (unknown: {', '.join(sorted(extra))})" if extra else "")
                + (f" (missing: {', '.join(sorted(missing))})" if missing else "")
            )

        def number(k: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{where}: {k} = {v!r}: must be a finite number")
            return v

        if kind == "constant":
            return cls(kind, number("value", value["value"])).check(where)
        if kind == "choice":
            vals = value["values"]
            if not isinstance(vals, list) or not vals:
                raise UserError(f"{where}: values must be a non-empty list of numbers")
            return cls(kind, values=tuple(number("values", v) for v in vals)).check(where)
        return cls(kind, number("low", value["low"]), number("high", value["high"])).check(where)

    def check(self, where: str) -> Dist:
        if self.distribution in ("uniform", "log_uniform", "int_uniform") and self.low > self.high:
            raise UserError(f"{where}: low {self.low:g} is above high {self.high:g}")
        if self.distribution == "log_uniform" and self.low <= 0:
            raise UserError(f"{where}: a log_uniform distribution needs low > 0, got {self.low:g}")
        if self.distribution == "int_uniform" and (
            self.low != int(self.low) or self.high != int(self.high)
        ):
            raise UserError(f"{where}: an int_uniform distribution needs integer low and high")
        return self


# ----------------------------------------------------------------------------- the specification
@dataclass(frozen=True)
class PopulationSpec:
    """What a population is: architecture, variants, size, and the hyperparameter distribution.

    ``variants`` are zoo variants or ``standard-small`` (a standard network whose width is
    chosen so its parameter count is closest to the W-Asym variant's trainable count;
    ``small_width`` sets it by hand). ``augment="auto"``: ``crop+flip`` for colour images,
    ``crop`` for grey images (a flipped digit is another digit), ``none`` for other inputs;
    ``augment_pad=None``: ``max(1, round(H / 8))`` pixels (4 on 32 x 32 images).
    """

    arch: str = "resnet8"
    variants: tuple[str, ...] = ("standard", "w-asym", "sigma-asym", CONTROL)
    size: int = 200
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    mask_seed: int = 0
    lr: Dist = Dist("log_uniform", 0.005, 0.5)
    weight_decay: Dist = Dist("log_uniform", 1e-5, 1e-1)
    label_smoothing: Dist = Dist("uniform", 0.0, 0.2)
    epochs: Dist = Dist("int_uniform", 10, 40)
    epochs_scale: float = 1.0
    batch_size: int = 512
    optimizer: str = "adamw"
    schedule: str = "triangular"
    peak_epoch: float = 5.0
    warmup_epochs: float = 0.0
    augment: str = "auto"
    augment_pad: int | None = None
    small_width: float | None = None
    group_prefix: str = ""

    def check(self) -> PopulationSpec:
        if self.arch not in zoo.ARCHS:
            raise UserError(
                f"unknown architecture {self.arch!r} for a population: the zoo has {', '.join(zoo.ARCHS)}"
            )
        if not self.variants:
            raise UserError("--variants names no variant: e.g. --variants standard,w-asym")
        for v in self.variants:
            if v != CONTROL:
                zoo._check_variant(v)
        if len(set(self.variants)) != len(self.variants):
            raise UserError(f"--variants lists a variant twice: {list(self.variants)}")
        for name, v in (("--population", self.size), ("batch_size", self.batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        if not (self.epochs_scale > 0 and math.isfinite(self.epochs_scale)):
            raise UserError(f"--epochs-scale must be a positive number, got {self.epochs_scale}")
        if self.small_width is not None and not self.small_width > 0:
            raise UserError(f"small_width must be positive, got {self.small_width}")
        if "/" in self.group_prefix or self.group_prefix.startswith("."):
            raise UserError(
                f"--group-prefix {self.group_prefix!r}: must not hold '/' or start with '.'"
            )
        if self.augment != "auto":
            object.__setattr__(self, "augment", normalise_augment(self.augment))
        for name in DRAWN:
            getattr(self, name).check(f"[population] {name}")
        ls_lo, ls_hi = self.label_smoothing.support()
        if ls_lo < 0 or ls_hi >= 1:
            raise UserError("[population] label_smoothing must stay in [0, 1)")
        if self.lr.support()[0] <= 0 or self.weight_decay.support()[0] < 0:
            raise UserError("[population] lr must be positive and weight_decay non-negative")
        if self.epochs.support()[0] < 0 or any(
            v != int(v) for v in (*self.epochs.support(), *self.epochs.values)
        ):
            raise UserError("[population] epochs must be non-negative integers")
        if self.epochs.distribution in ("uniform", "log_uniform"):
            raise UserError("[population] epochs: use an int_uniform distribution")
        self.settings(
            dict(lr=1.0, weight_decay=0.0, label_smoothing=0.0, epochs=1), "none", 0
        ).check()
        return self

    def group(self, variant: str) -> str:
        return f"{self.group_prefix}{variant}"

    def draw(self, index: int) -> dict[str, Any]:
        """The hyperparameters of network ``index`` (the same in every variant)."""
        rng = np.random.default_rng([int(self.seed), int(index)])
        hp: dict[str, Any] = {name: getattr(self, name).draw(rng) for name in DRAWN}
        drawn = int(round(hp["epochs"]))
        hp["epochs"] = max(1, round(drawn * self.epochs_scale)) if drawn else 0
        if self.epochs_scale != 1:
            hp["epochs_drawn"] = drawn
        return hp

    def settings(self, hp: Mapping[str, Any], augment: str, pad: int) -> TrainSettings:
        return TrainSettings(
            epochs=int(hp["epochs"]),
            lr=float(hp["lr"]),
            weight_decay=float(hp["weight_decay"]),
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            schedule=self.schedule,
            peak_epoch=self.peak_epoch * self.epochs_scale,
            warmup_epochs=self.warmup_epochs * self.epochs_scale,
            label_smoothing=float(hp["label_smoothing"]),
            augment=augment,
            augment_pad=pad,
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in DRAWN:
            out[name] = getattr(self, name).to_dict()
        out["variants"] = list(self.variants)
        return json.loads(json.dumps(out, default=str))

    def describe(self) -> str:
        return ", ".join(f"{n} {getattr(self, n).describe()}" for n in DRAWN)


#: the paper's ResNet-8 zoos (Lim et al. 2024, metanetwork experiment)
PAPER = PopulationSpec()

_SPEC_KEYS = set(PopulationSpec.__dataclass_fields__)


def spec_from_config(config: Mapping[str, Any], source: str, **overrides: Any) -> PopulationSpec:
    """A :class:`PopulationSpec` from the ``[population]`` table of a TOML file (``source``),
    then ``overrides`` (None values ignored)."""
    table = dict(config.get("population", {})) if config else {}
    unknown_tables = set(config or {}) - {"population", "metanet"}  # [metanet]: the study's
    if unknown_tables:
        raise UserError(
            f"{source}: unknown table(s) {sorted(unknown_tables)}; expected [population] (and [metanet])"
        )
    bad = set(table) - _SPEC_KEYS
    if bad:
        raise UserError(
            f"{source}: unknown key(s) {sorted(bad)} in [population]; expected {sorted(_SPEC_KEYS)}"
        )
    kw: dict[str, Any] = {}
    types = {
        "arch": str, "augment": str, "schedule": str, "optimizer": str, "group_prefix": str,
        "size": int, "seed": int, "mask_seed": int, "batch_size": int, "augment_pad": int,
        "epochs_scale": float, "peak_epoch": float, "warmup_epochs": float, "small_width": float,
    }  # fmt: skip
    for k, v in table.items():
        if k in DRAWN:
            kw[k] = Dist.parse(v, f"{source}: [population] {k}")
        elif k == "variants":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise UserError(f"{source}: [population] variants must be a list of names")
            kw[k] = tuple(v)
        elif k == "arch_kwargs":
            if not isinstance(v, Mapping):
                raise UserError(f"{source}: [population] arch_kwargs must be a table")
            kw[k] = dict(v)
        else:
            t = types[k]
            ok = isinstance(v, (int, float) if t is float else t) and not isinstance(v, bool)
            if not ok:
                kind = {str: "a string", int: "an integer", float: "a number"}[t]
                raise UserError(f"{source}: [population] {k} = {v!r}: must be {kind}; fix the file")
            kw[k] = v
    if kw.get("arch") is not None and kw["arch"] not in zoo.ARCHS:
        raise UserError(
            f"{source}: [population] arch = {kw['arch']!r} is not a zoo model ({', '.join(zoo.ARCHS)})"
        )
    for k, v in overrides.items():
        if v is None:
            continue
        kw[k] = Dist("constant", v) if k in DRAWN else v
    if "arch" in overrides and overrides["arch"] is not None and "arch_kwargs" not in table:
        kw.setdefault("arch_kwargs", {})
    try:
        spec = PopulationSpec(**kw)
    except TypeError as exc:
        raise UserError(f"{source}: {first_line(exc)}") from exc
    try:
        return spec.check()
    except UserError as exc:
        if source == "command line":
            raise
        raise UserError(f"{source}: {exc}") from exc


def read_population_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The TOML file as a dict (empty for None); unreadable or invalid files are one line."""
    if path is None:
        return {}
    import tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: no such config file") from exc
    except OSError as exc:
        raise UserError(os_error_line(path, exc)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({first_line(exc)}): fix the file") from exc


# ----------------------------------------------------------------------------- architectures
def model_kwargs(spec: PopulationSpec, train: DataSet) -> dict[str, Any]:
    """Constructor arguments for the data: classes, and the input size or channels."""
    kw = dict(spec.arch_kwargs)
    kw.setdefault("num_classes", train.num_classes)
    if spec.arch == "mlp":
        kw.setdefault("input_dim", int(np.prod(train.input_shape)))
    else:
        kw.setdefault("in_channels", int(train.input_shape[0]))
    return kw


_COUNTS: dict[str, int] = {}


def _count(arch: str, variant: str, kw: dict[str, Any], trainable: bool) -> int:
    """Parameters (``trainable``: less the fixed W-Asym entries) of a zoo model, cached."""
    key = json.dumps([arch, variant, kw, trainable], sort_keys=True, default=str)
    if key not in _COUNTS:
        # shapes only on the meta device; masks must be real to count their zeros
        with torch.device("cpu" if trainable else "meta"):
            model = zoo.build(arch, variant, **kw)
        n = sum(p.numel() for p in model.parameters())
        _COUNTS[key] = n - model.fixed_entry_count() if trainable else n
    return _COUNTS[key]


def _scaled(arch: str, kw: dict[str, Any], s: float) -> dict[str, Any]:
    """``kw`` with the network's width scaled by ``s`` (per architecture)."""
    if arch == "mlp":
        return {**kw, "width": max(1, round(kw.get("width", 512) * s))}
    if arch == "cnn":
        return {**kw, "channels": [max(1, round(c * s)) for c in kw.get("channels", (16, 32))]}
    if arch == "resnet8":
        return {**kw, "width": kw.get("width", 1.0) * s}
    raise UserError(
        f"the {CONTROL} control needs an architecture with a fractional width (mlp, cnn, "
        f"resnet8), not {arch}: drop {CONTROL} from --variants or choose one of those"
    )


def control_kwargs(spec: PopulationSpec, kw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Constructor arguments of the parameter-matched standard control, and how they were chosen.

    ``small_width`` sets the control's ``width`` (MLP hidden width, ResNet-8 multiplier) or,
    for the CNN, the scale of its channels. Without it: the width scale ``s`` in ``k/64`` (k = 1..64; ``k/16`` for
    ResNet-8, whose channels are multiples of 1/16 of the base) whose standard network has
    the parameter count closest to the W-Asym network's trainable count.
    """
    if spec.small_width is not None:  # the control's width (mlp, resnet8) or channel scale (cnn)
        if spec.arch == "cnn":
            chosen = _scaled("cnn", kw, spec.small_width)
        else:
            _scaled(spec.arch, kw, 1.0)  # refuses architectures without a width
            chosen = {**kw, "width": spec.small_width}
        if spec.arch == "mlp":
            chosen["width"] = max(1, round(spec.small_width))
        n = _count(spec.arch, "standard", chosen, False)
        return chosen, f"small_width {spec.small_width:g}: {n:,} parameters"
    target = _count(spec.arch, "w-asym", kw, trainable=True)
    steps = 16 if spec.arch == "resnet8" else 64
    best = min(
        (abs(_count(spec.arch, "standard", _scaled(spec.arch, kw, k / steps), False) - target), k)
        for k in range(1, steps + 1)
    )
    chosen = _scaled(spec.arch, kw, best[1] / steps)
    n = _count(spec.arch, "standard", chosen, False)
    return (
        chosen,
        f"width scale {best[1] / steps:g}: {n:,} parameters vs {target:,} W-Asym trainable",
    )


def variant_build(spec: PopulationSpec, variant: str, train: DataSet) -> tuple[str, dict[str, Any]]:
    """``(zoo variant, constructor arguments)`` of a population variant."""
    kw = {**model_kwargs(spec, train), "mask_seed": spec.mask_seed}
    if variant == CONTROL:
        return "standard", control_kwargs(spec, kw)[0]
    return zoo._check_variant(variant), kw


def resolve_augment(spec: PopulationSpec, train: DataSet) -> tuple[str, int]:
    """The augmentation and padding this data gets (``auto`` resolved)."""
    shape = train.input_shape
    image = len(shape) == 3
    aug = spec.augment
    if aug == "auto":
        aug = ("crop+flip" if shape[0] == 3 else "crop") if image else "none"
    if aug != "none" and not image:
        raise UserError(
            f"augment {aug!r} needs images (C, H, W); the inputs have shape {shape}: use augment none"
        )
    pad = (
        spec.augment_pad
        if spec.augment_pad is not None
        else (max(1, round(shape[1] / 8)) if image else 0)
    )
    return aug, int(pad)
