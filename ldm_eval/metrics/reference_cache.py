"""Reference features computed once: the real side of every FID, cached across runs.

The reference pass is the slow half of an FID on a CPU (Inception runs at a few images a
second), and it is the same every time a model is measured against the same images. So
features are cached on disk under a key that names everything they depend on: the
images' *content* (a hash of the folder's files, or of the loaded tensor for a built-in
data set -- never a path or a date), the split, the resolution they were loaded at, the
feature backend with its resize protocol, and N. Renaming or touching a folder keeps its
cache; changing one pixel of one image, or the resize, misses it.

The cache lives in ``$LDM_LAB_CACHE`` (default ``~/.cache/ldm_lab``)/``reference``; each
entry is ``KEY.npy`` with ``KEY.json`` beside it saying what the key stands for, both
written atomically. Domain-classifier features are not cached here: the classifier is
trained per run, so its features belong to that run's folder.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ldm_eval.metrics.cache import cache_root
from ldm_eval.metrics.features import RESIZE, backend_label, compute_features
from pipelines.atomic import atomic_path, write_json_atomic

CACHEABLE_BACKENDS = ("inception", "torchmetrics")


def tensor_digest(images: torch.Tensor) -> str:
    """SHA-256 of a uint8 image tensor's shape and bytes: the content of what will be measured."""
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class ReferenceKey:
    """Everything reference features depend on."""

    content: str  # tensor_digest of the images actually fed to the network
    source: str  # where they came from, for people (not part of the identity)
    backend: str
    resize: str
    n: int

    @property
    def digest(self) -> str:
        identity = {"content": self.content, "backend": self.backend, "resize": self.resize, "n": self.n}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class ReferenceFeatures:
    features: np.ndarray
    key: ReferenceKey
    cached: bool  # True: read from the cache, no network pass
    seconds: float  # this call's time: computing, or reading from the cache
    compute_seconds: float | None  # what computing them took (the first time), i.e. the time a cache hit saves


def reference_features(images_uint8: torch.Tensor, backend: str, device: torch.device, source: str,
                       root: Path | None = None) -> ReferenceFeatures:
    """Features of ``images_uint8`` (N, C, H, W) for ``backend``, from the cache when it holds them."""
    if backend not in CACHEABLE_BACKENDS:
        raise ValueError(f"Only {', '.join(CACHEABLE_BACKENDS)} features are cached (got {backend!r}).")
    start = time.perf_counter()
    key = ReferenceKey(content=tensor_digest(images_uint8), source=source, backend=backend_label(backend),
                       resize=RESIZE[backend], n=int(images_uint8.shape[0]))
    folder = root or cache_root()
    path, sidecar = folder / f"{key.digest}.npy", folder / f"{key.digest}.json"
    if path.is_file() and sidecar.is_file():
        try:
            feats = np.load(path, allow_pickle=False)
            spent = json.loads(sidecar.read_text()).get("compute_seconds")
            if feats.shape[0] == key.n and np.isfinite(feats).all():
                return ReferenceFeatures(feats, key, True, time.perf_counter() - start, spent)
        except (OSError, ValueError):
            pass  # a damaged entry is recomputed and replaced below
    feats = compute_features(images_uint8, backend, device)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, feats)
    write_json_atomic(sidecar, {**asdict(key), "compute_seconds": round(seconds, 3), "device": str(device)})
    return ReferenceFeatures(feats, key, False, seconds, round(seconds, 3))

