"""Peak memory of a block of work: CUDA allocator peak on a GPU, process peak RSS on a CPU.

On Linux the process's RSS high-water mark can be reset (``/proc/self/clear_refs`` = 5),
so several measurements in one process each see only their own peak; no library exposes
that, hence the few lines here.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_field(name: str) -> float | None:
    try:
        match = re.search(rf"{name}:\s+(\d+) kB", _STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


@dataclass
class MemoryReading:
    peak_mb: float | None  # CUDA: max allocated; CPU: peak RSS of the whole process
    increase_mb: float | None  # peak above the level at the start of the block
    method: str
    seconds: float = 0.0


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.reading`` (peak memory and wall time of the block)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reading = MemoryReading(None, None, "unavailable")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # earlier work is not this block's
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
            self._tic = time.perf_counter()
        else:
            self._tic = time.perf_counter()
            try:
                _CLEAR_REFS.write_text("5")  # reset the RSS high-water mark
                self._resettable = True
            except OSError:
                self._resettable = False
            self._start = _rss_field("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            # CUDA runs the block's kernels after Python has queued them: its time ends when they end. (Read
            # before this synchronize, a time budget would miss the kernels' own time and overrun.)
            torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - self._tic
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.reading = MemoryReading(peak, peak - self._start, "cuda max_memory_allocated", seconds)
            return
        seconds = time.perf_counter() - self._tic
        peak = _rss_field("VmHWM")
        if peak is None or self._start is None:
            self.reading = MemoryReading(None, None, "unavailable", seconds)
            return
        method = "process peak RSS (VmHWM, reset per block)" if self._resettable else "process peak RSS (since start)"
        self.reading = MemoryReading(peak, max(0.0, peak - self._start), method, seconds)
