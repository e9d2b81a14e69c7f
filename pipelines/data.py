"""Data sets as in-memory uint8 tensors: Fashion-MNIST, any image folder, class-folder or UTKFace labels.

Small research data sets fit in memory once decoded and resized; holding them as one
uint8 tensor makes every later stage (latent cache, FID reference sets, the demo's picker)
a cheap slice instead of re-decoding files.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .errors import InputError
from .images import UNREADABLE_IMAGE_ERRORS, open_image_8bit, uint8_to_signed

log = logging.getLogger(__name__)

SMALL_TRAIN_SET = 100  # fewer training images than this get a warning: memorisation, meaningless metrics
Split = Literal["train", "test", "all"]  # "all": a folder used whole (an evaluation's reference)
FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
UTK_RACES = ("White", "Black", "Asian", "Indian", "Other")
# UTKFace's classes (the class condition, the domain classifier, stratified draws): race x gender, 'Asian woman'
UTK_CLASSES = tuple(f"{race} {gender}" for race in UTK_RACES for gender in ("man", "woman"))
# Folders have no official split: 11 % held out for FID / reconstruction, so that UTKFace keeps
# 1,000 held-out faces for the first-stage study's rFID.
HELD_OUT_SHARE = 0.11


class DatasetError(InputError):
    """A data set that cannot be read: missing path, empty folder, bad resolution..."""


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) with optional integer labels (-1 = unknown)."""

    images: torch.Tensor
    name: str
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def batch(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Float images in [-1, 1]."""
        return uint8_to_signed(self.images[index])

    def subset(self, n: int) -> "ImageDataset":
        return ImageDataset(self.images[:n], self.name, {k: v[:n] for k, v in self.labels.items()}, self.class_names)

    def reordered(self, order: torch.Tensor) -> "ImageDataset":
        """The same images (and labels) in ``order``."""
        return ImageDataset(self.images[order], self.name, {k: v[order] for k, v in self.labels.items()},
                            self.class_names)


STRATIFY_KEYS = ("class", "race")  # Fashion-MNIST, class folders and UTKFace (race x gender; its names sort by age)


def representative_order(dataset: ImageDataset, seed: int) -> tuple[ImageDataset, str]:
    """The data set shuffled so that *every prefix* is a random draw, stratified by label where there is one.

    Why: reference sets, reconstruction images and grids take the first N images. In file
    order those are not representative (CIFAR-10 class folders gave 54 airplanes and 10
    automobiles in the first 64; UTKFace names start with the age, so the first faces are
    babies). Each label group is shuffled and its i-th member placed at (i + u) / n_group,
    u uniform: sorting by that interleaves the groups in proportion, so any first N holds
    each label in its share to within one image. Returns the reordered set and a one-line
    description for reports.
    """
    rng = np.random.default_rng(seed)
    n = len(dataset)
    key = next((k for k in STRATIFY_KEYS if k in dataset.labels), None)
    if key is None:
        return dataset.reordered(torch.from_numpy(rng.permutation(n))), f"a random draw (seed {seed})"
    labels = dataset.labels[key].numpy()
    position = np.empty(n)
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        rank = rng.permutation(len(members))
        position[members] = (rank + rng.random(len(members))) / len(members)
    order = np.lexsort((rng.random(n), position))  # ties (equal positions) broken at random
    return dataset.reordered(torch.from_numpy(order)), f"a random draw (seed {seed}) stratified by {key}"


def load_dataset(
    spec: str | os.PathLike, resolution: int, channels: int | None = None, split: Split = "train"
) -> ImageDataset:
    """``spec`` is ``fashion-mnist`` or a folder of images (searched recursively).

    Images are resized and centre-cropped to ``resolution``; ``channels`` is 1 (gray) or 3
    (RGB), defaulting to the data's own (gray for Fashion-MNIST, RGB for folders).
    """
    if not isinstance(resolution, int) or not 8 <= resolution <= 1024:
        raise DatasetError(f"Resolution must be an integer from 8 to 1024 (got {resolution!r}).")
    if channels not in (None, 1, 3):
        raise DatasetError(f"Channels must be 1 (gray) or 3 (RGB), got {channels!r}.")
    if split not in ("train", "test", "all"):
        raise DatasetError(f"Split must be 'train', 'test' or 'all', got {split!r}.")
    if str(spec) == FASHION_MNIST:
        return load_fashion_mnist(resolution, channels or 1, split)
    return load_image_folder(Path(spec), resolution, channels or 3, split)


# --- Fashion-MNIST ----------------------------------------------------------------------

def _read_idx(path: Path) -> np.ndarray:
    """The idx format: magic (2 zero bytes, dtype code, ndim), big-endian dims, then data."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist_files() -> Path | None:
    """The folder holding the idx files: $LDM_LAB_FASHION_MNIST, else the Debian package's."""
    env = os.environ.get("LDM_LAB_FASHION_MNIST")
    for folder in ((Path(env),) if env else ()) + FASHION_MNIST_DIRS:
        if (folder / "train-images-idx3-ubyte.gz").is_file():
            return folder
    return None


def load_fashion_mnist(resolution: int, channels: int, split: Split) -> ImageDataset:
    """From the Debian package's files, or torchvision's download when they are absent."""
    prefix = "train" if split == "train" else "t10k"
    folder = _fashion_mnist_files()
    if folder is not None:
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    else:  # pragma: no cover - needs the internet
        from torchvision.datasets import (
            FashionMNIST,  # only for the download: it slows every start-up
        )

        root = Path(os.environ.get("LDM_LAB_CACHE", Path.home() / ".cache" / "ldm_lab"))
        try:
            ds = FashionMNIST(root, train=split == "train", download=True)
        except Exception as err:
            raise DatasetError(
                "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist) "
                f"and could not be downloaded: {err}"
            ) from err
        images, labels = ds.data.numpy(), ds.targets.numpy()
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    x = resize_tensor(x, resolution).repeat(1, channels, 1, 1)
    return ImageDataset(
        images=x,
        name=FASHION_MNIST,
        labels={"class": torch.from_numpy(labels.astype(np.int64))},
        class_names={"class": FASHION_MNIST_CLASSES},
    )


def resize_tensor(images: torch.Tensor, resolution: int, mode: str = "bilinear") -> torch.Tensor:
    """Resize square uint8 images (antialiased, bilinear or bicubic); a no-op at the same size."""
    if images.shape[-1] == resolution:
        return images
    chunks = []
    for chunk in images.split(4096):  # bounded float memory for large sets
        out = F.interpolate(chunk.float(), size=(resolution, resolution), mode=mode, antialias=True, align_corners=False)
        chunks.append(out.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(chunks)


# --- image folders ------------------------------------------------------------------------

def parse_utkface_name(name: str) -> dict[str, int] | None:
    """``AGE_GENDER_RACE_DATETIME.jpg.chip.jpg`` to labels; None when a field is missing."""
    parts = name.split("_")
    if len(parts) < 4:
        return None
    try:
        age, gender, race = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not (0 <= age <= 130 and gender in (0, 1) and 0 <= race < len(UTK_RACES)):
        return None
    return {"age": age, "gender": gender, "race": race}


def _split_of(digest: bytes) -> Split:
    """A stable split from the file's content hash: copies of one image share a split."""
    return "test" if digest[0] < 256 * HELD_OUT_SHARE else "train"


def fit_square(img: Image.Image, resolution: int) -> np.ndarray:
    """An 8-bit image resized (short side) and centre-cropped to a square, as (C, H, W) uint8."""
    arr = np.asarray(ImageOps.fit(img, (resolution, resolution), Image.Resampling.BICUBIC), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """One image file resized (short side) and centre-cropped to a square, as (C, H, W) uint8."""
    return fit_square(open_image_8bit(path, channels), resolution)


def folder_classes(root: Path, files: list[Path]) -> list[str]:
    """The class folders of ``root`` in torchvision's ``ImageFolder`` layout, else [].

    The layout is ``root/<class>/**/<image>``: every file inside a subfolder, at least two
    such subfolders. The classes are the sorted subfolder names taken over *all* files, so
    the train and test splits number the classes alike.
    """
    tops = {f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1}
    at_root = any(len(f.relative_to(root).parts) == 1 for f in files)
    return sorted(tops) if len(tops) >= 2 and not at_root else []


def class_label(folder: str) -> str:
    """A class folder's name as people write it: 'ankle_boot' -> 'ankle boot'."""
    return " ".join(folder.replace("_", " ").split()) or folder


def load_image_folder(root: Path, resolution: int, channels: int, split: Split) -> ImageDataset:
    if not root.exists():
        raise DatasetError(f"Data set path '{root}' does not exist (use 'fashion-mnist' or a folder of images).")
    if not root.is_dir():
        raise DatasetError(f"Data set path '{root}' is not a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    class_folders = folder_classes(root, files)
    arrays, names, folders, skipped, seen = [], [], [], [], set()
    duplicates = in_split = upscaled = 0
    smallest = resolution
    for path in tqdm(files, desc=f"Reading {root.name} ({split})", unit="file", leave=False, disable=len(files) < 500):
        try:
            digest = hashlib.sha1(path.read_bytes()).digest()
            if split != "all" and _split_of(digest) != split:
                continue
            in_split += 1
            if digest in seen:  # byte-identical copies would inflate the data and bias FID
                duplicates += 1
                continue
            img = open_image_8bit(path, channels)
            if min(img.size) < resolution:
                upscaled += 1
                smallest = min(smallest, *img.size)
            arrays.append(fit_square(img, resolution))
            seen.add(digest)
            names.append(path.name)
            folders.append(path.relative_to(root).parts[0])
        except UNREADABLE_IMAGE_ERRORS:
            skipped.append(path.name)
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} unreadable or non-image file(s) in '{root}' "
            f"(e.g. {', '.join(skipped[:3])}).",
            stacklevel=2,
        )
    if not arrays:
        raise DatasetError(
            f"No readable images in '{root}' for the {split} split "
            f"({len(files)} file(s) in the folder, {in_split} in this split, {len(skipped)} unreadable)."
        )
    if upscaled:
        warnings.warn(
            f"{upscaled} of {len(arrays)} image(s) in '{root}' are smaller than {resolution} px (down to {smallest} px) "
            f"and were upscaled: a model learns the blur of the upscaling. Use --resolution {smallest} or less.",
            stacklevel=2,
        )
    if split != "test" and len(arrays) < SMALL_TRAIN_SET:  # a held-out split is a small share by design
        warnings.warn(
            f"Only {len(arrays)} image(s) in '{root}' ({split}): a model trained on them memorises them, and "
            f"quality numbers measured against so few mean little (aim for {SMALL_TRAIN_SET} or more).",
            stacklevel=2,
        )
    if duplicates:
        log.info("Dropped %d byte-identical duplicate image(s) in %s.", duplicates, root)
    dataset = ImageDataset(images=torch.from_numpy(np.stack(arrays)), name=root.name)
    if class_folders:
        dataset.labels["class"] = torch.tensor([class_folders.index(f) for f in folders], dtype=torch.int64)
        dataset.class_names["class"] = tuple(class_label(f) for f in class_folders)
        return dataset
    parsed = [parse_utkface_name(n) for n in names]
    if sum(p is not None for p in parsed) >= 0.5 * len(parsed):
        for key in ("age", "gender", "race"):
            dataset.labels[key] = torch.tensor([p[key] if p else -1 for p in parsed], dtype=torch.int64)
        race, gender = dataset.labels["race"], dataset.labels["gender"]
        dataset.labels["class"] = torch.where((race >= 0) & (gender >= 0), race * 2 + gender, torch.full_like(race, -1))
        dataset.class_names = {"gender": ("male", "female"), "race": UTK_RACES, "class": UTK_CLASSES}
    return dataset
