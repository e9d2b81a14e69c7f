"""Would a person recognise the samples? A classifier trained on real data answers, with numbers.

FID compares distributions; it does not say whether single samples show anything. A
classifier trained on real images does: a sample it assigns to one class with high
probability shows a recognisable object, and the spread of those classes over many
unconditional samples says whether the model draws all of them or a favourite few (mode
collapse). The same measurement on real held-out images gives the scale: a classifier that
is sure of 85 % of real images cannot be sure of more samples than that. For a latent model
the first stage lowers that ceiling: the same images, encoded and decoded by its autoencoder,
are what its denoiser could at best reproduce, so their share separates what the autoencoder
loses from what the denoiser has not yet learned.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ldm_eval.metrics.domain_classifier import (
    ClassifierError,
    DomainClassifier,
    train_domain_classifier,
)
from pipelines.atomic import write_json_atomic
from pipelines.data import FASHION_MNIST, STRATIFY_KEYS, load_dataset
from pipelines.first_stage import FirstStage
from pipelines.images import signed_to_uint8, uint8_to_signed, unit_nhwc_to_uint8_nchw
from pipelines.loading import load_pipeline
from pipelines.pipeline import resolve_device
from pipelines.sampling import timed_sampling

CONFIDENCE = 0.9  # a sample is recognisable when one class gets at least this probability
MIN_CONFIDENT_SHARE = 0.8  # the zoo's bar: at least this share of samples recognisable...
CLASS_SHARE_RANGE = (0.05, 0.20)  # ...and every class drawn in this share of the samples (10 classes: 10 % each)


@dataclass
class Recognisability:
    """How many samples a real-data classifier is sure of, and how they spread over the classes."""

    n: int
    confidence: float
    confident_share: float  # share of samples whose top class has probability >= confidence
    class_shares: dict[str, float]  # share of all samples predicted as each class
    real_confident_share: float | None = None  # the same share on real held-out images, for scale
    # the same share on the autoencoder's reconstructions of those real images: a latent model's own ceiling
    reconstructed_confident_share: float | None = None

    def meets_bar(self, min_confident: float = MIN_CONFIDENT_SHARE,
                  share_range: tuple[float, float] = CLASS_SHARE_RANGE) -> bool:
        low, high = share_range
        return self.confident_share >= min_confident and all(low <= v <= high for v in self.class_shares.values())

    def sentence(self, judge: str = "", ddim_steps: int | None = None) -> str:
        """One line for cards, reports and the CLI; ``judge`` names the classifier, ``ddim_steps`` the sampler."""
        shares = sorted(self.class_shares.values())
        by = f" by {judge}" if judge else ""
        scale = []
        if self.real_confident_share is not None:
            scale.append(f"real held-out images: {self.real_confident_share:.0%}")
        if self.reconstructed_confident_share is not None:
            scale.append(f"their reconstructions by this autoencoder: {self.reconstructed_confident_share:.0%}")
        real = f" ({'; '.join(scale)})" if scale else ""
        sampler = f" (DDIM {ddim_steps} steps)" if ddim_steps else ""
        return (f"{self.confident_share:.0%} of {self.n} samples assigned to one class with probability >= "
                f"{self.confidence:g}{by}{real}; class shares {shares[0]:.1%} to {shares[-1]:.1%} "
                f"over {len(shares)} classes{sampler}")


def _confident_share(probs: torch.Tensor, confidence: float) -> float:
    return float((probs.max(dim=1).values >= confidence).float().mean())


def recognisability(samples_uint8: torch.Tensor | np.ndarray, classifier: DomainClassifier,
                    real_uint8: torch.Tensor | np.ndarray | None = None,
                    confidence: float = CONFIDENCE,
                    reconstructed_uint8: torch.Tensor | np.ndarray | None = None) -> Recognisability:
    """Measure ``samples_uint8`` (N, C, H, W) with a class classifier trained on real data.

    ``real_uint8`` (real held-out images) and ``reconstructed_uint8`` (the same images through the
    model's autoencoder, :func:`reconstructions`) give the scale the samples are read against.
    """
    if classifier.config.task != "class":
        raise ClassifierError("Recognisability needs a classifier of classes; this one predicts rotations "
                              "(its data set had no labels).")
    if not 0 < confidence < 1:
        raise ClassifierError(f"The confidence must be between 0 and 1 (got {confidence}).")
    probs = classifier.probabilities(samples_uint8)
    if len(probs) == 0:
        raise ClassifierError("No samples to measure.")
    counts = torch.bincount(probs.argmax(dim=1), minlength=classifier.config.num_classes).float()
    names = classifier.config.class_names or [f"class {i}" for i in range(classifier.config.num_classes)]

    def share(images: torch.Tensor | np.ndarray | None) -> float | None:
        return None if images is None else _confident_share(classifier.probabilities(images), confidence)

    return Recognisability(n=len(probs), confidence=confidence,
                           confident_share=_confident_share(probs, confidence),
                           class_shares={name: float(c / len(probs)) for name, c in zip(names, counts)},
                           real_confident_share=share(real_uint8),
                           reconstructed_confident_share=share(reconstructed_uint8))


def reconstructions(first_stage: FirstStage, images_uint8: torch.Tensor, batch_size: int = 256) -> torch.Tensor | None:
    """``images_uint8`` encoded and decoded by the first stage (uint8 NCHW); None in pixel space, which has no ceiling
    of its own below the real images'."""
    if first_stage.vae is None:
        return None
    device = first_stage.vae.device
    _, recon = first_stage.reconstruct(uint8_to_signed(images_uint8.to(device)), batch_size)
    return signed_to_uint8(recon).cpu()


def recognise_models(models: list[str], classifier_dir: Path, real: str = "", n: int = 500, ddim_steps: int = 50,
                     seed: int = 0, batch_size: int = 100, device: str = "auto",
                     scheduler: str = "ddim") -> dict[str, Recognisability]:
    """Sample ``n`` images of each model (``ddim_steps`` of ``scheduler``) and ask a real-data classifier to name them.

    The way to put today's and tomorrow's models side by side with one judge: the classifier
    is loaded, never trained here, so every model is measured by the same one. ``real``
    (``fashion-mnist`` or a folder, whose held-out split is used) gives the real-image share
    for scale.
    """

    dev = resolve_device(device)
    clf = DomainClassifier.load(classifier_dir, dev)
    pipes = {name: load_pipeline(name, device=dev) for name in models}  # a bad folder fails before any sampling
    for name, pipe in pipes.items():
        if (pipe.resolution, pipe.image_channels) != (clf.config.resolution, clf.config.in_channels):
            raise ClassifierError(f"{name} draws {pipe.image_channels}-channel {pipe.resolution} px images; the "
                                  f"classifier reads {clf.config.in_channels}-channel {clf.config.resolution} px.")
    real_images = None
    if real:
        real_images = load_dataset(real if real == FASHION_MNIST else Path(real), clf.config.resolution,
                                   clf.config.in_channels, split="test").images[:n]
    out = {}
    for name, pipe in pipes.items():
        timed = timed_sampling(pipe, n, ddim_steps, scheduler, seed=seed, batch_size=batch_size)
        recon = None if real_images is None else reconstructions(pipe.first_stage, real_images)
        out[name] = recognisability(unit_nhwc_to_uint8_nchw(timed.images), clf, real_uint8=real_images,
                                    reconstructed_uint8=recon)
    return out


@dataclass
class JudgeQuality:
    """How good a judge is on real held-out images: the scale every sample share is read against."""

    n: int  # held-out images measured
    accuracy: float
    confidence: float
    confident_share: float  # held-out images it is sure of (>= confidence): the ceiling for samples
    accuracy_when_confident: float  # of those, how many it names right: a sure judge must also be right
    train_seconds: float

    def sentence(self) -> str:
        return (f"{self.accuracy:.1%} accurate on {self.n} real held-out images; sure (p >= {self.confidence:g}) "
                f"of {self.confident_share:.1%} of them, and right about {self.accuracy_when_confident:.1%} "
                f"of those; trained in {self.train_seconds:.0f} s")


JUDGE_QUALITY_NAME = "held_out.json"


def train_judge(data: str, out: Path, resolution: int, channels: int | None = None, steps: int = 5000,
                width: int = 16, shift: int = 0, batch_size: int = 128, seed: int = 0,
                device: str = "auto", confidence: float = CONFIDENCE) -> JudgeQuality:
    """Train a class classifier on ``data``'s training split and measure it on the held-out split.

    The sweeps train their classifier as one part of a run; this trains one on its own, so a
    stronger judge (wider, longer, with shifts) can measure any model with ``recognise``, and
    so its quality on real images is written beside it (``held_out.json``) for every report
    that quotes it. Nothing here looks at samples: a judge is chosen by real images only.
    """
    import time


    spec = data if data == FASHION_MNIST else Path(data)
    train = load_dataset(spec, resolution, channels, split="train")
    key = next((k for k in STRATIFY_KEYS if k in train.labels), None)
    if key is None:
        raise ClassifierError(f"'{data}' has no class labels to train a judge on (Fashion-MNIST, class "
                              "subfolders or UTKFace file names).")
    test = load_dataset(spec, resolution, channels, split="test")
    dev = resolve_device(device)
    start = time.perf_counter()
    clf = train_domain_classifier(train.images, train.labels[key], steps=steps, batch_size=batch_size, seed=seed,
                                  device=dev, width=width, class_names=train.class_names.get(key), shift=shift,
                                  progress=True)
    seconds = time.perf_counter() - start
    labels = test.labels[key]
    known = labels >= 0
    probs = clf.probabilities(test.images[known])
    right = probs.argmax(dim=1) == labels[known]
    sure = probs.max(dim=1).values >= confidence
    quality = JudgeQuality(n=int(known.sum()), accuracy=float(right.float().mean()), confidence=confidence,
                           confident_share=float(sure.float().mean()),
                           accuracy_when_confident=float(right[sure].float().mean()) if sure.any() else 0.0,
                           train_seconds=round(seconds, 1))
    clf.save(out)
    write_json_atomic(Path(out) / JUDGE_QUALITY_NAME, {**asdict(quality), "data": str(data), "label": key,
                                                       "resolution": resolution, "width": width, "steps": steps,
                                                       "shift": shift, "batch_size": batch_size, "seed": seed})
    return quality


def read_judge_quality(classifier_dir: Path) -> JudgeQuality | None:
    """The held-out quality ``train_judge`` wrote beside a classifier; None for a sweep's own classifier."""
    import json

    path = Path(classifier_dir) / JUDGE_QUALITY_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return JudgeQuality(**{k: record[k] for k in JudgeQuality.__dataclass_fields__})
    except (ValueError, KeyError, TypeError) as err:
        raise ClassifierError(f"Broken {JUDGE_QUALITY_NAME} in '{classifier_dir}': {err}") from err
