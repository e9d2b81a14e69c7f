"""Denoisers: diffusers UNets sized so parameter counts stay comparable across factors.

The paper compares factors at (roughly) equal parameter count. A latent of side 2 cannot
take the same number of downsamplings as a 64 px image, so the depth follows the latent
side and the base width is then searched to land on the parameter budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from diffusers import UNet2DConditionModel, UNet2DModel

from .first_stage import count_parameters

Denoiser = UNet2DModel | UNet2DConditionModel

NORM_GROUPS = 4
WIDTH_STEP = 4  # channel counts are multiples of the group-norm groups and the head size


@dataclass
class DenoiserSpec:
    """The denoiser for a latent of shape (channels, side, side)."""

    side: int
    channels: int
    param_budget: int = 1_000_000
    max_levels: int = 4
    layers_per_block: int = 1
    attention_head_dim: int = 4
    cross_attention_dim: int | None = None  # set for conditional (cross-attention) models


def unet_levels(side: int, max_levels: int = 4) -> int:
    """Resolution levels: halve until the side is 2 (a 1x1 or 2x2 latent gets one level)."""
    return max(1, min(max_levels, int(math.log2(max(side, 1)))))


def level_widths(levels: int, k: int, latent_channels: int = 0) -> tuple[int, ...]:
    """Channels per level: the first level half as wide as the deeper ones (k steps of 4), but never narrower
    than the latent it reads: a 64x4x4 latent (f = 32) squeezed through 56 channels at full resolution drew
    no faces at 128 px, and the paper's configs are never narrower than their input either."""
    deep = WIDTH_STEP * k
    if levels == 1:
        return (deep,)
    first = max(WIDTH_STEP * math.ceil(k / 2), WIDTH_STEP * math.ceil(latent_channels / WIDTH_STEP))
    return (first,) + (deep,) * (levels - 1)


def _build(spec: DenoiserSpec, k: int) -> Denoiser:
    levels = unet_levels(spec.side, spec.max_levels)
    widths = level_widths(levels, k, spec.channels)
    # The paper's LDM template (attention_resolutions [8, 4, 2] in its configs): self-attention
    # at every level but the full-resolution one, for every f alike. This is what makes
    # pixel space expensive: at 64 px the first attention level already has 32x32 tokens.
    first = ("DownBlock2D",) if levels > 1 else ()
    conditional = spec.cross_attention_dim is not None
    attn = "CrossAttn" if conditional else "Attn"
    down = first + (f"{attn}DownBlock2D",) * (levels - len(first))
    up = (f"{attn}UpBlock2D",) * (levels - len(first)) + tuple(b.replace("Down", "Up") for b in first)
    config = dict(sample_size=spec.side, in_channels=spec.channels, out_channels=spec.channels,
                  block_out_channels=widths, down_block_types=down, up_block_types=up,
                  layers_per_block=spec.layers_per_block, attention_head_dim=spec.attention_head_dim,
                  norm_num_groups=NORM_GROUPS)
    if conditional:
        return UNet2DConditionModel(**config, cross_attention_dim=spec.cross_attention_dim)
    return UNet2DModel(**config)


def build_denoiser(spec: DenoiserSpec) -> Denoiser:
    """The UNet whose parameter count is closest to ``spec.param_budget``.

    Parameter count grows monotonically with the width, so a bisection over widths (in
    steps of 4 channels) finds it in a handful of cheap constructions.
    """
    lo, hi = 1, 256  # deepest width up to 1024 channels
    while lo < hi:
        mid = (lo + hi) // 2
        if count_parameters(_build(spec, mid)) < spec.param_budget:
            lo = mid + 1
        else:
            hi = mid
    candidates = [_build(spec, k) for k in {max(1, lo - 1), lo}]
    return min(candidates, key=lambda m: abs(count_parameters(m) - spec.param_budget))
