"""Autoencoder reconstruction quality: PSNR, SSIM and rFID (as in the LDM paper's Tab. 8).

PSNR and SSIM come from the core (``pipelines.fidelity``, shared with the demo); rFID is
the clean Inception FID between the images and their reconstructions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldm_eval.metrics.fid import fid_between_images
from pipelines.fidelity import psnr, ssim
from pipelines.images import as_uint8_nchw, uint8_to_unit


@dataclass
class ReconstructionQuality:
    """PSNR/SSIM over ``n`` images and, when computed, rFID with the backend that produced it."""

    psnr: float  # dB, mean per image; inf when every reconstruction is exact
    ssim: float
    n: int
    rfid: float | None = None
    rfid_backend: str | None = None
    rfid_skipped: str | None = None  # why rFID is None


def reconstruction_metrics(
    real_uint8: torch.Tensor | np.ndarray,
    recon_uint8: torch.Tensor | np.ndarray,
    device: str | torch.device | None = None,
    rfid: bool = True,
    batch_size: int = 32,
) -> ReconstructionQuality:
    """PSNR, SSIM and rFID (clean Inception FID between reals and reconstructions), values in [0, 1] with data_range 1.

    rFID is None, with ``rfid_skipped`` giving the reason, when N < 2 or ``rfid=False``.
    """
    real, recon = uint8_to_unit(real_uint8), uint8_to_unit(recon_uint8)
    n = int(real.shape[0])
    out = ReconstructionQuality(psnr(real, recon), ssim(real, recon), n)
    if not rfid:
        out.rfid_skipped = "rfid=False"
    elif n < 2:
        out.rfid_skipped = f"rFID needs at least 2 images, got {n}"
    else:
        result = fid_between_images(as_uint8_nchw(real_uint8), as_uint8_nchw(recon_uint8),
                                    backend="inception", device=device, batch_size=batch_size)
        out.rfid = result.fid
        out.rfid_backend = f"{result.backend}: {result.extractor}; resize: {result.resize}"
    return out
