"""Inception feature extraction on this machine: where the time goes, and each way of running it.

The variants run the same images through the same network, interleaved round by round (so
a busy machine slows them alike and the ratios hold), and each is checked against the
path the harness used before: features must agree to 1e-4 relative for a variant to count.
Figures are printed (and optionally written), never asserted: timings belong in benchmarks.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from pipelines.atomic import write_text_atomic
from pipelines.data import load_dataset
from pipelines.training import device_name

from .fid import CleanInception, _CleanResized, as_rgb, load_inception
from .inception_onnx import onnx_runtime_installed

FEATURE_TOLERANCE = 1e-4  # largest feature difference, relative to the largest feature, a variant may have


@dataclass
class FidBenchResult:
    table: pd.DataFrame
    resize_ms_per_image: float
    images: int
    machine: str

    def markdown(self) -> str:
        return (f"Inception features of {self.images} images on {self.machine}; decoding and the clean-fid resize "
                f"took {self.resize_ms_per_image:.1f} ms per image (shared by every variant).\n\n"
                + self.table.to_markdown(index=False, floatfmt=".4g"))


def _variants(device: torch.device) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> features of a batch of clean-resized images (float, [0, 255], 299 px)."""
    net = load_inception(device)

    def before(x: torch.Tensor) -> torch.Tensor:  # the harness's path until it measured this
        with torch.no_grad():
            return net(((x.float() - 128) / 128).to(device)).reshape(len(x), -1).cpu()

    def inference_mode_channels_last(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            y = ((x.float() - 128) / 128).to(device).contiguous(memory_format=torch.channels_last)
            return net(y).reshape(len(x), -1).cpu()

    variants = {"torch (before)": before, "torch inference_mode + channels_last": inference_mode_channels_last}
    if device.type == "cpu" and onnx_runtime_installed():
        onnx = CleanInception(device, runtime="onnx")
        variants["onnxruntime (the default on CPU)"] = lambda x: onnx(x)
    return variants


def run_fid_benchmark(images: int = 64, rounds: int = 3, batch_size: int = 32, dataset: str = "fashion-mnist",
                      resolution: int = 32, device: torch.device | None = None, out: Path | None = None
                      ) -> FidBenchResult:
    """Images/s of every variant against the harness's former path, measured in one interleaved run."""
    device = device or torch.device("cpu")
    x = as_rgb(load_dataset(dataset, resolution, split="all" if dataset != "fashion-mnist" else "test").images[:images])
    start = time.perf_counter()
    resized = _CleanResized(x)
    clean = torch.stack([resized[i] for i in range(len(resized))])
    resize_ms = (time.perf_counter() - start) * 1000 / len(x)
    variants = _variants(device)
    batches = clean.split(batch_size)
    features = {name: torch.cat([fn(b) for b in batches[:1]]) for name, fn in variants.items()}  # warm-up
    seconds = {name: 0.0 for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            features[name] = torch.cat([fn(b) for b in batches])
            seconds[name] += time.perf_counter() - start
    reference = features["torch (before)"].double()
    scale = float(reference.abs().max())
    base = seconds["torch (before)"]
    rows = []
    for name in variants:
        forward_ms = seconds[name] * 1000 / (rounds * len(x))
        diff = float((features[name].double() - reference).abs().max()) / scale
        rows.append({"variant": name, "images_per_s": 1000 / (forward_ms + resize_ms),
                     "forward_ms_per_image": forward_ms, "speedup": base / seconds[name],
                     "max_rel_feature_diff": diff, "same_features": diff <= FEATURE_TOLERANCE})
    result = FidBenchResult(pd.DataFrame(rows), resize_ms, len(x), device_name(str(device)))
    if out is not None:
        write_text_atomic(Path(out), result.markdown() + "\n")
    return result

