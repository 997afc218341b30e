"""landscape run: every analysis on a checkpoint set, one results file, one HTML report.

The studies run in this order, each when its module is installed: interpolation (pairwise
barriers, aligned barriers for standard groups, MLI), symmetry audit, Hessian spectra,
surfaces. Settings come from small defaults, then an optional TOML config, then the
command line. Complete records are reused, so rerunning resumes a killed study.

Config (every table optional)::

    [study]                # data and selection; the command line wins over these
    data = "digits"
    samples = 1000
    analyses = ["interpolation", "hessian"]
    [interpolation]        # keyword arguments of analysis.interpolation.study
    num_points = 25
    [hessian]              # ... of analysis.hessian.study, and so on: [symmetry], [surface]
"""

from __future__ import annotations

import importlib
import inspect
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from landscape.errors import UserError

from ..common import add_data, add_roots, print_table

HELP = "run every analysis on a checkpoint set: OUTDIR/results.h5, OUTDIR/report.html and a summary table"
EXAMPLE = "landscape run runs --data digits -o out/study --config study.toml"

#: analysis name -> (module, fixed keyword arguments): the order studies run in
STUDIES: dict[str, tuple[str, dict[str, Any]]] = {
    "interpolation": ("analysis.interpolation", {"align": True, "mli": True}),
    "symmetry": ("analysis.alignment", {}),
    "hessian": ("analysis.hessian", {}),
    "surface": ("analysis.surfaces", {}),
}
#: small defaults, used where the study accepts the keyword (names it does not take are dropped)
DEFAULTS: dict[str, dict[str, Any]] = {
    "interpolation": {"num_points": 21},
    "symmetry": {},
    "hessian": {"top_k": 5, "num_runs": 5, "lanczos_steps": 60, "num_queries": 30},
    "surface": {"steps": 21},
}
STUDY_KEYS = {"data", "samples", "batch_size", "device", "arch", "analyses"}


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p, default=None)
    p.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUTDIR",
        help="output folder: results.h5, report.html (created; reused on rerun)",
    )
    p.add_argument(
        "--config",
        metavar="TOML",
        help="settings per analysis ([study], [interpolation], [symmetry], [hessian], [surface])",
    )
    p.add_argument(
        "--analyses",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(STUDIES)} (default: all installed)",
    )
    p.add_argument(
        "--static", metavar="DIR", help="also write every figure as PNG and PDF into DIR"
    )
    p.add_argument(
        "--force", action="store_true", help="recompute records that are already complete"
    )


