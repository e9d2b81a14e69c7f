"""Training loops for autoencoders and diffusion models, built on accelerate.

Both trainers share :func:`run_training`, which owns the loop: the budget (steps or
wall-clock seconds), the progress bar, EMA, peak memory, atomic checkpoints, resuming, and
callbacks -- an evaluation at chosen points of training (:class:`Milestones`, e.g. the
paper's Fig. 6 FID along training) or any progress hook -- so a caller measures inside one
run instead of restarting training per point. Each step draws its batch and noise from a
generator seeded by (seed, step, rank), so a run resumed from a checkpoint continues
exactly as the uninterrupted run would have.

The trainers return what they trained, in memory, with a typed :class:`TrainingSummary`
(also written to ``training.json`` beside the weights).
"""
from __future__ import annotations

import logging
import math
import platform
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from .checkpoint import (
    CheckpointError,
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .conditioning import CONDITION_KINDS, ConditionEncoder, ConditionKind, build_condition_encoder, encode_condition
from .data import ImageDataset, load_dataset
from .denoiser import DenoiserSpec, build_denoiser
from .errors import InputError
from .first_stage import (
    Autoencoder,
    FirstStage,
    check_factor,
    load_autoencoder,
)
from .latent_cache import LatentCache, cached_latents
from .memory import MemoryReading, PeakMemory
from .pipeline import LatentDiffusionPipeline, default_train_scheduler
from .results import TrainingSummary

log = logging.getLogger(__name__)

MixedPrecision = Literal["no", "fp16", "bf16"]
MAX_STEPS = 10_000_000


class TrainingError(InputError):
    """A training request that cannot run as asked (``field`` names the setting at fault)."""


@dataclass
class TrainConfig:
    """Settings common to every training run."""

    out: Path
    max_steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 64
    learning_rate: float = 2e-4
    checkpoint_every: int = 500
    seed: int = 0
    resume: bool = False
    mixed_precision: MixedPrecision = "no"
    cpu: bool = False
    progress: bool = True
    max_images: int | None = None  # train on the first N images only (quick runs, tests)
    ema_power: float = 0.75  # diffusers' example: inv_gamma 1, power 3/4, max decay 0.9999
    warmup_steps: int = 0  # learning rate rises linearly over these first steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 over the budget

    def validate(self) -> None:
        if (self.max_steps is None) == (self.max_seconds is None):
            raise TrainingError("Give exactly one budget: a number of steps (max_steps) or of seconds (max_seconds).",
                                "max_steps")
        if self.max_steps is not None and not 1 <= self.max_steps <= MAX_STEPS:
            raise TrainingError(f"The step budget must be from 1 to {MAX_STEPS} (got {self.max_steps}).", "max_steps")
        if self.max_seconds is not None and not 0 < self.max_seconds <= 30 * 86400:
            raise TrainingError(f"The time budget must be positive and at most 30 days (got {self.max_seconds} s).",
                                "max_seconds")
        if not 1 <= self.checkpoint_every <= MAX_STEPS:
            raise TrainingError(f"Checkpoints must come every 1 to {MAX_STEPS} steps (got {self.checkpoint_every}).",
                                "checkpoint_every")
        if not 1 <= self.batch_size <= 65536:
            raise TrainingError(f"Batch size must be from 1 to 65536 (got {self.batch_size}).", "batch_size")
        if not 0 <= self.warmup_steps <= MAX_STEPS:
            raise TrainingError(f"Warm-up steps must be from 0 to {MAX_STEPS} (got {self.warmup_steps}).",
                                "warmup_steps")
        if self.lr_schedule not in ("constant", "cosine"):
            raise TrainingError(f"Unknown learning-rate schedule {self.lr_schedule!r}; choose constant or cosine.",
                                "lr_schedule")
        if self.max_images is not None and self.max_images < 1:
            raise TrainingError(f"The number of training images must be positive (got {self.max_images}).",
                                "max_images")


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: EMAModel | None
    state: TrainState
    device: str
    num_processes: int
    step_seconds: list[float] = field(default_factory=list)  # this process's steps (benchmarks)
    peak_memory: MemoryReading | None = None  # the largest of the training steps' peaks
    resumed_at_step: int = 0  # the checkpoint's step this call continued from (0: it began from scratch)

    @property
    def images_per_second(self) -> float:
        return self.state.images / self.state.seconds if self.state.seconds > 0 else float("nan")


# (model, the step's generator, progress so far) -> loss. Progress (step, seconds) lets an
# objective switch terms on late (the first stage's discriminator) from checkpointed state.
LossFn = Callable[[torch.nn.Module, torch.Generator, TrainState], torch.Tensor]


@dataclass
class Snapshot:
    """What a callback sees after a training step (on the main process only).

    ``evaluating()`` yields the trained artefact (a pipeline, an autoencoder) with the EMA
    weights swapped in and in eval mode, then restores the training weights.
    """

    state: TrainState
    finished: bool
    _model: torch.nn.Module
    _ema: EMAModel | None
    _artefact: Any

    @contextmanager
    def evaluating(self) -> Iterator[Any]:
        if self._ema is not None:
            self._ema.store(self._model.parameters())
            self._ema.copy_to(self._model.parameters())
        self._model.eval()
        try:
            yield self._artefact
        finally:
            self._model.train()
            if self._ema is not None:
                self._ema.restore(self._model.parameters())


Callback = Callable[[Snapshot], None]


class Milestones:
    """Call ``fn(snapshot, point)`` once when training first reaches each target (steps or seconds).

    Points are numbered from 1. A run resumed past a target calls it at its first step; the
    end of training reaches every target left.
    """

    def __init__(self, targets: Sequence[float], unit: Literal["steps", "seconds"],
                 fn: Callable[[Snapshot, int], None]):
        self.targets, self.unit, self.fn = list(targets), unit, fn
        self._reached: set[int] = set()

    @classmethod
    def evenly(cls, budget: float, points: int, unit: Literal["steps", "seconds"],
               fn: Callable[[Snapshot, int], None]) -> "Milestones":
        """``points`` targets spread evenly up to ``budget`` (whole steps when counting steps)."""
        targets = [budget * i / points for i in range(1, points + 1)]
        return cls([int(t) for t in targets] if unit == "steps" else targets, unit, fn)

    def __call__(self, snapshot: Snapshot) -> None:
        progress = snapshot.state.step if self.unit == "steps" else snapshot.state.seconds
        for point, target in enumerate(self.targets, 1):
            if point not in self._reached and (progress >= target or snapshot.finished):
                self._reached.add(point)
                self.fn(snapshot, point)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """All randomness of one step on one rank: reproducible from (seed, step, rank) alone."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 4099 + rank)


def learning_rate_scale(cfg: TrainConfig, state: TrainState) -> float:
    """The share of the peak learning rate at this point of training: warm-up, then constant or cosine.

    Written here rather than taken from ``diffusers.optimization.get_scheduler`` because a
    wall-clock budget does not know its step count in advance (the cosine follows the share
    of the budget spent), and because a value derived from checkpointed progress alone keeps
    resuming exact without a scheduler state to save.
    """
    scale = min(1.0, (state.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine":
        spent = state.step / cfg.max_steps if cfg.max_steps is not None else state.seconds / float(cfg.max_seconds or 1)
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, spent)))
    return scale


def run_training(
    model: torch.nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    accelerator: Accelerator,
    use_ema: bool,
    run_key: dict,
    callbacks: Sequence[Callback] = (),
    artefact: Any = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Optimise ``model`` on ``loss_fn`` within the budget, checkpointing atomically.

    After every step (and once more when the budget is spent) each callback gets a
    :class:`Snapshot` on the main process; ``artefact`` is what ``Snapshot.evaluating``
    yields (the pipeline being trained, say). Time spent in callbacks is not training
    time: it counts neither toward the budget nor in the throughput. ``param_groups``
    (AdamW groups, e.g. the discriminator's own betas) replaces "all parameters alike".
    """
    cfg.validate()
    cfg.out.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(param_groups or model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    peak_rates = [group["lr"] for group in optimizer.param_groups]
    # foreach: one fused update over all tensors instead of a Python loop (measured about 1.4x faster
    # for the EMA step on 2 CPU cores, the same values).
    ema = (EMAModel(model.parameters(), use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power, foreach=True)
           if use_ema else None)
    state = TrainState(run_key=run_key)
    resumed_at = 0
    checkpoint = latest_checkpoint(cfg.out)
    if checkpoint is not None and not cfg.resume:
        raise TrainingError(
            f"'{cfg.out}' already holds checkpoints (latest {checkpoint.name}): resume the run or choose a new "
            "output folder.", "resume"
        )
    model.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, ema)
        if state.run_key != run_key:
            raise CheckpointError(
                f"Checkpoint {checkpoint} was made with other settings ({state.run_key}); "
                f"this run asks for {run_key}. Use a new output folder."
            )
        log.info("Resuming from %s (step %d).", checkpoint, state.step)
        resumed_at = state.step
    model.train()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    per_step_images = cfg.batch_size * accelerator.num_processes
    bar = tqdm(
        total=cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.max_seconds),
        initial=state.step if cfg.max_steps is not None else int(state.seconds),
        unit="step" if cfg.max_steps is not None else "s",
        desc=f"Training {cfg.out.name}",
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )

    resumed_times = list(state.step_times)  # a resumed run's estimate until its own steps are timed

    def recent_step_times() -> list[float]:
        return (resumed_times + step_seconds[1:])[-10:]

    def finished() -> bool:
        if cfg.max_steps is not None:
            return state.step >= cfg.max_steps
        # Stop when the next step, as long as the recent ones (median of the last 10; the first step
        # carries one-time warm-up costs and predicts nothing), would overrun the budget: the model
        # then trains within about one step's time *under* the budget instead of up to a step over it
        # (a 60 s budget once reported 76 s).
        recent = recent_step_times()
        next_step = statistics.median(recent) if recent else 0.0
        done = torch.tensor(float(state.seconds + next_step > cfg.max_seconds), device=accelerator.device)
        return bool(accelerator.reduce(done, reduction="max").item())  # every rank stops together

    def notify(done: bool) -> None:
        if callbacks and accelerator.is_main_process:
            snapshot = Snapshot(state, done, accelerator.unwrap_model(wrapped), ema, artefact)
            for callback in callbacks:
                callback(snapshot)
        if callbacks:
            accelerator.wait_for_everyone()

    smooth = None
    step_seconds: list[float] = []
    peak: MemoryReading | None = None
    while not finished():
        with PeakMemory(accelerator.device) as memory:
            generator = step_generator(cfg.seed, state.step, accelerator.process_index, accelerator.device)
            scale = learning_rate_scale(cfg, state)
            for group, peak_rate in zip(optimizer.param_groups, peak_rates):
                group["lr"] = peak_rate * scale
            with accelerator.autocast():
                loss = loss_fn(wrapped, generator, state)
            if not torch.isfinite(loss):
                raise TrainingError(f"Loss became {loss.item()} at step {state.step}; lower the learning rate.",
                                    "learning_rate")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(accelerator.unwrap_model(wrapped).parameters())
        elapsed = memory.reading.seconds
        if memory.reading.peak_mb is not None and (peak is None or memory.reading.peak_mb > peak.peak_mb):
            peak = memory.reading
        value = float(accelerator.reduce(loss.detach(), reduction="mean").item())
        state.step += 1
        state.seconds += elapsed
        step_seconds.append(elapsed)
        state.images += per_step_images
        state.losses.append(value)
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        bar.update(1 if cfg.max_steps is not None else int(state.seconds) - bar.n)
        bar.set_postfix(loss=f"{smooth:.4f}", img_s=f"{per_step_images / max(elapsed, 1e-9):.0f}")
        notify(done=False)  # before the checkpoint: a checkpoint never runs ahead of the evaluations
        state.step_times = recent_step_times()
        if state.step % cfg.checkpoint_every == 0:
            if accelerator.is_main_process:
                save_checkpoint(cfg.out, state, accelerator.unwrap_model(wrapped), optimizer, ema)
            accelerator.wait_for_everyone()
    bar.close()
    notify(done=True)
    model = accelerator.unwrap_model(wrapped)
    last = list_checkpoints(cfg.out)
    if accelerator.is_main_process and (not last or last[-1].name != f"step-{state.step:08d}"):
        save_checkpoint(cfg.out, state, model, optimizer, ema)
    accelerator.wait_for_everyone()
    model.eval()
    return TrainResult(model, ema, state, str(accelerator.device), accelerator.num_processes, step_seconds, peak,
                       resumed_at_step=resumed_at)


