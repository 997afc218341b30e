"""Aligning two networks by permuting hidden units: weight matching and activation matching.

Weight matching (Ainsworth et al., Git Re-Basin, 2023) maximises the summed inner product
of the two networks' tensors over the permutation groups of a spec,

    J(pi) = sum_t < A_t , pi(B)_t >,

``t`` running over every parameter and BatchNorm running statistic the spec names (W-Asym
weights contribute their trainable entries only, ``W * mask``). Coordinate descent: visit
the groups in random order; for group ``g`` with the others held fixed, J is linear in
``p_g`` with similarity ``S[i, j] = sum_{(t, axis) in g} < A_t[i], pi_{-g}(B)_t[j] >``
(slices along ``axis``), so the best ``p_g`` is a linear assignment
(``scipy.optimize.linear_sum_assignment``). Sweeps repeat until one makes no progress or
``max_iter`` sweeps have run; J after every sweep is kept. Restarts from random
permutations keep the best J.

Activation matching (Li et al. 2015; Git Re-Basin section 3.1) sets each ``p_g`` to the
linear assignment maximising the summed Pearson correlation of the two networks'
activations of those units on data.

Either result maps B onto A: ``apply_permutation(model_b, result)`` is B with its units
reordered; for a standard network it computes the same function as B (checked on a
sample batch and stated in ``result.function_preserved``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .data import Data, as_batches
from .errors import UserError
from .module_order import leaf_calls
from .params import check_same_family, fixed_buffers, fixed_entry_mask
from .permutation import AxisMove, PermutationSpec, SpecLike, named_tensors
from .permute import compose_inverse, identity_perms, output_change, permute_tensor, random_perm
from .sample_inputs import as_sample
from .spec_resolution import checked_spec

FUNCTION_TOL = 1e-5


@dataclass(frozen=True, eq=False)
class Permutation:
    """A permutation per group of ``spec`` mapping model B onto model A (``perms[g][i]``: B's unit placed at i;
    for a nested group ``perms[c][i]`` permutes the units of the head placed at ``i``).

    ``objective`` is J of the result, ``objective_identity`` J before alignment,
    ``history`` J after each sweep of the best restart; ``function_preserved`` says whether
    permuted B computes B's function (max output change ``max_output_change`` on a sample).
    """

    perms: dict[str, np.ndarray]
    spec: PermutationSpec
    method: str
    objective: float
    objective_identity: float
    history: np.ndarray
    sweeps: int
    converged: bool
    restart_objectives: np.ndarray
    function_preserved: bool
    max_output_change: float
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, group: str) -> np.ndarray:
        return self.perms[group]

    def inverse(self) -> Permutation:
        """The permutation mapping A onto B."""
        return Permutation(
            compose_inverse(self.spec, self.perms),
            self.spec,
            self.method,
            self.objective,
            self.objective_identity,
            self.history,
            self.sweeps,
            self.converged,
            self.restart_objectives,
            self.function_preserved,
            self.max_output_change,
            self.seconds,
            self.notes,
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per group: units and how many of them moved (over every head for a nested group)."""
        return pd.DataFrame(
            [
                {
                    "group": g,
                    "size": p.size,  # a nested group: its units in every head
                    "moved": int((p != np.arange(p.shape[-1])).sum()),
                }
                for g, p in self.perms.items()
            ]
        )

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective,
            "objective_identity": self.objective_identity,
            "sweeps": self.sweeps,
            "converged": self.converged,
            "function_preserved": self.function_preserved,
            "max_output_change": self.max_output_change,
            "seconds": self.seconds,
        }


# ----------------------------------------------------------------------------- helpers
def _prepare(
    model_a: nn.Module, model_b: nn.Module, spec: SpecLike | None, sample: Any
) -> PermutationSpec:
    check_same_family(model_a, model_b, "model A and model B")
    spec = checked_spec(model_a, spec, sample)
    if not spec.groups:
        raise UserError(
            "the permutation spec has no groups: nothing to align (pass a spec that names the hidden units)"
        )
    return spec


def _matched(model: nn.Module, spec: PermutationSpec, device: torch.device) -> dict[str, Tensor]:
    """The tensors J sums over: spec tensors that are parameters or running statistics, W-Asym weights masked."""
    fixed = set(fixed_buffers(model))
    tensors = named_tensors(model)
    out = {}
    for t in spec.moves():
        if t in fixed:
            continue
        x = tensors[t].detach().to(device=device, dtype=torch.float32)
        mask = fixed_entry_mask(model, t, tensors[t])
        out[t] = x * mask.to(device) if mask is not None else x
    return out


