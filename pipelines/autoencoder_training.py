"""Training a first stage with the paper's objective: L1 (+ LPIPS) + KL or VQ + a patch GAN.

The autoencoder, its discriminator and the codebook's running usage live in one module,
:class:`FirstStageObjective`, so the shared loop (``pipelines.training.run_training``)
checkpoints all of them together and a resumed run continues bit-exactly. The adversarial
term is switched on after a warm-up (``disc_start``), when reconstructions are already
close: the discriminator then sharpens detail instead of fighting a blurry start.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import VQModel
from torch import nn

from .callbacks import Callback
from .checkpoint import TrainState
from .codebook import CodebookKeeper, nearest_codes
from .discriminator import (
    PatchDiscriminator,
    adaptive_weight,
    hinge_discriminator_loss,
    patch_layers,
)
from .first_stage import (
    Autoencoder,
    AutoencoderSpec,
    FirstStage,
    build_autoencoder,
    count_parameters,
    measure_scaling_factor,
    set_scaling_factor,
)
from .images import uint8_to_signed
from .training import (
    TrainConfig,
    TrainingError,
    load_training_data,
    make_accelerator,
    run_training,
    summarize,
)
from .training_summary import TrainingSummary

DISC_START_SHARE = 0.6  # default warm-up: the first 60 % of the budget is reconstruction only
VGG16_WEIGHTS = "vgg16-397923af.pth"  # what torchvision (and so LPIPS) loads from the torch cache


@dataclass
class AutoencoderTrainConfig(TrainConfig):
    factor: int = 4
    kind: Literal["kl", "vq"] = "kl"
    dataset: str = "fashion-mnist"
    resolution: int = 32
    channels: int | None = None
    latent_channels: int | None = None  # None: the paper's value for the factor
    # Defaults: what trained the best models on a short CPU budget in the first-stage study (ae-quick): a
    # higher peak rate with warm-up and cosine decay, and a light patch GAN late in training (see the changelog).
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    batch_size: int = 8
    base_width: int = 16  # scales every width of the autoencoder (the paper's is 128)
    layers_per_block: int = 1
    codebook_size: int = 512  # VQ only
    # VQ only. diffusers' VectorQuantizer weighs the encoder's commitment 1 and the codebook 0.25 (the
    # original VQGAN code's swapped beta, kept for compatibility); VQ-VAE's intended commitment is 0.25.
    commitment_weight: float = 0.25
    # VQ only: learn the codes as running means with this decay (0: by gradient, the codebook loss). EMA 0.99
    # reconstructed best in the first-stage study; larger codebooks learn slower (see the changelog).
    codebook_ema: float = 0.99
    kl_weight: float = 1e-6  # the paper's KL weight: a barely regularised, near-deterministic latent
    disc_weight: float = 0.1  # the paper's is 0.5 (for 100k+ steps); 0 trains without the adversarial term
    disc_start: int | None = None  # step that switches the discriminator on; None: disc_start_share of the budget
    disc_start_share: float = DISC_START_SHARE  # used when disc_start is None
    disc_width: int = 32  # the PatchGAN's first width (the paper's ndf is 64; half suits our narrow autoencoders)
    perceptual_weight: float = 0.0  # LPIPS; needs the VGG16 weights in the local torch cache

    def spec(self, image_channels: int) -> AutoencoderSpec:
        return AutoencoderSpec(
            factor=self.factor, kind=self.kind, image_channels=image_channels, resolution=self.resolution,
            latent_channels=self.latent_channels, base_width=self.base_width,
            layers_per_block=self.layers_per_block, codebook_size=self.codebook_size,
        )

    def validate(self) -> None:
        super().validate()
        self.spec(self.channels or 3).validate()
        if not 0 <= self.disc_start_share < 1:
            raise TrainingError(f"The discriminator's start share of the budget must be from 0 to below 1 "
                                f"(got {self.disc_start_share}).", "disc_start_share")
        if self.disc_start is not None and self.disc_start < 0:
            raise TrainingError(f"The discriminator's start step cannot be negative (got {self.disc_start}).",
                                "disc_start")
        if not 0 <= self.codebook_ema < 1:
            raise TrainingError(f"The codebook's EMA decay must be from 0 (codes learned by gradient) to below 1 "
                                f"(got {self.codebook_ema}).", "codebook_ema")
        for name in ("disc_weight", "perceptual_weight", "kl_weight", "commitment_weight"):
            value = getattr(self, name)
            if not 0 <= value <= 1e3:
                raise TrainingError(f"{name.replace('_', ' ').capitalize()} must be from 0 to 1000 (got {value}).",
                                    name)
        if not 4 <= self.disc_width <= 1024:
            raise TrainingError(f"The discriminator width must be from 4 to 1024 (got {self.disc_width}).",
                                "disc_width")

    def adversarial_from(self, state: TrainState) -> bool:
        """Whether the discriminator is on at this point of training."""
        if self.disc_weight == 0:
            return False
        if self.disc_start is not None:
            return state.step >= self.disc_start
        if self.max_steps is not None:
            return state.step >= int(self.disc_start_share * self.max_steps)
        return state.seconds >= self.disc_start_share * float(self.max_seconds or 0)

    def losses(self) -> str:
        """Which terms train the model, for reports: e.g. 'L1 + KL(1e-06) + PatchGAN(hinge, weight 0.5, from step 400)'."""
        terms = ["L1"]
        if self.perceptual_weight:
            terms.append(f"LPIPS({self.perceptual_weight:g})")
        if self.kind == "kl":
            terms.append(f"KL({self.kl_weight:g})")
        elif self.codebook_ema:
            terms.append(f"VQ(EMA codebook {self.codebook_ema:g} + commitment {self.commitment_weight:g})")
        else:
            terms.append(f"VQ(codebook + commitment {self.commitment_weight:g})")
        if self.disc_weight:
            if self.disc_start is not None:
                start = f"step {self.disc_start}"
            elif self.max_steps is not None:
                start = f"step {int(self.disc_start_share * self.max_steps)}"
            else:
                start = f"{self.disc_start_share * float(self.max_seconds or 0):g} s"
            terms.append(f"PatchGAN(hinge, weight {self.disc_weight:g}, from {start})")
        return " + ".join(terms)


def lpips_loss(device: torch.device) -> nn.Module:
    """LPIPS (VGG) from torchmetrics, refusing clearly when the VGG16 weights are not cached locally."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_WEIGHTS
    if not cached.is_file():
        raise TrainingError(
            f"The perceptual (LPIPS) term needs the VGG16 weights at '{cached}', which this machine does not have "
            "(they are downloaded once online). Train without it (perceptual weight 0), or fetch them first.",
            "perceptual_weight")
    from torchmetrics.image.lpip import (
        LearnedPerceptualImagePatchSimilarity,  # only with LPIPS (start-up time)
    )

    net = LearnedPerceptualImagePatchSimilarity(net_type="vgg").net.to(device).eval()
    return net.requires_grad_(False)


