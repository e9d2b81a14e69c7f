"""Timed sampling and peak memory: the one way the CLI, the harness and the demo draw samples.

:func:`sample_batches` is the only batcher. It draws image ``i`` of seed ``s`` with that
image's own generator (:func:`pipelines.pipeline.image_generators`), so the noise never
depends on the batch size: ``sample --batch-size 16`` and ``--batch-size 64``, the harness's
timed sampling and the demo's Generate all start image i from the same noise and give the
same image for the same model, seed, steps and condition -- up to float round-off, because
CPU kernels pick their algorithm by batch size (a PNG pixel can land one level apart; the
same batch size is bit-identical).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError, whole_number
from .memory import MemoryReading, PeakMemory, Stopwatch, measures_without_overhead
from .pipeline import (
    MAX_BATCH,
    LatentDiffusionPipeline,
    SampleOutput,
    SampleRequest,
    image_generators,
)
from .speedups import is_compiled, sampling_plan, with_eager_fallback

Condition = Sequence[int | str] | int | str | None
MAX_IMAGES = 10_000_000  # per request; each batch is at most MAX_BATCH
WARMUP_SAMPLES = 2


@dataclass
class TimedSamples:
    """Samples with how long they took and how much memory they needed."""

    images: np.ndarray  # float NHWC in [0, 1]
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


def _slice(values: Condition, start: int, n: int) -> Condition:
    """One condition for every image stays as it is; one per image is cut to this batch."""
    if values is None or isinstance(values, (str, int)):
        return values
    values = list(values)
    return values if len(values) == 1 else values[start : start + n]


def _check_request(pipe, num_images, steps, scheduler, seed, batch_size, labels, prompt,
                   guidance_scale) -> tuple[int, int, SampleRequest]:
    """(images, batch size, the first batch's checked request); every distinct condition checked by the pipeline."""
    num_images = whole_number(num_images, "num_images", "Number of images", 1, MAX_IMAGES)
    batch_size = whole_number(batch_size, "batch_size", "Batch size", 1, MAX_BATCH)
    request = pipe.check_inputs(min(num_images, batch_size), steps, scheduler, 0 if seed is None else seed,
                                _slice(labels, 0, 1), _slice(prompt, 0, 1), guidance_scale)
    for field, values in (("labels", labels), ("prompt", prompt)):
        if values is None or isinstance(values, (str, int)):
            continue
        values = list(values)
        if len(values) not in (1, num_images):
            raise InputError(f"Give one {'label' if field == 'labels' else 'prompt'} or one per image ({num_images}); "
                             f"got {len(values)}.", field)
        for value in dict.fromkeys(values):
            pipe.check_inputs(1, steps, scheduler, request.seed, **{field: value}, guidance_scale=guidance_scale)
    return num_images, batch_size, request


MEMORY_PASS_STEPS = 2  # denoising steps of the untimed memory pass (one step's peak is every step's)


def sample_batches(
    pipe: LatentDiffusionPipeline,
    num_images: int,
    steps: int,
    scheduler: str = "ddim",
    seed: int = 0,
    batch_size: int = 64,
    labels: Condition = None,
    prompt: Condition = None,
    guidance_scale: float = 1.0,
    return_trajectory: bool = False,
    eta: float = 0.0,
) -> Iterator[tuple[int, SampleOutput]]:
    """Yield ``(first image index, output)`` per batch; the whole request is checked before any work.

    ``labels`` / ``prompt`` are one condition for all images or one per image; no seed means seed 0. With a
    compiled denoiser (CUDA graphs want one shape) a last, smaller batch is drawn full and cut: each image has
    its own generator, so the images it keeps are the same.
    """
    num_images, batch_size, request = _check_request(pipe, num_images, steps, scheduler, seed, batch_size, labels,
                                                     prompt, guidance_scale)
    fixed = is_compiled(pipe.unet) and not return_trajectory
    for start in range(0, num_images, batch_size):
        n = min(batch_size, num_images - start)
        drawn = batch_size if fixed else n
        out = with_eager_fallback(lambda: pipe(
            num_images=drawn, num_inference_steps=request.steps, scheduler=request.scheduler,
            generator=image_generators(request.seed, range(start, start + drawn)),
            return_trajectory=return_trajectory, labels=_padded(labels, start, n, drawn),
            prompt=_padded(prompt, start, n, drawn), guidance_scale=guidance_scale, eta=eta,
        ), [pipe.unet])
        if drawn != n:
            out.images = out.images[:n]
        yield start, out


def _padded(values: Condition, start: int, n: int, drawn: int) -> Condition:
    """This batch's conditions, the last repeated to fill a padded batch."""
    values = _slice(values, start, n)
    if values is None or isinstance(values, (str, int)) or drawn == n or len(values) == 1:
        return values
    return values + [values[-1]] * (drawn - n)


def timed_sampling(
    pipe: LatentDiffusionPipeline,
    num_images: int,
    steps: int,
    scheduler: str = "ddim",
    seed: int = 0,
    batch_size: int = 250,
    return_trajectory: bool = False,
    labels: Condition = None,
    prompt: Condition = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    speedups: str = "auto",
) -> TimedSamples:
    """All batches of :func:`sample_batches`, timed, with the peak memory of one batch.

    On CUDA one pass gives both (the allocator's counters cost nothing). Elsewhere the memory
    accounting (a dispatch mode, see :mod:`pipelines.memory`) slows every operator, so the
    timed pass runs without it and the first batch -- the largest; batches are independent,
    so the request's peak is one batch's -- is drawn once more, untimed, to measure memory.
    Warm-up is the caller's business (the harness warms up once per model; the demo's
    models are warmed when they load).
    """
    plan = sampling_plan(speedups, pipe.device, num_images, steps)
    if plan.compile_mode and not is_compiled(pipe.unet):
        pipe.unet.compile(mode=plan.compile_mode, dynamic=False)
    args = (pipe, num_images, steps, scheduler, seed, batch_size, labels, prompt, guidance_scale, return_trajectory,
            eta)
    chunks, xts, x0s, timesteps = [], [], [], None
    one_pass = measures_without_overhead(pipe.device)
    with (PeakMemory if one_pass else Stopwatch)(pipe.device) as timer:
        for _, out in sample_batches(*args):
            chunks.append(out.images)
            timesteps = out.timesteps
            if return_trajectory:
                xts.append(out.trajectory_xt)
                x0s.append(out.trajectory_x0)
    reading = timer.reading if one_pass else _first_batch_memory(*args)
    cat = (lambda parts: np.concatenate(parts, axis=1)) if return_trajectory else (lambda parts: None)
    return TimedSamples(
        images=np.concatenate(chunks), seconds=timer.reading.seconds,
        peak_mb=reading.peak_mb, memory_method=reading.method, steps=steps, scheduler=scheduler,
        trajectory_xt=cat(xts), trajectory_x0=cat(x0s), timesteps=timesteps,
    )


def _first_batch_memory(pipe, num_images, steps, scheduler, seed, batch_size, labels, prompt, guidance_scale,
                        return_trajectory, eta) -> MemoryReading:
    """The peak memory of the request's first batch, drawn again under :class:`PeakMemory` (its images dropped).

    Each denoising step frees what the one before held, so the peak is one step's (and the decoder's) whatever
    the step count: the untimed pass takes at most ``MEMORY_PASS_STEPS`` steps. A trajectory, which keeps every
    step, is measured over all of them.
    """
    n = min(whole_number(num_images, "num_images", "Number of images", 1, MAX_IMAGES),
            whole_number(batch_size, "batch_size", "Batch size", 1, MAX_BATCH))
    watched = steps if return_trajectory else min(steps, MEMORY_PASS_STEPS)
    with PeakMemory(pipe.device) as mem:
        for _ in sample_batches(pipe, n, watched, scheduler, seed, n, _slice(labels, 0, n), _slice(prompt, 0, n),
                                guidance_scale, return_trajectory, eta):
            pass
    return MemoryReading(mem.reading.peak_mb, f"{mem.reading.method}, first batch in an untimed pass of "
                                              f"{watched} step(s)")


def warm_up(pipe: LatentDiffusionPipeline, **condition: object) -> None:
    """One short untimed sample, so the first timed batch does not pay for lazy initialisation."""
    pipe(num_images=WARMUP_SAMPLES, num_inference_steps=2, seed=0, **condition)
