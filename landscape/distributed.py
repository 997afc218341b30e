"""Grid chunks as Dask tasks (the optional ``distributed`` scheduler: ``pip install 'landscape[dask]'``).

``DaskExecutor(workers=N)`` starts a local cluster of N worker processes (one thread each);
``DaskExecutor(scheduler="tcp://host:8786")`` joins a running cluster (for example one
started by dask-jobqueue on SLURM). The grid's :class:`landscape.grid.GridSpec` (model
state, directions, data) is scattered to every worker once; each chunk of points is one
task running :func:`landscape.grid.evaluate_chunk`; results come back to the client, which
alone writes the results file. A task whose worker dies is rerun elsewhere by the
scheduler, and a task that raises is retried ``retries`` times; since each point is
evaluated on its own the final grid equals a single-process run.

Workers must be able to import the model's class (zoo models and ``torch.nn`` containers
always can; a class defined in a notebook cannot be unpickled on a worker).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from .errors import UserError
from .grid import GridSpec, LocalExecutor, evaluate_chunk


def _distributed():
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "Dask's distributed scheduler is not installed: pip install 'landscape[dask]' "
            "(or dask[distributed]) to use --workers / --scheduler"
        ) from exc
    return distributed


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
        self.shortcut_note = ""
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

    def map(
        self, spec: GridSpec, chunks: Sequence[np.ndarray]
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, loss, accuracy)`` per chunk in the order chunks finish."""
        distributed = _distributed()
        portable = spec.portable()
        self.shortcut_note = "per worker (see the first-layer shortcut conditions)"
        # once per worker, not once per task
        shared = self.client.scatter(portable, broadcast=True, hash=False)
        futures = [
            self.client.submit(
                evaluate_chunk, shared, np.asarray(c), retries=self.retries, pure=False
            )
            for c in chunks
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
