"""Inception feature extraction on this machine: where the time goes, and each way of running it.

The variants run the same images through the same network, interleaved round by round (so
a busy machine slows them alike and the ratios hold), and each is checked against the
path the harness used before: features must agree to 1e-4 relative for a variant to count.
Figures are printed (and optionally written), never asserted: timings belong in benchmarks.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFilter

from ldm_eval.metrics.domain_classifier import train_domain_classifier
from ldm_eval.metrics.features import (
    CleanInception,
    _CleanResized,
    compute_features,
    load_inception,
)
from ldm_eval.metrics.frechet import fid_from_features, kid_from_features
from ldm_eval.metrics.inception_onnx import onnx_runtime_installed
from ldm_eval.metrics.uncertainty import BOOTSTRAP_RESAMPLES, fid_with_uncertainty
from pipelines.atomic import write_text_atomic
from pipelines.data import STRATIFY_KEYS, load_dataset, representative_order
from pipelines.images import as_rgb
from pipelines.training import device_name

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



# --- what each backend sees ------------------------------------------------------------------

DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur radius 1": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
    "blur radius 2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "JPEG quality 10": lambda im: _jpeg(im, 10),
    "JPEG quality 30": lambda im: _jpeg(im, 30),
}


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert(image.mode)


def degrade(images_uint8: torch.Tensor, how: str) -> torch.Tensor:
    """uint8 (N, C, H, W) images through one of ``DEGRADATIONS`` (PIL, image by image)."""
    fn = DEGRADATIONS[how]
    out = []
    for img in images_uint8:
        arr = img.permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        back = np.asarray(fn(pil))
        out.append(torch.from_numpy(back.reshape(arr.shape).copy()).permute(2, 0, 1))
    return torch.stack(out)


def backend_sensitivity(reference: torch.Tensor, other: torch.Tensor, backends: dict[str, Callable[[torch.Tensor],
                        np.ndarray]]) -> pd.DataFrame:
    """FID of ``reference`` against ``other`` as it is and degraded, per feature backend.

    ``other`` holds real images disjoint from ``reference``, so the first row is the FID two
    real sets have at this N (the floor); a backend that sees a degradation rises clearly above
    it. ``backends`` maps a name to a features function.
    """

    sets = {"real (no change)": other, **{how: degrade(other, how) for how in DEGRADATIONS}}
    rows = []
    for backend, features in backends.items():
        ref = features(reference)
        floor = None
        for name, images in sets.items():
            fid = fid_from_features(ref, features(images))
            floor = fid if floor is None else floor
            rows.append({"backend": backend, "images": name, "n": len(images), "fid": fid, "x_real": fid / floor})
    return pd.DataFrame(rows)


def run_sensitivity(dataset: str, resolution: int, n: int, device: torch.device, classifier_steps: int = 500,
                    seed: int = 0, out: Path | None = None) -> pd.DataFrame:
    """``backend_sensitivity`` on a data set's held-out images: Inception and the domain classifier."""

    # the held-out split: images the classifier below never trained on
    held_out, _ = representative_order(load_dataset(dataset, resolution, split="test"), seed)
    if len(held_out) < 2 * n:
        raise ValueError(f"'{dataset}' has {len(held_out)} images; two disjoint sets of {n} need {2 * n}.")
    train = load_dataset(dataset, resolution, split="train")  # the classifier never sees the measured images
    key = next((k for k in STRATIFY_KEYS if k in train.labels), None)
    clf = train_domain_classifier(train.images, train.labels[key] if key else None, steps=classifier_steps,
                                  seed=seed, device=device)
    backends = {
        "inception": lambda x: compute_features(x, "inception", device),
        f"domain ({clf.config.task})": lambda x: compute_features(x, "domain", device, classifier=clf),
    }
    table = backend_sensitivity(held_out.images[:n], held_out.images[n : 2 * n], backends)
    if out is not None:
        write_text_atomic(Path(out), table.to_markdown(index=False, floatfmt=".4g") + "\n")
    return table


# --- what the uncertainty costs ----------------------------------------------------------------

def run_interval_cost(dataset: str, resolution: int, n: int, device: torch.device, out: Path | None = None) -> str:
    """Seconds of the features of N + N held-out images, then of everything ``fid --kid`` adds on them."""
    images = load_dataset(dataset, resolution, split="test").images
    if len(images) < 2 * n:
        raise ValueError(f"'{dataset}' has {len(images)} held-out images; two sets of {n} need {2 * n}.")
    start = time.perf_counter()
    features = compute_features(images[: 2 * n], "inception", device)
    feature_s = time.perf_counter() - start
    a, b = features[:n], features[n:]
    timings = {}
    for name, work in (("bootstrap interval + FID-infinity", lambda: fid_with_uncertainty(a, b)),
                       ("bootstrap of both sets + FID-infinity", lambda: fid_with_uncertainty(
                           a, b, resample_reference=True)),
                       ("KID (100 subsets)", lambda: kid_from_features(a, b))):
        start = time.perf_counter()
        work()
        timings[name] = time.perf_counter() - start
    rows = [{"work": "Inception features", "seconds": feature_s, "share_of_features": 1.0}]
    rows += [{"work": k, "seconds": v, "share_of_features": v / feature_s} for k, v in timings.items()]
    text = (f"The uncertainty of a {n} vs {n} comparison of '{dataset}' held-out images at {resolution} px against the "
            f"features it judges, on {device_name(str(device))} ({BOOTSTRAP_RESAMPLES} bootstrap resamples; "
            f"`fid --kid` does the first and the last row):\n\n"
            + pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))
    if out is not None:
        write_text_atomic(Path(out), text + "\n")
    return text
