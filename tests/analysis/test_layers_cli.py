"""``landscape hessian --per-layer``: one record per network with every layer's block, the
layers partition the coordinates, and the report draws them per group."""

from __future__ import annotations

import h5py
import numpy as np

from analysis.cli import main
from checkpoints import discover, load_model
from landscape.params import ParamView


def test_per_layer_records_partition_the_coordinates_and_reach_the_report(tiny_runs, tmp_path):
    out = tmp_path / "r.h5"
    argv = ["hessian", str(tiny_runs), "--samples", "60", "--top-k", "1", "--num-queries", "8"]
    assert main([*argv, "--per-layer", "-o", str(out), "-q"]) == 0
    runs = [r for rs in discover(tiny_runs).values() for r in rs]
    with h5py.File(out, "r") as f:
        for r in runs:
            rec = f[f"hessian_layers/{r.group}/{r.key}"]
            full = f[f"hessian/{r.group}/{r.key}"]
            model = load_model(r.final)
            owners = [n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.requires_grad]
            layers = [x.decode() if isinstance(x, bytes) else str(x) for x in rec["layer"][()]]
            assert layers == list(dict.fromkeys(owners))
            # fixed W-Asym entries are not coordinates: the layers split exactly the full view
            assert int(rec["layer_coordinates"][()].sum()) == ParamView(model).numel
            assert int(rec["layer_coordinates"][()].sum()) == int(full.attrs["coordinates"])
            assert np.isfinite(rec["layer_trace"][()]).all()
            assert float(rec.attrs["total_trace"]) == float(rec["layer_trace"][()].sum())
    assert main(["report", str(out), "-o", str(tmp_path / "r.html"), "-q"]) == 0
    assert "Curvature per layer" in (tmp_path / "r.html").read_text()
