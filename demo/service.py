"""What the demo does, without any UI: load models once, sample, reconstruct, time.

Sampling and timing go through ``ldm_eval.profiling.timed_sampling`` and models through
``pipelines.load_pipeline``, exactly as in the evaluation harness. Conditions (a class label,
a text prompt, a guidance scale) go down the same path; the pipelines check them and the
demo turns their errors into messages for the user.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from ldm_eval.profiling import TimedSamples, timed_sampling
from ldm_eval.reconstruction import psnr, ssim
from pipelines.conditioning import MAX_GUIDANCE, ConditionError, class_caption
from pipelines.first_stage import FirstStage
from pipelines.pipeline import LatentDiffusionPipeline, load_pipeline, resolve_device, to_uint8

from .zoo import ModelEntry, discover_models, latest_results, model_fid, sweep_results

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
    condition: str = "unconditional"  # what was sampled, so a timing is never read without its request
    guidance: float = 1.0

    @classmethod
    def of(cls, timed: TimedSamples, device: str, condition: str = "unconditional", guidance: float = 1.0) -> "Timing":
        return cls(round(timed.seconds, 4), round(timed.samples_per_s, 3),
                   None if timed.peak_mb is None else round(timed.peak_mb, 1), timed.memory_method, device,
                   condition, guidance)


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


def _check_guidance(value: object) -> float:
    """A real number in 0..MAX_GUIDANCE; checked here too so the message names the demo's control."""
    message = f"Guidance must be a number from 0 to {MAX_GUIDANCE:g} (1 = plain conditional model)"
    if isinstance(value, bool):
        raise DemoInputError(f"{message}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoInputError(f"{message}; got {value!r}.") from None
    if not math.isfinite(number) or not 0.0 <= number <= MAX_GUIDANCE:
        raise DemoInputError(f"{message}; got {value!r}.")
    return number


def _blank(text: str | None) -> bool:
    return text is None or not str(text).strip()


class Condition(NamedTuple):
    """What one model is asked for: the pipeline's keyword arguments and a caption for people."""

    labels: str | None
    prompt: str | None
    guidance: float
    caption: str


def condition_for_one(entry: ModelEntry, label: str | None, prompt: str | None, guidance: float) -> Condition:
    """Generate: one model, so a condition it cannot take is the user's mistake and is refused.

    A blank label or prompt box means "none" for models that do not read it; a text model
    given a blank (not None) prompt is asked to write one, since that is almost always a slip.
    """
    label = None if _blank(label) else str(label).strip()
    if entry.condition == "none":
        if label is not None or not _blank(prompt) or guidance != 1.0:
            raise DemoInputError(
                f"{entry.label} is unconditional: it takes no label or prompt, and guidance must be 1.")
        return Condition(None, None, 1.0, "unconditional")
    if entry.condition == "class":
        if not _blank(prompt):
            raise DemoInputError(f"{entry.label} takes class labels, not prompts: pick a label and clear the prompt.")
        return Condition(label, None, guidance, f"label: {label}" if label else "no label (unconditional sample)")
    if label is not None:
        raise DemoInputError(f"{entry.label} takes text prompts, not labels: write a prompt such as "
                             f"'{class_caption(label)}'.")
    if prompt is None:
        return Condition(None, None, guidance, "no prompt (unconditional sample)")
    if _blank(prompt):
        raise DemoInputError("The prompt is empty: write what to draw, e.g. 'a photo of an ankle boot'.")
    prompt = str(prompt).strip()
    return Condition(None, prompt, guidance, f"prompt: {prompt!r}")


def condition_for_many(entry: ModelEntry, label: str | None, prompt: str | None, guidance: float) -> Condition:
    """Compare: one request across models of every kind, so each takes what it can read.

    A class model uses the label; a text model the prompt, or the label's caption when no
    prompt is written (so one label compares class and text models); an unconditional model
    ignores the condition and guidance, and its caption says so.
    """
    label = None if _blank(label) else str(label).strip()
    prompt = None if _blank(prompt) else str(prompt).strip()
    if entry.condition == "none":
        asked = label is not None or prompt is not None or guidance != 1.0
        return Condition(None, None, 1.0, "unconditional: condition ignored" if asked else "unconditional")
    if entry.condition == "class":
        return Condition(label, None, guidance, f"label: {label}" if label else "no label")
    if prompt is None and label is not None:
        prompt = class_caption(label)
    return Condition(None, prompt, guidance, f"prompt: {prompt!r}" if prompt else "no prompt")


class ComparedModel(NamedTuple):
    entry: ModelEntry
    timed: TimedSamples
    timing: Timing
    fid: str
    condition: Condition


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

    def generate(self, model: str, sampler: str, steps: int, seed: int, n: int, trajectory: bool = False, *,
                 label: str | None = None, prompt: str | None = None, guidance: float = 1.0):
        """Samples from one model; a label, prompt or guidance it cannot take is refused."""
        timed, timing, _ = self._sample(model, sampler, steps, seed, n, trajectory, label, prompt, guidance,
                                        condition_for_one)
        return timed, timing

    def compare(self, models: list[str], sampler: str, steps: int, seed: int, n: int = 1, *,
                label: str | None = None, prompt: str | None = None, guidance: float = 1.0) -> list[ComparedModel]:
        """The same seed (and condition, where a model reads one) through every chosen model."""
        if not models:
            raise DemoInputError("Pick at least one model to compare.")
        results = [table for table, _ in (sweep_results(self.report_dirs) if self.report_dirs else sweep_results())]
        rows = []
        for name in models:
            timed, timing, condition = self._sample(name, sampler, steps, seed, n, False, label, prompt, guidance,
                                                    condition_for_many)
            rows.append(ComparedModel(self.entry(name), timed, timing, model_fid(results, self.entry(name)), condition))
        return rows

    def _sample(self, model, sampler, steps, seed, n, trajectory, label, prompt, guidance, resolve):
        """Check every input, then sample through the harness's timing path (one code path for both actions)."""
        if sampler not in ("ddim", "ddpm"):
            raise DemoInputError("Sampler must be DDIM or DDPM.")
        steps = _check_int("Steps", steps, 1, MAX_STEPS)
        n = _check_int("Number of images", n, 1, MAX_IMAGES)
        seed = _check_int("Seed", seed, 0, 2**31 - 1)
        condition = resolve(self.entry(model), label, prompt, _check_guidance(guidance))
        pipe = self.pipeline(model)
        try:
            timed = timed_sampling(pipe, n, steps, sampler, seed=seed, batch_size=MAX_IMAGES,
                                   return_trajectory=trajectory, labels=condition.labels, prompt=condition.prompt,
                                   guidance_scale=condition.guidance)
        except ConditionError as err:  # unknown label, over-long prompt...: the user's to fix
            raise DemoInputError(str(err)) from None
        return timed, Timing.of(timed, str(self.device), condition.caption, condition.guidance), condition

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
