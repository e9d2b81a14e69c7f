"""The sampling pipeline every model folder carries, as one self-contained file (``pipeline.py``).

Why a second pipeline: the Hugging Face hub's convention for custom pipelines is one standalone
file at the model folder's root (``"_class_name": ["pipeline", "LDMLabPipeline"]`` in
``model_index.json``), which ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
imports without this repository on the path. :class:`pipelines.pipeline.LatentDiffusionPipeline`
leans on the rest of ``pipelines/`` (input checks, first stages, trajectories), so it cannot be
copied alone. This module imports only torch, numpy, diffusers and transformers, samples exactly as
that pipeline does -- the same per-image seeds, DDIM or DDPM, classifier-free guidance, latents
decoded through the vae divided by its ``scaling_factor`` -- and a golden test checks that both give
the same images for a fixed seed (tests/test_model_folders.py). The exporter copies it verbatim into
every model folder; a test fails when a folder's copy differs from this file.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor


def image_generators(seed: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, i): image i of a seed never depends on the batch."""
    return [torch.Generator("cpu").manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))
            for i in range(count)]


def _per_image(values: Sequence | str | int, count: int, what: str) -> list:
    items = [values] if isinstance(values, (str, int)) else list(values)
    if len(items) == 1:
        return items * count
    if len(items) != count:
        raise ValueError(f"Give one {what} or one per image ({count}); got {len(items)}.")
    return items


class LDMLabPipeline(DiffusionPipeline):
    """An LDM Lab model: pixel-space (no ``vae``) or latent diffusion, unconditional, class or text.

    ``pipe(num_images=4, num_inference_steps=50, seed=0)`` for an unconditional model;
    add ``labels=["ankle boot"]`` (class models: names or indices) or ``prompt="a photo of a dress"``
    (text models) and ``guidance_scale=3.0`` for classifier-free guidance. ``images`` are floats in
    [0, 1] of shape (n, H, W, C) (``output_type="pil"``: PIL images).
    """

    model_cpu_offload_seq = "condition_encoder->unet->vae"
    _optional_components = ["vae", "condition_encoder", "tokenizer"]

    def __init__(self, unet, scheduler, vae=None, condition_encoder=None, tokenizer=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae, condition_encoder=condition_encoder,
                              tokenizer=tokenizer)

    @property
    def condition(self) -> str:
        """'none', 'class' or 'text'."""
        if self.condition_encoder is None:
            return "none"
        return "class" if hasattr(self.condition_encoder, "null_id") else "text"

    def _tokens(self, texts: list[str]) -> torch.Tensor:
        length = self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", truncation=False)["input_ids"]
        if any(len(row) > length for row in ids):
            raise ValueError(f"A prompt is too long: this model reads at most {length - 2} tokens.")
        return torch.tensor(ids, dtype=torch.long)

    def _condition_ids(self, count: int, labels, prompt) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(asked, null) condition ids; None for an unconditional model."""
        if self.condition == "none":
            if labels is not None or prompt is not None:
                raise ValueError("This model is unconditional: it takes no label or prompt.")
            return None
        if self.condition == "class":
            if prompt is not None:
                raise ValueError("This model is class-conditional: give labels, not a prompt.")
            null = torch.full((count,), self.condition_encoder.null_id, dtype=torch.long)
            if labels is None:
                return null, null
            asked = [self.condition_encoder.label_id(v) for v in _per_image(labels, count, "label")]
            return torch.tensor(asked, dtype=torch.long), null
        if labels is not None:
            raise ValueError("This model is text-conditional: give a prompt, not labels.")
        null = self._tokens([""]).repeat(count, 1)
        if prompt is None:
            return null, null
        prompts = [str(p).strip() for p in _per_image(prompt, count, "prompt")]
        if not all(prompts):
            raise ValueError("The prompt is empty: write what to draw, e.g. 'a photo of an ankle boot'.")
        return self._tokens(prompts), null

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        if self.condition == "class":
            tokens = self.condition_encoder(ids)
        else:
            tokens = self.condition_encoder(input_ids=ids).last_hidden_state
        return tokens.to(self.unet.dtype)

    def _epsilon(self, model_in, t, cond, null, guidance: float) -> torch.Tensor:
        if cond is None:
            return self.unet(model_in, t).sample.float()
        if null is None:
            return self.unet(model_in, t, encoder_hidden_states=cond).sample.float()
        both = self.unet(torch.cat([model_in, model_in]), t, encoder_hidden_states=torch.cat([null, cond])).sample
        eps_null, eps_cond = both.float().chunk(2)
        return eps_null + guidance * (eps_cond - eps_null)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        if self.vae is not None:
            latents = self.vae.decode(latents.to(self.vae.dtype) / float(self.vae.config.scaling_factor)).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()

    @torch.no_grad()
    def __call__(self, num_images: int = 1, num_inference_steps: int = 50, scheduler: str = "ddim",
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int | None = None,
                 eta: float = 0.0, labels=None, prompt=None, guidance_scale: float = 1.0,
                 output_type: str = "np", return_dict: bool = True):
        """Draw ``num_images`` samples; ``seed`` gives image i the same noise in any batch, on any device."""
        if scheduler not in ("ddim", "ddpm"):
            raise ValueError(f"Unknown scheduler {scheduler!r}; choose 'ddim' or 'ddpm'.")
        ids = self._condition_ids(num_images, labels, prompt)
        guidance = 1.0 if labels is None and prompt is None else float(guidance_scale)
        cond = null = None
        if ids is not None:
            cond = self._encode(ids[0])
            null = self._encode(ids[1]) if guidance != 1.0 else None
        if generator is None and seed is not None:
            generator = image_generators(seed, num_images)
        sampler_cls = DDIMScheduler if scheduler == "ddim" else DDPMScheduler
        sampler = sampler_cls.from_config(self.scheduler.config)
        sampler.set_timesteps(num_inference_steps)
        size = self.unet.config.sample_size
        shape = (num_images, self.unet.config.in_channels, size, size)
        x = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=torch.float32)
        x = (x * sampler.init_noise_sigma).to(self.device)
        step_kwargs = {"eta": eta} if scheduler == "ddim" else {}
        for t in self.progress_bar(sampler.timesteps.tolist()):
            model_in = sampler.scale_model_input(x, t).to(self.unet.dtype)
            eps = self._epsilon(model_in, t, cond, null, guidance)
            x = sampler.step(eps, t, x, generator=generator, **step_kwargs).prev_sample
        images = self._decode(x)
        if output_type == "pil":
            images = self.numpy_to_pil(images)
        return ImagePipelineOutput(images=images) if return_dict else (images,)
