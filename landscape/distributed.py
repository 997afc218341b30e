"""Executors: where the independent tasks of a study run (inline, Dask workers, one worker per GPU).

A study is a list of independent tasks (records, grid chunks, seeds, networks of a
population). An executor runs ``fn(item)`` for every item and hands the results back to the
caller, which alone writes files; ``map(fn, items)`` is all a caller sees:

- :class:`LocalExecutor`: one after another in this process (the default);
- :class:`DaskExecutor` ``(workers=N)``: a local cluster of N worker processes, each with
  ``cores // N`` torch threads so that the workers do not oversubscribe the machine;
- :class:`DaskExecutor` ``(gpus="all" | [0, 1, ...])``: one worker process per GPU, each
  pinned to its device through ``CUDA_VISIBLE_DEVICES`` (so ``cuda:0`` on a worker is its
  own GPU);
- :class:`DaskExecutor` ``(scheduler="tcp://host:8786")``: an existing cluster (for example
  one started by dask-jobqueue on SLURM or PBS; see docs/cluster.md).

``fn`` is shipped to every worker once (a broadcast scatter), not with every task: whatever it
caches the first time it runs (data moved to the worker's device, loaded models) stays for
the worker's next tasks. A task whose worker dies is rerun elsewhere by the scheduler and a
task that raises is retried ``retries`` times, so a killed worker changes nothing in the
results. Dask is an optional extra: ``pip install 'landscape[dask]'``.
"""

from __future__ import annotations

import atexit
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .errors import UserError

#: seconds to wait for a scheduler before saying it cannot be reached
CONNECT_TIMEOUT = 10.0
#: the scheduler's web server: this machine only, any free port (no clash with another cluster)
DASHBOARD = "127.0.0.1:0"
#: executors started in this process and not yet closed: held here (not weakly), so that a
#: study context dropped without closing its executor still has its workers stopped by
#: :func:`close_all` (the CLI calls it as each command ends; atexit otherwise)
_OPEN: set = set()


