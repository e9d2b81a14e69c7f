"""Where a sweep's cells run: here, one after another or in worker processes (``local``), or as Ray tasks (``ray``).

A sweep is a list of cells -- one autoencoder, or one denoiser with its measurements -- each naming
the cells it needs first (``evaluate``'s cells are its models, one each). ``local`` with ``--jobs 1``
runs them in order in this process. ``local`` with ``--jobs N`` and ``ray`` share one scheduler
(:func:`run_side_by_side`): every unfinished cell whose needs have finished goes to a pool -- N worker
processes on this machine, or Ray tasks with ``--cell-cpus``/``--cell-gpus`` that Ray places and
(after a worker dies) retries -- and the loop only orders submissions and collects results. We do
not schedule machines ourselves.

Why the run folder is shared storage, not the object store: a cell writes its checkpoints while it
trains, and a retried cell resumes from them, on whichever node Ray picks. Only a folder every
node reads makes that possible (the object store returns a task's output only when it ends), so
``--out`` must be on storage all nodes mount (NFS, a Kubernetes volume, a SLURM job's shared file
system). What does go back to the driver is small: the records a cell measured. The driver alone
appends them to ``results.jsonl`` (:class:`~pipelines.results_log.RecordingLog`), so the log stays one
ordered file and ``--resume`` works the same whichever executor ran the cells.

Every cell gets the same numbers whichever executor runs it: its seeds come from the run's seed and
the cell itself (training seed, sampling seed + 1000), never from the order in which cells ran.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

import pipelines
from ldm_eval.sweeps.run_folder import RunContext, open_run
from ldm_eval.sweeps.settings import RunSettings, SweepError
from pipelines.atomic import write_json_atomic, write_text_atomic
from pipelines.results_log import (
    RecordingLog,
    Results,
    ResultsLog,
    record_from_json,
    record_to_json,
)

RAY_INSTALL = "pip install 'ray==2.60.0'"
CONNECT_TIMEOUT_S = 30


@dataclass(frozen=True)
class Cell:
    """One unit of a sweep: ``run(ctx)`` measures it into ``ctx.log``; ``done(results)`` says it is finished.

    ``run`` and ``done`` must pickle (module-level functions, or ``functools.partial`` of them): with
    ``--executor ray`` they travel to another machine.
    """

    key: str  # shown in progress lines and failure summaries, e.g. "autoencoder kl f4", "model kl f4"
    run: Callable[[Any], Any]  # given the command's context (a sweep's RunContext, an evaluation's)
    done: Callable[[Results], bool]
    after: tuple[str, ...] = ()


class ExecutorSettings(Protocol):
    """What the executor reads of a command's settings (``RunSettings``, ``EvaluateSettings``)."""

    out: Path | None
    executor: str
    ray_address: str
    cell_gpus: float
    cell_cpus: float
    jobs: int


class CellContext(Protocol):
    """What a cell runs in: the command's settings and the run's log (the file, or a cell's snapshot of it)."""

    settings: ExecutorSettings
    log: ResultsLog


class CellOpener(Protocol):
    """How a cell on another machine gets its context from a snapshot of the run's log."""

    def open(self, log: RecordingLog) -> CellContext: ...

    def for_cluster(self) -> "CellOpener":
        """The same opener with paths as every node sees them on shared storage."""
        ...


@dataclass(frozen=True)
class Opener:
    """How a sweep's cell elsewhere opens the run: the driver's own ``open_run`` call, on that cell's snapshot."""

    settings: RunSettings
    config: dict[str, Any]
    n_needed: int
    label_key: str | None = None
    classifier: bool = True

    def open(self, log: RecordingLog) -> RunContext:
        return open_run(self.settings, self.config, self.n_needed, self.label_key, self.classifier, log=log)

    def for_cluster(self) -> "Opener":
        return replace(self, settings=_absolute(self.settings))


def prepare_executor(settings: ExecutorSettings) -> None:
    """Before anything starts: with ``--executor ray``, Ray installed, its cluster reachable, the cells' asks
    within what one node has (each a clear error)."""
    if settings.executor == "ray":
        check_resources(connect(settings.ray_address), settings)


