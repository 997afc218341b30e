"""One batch of data, whatever form it came in: inputs, targets and a mask.

Data arrive as ``(x, y)`` tuples, as dicts of tensors (what Hugging Face datasets and
tokenisers give: ``input_ids``, ``attention_mask``, ``labels``) or as plain tensors. A
:class:`BatchSpec` says where the inputs, targets and mask of a raw batch are, and turns it
into a :class:`Batch`:

- ``inputs``: a tensor, fed as ``model(x)``, or a dict of tensors, fed as ``model(**inputs)``;
- ``targets``: a tensor, or None (a loss that reads only the inputs and outputs);
- ``mask``: None, or a tensor whose nonzero entries mark the units that count (e.g. the
  ``attention_mask`` of padded sequences).

Every tensor of a batch has the batch's samples along its first dimension.

A :class:`Batch` is a tuple ``(inputs, targets)`` with the mask as an attribute, so every
loop written for ``(x, y)`` pairs (``for x, y in batches``) reads it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import UserError

#: dict keys taken as the targets of a dict batch when the spec names none (first found)
TARGET_KEYS = ("labels", "label", "targets", "target", "y")
#: dict key taken as the mask of a dict batch when the spec names none
MASK_KEYS = ("attention_mask",)

Inputs = Tensor | dict[str, Tensor]
Key = str | int


class Batch(tuple):
    """``(inputs, targets)`` of one batch, with ``mask`` (None or a tensor) as an attribute.

    ``inputs`` is a tensor (``model(x)``) or a dict of tensors (``model(**inputs)``);
    ``targets`` a tensor or None. Unpacks as a pair: ``x, y = batch``.
    """

    def __new__(cls, inputs: Inputs, targets: Tensor | None = None, mask: Tensor | None = None):
        b = super().__new__(cls, (inputs, targets))
        b.mask = mask
        return b

    def __reduce__(self):  # pickle and deepcopy keep the mask
        return (Batch, (self[0], self[1], self.mask))

    @property
    def inputs(self) -> Inputs:
        return self[0]

    @property
    def targets(self) -> Tensor | None:
        return self[1]

    def __repr__(self) -> str:
        def shape(t: Any) -> str:
            if isinstance(t, Mapping):
                return "{" + ", ".join(f"{k}: {shape(v)}" for k, v in t.items()) + "}"
            return "None" if t is None else str(tuple(t.shape))

        return f"Batch(inputs={shape(self[0])}, targets={shape(self[1])}, mask={shape(self.mask)})"

    def tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Every tensor with a name (``inputs``, ``inputs.<key>``, ``targets``, ``mask``), in a fixed order."""
        x = self[0]
        if isinstance(x, Mapping):
            for k in sorted(x):
                yield f"inputs.{k}", x[k]
        else:
            yield "inputs", x
        if self[1] is not None:
            yield "targets", self[1]
        if self.mask is not None:
            yield "mask", self.mask

    def map(self, fn: Callable[[Tensor], Tensor], inputs_only: bool = False) -> Batch:
        """The batch with ``fn`` applied to every tensor (to the inputs only when ``inputs_only``)."""
        x = self[0]
        x = {k: fn(v) for k, v in x.items()} if isinstance(x, Mapping) else fn(x)
        if inputs_only:
            return Batch(x, self[1], self.mask)
        y = None if self[1] is None else fn(self[1])
        return Batch(x, y, None if self.mask is None else fn(self.mask))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    @property
    def size(self) -> int:
        """Samples in the batch (the first dimension of its first tensor)."""
        return int(next(self.tensors())[1].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.tensors())

    def rows(self, start: int, stop: int) -> Batch:
        """Samples ``start:stop`` of every tensor."""
        return self.map(lambda t: t[start:stop])


def call(fn: Callable[..., Any], inputs: Inputs) -> Any:
    """``fn(**inputs)`` for dict inputs, else ``fn(inputs)``."""
    return fn(**inputs) if isinstance(inputs, Mapping) else fn(inputs)


def call_args(inputs: Inputs) -> tuple[tuple, dict[str, Tensor]]:
    """``(args, kwargs)`` of the model call for ``inputs`` (for ``torch.func.functional_call``)."""
    return ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})


def cat(batches: Sequence[Batch]) -> Batch:
    """The batches' samples as one batch (every tensor concatenated along dimension 0)."""
    first = batches[0]
    x = first[0]
    if isinstance(x, Mapping):
        inputs: Inputs = {k: torch.cat([b[0][k] for b in batches]) for k in x}
    else:
        inputs = torch.cat([b[0] for b in batches])
    y = None if first[1] is None else torch.cat([b[1] for b in batches])
    m = None if first.mask is None else torch.cat([b.mask for b in batches])
    return Batch(inputs, y, m)


def _kind(raw: Any) -> str:
    if isinstance(raw, Tensor):
        return "tensor"
    if isinstance(raw, Mapping):
        return "dict"
    if isinstance(raw, (tuple, list)):
        return "tuple"
    return type(raw).__name__


