"""First stages: the identity (f = 1) and KL / VQ autoencoders (f > 1).

The first stage is the only thing that differs between pixel-space diffusion and latent
diffusion, so everything downstream talks to it through :class:`FirstStage`, which hides
whether there is an autoencoder at all and applies the latent scale in one place.

The latent scale (``config.scaling_factor``) is 1/std of the latents measured on training
data (the paper's "scale_by_std"); a wrong value silently ruins samples, so it is checked
whenever a first stage is wrapped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, VQModel

from .errors import InputError

AutoencoderKind = Literal["kl", "vq"]
Autoencoder = AutoencoderKL | VQModel

FACTORS = (1, 2, 4, 8, 16, 32)
AUTOENCODER_KINDS = ("kl", "vq")

# The paper's public configs (autoencoder_kl_*, vq-f*): channel multipliers per factor.
# Large factors keep width low at the high resolutions and spend it where the image is
# small; f2 is not in the paper (we use [1, 2]).
CHANNEL_MULTIPLIERS: dict[int, tuple[int, ...]] = {
    2: (1, 2), 4: (1, 2, 4), 8: (1, 2, 4, 4), 16: (1, 1, 2, 2, 4), 32: (1, 1, 2, 2, 4, 4),
}
ATTENTION_FROM_FACTOR = 16  # the paper's configs attend only at the lowest resolutions of f16/f32
MIN_LATENT_SIDE = 2

# The paper's first-stage table (Tab. 8): latent channels per factor.
# VQ f2 is not in the paper; we use 2 channels like KL f2.
DEFAULT_LATENT_CHANNELS: dict[str, dict[int, int]] = {
    "kl": {2: 2, 4: 3, 8: 4, 16: 16, 32: 64},
    "vq": {2: 2, 4: 3, 8: 4, 16: 8, 32: 16},
}


class FirstStageError(InputError):
    """A first stage that cannot be built or trusted (bad factor, bad latent scale...)."""


def check_factor(factor: int, resolution: int | None = None, *, autoencoder: bool = False) -> None:
    """The one check of the factor rule: a known factor that divides the image, and -- for an
    autoencoder's latent (``autoencoder``, f > 1) -- a latent of at least MIN_LATENT_SIDE per side."""
    if factor not in FACTORS:
        raise FirstStageError(f"Unknown downsampling factor {factor}; choose one of {list(FACTORS)}.", "factor")
    if resolution is None:
        return
    if resolution % factor != 0:
        raise FirstStageError(
            f"Factor {factor} does not divide the resolution {resolution}: "
            f"the latent would not have an integer size. Pick a resolution divisible by {factor}.", "resolution"
        )
    side = resolution // factor
    if autoencoder and factor > 1 and side < MIN_LATENT_SIDE:
        raise FirstStageError(
            f"Factor {factor} at {resolution} px leaves a {side}x{side} latent; it must be at least "
            f"{MIN_LATENT_SIDE}x{MIN_LATENT_SIDE}. Use a smaller factor or a larger resolution.", "factor")