def load_training_data(dataset: str, resolution: int, channels: int | None, max_images: int | None) -> ImageDataset:
    data = load_dataset(dataset, resolution, channels, split="train")
    return data.subset(max_images) if max_images is not None else data


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this training; one process may train several models (an autoencoder in fp32,
    then a denoiser in bf16), and accelerate keeps the first one's precision process-wide unless its
    state is reset. The distributed state (``PartialState``, set by ``accelerate launch``) is kept."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != cfg.mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)


def summarize(result: TrainResult, cfg: TrainConfig, **facts: Any) -> TrainingSummary:
    """The :class:`~pipelines.results.TrainingSummary` of a finished run (``facts``: what the model is)."""
    peak = result.peak_memory
    return TrainingSummary(
        **facts,
        train_steps=result.state.step, train_seconds=round(result.state.seconds, 3),
        train_images=result.state.images, train_images_per_s=round(result.images_per_second, 3),
        final_loss=result.state.losses[-1] if result.state.losses else None, batch_size=cfg.batch_size,
        num_processes=result.num_processes, device=result.device, device_name=device_name(result.device),
        mixed_precision=cfg.mixed_precision, seed=cfg.seed,
        budget={"max_steps": cfg.max_steps, "max_seconds": cfg.max_seconds},
        peak_mem_train_mb=None if peak is None else round(peak.peak_mb, 1),
        memory_method="unavailable" if peak is None else f"{peak.method}, largest training step",
        resumed_at_step=result.resumed_at_step,
    )


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


