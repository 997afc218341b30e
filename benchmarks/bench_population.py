"""Populations and metanets: training throughput against a plain loop, metanet cost per epoch.

Case 1 (the demo's population): MLP 64-32-32-10 on the embedded digits, standard and W-Asym,
hyperparameters drawn per network from the paper's distribution with epochs scaled by 0.1.
``checkpoints.population.train_population`` (checkpoints, sidecars and metrics written per
network, by rename) against a plain loop over the same models and data: build, AdamW with
the same per-step learning rates, label-smoothed cross-entropy, the same data order, then the
train and test accuracy, nothing written. Headline: networks per minute and the ratio of
the times (target <= 1.25: the bookkeeping may cost a quarter). The plain loop's final
weights are compared with the population's checkpoints (the error column: they must agree).

Case 2: ``landscape.metanet.fit_metanet`` seconds per epoch on a population of 1,000 random
networks of the ResNet-8 layouts (W-Asym: 60,634 coordinates; standard for the permutation
augmentation: 78,042), 500 of them training, batch 128, validation predictions included.
DeepSets and DMC (one activation per coordinate and channel) run on 8,192 coordinates on a
CPU (noted in their rows).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time

import torch
import torch.nn.functional as F

from .timing import measure_interleaved, spread

TARGET = 1.25


def _plain(spec, jobs, train, test) -> tuple[dict, float]:
    """The plain loop: the same networks trained by hand; returns final states and seconds."""
    from checkpoints import zoo
    from checkpoints.population_spec import variant_build

    states = {}
    t0 = time.perf_counter()
    n = len(train)
    for variant, i in jobs:
        zv, kw = variant_build(spec, variant, train)
        model = zoo.build(spec.arch, zv, seed=i, **kw)
        hp = spec.draw(i)
        opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        gen = torch.Generator().manual_seed(10_007 * i + 1)
        per_epoch = math.ceil(n / spec.batch_size)
        total, peak = float(hp["epochs"]), min(spec.peak_epoch * spec.epochs_scale, hp["epochs"])
        step = 0
        model.train()
        for _ in range(hp["epochs"]):
            order = torch.randperm(n, generator=gen)
            for b in range(0, n, spec.batch_size):
                u = (step + 0.5) / per_epoch  # the triangle: 0 -> 1 at the peak -> 0 at the end
                factor = u / peak if u <= peak else max(0.0, (total - u) / (total - peak))
                for group in opt.param_groups:
                    group["lr"] = hp["lr"] * factor
                step += 1
                idx = order[b : b + spec.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(
                    model(train.X[idx]), train.y[idx], label_smoothing=hp["label_smoothing"]
                )
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            for ds in (train, test):
                (model(ds.X).argmax(1) == ds.y).float().mean()
        states[variant, i] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return states, time.perf_counter() - t0


def _population_case(size: int, repeats: int) -> list[dict]:
    from pathlib import Path

    from analysis.metanet import demo_spec
    from checkpoints.population import train_population
    from checkpoints.sources import load_data

    spec = demo_spec(size)
    spec = type(spec)(**{**spec.__dict__, "variants": ("standard", "w-asym")}).check()
    train, test = load_data("digits", "train"), load_data("digits", "test")
    jobs = [(v, i) for v in spec.variants for i in range(size)]
    roots: list[Path] = []
    plain_states: dict = {}

    def population() -> None:
        root = Path(tempfile.mkdtemp(prefix="bench-pop-")) / "pop"
        roots.append(root)
        train_population(root, spec, train, test, progress=False)

    def plain() -> None:
        plain_states.update(_plain(spec, jobs, train, test)[0])

    times = measure_interleaved({"population": population, "plain": plain}, repeats, warmup=0)
    err = 0.0
    for (v, i), st in plain_states.items():
        ck = torch.load(roots[-1] / spec.group(v) / f"net{i:05d}" / "final.pt", weights_only=True)
        err = max(err, max(float((ck["state_dict"][k] - st[k]).abs().max()) for k in st))
    for root in roots:
        shutil.rmtree(root.parent, ignore_errors=True)
    ratios = [p / q for p, q in zip(times["population"], times["plain"])]
    r, r_lo, r_hi = spread(ratios)
    case = (
        f"population training, MLP 64-32-32-10 on digits (1,437 samples), standard + W-Asym x "
        f"{size}, {spec.describe()}, epochs x {spec.epochs_scale:g}, batch {spec.batch_size}"
    )
    rows = []
    for tool, key in (
        ("landscape train --population (inline)", "population"),
        ("plain loop", "plain"),
    ):
        med, lo, hi = spread(times[key])
        rows.append(
            {
                "case": case,
                "tool": tool,
                "time_s": med,
                "time_min_s": lo,
                "time_max_s": hi,
                "repeats": len(times[key]),
                "networks": len(jobs),
                "networks_per_min": 60 * len(jobs) / med,
            }
        )
    rows[0].update(
        ratio=r,
        ratio_min=r_lo,
        ratio_max=r_hi,
        ratio_of="population time / plain loop time, median over rounds",
        error=err,
        error_of="max |final weight, population - plain loop| over all networks",
        target=f"ratio <= {TARGET}",
        met=bool(r <= TARGET),
        note="population writes init.pt, final.pt and a sidecar per network (fsync, rename)",
    )
    return rows


def _first(layout, d: int):
    """The layout of the first ``d`` coordinates (tensors past ``d`` dropped, the last one cut)."""
    from landscape.metanet import Layout

    keep = [
        (n, a, min(b, d)) for n, a, b in zip(layout.names, layout.starts, layout.stops) if a < d
    ]
    return Layout(*(tuple(x) for x in zip(*keep)))


def _metanet_case(
    n: int, arch: str, kw: dict, cut: int | None, epochs: int, device: str
) -> list[dict]:
    from checkpoints import zoo
    from landscape.metanet import (
        FlatPermuter,
        MetanetSettings,
        fit_metanet,
        population_matrix,
        prepare_inputs,
        split_population,
    )

    layouts = {}
    for variant in ("w-asym", "standard"):
        model = zoo.build(arch, variant, **kw)
        layouts[variant] = (model, population_matrix([model])[1])
    g = torch.Generator().manual_seed(0)
    split = split_population(n, 0)
    y = torch.rand(n, generator=g).double().numpy()
    rows = []
    for name in ("linear", "mlp", "mlp_perm", "statnn", "deepsets", "dmc"):
        model, layout = layouts["standard" if name == "mlp_perm" else "w-asym"]
        note = f"{arch} {'standard' if name == 'mlp_perm' else 'W-Asym'} coordinates"
        if cut and name in ("deepsets", "dmc") and layout.dim > cut:
            layout = _first(layout, cut)
            note = f"the first {cut:,} coordinates only (one activation per coordinate: CPU memory)"
        X = torch.randn(n, layout.dim, generator=g)
        t0 = time.perf_counter()
        inputs = prepare_inputs(name, X, layout, split.train)
        prep = time.perf_counter() - t0
        fit = fit_metanet(
            name,
            inputs,
            y,
            split,
            layout,
            MetanetSettings(epochs=epochs, batch_size=128, lrs=(1e-3,)),
            device=device,
            permuter=FlatPermuter(model) if name == "mlp_perm" else None,
        )
        rows.append(
            {
                "case": f"metanet cost per epoch, {n:,} random networks ({split.sizes[0]} training, "
                f"batch 128, validation predictions included), {device}",
                "tool": name,
                "time_s": fit.seconds_per_epoch,
                "coordinates": layout.dim,
                "input_features": int(inputs.shape[1]),
                "prepare_s": prep,
                "note": note,
            }
        )
    return rows


def run(smoke: bool = False, device: str = "cpu") -> list[dict]:
    if smoke:
        small = {"in_channels": 3, "channels": (4, 8)}
        return _population_case(2, 1) + _metanet_case(40, "cnn", small, None, 1, device)
    cut = None if device.startswith("cuda") else 8192
    return _population_case(20, 3) + _metanet_case(1000, "resnet8", {}, cut, 2, device)


if __name__ == "__main__":
    import sys

    for r in run(smoke="--smoke" in sys.argv):
        print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})
