"""Keeping a VQ codebook alive: data initialisation, dead-code re-seeding, usage statistics.

Why VQ training collapsed here before: diffusers' ``VectorQuantizer`` starts its codes in
uniform(±1/K), a tiny ball next to encoder outputs of order one, so nearly every latent
vector picks the same few codes; the unused codes never receive a gradient (only chosen
codes are pulled) and stay dead, and the commitment term then drags the encoder towards
that handful of codes -- a few-code latent that decodes to a blurred mean image. The
standard remedies (VQGAN follow-ups, Jukebox, "Vector-quantized image modeling with
improved VQGAN") are written here because diffusers does not ship them: initialise the
codes from encoder outputs, and replace codes whose running usage has fallen to nothing
by encoder outputs of the current batch. Both are deterministic given the step's
generator, so a resumed run stays bit-exact.

Optionally the codes are not learned by gradient at all but as running (EMA) means of the
encoder outputs assigned to them (van den Oord et al. 2017, appendix; the k-means view of
VQ): every code moves straight to the centre of its cluster instead of taking small
gradient steps, which is what a short training budget needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from diffusers import VQModel
from torch import nn

USAGE_DECAY = 0.99  # running mean of per-batch code counts over about 100 steps
DEAD_SHARE = 0.03  # a code is dead when used at under 3 % of the uniform rate


def flat_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pre-quantisation latents as (B*H*W, C) vectors, the quantiser's view."""
    return latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])


def nearest_codes(vae: VQModel, latents: torch.Tensor) -> torch.Tensor:
    """The code index of every latent vector, as the quantiser picks it."""
    return torch.cdist(flat_latents(latents).float(), vae.quantize.embedding.weight.float()).argmin(dim=1)


def _pick(vectors: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` rows of ``vectors`` (with replacement when there are too few), slightly jittered."""
    index = torch.randint(0, vectors.shape[0], (n,), generator=generator, device=vectors.device)
    picked = vectors[index]
    jitter = torch.randn(picked.shape, generator=generator, device=vectors.device, dtype=picked.dtype)
    return picked + 1e-3 * picked.std().clamp_min(1e-6) * jitter


class CodebookKeeper(nn.Module):
    """Running code usage (a buffer, so checkpoints carry it) and the two remedies above."""

    def __init__(self, codebook_size: int, reseed_every: int = 20, ema_decay: float | None = None,
                 latent_channels: int = 1):
        super().__init__()
        self.reseed_every = reseed_every
        self.ema_decay = ema_decay  # None: the codes are learned by gradient (the codebook loss term)
        self.register_buffer("usage", torch.zeros(codebook_size))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        if ema_decay is not None:
            self.register_buffer("ema_count", torch.zeros(codebook_size))
            self.register_buffer("ema_sum", torch.zeros(codebook_size, latent_channels))

    @torch.no_grad()
    def update(self, vae: VQModel, latents: torch.Tensor, step: int, generator: torch.Generator) -> None:
        """Call before quantising a training batch: initialise, count, move codes (EMA), re-seed dead codes.

        With several processes the counts are summed over every rank's batch and rank 0's
        codebook is broadcast after any change, so the ranks' codebooks never drift apart
        (DDP syncs gradients, not in-place edits).
        """
        vectors = flat_latents(latents.detach().float())
        codes = vae.quantize.embedding.weight.data
        size = codes.shape[0]
        distributed = dist.is_available() and dist.is_initialized()
        changed = False
        if not bool(self.initialised):
            codes.copy_(_pick(vectors, size, generator).to(codes.dtype))
            self.initialised.fill_(True)
            changed = True
        index = nearest_codes(vae, latents.detach())
        counts = torch.bincount(index, minlength=size).float()
        seen = vectors.shape[0]
        sums = torch.zeros(size, vectors.shape[1], device=vectors.device).index_add_(0, index, vectors) \
            if self.ema_decay is not None else None
        if distributed:
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
            seen *= dist.get_world_size()
        self.usage.mul_(USAGE_DECAY).add_(counts, alpha=1 - USAGE_DECAY)
        if sums is not None:  # every rank computes the same codes from the summed counts: nothing to broadcast
            self._ema_step(codes, counts, sums)
        if step > 0 and step % self.reseed_every == 0:
            dead = self.usage < DEAD_SHARE * seen / size
            n_dead = int(dead.sum())
            if n_dead:
                codes[dead] = _pick(vectors, n_dead, generator).to(codes.dtype)
                self.usage[dead] = seen / size  # a fresh code gets a grace period
                changed = True
                if self.ema_decay is not None:  # the re-seeded codes restart their running means
                    self.ema_count[dead] = 0.0
                    self.ema_sum[dead] = 0.0
        if distributed and changed:
            dist.broadcast(codes, src=0)

    def _ema_step(self, codes: torch.Tensor, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """Move every used code towards the mean of the vectors assigned to it (running, decayed).

        The running count and sum decay alike, so their ratio is an unbiased mean from the first step.
        """
        decay = float(self.ema_decay)  # type: ignore[arg-type]
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        used = self.ema_count > 1e-6
        codes[used] = (self.ema_sum[used] / self.ema_count[used, None]).to(codes.dtype)


@dataclass
class CodebookStats:
    """How much of a codebook held-out images use: the share of codes and the perplexity."""

    size: int
    used: int
    usage: float  # used / size
    perplexity: float  # exp(entropy of code frequencies): the effective number of codes


@torch.no_grad()
def codebook_stats(vae: VQModel, images: torch.Tensor, batch_size: int = 128) -> CodebookStats:
    """Usage and perplexity of ``vae``'s codebook on ``images`` in [-1, 1]."""
    size = vae.quantize.embedding.weight.shape[0]
    counts = torch.zeros(size, dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        latents = vae.encode(images[start : start + batch_size].to(vae.device, vae.dtype)).latents
        counts += torch.bincount(nearest_codes(vae, latents), minlength=size).double().cpu()
    p = counts / counts.sum()
    entropy = -float((p[p > 0] * p[p > 0].log()).sum())
    used = int((counts > 0).sum())
    return CodebookStats(size, used, used / size, math.exp(entropy))
