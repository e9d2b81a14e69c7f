"""What the demo does, without any UI: load models once, sample, reconstruct, time.

Sampling and timing go through ``ldm_eval.profiling.timed_sampling`` and models through
``pipelines.load_pipeline``, exactly as in the evaluation harness.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm_eval.profiling import TimedSamples, timed_sampling
from ldm_eval.reconstruction import psnr, ssim
from pipelines.first_stage import FirstStage
from pipelines.pipeline import LatentDiffusionPipeline, load_pipeline, resolve_device, to_uint8

from .zoo import ModelEntry, discover_models, latest_results, model_fid

MAX_IMAGES = 16
MAX_STEPS = 1000
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000


class DemoInputError(ValueError):
    """A request the demo refuses, with a message meant for the person who made it."""


@dataclass
class Timing:
    wall_seconds: float
    samples_per_s: float
    peak_memory_mb: float | None
    memory_method: str
    device: str

    @classmethod
    def of(cls, timed: TimedSamples, device: str) -> "Timing":
        return cls(round(timed.seconds, 4), round(timed.samples_per_s, 3),
                   None if timed.peak_mb is None else round(timed.peak_mb, 1), timed.memory_method, device)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{name} must be a whole number from {low} to {high}.") from None
    if number != value and not (isinstance(value, float) and value.is_integer()):
        raise DemoInputError(f"{name} must be a whole number from {low} to {high}.")
    if not low <= number <= high:
        raise DemoInputError(f"{name} must be from {low} to {high} (got {number}).")
    return number


def prepare_upload(image: Image.Image | np.ndarray | str | Path, resolution: int, channels: int) -> torch.Tensor:
    """Any mode or size to a (1, C, R, R) float tensor in [-1, 1]; huge uploads refused."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise DemoInputError(f"The upload is {path.stat().st_size / 2**20:.1f} MB; the limit is 10 MB.")
        try:
            image = Image.open(path)
            image.load()
        except (OSError, Image.DecompressionBombError, SyntaxError) as err:
            raise DemoInputError(f"That file is not an image this demo can read ({err}).") from None
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise DemoInputError(f"The image is {image.width}x{image.height} pixels; the limit is 40 megapixels.")
    image = ImageOps.exif_transpose(image).convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return torch.from_numpy(array / 127.5 - 1.0)[None]


def latent_pictures(latents: torch.Tensor, size: int) -> list[np.ndarray]:
    """Each latent channel as a gray picture (min-max scaled), enlarged to ``size`` for viewing."""
    pictures = []
    for channel in latents[0][:16]:
        c = channel.float()
        c = (c - c.min()) / (c.max() - c.min() + 1e-8)
        img = Image.fromarray((c.numpy() * 255).astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)
        pictures.append(np.asarray(img))
    return pictures


class Lab:
    """The demo's state: a model list and a cache of loaded pipelines (thread-safe)."""

    def __init__(self, model_dirs: list[Path] | None = None, report_dirs: list[Path] | None = None, device: str = "auto"):
        self.device = resolve_device(device)
        self.model_dirs = model_dirs
        self.report_dirs = report_dirs
        self.models = discover_models(model_dirs) if model_dirs else discover_models()
        self._loaded: dict[str, LatentDiffusionPipeline] = {}
        self._lock = threading.Lock()

    def refresh(self) -> list[ModelEntry]:
        self.models = discover_models(self.model_dirs) if self.model_dirs else discover_models()
        return self.models

    def entry(self, name: str) -> ModelEntry:
        for e in self.models:
            if name in (e.name, e.label):
                return e
        raise DemoInputError(f"Unknown model {name!r}; pick one from the list.")

    def pipeline(self, name: str) -> LatentDiffusionPipeline:
        entry = self.entry(name)
        with self._lock:
            if entry.name not in self._loaded:
                # shipped weights are fp16 to keep the repository small; compute in fp32 on CPU
                dtype = torch.float32 if self.device.type == "cpu" else None
                self._loaded[entry.name] = load_pipeline(entry.path, device=self.device, dtype=dtype)
            return self._loaded[entry.name]

    def results(self):
        return latest_results(self.report_dirs) if self.report_dirs else latest_results()

    # --- the four actions ---------------------------------------------------------------

    def generate(self, model: str, sampler: str, steps: int, seed: int, n: int, trajectory: bool = False):
        if sampler not in ("ddim", "ddpm"):
            raise DemoInputError("Sampler must be DDIM or DDPM.")
        steps = _check_int("Steps", steps, 1, MAX_STEPS)
        n = _check_int("Number of images", n, 1, MAX_IMAGES)
        seed = _check_int("Seed", seed, 0, 2**31 - 1)
        pipe = self.pipeline(model)
        timed = timed_sampling(pipe, n, steps, sampler, seed=seed, batch_size=MAX_IMAGES, return_trajectory=trajectory)
        return timed, Timing.of(timed, str(self.device))

    def compare(self, models: list[str], sampler: str, steps: int, seed: int, n: int = 1):
        if not models:
            raise DemoInputError("Pick at least one model to compare.")
        results = self.results()[0]
        rows = []
        for name in models:
            timed, timing = self.generate(name, sampler, steps, seed, n)
            rows.append((self.entry(name), timed, timing, model_fid(results, self.entry(name))))
        return rows

    def reconstruct(self, image, models: list[str]) -> list[dict]:
        """The image through each model's first stage: reconstruction, PSNR/SSIM, latents."""
        if image is None:
            raise DemoInputError("Upload an image or pick one from the data set first.")
        if not models:
            raise DemoInputError("Pick at least one model.")
        out = []
        for name in models:
            entry, pipe = self.entry(name), self.pipeline(name)
            x = prepare_upload(image, pipe.resolution, pipe.image_channels).to(self.device)
            stage: FirstStage = pipe.first_stage
            dtype = pipe.vae.dtype if pipe.vae is not None else x.dtype
            with torch.no_grad():
                mean, _ = stage.encode_moments(x.to(dtype))
                latents = mean * stage.scale
                recon = stage.decode(latents).float().clamp(-1, 1)
            real01, recon01 = (x.cpu() + 1) / 2, (recon.cpu() + 1) / 2
            c, h, w = stage.latent_shape(pipe.resolution)
            out.append({
                "model": entry.label, "factor": stage.factor, "kind": stage.kind,
                "input": to_uint8(real01.permute(0, 2, 3, 1).numpy())[0],
                "reconstruction": to_uint8(recon01.permute(0, 2, 3, 1).numpy())[0],
                "psnr": psnr(real01, recon01), "ssim": ssim(real01, recon01),
                "latent_shape": (c, h, w),
                "compression_ratio": (pipe.image_channels * pipe.resolution**2) / (c * h * w),
                "latents": latent_pictures(latents.cpu(), max(64, pipe.resolution)),
            })
        return out
