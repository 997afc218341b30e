"""Objectives: the loss (and an accuracy-like metric) of a model's outputs, in one place.

An :class:`Objective` maps a model's outputs on one :class:`~landscape.batch.Batch` to
per-unit losses ``l_u``, a 1-D tensor with one value per *unit* (a sample, or a token of a
language model), and optionally to per-unit hits ``c_u`` in {0, 1}. Over data of batches
``b = 1..B`` with unit sets ``U_b``, every analysis uses the exact means

    L = (sum_b sum_{u in U_b} l_u) / (sum_b |U_b|),
    accuracy = (sum_b sum_{u in U_b} c_u) / (sum_b |U_b|),

never a mean of batch means: batches of any sizes, or of different padding, give the mean
over all units of the data.

Built-ins (:func:`resolve_objective` by name):

- ``classification``: outputs ``f (N, C)``, integer labels ``y (N,)``;
  ``l_i = -log softmax(f_i)[y_i]``, ``c_i = [argmax_c f_ic = y_i]``; units: samples.
- ``squared_error``: ``l_i = sum_j (f_ij - y_ij)^2`` over the output entries of sample ``i``
  (the targets reshaped like the outputs); no accuracy; units: samples.
- ``lm``: logits ``z (N, T, V)``, token targets ``y (N, T)``. The units are the tokens
  ``(n, t)`` with ``y_nt != -100`` (the ignore index) and, when the batch has a mask (e.g.
  the attention mask of padded sequences), ``mask_nt != 0``;
  ``l_nt = -log softmax(z_nt)[y_nt]``, ``c_nt = [argmax_v z_ntv = y_nt]``. Targets are
  aligned with the logits (for next-token prediction the data hold the inputs shifted by one).
- ``auto`` (the default): ``classification`` for integer targets, ``squared_error`` for
  float targets, decided per batch: what every analysis computed before objectives existed.

The built-ins read outputs that are not a tensor through their ``logits`` (attribute or
dict key), as Hugging Face models return them.

A user loss is any callable ``loss(outputs, batch) -> per-sample losses (N,)``: pass it in
Python, or name it as ``module:callable`` or ``path/file.py:callable`` (``--loss`` on the
command line). Such a name is imported only when the user gives it, never because a file
(a results file, a config) names it. An :class:`Objective` adds ``correct=`` (an accuracy)
or counts tokens (``unit="token"``: the loss returns one value per counted token).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from .batch import Batch
from .errors import UserError
from .user_code import import_object

UNITS = ("sample", "token")
#: targets equal to this are not counted by the lm loss (the Hugging Face / PyTorch convention)
IGNORE_INDEX = -100

Loss = Callable[[Any, Batch], Tensor]
Correct = Callable[[Any, Batch], "Tensor | None"]
#: ``check(outputs, batch, data)``: once per data set, on the first batch (data: the Batches)
Check = Callable[[Any, Batch, Any], None]


@dataclass(frozen=True, eq=False)
class Objective:
    """A loss ``loss(outputs, batch) -> (units,)`` with an optional ``correct(outputs, batch)``.

    ``unit`` is ``"sample"`` (the loss returns shape ``(N,)`` for a batch of ``N`` samples) or
    ``"token"`` (one value per counted token, any length). ``check`` runs once per data set
    on the first batch, for checks that need the whole data (label ranges). ``spec`` is the
    name the objective was resolved from, if any: it pickles as that name and is resolved
    again where it is unpickled (a worker).
    """

    name: str
    loss: Loss
    correct: Correct | None = None
    unit: str = "sample"
    description: str = ""
    check: Check | None = None
    spec: str | None = None

    def __post_init__(self):
        if self.unit not in UNITS:
            raise UserError(
                f"objective {self.name}: unit must be sample or token, got {self.unit!r}"
            )
        if not callable(self.loss):
            raise UserError(f"objective {self.name}: the loss is not callable")

    def __reduce_ex__(self, protocol):
        if self.spec is not None:  # by name: resolved again where it is unpickled
            return (resolve_objective, (self.spec,))
        return super().__reduce_ex__(protocol)

    def __call__(self, outputs: Any, batch: Batch) -> Tensor:
        """The per-unit losses of one batch, checked (see :meth:`losses`)."""
        return self.losses(outputs, batch)

    def losses(self, outputs: Any, batch: Batch) -> Tensor:
        """Per-unit losses: a floating 1-D tensor, of length ``N`` for sample units."""
        out = self.loss(outputs, batch)
        if not isinstance(out, Tensor):
            raise UserError(
                f"the loss {self.name} returned a {type(out).__name__}, not a tensor of per-{self.unit} losses"
            )
        n = batch.size
        if out.dim() != 1 or (self.unit == "sample" and out.shape[0] != n):
            want = f"({n},) for this batch of {n} samples" if self.unit == "sample" else "(tokens,)"
            raise UserError(
                f"the loss {self.name} returned shape {tuple(out.shape)}: it must return one value per "
                f"{self.unit}, shape {want}"
            )
        if not out.is_floating_point():
            raise UserError(f"the loss {self.name} returned {out.dtype} values, not floating point")
        return out

    def measure(self, outputs: Any, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """``(losses, hits)`` of one batch: per-unit losses and per-unit correct (None without accuracy)."""
        losses = self.losses(outputs, batch)
        hits = None if self.correct is None else self.correct(outputs, batch)
        if hits is not None and (not isinstance(hits, Tensor) or hits.shape != losses.shape):
            got = tuple(hits.shape) if isinstance(hits, Tensor) else type(hits).__name__
            raise UserError(
                f"the objective {self.name}: correct() gave {got}, its losses {tuple(losses.shape)}: "
                "one value per unit each"
            )
        return losses, hits

    def loss_sum(self, outputs: Any, batch: Batch) -> Tensor:
        """Sum of the batch's per-unit losses (divide the total over the data by its units)."""
        return self.losses(outputs, batch).sum()

    def validate(self, outputs: Any, batch: Batch, data: Any = None) -> None:
        """The once-per-data checks (``check``) on the first batch's outputs."""
        if self.check is not None:
            self.check(outputs, batch, data)

    def settings(self) -> dict[str, str]:
        """What a record stores about the loss."""
        return {"loss": self.spec or self.name, "loss_definition": self.description or self.name}


