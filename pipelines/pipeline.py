"""One diffusion pipeline for every compression factor.

``LatentDiffusionPipeline`` is a diffusers ``DiffusionPipeline`` whose optional ``vae`` is
the first stage: absent for pixel-space diffusion (f = 1), an ``AutoencoderKL`` or
``VQModel`` otherwise. The demo and the evaluation harness both sample through it;
:mod:`pipelines.loading` loads saved models into it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
    UNet2DModel,
    VQModel,
)
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedTokenizerFast

from .conditioning import (
    ConditionEncoder,
    condition_ids,
    condition_kind,
    encode_condition,
    validate_guidance,
)
from .errors import InputError, quote, whole_number
from .first_stage import FirstStage, count_parameters
from .images import save_png, signed_to_unit

SamplerName = Literal["ddim", "ddpm"]
SAMPLERS: tuple[str, ...] = ("ddim", "ddpm")
MAX_BATCH = 4096
MAX_SEED = 2**63 - 1


@dataclass
class SampleOutput(BaseOutput):
    """Images as float arrays in [0, 1], shape (n, H, W, C).

    ``trajectory_xt`` / ``trajectory_x0`` (when asked for) hold, for every step, the noisy
    sample x_t and the model's prediction of the clean image x0, decoded to images:
    arrays of shape (steps, n, H, W, C).
    """

    images: np.ndarray
    timesteps: list[int]
    trajectory_xt: np.ndarray | None = None
    trajectory_x0: np.ndarray | None = None


@dataclass(frozen=True)
class SampleRequest:
    """A checked sampling request (:meth:`LatentDiffusionPipeline.check_inputs`)."""

    num_images: int
    steps: int
    scheduler: str
    seed: int | None
    guidance: float
    condition: tuple[torch.Tensor, torch.Tensor] | None  # (asked, null) condition ids; None: unconditional model


def image_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: image ``i`` of ``seed`` never depends on the batch it is drawn in.

    The generator's seed mixes (seed, i) through NumPy's ``SeedSequence``, so the images of
    nearby seeds do not overlap (``seed + i`` would make image 1 of seed 0 image 0 of seed 1).
    """
    return [torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))
            for i in indices]


def make_scheduler(kind: SamplerName, config: dict) -> DDIMScheduler | DDPMScheduler:
    """A fresh sampler built from the training scheduler's config (same betas)."""
    if kind == "ddim":
        return DDIMScheduler.from_config(config)
    if kind == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"Unknown scheduler {kind!r}; choose 'ddim' or 'ddpm'.")


# The paper's code calls its schedule "linear" but spaces sqrt(beta) linearly (its make_beta_schedule squares a
# linspace of square roots): diffusers names that "scaled_linear". "linear" spaces beta itself linearly, which
# leaves less signal late in the chain (alpha-bar 1.7e-4 at t = 900 against the paper's 8.9e-4).
BETA_SCHEDULES = ("linear", "scaled_linear")