class LocalExecutor:
    """Runs the tasks one after another in this process (the default)."""

    name = "local"
    remote = False

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn(item)`` for every item, in order."""
        for item in items:
            yield fn(item)

    def check_importable(self, modules: Iterable[str], what: str = "") -> None:
        """Nothing to check: the tasks run in this process."""

    def describe(self) -> str:
        return "inline"

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> bool:
        return False


def _distributed():
    try:
        import distributed
    except ImportError as exc:
        raise UserError(
            "Dask's distributed scheduler is not installed: pip install 'landscape[dask]' "
            "(or dask[distributed]) to use --workers / --scheduler"
        ) from exc
    return distributed


def _spawn_environ() -> dict[str, str | None]:
    """This process's values of the variables Dask's nannies write into ``os.environ`` before
    spawning a worker (``distributed.nanny.pre-spawn-environ``: OMP_NUM_THREADS=1 and the
    like, plus PYTHONHASHSEED), None where unset."""
    import dask

    keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}) | {
        "PYTHONHASHSEED"
    }
    return {k: os.environ.get(k) for k in keys}


def _restore_environ(saved: dict[str, str | None]) -> None:
    """Put those variables back: the nannies set them in this process, where every later
    subprocess (a training run, a benchmark's CLI call) would inherit one thread."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def parse_workers(value: str | int | None) -> int | str | None:
    """``--workers``: a positive number of local worker processes, or ``gpu`` (one per GPU)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("gpu", "gpus"):
        return "gpu"
    try:
        n = int(text)
    except ValueError:
        raise UserError(
            f"--workers takes a number of worker processes or 'gpu', got {value!r}"
        ) from None
    if n < 1:
        raise UserError(
            f"--workers must be at least 1, got {n}: leave it out to run inline, in this process"
        )
    return n


def visible_gpus(gpus: str | Sequence[int] | None) -> list[str]:
    """The CUDA devices ``gpus`` names (``"all"`` or indices), as ``CUDA_VISIBLE_DEVICES`` entries.

    Indices count the GPUs this process sees (they map through this process's own
    ``CUDA_VISIBLE_DEVICES``). No CUDA here, or an index past the last GPU, is a
    :class:`UserError`.
    """
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise UserError(
            "--workers gpu / --gpus need CUDA, but this machine has no usable GPU "
            "(torch.cuda.is_available() is False): use --workers N for CPU worker processes"
        )
    count = torch.cuda.device_count()
    if gpus is None or (isinstance(gpus, str) and gpus.strip().lower() in ("all", "gpu")):
        chosen = list(range(count))
    else:
        items = gpus.split(",") if isinstance(gpus, str) else list(gpus)
        try:
            chosen = [int(str(i).strip()) for i in items if str(i).strip()]
        except ValueError:
            raise UserError(f"--gpus takes 'all' or GPU indices like 0,1, got {gpus!r}") from None
        bad = [i for i in chosen if not 0 <= i < count]
        if bad or not chosen or len(set(chosen)) != len(chosen):
            raise UserError(
                f"--gpus {gpus}: this machine has {count} GPU(s), numbered 0..{count - 1}, each named once"
            )
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [s.strip() for s in parent.split(",")] if parent else None
    return [names[i] if names else str(i) for i in chosen]


class _Shipped:
    """What each worker holds once: the task function and the torch thread count it runs with."""

    def __init__(self, fn: Callable[[Any], Any], threads: int | None):
        self.fn, self.threads = fn, threads


def _call(shipped: _Shipped, item: Any) -> Any:
    if shipped.threads:
        import torch

        if torch.get_num_threads() != shipped.threads:
            torch.set_num_threads(shipped.threads)
    return shipped.fn(item)


def _import_failures(modules: Sequence[str]) -> list[tuple[str, str]]:
    import importlib

    out = []
    for m in modules:
        try:
            importlib.import_module(m)
        except Exception as exc:  # noqa: BLE001 - every failure is reported by name
            out.append((m, f"{type(exc).__name__}: {exc}"))
    return out


class DaskExecutor:
    """Runs tasks on Dask: ``workers`` local processes, one per GPU (``gpus``), or the cluster at ``scheduler``.

    ``threads``: torch threads of each worker while it runs a task (default for a local
    cluster: ``cores // workers``, at least 1; for an existing cluster: the worker's own).
    ``connect_timeout``: seconds to wait for ``scheduler``.
    """

    name = "dask"
    remote = True

    def __init__(
        self,
        workers: int | str | None = None,
        scheduler: str | None = None,
        *,
        gpus: str | Sequence[int] | None = None,
        client=None,
        retries: int = 3,
        threads: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        quiet: bool = True,
    ):
        if workers == "gpu":
            workers, gpus = None, gpus if gpus is not None else "all"
        given = sum(x is not None for x in (workers, scheduler, gpus))
        if client is None and given != 1:
            raise UserError(
                "give one of --workers N (a local cluster), --workers gpu / --gpus (one worker "
                "per GPU) or --scheduler ADDRESS (an existing cluster), not several"
            )
        if workers is not None:
            workers = parse_workers(workers)
        devices = visible_gpus(gpus) if gpus is not None else None  # CUDA checked before Dask
        distributed = _distributed()
        self.retries, self.cluster, self._own_client = int(retries), None, client is None
        self._environ = _spawn_environ()
        self.quiet = quiet
        self.threads, self.address = threads, scheduler
        logs = logging.ERROR if quiet else logging.WARNING
        if client is not None:
            self.client = client
        elif scheduler is not None:
            try:
                self.client = distributed.Client(
                    scheduler, timeout=f"{float(connect_timeout)}s", set_as_default=False
                )
            except (OSError, TimeoutError, ValueError) as exc:
                raise UserError(
                    f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s: "
                    "is it running, and is the address (tcp://HOST:PORT) right?"
                ) from exc
        elif devices is not None:
            self.threads = threads or 1
            self.cluster = distributed.SpecCluster(
                workers={
                    f"gpu{d}": {
                        "cls": distributed.Nanny,
                        "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": d}},
                    }
                    for d in devices
                },
                scheduler={
                    "cls": distributed.Scheduler,
                    "options": {"dashboard_address": DASHBOARD},
                },
                silence_logs=logs,
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
        else:
            n = int(workers)
            self.threads = threads or max(1, (os.cpu_count() or 1) // n)
            self.cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=DASHBOARD,
                silence_logs=logs,
            )
            self.client = distributed.Client(self.cluster, set_as_default=False)
        if self.cluster is not None:  # and again at close(): a restarted worker sets them anew
            _restore_environ(self._environ)
        self.gpus = devices
        _OPEN.add(self)

    def describe(self) -> str:
        if self.gpus is not None:
            return f"{len(self.gpus)} Dask worker(s), one per GPU ({','.join(self.gpus)})"
        if self.address is not None:
            return f"the Dask cluster at {self.address}"
        return f"{len(self.client.scheduler_info().get('workers', {}))} local Dask worker(s) x {self.threads} thread(s)"

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Yield ``fn(item)`` for every item, in the order the tasks finish.

        ``fn`` must pickle; it goes to every worker once, not once per task. A task that
        raises :class:`UserError` raises it here; one whose workers kept dying is a
        :class:`UserError` naming the item.
        """
        distributed = _distributed()
        items = list(items)
        if not items:
            return
        run = uuid.uuid4().hex[:8]
        shared = self.client.scatter(_Shipped(fn, self.threads), broadcast=True, hash=False)
        futures = {
            self.client.submit(
                _call, shared, item, retries=self.retries, pure=False, key=f"landscape-{run}-{i}"
            ): item
            for i, item in enumerate(items)
        }
        try:
            for fut in distributed.as_completed(list(futures), loop=self.client.loop):
                try:
                    result = fut.result()
                except distributed.KilledWorker as exc:
                    raise UserError(
                        f"the worker running task {futures[fut]!r} died {self.retries + 1} or more "
                        "times (out of memory?): give the workers more memory, or run inline"
                    ) from exc
                yield result
                fut.release()
        finally:
            for f in futures:
                f.cancel()
            shared.release()

    def check_importable(self, modules: Iterable[str], what: str = "the model classes") -> None:
        """Refuse (one line) when a worker cannot import one of ``modules`` (the code behind ``what``)."""
        mods = sorted({m for m in modules if m and not m.startswith(("builtins", "torch."))})
        if not mods:
            return
        if "__main__" in mods:
            raise UserError(
                f"{what} are defined in __main__ (a notebook or script), which Dask workers cannot "
                "import: move the class into an importable module, or run without --workers/--scheduler"
            )
        failures = self.client.run(_import_failures, mods)
        for worker, failed in sorted(failures.items()):
            if failed:
                mod, why = failed[0]
                raise UserError(
                    f"the Dask worker at {worker} cannot import {mod} ({what}; {why}): install the "
                    "package that defines it on every worker, in the same environment as this client"
                )

    def pids(self) -> dict[str, int]:
        """Process id of every worker (for tests that kill one)."""
        return self.client.run(os.getpid)

    def close(self) -> None:
        _OPEN.discard(self)
        log = logging.getLogger("distributed")
        level = log.level
        if self.quiet:  # the cluster's goodbye messages are not the user's business
            log.setLevel(logging.ERROR)
        try:
            if self._own_client:
                self.client.close()
            if self.cluster is not None:
                self.cluster.close()
                _restore_environ(self._environ)
        finally:
            log.setLevel(level)
        self._own_client, self.cluster = False, None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def make_executor(
    workers: int | str | None = None,
    scheduler: str | None = None,
    *,
    gpus: str | Sequence[int] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
):
    """:class:`DaskExecutor` when ``workers``, ``gpus`` or ``scheduler`` is given, else :class:`LocalExecutor`."""
    if workers is None and scheduler is None and gpus is None:
        return LocalExecutor()
    return DaskExecutor(
        workers=workers, scheduler=scheduler, gpus=gpus, connect_timeout=connect_timeout
    )


def open_executors() -> set:
    """The executors started in this process and not closed yet."""
    return set(_OPEN)


def close_all(keep: set | frozenset = frozenset()) -> None:
    """Close every executor this process started and did not close, but those in ``keep``
    (workers stop with the command that started them, not at interpreter exit)."""
    for ex in list(_OPEN):
        if ex not in keep:
            ex.close()


atexit.register(close_all)
