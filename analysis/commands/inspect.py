"""landscape inspect: what a checkpoint or a results file holds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from checkpoints import load_model, read_sidecar
from landscape.errors import UserError, os_error_line
from landscape.params import ParamView

from ..common import print_table
from ..results import load

HELP = "show what a checkpoint (architecture, variant, sizes, sidecar) or a results file (records) holds"
EXAMPLE = "landscape inspect runs/w-asym/seed0/final.pt"


def add_arguments(p) -> None:
    p.add_argument(
        "path", metavar="PATH", help="a checkpoint (.pt, .safetensors) or a results file (.h5)"
    )
    p.add_argument("--arch", default=None, help="architecture when the checkpoint has no sidecar")


def run(args) -> int:
    path = Path(args.path)
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a folder we may not enter
        raise UserError(os_error_line(path, exc)) from exc
    if not exists:
        raise UserError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5"):
        res = load(path)
        print(res.describe())
        return 0
    model = load_model(path, arch=args.arch)
    cfg = dict(getattr(model, "config", {}) or {})
    side = read_sidecar(path)
    n_all = sum(p.numel() for p in model.parameters())
    fixed = sum(int((b == 0).sum()) for n, b in model.named_buffers() if n.endswith(".mask"))
    rows = [
        ("file", str(path)),
        ("architecture", cfg.get("arch", type(model).__name__)),
        ("variant", cfg.get("variant", "?")),
        ("parameters (all entries)", n_all),
        ("fixed entries (W-Asym)", fixed),
        ("trainable coordinates", ParamView(model).numel),
    ]
    for k in ("width", "depth", "norm", "activation", "n_fix", "kappa", "mask_seed", "seed"):
        if cfg.get(k) is not None:
            rows.append((k, cfg[k]))
    data = side.get("data")
    if data:  # a sidecar is read as it is: show what it holds, whatever its shape
        train = data.get("train") if isinstance(data, dict) else None
        rows.append(("data", train.get("spec", data) if isinstance(train, dict) else data))
    metrics = side.get("metrics")
    for k, v in (metrics if isinstance(metrics, dict) else {}).items():
        rows.append((k, round(v, 5) if isinstance(v, float) else v))
    if side.get("aligned_to"):
        rows.append(("aligned to", side["aligned_to"]))
    print_table(pd.DataFrame(rows, columns=["field", "value"]).astype(str))
    return 0