@dataclass(frozen=True)
class BatchSpec:
    """Where a raw batch keeps its inputs, targets and mask: dict keys or tuple positions.

    ``BatchSpec(inputs="input_ids", targets="labels", mask="attention_mask")`` reads a dict
    batch; ``inputs`` may name several keys (``("input_ids", "attention_mask")``: the model is
    called as ``model(**{key: batch[key]})``) and one key means ``model(batch[key])``. On tuple
    batches the fields are positions. Fields left None take the defaults:

    - tuple ``(x, y, ...)``: inputs ``x``, targets ``y`` (None for a 1-tuple), no mask;
    - dict: targets the first of :data:`TARGET_KEYS` present, mask ``attention_mask`` when
      present; inputs every other key (the mask included, as models take it): one remaining
      key is passed positionally, several as keyword arguments;
    - tensor: the inputs, no targets, no mask.
    """

    inputs: Key | tuple[Key, ...] | None = None
    targets: Key | None = None
    mask: Key | None = None

    def __call__(self, raw: Any, where: str = "batch") -> Batch:
        """The :class:`Batch` of one raw batch (a :class:`Batch` passes through), checked."""
        if isinstance(raw, Batch):
            return check(raw, where)
        kind = _kind(raw)
        if kind == "tensor":
            if self.targets is not None or self.mask is not None:
                raise UserError(
                    f"{where}: a plain tensor has no targets or mask to read: give (inputs, targets) "
                    "tuples or dicts"
                )
            return check(Batch(raw), where)
        if kind == "dict":
            return check(self._from_dict(raw, where), where)
        if kind == "tuple":
            return check(self._from_tuple(raw, where), where)
        raise UserError(
            f"{where}: a batch must be an (inputs, targets) tuple, a dict of tensors or a tensor, "
            f"got {kind}"
        )

    def _from_dict(self, raw: Mapping, where: str) -> Batch:
        def get(key: Key, field: str) -> Tensor:
            if key not in raw:
                have = ", ".join(map(str, raw)) or "none"
                raise UserError(
                    f"{where}: the batch has no key {key!r} (the spec's {field}); its keys: {have}"
                )
            return raw[key]

        targets_key = self.targets
        if targets_key is None:
            targets_key = next((k for k in TARGET_KEYS if k in raw), None)
        mask_key = self.mask
        if mask_key is None:
            mask_key = next((k for k in MASK_KEYS if k in raw), None)
        targets = None if targets_key is None else get(targets_key, "targets")
        mask = None if mask_key is None else get(mask_key, "mask")
        if self.inputs is None:
            keys = [k for k in raw if k != targets_key]
            if not keys:
                raise UserError(f"{where}: the batch holds only its targets, no inputs")
        elif isinstance(self.inputs, (str, int)):
            return Batch(get(self.inputs, "inputs"), targets, mask)
        else:
            keys = list(self.inputs)
        if len(keys) == 1 and self.inputs is None:
            return Batch(get(keys[0], "inputs"), targets, mask)
        return Batch({str(k): get(k, "inputs") for k in keys}, targets, mask)

    def _from_tuple(self, raw: Sequence, where: str) -> Batch:
        def get(i: Key, field: str) -> Any:
            if not isinstance(i, int):
                raise UserError(
                    f"{where}: the spec names the {field} by key {i!r}, but the batch is a tuple: "
                    "name positions (0, 1, ...) or give dict batches"
                )
            if not -len(raw) <= i < len(raw):
                raise UserError(
                    f"{where}: the spec's {field} is position {i}, the batch has {len(raw)} entries"
                )
            return raw[i]

        if not raw:
            raise UserError(f"{where}: an empty tuple is not a batch")
        if self.inputs is None:
            inputs = raw[0]
        elif isinstance(self.inputs, (str, int)):
            inputs = get(self.inputs, "inputs")
        else:
            raise UserError(
                f"{where}: several inputs need dict batches (model(**inputs)); a tuple has positions"
            )
        if self.targets is None:
            targets = raw[1] if len(raw) > 1 else None
        else:
            targets = get(self.targets, "targets")
        mask = None if self.mask is None else get(self.mask, "mask")
        return Batch(inputs, targets, mask)


def check(b: Batch, where: str) -> Batch:
    """Raise :class:`UserError` unless every entry is a tensor with the same (nonzero) number of
    samples and floating inputs are finite."""
    x = b[0]
    parts = [("inputs", x)] if not isinstance(x, Mapping) else [(f"inputs[{k!r}]", x[k]) for k in x]
    if not parts:
        raise UserError(f"{where}: the batch has no inputs")
    parts += [("targets", b[1])] if b[1] is not None else []
    parts += [("mask", b.mask)] if b.mask is not None else []
    for name, t in parts:
        if not isinstance(t, Tensor):
            raise UserError(f"{where}: the {name} are a {type(t).__name__}, not a tensor")
        if t.dim() == 0:
            raise UserError(
                f"{where}: the {name} are a scalar; every entry needs a sample dimension"
            )
    n = int(parts[0][1].shape[0])
    for name, t in parts[1:]:
        if int(t.shape[0]) != n:
            raise UserError(f"{where}: {parts[0][0]} have {n} samples but {name} {t.shape[0]}")
    if n == 0:
        raise UserError(f"{where}: the data holds no samples")
    for name, t in parts:
        if name.startswith("inputs") and t.is_floating_point() and not torch.isfinite(t).all():
            raise UserError(f"{where}: the inputs contain NaN or Inf")
    return b