def _objective(A: dict[str, Tensor], B: dict[str, Tensor], moves, P: dict[str, Tensor]) -> float:
    """``J = sum_t <A_t, pi(B)_t>`` over the matched tensors."""
    total = 0.0
    for t, a in A.items():
        b = permute_tensor(B[t], moves.get(t, []), P)
        total += float(torch.dot(a.reshape(-1), b.reshape(-1)))
    return total


def _finish(
    model_b: nn.Module,
    spec: PermutationSpec,
    perms: dict[str, np.ndarray],
    sample: Any,
    method: str,
    objective: float,
    ident: float,
    history,
    sweeps: int,
    converged: bool,
    restarts,
    t0: float,
    permute_fixed: bool,
) -> Permutation:
    x = as_sample(model_b, sample)
    change, scale = output_change(model_b, spec, perms, x, permute_fixed=permute_fixed)
    preserved = change <= FUNCTION_TOL * max(1.0, scale)
    notes = ()
    if not preserved:
        asym = bool(fixed_buffers(model_b))
        why = (
            (
                "the model is asymmetric (fixed masks/values or FiGLU matrices stay in place), so no permutation of its parameters "
                "preserves its function; the aligned model is a different network (a baseline only)"
            )
            if asym
            else "the spec does not describe a symmetry of this model"
        )
        notes = (f"permuted B changes the output by {change:.3g}: {why}",)
        warnings.warn(notes[0], stacklevel=3)
    return Permutation(
        {g: np.asarray(p, dtype=np.int64) for g, p in perms.items()},
        spec,
        method,
        float(objective),
        float(ident),
        np.asarray(history, dtype=float),
        int(sweeps),
        bool(converged),
        np.asarray(restarts, dtype=float),
        bool(preserved),
        float(change),
        time.perf_counter() - t0,
        notes,
    )


# ----------------------------------------------------------------------------- weight matching
def _rows(t: Tensor, m: AxisMove) -> Tensor:
    """The slices of ``t`` along ``m``'s axis (or range) as rows, one per unit: ``(n * nc, -1)``."""
    if m.start is not None:
        t = t.narrow(m.axis, m.start, m.stop - m.start)
    return t.movedim(m.axis, 0).reshape(m.units, -1)


def _assign(s: np.ndarray) -> tuple[np.ndarray, float]:
    """The linear assignment maximising ``sum_i s[i, col[i]]``, and that sum."""
    _, col = linear_sum_assignment(s, maximize=True)
    return col, float(s[np.arange(len(col)), col].sum())


def _assign_heads(
    head: np.ndarray, nested: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray], float]:
    """Heads and, within each pair of heads, their nested units, maximising the similarity.

    ``head[i, j]`` is the similarity of A's head ``i`` with B's head ``j`` through tensors
    that move whole heads; ``nested[c][i, j]`` (``nc x nc``) the similarity of their units
    of nested group ``c``. For every pair ``(i, j)`` and group ``c`` the best within-head
    matching ``sigma_c(i, j)`` is a linear assignment of value ``v_c(i, j)``; the heads are
    then the linear assignment of ``C = head + sum_c v_c``, and head ``i``'s nested
    permutation is ``sigma_c(i, p[i])``. This is the exact optimum over the head group and
    its nested groups (the objective separates over the chosen head pairs).
    """
    n = head.shape[0]
    cost = head.copy()
    sigma = {}
    for c, s in nested.items():
        nc = s.shape[-1]
        sigma[c] = np.zeros((n, n, nc), dtype=np.int64)
        for i in range(n):
            for j in range(n):
                sigma[c][i, j], v = _assign(s[i, j])
                cost[i, j] += v
    p, total = _assign(cost)
    return p, {c: sg[np.arange(n), p] for c, sg in sigma.items()}, total


def _current(
    head: np.ndarray, nested: dict[str, np.ndarray], p: np.ndarray, q: dict[str, np.ndarray]
) -> float:
    """The similarity the current ``(p, q)`` achieves (the same sum :func:`_assign_heads` maximises)."""
    n = head.shape[0]
    total = float(head[np.arange(n), p].sum())
    for c, s in nested.items():
        for i in range(n):
            total += float(s[i, p[i], np.arange(s.shape[-1]), q[c][i]].sum())
    return total


