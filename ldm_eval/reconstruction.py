"""Autoencoder reconstruction quality: PSNR, SSIM and rFID (as in the LDM paper's Tab. 8).

PSNR/SSIM take float images in [0, 1] (``data_range=1``); use ``uint8_to_unit`` for uint8.
Both are per-image values averaged over the set (how the LDM/taming code reports them),
computed in batches with torchmetrics' functional implementations.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ldm_eval.domain_classifier import ClassifierError, as_uint8_nchw
from ldm_eval.fid import MetricError, fid_between_images

SSIM_KERNEL = 11  # the standard Gaussian window; shrunk for images smaller than it


def uint8_to_unit(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (NCHW / NHWC / NHW) -> float32 (N,C,H,W) in [0, 1]."""
    try:
        return as_uint8_nchw(images).float() / 255.0
    except ClassifierError as err:
        raise MetricError(str(err)) from err


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise MetricError(f"Images and reconstructions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    if a.ndim != 4 or a.shape[0] == 0:
        raise MetricError(f"Expected a non-empty (N,C,H,W) batch, got shape {tuple(a.shape)}.")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise MetricError("psnr/ssim take float images in [0, 1]; convert uint8 with uint8_to_unit.")


def psnr(a: torch.Tensor, b: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-image PSNR in dB of float images in [0, 1]; inf when all pairs are identical."""
    _check_pair(a, b)
    values = [
        peak_signal_noise_ratio(b[i : i + batch_size].float(), a[i : i + batch_size].float(),
                                data_range=1.0, reduction="none", dim=(1, 2, 3))
        for i in range(0, a.shape[0], batch_size)
    ]
    return float(torch.cat([v.reshape(-1) for v in values]).double().mean())


def ssim(a: torch.Tensor, b: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-image SSIM of float images in [0, 1] (Gaussian 11x11 window, smaller for tiny images)."""
    _check_pair(a, b)
    side = min(a.shape[-2:])
    if side < 3:
        raise MetricError(f"SSIM needs images of at least 3x3 pixels, got {tuple(a.shape[-2:])}.")
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    total, n = 0.0, a.shape[0]
    for i in range(0, n, batch_size):
        pa, pb = a[i : i + batch_size].float(), b[i : i + batch_size].float()
        value = structural_similarity_index_measure(pb, pa, data_range=1.0, kernel_size=kernel, reduction="elementwise_mean")
        total += float(value) * pa.shape[0]
    return total / n


def reconstruction_metrics(
    real_uint8: torch.Tensor | np.ndarray,
    recon_uint8: torch.Tensor | np.ndarray,
    device: str | torch.device | None = None,
    rfid: bool = True,
    batch_size: int = 32,
) -> dict[str, Any]:
    """PSNR, SSIM and rFID (clean Inception FID between reals and reconstructions).

    rFID is None with ``rfid_skipped`` giving the reason when N < 2 or ``rfid=False``.
    """
    real, recon = uint8_to_unit(real_uint8), uint8_to_unit(recon_uint8)
    _check_pair(real, recon)
    n = int(real.shape[0])
    out: dict[str, Any] = {"psnr": psnr(real, recon), "ssim": ssim(real, recon), "n": n,
                           "rfid": None, "rfid_backend": None, "value_range": "[0, 1], data_range=1"}
    if not math.isfinite(out["psnr"]):
        out["psnr_note"] = "inf: reconstructions identical to the inputs"
    if not rfid:
        out["rfid_skipped"] = "rfid=False"
    elif n < 2:
        out["rfid_skipped"] = f"rFID needs at least 2 images, got {n}"
    else:
        result = fid_between_images(as_uint8_nchw(real_uint8), as_uint8_nchw(recon_uint8),
                                    backend="inception", device=device, batch_size=batch_size)
        out["rfid"] = result.fid
        out["rfid_backend"] = f"{result.backend}: {result.extractor}; resize: {result.resize}"
    return out
