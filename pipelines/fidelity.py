"""How faithfully a first stage reconstructs an image: PSNR and SSIM (the paper's Tab. 8).

These live in the core, beside :meth:`FirstStage.reconstruct`, because the demo's
autoencoder explorer and the harness's autoencoder table must report the same number for
the same image; distribution metrics (FID/KID, rFID) stay in the harness. Both take float
images in [0, 1] (``data_range=1``) and are per-image values averaged over the set (how
the LDM/taming code reports them), computed in batches with torchmetrics' functional
implementations.
"""
from __future__ import annotations

import torch

from .errors import InputError

# torchmetrics is imported where it is used: it slows a cold start noticeably, and the web demo
# should answer its first request before anyone asks for a reconstruction.

SSIM_KERNEL = 11  # the standard Gaussian window; shrunk for images smaller than it


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise InputError(f"Images and reconstructions differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}.")
    if a.ndim != 4 or a.shape[0] == 0:
        raise InputError(f"Expected a non-empty (N,C,H,W) batch, got shape {tuple(a.shape)}.")
    if not (a.is_floating_point() and b.is_floating_point()):
        raise InputError("psnr/ssim take float images in [0, 1]; convert uint8 with pipelines.images.uint8_to_unit.")


def psnr(a: torch.Tensor, b: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-image PSNR in dB of float images in [0, 1]; inf when all pairs are identical."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,  # on first use (start-up time, above)
    )

    _check_pair(a, b)
    values = [
        peak_signal_noise_ratio(b[i : i + batch_size].float(), a[i : i + batch_size].float(),
                                data_range=1.0, reduction="none", dim=(1, 2, 3))
        for i in range(0, a.shape[0], batch_size)
    ]
    return float(torch.cat([v.reshape(-1) for v in values]).double().mean())


def ssim(a: torch.Tensor, b: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-image SSIM of float images in [0, 1] (Gaussian 11x11 window, smaller for tiny images)."""
    from torchmetrics.functional.image import (
        structural_similarity_index_measure,  # on first use (start-up time)
    )

    _check_pair(a, b)
    side = min(a.shape[-2:])
    if side < 3:
        raise InputError(f"SSIM needs images of at least 3x3 pixels, got {tuple(a.shape[-2:])}.")
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    total, n = 0.0, a.shape[0]
    for i in range(0, n, batch_size):
        pa, pb = a[i : i + batch_size].float(), b[i : i + batch_size].float()
        value = structural_similarity_index_measure(pb, pa, data_range=1.0, kernel_size=kernel, reduction="elementwise_mean")
        total += float(value) * pa.shape[0]
    return total / n
