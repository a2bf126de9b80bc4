"""Where the tasks of a volume run go: in-process, a ``distributed.LocalCluster`` it starts, or a given cluster."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

#: Retries of a block whose worker died or failed (Dask ``retries``).
RETRIES = 3


class InProcess:
    """Runs tasks one after another in the calling thread (torch uses the cores)."""

    name = "in-process"

    def share(self, obj: Any) -> Any:
        return obj

    def run(self, fn: Callable[[Any, Any], Any], work: Any, items: list) -> Iterator[tuple[Any, Any]]:
        """``fn(work, item)`` for each item, as (item, result) pairs as they finish."""
        for item in items:
            yield item, fn(work, item)

    def close(self) -> None:
        pass


class OnDask:
    """Runs tasks on a ``distributed`` client, each retried ``RETRIES`` times (a dead worker loses its task only)."""

    def __init__(self, client, cluster=None, name: str = "dask", owns_client: bool = False) -> None:
        self.client, self.cluster, self.name, self.owns_client = client, cluster, name, owns_client
        self.pending: list = []

    def share(self, obj: Any) -> Any:
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(self, fn: Callable[[Any, Any], Any], work: Any, items: list) -> Iterator[tuple[Any, Any]]:
        """``fn(work, item)`` for each item on the cluster (``work``: shared with ``share``), as (item, result)
        pairs as they finish."""
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = {self.client.submit(fn, work, item, key=f"alnet-{fn.__name__}-{i}-{token}", retries=RETRIES,
                                      pure=False): item for i, item in enumerate(items)}
        self.pending = list(futures)
        for future in as_completed(futures):
            result = future.result()
            self.pending.remove(future)
            yield futures[future], result
            future.release()

    def close(self) -> None:
        if self.pending:
            self.client.cancel(self.pending)
            self.pending = []
        if self.owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_task(cores: int, tasks: int) -> int:
    """The torch threads of each of ``tasks`` tasks running at once on ``cores`` cores (at least 1)."""
    return max(1, cores // max(1, tasks))


#: A LocalCluster needs more cores than this: on 2 cores one process already uses both (torch's threads), and
#: 2 worker processes were measured 40 % slower than in-process (issue 27, an Intel Xeon with AMX).
MIN_CLUSTER_CORES = 2


def choose_workers(workers: int | None, cores: int) -> tuple[int | None, str]:
    """The LocalCluster size for a ``workers`` request on ``cores`` usable cores, or ``None`` to run in-process,
    and why not the request (empty when it is followed): workers cannot add cores to an in-process run (whose
    torch threads use every core) when there are more workers than cores or ``MIN_CLUSTER_CORES`` or fewer."""
    if not workers:
        return None, ""
    if workers < 2:
        return None, "1 worker would not add cores (torch's threads already use them all)"
    if workers > cores:
        return None, f"{workers} workers on {cores} usable cores would not add cores"
    if cores <= MIN_CLUSTER_CORES:
        return None, (f"on {cores} usable cores one process already uses every core; {workers} "
                      "workers would not add any (and were measured 40 % slower)")
    return workers, ""


@dataclass(frozen=True)
class Placement:
    """Where a run's tasks go: a LocalCluster of ``workers`` (``None``: in-process, or the given cluster), the
    torch threads per task when the caller did not fix them (``default_threads``), and why not the requested
    workers (``note``)."""

    workers: int | None
    default_threads: int | None
    note: str = ""


def place_run(client=None, workers: int | None = None, scheduler: str | None = None,
              threads: int | None = None) -> Placement:
    """Where a run goes (see ``choose_workers``) and its default torch threads per block task: the cores / workers
    on a LocalCluster, torch's current threads in-process (with ``threads`` per requested worker, at most the
    cores, when the workers were declined), ``None`` on a given cluster (each worker decides)."""
    if client is not None or scheduler:
        return Placement(None, None)
    cores = usable_cores()
    chosen, note = choose_workers(workers, cores)
    if chosen:
        return Placement(chosen, threads_per_task(cores, chosen))
    if note and threads:
        return Placement(None, min(cores, threads * int(workers or 1)), note)
    return Placement(None, torch.get_num_threads(), note)


def start_executor(client=None, workers: int | None = None, scheduler: str | None = None,
                   threads: int | None = None) -> InProcess | OnDask:
    """The executor for a run: ``client``, a client of ``scheduler``, a LocalCluster of ``workers`` (one task
    thread each; ``threads``: the torch threads of its tasks, for the name), or in-process."""
    if client is not None:
        return OnDask(client, name=f"dask client {client.scheduler.address}")
    if scheduler:
        from distributed import Client

        return OnDask(Client(scheduler), name=f"dask scheduler {scheduler}", owns_client=True)
    if workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, memory_limit=0)
        name = f"LocalCluster {workers} workers x {threads} threads"
        return OnDask(Client(cluster), cluster, name, owns_client=True)
    return InProcess()
