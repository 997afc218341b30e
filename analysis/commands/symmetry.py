"""landscape symmetry: audit which permutation symmetries each network keeps."""

from __future__ import annotations

import pandas as pd

from landscape.errors import UserError
from landscape.records.symmetry import PERM_GROUP, SYMMETRY

from ..common import (
    add_data,
    add_executor,
    add_output,
    add_roots,
    context_from_args,
    positive_int,
    print_table,
)

SYMMETRY_DIMS = PERM_GROUP.dims

HELP = (
    "symmetry audit: output change of each network under random permutations of its hidden units (about 1e-7 for a standard "
    "network, large for W-Asym and sigma-Asym), and log10 of the size of the symmetry group"
)
EXAMPLE = "landscape symmetry runs -o results.h5        # or one checkpoint: landscape symmetry runs/w-asym/seed0/final.pt"


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p, default=None)
    add_output(p)
    add_executor(p, "networks")
    g = p.add_argument_group("audit")
    g.add_argument(
        "--trials",
        type=positive_int,
        default=3,
        help="random permutations per group (default: %(default)s)",
    )
    g.add_argument(
        "--audit-samples",
        type=positive_int,
        default=256,
        metavar="N",
        help="inputs the output change is measured on (default: %(default)s; random inputs unless --data is given)",
    )
    g.add_argument(
        "--seed", type=int, default=0, help="seed of the random permutations (default: %(default)s)"
    )


def run(args) -> int:
    from ..alignment import ANALYSIS, study

    if args.trials < 1 or args.audit_samples < 1:
        raise UserError(
            f"--trials and --audit-samples must be positive, got {args.trials} and {args.audit_samples}"
        )
    data_given = args.data is not None
    args.data = args.data or "digits"
    ctx = context_from_args(args, data=data_given, keep=True)
    df = study(
        ctx,
        trials=args.trials,
        audit_samples=args.audit_samples,
        seed=args.seed,
        data="test" if data_given else "random",
    )
    runs = [(g, r) for g, rs in ctx.groups.items() for r in rs]
    if len(runs) == 1:
        g, r = runs[0]
        rec = ctx.store.read(f"{ANALYSIS}/{g}/{r.key}")
        per_group = [v.name for v in SYMMETRY.variables if v.dims == SYMMETRY_DIMS]
        per = pd.DataFrame({name: rec[name] for name in per_group})
        print_table(per, f"{r.final}: output change per permutation group")
    print_table(df, f"symmetry audit ({args.output})")
    return 0