def run_cells(ctx: CellContext, opener: CellOpener, cells: list[Cell]) -> None:
    """Run every unfinished cell with the run's executor; in worker processes or on Ray, a failed cell stops only
    the cells that need it, and the failures are raised together at the end (tracebacks under ``RUN/failures``)."""
    s = ctx.settings
    if s.executor == "local" and s.jobs == 1:
        for cell in cells:
            if not cell.done(ctx.log.results):
                cell.run(ctx)
        return
    if s.executor == "local":
        with ProcessPool(s.jobs) as pool:
            run_side_by_side(pool, ctx, opener, cells)
        return
    ray = connect(s.ray_address)
    check_resources(ray, s)
    run_side_by_side(RayPool(ray, s), ctx, opener.for_cluster(), cells)


class ProcessPool:
    """``--jobs N``: cells in N worker processes on this machine, the cores shared out among them.

    A standard-library process pool rather than anything of our own: each worker imports this code
    afresh (``spawn``, safe with threads and CUDA) and runs :func:`run_cell_here`, as a Ray worker does.
    """

    def __init__(self, jobs: int) -> None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_share_cores, initargs=(threads,))
        self.futures: set[Future] = set()

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc: object) -> None:  # killed or interrupted: the workers go too, nothing waits on them
        self.pool.shutdown(wait=exc[0] is None, cancel_futures=True)

    def submit(self, opener: CellOpener, cell: Cell, snapshot: list[dict[str, Any]]) -> Future:
        future = self.pool.submit(run_cell_here, opener, cell, snapshot)
        self.futures.add(future)
        return future

    def next_done(self) -> Future:
        done, _ = wait(self.futures, return_when=FIRST_COMPLETED)
        future = next(iter(done))
        self.futures.discard(future)
        return future

    def result(self, handle: Future) -> tuple[list[dict[str, Any]], str]:
        return handle.result()


def _share_cores(threads: int) -> None:
    """A worker's share of this machine's cores (N workers at full width would fight over every core)."""
    torch.set_num_threads(threads)


class RayPool:
    """``--executor ray``: each cell a Ray task asking ``--cell-cpus``/``--cell-gpus``, retried after a lost worker."""

    def __init__(self, ray: Any, settings: ExecutorSettings) -> None:
        self.ray = ray
        self.remote = ray.remote(num_cpus=settings.cell_cpus, num_gpus=settings.cell_gpus,
                                 max_retries=3)(run_cell_here)
        self.pending: list[Any] = []

    def submit(self, opener: CellOpener, cell: Cell, snapshot: list[dict[str, Any]]) -> Any:
        handle = self.remote.remote(opener, cell, snapshot)
        self.pending.append(handle)
        return handle

    def next_done(self) -> Any:
        ready, _ = self.ray.wait(self.pending, num_returns=1)
        self.pending.remove(ready[0])
        return ready[0]

    def result(self, handle: Any) -> tuple[list[dict[str, Any]], str]:
        return self.ray.get(handle)


class CellPool(Protocol):
    """Where :func:`run_side_by_side` sends cells: worker processes here, or Ray."""

    def submit(self, opener: CellOpener, cell: Cell, snapshot: list[dict[str, Any]]) -> Any: ...

    def next_done(self) -> Any: ...

    def result(self, handle: Any) -> tuple[list[dict[str, Any]], str]: ...


# --- Ray -------------------------------------------------------------------------------------------------------------

def import_ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise SweepError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}", "executor") from err
    return ray


