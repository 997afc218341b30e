"""Weight matching: ``landscape.weight_matching`` against the ``rebasin`` package on the same pairs.

Cases: the paper's MNIST MLP shape (``zoo.build("mlp", input_dim=784)``: 784-512x3-10,
LayerNorm, GELU) and ResNet-20 x4 (GroupNorm), each as

- a *planted* pair: B is A with a random permutation of every unit group applied, so the
  right answer is known: ``recovered`` says whether the permuted B equals A exactly, and
  ``objective_share`` is ``J(result) / J(optimum)`` with ``J = sum_t <A_t, pi(B)_t>`` over the
  tensors of the spec and ``J(optimum) = |A|^2``;
- a *two-seed* pair (independent initialisations): ``objective_share`` is J relative to
  ours, ``function_change`` the max output change of the permuted B against B.

Times are medians over repeats (after one warm-up call) of the whole call as a user makes it (rebasin: building
``PermutationCoordinateDescent``, which traces the model, plus ``rebasin()``; ours:
``weight_matching``, spec validation and the function check included). Targets: the MLP
pair under 1 s and ResNet-20 x4 under 5 s on 2 CPU cores.
"""

from __future__ import annotations

import copy
import time

import torch

from .timing import spread

TARGETS = {"mlp": 1.0, "resnet20": 5.0}


def _j(a: torch.nn.Module, b: torch.nn.Module, names) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return float(sum((sa[n].double() * sb[n].double()).sum() for n in names))


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(t, sb[k]) for k, t in a.state_dict().items())


def _ours(a, b, repeats: int, warmup: bool):
    from landscape import apply_permutation, weight_matching

    if warmup:  # lazy initialisation, allocator
        weight_matching(a, b)
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = weight_matching(a, b)
        times.append(time.perf_counter() - t0)
    return times, apply_permutation(b, result), result.sweeps


def _rebasin(a, b, x, repeats: int, warmup: bool):
    from rebasin import PermutationCoordinateDescent

    if warmup:
        PermutationCoordinateDescent(a, copy.deepcopy(b), x).rebasin()
    times, out = [], None
    for _ in range(repeats):
        out = copy.deepcopy(b)
        t0 = time.perf_counter()
        PermutationCoordinateDescent(a, out, x).rebasin()
        times.append(time.perf_counter() - t0)
    return times, out, None


def _case(
    arch: str, kw: dict, label: str, repeats: int, device: str, kinds=("planted", "two seeds")
) -> list[dict]:
    from checkpoints import zoo
    from landscape import apply_permutation, permutation_spec
    from landscape.permute import random_perms

    a = zoo.build(arch, seed=0, **kw).to(device)
    spec = permutation_spec(a)
    names = [t for t in spec.moves() if not t.endswith(("mask", "fixed"))]
    x = (
        torch.randn(8, kw.get("input_dim", 784)) if arch == "mlp" else torch.randn(4, 3, 16, 16)
    ).to(device)
    pairs = {
        "planted": apply_permutation(a, random_perms(spec, seed=1)),
        "two seeds": zoo.build(arch, seed=1, **kw).to(device),
    }
    pairs = {k: v for k, v in pairs.items() if k in kinds}
    warmup = repeats > 1
    rows, ours_j = [], {}
    for kind, b in pairs.items():
        case = f"weight matching, {label}, {kind} pair, {device}"
        optimum = _j(a, a, names) if kind == "planted" else None
        tools = [("landscape.weight_matching", lambda: _ours(a, b, repeats, warmup))]
        tools.append(
            ("rebasin PermutationCoordinateDescent", lambda: _rebasin(a, b, x, repeats, warmup))
        )
        for tool, fn in tools:
            try:
                times, permuted, sweeps = fn()
            except ImportError:
                rows.append(
                    {
                        "case": case,
                        "tool": tool,
                        "note": "rebasin not installed (pip install rebasin; it keeps torch as it is)",
                    }
                )
                continue
            except (
                Exception
            ) as exc:  # a comparison tool failing on this model is a result, not a crash
                rows.append(
                    {
                        "case": case,
                        "tool": tool,
                        "note": f"failed: {type(exc).__name__}: {str(exc)[:100]}",
                    }
                )
                continue
            j = _j(a, permuted, names)
            if tool.startswith("landscape"):
                ours_j[kind] = j
            with torch.no_grad():
                change = float((permuted.eval()(x) - b.eval()(x)).abs().max())
            med, lo, hi = spread(times)
            row = {
                "case": case,
                "tool": tool,
                "time_s": med,
                "time_min_s": lo,
                "time_max_s": hi,
                "repeats": len(times),
                "objective": j,
                "objective_share": j / optimum if optimum else j / ours_j.get(kind, j),
                "objective_of": "J / |A|^2 (planted optimum)" if optimum else "J / J(landscape)",
                "function_change": change,
            }
            if kind == "planted":
                row["recovered"] = _equal(a, permuted)
            if sweeps is not None:
                row["sweeps"] = sweeps
            if tool.startswith("landscape") and not label.startswith("smoke"):
                row.update(target=f"time < {TARGETS[arch]:g} s", met=bool(med < TARGETS[arch]))
            rows.append(row)
    return rows


def run(smoke: bool = False, device: str = "cpu") -> list[dict]:
    """Rows for the MLP and ResNet-20 x4 pairs (smoke: planted pairs of a narrow MLP and ResNet-20 x1, one call each)."""
    if smoke:  # a check that both tools run and agree, not a timing: one thread keeps it quick on a busy machine
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _case(
                "mlp",
                dict(input_dim=784, width=64),
                "smoke MLP 784-64x3-10",
                1,
                device,
                ("planted",),
            ) + _case(
                "resnet20", dict(width=1), "smoke ResNet-20 x1 GroupNorm", 1, device, ("planted",)
            )
        finally:
            torch.set_num_threads(threads)
    return _case(
        "mlp", dict(input_dim=784, width=512), "MLP 784-512x3-10 LayerNorm", 5, device
    ) + _case("resnet20", dict(width=4), "ResNet-20 x4 GroupNorm", 3, device)