class FirstStageObjective(nn.Module):
    """An autoencoder with what trains it: a patch discriminator, codebook upkeep (VQ) and the loss."""

    def __init__(self, vae: Autoencoder, cfg: AutoencoderTrainConfig, image_channels: int):
        super().__init__()
        self.vae = vae
        self.kl_weight, self.disc_weight = cfg.kl_weight, cfg.disc_weight
        self.disc = (PatchDiscriminator(image_channels, cfg.disc_width, patch_layers(cfg.resolution))
                     if cfg.disc_weight else None)
        self.keeper = (CodebookKeeper(cfg.codebook_size, ema_decay=cfg.codebook_ema or None,
                                      latent_channels=vae.config.latent_channels)
                       if isinstance(vae, VQModel) else None)
        self.commitment_weight = cfg.commitment_weight
        if self.keeper is not None and cfg.codebook_ema:
            vae.quantize.embedding.weight.requires_grad_(False)  # moved by the keeper, not by the optimiser
        self.perceptual_weight = cfg.perceptual_weight
        # Kept out of the module tree (a tuple, not an attribute module): frozen, never checkpointed.
        self._perceptual: tuple[nn.Module, ...] = ()

    def use_perceptual(self, net: nn.Module) -> None:
        self._perceptual = (net,)

    def param_groups(self) -> list[dict]:
        groups: list[dict] = [{"params": [p for p in self.vae.parameters() if p.requires_grad]}]
        if self.disc is not None:  # the paper's Adam betas for the GAN game
            groups.append({"params": list(self.disc.parameters()), "betas": (0.5, 0.9)})
        return groups

    def reconstruct_for_training(self, x: torch.Tensor, generator: torch.Generator,
                                 step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction, regulariser): a posterior sample for KL, quantised latents for VQ."""
        vae = self.vae
        if isinstance(vae, VQModel):
            latents = vae.encode(x).latents
            assert self.keeper is not None
            self.keeper.update(vae, latents, step, generator)
            codes = vae.quantize.embedding.weight
            chosen = codes[nearest_codes(vae, latents)].view(latents.shape[0], *latents.shape[2:], -1)
            chosen = chosen.permute(0, 3, 1, 2)
            # Our own VQ loss rather than the quantiser's, whose weights are swapped (see commitment_weight).
            regulariser = self.commitment_weight * (latents - chosen.detach()).pow(2).mean()
            if codes.requires_grad:
                regulariser = regulariser + (chosen - latents.detach()).pow(2).mean()
            quant = latents + (chosen - latents).detach()  # straight-through
            return vae.decode(quant, force_not_quantize=True).sample, regulariser.float()
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, to match the per-pixel L1
        return recon, self.kl_weight * kl

    def forward(self, x: torch.Tensor, generator: torch.Generator, step: int, adversarial: bool) -> torch.Tensor:
        recon, regulariser = self.reconstruct_for_training(x, generator, step)
        recon = recon.float()
        rec = (recon - x).abs().mean()
        if self._perceptual:
            rgb = (recon.clamp(-1, 1), x) if x.shape[1] == 3 else (recon.clamp(-1, 1).expand(-1, 3, -1, -1),
                                                                      x.expand(-1, 3, -1, -1))
            rec = rec + self.perceptual_weight * self._perceptual[0](*rgb).mean()
        loss = rec + regulariser
        if self.disc is None:
            return loss
        if not adversarial:
            # Zero-weighted so every parameter takes part in the graph (multi-process training requires it).
            return loss + 0.0 * sum(p.sum() for p in self.disc.parameters())
        self.disc.requires_grad_(False)  # the generator's term must not train the discriminator
        gan = -self.disc(recon).mean()
        self.disc.requires_grad_(True)
        weight = self.disc_weight * adaptive_weight(rec, gan, self.vae.decoder.conv_out.weight)
        judged = hinge_discriminator_loss(self.disc(x), self.disc(recon.detach()))
        return loss + weight * gan + judged


@dataclass
class TrainedAutoencoder:
    vae: Autoencoder  # on the training device, in eval mode, latent scale measured
    summary: TrainingSummary


def train_autoencoder(cfg: AutoencoderTrainConfig, callbacks: Sequence[Callback] = ()) -> TrainedAutoencoder:
    """Train a first stage, measure its latent scale, save it in diffusers layout to ``cfg.out``.

    Everything is checked before anything is written: a bad kind, factor, codebook size or
    discriminator start raises a clear error and leaves ``cfg.out`` untouched.
    """
    cfg.validate()
    accelerator = make_accelerator(cfg)
    perceptual = lpips_loss(accelerator.device) if cfg.perceptual_weight else None
    data = load_training_data(cfg.dataset, cfg.resolution, cfg.channels, cfg.max_images)
    spec = cfg.spec(data.channels)
    spec.validate()
    torch.manual_seed(cfg.seed)
    objective = FirstStageObjective(build_autoencoder(spec), cfg, data.channels)
    if perceptual is not None:
        objective.use_perceptual(perceptual)
    images = data.images.to(accelerator.device)
    def loss_fn(model: nn.Module, generator: torch.Generator, state: TrainState) -> torch.Tensor:
        index = torch.randint(0, len(images), (cfg.batch_size,), generator=generator, device=images.device)
        return model(uint8_to_signed(images[index]), generator, state.step, cfg.adversarial_from(state))

    run_key = {"kind": "autoencoder", **asdict(spec), "dataset": cfg.dataset, "seed": cfg.seed,
               "batch_size": cfg.batch_size, "max_images": cfg.max_images, "losses": cfg.losses(),
               "disc_width": cfg.disc_width}
    result = run_training(objective, loss_fn, cfg, accelerator, use_ema=False, run_key=run_key, callbacks=callbacks,
                          artefact=objective.vae, param_groups=objective.param_groups())
    vae = result.model.vae
    probe = data.batch(slice(0, 512)).to(accelerator.device)
    set_scaling_factor(vae, measure_scaling_factor(vae, probe))
    summary = summarize(
        result, cfg, factor=cfg.factor, kind=cfg.kind, dataset=cfg.dataset, resolution=cfg.resolution,
        ae_params=count_parameters(vae), scaling_factor=vae.config.scaling_factor,
        latent_shape=list(FirstStage(vae).latent_shape(cfg.resolution)), losses=cfg.losses(),
        codebook_size=cfg.codebook_size if cfg.kind == "vq" else None,
    )
    if accelerator.is_main_process:
        vae.save_pretrained(cfg.out, safe_serialization=True)
        summary.save(cfg.out)
    accelerator.wait_for_everyone()
    return TrainedAutoencoder(vae, summary)
