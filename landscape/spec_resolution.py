"""Which permutation spec a model has, whether it holds, and applying permutations by it.

The policy over the spec machinery below it:

- **resolution**: a model's spec is the one it declares (a ``permutation_spec()`` method,
  as the zoo's models have) or, failing that, the one :mod:`landscape.spec_tracing`
  derives from its computation; either is checked against the model's tensors
  (:meth:`PermutationSpec.resolve`);
- **validation**: a spec is a symmetry of ``f`` when a random permutation ``pi`` of every
  group (fixed buffers moved too) keeps ``max_x |f_pi(x) - f(x)| <= tol * max(1, max_x |f(x)|)``
  on a sample batch; a failure is explained by :func:`locate_error`;
- **caching**: a validated spec is kept per model object (weakly), since it depends on the
  architecture, not on the parameter values;
- :func:`apply_permutation`, the front door for applying a permutation, defaults to the
  model's resolved spec.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .errors import UserError
from .permutation import PermutationSpec, SpecLike, as_spec, named_tensors, site
from .permute import eval_output, output_change, permuted_copy, random_perms
from .sample_inputs import as_sample
from .spec_tracing import derive_spec

#: specs already validated, per model object (a spec depends on the architecture, not on the values)
_VALIDATED: weakref.WeakKeyDictionary[nn.Module, PermutationSpec] = weakref.WeakKeyDictionary()


def validate_spec(
    model: nn.Module, spec: SpecLike, sample: Any = None, *, tol: float = 1e-5, seed: int = 0
) -> float:
    """Check that ``spec`` is a symmetry of ``model``; return the measured output change.

    A random permutation of every group is applied (fixed buffers included) and the output
    on ``sample`` (default: a random batch) compared: ``max |f_pi(x) - f(x)|`` must stay
    below ``tol * max(1, max |f(x)|)``. A failure raises :class:`UserError` naming the group
    and, when one change repairs it, the tensor that broke it.
    """
    spec = as_spec(spec).resolve(model)
    x = as_sample(model, sample)
    ref = eval_output(model, x)
    scale = max(1.0, float(ref.abs().max()))
    diff, _ = output_change(model, spec, random_perms(spec, seed), x, reference=ref)
    if diff <= tol * scale:
        return diff
    raise UserError(locate_error(model, spec, x, ref, tol * scale, seed))


def permutation_spec(
    model: nn.Module, sample: Any = None, *, validate: bool = True
) -> PermutationSpec:
    """The model's permutation spec: its own ``permutation_spec()`` if it has one, else derived.

    Derivation traces the model with ``torch.fx`` (or, when tracing fails, follows the
    order in which leaf modules run) through Linear/Conv/Embedding/norm/elementwise chains,
    residual additions, pooling, flattening and attention (``nn.MultiheadAttention`` and
    attention written out with Q/K/V projections, reshapes into heads and matrix products);
    whatever it cannot follow is left unpermuted (listed in ``spec.notes``). Every spec is
    validated (:func:`validate_spec`); a module-order spec that fails raises
    :class:`UserError` saying that the model could not be traced.
    """
    if sample is None and validate and model in _VALIDATED:
        return _VALIDATED[model]
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        spec = as_spec(own())
    else:
        spec = derive_spec(model, as_sample(model, sample))
    spec = spec.resolve(model)
    if validate and spec.groups:
        try:
            validate_spec(model, spec, sample)
        except UserError as exc:
            if "module order" not in (spec.notes[:1] or ("",))[0]:
                raise
            why = spec.notes[0].partition("(")[2].rstrip(")")
            raise UserError(
                f"cannot derive a permutation spec for {type(model).__name__}: {why}, and following "
                f"its modules in the order they run does not give a symmetry ({exc}); make forward "
                "traceable by torch.fx or declare a permutation_spec() method"
            ) from exc
        if sample is None:
            _VALIDATED[model] = spec
    return spec


def checked_spec(
    model: nn.Module, spec: SpecLike | None = None, sample: Any = None
) -> PermutationSpec:
    """``spec`` resolved against ``model`` and validated; ``None``: :func:`permutation_spec` of the model."""
    if spec is None:
        return permutation_spec(model, sample)
    spec = as_spec(spec).resolve(model)
    validate_spec(model, spec, sample)
    return spec


def apply_permutation(
    model: nn.Module, perm: Any, *, spec: SpecLike | None = None, permute_fixed: bool = False
) -> nn.Module:
    """A permuted copy of ``model``; ``model`` itself is untouched.

    ``perm`` is a :class:`landscape.matching.Permutation` (which carries its spec) or a
    mapping ``{group: index array}`` together with ``spec`` (default: the model's own,
    :func:`permutation_spec`). Every tensor the spec names moves by its groups'
    permutations, ``T'[..., i, ...] = T[..., p[i], ...]``; fixed buffers move only with
    ``permute_fixed=True`` (see :mod:`landscape.permutation`).
    """
    perms = getattr(perm, "perms", perm)
    if spec is None:
        spec = getattr(perm, "spec", None)
    spec = as_spec(spec).resolve(model) if spec is not None else permutation_spec(model)
    if not isinstance(perms, Mapping):
        raise UserError(
            f"apply_permutation: expected a Permutation or a {{group: indices}} mapping, got {type(perms).__name__}"
        )
    return permuted_copy(model, spec, perms, permute_fixed=permute_fixed)


# ----------------------------------------------------------------------------- explaining failures
def locate_error(
    model: nn.Module, spec: PermutationSpec, x: Tensor, ref: Tensor, tol: float, seed: int
) -> str:
    """One line naming the group and, when a single change repairs it, the tensor that broke the spec."""
    perms = random_perms(spec, seed)

    def change(entries, g) -> float:
        groups = {k: v for k, v in spec.groups.items() if k != g}
        groups[g] = tuple(entries)
        try:
            s = PermutationSpec(groups, spec.sizes, spec.source, (), spec.parents)
            return output_change(model, s, {g: perms[g]}, x, reference=ref)[0]
        except (UserError, RuntimeError, IndexError):  # a candidate that does not fit
            return math.inf

    for g in spec.groups:
        d = change(spec.groups[g], g)
        if d > tol:
            break
    else:
        return f"permutation spec: every group alone preserves the function but all together do not (tolerance {tol:.2g}): groups that share a unit set must be merged"
    entries = list(spec.groups[g])
    n = spec.sizes[g]
    head = f"permutation spec group {g!r} ({n} units) changes the network output by {d:.3g} (tolerance {tol:.2g})"
    trials = 0
    removal = {}
    for e in entries:
        rest = [f for f in entries if f != e]
        if rest:
            removal[e] = change(rest, g)
            trials += 1
            if removal[e] <= tol:
                return f"{head}: tensor {site(e).where()} breaks it (the function does not permute it by these units); remove it from the group"
    tensors = named_tensors(model)
    covered = {e for es in spec.groups.values() for e in es}
    for e in entries:  # same tensor, another axis
        t, a = e[0], e[1]
        for a2 in range(tensors[t].dim()):
            if a2 != a and len(e) == 2 and (t, a2) not in covered and tensors[t].shape[a2] % n == 0:
                if change([f for f in entries if f != e] + [(t, a2)], g) <= tol:
                    return f"{head}: tensor {t} is permuted on axis {a} but its units lie on axis {a2}; fix the axis"
    for t, v in tensors.items():
        for a in range(v.dim()):
            if (t, a) in covered or v.shape[a] % n or trials > 400:
                continue
            trials += 1
            if change(entries + [(t, a)], g) <= tol:
                return f"{head}: the spec does not cover tensor {t} axis {a}, which is indexed by these units; add [{t!r}, {a}] to group {g!r}"
    worst = min(removal, key=removal.get) if removal else entries[0]
    return f"{head}; no single tensor explains it, the most involved is {site(worst).where()}: check the group against the model's forward"
