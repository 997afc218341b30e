"""landscape run: every analysis on a checkpoint set, one results file, one HTML report.

The studies run in this order, each when its module is installed: interpolation (pairwise
barriers, aligned barriers for standard groups, MLI), symmetry audit, Hessian spectra,
surfaces, calibration. Settings come from small defaults, then an optional TOML config, then the
command line. Complete records are reused, so rerunning resumes a killed study.

Config (every table optional)::

    [study]                # data and selection; the command line wins over these
    data = "digits"
    samples = 1000
    analyses = ["interpolation", "hessian"]
    workers = 4            # or "gpu"; or scheduler = "tcp://HOST:8786" (one executor for all)
    budget = 2.0           # scales the Hessian density's products (runs x steps), as --budget
    loss = "lm"            # a built-in loss, as --loss (module:callable only on the command line)
    [interpolation]        # keyword arguments of analysis.interpolation.study
    num_points = 25
    [hessian]              # ... of analysis.hessian.study, and so on: [symmetry], [surface]
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from checkpoints.io import first_line, os_error_line
from landscape.errors import UserError

from ..common import (
    add_data,
    add_executor,
    add_objective,
    add_roots,
    check_output,
    executor_kwargs,
    open_context,
    print_table,
    write_error,
)

HELP = "run every analysis on a checkpoint set: OUTDIR/results.h5, OUTDIR/report.html and a summary table"
EXAMPLE = "landscape run runs --data digits -o out/study --config study.toml"

#: analysis name -> (module, fixed keyword arguments): the order studies run in
STUDIES: dict[str, tuple[str, dict[str, Any]]] = {
    "interpolation": ("analysis.interpolation", {"align": True, "mli": True}),
    "symmetry": ("analysis.alignment", {}),
    "hessian": ("analysis.hessian", {}),
    "surface": ("analysis.surfaces", {}),
    "calibration": ("analysis.calibration", {}),
}
#: small defaults, used where the study accepts the keyword (names it does not take are dropped)
DEFAULTS: dict[str, dict[str, Any]] = {
    "interpolation": {"num_points": 21},
    "symmetry": {},
    # one Krylov pass: 3 x 30 density products, the 3 largest and most negative eigenvalues
    # continuing one of those runs, the trace from their start vectors (--budget scales the
    # density); the Hessian study of 9 digits MLPs of width 512 took 4 minutes on 2 cores
    "hessian": {"top_k": 3, "num_runs": 3, "lanczos_steps": 30},
    "surface": {"steps": 21},
}
STUDY_KEYS = {
    "data", "samples", "batch_size", "device", "arch", "analyses", "workers", "scheduler", "gpus",
    "budget", "loss",
}  # fmt: skip


def add_arguments(p) -> None:
    add_roots(p)
    add_data(p, default=None)
    add_objective(p)
    add_executor(p, "records of every analysis")
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
        "--budget",
        type=float,
        default=None,
        metavar="FACTOR",
        help="scale the Hessian density's products (runs x steps, 3 x 30 at 1) by FACTOR; the "
        "expected cost is printed before the Hessian study starts (default: 1)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="recompute records that are already complete; also write into an OUTDIR/results.h5 "
        "that another program wrote (refused by default)",
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
    except OSError as exc:
        raise UserError(os_error_line(path, exc)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({first_line(exc)}): fix the file") from exc
    validate_config(cfg, str(path))
    return cfg


#: [study] keys: (accepted types, how a message names them)
_STUDY_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "data": ((str,), 'a string (a data spec such as "digits" or "npz:FILE")'),
    "device": ((str,), 'a string ("auto", "cpu" or "cuda:N")'),
    "arch": ((str,), "a string (a zoo model name)"),
    "samples": ((int,), "a positive integer"),
    "batch_size": ((int,), "a positive integer"),
    "analyses": ((list, str), f"a list of analysis names (from {', '.join(STUDIES)})"),
    "workers": ((int, str), 'a positive integer or "gpu"'),
    "scheduler": ((str,), 'a string ("tcp://HOST:PORT")'),
    "gpus": ((str,), 'a string ("all" or "0,1")'),
    "budget": ((int, float), "a positive number"),
    "loss": ((str,), 'a string (a loss name: "auto", "classification", "squared_error", "lm")'),
}


def validate_config(cfg: Mapping[str, Any], source: str = "config") -> None:
    """Check a whole config before anything runs or is created: tables, [study] keys and
    their types, and each analysis's keys and types against its study function's signature."""
    unknown = set(cfg) - set(STUDIES) - {"study"}
    if unknown:
        raise UserError(
            f"{source}: unknown table(s) {sorted(unknown)}; expected [study], "
            + ", ".join(f"[{s}]" for s in STUDIES)
        )
    for k, v in cfg.items():
        if not isinstance(v, Mapping):
            raise UserError(f"{source}: {k} must be a table ([{k}]), got a value")
    study = cfg.get("study", {})
    bad = set(study) - STUDY_KEYS
    if bad:
        raise UserError(
            f"{source}: unknown key(s) {sorted(bad)} in [study]; expected {sorted(STUDY_KEYS)}"
        )
    for k, v in study.items():
        types, kind = _STUDY_TYPES[k]
        ok = isinstance(v, types) and not isinstance(v, bool)
        if ok and k in ("samples", "batch_size"):
            ok = v >= 1
        if ok and k == "analyses":
            ok = isinstance(v, str) or all(isinstance(a, str) for a in v)
        if ok and k == "workers":
            ok = v == "gpu" if isinstance(v, str) else v >= 1
        if ok and k == "budget":
            ok = _positive(v)
        if not ok:
            raise UserError(f"{source}: [study] {k} = {v!r}: must be {kind}; fix the file")
    if "analyses" in study:
        try:
            select(study["analyses"])
        except UserError as exc:
            raise UserError(f"{source}: [study] analyses: {exc}") from exc
    _refuse_code(study, Path(source))
    for analysis in STUDIES:
        settings = cfg.get(analysis)
        fn = study_function(analysis) if settings else None
        if fn is not None:
            study_kwargs(fn, analysis, settings, source)  # unknown keys
            _check_types(fn, analysis, settings, source)


def _expected_types(param: inspect.Parameter) -> tuple[set[type], str] | None:
    """What a study keyword accepts, from its annotation (or its default's type); None: anything."""
    names = {
        "int": ({int}, "an integer"),
        "float": ({int, float}, "a number"),
        "bool": ({bool}, "true or false"),
        "str": ({str}, "a string"),
    }
    ann = param.annotation
    if isinstance(ann, type):
        ann = ann.__name__
    if not isinstance(ann, str) or ann == "":
        d = param.default
        if d is inspect.Parameter.empty or d is None:
            return None
        ann = type(d).__name__
    types: set[type] = set()
    kinds = []
    for part in (p.strip() for p in ann.split("|")):
        if part == "None":
            continue
        if part.split("[")[0] in ("Sequence", "list", "tuple", "Iterable", "Collection"):
            types.add(list)
            kinds.append("a list")
        elif part in names:
            types |= names[part][0]
            kinds.append(names[part][1])
        else:
            return None  # a type the config cannot spell: left to the study
    return (types, " or ".join(kinds)) if types else None


def _check_types(fn: Callable, analysis: str, settings: Mapping[str, Any], source: str) -> None:
    params = inspect.signature(fn).parameters
    for k, v in settings.items():
        expected = params.get(k) and _expected_types(params[k])
        if not expected:
            continue
        types, kind = expected
        ok = any(isinstance(v, t) for t in types)
        if isinstance(v, bool) and bool not in types:
            ok = False
        if not ok:
            raise UserError(f"{source}: [{analysis}] {k} = {v!r}: must be {kind}; fix the file")


def _refuse_code(study: Mapping[str, Any], path: Path) -> None:
    """A config file names data and models, never code: ``module:callable`` only on the command line."""
    from checkpoints.sources import names_code
    from checkpoints.zoo import ARCHS
    from landscape.objectives import is_builtin

    arch, data, loss = study.get("arch"), study.get("data"), study.get("loss")
    if isinstance(loss, str) and not is_builtin(loss):
        raise UserError(
            f"{path}: [study] loss = {loss!r} is not a built-in loss (auto, classification, "
            "squared_error, lm); a config file cannot name code to run: if you trust it, pass "
            f"--loss {loss} on the command line"
        )
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
    budget: float | None = None,
) -> list[tuple[str, str, float]]:
    """Run the installed studies on ``ctx``; returns ``(analysis, status, seconds)`` rows.

    The first bad-input error stops the run (one :class:`UserError`, prefixed with the
    analysis): the records written so far are complete, and a rerun resumes. ``budget``
    goes to every study that takes one (the Hessian's: it scales the density's products).
    """
    settings = settings or {}
    rows = []
    for analysis in analyses or list(STUDIES):
        fn = study_function(analysis)
        if fn is None:
            rows.append((analysis, "not installed", 0.0))
            continue
        if analysis == "calibration" and _token_level(ctx):  # class probabilities per sample
            rows.append((analysis, "skipped: token-level loss", 0.0))
            continue
        kw = study_kwargs(fn, analysis, settings.get(analysis, {}), source)
        if budget is not None and "budget" in inspect.signature(fn).parameters:
            kw["budget"] = budget
        t0 = time.perf_counter()
        try:
            fn(ctx, **kw)
        except UserError as exc:
            where = f" (settings from {source})" if settings.get(analysis) else ""
            raise UserError(f"{analysis}{where}: {exc}") from exc
        rows.append((analysis, "done", time.perf_counter() - t0))
    return rows


