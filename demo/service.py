"""What the demo does, without any UI: load models once, sample, reconstruct, time.

Everything goes through the core, exactly as in the evaluation harness: models through
``pipelines.loading.load_pipeline``, requests through ``LatentDiffusionPipeline.check_inputs`` (the
one place that decides what steps, sampler, seed, label, prompt and guidance may be),
sampling and timing through ``pipelines.sampling.timed_sampling``, reconstructions through
``FirstStage.reconstruct`` and ``pipelines.fidelity``. The demo adds only its own policy
(how many images one request may ask for, what a blank box means, how Compare maps one
request onto models of every kind) and names the UI control at fault in every message.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.conditioning import class_caption
from pipelines.errors import InputError, quote, whole_number
from pipelines.fidelity import psnr, ssim
from pipelines.first_stage import FirstStage, load_autoencoder
from pipelines.images import (
    as_uint8_nchw,
    signed_to_unit,
    uint8_to_signed,
    unit_to_uint8,
)
from pipelines.loading import load_model, load_pipeline
from pipelines.pipeline import LatentDiffusionPipeline, SampleRequest, resolve_device
from pipelines.sampling import TimedSamples, timed_sampling

from .zoo import (
    ModelEntry,
    ShownFid,
    discover_autoencoders,
    discover_models,
    fid_line,
    model_fids,
    result_folders,
    sweep_results,
    user_model_entry,
)

MAX_IMAGES = 16  # the demo's policy: one request stays quick on a CPU (the core allows far more)
MAX_STEPS = 1000  # the Steps sliders' range; each model's own limit is the core's to enforce
MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000

# The core names the keyword argument at fault; people see the demo's controls.
CONTROLS = {"num_inference_steps": "Steps", "seed": "Seed", "guidance_scale": "Guidance scale",
            "labels": "Class label", "prompt": "Prompt", "scheduler": "Sampler", "num_images": "Images"}


class DemoInputError(ValueError):
    """A request the demo refuses, with a message meant for the person who made it.

    ``control`` is the UI control at fault (e.g. "Steps"), when one is.
    """

    def __init__(self, message: str, control: str | None = None):
        super().__init__(message)
        self.control = control

    @classmethod
    def of(cls, err: InputError) -> "DemoInputError":
        """The core's message, led by the demo control it concerns unless it already starts with its name."""
        control, message = CONTROLS.get(err.field or ""), str(err)
        if control is None or message.startswith(control):
            return cls(message, control)
        return cls(f"{control}: {message}", control)


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


def _blank(text: object) -> bool:
    return text is None or not str(text).strip()


def _image_count(n: object) -> int:
    """The demo's own limit on images per request (the core's limit is much larger)."""
    try:
        return whole_number(n, "num_images", CONTROLS["num_images"], 1, MAX_IMAGES)
    except InputError as err:
        raise DemoInputError.of(err) from None


class Condition(NamedTuple):
    """What one model is asked for: the pipeline's keyword arguments and a caption for people."""

    labels: object  # as the user gave them (None: no condition); the core checks them
    prompt: object
    guidance: object
    caption: str


def condition_from_boxes(entry: ModelEntry, label: object, prompt: object, guidance: object) -> Condition:
    """Generate: what the boxes mean, and nothing more; whether the model can take it is the core's call.

    A blank label box means no label. A blank prompt box means no prompt for a model that
    reads no prompts; a text model gets a blank prompt as it is, so the core says it is empty
    (almost always a slip). The caption is only shown once the core has accepted the request.
    """
    label = None if _blank(label) else label
    prompt = None if entry.condition != "text" and _blank(prompt) else prompt
    if entry.condition == "class":
        caption = f"label: {str(label).strip()}" if label is not None else "no label (unconditional sample)"
    elif entry.condition == "text":
        caption = f"prompt: {str(prompt).strip()!r}" if prompt is not None else "no prompt (unconditional sample)"
    else:
        caption = "unconditional"
    return Condition(label, prompt, guidance, caption)


