"""The first-stage study (the paper's Tab. 8 at our scale): KL and VQ autoencoders per factor.

Every autoencoder trains at the same budget with the paper's objective (L1 + KL or VQ +
a patch GAN switched on half-way), then is measured on the same held-out images: PSNR,
SSIM, rFID with KID beside it (Inception, N stated), codebook usage and perplexity for VQ,
training time and throughput, and a reconstruction grid. Chosen factors are trained a
second time without the adversarial term, same budget, so the report shows what the
discriminator buys. Results go to ``results.jsonl`` as they are measured: ``--resume``
after a kill redoes nothing already measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from ldm_eval.reporting.first_stage import GAN_FROM, NO_GAN
from ldm_eval.sweeps.executor import Cell, Opener, prepare_executor, run_cells
from ldm_eval.sweeps.run_folder import (
    RunContext,
    autoencoder_cell,
    autoencoder_done,
    open_run,
)
from ldm_eval.sweeps.settings import Sweep, SweepError, help_text
from pipelines.first_stage import AUTOENCODER_KINDS


@dataclass
class FirstStageSettings:
    """Which autoencoders the study trains and how it measures them."""

    factors: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32],
                               metadata=help_text("downsampling factors (each must leave a latent of at least 2x2)"))
    kinds: list[str] = field(default_factory=lambda: list(AUTOENCODER_KINDS),
                             metadata=help_text("autoencoder kinds: kl and/or vq"))
    no_gan_factors: list[int] = field(default_factory=lambda: [4, 8], metadata=help_text(
        "factors trained a second time without the adversarial term (same budget)"))
    no_gan_kinds: list[str] = field(default_factory=lambda: ["kl"], metadata=help_text(
        "kinds trained without the adversarial term at those factors"))
    gan_start_shares: list[float] = field(default_factory=list, metadata=help_text(
        "extra points (shares of the budget, e.g. 0.3) to switch the adversarial term on at, for the same "
        "factors and kinds: a longer adversarial phase than the default one"))
    rfid_samples: int = field(default=1000, metadata=help_text("held-out images for rFID/KID (0 skips them)"))
    grid_images: int = field(default=8, metadata=help_text("held-out images in every reconstruction grid"))

    def validate(self) -> None:
        for kind in {*self.kinds, *self.no_gan_kinds}:
            if kind not in AUTOENCODER_KINDS:
                raise SweepError(f"Unknown autoencoder kind {kind!r}; choose kl and/or vq.", "kinds")
        if 1 in self.factors:
            raise SweepError("f = 1 has no autoencoder; give factors of 2 and more.", "factors")
        if any(not 0 <= share < 1 for share in self.gan_start_shares):
            raise SweepError(f"Adversarial start points are shares of the budget from 0 to below 1 "
                             f"(got {self.gan_start_shares}).", "gan_start_shares")
        if self.rfid_samples == 1 or self.rfid_samples < 0:
            raise SweepError("rFID needs at least 2 images (0 skips it).", "rfid_samples")
        if not 1 <= self.grid_images <= 64:
            raise SweepError(f"Grids show 1 to 64 images (got {self.grid_images}).", "grid_images")


FirstStageSweep = Sweep[FirstStageSettings]



def cells(cfg: FirstStageSweep) -> list[tuple[str, int, str]]:
    """(kind, factor, variant) of every model the study trains, in order (the factors are checked: Sweep.validate)."""
    fits = cfg.sweep.factors
    out = [(kind, f, "") for f in fits for kind in cfg.sweep.kinds]
    out += [(kind, f, NO_GAN) for f in fits if f in cfg.sweep.no_gan_factors for kind in cfg.sweep.no_gan_kinds]
    out += [(kind, f, gan_variant(share)) for share in cfg.sweep.gan_start_shares for f in fits
            if f in cfg.sweep.no_gan_factors for kind in cfg.sweep.no_gan_kinds]
    return out


def gan_variant(share: float) -> str:
    """The variant name of a model whose adversarial term starts at ``share`` of the budget: 'gan-from-0.3'."""
    return f"{GAN_FROM}{share:g}"


def variant_overrides(variant: str) -> dict[str, float]:
    """The trainer settings a variant changes."""
    if variant == NO_GAN:
        return {"disc_weight": 0.0}
    if variant.startswith(GAN_FROM):
        return {"disc_start_share": float(variant.removeprefix(GAN_FROM))}
    return {}


def run_first_stage_sweep(cfg: FirstStageSweep) -> Path:
    """Run (or resume) the first-stage study; returns the run folder."""
    cfg.validate()
    todo = cells(cfg)
    if cfg.run.ae_disc_weight == 0 and any(v == NO_GAN for *_, v in todo):
        raise SweepError("The adversarial term is already off (--ae-disc-weight 0): there is nothing to compare "
                         "the no-GAN models with. Give no --no-gan-factors or a positive weight.", "ae_disc_weight")
    prepare_executor(cfg.run)
    needed = max(cfg.run.fid_samples, cfg.sweep.rfid_samples)
    ctx: RunContext = open_run(cfg.run, cfg.flat_config(), needed, classifier=False)
    opener = Opener(replace(cfg.run, resume=True), cfg.flat_config(), needed, classifier=False)
    run_cells(ctx, opener, [Cell(f"autoencoder {kind} f{factor}{' ' + variant if variant else ''}",
                                 partial(_autoencoder, cfg, kind, factor, variant),
                                 partial(autoencoder_done, kind, factor, variant)) for kind, factor, variant in todo])
    return ctx.out


def _autoencoder(cfg: FirstStageSweep, kind: str, factor: int, variant: str, ctx: RunContext) -> None:
    print(f"== {kind} f={factor}{' ' + variant if variant else ''} ==", flush=True)
    autoencoder_cell(ctx, kind, factor, cfg.sweep.rfid_samples, variant, cfg.sweep.grid_images,
                     **variant_overrides(variant))