def _token_level(ctx) -> bool:
    from landscape.objectives import resolve_objective

    return resolve_objective(getattr(ctx, "objective", None)).unit == "token"


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
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
    connect_timeout: float = 10.0,
    budget: float | None = None,
    objective: str | None = None,
) -> int:
    """The body of ``landscape run`` (also used by ``landscape demo``): returns the exit status.

    ``workers`` / ``gpus`` / ``scheduler`` (or the same ``[study]`` keys): one executor runs
    the records of every analysis."""
    import pandas as pd

    from ..results import load

    cfg = dict(config or {})
    validate_config(cfg, source)
    st = cfg.get("study", {})
    if budget is not None and not _positive(budget):
        raise UserError(f"--budget must be a positive number, got {budget:g}")
    budget = budget if budget is not None else st.get("budget")
    names = select(analyses if analyses is not None else st.get("analyses"))
    outdir = check_output(outdir, "-o", folder=True)
    if static:
        check_output(static, "--static", folder=True)
    existed = outdir.exists()
    ctx = None

    # every checkpoint and the data are loaded and checked before OUTDIR is created
    def make_outdir() -> None:
        try:
            outdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(outdir, exc) from exc

    try:
        ctx = open_context(
            roots,
            data=data or st.get("data", "digits"),
            output=outdir / "results.h5",
            device=device or st.get("device", "auto"),
            samples=samples if samples is not None else st.get("samples"),
            batch_size=batch_size or st.get("batch_size"),
            arch=arch or st.get("arch"),
            force=force,
            progress=progress,
            splits=("test", "train"),
            inits="interpolation" in names,
            before_lock=make_outdir,
            workers=workers if workers is not None else st.get("workers"),
            scheduler=scheduler or st.get("scheduler"),
            gpus=gpus or st.get("gpus"),
            connect_timeout=connect_timeout,
            objective=objective or st.get("loss"),
        )
        rows = run_studies(ctx, cfg, names, source=source, budget=budget)
    except UserError:
        if not existed:
            _remove_if_unused(outdir, ctx)
        raise
    finally:
        if ctx is not None:
            ctx.close()  # one executor for every analysis, stopped with the run
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
    return 0


def _positive(value: float) -> bool:
    return value > 0 and value != float("inf")


def _remove_if_unused(folder: Path, ctx) -> None:
    """Leave no OUTDIR behind a run that created it and stopped on bad input before writing any
    result: at most the results file's lock is in it (released here). Content is never removed."""
    if ctx is not None and ctx.store is not None:
        ctx.store.close()
        lock = ctx.store.lock_path
        try:
            if [p.name for p in folder.iterdir()] == [lock.name]:
                lock.unlink()
        except OSError:
            return
    try:
        folder.rmdir()
    except OSError:
        pass


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
        budget=args.budget,
        objective=args.loss,
        **executor_kwargs(args),
    )