def condition_for_many(entry: ModelEntry, label: object, prompt: object, guidance: object) -> Condition:
    """Compare: one request across models of every kind, so each takes what it can read.

    A class model uses the label; a text model the prompt, or the label's caption when no
    prompt is written (so one label compares class and text models); an unconditional model
    ignores the condition and guidance, and its caption says so. Nothing is checked here:
    the core checks what each model is given.
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
    fid: str  # every FID the reports hold for the model, as one line
    condition: Condition
    fids: tuple[ShownFid, ...] = ()  # the same, as numbers (empty when there is none)


def open_upload(image: Image.Image | np.ndarray | str | Path) -> Image.Image:
    """An upload (a file in Gradio's cache, an array or a PIL image) as an upright PIL image; huge or broken refused.

    Messages name the file by its own name, never by its path in the server's cache.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        name = quote(path.name, 40)
        if path.stat().st_size > MAX_UPLOAD_BYTES:
            raise DemoInputError(f"The upload {name} is {path.stat().st_size / 2**20:.1f} MB; the limit is 10 MB.")
        try:
            image = Image.open(path)
            image.load()
        except Image.DecompressionBombError:
            raise DemoInputError(f"The image {name} has too many pixels to open safely; the limit is 40 "
                                 "megapixels.") from None
        except (OSError, SyntaxError, ValueError) as err:
            reason = ("its contents are not in an image format (PNG, JPEG, WebP...)"
                      if isinstance(err, UnidentifiedImageError) else "it is damaged or cut short")
            raise DemoInputError(f"That file is not an image this demo can read: {name}: {reason}.") from None
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image.astype(np.uint8) if image.dtype != np.uint8 else image)
    if image.width * image.height > MAX_UPLOAD_PIXELS:
        raise DemoInputError(f"The image is {image.width}x{image.height} pixels; the limit is 40 megapixels.")
    return ImageOps.exif_transpose(image)


def is_colour(image: Image.Image) -> bool:
    """Whether the picture has colour (a grey photo stored as RGB has none), to pick models trained on such data."""
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int16)
    return int(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).max()) > 8


def prepare_upload(image: Image.Image | np.ndarray | str | Path, resolution: int, channels: int) -> torch.Tensor:
    """Any mode or size to a (1, C, R, R) float tensor in [-1, 1]; huge uploads refused."""
    image = open_upload(image).convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (resolution, resolution), Image.Resampling.BICUBIC)
    return uint8_to_signed(as_uint8_nchw(np.array(image)[None]))  # a copy: PIL's buffer is read-only


def latent_pictures(latents: torch.Tensor, size: int) -> list[np.ndarray]:
    """Each latent channel as a gray picture (min-max scaled), enlarged to ``size`` for viewing."""
    pictures = []
    for channel in latents[0][:16]:
        c = channel.float()
        c = (c - c.min()) / (c.max() - c.min() + 1e-8)
        img = Image.fromarray(unit_to_uint8(c.numpy())).resize((size, size), Image.Resampling.NEAREST)
        pictures.append(np.asarray(img))
    return pictures