# --- diffusion ---------------------------------------------------------------------------


MAX_SNR_GAMMA = 1000.0


def snr_gamma_problem(gamma: float) -> str | None:
    """What is wrong with a min-SNR gamma (None: nothing): the trainer and the sweeps, which refuse bad
    settings before any work starts, share this one check."""
    if 0.0 <= gamma <= MAX_SNR_GAMMA:
        return None
    return f"The min-SNR gamma must be from 0 (off) to {MAX_SNR_GAMMA:g} (got {gamma})."


@dataclass
class DiffusionTrainConfig(TrainConfig):
    factor: int = 1
    autoencoder: Path | None = None
    dataset: str = "fashion-mnist"
    resolution: int = 32
    channels: int | None = None
    param_budget: int = 1_000_000
    num_train_timesteps: int = 1000
    cache_dir: Path | None = None
    condition: ConditionKind = "none"
    condition_dropout: float = 0.1  # share of steps trained on "no condition" (classifier-free guidance)
    condition_width: int = 64  # token width of the condition encoder = the UNet's cross_attention_dim
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each timestep's loss is weighted by min(SNR, gamma) / SNR,
    # so the nearly clean timesteps, easy and many, stop dominating the gradient. 0 keeps the plain DDPM loss.
    snr_gamma: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.condition not in CONDITION_KINDS:
            raise TrainingError(f"Unknown condition {self.condition!r}; choose one of {', '.join(CONDITION_KINDS)}.",
                                "condition")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise TrainingError(f"Condition dropout must be from 0 to below 1 (got {self.condition_dropout}).",
                                "condition_dropout")
        if (problem := snr_gamma_problem(self.snr_gamma)) is not None:
            raise TrainingError(problem, "snr_gamma")
        if self.condition_width < 4 or self.condition_width % 4:
            raise TrainingError(f"The condition width must be a positive multiple of 4 (got {self.condition_width}).",
                                "condition_width")


