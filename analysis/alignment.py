"""Alignment and symmetry studies over checkpoint groups.

- :func:`study` (the symmetry audit of every network): records
  ``/symmetry/<group>/<seedK>`` with per-permutation-group arrays (``group_names``,
  ``group_sizes``, ``group_log10_order``, ``group_max_change``, ``group_relative_change``,
  axis ``perm_group``) and scalars ``max_output_change`` / ``relative_output_change``
  (every group permuted at once); attributes ``symmetric``, ``asymmetric_groups``,
  ``log10_group_order``, ``audit_samples``, ``trials``.
- :func:`align_pair`: B permuted onto A (weight or activation matching) for notebooks and
  the ``align`` command.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from landscape.data import Data
from landscape.errors import UserError
from landscape.matching import Permutation, activation_matching, weight_matching
from landscape.permutation import SpecLike, apply_permutation
from landscape.store import Dataset
from landscape.symmetry import SymmetryAudit, symmetry_audit

from .common import mean_std
from .context import StudyContext

ANALYSIS = "symmetry"
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


def _datasets(audit: SymmetryAudit) -> dict[str, Dataset]:
    ax = ("perm_group",)
    return {
        "group_names": Dataset(
            np.array(audit.groups, dtype=str),
            ax,
            "",
            "permutation groups of the architecture's spec",
        ),
        "group_sizes": Dataset(audit.sizes, ax, "units", "units each group permutes"),
        "group_log10_order": Dataset(audit.log10_order, ax, "log10", "log10(n!) per group"),
        "group_max_change": Dataset(
            audit.max_change,
            ax,
            "output units",
            "max over trials and samples of |f_pi(x) - f(x)|, permuting only this group (fixed buffers stay)",
        ),
        "group_relative_change": Dataset(
            audit.relative_change, ax, "1", "group_max_change / max |f(x)|"
        ),
        "max_output_change": Dataset(
            np.array(audit.all_groups_change),
            (),
            "output units",
            "max |f_pi(x) - f(x)| with every group permuted",
        ),
        "relative_output_change": Dataset(
            np.array(audit.all_groups_relative), (), "1", "max_output_change / max |f(x)|"
        ),
    }


def study(
    ctx: StudyContext, *, trials: int = 3, samples: int = 256, seed: int = 0, data: str = "test"
) -> pd.DataFrame:
    """Symmetry audit of every network: does permuting the architecture's unit groups change its output?

    ``samples`` inputs of the ``data`` split (``"random"``: random inputs shaped for the
    first layer), ``trials`` random permutations per group. Returns one row per group.
    """
    if ctx.store is None:
        raise UserError("the symmetry study needs a results file (-o results.h5)")
    jobs = [(g, r) for g, runs in ctx.groups.items() for r in runs]
    settings = dict(trials=trials, samples=samples, seed=seed, data=data)
    for g, run in tqdm(jobs, desc="symmetry", disable=not ctx.progress):
        key = f"{ANALYSIS}/{g}/{run.key}"
        if ctx.should_skip(key):
            continue
        model = ctx.model(run)
        inputs = None if data == "random" else ctx.batches(data)
        audit = symmetry_audit(model, inputs, trials=trials, samples=samples, seed=seed)
        attrs = ctx.record_attrs(
            ANALYSIS, g, run, splits=() if data == "random" else (data,), **settings
        )
        attrs.update(
            symmetric=audit.is_symmetric,
            asymmetric_groups=int((~audit.symmetric).sum()),
            permutation_groups=len(audit.groups),
            log10_group_order=audit.total_log10_order,
            audit_samples=audit.samples,
            trials=trials,
            definition="output change max_x |f_pi(x) - f(x)| under random permutations pi of the hidden units, fixed buffers "
            "(masks, fixed values, FiGLU matrices) held in place; symmetric when relative change < 1e-5",
        )
        ctx.store.write(key, _datasets(audit), attrs)
    return summary(ctx)


def summary(ctx: StudyContext) -> pd.DataFrame:
    """Per group: networks, symmetric share, output change (mean ± std), log10 of the symmetry group's size."""
    rows = []
    for g in ctx.groups:
        recs = [ctx.store.read(k) for k in ctx.store.keys(f"{ANALYSIS}/{g}")]
        if not recs:
            continue
        rows.append(
            {
                "group": g,
                "variant": recs[0].attrs.get("variant", "?"),
                "networks": len(recs),
                "symmetric": f"{sum(bool(r.attrs['symmetric']) for r in recs)}/{len(recs)}",
                "output_change": mean_std(float(r["max_output_change"]) for r in recs),
                "relative_change": mean_std(float(r["relative_output_change"]) for r in recs),
                "log10_group_order": round(float(recs[0].attrs["log10_group_order"]), 1),
            }
        )
    return pd.DataFrame(rows)