class Lab:
    """The demo's state: a model list and a cache of loaded pipelines (thread-safe)."""

    def __init__(self, model_dirs: list[Path] | None = None, report_dirs: list[Path] | None = None,
                 device: str = "auto", user_models: Sequence[str] = ()):
        """``model_dirs``: folders searched for zoo models (default models/ and runs/); ``user_models``:
        pipeline folders in any layout the core loads, or hub ids (online), added to the lists and
        loaded now, so a bad one fails at start-up in one line rather than at the first click."""
        self.device = resolve_device(device)
        self.report_dirs = report_dirs
        self.models = discover_models(model_dirs) if model_dirs else discover_models()
        self.autoencoders = discover_autoencoders(model_dirs) if model_dirs else discover_autoencoders()
        self._loaded: dict[str, LatentDiffusionPipeline] = {}
        for source in user_models:
            pipe = load_model(source, device=self.device, dtype=self._dtype())
            entry = user_model_entry(str(source), pipe)
            self.models = [m for m in self.models if m.name != entry.name] + [entry]
            self._loaded[entry.name] = pipe
        self._first_stages: dict[str, FirstStage] = {}
        self._lock = threading.Lock()

    def entry(self, name: str, autoencoders: bool = False) -> ModelEntry:
        """A pipeline by name or label (or, with ``autoencoders``, a stand-alone autoencoder too)."""
        for e in self.models + (self.autoencoders if autoencoders else []):
            if name in (e.name, e.label):
                return e
        raise DemoInputError(f"Unknown model {name!r}; pick one from the list.", "Model")

    @property
    def explorer_models(self) -> list[ModelEntry]:
        """What the Autoencoder explorer offers: stand-alone KL and VQ autoencoders, then the pipelines' own."""
        return self.autoencoders + [m for m in self.models if m.factor > 1]

    def first_stage(self, name: str) -> tuple[FirstStage, int, int]:
        """(first stage, resolution, image channels) of a pipeline or stand-alone autoencoder."""
        entry = self.entry(name, autoencoders=True)
        if not entry.first_stage_only:
            pipe = self.pipeline(name)
            return pipe.first_stage, pipe.resolution, pipe.image_channels
        with self._lock:
            if entry.name not in self._first_stages:
                vae = load_autoencoder(entry.path).to(self.device, torch.float32).eval()
                self._first_stages[entry.name] = FirstStage(vae)
            stage = self._first_stages[entry.name]
        return stage, entry.resolution, stage.image_channels

    def pipeline(self, name: str) -> LatentDiffusionPipeline:
        entry = self.entry(name)
        with self._lock:
            if entry.name not in self._loaded:
                self._loaded[entry.name] = load_pipeline(entry.path, device=self.device, dtype=self._dtype())
            return self._loaded[entry.name]

    def _dtype(self) -> torch.dtype | None:
        # shipped weights are fp16 to keep the repository small; compute in fp32 on CPU
        return torch.float32 if self.device.type == "cpu" else None

    def result_folders(self) -> tuple[dict[str, Path], Path | None]:
        """Every report or run folder the Results tab offers, by the name it shows, and the newest sweep's."""
        return result_folders(self.report_dirs) if self.report_dirs else result_folders()

    # --- the four actions ---------------------------------------------------------------

    def generate(self, model: str, sampler: object, steps: object, seed: object, n: object, trajectory: bool = False,
                 *, label: object = None, prompt: object = None,
                 guidance: object = 1.0) -> tuple[TimedSamples, Timing]:
        """Samples from one model; the core refuses what the model cannot take, in the demo's words."""
        entry, n = self.entry(model), _image_count(n)
        condition = condition_from_boxes(entry, label, prompt, guidance)
        request = self._check(entry, sampler, steps, seed, n, condition)
        return self._sample(entry, request, condition, trajectory)

    def compare(self, models: list[str], sampler: object, steps: object, seed: object, n: object = 1, *,
                label: object = None, prompt: object = None, guidance: object = 1.0) -> list[ComparedModel]:
        """The same seed (and condition, where a model reads one) through every chosen model.

        Every model's request is checked before the first one samples, so a bad input fails at once.
        """
        if not models:
            raise DemoInputError("Pick at least one model to compare.", "Models")
        n = _image_count(n)
        plans = []
        for name in models:
            entry = self.entry(name)
            condition = condition_for_many(entry, label, prompt, guidance)
            plans.append((entry, condition, self._check(entry, sampler, steps, seed, n, condition)))
        runs = [results for results, _ in (sweep_results(self.report_dirs) if self.report_dirs else sweep_results())]
        rows = []
        for entry, condition, request in plans:
            timed, timing = self._sample(entry, request, condition, False)
            fids = model_fids(runs, entry)
            rows.append(ComparedModel(entry, timed, timing, fid_line(fids), condition,
                                      tuple(fids) if isinstance(fids, list) else ()))
        return rows

    def _check(self, entry: ModelEntry, sampler: object, steps: object, seed: object, n: int,
               condition: Condition) -> SampleRequest:
        """The core's verdict on the raw values, its errors named by the demo's controls."""
        if seed is None:  # the core reads None as "fresh noise"; the demo always shows a reproducible sample
            raise DemoInputError("Seed: write a whole number (the same seed gives the same images).", "Seed")
        try:
            return self.pipeline(entry.name).check_inputs(n, steps, sampler, seed, condition.labels, condition.prompt,
                                                          condition.guidance)
        except InputError as err:
            raise DemoInputError.of(err) from None

    def _sample(self, entry: ModelEntry, request: SampleRequest, condition: Condition,
                trajectory: bool) -> tuple[TimedSamples, Timing]:
        """Sample a checked request through the harness's timing path (one code path for every action).

        The checked values are passed on, so the guidance shown is the one used (1 when a
        conditional model is asked for no condition).
        """
        timed = timed_sampling(self.pipeline(entry.name), request.num_images, request.steps, request.scheduler,
                               seed=request.seed, batch_size=MAX_IMAGES, return_trajectory=trajectory,
                               labels=condition.labels, prompt=condition.prompt, guidance_scale=request.guidance)
        return timed, Timing.of(timed, str(self.device), condition.caption, request.guidance)

    def reconstruct(self, image, models: list[str]) -> list[dict]:
        """The image through each model's first stage: reconstruction, PSNR/SSIM, latents."""
        if image is None:
            raise DemoInputError("Upload an image or pick one from the data set first.")
        if not models:
            raise DemoInputError("Pick at least one model.", "Models")
        out = []
        for name in models:
            entry = self.entry(name, autoencoders=True)
            stage, resolution, channels = self.first_stage(name)
            x = prepare_upload(image, resolution, channels).to(self.device)
            latents, recon = stage.reconstruct(x)
            real, recon = signed_to_unit(x.cpu()), signed_to_unit(recon.cpu())
            c, h, w = stage.latent_shape(resolution)
            out.append({
                "model": entry.label, "entry": entry, "factor": stage.factor, "kind": stage.kind,
                "input": unit_to_uint8(real.permute(0, 2, 3, 1).numpy())[0],
                "reconstruction": unit_to_uint8(recon.permute(0, 2, 3, 1).numpy())[0],
                "psnr": psnr(real, recon), "ssim": ssim(real, recon),
                "latent_shape": (c, h, w),
                "compression_ratio": (channels * resolution**2) / (c * h * w),
                "latents": latent_pictures(latents.cpu(), max(64, resolution)),
            })
        return out
