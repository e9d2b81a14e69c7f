"""Training a denoiser on cached latents (or pixels, f = 1): the DDPM objective on the shared loop.

:func:`train_diffusion` builds the pipeline for a first stage (none, KL or VQ), encodes the
data set once (:mod:`pipelines.latent_cache`) and trains its UNet -- with a condition encoder
for class- or text-conditional models -- through :func:`pipelines.training.run_training`,
then saves the EMA pipeline with its :class:`~pipelines.training_summary.TrainingSummary`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from transformers import PreTrainedTokenizerFast

from .callbacks import Callback
from .checkpoint import TrainState
from .conditioning import (
    CONDITION_KINDS,
    ConditionEncoder,
    ConditionKind,
    build_condition_encoder,
    encode_condition,
)
from .denoiser import DenoiserSpec, build_denoiser
from .first_stage import Autoencoder, FirstStage, check_factor, load_autoencoder
from .latent_cache import LatentCache, cached_latents
from .pipeline import LatentDiffusionPipeline, default_train_scheduler
from .training import (
    TrainConfig,
    TrainingError,
    load_training_data,
    make_accelerator,
    run_training,
    summarize,
)
from .training_summary import TrainingSummary

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
    beta_schedule: str = "linear"  # or "scaled_linear", the paper's code's spacing (checked by default_train_scheduler)

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
    condition_width: int = 64, beta_schedule: str = "linear",
) -> LatentDiffusionPipeline:
    """An untrained pipeline for this first stage, its UNet matched to ``param_budget``."""
    first_stage = FirstStage(vae, image_channels)
    channels, side, _ = first_stage.latent_shape(resolution)
    cross = condition_width if condition_encoder is not None else None
    unet = build_denoiser(DenoiserSpec(side=side, channels=channels, param_budget=param_budget, cross_attention_dim=cross))
    scheduler = default_train_scheduler(vae is None, num_train_timesteps, beta_schedule)
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
                                    encoder, tokenizer, cfg.condition_width, cfg.beta_schedule)
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
    if cfg.beta_schedule != "linear":  # the same: only when set
        run_key["beta_schedule"] = cfg.beta_schedule
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
