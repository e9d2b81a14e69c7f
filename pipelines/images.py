"""Image conversions, in one place: every array of images in the project is one of three kinds.

* **uint8** in [0, 255], NCHW tensors (data sets, metric inputs) or NHWC arrays (PNG files);
* **unit** float in [0, 1], NHWC arrays (what the pipeline returns) or NCHW tensors (PSNR/SSIM);
* **signed** float in [-1, 1], NCHW tensors (what autoencoders and denoisers read).

Gray images have one channel (C = 1), colour images three.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path
from .errors import InputError


class ImageFormatError(InputError):
    """An array that is not a batch of images in the expected dtype and layout."""


# what a file that is not a readable image raises somewhere in PIL's open/decode path
UNREADABLE_IMAGE_ERRORS = (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError)
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def open_image_8bit(path: str | os.PathLike, channels: int = 3, exif_rotate: bool = True) -> Image.Image:
    """A file decoded in full, EXIF-rotated unless told not to, as an 8-bit "L" (channels 1) or "RGB" image.

    Why not just ``Image.open(p).convert("RGB")`` (what clean-fid's loader does): PIL clips
    16-bit and 32-bit greyscale ("I;16", "I", "F") to 0-255 when converting, so a 16-bit PNG
    turns all white. Those modes are rescaled here from their bit depth (16-bit: divide by
    257; float: [0, 1] when it fits, else the 16-bit range). Raises one of
    ``UNREADABLE_IMAGE_ERRORS`` for a truncated or non-image file, since ``load()`` decodes
    every byte now rather than at first use.
    """
    with Image.open(path) as img:
        img.load()
        if exif_rotate:
            img = ImageOps.exif_transpose(img)
        if img.mode in _HIGH_DEPTH_MODES:
            arr = np.asarray(img, dtype=np.float64)
            if img.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
                scale = 255.0
            else:
                scale = 255.0 / 65535.0 if arr.size and np.nanmax(arr) > 255 else 1.0
            img = Image.fromarray(np.clip(np.nan_to_num(arr) * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
        return img.convert("L" if channels == 1 else "RGB")


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (any layout) to uint8, rounding like PIL does."""
    return (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8)


def as_uint8_nchw(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N,C,H,W) from uint8 (N,C,H,W), (N,H,W,C) or (N,H,W); C in {1, 3}.

    When both axis 1 and the last axis could be channels (e.g. 3x3 images), NCHW wins.
    """
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8:
        raise ImageFormatError(f"Images must be uint8 in [0, 255], got dtype {x.dtype}.")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ImageFormatError(f"Images must be (N,C,H,W), (N,H,W,C) or (N,H,W); got shape {tuple(x.shape)}.")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise ImageFormatError(f"Images must have 1 or 3 channels; got shape {tuple(x.shape)}.")
    return x.contiguous()


def unit_nhwc_to_uint8_nchw(images: np.ndarray) -> torch.Tensor:
    """The pipeline's output (float NHWC in [0, 1]) as the uint8 NCHW batch metrics read."""
    return torch.from_numpy(unit_to_uint8(images)).permute(0, 3, 1, 2).contiguous()


def as_rgb(images_uint8: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (N,3,H,W) on the CPU; gray repeated to three channels."""
    x = as_uint8_nchw(images_uint8)
    return (x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x).cpu()


def uint8_to_unit(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (any layout) -> float32 (N,C,H,W) in [0, 1]."""
    return as_uint8_nchw(images).float() / 255.0


def uint8_to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [-1, 1], what the first stages and denoisers read."""
    return images.float() / 127.5 - 1.0


def signed_to_unit(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 2 + 0.5).clamp(0, 1)


def signed_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float NCHW in [-1, 1] -> uint8 NCHW (rounded, clamped)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """One image (H, W, C) uint8 or float in [0, 1] as a PNG, written atomically."""
    array = image if image.dtype == np.uint8 else unit_to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(tmp, format="PNG")
    return Path(path)


def save_grid(images: np.ndarray, path: str | os.PathLike, n: int = 64, nrow: int = 8) -> Path:
    """The first ``n`` float NHWC images in [0, 1] as one PNG grid (white 1 px gaps)."""
    from torchvision.utils import (
        make_grid,  # here, not at the top: torchvision slows every start-up
    )

    grid = make_grid(torch.from_numpy(np.asarray(images[:n])).permute(0, 3, 1, 2), nrow=nrow, padding=1, pad_value=1.0)
    return save_png(grid.permute(1, 2, 0).numpy(), path)