def default_train_scheduler(pixel_space: bool, num_train_timesteps: int = 1000,
                            beta_schedule: str = "linear") -> DDPMScheduler:
    """The noise schedule: betas 0.0015 -> 0.0195 over 1000 steps, as in the paper's LDM configs.

    ``beta_schedule`` "linear" (every shipped model so far) spaces the betas linearly; "scaled_linear" spaces
    their square roots linearly, as the paper's code does. x0 is clipped to [-1, 1] only in pixel space:
    latents have no such range.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise InputError(f"Unknown beta schedule {beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}.",
                         "beta_schedule")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=0.0015,
        beta_end=0.0195,
        prediction_type="epsilon",
        clip_sample=pixel_space,
    )


class LatentDiffusionPipeline(DiffusionPipeline):
    """Sample images with DDPM or DDIM at any factor f (f = 1 when ``vae`` is None).

    Conditional models add a ``condition_encoder`` (a ``ClassEmbedder``, or a
    ``CLIPTextModel`` with its ``tokenizer``) whose tokens the UNet's cross-attention reads.
    """

    model_cpu_offload_seq = "condition_encoder->unet->vae"
    _optional_components = ["vae", "condition_encoder", "tokenizer"]

    def __init__(
        self,
        unet: UNet2DModel | UNet2DConditionModel,
        scheduler: DDPMScheduler | DDIMScheduler,
        vae: AutoencoderKL | VQModel | None = None,
        condition_encoder: ConditionEncoder | None = None,
        tokenizer: PreTrainedTokenizerFast | None = None,
    ):
        super().__init__()
        self.register_modules(
            unet=unet, scheduler=scheduler, vae=vae, condition_encoder=condition_encoder, tokenizer=tokenizer
        )
        FirstStage(vae, unet.config.in_channels)  # validates the latent scale
        conditional = isinstance(unet, UNet2DConditionModel)
        if conditional != (condition_encoder is not None):
            raise ValueError("A cross-attention UNet needs a condition encoder, and only such a UNet takes one.")
        if condition_kind(condition_encoder) == "text" and tokenizer is None:
            raise ValueError("A text-conditional pipeline needs its tokenizer.")

    @property
    def condition(self) -> str:
        """'none', 'class' or 'text'."""
        return condition_kind(self.condition_encoder)

    @property
    def class_names(self) -> list[str]:
        return list(self.condition_encoder.config.class_names) if self.condition == "class" else []

    @property
    def first_stage(self) -> FirstStage:
        return FirstStage(self.vae, self.unet.config.in_channels)

    @property
    def factor(self) -> int:
        return self.first_stage.factor

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.factor

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.out_channels if self.vae is not None else self.unet.config.out_channels)

    def parameter_counts(self) -> dict[str, int]:
        return {"unet": count_parameters(self.unet), "vae": count_parameters(self.vae),
                "condition_encoder": count_parameters(self.condition_encoder)}

    def check_inputs(
        self,
        num_images: object = 1,
        num_inference_steps: object = 50,
        scheduler: object = "ddim",
        seed: object = None,
        labels: Sequence[int | str] | int | str | None = None,
        prompt: Sequence[str] | str | None = None,
        guidance_scale: object = 1.0,
    ) -> SampleRequest:
        """The one place that decides what a sampling request may be; clear errors before any work.

        Raises :class:`~pipelines.errors.InputError` (``ConditionError`` for conditions) whose
        ``field`` is the keyword argument at fault. With no label or prompt a conditional model
        samples its unconditional ("null") model, where guidance changes nothing, so the
        guidance branch is skipped (g = 1).
        """
        limit = int(self.scheduler.config.num_train_timesteps)
        steps = whole_number(num_inference_steps, "num_inference_steps", "Steps", 1, limit)
        n = whole_number(num_images, "num_images", "Number of images", 1, MAX_BATCH)
        if scheduler not in SAMPLERS:
            raise InputError(f"Unknown scheduler {quote(scheduler)}; choose {' or '.join(SAMPLERS)}.", "scheduler")
        seed = None if seed is None else whole_number(seed, "seed", "Seed", 0, MAX_SEED)
        guidance = validate_guidance(guidance_scale, self.condition)
        ids = condition_ids(self.condition_encoder, self.tokenizer, n, labels, prompt)
        if labels is None and prompt is None:
            guidance = 1.0
        return SampleRequest(n, steps, str(scheduler), seed, guidance, ids)

    @torch.no_grad()
    def __call__(
        self,
        num_images: int = 1,
        num_inference_steps: int = 50,
        scheduler: SamplerName = "ddim",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        eta: float = 0.0,
        return_trajectory: bool = False,
        labels: Sequence[int | str] | int | str | None = None,
        prompt: Sequence[str] | str | None = None,
        guidance_scale: float = 1.0,
        progress: bool = False,
    ) -> SampleOutput:
        """Draw ``num_images`` samples.

        ``seed`` gives every image its own CPU generator (:func:`image_generators`): image i
        of seed s is the same whatever the batch it is drawn in and on every device.
        ``generator`` (one, or one per image) is the diffusers-style alternative. ``labels`` (class models: names or
        indices) or ``prompt`` (text models), one for all images or one per image, pick the
        condition; none samples the learned unconditional model. ``guidance_scale`` g is
        classifier-free guidance, eps = eps_null + g (eps_cond - eps_null): at g = 1 only the
        conditional branch runs, so the result is exactly the plain conditional model.
        """
        request = self.check_inputs(num_images, num_inference_steps, scheduler, seed, labels, prompt, guidance_scale)
        num_images, guidance, ids = request.num_images, request.guidance, request.condition
        cond_tokens = null_tokens = None
        if ids is not None:
            cond_tokens = encode_condition(self.condition_encoder, ids[0].to(self.device)).to(self.unet.dtype)
            if guidance != 1.0:
                null_tokens = encode_condition(self.condition_encoder, ids[1].to(self.device)).to(self.unet.dtype)
        if generator is None and request.seed is not None:
            generator = image_generators(request.seed, range(num_images))
        sampler = make_scheduler(request.scheduler, self.scheduler.config)
        sampler.set_timesteps(request.steps)
        first_stage = self.first_stage
        unet_dtype = self.unet.dtype
        shape = (num_images, self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        x = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        x = (x * sampler.init_noise_sigma).to(self.device)
        step_kwargs = {"eta": eta} if request.scheduler == "ddim" else {}
        xts, x0s = [], []
        timesteps = sampler.timesteps.tolist()
        iterator = self.progress_bar(timesteps) if progress else timesteps
        for t in iterator:
            model_in = sampler.scale_model_input(x, t).to(unet_dtype)
            if cond_tokens is None:
                eps = self.unet(model_in, t).sample.float()
            elif null_tokens is None:
                eps = self.unet(model_in, t, encoder_hidden_states=cond_tokens).sample.float()
            else:  # one batched pass for both branches of classifier-free guidance
                both = self.unet(torch.cat([model_in, model_in]), t,
                                 encoder_hidden_states=torch.cat([null_tokens, cond_tokens])).sample.float()
                eps_null, eps_cond = both.chunk(2)
                eps = eps_null + guidance * (eps_cond - eps_null)
            out = sampler.step(eps, t, x, generator=generator, **step_kwargs)
            x = out.prev_sample
            if return_trajectory:
                xts.append(self._to_images(first_stage, x))
                x0s.append(self._to_images(first_stage, out.pred_original_sample))
        return SampleOutput(
            images=self._to_images(first_stage, x),
            timesteps=[int(t) for t in timesteps],
            trajectory_xt=np.stack(xts) if return_trajectory else None,
            trajectory_x0=np.stack(x0s) if return_trajectory else None,
        )

    def _to_images(self, first_stage: FirstStage, latents: torch.Tensor) -> np.ndarray:
        vae_dtype = self.vae.dtype if self.vae is not None else latents.dtype
        return signed_to_unit(first_stage.decode(latents.to(vae_dtype))).permute(0, 2, 3, 1).cpu().numpy()


class _EmptyFp32ListFilter(logging.Filter):
    """Drops diffusers' "modules ... should be kept in float32: []" warning when the list is empty.

    diffusers (0.42) warns on every ``.to(dtype)`` of a model whose ``_keep_in_fp32_modules`` is
    an empty list, i.e. when there is nothing to keep in float32: every fp16 model load printed
    it. A warning that names modules (a non-empty list) still goes through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_EmptyFp32ListFilter())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("Device 'cuda' was asked for, but this machine has no CUDA GPU (use 'cpu').", "device")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"Unknown device {quote(name)}; use auto, cpu or cuda.", "device")
    return torch.device(name)


def save_images(images: np.ndarray, out: Path, start: int = 0, prefix: str = "sample") -> list[Path]:
    """Write float images in [0, 1] as PNG files ``PREFIX_NNNNN.png``, each atomically."""
    return [save_png(img, out / f"{prefix}_{start + i:05d}.png") for i, img in enumerate(images)]
