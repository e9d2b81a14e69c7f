"""Peak memory of a block of work: CUDA allocator peak on a GPU, process peak RSS on a CPU.

On Linux the process's RSS high-water mark can be reset (``/proc/self/clear_refs`` = 5),
so several measurements in one process each see only their own peak; no library exposes
that, hence the few lines here.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    """``with PeakMemory(device) as m: ...`` then ``m.reading``."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.reading = MemoryReading(None, None, "unavailable")

    def __enter__(self) -> "PeakMemory":
        self._tic = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            try:
                _CLEAR_REFS.write_text("5")  # reset the RSS high-water mark
                self._resettable = True
            except OSError:
                self._resettable = False
            self._start = _rss_field("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._tic
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.reading = MemoryReading(peak, peak - self._start, "cuda max_memory_allocated", seconds)
            return
        peak = _rss_field("VmHWM")
        if peak is None or self._start is None:
            return
        method = "process peak RSS (VmHWM, reset per block)" if self._resettable else "process peak RSS (since start)"
        self.reading = MemoryReading(peak, max(0.0, peak - self._start), method, seconds)


@dataclass
class TimedSamples:
    """Samples with how long they took and how much memory: the one way both the harness and the demo time sampling."""

    images: np.ndarray
    seconds: float
    peak_mb: float | None
    memory_method: str
    steps: int
    scheduler: str
    trajectory_xt: np.ndarray | None = None
    trajectory_x0: np.ndarray | None = None
    timesteps: list[int] | None = None

    @property
    def samples_per_s(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")

    @property
    def sec_per_image(self) -> float:
        return self.seconds / len(self.images)


def timed_sampling(
    pipe, num_images: int, steps: int, scheduler: str = "ddim", seed: int = 0, batch_size: int = 250,
    return_trajectory: bool = False,
    labels: Sequence[int | str] | int | str | None = None,
    prompt: Sequence[str] | str | None = None,
    guidance_scale: float = 1.0,
) -> TimedSamples:
    """Sample in batches under :class:`PeakMemory`; batch ``j`` uses seed ``seed + j``.

    ``labels`` / ``prompt`` are one condition for all images or one per image (sliced per
    batch). Warm-up is the caller's business (the harness warms up once per model; the
    demo's models are warmed when they load).
    """
    pipe.validate_request(min(num_images, batch_size), steps)

    def part(values, j: int, n: int):
        if values is None or isinstance(values, (str, int)):
            return values
        values = list(values)
        return values if len(values) == 1 else values[j : j + n]

    chunks, xts, x0s, timesteps = [], [], [], None
    with PeakMemory(pipe.device) as mem:
        for j in range(0, num_images, batch_size):
            n = min(batch_size, num_images - j)
            out = pipe(num_images=n, num_inference_steps=steps, scheduler=scheduler, seed=seed + j,
                       return_trajectory=return_trajectory, labels=part(labels, j, n), prompt=part(prompt, j, n),
                       guidance_scale=guidance_scale)
            chunks.append(out.images)
            timesteps = out.timesteps
            if return_trajectory:
                xts.append(out.trajectory_xt)
                x0s.append(out.trajectory_x0)
    cat = (lambda parts: np.concatenate(parts, axis=1)) if return_trajectory else (lambda parts: None)
    return TimedSamples(
        images=np.concatenate(chunks), seconds=mem.reading.seconds, peak_mb=mem.reading.peak_mb,
        memory_method=mem.reading.method, steps=steps, scheduler=scheduler,
        trajectory_xt=cat(xts), trajectory_x0=cat(x0s), timesteps=timesteps,
    )
