"""landscape align: permute checkpoint B's hidden units onto checkpoint A and save the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from checkpoints import load_model, read_sidecar, save_checkpoint, sha256
from landscape.errors import UserError, first_line, os_error_line

from ..common import (
    check_data_fits,
    check_output,
    data_label,
    int_at_least,
    nonnegative_int,
    print_table,
)

HELP = "align checkpoint B to checkpoint A by permuting B's hidden units (Git Re-Basin weight matching, or activation matching)"
EXAMPLE = (
    "landscape align runs/standard/seed0/final.pt runs/standard/seed1/final.pt -o B_aligned.pt"
)


def add_arguments(p) -> None:
    p.add_argument("a", metavar="A", help="reference checkpoint (stays as it is)")
    p.add_argument("b", metavar="B", help="checkpoint to permute onto A")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="aligned checkpoint to write (.pt) with a sidecar FILE.json",
    )
    p.add_argument(
        "--method",
        choices=("weight", "activation"),
        default="weight",
        help="weight matching or activation matching (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="SPEC",
        help="data for activation matching and the function check (default: random inputs)",
    )
    p.add_argument(
        "--samples",
        type=int_at_least(1),
        default=1024,
        metavar="N",
        help="inputs for activation matching (default: %(default)s)",
    )
    p.add_argument(
        "--spec",
        default=None,
        metavar="JSON",
        help="permutation spec as a JSON file (default: the model's own or derived)",
    )
    p.add_argument(
        "--max-iter",
        type=int_at_least(1),
        default=100,
        help="most sweeps of coordinate descent (default: %(default)s)",
    )
    p.add_argument(
        "--restarts",
        type=nonnegative_int,
        default=0,
        help="extra starts from random permutations, best kept (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default=None, help="architecture when the checkpoints have no sidecar")
    p.add_argument("--device", default="cpu", help="cpu | cuda[:N] | auto (default: %(default)s)")


def read_spec(path: str):
    """The ``--spec`` file as a :class:`landscape.permutation.PermutationSpec`; any problem is one
    line naming the file."""
    from landscape.permutation import as_spec

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UserError(f"--spec {p}: no such permutation-spec file") from exc
    except OSError as exc:
        raise UserError(os_error_line(p, exc)) from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"--spec {p}: not UTF-8 text: a spec is a JSON file") from exc
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise UserError(f"--spec {p}: not valid JSON ({first_line(exc)}): fix the file") from exc
    try:
        return as_spec(spec)
    except UserError as exc:
        raise UserError(f"--spec {p}: {exc}") from exc
    except Exception as exc:  # the spec parser's own errors on a malformed spec
        raise UserError(
            f"--spec {p}: not a permutation spec ({type(exc).__name__}: {first_line(exc)}); "
            'expected {"groups": {name: [[tensor, axis], ...]}, "sizes": {name: units}}'
        ) from exc


def _check_same_shapes(model_a, model_b, a_path: Path, b_path: Path) -> None:
    """A and B must be one architecture: the same parameter names and shapes."""
    pa, pb = dict(model_a.named_parameters()), dict(model_b.named_parameters())
    if pa.keys() != pb.keys():
        diff = sorted(set(pa) ^ set(pb))[:3]
        raise UserError(
            f"{a_path} and {b_path}: different architectures (parameters differ: {', '.join(diff)}): "
            "align two networks of one architecture"
        )
    for n in pa:
        if pa[n].shape != pb[n].shape:
            raise UserError(
                f"{a_path} and {b_path}: different shapes at {n}: {tuple(pa[n].shape)} vs "
                f"{tuple(pb[n].shape)}: align two networks of one architecture and width"
            )


def run(args) -> int:
    from ..alignment import align_pair

    a_path, b_path, out = Path(args.a), Path(args.b), Path(args.output)
    check_output(out)
    if out.resolve() in (a_path.resolve(), b_path.resolve()):
        raise UserError(f"{out}: -o would overwrite an input checkpoint; choose another file")
    spec = read_spec(args.spec) if args.spec is not None else None
    model_a = load_model(a_path, arch=args.arch, device=args.device)
    model_b = load_model(b_path, arch=args.arch, device=args.device)
    _check_same_shapes(model_a, model_b, a_path, b_path)
    data = None
    if args.data is not None:
        from checkpoints.sources import load_data

        data = load_data(args.data, "train", samples=args.samples)
        check_data_fits(model_a, data, a_path, data_label(args.data), labels=False)
        data = data.pair
    if args.method == "activation" and data is None:
        raise UserError(
            "--method activation needs --data (hidden activations are correlated on inputs)"
        )
    try:
        aligned, perm = align_pair(
            model_a,
            model_b,
            method=args.method,
            data=data,
            spec=spec,
            max_iter=args.max_iter,
            seed=args.seed,
            restarts=args.restarts,
            quiet_asymmetric=True,
        )
    except UserError as exc:
        if spec is not None and "spec" in str(exc):
            raise UserError(f"--spec {args.spec}: {exc}") from exc
        raise
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError) as exc:
        if spec is None:
            raise
        raise UserError(
            f"--spec {args.spec}: does not fit the models ({type(exc).__name__}: {first_line(exc)}): fix the spec"
        ) from exc
    if not perm.function_preserved:
        print(
            f"landscape align: warning: the permutation does not preserve B's function (output change {perm.max_output_change:.3g}): "
            "the model is asymmetric or the spec is not a symmetry; the aligned checkpoint is a different network (a baseline only)",
            file=sys.stderr,
        )
    side = dict(read_sidecar(b_path))
    if not perm.function_preserved:
        side.pop("metrics", None)  # B's metrics describe B, not a network with a different function
    side["aligned_to"] = {
        "path": str(a_path),
        "sha256": sha256(a_path),
        "source": str(b_path),
        "source_sha256": sha256(b_path),
        **perm.summary(),  # objective, sweeps, converged, function preserved, ...
        "method": f"{args.method} matching",
        "seed": args.seed,
        "restarts": args.restarts,
    }
    side["alignment_permutation"] = {
        g: p.tolist() for g, p in perm.perms.items()
    }  # B's unit placed at each position, per group
    save_checkpoint(aligned, out, sidecar=side)
    moved = perm.to_frame()
    rows = [
        ("aligned to", str(a_path)),
        ("method", f"{args.method} matching"),
        ("objective (identity)", f"{perm.objective_identity:.6g}"),
        ("objective (aligned)", f"{perm.objective:.6g}"),
        ("sweeps", perm.sweeps),
        ("function preserved", perm.function_preserved),
        ("units moved", f"{int(moved['moved'].sum())} of {int(moved['size'].sum())}"),
        ("written", str(out)),
    ]
    print_table(pd.DataFrame(rows, columns=["field", "value"]).astype(str))
    return 0
