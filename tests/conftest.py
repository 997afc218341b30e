"""Shared fixtures: a tiny trained checkpoint set, a `landscape run` output on it, synthetic results files.

- ``tiny_runs`` (session): ``ROOT/{standard,w-asym}/seed{0,1}/{init,final}.pt`` with sidecars;
  MLP width 16 on the embedded digits, 2 epochs. Read-only for tests: copy it to modify.
- ``tiny_study`` (session): ``landscape run`` on ``tiny_runs`` with small settings; the output
  folder with ``results.h5`` and ``report.html``.
- ``write_results`` (function): ``write_results(path, groups=..., seeds=3, analyses=...)`` writes a
  synthetic results file in the record layouts of the studies, for render tests without torch work.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

TINY_CONFIG = """
[study]
samples = 120
[interpolation]
num_points = 5
[symmetry]
trials = 1
audit_samples = 32
[hessian]
top_k = 2
tol = 0.01
max_steps = 10
num_runs = 1
lanczos_steps = 8
num_queries = 6
seeds = 1
[surface]
steps = 5
"""


def pytest_configure(config):
    """torch on one thread for the whole suite (subprocesses too): the models are tiny, and on a
    shared 2-core machine extra threads only contend (small products ran 7-100x slower with two)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@contextlib.contextmanager
def shown_warnings():
    """The warnings that ``python -m analysis.cli`` would print on stderr (pytest records them
    instead), as text: each is more than the one line a bad input may cost (used by the
    bad-input catalogue and the fuzz test)."""
    shown: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for quiet in (
            DeprecationWarning,
            PendingDeprecationWarning,
            ImportWarning,
            ResourceWarning,
        ):
            warnings.filterwarnings("ignore", category=quiet)
        yield shown
    shown.extend(
        warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught
    )


