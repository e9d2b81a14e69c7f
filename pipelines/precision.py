"""Reduced precision only where it pays: measured on this device, never assumed.

bf16 is fast on CPUs with native bf16 instructions and on GPUs, and many times *slower*
than fp32 on CPUs without them (AVX2-only CPUs, say).
CPU flags do not tell reliably which, so :func:`bf16_speedup` times a small convolution in
both precisions, interleaved, once per process and device.
"""
from __future__ import annotations

import functools
import time
from typing import Literal

import torch

from .errors import InputError

Precision = Literal["no", "fp16", "bf16"]
PRECISIONS = ("no", "fp16", "bf16")


@functools.lru_cache(maxsize=4)
def _bf16_speedup(device: str) -> float:
    dev = torch.device(device)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(dev)
    x = torch.randn(8, 64, 32, 32, device=dev)
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    with torch.inference_mode():
        for _ in range(3):  # interleaved, best of 3: a busy machine slows both alike
            for dtype in best:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    conv(x)  # first call per precision pays for kernel selection
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    start = time.perf_counter()
                    for _ in range(3):
                        conv(x)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def bf16_speedup(device: torch.device | str) -> float:
    """fp32 time / bf16 time of a small convolution on ``device`` (> 1: bf16 is faster)."""
    return _bf16_speedup(str(torch.device(device)))


def sampling_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for sampling at ``precision`` on ``device``; clear errors where it cannot work or pay."""
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision {precision!r}; choose no, fp16 or bf16.", "mixed_precision")
    if precision == "no":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise InputError("fp16 sampling needs a GPU; on a CPU use --mixed-precision no (or bf16 where it is fast).",
                             "mixed_precision")
        return torch.float16
    speedup = bf16_speedup(device)
    if speedup < 1.0:
        raise InputError(f"bf16 runs {1 / speedup:.1f}x slower than fp32 on this {device.type} (measured on a "
                         "convolution just now): use --mixed-precision no.", "mixed_precision")
    return torch.bfloat16