def read_config(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The TOML config as ``{table: {key: value}}``; unknown tables are an error."""
    if path is None:
        return {}
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        cfg = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}): fix the file") from exc
    unknown = set(cfg) - set(STUDIES) - {"study"}
    if unknown:
        raise UserError(
            f"{path}: unknown table(s) {sorted(unknown)}; expected [study], "
            + ", ".join(f"[{s}]" for s in STUDIES)
        )
    for k, v in cfg.items():
        if not isinstance(v, dict):
            raise UserError(f"{path}: {k} must be a table ([{k}]), got a value")
    bad = set(cfg.get("study", {})) - STUDY_KEYS
    if bad:
        raise UserError(
            f"{path}: unknown key(s) {sorted(bad)} in [study]; expected {sorted(STUDY_KEYS)}"
        )
    _refuse_code(cfg.get("study", {}), path)
    return cfg


def _refuse_code(study: Mapping[str, Any], path: Path) -> None:
    """A config file names data and models, never code: ``module:callable`` only on the command line."""
    from checkpoints.sources import names_code
    from checkpoints.zoo import ARCHS

    arch, data = study.get("arch"), study.get("data")
    if isinstance(arch, str) and arch not in ARCHS:
        raise UserError(
            f"{path}: [study] arch = {arch!r} is not a zoo model ({', '.join(ARCHS)}); a config "
            f"file cannot name code to run: if you trust it, pass --arch {arch} on the command line"
        )
    if isinstance(data, str) and names_code(data):
        raise UserError(
            f"{path}: [study] data = {data!r} names code to run; a config file cannot: "
            f"if you trust it, pass --data {data} on the command line"
        )


def study_function(analysis: str) -> Callable | None:
    """The ``study`` function of an analysis, or None when its module is not installed."""
    module = STUDIES[analysis][0]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise
    return getattr(mod, "study", None)


def study_kwargs(
    fn: Callable, analysis: str, overrides: Mapping[str, Any], source: str = "config"
) -> dict[str, Any]:
    """Defaults, fixed arguments and overrides, kept to what ``fn`` accepts; an override it does not take is an error."""
    params = inspect.signature(fn).parameters
    open_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    } - {"ctx"}
    bad = [k for k in overrides if not open_kw and k not in accepted]
    if bad:
        raise UserError(
            f"{source}: [{analysis}] has no setting {', '.join(map(repr, bad))}; it accepts {', '.join(sorted(accepted))}"
        )
    kw = {
        k: v
        for k, v in {**DEFAULTS.get(analysis, {}), **STUDIES[analysis][1]}.items()
        if k in accepted
    }
    kw.update(overrides)
    return kw


def run_studies(
    ctx,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    analyses: list[str] | None = None,
    *,
    source: str = "config",
    log=print,
) -> list[tuple[str, str, float]]:
    """Run the installed studies on ``ctx``; returns ``(analysis, status, seconds)`` rows. A study's bad-input error is reported, not fatal."""
    settings = settings or {}
    rows = []
    for analysis in analyses or list(STUDIES):
        fn = study_function(analysis)
        if fn is None:
            rows.append((analysis, "not installed", 0.0))
            continue
        kw = study_kwargs(fn, analysis, settings.get(analysis, {}), source)
        t0 = time.perf_counter()
        try:
            fn(ctx, **kw)
            status = "done"
        except UserError as exc:
            status = "failed"
            log(f"landscape run: {analysis}: {exc}", file=sys.stderr)
        rows.append((analysis, status, time.perf_counter() - t0))
    return rows


def select(analyses: str | list[str] | None) -> list[str]:
    if analyses is None:
        return list(STUDIES)
    names = (
        [a.strip() for a in analyses.split(",")] if isinstance(analyses, str) else list(analyses)
    )
    bad = [a for a in names if a not in STUDIES]
    if bad:
        raise UserError(f"unknown analysis {', '.join(bad)}: choose from {', '.join(STUDIES)}")
    return [a for a in STUDIES if a in names]


def execute(
    roots,
    outdir: str | Path,
    *,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    data: str | None = None,
    samples: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    arch: str | None = None,
    analyses: str | list[str] | None = None,
    force: bool = False,
    progress: bool = True,
    static: str | Path | None = None,
    source: str = "config",
    quiet: bool = False,
) -> int:
    """The body of ``landscape run`` (also used by ``landscape demo``): returns the exit status."""
    import pandas as pd

    from ..context import StudyContext
    from ..results import load

    cfg = dict(config or {})
    st = cfg.get("study", {})
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UserError(
            f"{outdir}: is a file; -o takes an output folder (results.h5 and report.html go inside)"
        )
    outdir.mkdir(parents=True, exist_ok=True)
    ctx = StudyContext.create(
        roots,
        data=data or st.get("data", "digits"),
        output=outdir / "results.h5",
        device=device or st.get("device", "auto"),
        samples=samples if samples is not None else st.get("samples"),
        batch_size=batch_size or st.get("batch_size"),
        arch=arch or st.get("arch"),
        force=force,
        progress=progress,
    )
    names = select(analyses if analyses is not None else st.get("analyses"))
    rows = run_studies(ctx, cfg, names, source=source)
    from reports import render_html, write_static

    res = load(outdir / "results.h5")
    report = render_html(res, outdir / "report.html")
    if static:
        write_static(res, static)
    if not quiet:
        print_table(
            pd.DataFrame(rows, columns=["analysis", "status", "seconds"]).round({"seconds": 1}),
            "analyses",
        )
        print_table(res.summary(), f"summary ({outdir / 'results.h5'})")
        print(f"report: {report}")
    return 2 if any(s == "failed" for _, s, _ in rows) else 0


def run(args) -> int:
    cfg = read_config(args.config)
    return execute(
        args.roots,
        args.output,
        config=cfg,
        data=args.data,
        samples=args.samples,
        batch_size=args.batch_size,
        device=args.device if args.device != "auto" else None,
        arch=args.arch,
        analyses=args.analyses,
        force=args.force,
        progress=not args.quiet,
        static=args.static,
        source=str(args.config or "defaults"),
    )
