"""Grid chunks as Dask tasks (the optional ``distributed`` scheduler: ``pip install 'landscape[dask]'``).

``DaskExecutor(workers=N)`` starts a local cluster of N worker processes (one thread each);
``DaskExecutor(scheduler="tcp://host:8786")`` joins a running cluster (for example one
started by dask-jobqueue on SLURM). ``map(fn, items)`` is all the numerics see: ``fn`` (for
a surface, a :class:`landscape.grid.GridTask` carrying model state, directions and data) is
scattered to every worker once, each item is one task ``fn(item)``, and the results come
back to the client as they finish; the client's caller alone writes the results file. A
task whose worker dies is rerun elsewhere by the scheduler, and a task that raises is
retried ``retries`` times; since each grid point is evaluated on its own the final grid
equals a single-process run.

Workers must be able to import the model's class (zoo models and ``torch.nn`` containers
always can; a class defined in a notebook cannot be unpickled on a worker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .errors import UserError
from .grid import LocalExecutor


def _distributed():
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "Dask's distributed scheduler is not installed: pip install 'landscape[dask]' "
            "(or dask[distributed]) to use --workers / --scheduler"
        ) from exc
    return distributed


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


class DaskExecutor:
    """Runs grid chunks on a Dask cluster: ``workers`` local processes, or the cluster at ``scheduler``."""

    name = "dask"

    def __init__(
        self,
        workers: int | None = None,
        scheduler: str | None = None,
        *,
        client=None,
        retries: int = 3,
        threads_per_worker: int = 1,
        quiet: bool = True,
    ):
        if client is None and (workers is None) == (scheduler is None):
            raise UserError(
                "give either --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both"
            )
        distributed = _distributed()
        self.retries, self.cluster, self._own_client = int(retries), None, client is None
        if client is not None:
            self.client = client
        elif scheduler is not None:
            try:
                self.client = distributed.Client(scheduler, timeout="20s")
            except (OSError, TimeoutError) as exc:
                raise UserError(
                    f"cannot reach the Dask scheduler at {scheduler}: is it running and reachable?"
                ) from exc
        else:
            if int(workers) < 1:
                raise UserError(f"--workers must be at least 1, got {workers}")
            self.cluster = distributed.LocalCluster(
                n_workers=int(workers),
                threads_per_worker=int(threads_per_worker),
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR if quiet else logging.WARNING,
            )
            self.client = distributed.Client(self.cluster)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """Yield ``fn(item)`` for every item, in the order the tasks finish.

        ``fn`` must pickle (a :class:`landscape.grid.GridTask` pickles as a CPU copy of its
        grid); it goes to every worker once, not once per task.
        """
        distributed = _distributed()
        shared = self.client.scatter(fn, broadcast=True, hash=False)
        futures = [
            self.client.submit(_call, shared, item, retries=self.retries, pure=False)
            for item in items
        ]
        try:
            for fut in distributed.as_completed(futures):
                yield fut.result()
                fut.release()
        finally:
            for f in futures:
                f.cancel()
            shared.release()

    def pids(self) -> dict[str, int]:
        """Process id of every worker (for tests that kill one)."""
        import os

        return self.client.run(os.getpid)

    def close(self) -> None:
        if self._own_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def make_executor(workers: int | None = None, scheduler: str | None = None):
    """:class:`DaskExecutor` when ``workers`` or ``scheduler`` is given, else :class:`LocalExecutor`."""
    if workers is None and scheduler is None:
        return LocalExecutor()
    return DaskExecutor(workers=workers, scheduler=scheduler)