class ConditionalDenoiser(torch.nn.Module):
    """UNet and condition encoder as one module, so they train (and sync, and EMA) together."""

    def __init__(self, unet: torch.nn.Module, encoder: ConditionEncoder):
        super().__init__()
        self.unet = unet
        self.encoder = encoder

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, condition: torch.Tensor):
        return self.unet(sample, timestep, encoder_hidden_states=encode_condition(self.encoder, condition))


def drop_conditions(ids: torch.Tensor, null: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace a share ``p`` of the conditions by "no condition" (classifier-free guidance)."""
    drop = torch.rand(ids.shape[0], generator=generator, device=ids.device) < p
    mask = drop.view(-1, *([1] * (ids.dim() - 1)))
    return torch.where(mask, null.to(ids.device).expand_as(ids), ids)


def diffusion_loss(
    unet: torch.nn.Module,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    generator: torch.Generator,
    snr_gamma: float = 0.0,
    **unet_kwargs: torch.Tensor,
) -> torch.Tensor:
    """The DDPM epsilon-prediction objective on one batch of (scaled) latents.

    ``snr_gamma`` > 0 weights each sample's error by min(SNR(t), gamma) / SNR(t) (min-SNR-gamma, with
    diffusers' ``compute_snr``); 0 is the plain mean squared error.
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    prediction = unet(noisy, t, **unet_kwargs).sample.float()
    if not snr_gamma:
        return F.mse_loss(prediction, noise.float())
    snr = compute_snr(scheduler, t)
    weights = torch.clamp(snr, max=snr_gamma) / snr
    per_sample = F.mse_loss(prediction, noise.float(), reduction="none").mean(dim=tuple(range(1, prediction.dim())))
    return (per_sample * weights).mean()


def sample_cached_batch(
    first_stage: FirstStage, cache: LatentCache, batch_size: int, generator: torch.Generator,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """A random batch of scaled latents from the cache (a fresh posterior sample for KL)."""
    if index is None:
        index = torch.randint(0, len(cache), (batch_size,), generator=generator, device=cache.mean.device)
    std = None if cache.std is None else cache.std[index]
    return first_stage.sample_latents(cache.mean[index], std, generator)


def build_diffusion_pipeline(
    vae: Autoencoder | None, resolution: int, image_channels: int, param_budget: int, num_train_timesteps: int = 1000,
    condition_encoder: ConditionEncoder | None = None, tokenizer: PreTrainedTokenizerFast | None = None,
    condition_width: int = 64,
) -> LatentDiffusionPipeline:
    """An untrained pipeline for this first stage, its UNet matched to ``param_budget``."""
    first_stage = FirstStage(vae, image_channels)
    channels, side, _ = first_stage.latent_shape(resolution)
    cross = condition_width if condition_encoder is not None else None
    unet = build_denoiser(DenoiserSpec(side=side, channels=channels, param_budget=param_budget, cross_attention_dim=cross))
    scheduler = default_train_scheduler(pixel_space=vae is None, num_train_timesteps=num_train_timesteps)
    return LatentDiffusionPipeline(unet=unet, scheduler=scheduler, vae=vae, condition_encoder=condition_encoder,
                                   tokenizer=tokenizer)


@dataclass
class TrainedDiffusion:
    pipeline: LatentDiffusionPipeline  # EMA weights, on the training device, in eval mode
    summary: TrainingSummary


def train_diffusion(cfg: DiffusionTrainConfig, callbacks: Sequence[Callback] = ()) -> TrainedDiffusion:
    """Train a denoiser on cached latents; save the EMA pipeline to ``cfg.out`` and return it.

    Callbacks' ``Snapshot.evaluating()`` yields the pipeline with the EMA weights so far.
    """
    cfg.validate()
    check_factor(cfg.factor, cfg.resolution)
    if cfg.factor == 1 and cfg.autoencoder is not None:
        raise TrainingError("f = 1 is pixel-space diffusion: it takes no autoencoder.", "autoencoder")
    if cfg.factor > 1 and cfg.autoencoder is None:
        raise TrainingError(f"f = {cfg.factor} needs a trained autoencoder folder.", "autoencoder")
    vae = load_autoencoder(cfg.autoencoder) if cfg.autoencoder is not None else None
    if vae is not None:
        first_stage = FirstStage(vae)
        if first_stage.factor != cfg.factor:
            raise TrainingError(f"The autoencoder in '{cfg.autoencoder}' has f = {first_stage.factor}, not {cfg.factor}.",
                                "autoencoder")
        if cfg.channels not in (None, vae.config.in_channels):
            raise TrainingError(f"The autoencoder takes {vae.config.in_channels}-channel images, not {cfg.channels}.",
                                "channels")
    channels = vae.config.in_channels if vae is not None else cfg.channels
    accelerator = make_accelerator(cfg)
    data = load_training_data(cfg.dataset, cfg.resolution, channels, cfg.max_images)
    torch.manual_seed(cfg.seed)
    encoder = tokenizer = cond_ids = null_ids = None
    if cfg.condition != "none":
        encoder, tokenizer, cond_ids, null_ids = build_condition_encoder(cfg.condition, data, cfg.condition_width)
        cond_ids, null_ids = cond_ids.to(accelerator.device), null_ids.to(accelerator.device)
    pipe = build_diffusion_pipeline(vae, cfg.resolution, data.channels, cfg.param_budget, cfg.num_train_timesteps,
                                    encoder, tokenizer, cfg.condition_width)
    first_stage = pipe.first_stage
    cache = cached_latents(first_stage, data, accelerator.device, cfg.cache_dir).to(accelerator.device)
    scheduler = pipe.scheduler
    model = pipe.unet if encoder is None else ConditionalDenoiser(pipe.unet, encoder)

    def loss_fn(net: torch.nn.Module, generator: torch.Generator, state: TrainState) -> torch.Tensor:
        if cond_ids is None:
            latents = sample_cached_batch(first_stage, cache, cfg.batch_size, generator)
            return diffusion_loss(net, scheduler, latents, generator, cfg.snr_gamma)
        index = torch.randint(0, len(cache), (cfg.batch_size,), generator=generator, device=cache.mean.device)
        latents = sample_cached_batch(first_stage, cache, cfg.batch_size, generator, index)
        condition = drop_conditions(cond_ids[index.to(cond_ids.device)], null_ids, cfg.condition_dropout, generator)
        return diffusion_loss(net, scheduler, latents, generator, cfg.snr_gamma, condition=condition)

    run_key = {
        "kind": "diffusion", "factor": cfg.factor, "dataset": cfg.dataset, "resolution": cfg.resolution,
        "param_budget": cfg.param_budget, "seed": cfg.seed, "batch_size": cfg.batch_size,
        "autoencoder": str(cfg.autoencoder) if cfg.autoencoder else None, "max_images": cfg.max_images,
    }
    if cfg.snr_gamma:  # only when set, so runs checkpointed before the option existed still resume
        run_key["snr_gamma"] = cfg.snr_gamma
    if cfg.condition != "none":
        run_key.update(condition=cfg.condition, condition_dropout=cfg.condition_dropout,
                       condition_width=cfg.condition_width)
    pipe.to(accelerator.device)
    result = run_training(model, loss_fn, cfg, accelerator, use_ema=True, run_key=run_key, callbacks=callbacks,
                          artefact=pipe)
    result.ema.copy_to(model.parameters())
    pipe.unet.eval()
    counts = pipe.parameter_counts()
    summary = summarize(
        result, cfg, factor=cfg.factor, kind=first_stage.kind, dataset=cfg.dataset, resolution=cfg.resolution,
        latent_shape=list(first_stage.latent_shape(cfg.resolution)), unet_params=counts["unet"],
        ae_params=counts["vae"], condition=cfg.condition, condition_params=counts["condition_encoder"],
        condition_dropout=cfg.condition_dropout if cfg.condition != "none" else None,
    )
    if accelerator.is_main_process:
        pipe.save_pretrained(cfg.out, safe_serialization=True)
        summary.save(cfg.out)
    accelerator.wait_for_everyone()
    return TrainedDiffusion(pipe, summary)
