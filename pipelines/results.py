"""What a run measured, as typed records in ``results.jsonl``, and the one function that reads them.

The trainers and the timed sampler in this package produce the facts (a training summary,
sampling speed and memory); the harness adds quality (FID/KID, reconstruction,
conditioning accuracy). Every consumer -- the sweeps' ``--resume``, the reports, the zoo
export and the demo's FID lookup -- reads a run through :func:`read_results`, so the
schema lives here, beside the core, where both the harness and the demo can import it.

Each line of ``results.jsonl`` is ``{"schema": 2, "record": TAG, "key": KEY, ...fields}``,
appended and fsynced as soon as it exists, so a kill loses nothing already measured; a
torn last line (killed mid-write) is ignored. Lines without ``schema`` are the first
layout (plain dicts) and are converted on reading. A field that a record type does not
have is an error, never a silent empty cell.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .atomic import write_json_atomic
from .errors import InputError

RESULTS = "results.jsonl"
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
    weights_sha256: str | None = None  # pipelines.pipeline.weights_digest of the folder; None for hub ids, older runs

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
R = TypeVar("R", bound=Record)


@dataclass
class TrainingSummary:
    """What a training run did and on what: returned by the trainers and written to ``training.json``.

    Every model folder carries one, so the zoo export and the demo read a model's facts here.
    """

    factor: int
    kind: str  # "pixel", "kl" or "vq"
    dataset: str
    resolution: int
    latent_shape: list[int]
    ae_params: int
    train_steps: int
    train_seconds: float
    train_images: int
    train_images_per_s: float
    final_loss: float | None
    batch_size: int
    num_processes: int
    device: str
    device_name: str
    mixed_precision: str
    seed: int
    budget: dict[str, float | None]  # {"max_steps": ..., "max_seconds": ...}
    peak_mem_train_mb: float | None = None
    memory_method: str = "unavailable"
    unet_params: int = 0  # diffusion models
    scaling_factor: float | None = None  # autoencoders: 1 / std of the training latents
    condition: str = "none"
    condition_params: int = 0
    condition_dropout: float | None = None
    losses: str | None = None  # autoencoders: the terms that trained it, e.g. "L1 + KL(1e-06) + PatchGAN(...)"
    codebook_size: int | None = None  # VQ autoencoders
    resumed_at_step: int = 0  # the last training call continued a checkpoint of this step (0: from scratch)

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / "training.json", asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "TrainingSummary":
        """A ``training.json`` of any generation: the first layout lacks only keys that have defaults here."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RecordError(f"Cannot read the training summary '{path}': {err}") from err
        missing = [f.name for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in raw]
        if missing:
            raise RecordError(f"'{path}' lacks {missing}: it is not a training summary.")
        known = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        known["condition"] = known.get("condition") or "none"  # the first layout may write null
        return cls(**known)


# --- the first layout (no "schema" field) ------------------------------------------------

def _upgrade_v1(raw: dict[str, Any], env: dict[str, Any]) -> list[dict[str, Any]]:
    """A first-layout line as one or more current ones (tag in "record", fields beside it)."""
    r = {k: v for k, v in raw.items() if k != "key"}
    tag = r.pop("record")
    if tag in ("train", "cond_train"):
        return [{"record": "train", **r}]
    if tag == "progress":
        for old in ("peak_mem_train_mb", "memory_method", "train_summary"):  # the whole run's, now in "train"
            r.pop(old, None)
        return [{"record": "progress", **r}]
    if tag in ("fid", "sampling"):
        r.pop("ae_kind", None)  # always equal to kind
        return [{"record": tag, **r}]
    if tag == "cond_classifier":
        return [{"record": "classifier", **r}]
    if tag == "cond_eval":  # one line held sampling speed, FID/KID and accuracy: now three records
        cell = {k: r[k] for k in ("condition", "kind", "factor", "guidance", "ddim_steps", "device")}
        sampling = {"record": "sampling", **cell, "n": r["n"], "seconds": r["n"] / r["samples_per_s"],
                    "samples_per_s": r["samples_per_s"], "sec_per_image": 1.0 / r["samples_per_s"],
                    "peak_mem_sample_mb": r["peak_mem_sample_mb"], "memory_method": r["memory_method"],
                    "sample_batch": env.get("config", {}).get("sample_batch"), "scheduler": r["scheduler"]}
        fid = {"record": "fid", **cell, **{k: r[k] for k in ("fid", "kid", "kid_std", "fid_backend", "fid_samples",
                                                             "reference_samples")}}
        conditioning = {"record": "conditioning", **cell, **{k: r[k] for k in (
            "n", "samples_per_class", "class_names", "accuracy", "per_class_accuracy", "per_class_fid",
            "per_class_reference")}}
        return [sampling, fid, conditioning]
    return [{"record": tag, **r}]