def connect(address: str) -> Any:
    """Ray, connected to the cluster at ``address``; a clear error within about 30 s when none answers."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address == "local":
        # address "local": a new one-machine instance, even where this machine already belongs to a cluster
        ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=_runtime_env())
        return ray
    if address != "auto":
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SweepError(f"A Ray address is auto, local or HOST:PORT (got {address!r}).", "ray_address")
        try:  # ray.init retries an address that does not answer for a minute or more: ask the port first
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as err:
            raise SweepError(f"No Ray cluster answers at {address} ({err.strerror or err}). Start one with "
                             f"'ray start --head --port {port}', or check the address.", "ray_address") from err
    failure: list[BaseException] = []

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, runtime_env=_runtime_env())
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            failure.append(err)

    thread = threading.Thread(target=init, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if thread.is_alive() or failure:
        why = f": {failure[0]}" if failure else f" within {CONNECT_TIMEOUT_S} s"
        hint = ("no cluster runs on this machine; start one with 'ray start --head', give --ray-address HOST:PORT, "
                "or use --ray-address local" if address == "auto" else "is it a Ray head node's GCS port?")
        raise SweepError(f"Could not connect to a Ray cluster at {address}{why} ({hint}).", "ray_address")
    return ray


def _runtime_env() -> dict[str, Any]:
    """This code and its LDM_LAB_* settings, for workers on nodes that have neither (Ray uploads them)."""

    return {"py_modules": [str(Path(pipelines.__file__).parent), str(Path(__file__).parent)],
            "env_vars": {k: v for k, v in os.environ.items() if k.startswith("LDM_LAB_")}}


def _absolute(settings: RunSettings) -> RunSettings:
    """Paths as every node sees them on shared storage (a worker's working folder is not the driver's)."""
    assert settings.out is not None
    dataset = str(Path(settings.dataset).resolve()) if Path(settings.dataset).exists() else settings.dataset
    return replace(settings, out=settings.out.resolve(), dataset=dataset,
                   share_from=settings.share_from.resolve() if settings.share_from else None)


def check_resources(ray: Any, settings: ExecutorSettings) -> None:
    """Refuse, before anything starts, a cell that asks more of one node than any node has."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if settings.cell_gpus > most_gpus:
        raise SweepError(f"Each cell asks for {settings.cell_gpus:g} GPU(s), but no node of the Ray cluster has more "
                         f"than {most_gpus:g}: lower --cell-gpus or add GPU nodes.", "cell_gpus")
    if settings.cell_cpus > most_cpus:
        raise SweepError(f"Each cell asks for {settings.cell_cpus:g} CPU(s), but no node of the Ray cluster has more "
                         f"than {most_cpus:g}: lower --cell-cpus.", "cell_cpus")


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in key)


def run_cell_here(opener: CellOpener, cell: Cell, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """A cell in a worker (a process here, or wherever Ray placed it): open the run on a snapshot of its log, run,
    return the new records."""
    where = f"{socket.gethostname()} (pid {os.getpid()})"
    out = opener.settings.out
    assert out is not None
    write_json_atomic(out / "cells" / f"{_slug(cell.key)}.json", {  # where each cell runs, for people watching
        "cell": cell.key, "where": where, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
    log = RecordingLog(out, records)
    cell.run(opener.open(log))
    return [record_to_json(r) for r in log.new], where


def run_side_by_side(pool: CellPool, ctx: CellContext, opener: CellOpener, cells: list[Cell]) -> None:
    """The one scheduler of cells that run side by side: submit each cell once the cells it needs have finished,
    collect what finishes, write its records to the log; the failures are raised together at the end."""
    s = ctx.settings
    finished = {c.key for c in cells if c.done(ctx.log.results)}
    todo = [c for c in cells if c.key not in finished]
    failed: dict[str, str] = {}
    running: dict[Any, tuple[Cell, float]] = {}
    bar = tqdm(total=len(cells), initial=len(finished), desc="cells", unit="cell")
    while todo or running:
        for cell in list(todo):
            lost = [dep for dep in cell.after if dep in failed]
            if lost:
                todo.remove(cell)
                failed[cell.key] = f"not run: it needs {lost[0]}, which failed"
            elif all(dep in finished for dep in cell.after):
                todo.remove(cell)
                snapshot = [record_to_json(r) for r in ctx.log.results.records]
                running[pool.submit(opener, cell, snapshot)] = (cell, time.monotonic())
        if not running:
            break
        handle = pool.next_done()
        cell, began = running.pop(handle)
        took = time.monotonic() - began
        try:
            records, where = pool.result(handle)
        except Exception:  # noqa: BLE001 - a cell's failure is reported, and the other cells go on
            path = s.out / "failures" / f"{_slug(cell.key)}.txt"
            write_text_atomic(path, traceback.format_exc())
            failed[cell.key] = f"failed after {took:.0f} s; traceback in {path}"
            bar.write(f"FAILED {cell.key} ({failed[cell.key]})")
            continue
        for raw in records:  # the driver alone writes the log
            ctx.log.append(record_from_json(raw))
        finished.add(cell.key)
        bar.update(1)
        bar.write(f"done   {cell.key} on {where} ({took:.0f} s)")
    bar.close()
    if failed:
        lines = "; ".join(f"{key}: {why}" for key, why in failed.items())
        raise SweepError(f"{len(failed)} of {len(cells)} cell(s) did not finish ({lines}). The others are measured; "
                         "run the same command with --resume to retry these.", "executor")

