"""The typed records of ``results.jsonl``: what a run measured, one dataclass per kind of measurement.

The trainers and the timed sampler in this package produce the facts (a training summary,
sampling speed and memory); the harness adds quality (FID/KID, reconstruction,
conditioning accuracy). The schema lives here, beside the core, where both the harness and
the demo can import it; :mod:`pipelines.results_log` writes the records and reads them back.
A field that a record type does not have is an error, never a silent empty cell.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import InputError

SCHEMA_VERSION = 2


class RecordError(InputError):
    """A results file whose lines do not match the record types."""


@dataclass
class Record:
    """Base of every record: a tag naming the type and a key naming the measurement."""

    tag: ClassVar[str] = ""

    @property
    def key(self) -> str:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "record": self.tag, "key": self.key, **dataclasses.asdict(self)}


@dataclass
class EnvironmentRecord(Record):
    """Where and with what a run was measured (written once, when the run starts)."""

    tag: ClassVar[str] = "environment"
    started: str
    python: str
    platform: str
    torch: str
    diffusers: str
    accelerate: str
    torchmetrics: str
    clean_fid: str
    device: str
    device_name: str
    threads: int
    config: dict[str, Any]

    @property
    def key(self) -> str:
        return "environment"


@dataclass
class TrainingRecord(Record):
    """A trained denoiser: budget, speed and peak memory of its training (the paper's Tab. 13 facts)."""

    tag: ClassVar[str] = "train"
    kind: str  # "pixel", "kl" or "vq"
    factor: int
    latent_shape: list[int]
    unet_params: int
    ae_params: int
    train_steps: int
    train_seconds: float
    train_images_per_s: float
    device: str
    device_name: str
    batch_size: int
    peak_mem_train_mb: float | None
    memory_method: str
    degenerate: bool  # latent side <= 2
    budget: str  # "steps" or "seconds"
    budget_value: float
    resolution: int | None = None
    condition: str = "none"
    condition_params: int = 0
    condition_dropout: float | None = None
    final_loss: float | None = None

    @property
    def key(self) -> str:
        if self.condition == "none":
            return f"train/{self.kind}/f{self.factor}"
        return f"cond-train/{self.condition}/{self.kind}/f{self.factor}"


@dataclass
class AutoencoderRecord(Record):
    """A first stage's reconstruction quality (the paper's Tab. 8)."""

    tag: ClassVar[str] = "autoencoder"
    kind: str
    factor: int
    ae_params: int
    latent_shape: list[int]
    scaling_factor: float
    ae_train_steps: int
    ae_train_seconds: float
    psnr: float
    ssim: float
    recon_samples: int
    rfid: float | None
    rfid_samples: int
    rfid_backend: str | None
    device: str
    variant: str = ""  # tells apart models of one kind and f (e.g. "no-gan"); "" for the default
    losses: str | None = None
    codebook_size: int | None = None
    codebook_usage: float | None = None  # share of codes used on the held-out images (VQ)
    perplexity: float | None = None  # effective number of codes on the held-out images (VQ)
    rkid: float | None = None  # KID between held-out images and reconstructions, beside rFID
    rkid_std: float | None = None
    ae_train_images_per_s: float | None = None
    rfid_ci_low: float | None = None  # bootstrap 95 % interval of rFID (resampling the reconstructions)
    rfid_ci_high: float | None = None
    rfid_inf: float | None = None  # extrapolated rFID-infinity

    @property
    def key(self) -> str:
        return f"autoencoder/{self.kind}/f{self.factor}" + (f"/{self.variant}" if self.variant else "")


@dataclass
class ProgressRecord(Record):
    """FID at one point along training (the paper's Fig. 6)."""

    tag: ClassVar[str] = "progress"
    kind: str
    factor: int
    point: int
    train_steps: int
    train_seconds: float
    fid: float
    fid_backend: str
    fid_samples: int
    ddim_steps: int

    @property
    def key(self) -> str:
        return f"progress/{self.kind}/f{self.factor}/{self.point}"


@dataclass(kw_only=True)
class SampleSetRecord(Record):
    """A measurement of one set of samples: which model, how many DDIM steps, which condition and guidance."""

    kind: str
    factor: int
    ddim_steps: int
    device: str
    condition: str = "none"  # unconditional models: "none", guidance 1
    guidance: float = 1.0
    model: str = ""  # an evaluation's model name (several may share kind and f); "" in sweeps

    def _key(self, prefix: str) -> str:
        if self.model:
            return f"{prefix}/model/{self.model}/ddim{self.ddim_steps}"
        if self.condition == "none":
            return f"{prefix}/{self.kind}/f{self.factor}/ddim{self.ddim_steps}"
        return f"{prefix}/{self.condition}/{self.kind}/f{self.factor}/ddim{self.ddim_steps}/g{self.guidance:g}"


@dataclass(kw_only=True)
class SamplingRecord(SampleSetRecord):
    """Sampling speed and peak memory (the paper's Fig. 7, x axis)."""

    tag: ClassVar[str] = "sampling"
    n: int
    seconds: float
    samples_per_s: float
    sec_per_image: float
    peak_mem_sample_mb: float | None
    memory_method: str
    sample_batch: int | None  # None: not recorded (first-layout conditioning runs)
    scheduler: str
    eta: float | None = None  # DDIM's eta (None: DDPM, or not recorded)

    @property
    def key(self) -> str:
        return self._key("sampling")


@dataclass(kw_only=True)
class FidRecord(SampleSetRecord):
    """FID and KID of the sample set, with the feature backend and N that produced them."""

    tag: ClassVar[str] = "fid"
    fid: float
    kid: float | None
    kid_std: float | None
    fid_backend: str
    fid_samples: int
    reference_samples: int
    # small-N honesty: a bootstrap 95 % interval (resampling the samples) and the extrapolated
    # FID-infinity (Chong & Forsyth 2020); None where N was too small or for older runs
    fid_ci_low: float | None = None
    fid_ci_high: float | None = None
    fid_inf: float | None = None
    fid_resamples: int | None = None
    kid_subset_size: int | None = None
    # fidelity and diversity apart, on the same features (Inception backend; None for others and older runs):
    # precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020), k neighbours
    precision: float | None = None
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    prdc_k: int | None = None

    @property
    def key(self) -> str:
        return f"{self._key('fid')}/{self.fid_backend}"


@dataclass(kw_only=True)
class ConditioningRecord(SampleSetRecord):
    """How often a conditional model draws the class it was asked for, and FID per class."""

    tag: ClassVar[str] = "conditioning"
    n: int
    samples_per_class: int
    class_names: list[str]
    accuracy: float
    per_class_accuracy: list[float]
    per_class_fid: list[float]
    per_class_reference: list[int]

    @property
    def key(self) -> str:
        return self._key("cond-eval")


@dataclass
class ClassifierRecord(Record):
    """The domain classifier that judges conditioning accuracy, scored on real held-out images."""

    tag: ClassVar[str] = "classifier"
    n: int
    accuracy_on_real: float
    task: str = "class"  # "rotation": no labels, so it learned to predict quarter turns (chance 0.25)
    num_classes: int | None = None

    @property
    def key(self) -> str:
        return "cond-classifier"


@dataclass(kw_only=True)
class RecognisabilityRecord(SampleSetRecord):
    """How many samples the run's real-data classifier is sure of, and their spread over its classes.

    ``real_confident_share`` is the same share on as many real held-out images: the ceiling
    this classifier allows; ``reconstructed_confident_share`` the share on those images encoded and
    decoded by the model's autoencoder (None in pixel space, and in records written before it was
    measured). ``meets_bar``: the zoo's bar (see ``ldm_eval.recognisability``).
    """

    tag: ClassVar[str] = "recognisability"
    n: int
    confidence: float
    confident_share: float
    class_shares: dict[str, float]
    real_confident_share: float | None
    meets_bar: bool
    reconstructed_confident_share: float | None = None

    @property
    def key(self) -> str:
        return self._key("recognisability")


@dataclass
class ModelRecord(Record):
    """A model an evaluation measured: where it came from and what it is (``evaluate``)."""

    tag: ClassVar[str] = "model"
    model: str  # the name in tables and plots
    source: str  # the folder or hub id it was loaded from
    layout: str  # the pipeline class its folder was saved as (ours, DDPMPipeline, LDMPipeline, ...)
    kind: str  # pixel, kl or vq
    factor: int
    resolution: int
    latent_shape: list[int]
    params: dict[str, int]  # per component: unet, vae, condition_encoder
    dtype: str
    device: str
    weights_sha256: str | None = None  # pipelines.loading.weights_digest of the folder; None for hub ids, older runs

    @property
    def key(self) -> str:
        return f"model/{self.model}"


@dataclass
class ReferenceRecord(Record):
    """The reference pass of an evaluation: computed, or read from the shared feature cache (and the time saved)."""

    tag: ClassVar[str] = "reference"
    source: str
    content: str  # SHA-256 of the reference images as measured
    fid_backend: str
    n: int
    resolution: int
    cached: bool
    seconds: float  # this run's reference pass
    compute_seconds: float | None  # what computing the features took; a cache hit saves about this much

    @property
    def key(self) -> str:
        return f"reference/{self.resolution}/{self.fid_backend}/{self.n}"


RECORD_TYPES: dict[str, type[Record]] = {cls.tag: cls for cls in (
    EnvironmentRecord, TrainingRecord, AutoencoderRecord, ProgressRecord, SamplingRecord, FidRecord,
    ConditioningRecord, ClassifierRecord, ModelRecord, ReferenceRecord, RecognisabilityRecord)}
