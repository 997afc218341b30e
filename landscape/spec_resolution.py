"""Which permutation spec a model has, whether it holds, and applying permutations by it.

The policy over the spec machinery below it:

- **resolution**: a model's spec is the one it declares (a ``permutation_spec()`` method,
  as the zoo's models have) or, failing that, the one :mod:`landscape.spec_tracing`
  derives from its computation; either is checked against the model's tensors
  (:meth:`PermutationSpec.resolve`);
- **validation**: a spec is a symmetry of ``f`` when a random permutation ``pi`` of every
  group (fixed buffers moved too) keeps ``max_x |f_pi(x) - f(x)| <= tol * max(1, max_x |f(x)|)``
  on a sample batch; a failure is explained by :func:`landscape.spec_tracing.locate_error`;
- **caching**: a validated spec is kept per model object (weakly), since it depends on the
  architecture, not on the parameter values;
- :func:`apply_permutation`, the front door for applying a permutation, defaults to the
  model's resolved spec.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

from torch import nn

from .errors import UserError
from .permutation import PermutationSpec, SpecLike, as_spec
from .permute import eval_output, output_change, permuted_copy, random_perms
from .sample_inputs import as_sample
from .spec_tracing import derive_spec, locate_error

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
    order in which leaf modules run) through Linear/Conv/norm/elementwise-activation
    chains, residual additions, pooling and flattening; whatever it cannot follow is left
    unpermuted (listed in ``spec.notes``). Every spec is validated (:func:`validate_spec`).
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
        validate_spec(model, spec, sample)
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