def randomise_norms(model, seed: int = 0):
    """Give BatchNorm running statistics and norm affine parameters distinct values: their
    defaults (zeros, ones) would hide a permutation spec or a matching that ignores them."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if (
                isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm))
                and m.weight is not None
            ):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> Path:
    from checkpoints.sources import load_data
    from checkpoints.train import TrainSettings, train_group

    root = tmp_path_factory.mktemp("tiny_runs")
    train, test = (
        load_data("digits", "train", samples=300),
        load_data("digits", "test", samples=120),
    )
    train_group(
        root,
        "mlp",
        ["standard", "w-asym"],
        [0, 1],
        train,
        test,
        TrainSettings(epochs=2),
        arch_kwargs={"width": 16, "depth": 2},
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def tiny_study(tiny_runs, tmp_path_factory) -> Path:
    from analysis.cli import main

    out = tmp_path_factory.mktemp("tiny_study")
    cfg = out / "study.toml"
    cfg.write_text(TINY_CONFIG)
    rc = main(
        ["run", str(tiny_runs), "--data", "digits", "-o", str(out), "--config", str(cfg), "-q"]
    )
    assert rc == 0
    return out


def _curve(alphas: np.ndarray, bump: float, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * alphas + bump * 4 * alphas * (1 - alphas)


def synthetic_results(
    path,
    groups=("standard", "w-asym"),
    seeds: int = 3,
    analyses=(
        "interpolation",
        "interpolation_aligned",
        "mli",
        "hessian",
        "surface",
        "symmetry",
        "calibration",
        "bnn",
    ),
    incomplete: tuple[str, ...] = (),
    points: int = 11,
    rng_seed: int = 0,
) -> Path:
    """A results file written through the record definitions with known numbers: group i has
    loss barrier ``0.5 / (i + 1)`` (+ pair noise)."""
    from landscape import records as R
    from landscape.records import bnn as BN
    from landscape.records import calibration as CA
    from landscape.records import hessian as H
    from landscape.records import interpolation as IP
    from landscape.records import surface as S
    from landscape.records import symmetry as Y
    from landscape.store import ResultsStore

    rng = np.random.default_rng(rng_seed)
    store = ResultsStore(path)
    alphas = np.linspace(0, 1, points)
    base = {
        "data": {"test": {"spec": "digits", "split": "test", "samples": 360}},
        "device": "cpu",
        "package": "landscape",
        "package_version": "0.1.0",
        "torch_version": "2.13.0",
        "numpy_version": np.__version__,
        "h5py_version": "3",
        "python_version": "3.11",
        "time": "2025-01-01T00:00:00+00:00",
        "command": "landscape run",
    }

    def write(kind, key, values, attrs):
        kind.write(store, key, values, attrs, complete=key not in incomplete)

    for gi, g in enumerate(groups):
        variant = g if g in ("standard", "w-asym", "sigma-asym") else "standard"
        labels = [f"seed{k}" for k in range(seeds)]
        ck = {s: f"/ckpt/{g}/{s}/final.pt" for s in labels}
        sha = {s: hashlib.sha256(ck[s].encode()).hexdigest() for s in labels}
        for a, b in itertools.combinations(labels, 2):
            for kind in (IP.INTERPOLATION, IP.INTERPOLATION_ALIGNED):
                if kind.analysis not in analyses or (
                    kind is IP.INTERPOLATION_ALIGNED and variant != "standard"
                ):
                    continue
                bump = (0.5 / (gi + 1) + 0.01 * rng.standard_normal()) * (
                    0.2 if kind is IP.INTERPOLATION_ALIGNED else 1
                )
                values, attrs = {IP.ALPHA.name: alphas}, {}
                for split in ("test", "train"):
                    loss = _curve(alphas, bump, 0.3, 0.32)
                    acc = _curve(alphas, -bump / 5, 0.9, 0.91)
                    values[IP.LOSS.at(split)] = loss
                    values[IP.ACCURACY.at(split)] = acc
                    chord_l, chord_a = 0.3 + 0.02 * alphas, 0.9 + 0.01 * alphas
                    mid = points // 2
                    attrs[IP.LOSS_BARRIER_MAX.at(split)] = float((loss - chord_l).max())
                    attrs[IP.LOSS_BARRIER_MID.at(split)] = float(loss[mid] - chord_l[mid])
                    attrs[IP.ACCURACY_BARRIER_MAX.at(split)] = float((chord_a - acc).max())
                    attrs[IP.ACCURACY_BARRIER_MID.at(split)] = float(chord_a[mid] - acc[mid])
                    attrs[IP.ACCURACY_ENDPOINTS.at(split)] = [float(acc[0]), float(acc[-1])]
                attrs.update(
                    base,
                    analysis=kind.analysis,
                    group=g,
                    variant=variant,
                    seeds=[a, b],
                    checkpoints=[ck[a], ck[b]],
                    checkpoint_sha256=[sha[a], sha[b]],
                    settings={"num_points": points, "bn": "eval"},
                    aligned=kind is IP.INTERPOLATION_ALIGNED,
                )
                write(kind, f"{kind.analysis}/{g}/{a}-{b}", values, attrs)
        for s in labels:
            common = dict(
                base,
                group=g,
                variant=variant,
                seeds=[s],
                checkpoints=[ck[s]],
                checkpoint_sha256=[sha[s]],
            )
            if "mli" in analyses:
                loss = 2.3 * (1 - alphas) ** 2 + 0.3 + (0.05 * np.sin(6 * alphas) if gi else 0)
                write(
                    IP.MLI,
                    f"mli/{g}/{s}",
                    {
                        IP.ALPHA.name: alphas,
                        IP.LOSS.at("train"): loss,
                        IP.ACCURACY.at("train"): 1 - loss / 3,
                    },
                    dict(
                        common,
                        analysis="mli",
                        delta=float(max(0, np.diff(loss).max())),
                        monotonic=bool((np.diff(loss) <= 0).all()),
                        local_convexity=0.8,
                        global_convexity=True,
                    ),
                )
            if "hessian" in analyses:
                top = np.sort(rng.uniform(1, 10, 5))[::-1] * (gi + 1)
                grid = np.linspace(-5, 50, 60)
                grid = grid + rng.uniform(0, 1)  # every seed has its own grid, as with SLQ
                write(
                    H.HESSIAN,
                    f"hessian/{g}/{s}",
                    {
                        H.EIGENVALUES.name: top,
                        H.EIGENVALUE.name: grid,
                        H.DENSITY.name: np.exp(-((grid - 2 * gi) ** 2) / 8) + 1e-6,
                    },
                    dict(
                        common,
                        analysis="hessian",
                        lambda_max=float(top[0]),
                        lambda_min=-0.1,
                        trace=float(50 * (gi + 1) + rng.standard_normal()),
                    ),
                )
            if "surface" in analyses and s == "seed0":  # loss[i, j] at (x[i], y[j])
                x, y = np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)
                X, Y2 = np.meshgrid(x, y, indexing="ij")
                loss = 0.3 + (gi + 1) * (X**2 + 0.5 * Y2**2)
                write(
                    S.SURFACE,
                    f"surface/{g}/{s}",
                    {
                        S.X.name: x,
                        S.Y.name: y,
                        S.LOSS.name: loss,
                        S.ACCURACY.name: 1 - loss / 5,
                        S.DONE.name: np.ones_like(loss, dtype=bool),
                    },
                    dict(common, analysis="surface", split="train", origin_loss=0.3),
                )
            if "symmetry" in analyses:
                rel = np.array([1e-7, 2e-7]) if variant == "standard" else np.array([0.4, 0.7])
                write(
                    Y.SYMMETRY,
                    f"symmetry/{g}/{s}",
                    {
                        Y.PERM_GROUP.name: np.array(["fc0", "fc1"], dtype=str),
                        Y.GROUP_SIZES.name: np.array([16, 16]),
                        Y.GROUP_RELATIVE_CHANGE.name: rel,
                        Y.MAX_OUTPUT_CHANGE.name: np.array(rel.max() * 3),
                        Y.RELATIVE_OUTPUT_CHANGE.name: np.array(rel.max()),
                    },
                    dict(
                        common,
                        analysis="symmetry",
                        symmetric=variant == "standard",
                        asymmetric_groups=0 if variant == "standard" else 2,
                        permutation_groups=2,
                        log10_group_order=26.6,
                    ),
                )
            if "calibration" in analyses:  # group i: overconfident by 0.05 * i
                edges = np.linspace(0, 1, 16)
                conf = np.append((edges[:-1] + edges[1:]) / 2, 1.0)
                count = np.append(rng.integers(0, 30, 15), 40 * (gi + 1))
                acc = np.clip(conf - 0.05 * gi + 0.02 * rng.standard_normal(16), 0, 1)
                write(
                    CA.CALIBRATION,
                    f"calibration/{g}/{s}",
                    {
                        CA.BIN.name: conf,
                        CA.BIN_LOWER.name: np.append(edges[:-1], 1.0),
                        CA.BIN_UPPER.name: np.append(edges[1:], 1.0),
                        CA.BIN_CONFIDENCE.name: np.where(count > 0, conf, np.nan),
                        CA.BIN_ACCURACY.name: np.where(count > 0, acc, np.nan),
                        CA.BIN_COUNT.name: count,
                    },
                    dict(
                        common,
                        analysis="calibration",
                        accuracy=0.95 - 0.01 * gi,
                        nll=0.2 + 0.05 * gi + 0.01 * rng.standard_normal(),
                        ece=float((count * np.abs(acc - conf)).sum() / count.sum()),
                        brier=0.08 + 0.01 * gi,
                        mc_samples=25 if gi else 0,
                    ),
                )
            if "bnn" in analyses:
                steps = np.arange(1, 11) * 20.0
                nll = 2.0 * np.exp(-steps / 50) + 0.05 * (gi + 1) + 0.01 * rng.random(10)
                kl = np.full(10, 25.0 - 3 * gi)
                write(
                    BN.BNN,
                    f"bnn/{g}/{s}",
                    {
                        BN.STEP.name: steps,
                        BN.ELBO.name: -(nll + kl),
                        BN.NLL_TERM.name: nll,
                        BN.KL_TERM.name: kl,
                        BN.TRAIN_ACCURACY.name: 1 - nll / 3,
                        BN.SECONDS.name: steps / 100,
                    },
                    dict(
                        common,
                        analysis="bnn",
                        final_elbo=float(-(nll[-1] + kl[-1])),
                        final_nll_term=float(nll[-1]),
                        final_kl_term=float(kl[-1]),
                        final_train_accuracy=float(1 - nll[-1] / 3),
                        steps=200,
                    ),
                )
    assert R.KINDS  # every analysis written above has a definition
    return Path(path)


@pytest.fixture
def write_results():
    return synthetic_results
