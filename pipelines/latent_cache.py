"""Encode a data set once per first stage and reuse it: the cached-latents trick.

Diffusion training only ever needs the encoder's output, so running the encoder every
step wastes most of the compute the latent space saves. The cache holds the posterior
moments (mean, std) so KL models still draw a fresh latent sample every step.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .atomic import atomic_path
from .data import ImageDataset
from .first_stage import FirstStage

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LDM_LAB_CACHE", Path.home() / ".cache" / "ldm_lab")) / "latents"


@dataclass
class LatentCache:
    """Unscaled posterior moments of every image; ``std`` is None for VQ and pixels."""

    mean: torch.Tensor
    std: torch.Tensor | None

    def __len__(self) -> int:
        return self.mean.shape[0]

    def to(self, device: torch.device | str) -> "LatentCache":
        return LatentCache(self.mean.to(device), None if self.std is None else self.std.to(device))


def fingerprint(first_stage: FirstStage, dataset: ImageDataset) -> str:
    """A key that changes whenever the weights or the images change."""
    h = hashlib.sha256()
    h.update(dataset.images.numpy().tobytes())
    if first_stage.vae is not None:
        for name, tensor in sorted(first_stage.vae.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:24]


@torch.no_grad()
def encode_dataset(
    first_stage: FirstStage, dataset: ImageDataset, device: torch.device | str = "cpu", batch_size: int = 256
) -> LatentCache:
    if first_stage.vae is None:
        return LatentCache(dataset.batch(slice(None)), None)
    first_stage.vae.to(device).eval()
    means, stds = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="Encoding latents", unit="batch", leave=False):
        x = dataset.batch(slice(start, start + batch_size)).to(device, first_stage.vae.dtype)
        mean, std = first_stage.encode_moments(x)
        means.append(mean.float().cpu())
        if std is not None:
            stds.append(std.float().cpu())
    return LatentCache(torch.cat(means), torch.cat(stds) if stds else None)


def cached_latents(
    first_stage: FirstStage,
    dataset: ImageDataset,
    device: torch.device | str = "cpu",
    cache_dir: Path | None = None,
) -> LatentCache:
    """Latents of ``dataset`` under ``first_stage``, from disk when already encoded."""
    if first_stage.vae is None:  # pixel space: the "latents" are the images themselves
        return encode_dataset(first_stage, dataset)
    cache_dir = cache_dir or default_cache_dir()
    path = cache_dir / f"{dataset.name}-{dataset.resolution}px-{fingerprint(first_stage, dataset)}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(path)
            return LatentCache(tensors["mean"], tensors.get("std"))
        except (SafetensorError, OSError, KeyError) as err:
            log.warning("Latent cache %s is unreadable (%s); encoding again.", path, err)
    cache = encode_dataset(first_stage, dataset, device)
    tensors = {"mean": cache.mean.contiguous()}
    if cache.std is not None:
        tensors["std"] = cache.std.contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    return cache
