"""Records of a study as tasks of an executor: computed anywhere, written by the client alone.

A study is a list of independent records (pairs, seeds, ...). :func:`run_records` runs
``compute(workspace, job) -> (values, attrs)`` for every job on the context's executor
(:meth:`StudyContext.executor`: inline by default, Dask workers with ``--workers N``, one
worker per GPU with ``--workers gpu``, an existing cluster with ``--scheduler``) and hands
each result to ``write`` on the client as it arrives, so a killed client keeps every record
that was complete and a rerun computes only the others.

The :class:`Workspace` is what a task needs besides its job: the data of the study's splits
and the checkpoints' loader. Inline, it is the context itself (its cached models and
device-resident batches). Shipped to a worker, it travels once (CPU tensors and settings),
moves the data to the worker's device on first use and keeps it, with the models it loads,
for the worker's next tasks. Workers load checkpoints from their paths: those must be
visible to them (a shared file system on a cluster).
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from checkpoints import Run, load_model
from landscape.data import Batches, as_batches, resolve_device

if TYPE_CHECKING:  # pragma: no cover
    from .context import StudyContext

#: models a worker keeps loaded (least recently used ones are dropped first)
MODEL_CACHE = 8
#: the packages every worker needs, checked before the model classes
OWN_PACKAGES = ("landscape", "checkpoints", "analysis")


class Workspace:
    """Data and models for the tasks of one study, in whichever process runs them.

    ``model(run, which)`` and ``batches(split)`` behave like the context's methods; ``device``
    is where the tasks compute (resolved in the process that runs them, so ``cuda`` on a
    worker pinned to one GPU is that GPU).
    """

    def __init__(
        self,
        *,
        arch: str | None,
        device: str,
        data: dict[str, tuple[torch.Tensor, torch.Tensor]],
        batch_size: int | None,
        context: StudyContext | None = None,
        objective: str = "auto",
    ):
        self.arch, self.device_request, self.data = arch, device, data
        self.batch_size, self.context = batch_size, context
        self.objective = objective  # a name or module:callable: resolved where a task runs
        self._device: torch.device | None = None
        self._batches: dict[str, Batches] = {}
        self._models: OrderedDict[tuple[str, str], nn.Module] = OrderedDict()

    @classmethod
    def of(cls, ctx: StudyContext, splits: Iterable[str] = ()) -> Workspace:
        """The workspace of ``ctx`` for tasks that read ``splits``."""
        data = {s: ctx.dataset(s).pair for s in dict.fromkeys(splits)}
        return cls(
            arch=ctx.arch,
            device=str(ctx.device),
            data=data,
            batch_size=ctx.batch_size,
            context=ctx,
            objective=ctx.objective,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "device": self.device_request,
            "data": {s: (x.cpu(), y.cpu()) for s, (x, y) in self.data.items()},
            "batch_size": self.batch_size,
            "objective": self.objective,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    @property
    def device(self) -> torch.device:
        if self.context is not None:
            return self.context.device
        if self._device is None:
            self._device = resolve_device(self.device_request)
        return self._device

    def batches(self, split: str) -> Batches:
        if self.context is not None:
            return self.context.batches(split)
        if split not in self._batches:  # once per worker: the data moves to its device here
            if split not in self.data:
                raise KeyError(f"the study shipped no {split!r} data to its workers")
            self._batches[split] = as_batches(
                self.data[split], device=self.device, batch_size=self.batch_size
            )
        return self._batches[split]

    def model(self, run: Run, which: str = "final") -> nn.Module:
        """The loaded model (cached: callers copy before changing it)."""
        if self.context is not None:
            return self.context.model(run, which)
        path = run.final if which == "final" else run.init
        key = (str(path), which)
        if key in self._models:
            self._models.move_to_end(key)
        else:
            self._models[key] = load_model(path, arch=self.arch, device=self.device)
            while len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)
        return self._models[key]


class RecordTask:
    """``task(job) -> (job, compute(workspace, job))``: one record of a study, on any executor."""

    def __init__(self, workspace: Workspace, compute: Callable[[Workspace, Any], Any]):
        self.workspace, self.compute = workspace, compute

    def __call__(self, job: Any) -> tuple[Any, Any]:
        return job, self.compute(self.workspace, job)


def code_modules(
    models: Iterable[nn.Module], arch: str | None = None, objective: str | None = None
) -> list[str]:
    """The modules a worker must import to rebuild ``models``: their classes' modules, and
    the modules of a ``module:callable`` architecture and loss."""
    mods = list(OWN_PACKAGES)
    for m in models:
        mods.extend(type(sub).__module__ for sub in m.modules())
    for spec in (arch, objective):
        if spec and ":" in spec and not spec.rpartition(":")[0].endswith(".py"):
            mods.append(spec.rpartition(":")[0])
    return list(dict.fromkeys(mods))


def run_records(
    ctx: StudyContext,
    jobs: Sequence[Any],
    compute: Callable[[Workspace, Any], tuple[Any, Any]],
    write: Callable[[Any, Any], None],
    *,
    splits: Iterable[str] = (),
    models: Iterable[nn.Module] = (),
    desc: str,
    label: Callable[[Any], str] = str,
) -> None:
    """Compute every job (``compute(workspace, job)``) on the context's executor and
    ``write(job, result)`` each on the client, as it arrives.

    ``splits``: the data the tasks read; ``models``: loaded examples of the study's models,
    whose classes the workers must be able to import (checked before the first task).
    """
    if not jobs:
        return
    ex = ctx.executor()
    ws = Workspace.of(ctx, splits)
    if ex.remote:  # shipped without the context: workers load and place their own copies
        ex.check_importable(
            code_modules(models, ctx.arch, ctx.objective), "the model classes and the loss"
        )
        if getattr(ex, "gpus", None) and ws.device_request.startswith("cuda"):
            ws.device_request = "cuda"  # a pinned worker sees one GPU: its own, cuda:0
    bar = tqdm(total=len(jobs), desc=desc, disable=not ctx.progress)
    try:
        for job, result in ex.map(RecordTask(ws, compute), jobs):
            write(job, result)
            bar.update(1)
            bar.set_postfix_str(label(job), refresh=False)
    finally:
        bar.close()


def network_records(ctx: StudyContext, kind, splits: Iterable[str], settings: dict[str, Any]):
    """``(write, label)`` for a study with one record per network (jobs ``(group, run)``):
    ``write`` adds the context's provenance to the computed attributes and writes the record
    ``<analysis>/<group>/<seedK>`` through its definition ``kind``."""
    splits = tuple(splits)

    def write(job: tuple, result: tuple[Any, dict[str, Any]]) -> None:
        group, run = job
        values, computed = result
        attrs = ctx.record_attrs(kind.analysis, group, run, splits=splits, **settings)
        attrs.update(computed)
        kind.write(ctx.store, f"{kind.analysis}/{group}/{run.key}", values, attrs)

    def label(job: tuple) -> str:
        return f"{kind.analysis}/{job[0]}/{job[1].key}"

    return write, label


def start_executor(
    workers: int | str | None,
    scheduler: str | None,
    gpus: str | None,
    connect_timeout: float,
    progress: bool,
):
    """An executor for the given flags, announced on stderr when it is not inline."""
    from landscape.distributed import make_executor

    ex = make_executor(workers, scheduler, gpus=gpus, connect_timeout=connect_timeout)
    if ex.remote and progress:
        print(f"executor: {ex.describe()}", file=sys.stderr)
    return ex