@dataclass
class AutoencoderSpec:
    """How to build an untrained autoencoder: the paper's layout per factor, its width scaled by ``base_width``."""

    factor: int
    kind: AutoencoderKind = "kl"
    image_channels: int = 3
    resolution: int = 32
    latent_channels: int | None = None  # None: the paper's value for this factor
    base_width: int = 32  # the paper's is 128; widths are base_width x the factor's multipliers
    layers_per_block: int = 1
    codebook_size: int = 512  # the paper uses 8192-16384; small data needs far fewer codes
    mid_attention: bool | None = None  # None: only for f >= 16, as in the paper's configs

    def resolved_latent_channels(self) -> int:
        return self.latent_channels or DEFAULT_LATENT_CHANNELS[self.kind][self.factor]

    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_width * m for m in CHANNEL_MULTIPLIERS[self.factor])

    def validate(self) -> None:
        """Clear errors for a first stage that cannot be built (before anything is written)."""
        check_factor(self.factor, self.resolution, autoencoder=True)
        if self.factor == 1:
            raise FirstStageError("f = 1 is pixel space: it has no autoencoder (the first stage is the identity).",
                                  "factor")
        if self.kind not in AUTOENCODER_KINDS:
            raise FirstStageError(f"Unknown autoencoder kind {self.kind!r}; choose 'kl' or 'vq'.", "kind")
        if self.kind == "vq" and self.codebook_size < 2:
            raise FirstStageError(f"A VQ codebook needs at least 2 codes (got {self.codebook_size}).", "codebook_size")
        if not 1 <= self.base_width <= 4096 or self.base_width % 4:
            raise FirstStageError(f"The base width must be a multiple of 4 from 4 to 4096 (got {self.base_width}).",
                                  "base_width")
        if self.latent_channels is not None and not 1 <= self.latent_channels <= 1024:
            raise FirstStageError(f"Latent channels must be from 1 to 1024 (got {self.latent_channels}).",
                                  "latent_channels")


def build_autoencoder(spec: AutoencoderSpec) -> Autoencoder:
    """An untrained diffusers ``AutoencoderKL`` or ``VQModel`` that downsamples by ``spec.factor``."""
    spec.validate()
    widths = spec.widths()  # diffusers downsamples between consecutive blocks: f = 2^(len - 1)
    attention = spec.factor >= ATTENTION_FROM_FACTOR if spec.mid_attention is None else spec.mid_attention
    common = dict(
        in_channels=spec.image_channels,
        out_channels=spec.image_channels,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=widths,
        layers_per_block=spec.layers_per_block,
        latent_channels=spec.resolved_latent_channels(),
        norm_num_groups=math.gcd(8, spec.base_width),  # must divide every width
        sample_size=spec.resolution,
        scaling_factor=1.0,  # replaced by 1/std after training (measure_scaling_factor)
        mid_block_add_attention=attention,
    )
    if spec.kind == "kl":
        return AutoencoderKL(**common, force_upcast=False)
    return VQModel(**common, num_vq_embeddings=spec.codebook_size)