# ----------------------------------------------------------------------------- helpers
def logits(outputs: Any) -> Tensor:
    """The tensor of ``outputs``: itself, or its ``logits`` (attribute or key)."""
    if isinstance(outputs, Tensor):
        return outputs
    z = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if isinstance(z, Tensor):
        return z
    raise UserError(
        f"the model returned a {type(outputs).__name__} without logits: a built-in loss needs a "
        "tensor (or .logits); pass your own loss for other outputs"
    )


def _targets(batch: Batch, loss: str, what: str) -> Tensor:
    y = batch.targets
    if y is None:
        raise UserError(
            f"the {loss} loss needs {what}, the batches have none: give (inputs, targets) batches "
            "(or name the targets' key in a BatchSpec)"
        )
    return y


def _cached(data: Any, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per data set (cached on the Batches object while it lives)."""
    store = getattr(data, "__dict__", None)
    if store is None:
        return compute()
    if key not in store:
        store[key] = compute()
    return store[key]


def check_targets(outputs: Tensor, label_range: tuple[int, int] | None) -> None:
    """Raise :class:`UserError` unless integer labels ``lo..hi`` fit the model's outputs ``(N, classes)``."""
    if label_range is None:
        return
    if outputs.dim() != 2:
        raise UserError(
            f"classification needs model outputs of shape (N, classes), got {tuple(outputs.shape)}"
            + ("; token targets (N, T) need a token-level loss (lm)" if outputs.dim() == 3 else "")
        )
    lo, hi = label_range
    if lo < 0 or hi >= outputs.shape[1]:
        raise UserError(
            f"labels range over {lo}..{hi} but the model has {outputs.shape[1]} outputs: check --data against the checkpoint"
        )


def _labels(batch: Batch, data: Any) -> tuple[int, int] | None:
    if data is not None and hasattr(data, "label_range"):
        return data.label_range()
    y = batch.targets
    return None if y is None or y.is_floating_point() else (int(y.min()), int(y.max()))


# ----------------------------------------------------------------------------- built-ins
def cross_entropy(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``-log softmax(f_i)[y_i]`` (labels are checked once per data set, not here)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample ``sum_j (f_ij - y_ij)^2``, the targets reshaped like the outputs."""
    diff = outputs.reshape(outputs.shape[0], -1) - targets.reshape(targets.shape[0], -1).to(
        outputs.dtype
    )
    return (diff * diff).sum(dim=1)


def _classification_loss(outputs: Any, batch: Batch) -> Tensor:
    return cross_entropy(logits(outputs), batch.targets)


def _top1(outputs: Any, batch: Batch) -> Tensor:
    return logits(outputs).argmax(dim=1) == batch.targets


def _classification_check(outputs: Any, batch: Batch, data: Any) -> None:
    y = _targets(batch, "classification", "integer class labels")
    if y.is_floating_point():
        raise UserError(
            "the classification loss needs integer class labels, the data has float targets: "
            "use the squared_error (or auto) loss"
        )
    check_targets(logits(outputs), _labels(batch, data))


def _squared_error_loss(outputs: Any, batch: Batch) -> Tensor:
    return squared_error(logits(outputs), batch.targets)


def _squared_error_check(outputs: Any, batch: Batch, data: Any) -> None:
    y, f = _targets(batch, "squared_error", "targets"), logits(outputs)
    if f[0].numel() != y[0].numel():
        raise UserError(
            f"the squared_error loss needs one target per output: outputs {tuple(f.shape[1:])} "
            f"and targets {tuple(y.shape[1:])} per sample differ"
        )


def _auto_loss(outputs: Any, batch: Batch) -> Tensor:
    y = batch.targets
    f = logits(outputs)
    return squared_error(f, y) if y.is_floating_point() else cross_entropy(f, y)


def _auto_correct(outputs: Any, batch: Batch) -> Tensor | None:
    return None if batch.targets.is_floating_point() else _top1(outputs, batch)


def _auto_check(outputs: Any, batch: Batch, data: Any) -> None:
    y = _targets(batch, "auto", "targets (integer labels or float values)")
    if not y.is_floating_point():
        check_targets(logits(outputs), _labels(batch, data))


def _kept(batch: Batch, ignore_index: int) -> Tensor:
    """Boolean ``(N, T)``: the tokens that count (not ``ignore_index``, mask nonzero)."""
    keep = batch.targets != ignore_index
    return keep if batch.mask is None else keep & (batch.mask != 0)


def _counted(outputs: Any, batch: Batch, ignore_index: int) -> tuple[Tensor, Tensor]:
    """Logits ``(U, V)`` and targets ``(U,)`` of the counted tokens. Selected by an index
    computed from the targets alone (not by a boolean mask on the logits), so that the loss
    also works under ``torch.func`` transforms (forward-over-reverse Hessian products)."""
    z = logits(outputs)
    idx = _kept(batch, ignore_index).reshape(-1).nonzero().squeeze(1)
    return z.reshape(-1, z.shape[-1]).index_select(0, idx), batch.targets.reshape(-1)[idx]


def _lm_loss(outputs: Any, batch: Batch, ignore_index: int = IGNORE_INDEX) -> Tensor:
    z, y = _counted(outputs, batch, ignore_index)
    return F.cross_entropy(z, y, reduction="none")


def _lm_correct(outputs: Any, batch: Batch, ignore_index: int = IGNORE_INDEX) -> Tensor:
    z, y = _counted(outputs, batch, ignore_index)
    return z.argmax(dim=-1) == y


def _token_range(data: Any, batch: Batch, ignore_index: int) -> tuple[int, int, int]:
    """``(min, max, count)`` of the counted target tokens over the whole data."""
    lo, hi, count = None, None, 0
    for b in getattr(data, "batches", None) or [batch]:
        y = b[1][_kept(b, ignore_index)]
        if y.numel():
            lo = int(y.min()) if lo is None else min(lo, int(y.min()))
            hi = int(y.max()) if hi is None else max(hi, int(y.max()))
            count += int(y.numel())
    return (lo if lo is not None else 0), (hi if hi is not None else 0), count


def _lm_check(outputs: Any, batch: Batch, data: Any, ignore_index: int = IGNORE_INDEX) -> None:
    y, z = _targets(batch, "lm", "token targets (N, T)"), logits(outputs)
    if z.dim() != 3 or y.dim() != 2 or tuple(z.shape[:2]) != tuple(y.shape):
        raise UserError(
            f"the lm loss needs logits (N, T, V) and targets (N, T), got outputs {tuple(z.shape)} "
            f"and targets {tuple(y.shape)}"
        )
    if y.is_floating_point():
        raise UserError(f"the lm loss needs integer token ids as targets, got {y.dtype}")
    if batch.mask is not None and tuple(batch.mask.shape) != tuple(y.shape):
        raise UserError(
            f"the lm loss needs a mask shaped like the targets {tuple(y.shape)}, got {tuple(batch.mask.shape)}"
        )
    lo, hi, count = _cached(
        data, f"_lm_tokens_{ignore_index}", lambda: _token_range(data, batch, ignore_index)
    )
    if count == 0:
        raise UserError(
            "every target token is padding (ignore index or mask 0): nothing to average"
        )
    if lo < 0 or hi >= z.shape[2]:
        raise UserError(
            f"token targets range over {lo}..{hi} but the model has {z.shape[2]} logits per position: "
            "check --data against the checkpoint"
        )


def language_model(ignore_index: int = IGNORE_INDEX) -> Objective:
    """The ``lm`` objective with another ignore index (see the module docstring)."""
    return Objective(
        "lm",
        partial(_lm_loss, ignore_index=ignore_index),
        partial(_lm_correct, ignore_index=ignore_index),
        "token",
        "token-level cross-entropy, mean over the target tokens that are not padding "
        f"(target {ignore_index} or mask 0); accuracy: top-1 per token",
        partial(_lm_check, ignore_index=ignore_index),
        "lm" if ignore_index == IGNORE_INDEX else None,
    )


AUTO = Objective(
    "auto",
    _auto_loss,
    _auto_correct,
    "sample",
    "mean over samples: cross-entropy for integer labels (accuracy: top-1), squared error "
    "sum_j (f_j - y_j)^2 for float targets",
    _auto_check,
    "auto",
)
CLASSIFICATION = Objective(
    "classification",
    _classification_loss,
    _top1,
    "sample",
    "cross-entropy, mean over samples; accuracy: top-1",
    _classification_check,
    "classification",
)
SQUARED_ERROR = Objective(
    "squared_error",
    _squared_error_loss,
    None,
    "sample",
    "squared error sum_j (f_j - y_j)^2 per sample, mean over samples; no accuracy",
    _squared_error_check,
    "squared_error",
)
LM = language_model()
BUILTIN: dict[str, Objective] = {o.name: o for o in (AUTO, CLASSIFICATION, SQUARED_ERROR, LM)}

# user code imported once per name and process (the name was given by the user)
_IMPORTED: dict[str, Objective] = {}


def is_builtin(spec: Any) -> bool:
    """True for the name of a built-in objective (or None, the default)."""
    return spec is None or (isinstance(spec, str) and _key(spec) in BUILTIN)


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _import(spec: str, option: str) -> Objective:
    fn = import_object(spec, option, f"a loss name ({', '.join(BUILTIN)}) or module:callable")
    if isinstance(fn, Objective):
        return replace(fn, spec=spec)
    if not callable(fn):
        raise UserError(f"{option} {spec!r}: {spec.rpartition(':')[0]} has no callable loss")
    return Objective(spec, fn, description=f"user loss {spec}, mean over samples", spec=spec)


def resolve_objective(spec: Any = None, option: str = "objective") -> Objective:
    """The :class:`Objective` for ``spec``: None or a built-in name (``auto``, ``classification``,
    ``squared_error``, ``lm``), an :class:`Objective`, a loss callable ``(outputs, batch) ->
    (N,)``, or a ``module:callable`` / ``path/file.py:callable`` string (imported here, once
    per process). ``option`` names the setting in messages (``--loss`` on the command line)."""
    if spec is None:
        return AUTO
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        if _key(spec) in BUILTIN:
            return BUILTIN[_key(spec)]
        if ":" not in spec:
            raise UserError(
                f"{option} {spec!r}: unknown loss; use one of {', '.join(BUILTIN)} or module:callable"
            )
        if spec not in _IMPORTED:
            _IMPORTED[spec] = _import(spec, option)
        return _IMPORTED[spec]
    if callable(spec):
        name = getattr(spec, "__qualname__", None) or type(spec).__name__
        return Objective(name, spec, description=f"user loss {name}, mean over samples")
    raise UserError(
        f"{option}: expected a loss name, an Objective or a callable, got {type(spec).__name__}"
    )


def objective_name(spec: Any) -> str:
    """How a record names ``spec`` (the user's string as given; a built-in's canonical name)."""
    if spec is None or (isinstance(spec, str) and _key(spec) in BUILTIN):
        return BUILTIN[_key(spec or "auto")].name
    if isinstance(spec, str):
        return spec
    return resolve_objective(spec).settings()["loss"]
