"""Studies over checkpoint sets, the ``landscape`` CLI and the notebook-facing functions.

In a notebook::

    import analysis
    res = analysis.run_study("runs", data="digits")      # every analysis; shows itself inline
    res.to_frame(); res.figure("interpolation")
    analysis.interpolation_study("runs", data="digits", num_points=11)
    analysis.load("out/demo/results.h5")                  # a finished study

Each ``*_study`` function builds a :class:`StudyContext` (``output=None``: a scratch results
file), runs the study with the given settings, and returns the :class:`~analysis.results.Results`
of its results file (``_repr_html_``, ``.to_frame()``, ``.figure()``). Imports are lazy: ``import
analysis`` alone does not load torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .context import StudyContext
    from .results import Results

__all__ = [
    "StudyContext",
    "load",
    "run_study",
    "interpolation_study",
    "hessian_study",
    "surface_study",
    "symmetry_study",
    "calibration_study",
    "metanet_study",
]


def __getattr__(name: str):
    if name == "StudyContext":
        from .context import StudyContext

        return StudyContext
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


def load(path: str | Path) -> Results:
    """Open a finished study's results file (see :func:`analysis.results.load`)."""
    from .results import load as _load

    return _load(path)


def _study(
    analysis: str,
    roots,
    data: str,
    output,
    settings: dict[str, Any],
    *,
    device: str | None,
    **ctx_kw: Any,
) -> Results:
    """Build the context (``output=None``: a scratch results file), run one study, return its results file loaded."""
    from .commands.run import study_function, study_kwargs
    from .common import open_context

    fn = study_function(analysis)
    if fn is None:
        from landscape.errors import UserError

        raise UserError(f"the {analysis} study is not installed in this version of landscape")
    # every checkpoint and the data are checked before the results file is touched
    ctx = open_context(roots, data=data, output=output, device=device or "auto", **ctx_kw)
    try:
        fn(ctx, **study_kwargs(fn, analysis, settings, source=f"{analysis}_study"))
    finally:
        ctx.close()  # the workers stop with the study
    return load(ctx.store.path)


def _notebook_study(analysis: str, module: str, what: str):
    """The notebook function of one study: same checks as its CLI verb, returns the file loaded."""

    def study(
        roots,
        data: str = "digits",
        output: str | Path | None = None,
        *,
        device: str | None = None,
        samples: int | None = None,
        batch_size: int | None = None,
        arch: str | None = None,
        force: bool = False,
        progress: bool = True,
        workers: int | str | None = None,
        scheduler: str | None = None,
        gpus: str | None = None,
        loss: str | None = None,
        **settings: Any,
    ) -> Results:
        return _study(
            analysis,
            roots,
            data,
            output,
            settings,
            device=device,
            samples=samples,
            batch_size=batch_size,
            arch=arch,
            force=force,
            progress=progress,
            workers=workers,
            scheduler=scheduler,
            gpus=gpus,
            objective=loss,
        )

    study.__name__ = study.__qualname__ = f"{analysis}_study"
    study.__doc__ = (
        f"{what}; settings go to ``analysis.{module}.study``. ``samples`` subsets the data "
        '(seeded); ``output=None`` writes a scratch results file; ``workers=N`` / ``"gpu"``, '
        "``gpus=`` or ``scheduler=`` run the records on Dask workers; ``loss=`` names the loss "
        "(``auto``, ``classification``, ``squared_error``, ``lm`` or ``module:callable``)."
    )
    return study


interpolation_study = _notebook_study(
    "interpolation",
    "interpolation",
    "Pairwise interpolation barriers (aligned for standard groups) and MLI",
)
hessian_study = _notebook_study(
    "hessian", "hessian", "Hessian top eigenvalues, trace and spectral density per network"
)
surface_study = _notebook_study("surface", "surfaces", "1-D/2-D loss surfaces per group")
symmetry_study = _notebook_study(
    "symmetry",
    "alignment",
    "Symmetry audit of every network (``trials``, ``audit_samples``: the inputs of the audit)",
)
calibration_study = _notebook_study(
    "calibration",
    "calibration",
    "Accuracy, NLL, Brier score, ECE and reliability bins of every network or posterior",
)


def run_study(
    roots,
    data: str = "digits",
    output: str | Path | None = None,
    *,
    analyses: str | list[str] | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
    samples: int | None = None,
    batch_size: int | None = None,
    arch: str | None = None,
    force: bool = False,
    progress: bool = True,
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
) -> Results:
    """Every installed analysis (as ``landscape run``) into ``output`` (a folder: results.h5 and report.html; default a scratch folder)."""
    import tempfile

    from .commands.run import execute

    outdir = (
        Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="landscape-study-"))
    )
    execute(
        roots,
        outdir,
        config=config,
        data=data,
        samples=samples,
        batch_size=batch_size,
        device=device,
        arch=arch,
        analyses=analyses,
        force=force,
        progress=progress,
        source="run_study(config=...)",
        quiet=True,
        workers=workers,
        scheduler=scheduler,
        gpus=gpus,
    )
    return load(outdir / "results.h5")


def metanet_study(
    roots,
    target: str | None = None,
    output: str | Path | None = None,
    *,
    device: str | None = None,
    arch: str | None = None,
    strict: bool = False,
    force: bool = False,
    progress: bool = True,
    workers: int | str | None = None,
    scheduler: str | None = None,
    gpus: str | None = None,
    **settings: Any,
) -> Results:
    """Metanets predicting ``target`` (default ``test_accuracy``) from the weights of every
    population (group) under ``roots``; settings (``metanets=``, ``seeds=``, ``epochs=``,
    ``lrs=``, ``split=``, ...) go to ``analysis.metanet.study``."""
    from landscape.records.metanet import DEFAULT_TARGET

    from .metanet import open_study, study

    target = target or DEFAULT_TARGET
    ctx, pops = open_study(
        roots,
        output=output,
        target=target,
        strict=strict,
        device=device or "auto",
        arch=arch,
        force=force,
        progress=progress,
        split=settings.get("split", (0.5, 0.25, 0.25)),
        workers=workers,
        scheduler=scheduler,
        gpus=gpus,
    )
    try:
        study(ctx, target=target, populations=pops, **settings)
    finally:
        ctx.close()
        ctx.store.close()
    return load(ctx.store.path)
