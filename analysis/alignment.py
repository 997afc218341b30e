"""Alignment and symmetry studies over checkpoint groups.

- :func:`study` (the symmetry audit of every network): records
  ``/symmetry/<group>/<seedK>`` with per-permutation-group arrays over the dimension
  ``perm_group`` and the output change with every group permuted at once (the definition:
  :mod:`landscape.records.symmetry`).
- :func:`align_pair`: B permuted onto A (weight or activation matching) for notebooks and
  the ``align`` command.
"""

from __future__ import annotations

import warnings
from functools import partial

import numpy as np
import pandas as pd
from torch import nn

from landscape.data import Data
from landscape.deprecation import warn_renamed
from landscape.errors import UserError
from landscape.matching import Permutation, activation_matching, weight_matching
from landscape.permutation import SpecLike
from landscape.records import symmetry as R
from landscape.results import summarise
from landscape.spec_resolution import apply_permutation
from landscape.symmetry import SymmetryAudit, symmetry_audit

from .context import StudyContext
from .executor import Workspace, network_records, run_records

ANALYSIS = R.SYMMETRY.analysis
DEFINITION = (
    "output change max_x |f_pi(x) - f(x)| under random permutations pi of the hidden units, fixed "
    "buffers (masks, fixed values, FiGLU matrices) held in place; symmetric when relative change < 1e-5"
)
METHODS = ("weight", "activation")


def align_pair(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    method: str = "weight",
    data: Data | None = None,
    spec: SpecLike | None = None,
    max_iter: int = 100,
    seed: int = 0,
    restarts: int = 0,
    quiet_asymmetric: bool = False,
) -> tuple[nn.Module, Permutation]:
    """``(B aligned onto A, the permutation)``.

    ``method="weight"``: :func:`landscape.weight_matching`; ``"activation"``:
    :func:`landscape.activation_matching` on ``data`` (required). For an asymmetric model the
    permutation does not preserve B's function; a warning says so unless ``quiet_asymmetric``.
    """
    if method not in METHODS:
        raise UserError(f"unknown alignment method {method!r}: use {' or '.join(METHODS)}")
    with warnings.catch_warnings():
        if quiet_asymmetric:
            warnings.simplefilter("ignore")
        if method == "weight":
            perm = weight_matching(
                model_a,
                model_b,
                spec=spec,
                max_iter=max_iter,
                seed=seed,
                restarts=restarts,
                sample=data,
            )
        else:
            if data is None:
                raise UserError(
                    "activation matching needs data (--data): it correlates hidden activations on inputs"
                )
            perm = activation_matching(model_a, model_b, data, spec=spec, seed=seed)
    return apply_permutation(model_b, perm), perm


def _values(audit: SymmetryAudit) -> dict[str, np.ndarray]:
    return {
        R.PERM_GROUP.name: np.array(audit.groups, dtype=str),
        R.GROUP_SIZES.name: audit.sizes,
        R.GROUP_LOG10_ORDER.name: audit.log10_order,
        R.GROUP_MAX_CHANGE.name: audit.max_change,
        R.GROUP_RELATIVE_CHANGE.name: audit.relative_change,
        R.MAX_OUTPUT_CHANGE.name: np.array(audit.all_groups_change),
        R.RELATIVE_OUTPUT_CHANGE.name: np.array(audit.all_groups_relative),
    }


def audit_record(
    ws: Workspace, job: tuple, *, trials: int, audit_samples: int, seed: int, data: str
) -> tuple[dict[str, np.ndarray], dict]:
    """One network's audit (values and computed attributes), on whichever process runs it."""
    _g, run = job
    inputs = None if data == "random" else ws.batches(data)
    audit = symmetry_audit(ws.model(run), inputs, trials=trials, samples=audit_samples, seed=seed)
    attrs = {
        R.SYMMETRIC.name: audit.is_symmetric,
        R.ASYMMETRIC_GROUPS.name: int((~audit.symmetric).sum()),
        R.PERMUTATION_GROUPS.name: len(audit.groups),
        R.LOG10_GROUP_ORDER.name: audit.total_log10_order,
        R.AUDIT_SAMPLES.name: audit.samples,
        R.TRIALS.name: trials,
        R.DEFINITION.name: DEFINITION,
    }
    return _values(audit), attrs


def study(
    ctx: StudyContext,
    *,
    trials: int = 3,
    audit_samples: int = 256,
    seed: int = 0,
    data: str = "test",
    samples: int | None = None,
) -> pd.DataFrame:
    """Symmetry audit of every network: does permuting the architecture's unit groups change its output?

    ``audit_samples`` inputs of the ``data`` split (``"random"``: random inputs shaped for
    the first layer), ``trials`` random permutations per group. Returns one row per group.
    ``samples`` is the deprecated name of ``audit_samples`` (it clashed with the data subset).
    """
    if samples is not None:  # the old name, for one more release
        warn_renamed("the symmetry study's samples=", "audit_samples=")
        audit_samples = samples
    jobs = [(g, r) for g, runs in ctx.groups.items() for r in runs]
    todo = [(g, r) for g, r in jobs if not ctx.should_skip(f"{ANALYSIS}/{g}/{r.key}")]
    settings = dict(trials=trials, audit_samples=audit_samples, seed=seed, data=data)

    write, label = network_records(ctx, R.SYMMETRY, () if data == "random" else (data,), settings)

    run_records(
        ctx,
        todo,
        partial(audit_record, trials=trials, audit_samples=audit_samples, seed=seed, data=data),
        write,
        splits=() if data == "random" else (data,),
        models=[ctx.model(ctx.groups[g][0]) for g in dict.fromkeys(g for g, _ in todo)],
        desc="symmetry",
        label=label,
    )
    return summary(ctx)


def summary(ctx: StudyContext) -> pd.DataFrame:
    """Per group: networks, symmetric share, output change (mean ± std), log10 of the symmetry
    group's order: the symmetry definition's columns."""
    return summarise(ctx.store, [ANALYSIS], full=True, groups=list(ctx.groups))