def weight_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    spec: SpecLike | None = None,
    max_iter: int = 100,
    seed: int = 0,
    restarts: int = 0,
    sample: Any = None,
    permute_fixed: bool = False,
) -> Permutation:
    """Permutation of B's hidden units maximising ``J(pi) = sum_t <A_t, pi(B)_t>`` (see the module notes).

    ``spec`` defaults to ``permutation_spec(model_a)``; ``max_iter`` bounds the sweeps per
    start; ``restarts`` adds that many starts from random permutations (seeded by
    ``seed``, which also orders the groups); ``sample`` is the batch (or data) for the
    function check (default: random inputs). A head group and its nested groups are one
    step of the descent (:func:`_assign_heads`). Different architectures or widths, or a
    spec that does not fit, raise :class:`UserError`.
    """
    t0 = time.perf_counter()
    if max_iter < 1 or restarts < 0:
        raise UserError(f"max_iter must be >= 1 and restarts >= 0, got {max_iter} and {restarts}")
    spec = _prepare(model_a, model_b, spec, sample)
    device = next(model_a.parameters()).device
    A, B = _matched(model_a, spec, device), _matched(model_b, spec, device)
    moves = {t: mv for t, mv in spec.axis_moves().items() if t in A}
    names = [g for g in spec.groups if g not in spec.parents]
    # per group: A's rows once; tensors no other axis moves add a constant similarity
    blocks: dict[str, list] = {g: [] for g in names}
    const: dict[str, Tensor] = {}
    for g in names:
        n = spec.sizes[g]
        if not any(m.group == g for mv in moves.values() for m in mv):
            raise UserError(
                f"permutation group {g!r} names only fixed buffers: weight matching has nothing to compare for it"
            )
        const[g] = torch.zeros(n, n, device=device)
        for c in spec.children(g):
            k = n * spec.sizes[c]
            const[c] = torch.zeros(k, k, device=device)
    for t, mv in moves.items():
        for m in mv:
            a = _rows(A[t], m)
            target = m.child or m.group
            if all(o.axis == m.axis for o in mv):
                const[target] += a @ _rows(B[t], m).T
            else:
                blocks[m.group].append((t, m, a))
    rng = np.random.default_rng(seed)
    neighbours = {
        g: {o.group for mv in moves.values() if any(m.group == g for m in mv) for o in mv} - {g}
        for g in names
    }

    def similarities(g: str, P: dict[str, Tensor]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        n = spec.sizes[g]
        S = {x: const[x].clone() for x in [g, *spec.children(g)]}
        for t, m, a in blocks[g]:
            others = [o for o in moves[t] if o.axis != m.axis]
            target = m.child or g
            S[target] = torch.addmm(S[target], a, _rows(permute_tensor(B[t], others, P), m).T)
        head = S.pop(g).cpu().numpy().astype(np.float64)
        nested = {
            c: s.reshape(n, spec.sizes[c], n, spec.sizes[c])
            .permute(0, 2, 1, 3)
            .cpu()
            .numpy()
            .astype(np.float64)
            for c, s in S.items()
        }
        return head, nested

    ident = {g: torch.as_tensor(p, device=device) for g, p in identity_perms(spec).items()}
    j_ident = _objective(A, B, moves, ident)
    best = None
    restart_objs = []
    for r in range(restarts + 1):
        P = (
            dict(ident)
            if r == 0
            else {g: torch.as_tensor(random_perm(spec, g, rng), device=device) for g in spec.sizes}
        )
        history, converged, sweeps = [], False, 0
        dirty = set(names)
        for sweeps in range(1, max_iter + 1):  # noqa: B007 (read after the loop)
            progress = False
            for g in rng.permutation(names):
                if (
                    g not in dirty
                ):  # S_g is unchanged since g's last assignment, which therefore stays optimal
                    continue
                dirty.discard(g)
                head, nested = similarities(g, P)
                p_old = P[g].cpu().numpy()
                if nested:
                    q_old = {c: P[c].cpu().numpy() for c in nested}
                    p, q, new = _assign_heads(head, nested)
                    old = _current(head, nested, p_old, q_old)
                else:
                    p, new = _assign(head)
                    q, old = {}, float(head[np.arange(len(p)), p_old].sum())
                if new > old + 1e-10 * max(1.0, abs(old)):
                    P[g] = torch.as_tensor(p, device=device)
                    for c, qc in q.items():
                        P[c] = torch.as_tensor(qc, device=device)
                    progress = True
                    dirty |= neighbours[g]
            history.append(_objective(A, B, moves, P))
            if not progress:
                converged = True
                break
        restart_objs.append(history[-1])
        if best is None or history[-1] > best[0]:
            best = (
                history[-1],
                {g: p.cpu().numpy() for g, p in P.items()},
                history,
                sweeps,
                converged,
            )
    j, perms, history, sweeps, converged = best
    return _finish(
        model_b,
        spec,
        perms,
        sample,
        "weight",
        j,
        j_ident,
        history,
        sweeps,
        converged,
        restart_objs,
        t0,
        permute_fixed,
    )


# ----------------------------------------------------------------------------- activation matching
def _unit_axis(shape: tuple[int, ...], n: int) -> int | None:
    if len(shape) >= 2 and shape[1] == n:
        return 1
    if shape[-1] == n:
        return len(shape) - 1
    return None


def _standardised(h: Tensor, axis: int, n: int) -> Tensor:
    z = h.movedim(axis, 0).reshape(n, -1).double()
    z = z - z.mean(dim=1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(1e-12)


def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    *,
    spec: SpecLike | None = None,
    samples: int = 1024,
    seed: int = 0,
    permute_fixed: bool = False,
) -> Permutation:
    """Permutation of B's units maximising the summed correlation of hidden activations with A's.

    For group ``g``, the activations are the outputs of the leaf modules that produce its
    units (layers and norms whose weights it permutes on axis 0, and the parameter-free
    modules right after them, e.g. activations), on the first ``samples`` inputs of
    ``data``; ``C[i, j] = sum_sites corr(a_i, b_j)`` over samples (and positions), and
    ``p_g`` is the linear assignment maximising ``sum_i C[i, p_g(i)]``.
    """
    t0 = time.perf_counter()
    device = next(model_a.parameters()).device
    x = as_batches(data, device=device).sample(samples)
    if not isinstance(x, Tensor):  # dict batches: model(**inputs), which the hooks do not follow
        raise UserError("activation matching needs one input tensor per batch, not dict inputs")
    spec = _prepare(model_a, model_b, spec, x)
    if not spec.flat:
        raise UserError(
            "activation matching compares one unit per whole axis; this spec has per-head (nested) groups "
            "or ranges of packed tensors: use weight matching"
        )
    # outputs of every leaf module, in the order they run
    ra = [(n, o) for n, _, _, o in leaf_calls(model_a, x)]
    rb = [(n, o) for n, _, _, o in leaf_calls(model_b, x)]
    no_params = {
        n for n, m in model_a.named_modules() if not any(True for _ in m.parameters(recurse=False))
    }
    perms: dict[str, np.ndarray] = {}
    for g, entries in spec.groups.items():
        n = spec.sizes[g]
        producers = {
            t.rpartition(".")[0]
            for t, ax in entries
            if ax == 0 and t.rpartition(".")[2] in ("weight", "bias")
        }
        C = torch.zeros(n, n, dtype=torch.float64)
        used, follow = 0, False
        for (name, ha), (_, hb) in zip(ra, rb):
            take = name in producers or (follow and name in no_params)
            follow = take
            axis = _unit_axis(tuple(ha.shape), n) if take and isinstance(ha, Tensor) else None
            if axis is None:
                continue
            C += (_standardised(ha, axis, n) @ _standardised(hb, axis, n).T).cpu()
            used += 1
        if not used:
            raise UserError(
                f"activation matching: no module output carries the units of group {g!r}; use weight_matching"
            )
        _, col = linear_sum_assignment(C.numpy(), maximize=True)
        perms[g] = col
    A, B = _matched(model_a, spec, device), _matched(model_b, spec, device)
    moves = spec.axis_moves()
    j = _objective(A, B, moves, {g: torch.as_tensor(p, device=device) for g, p in perms.items()})
    j0 = _objective(A, B, moves, {g: torch.arange(n, device=device) for g, n in spec.sizes.items()})
    return _finish(
        model_b, spec, perms, x, "activation", j, j0, [j], 1, True, [j], t0, permute_fixed
    )