def _build(data: dict[str, Any], where: str) -> Record:
    data = dict(data)
    tag = data.pop("record", None)
    cls = RECORD_TYPES.get(tag)
    if cls is None:
        raise RecordError(f"{where}: unknown record type {tag!r} (known: {', '.join(RECORD_TYPES)}).")
    data.pop("schema", None)
    data.pop("key", None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecordError(f"{where}: a {tag!r} record has no field(s) {unknown}.")
    try:
        return cls(**data)
    except TypeError as err:
        raise RecordError(f"{where}: {err}") from err


# --- reading and writing ------------------------------------------------------------------

@dataclass
class Results:
    """Every record of one run, in the order they were written."""

    records: list[Record] = field(default_factory=list)

    def of(self, cls: type[R], **where: Any) -> list[R]:
        """Records of type ``cls`` whose fields equal ``where`` (a misspelt field name is an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(where) - names)
        if unknown:
            raise RecordError(f"{cls.__name__} has no field(s) {unknown}.")
        return [r for r in self.records if type(r) is cls and all(getattr(r, k) == v for k, v in where.items())]

    def one(self, cls: type[R], **where: Any) -> R | None:
        """The last matching record (a re-measurement replaces an earlier one), or None."""
        found = self.of(cls, **where)
        return found[-1] if found else None

    @property
    def environment(self) -> EnvironmentRecord | None:
        return self.one(EnvironmentRecord)

    def __len__(self) -> int:
        return len(self.records)


def read_results(run_dir: str | os.PathLike) -> Results:
    """The typed records of ``run_dir/results.jsonl`` (empty when the file does not exist yet).

    Only the last line may be unreadable (torn by a kill while it was written); anything
    else that does not match the record types is a :class:`RecordError` naming the line.
    """
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return Results()
    lines = path.read_text().splitlines()
    raws: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                continue  # a line torn by a kill
            raise RecordError(f"{path} line {number}: not JSON ({err}).") from err
        if not isinstance(raw, dict) or "record" not in raw:
            raise RecordError(f"{path} line {number}: not a results record.")
        raws.append((number, raw))
    env = next((raw for _, raw in raws if raw.get("record") == "environment"), {})
    records: list[Record] = []
    for number, raw in raws:
        where = f"{path} line {number}"
        schema = raw.get("schema", 1)
        if schema == 1:
            try:
                upgraded = _upgrade_v1(raw, env)
            except (KeyError, TypeError, ZeroDivisionError) as err:
                raise RecordError(f"{where}: an old-layout {raw['record']!r} record is incomplete ({err!r}).") from err
            records += [_build(data, where) for data in upgraded]
        elif schema == SCHEMA_VERSION:
            records.append(_build(raw, where))
        else:
            raise RecordError(f"{where}: schema {schema!r} is newer than this code reads ({SCHEMA_VERSION}).")
    return Results(records)


class ResultsLog:
    """A run folder's append-only ``results.jsonl``, with the records read so far."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.results = read_results(self.run_dir)

    def has(self, cls: type[Record], **where: Any) -> bool:
        """Whether such a measurement is already in the log (``--resume`` skips it)."""
        return bool(self.results.of(cls, **where))

    def append(self, record: Record) -> None:
        line = (json.dumps(record.to_json(), default=_jsonable) + "\n").encode()
        # One write() of the whole line on an O_APPEND descriptor: processes that share a run folder
        # (the zoo's cells trained side by side) append whole lines, never interleaved halves.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover - a full disk; the torn line is ignored on reading
                raise OSError(f"Only {written} of {len(line)} bytes of a result reached '{self.path}'.")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.results.records.append(record)

    def append_once(self, record: Record) -> None:
        """Append unless a record with the same key is already there."""
        if all(r.key != record.key for r in self.results.records):
            self.append(record)


class RecordingLog(ResultsLog):
    """A cell's view of a run's log where it runs on another machine (``--executor ray``).

    It reads a snapshot of the run's records (so a cell skips what is already measured, exactly as
    with the file) and keeps what the cell appends instead of writing it: the driver alone appends
    to ``results.jsonl``, so the log of a run spread over many machines stays one ordered file.
    """

    def __init__(self, run_dir: str | os.PathLike, records: list[dict[str, Any]]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS
        self.results = Results([record_from_json(raw) for raw in records])
        self.new: list[Record] = []

    def append(self, record: Record) -> None:
        self.results.records.append(record)
        self.new.append(record)


def record_to_json(record: Record) -> dict[str, Any]:
    """A record as its ``results.jsonl`` line holds it (plain JSON types)."""
    return json.loads(json.dumps(record.to_json(), default=_jsonable))


def record_from_json(raw: dict[str, Any]) -> Record:
    """A current-schema record from its JSON form (what :func:`record_to_json` gives)."""
    return _build(raw, "a record sent between processes")


def _jsonable(value: object) -> object:
    """NumPy / torch scalars and paths; anything else is a bug in the record, not something to stringify."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"A results record holds a {type(value).__name__}, which JSON cannot store.")