def autoencoder_factor(vae: Autoencoder) -> int:
    """The spatial downsampling factor f = 2^(number of blocks - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def autoencoder_kind(vae: Autoencoder) -> AutoencoderKind:
    return "vq" if isinstance(vae, VQModel) else "kl"


class FirstStage:
    """Maps images in [-1, 1] to scaled latents and back; the identity when ``vae`` is None.

    Latents handed to the denoiser are always ``raw_latent * scaling_factor`` so that they
    have roughly unit variance whatever the autoencoder.
    """

    def __init__(self, vae: Autoencoder | None, image_channels: int | None = None):
        self.vae = vae
        self.image_channels = vae.config.in_channels if vae is not None else image_channels
        if vae is not None:
            validate_scaling_factor(vae)

    @property
    def factor(self) -> int:
        return 1 if self.vae is None else autoencoder_factor(self.vae)

    @property
    def kind(self) -> str:
        return "pixel" if self.vae is None else autoencoder_kind(self.vae)

    @property
    def latent_channels(self) -> int:
        return self.image_channels if self.vae is None else self.vae.config.latent_channels

    @property
    def scale(self) -> float:
        return 1.0 if self.vae is None else float(self.vae.config.scaling_factor)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        check_factor(self.factor, resolution)
        side = resolution // self.factor
        return (self.latent_channels, side, side)

    @torch.no_grad()
    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unscaled (mean, std) of the latent posterior; std is None for VQ and pixels.

        Caching the moments rather than one sample keeps the KL posterior's noise in
        training (a fresh sample every step) without running the encoder again.
        """
        if self.vae is None:
            return images, None
        if isinstance(self.vae, VQModel):
            return self.vae.encode(images).latents, None
        dist = self.vae.encode(images).latent_dist
        return dist.mean, dist.std

    def sample_latents(
        self, mean: torch.Tensor, std: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents from cached moments (a posterior sample for KL)."""
        if std is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + std * noise
        return mean * self.scale

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, std = self.encode_moments(images)
        return self.sample_latents(mean, std, generator)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from scaled latents."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.scale).sample

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled latents, reconstructions clamped to [-1, 1]) of images in [-1, 1], in batches.

        Uses the posterior mean (no sampling noise): what the autoencoder keeps of the image.
        Runs in the autoencoder's dtype; returns float32 on the images' device.
        """
        dtype = self.vae.dtype if self.vae is not None else images.dtype
        latents, recons = [], []
        for start in range(0, images.shape[0], batch_size):
            mean, _ = self.encode_moments(images[start : start + batch_size].to(dtype))
            z = mean * self.scale
            latents.append(z.float())
            recons.append(self.decode(z).float().clamp(-1, 1))
        return torch.cat(latents), torch.cat(recons)


@torch.no_grad()
def measure_scaling_factor(vae: Autoencoder, images: torch.Tensor) -> float:
    """1/std of the (mean) latents of ``images``: the paper's scale_by_std."""
    mean, _ = FirstStage(_unscaled(vae)).encode_moments(images)
    std = float(mean.float().std())
    if not math.isfinite(std) or std <= 0:
        raise FirstStageError(f"Latents of the training batch have std {std}; the autoencoder is broken.")
    return 1.0 / std


def _unscaled(vae: Autoencoder) -> Autoencoder:
    # FirstStage validates the scale; measuring must work before one is set.
    if not _scale_ok(vae.config.get("scaling_factor")):
        vae.register_to_config(scaling_factor=1.0)
    return vae


def _scale_ok(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 1e-4 < value < 1e4


def validate_scaling_factor(vae: Autoencoder) -> None:
    """Refuse a latent scale that is missing, non-finite or absurd."""
    value = vae.config.get("scaling_factor")
    if not _scale_ok(value):
        raise FirstStageError(
            f"The autoencoder's latent scale (config.scaling_factor = {value!r}) is missing or absurd; "
            "it must be 1/std of its latents on training data. Retrain or re-measure it."
        )


def set_scaling_factor(vae: Autoencoder, value: float) -> None:
    vae.register_to_config(scaling_factor=float(value))
    validate_scaling_factor(vae)


def count_parameters(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def load_autoencoder(path: str | Path) -> Autoencoder:
    """An autoencoder folder written by the first-stage trainer (safetensors only).

    Refuses a folder whose weights are not all finite (a codebook of NaNs decodes every
    latent to garbage without any error) and one whose latent scale is absurd.
    """
    root = Path(path)
    config = root / "config.json"
    if not config.is_file():
        raise FirstStageError(f"'{root}' is not an autoencoder folder (no config.json).", "autoencoder")
    try:
        class_name = json.loads(config.read_text()).get("_class_name")
        cls = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}[class_name]
        vae = cls.from_pretrained(root, use_safetensors=True, local_files_only=True)
    except KeyError as err:
        raise FirstStageError(f"'{root}' holds a {err} model, not an AutoencoderKL or VQModel.", "autoencoder") from err
    except (OSError, ValueError, RuntimeError) as err:
        raise FirstStageError(f"Could not load the autoencoder in '{root}': {err}", "autoencoder") from err
    broken = [name for name, p in vae.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        what = "its VQ codebook" if "quantize.embedding.weight" in broken else f"{len(broken)} weight tensor(s)"
        raise FirstStageError(f"The autoencoder in '{root}' is corrupt: {what} ({broken[0]}, ...) hold NaN or "
                              "infinite values. Retrain it.", "autoencoder")
    FirstStage(vae)  # validates the latent scale
    return vae
