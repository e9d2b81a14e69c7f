"""Peak memory of a block of work: what the block's own tensors need above the level before it.

* CUDA: the caching allocator's ``max_memory_allocated`` minus ``memory_allocated`` at the
  block's start (peak statistics reset at entry), so the weights, already resident, are not counted.
* Any other device (CPU, MPS): a :class:`TorchDispatchMode` active during the block sees every
  aten operator -- the forward pass, and autograd's backward, which runs the same dispatcher
  (with the mode's thread-local state) -- and counts the bytes of every *new* tensor storage an
  operator returns (deduplicated by the storage's data pointer; outputs that alias an input, views
  and in-place results, are no new memory). A ``weakref.finalize`` on the storage subtracts it
  when it is freed, and the reading is the peak of the live bytes. Why this and not the
  process's peak RSS: RSS is the whole process (Python, libraries, the dataset, freed heap the
  allocator keeps), the same ~GB for every model, so it cannot tell models apart. Why not the
  profiler's memory accounting: it records every allocation event into a trace, much heavier
  than a counter. What this does not see: scratch buffers a kernel allocates and frees inside
  itself (e.g. a convolution's workspace) -- it is the peak of the tensors, a lower bound on the
  allocator's.

The dispatch mode costs Python work per operator; :func:`pipelines.sampling.timed_sampling`
therefore times and measures memory in separate passes on a CPU, so timings carry no overhead.
"""
from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CUDA_METHOD = "tensor peak above the block's start (CUDA, max_memory_allocated minus the level at entry)"
TENSOR_METHOD = "tensor peak above the block's start ({device}, dispatch-mode storage accounting)"
UNAVAILABLE = "unavailable"
MB = 2**20


@dataclass
class MemoryReading:
    peak_mb: float | None  # the block's tensor peak above its start; None when unavailable
    method: str  # what peak_mb is, or "unavailable: <reason>"
    seconds: float = 0.0  # wall time of the block (including the accounting's own cost, if any)


class StorageAccounting(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._finalizers: dict[int, weakref.finalize] = {}
        self._lock = threading.Lock()  # a storage can be freed (its finalizer run) on another thread

    def _freed(self, key: int, nbytes: int) -> None:
        with self._lock:
            if self._finalizers.pop(key, None) is not None:
                self.live -= nbytes

    def _count(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or key in inputs:
            return
        with self._lock:
            if key in self._finalizers:
                return
            self._finalizers[key] = weakref.finalize(storage, self._freed, key, nbytes)
            self.live += nbytes
            self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
                self._count(tensor, inputs)
        return out

    def __exit__(self, *exc: object):
        result = super().__exit__(*exc)
        with self._lock:  # storages that outlive the block need no more accounting
            for finalizer in self._finalizers.values():
                finalizer.detach()
            self._finalizers.clear()
        return result


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.reading`` (the block's peak memory and wall time)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reading = MemoryReading(None, UNAVAILABLE)
        self._accounting: StorageAccounting | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # earlier work is not this block's
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._accounting = StorageAccounting()
            self._accounting.__enter__()
        self._tic = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            # CUDA runs the block's kernels after Python has queued them: its time ends when they end. (Read
            # before this synchronize, a time budget would miss the kernels' own time and overrun.)
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - self._tic
            peak = (torch.cuda.max_memory_allocated(self.device) - self._start) / MB
            self.reading = MemoryReading(max(0.0, peak), CUDA_METHOD, seconds)
            return
        seconds = time.perf_counter() - self._tic
        self._accounting.__exit__(*exc)
        self.reading = MemoryReading(self._accounting.peak / MB,
                                     TENSOR_METHOD.format(device=self.device.type.upper()), seconds)


class Stopwatch:
    """``with Stopwatch(device) as w: ...``: :class:`PeakMemory`'s timing alone (``w.reading`` has no memory)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reading = MemoryReading(None, "not measured (timed only)")

    @property
    def seconds(self) -> float:
        return self.reading.seconds

    def __enter__(self) -> "Stopwatch":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._tic = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.reading = MemoryReading(None, "not measured (timed only)", time.perf_counter() - self._tic)


def is_model_memory(method: str | None) -> bool:
    """Whether a reading's ``method`` is one of these (the block's own tensors), not an older run's process-wide
    figure (peak RSS, or the allocator's absolute peak), which reads the same for every model."""
    return bool(method) and method.startswith("tensor peak above the block's start")


def measures_without_overhead(device: torch.device | str) -> bool:
    """Whether :class:`PeakMemory` leaves the block's speed alone (CUDA's counters do; the dispatch mode does not)."""
    return torch.device(device).type == "cuda"
