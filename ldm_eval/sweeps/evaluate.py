"""``python -m ldm_eval evaluate MODEL [MODEL ...] --reference REF``: measure any diffusion model.

A MODEL is one of our folders, a folder in the public ``DDPMPipeline``/``DDIMPipeline`` or
``LDMPipeline`` layout, or a hub id for a user who is online; all load through the core's
one loader (``pipelines.pipeline.load_model``) and sample through its one sampler, as the
sweeps and the demo do. For each model and DDIM step count the evaluation writes what the
sweeps write -- samples/s and s/image after a warm-up, peak memory, FID with its bootstrap
interval and FID-infinity, KID with its spread, a sample grid -- plus what the model is
(layout, kind, f, latent shape, parameters), to ``results.jsonl`` as it goes, so
``--resume`` after a kill redoes nothing measured.

The reference images (a folder, used whole, or Fashion-MNIST's test split) are loaded at
each model's resolution; their Inception features come from the shared reference cache, so
a second evaluation against the same images skips that pass (the report says how long it
would have taken).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ldm_eval.metrics.domain_classifier import DomainClassifier, train_domain_classifier
from ldm_eval.metrics.features import compute_features
from ldm_eval.metrics.reference_cache import reference_features
from ldm_eval.metrics.uncertainty import BOOTSTRAP_RESAMPLES
from ldm_eval.reporting.tables import FILE_ORDER_DRAW
from ldm_eval.sweeps.executor import Cell, prepare_executor, run_cells
from ldm_eval.sweeps.run_folder import environment, fid_record
from ldm_eval.sweeps.settings import (
    ExecutorFlags,
    SweepError,
    check_ddim_steps,
    help_text,
    speedups_field,
)
from pipelines.data import (
    FASHION_MNIST,
    ImageDataset,
    load_dataset,
    representative_order,
    resize_tensor,
)
from pipelines.errors import whole_number
from pipelines.images import save_grid, unit_nhwc_to_uint8_nchw
from pipelines.loading import load_model, weights_digest
from pipelines.pipeline import SAMPLERS, LatentDiffusionPipeline, resolve_device
from pipelines.precision import sampling_dtype
from pipelines.records import FidRecord, ModelRecord, ReferenceRecord, SamplingRecord
from pipelines.results_log import Results, ResultsLog
from pipelines.sampling import timed_sampling, warm_up
from pipelines.speedups import Speedups

log = logging.getLogger(__name__)


@dataclass
class EvaluateSettings(ExecutorFlags):
    """What ``evaluate`` measures and how; with ``--executor ray`` each model is a cell on the cluster."""

    reference: str = field(default="", metadata=help_text("reference images: a folder (used whole) or fashion-mnist"))
    n: int = field(default=500, metadata=help_text("samples per model and step count (and reference images)"))
    reference_split: Literal["auto", "all", "test"] = field(default="auto", metadata=help_text(
        "auto: fashion-mnist's test split, a folder whole; test: a folder's held-out share, never trained on"))
    reference_n: int = field(default=0, metadata=help_text("reference images (0: as many as --n)"))
    ddim_steps: list[int] = field(default_factory=lambda: [10, 50], metadata=help_text("DDIM step counts, e.g. 10,50"))
    backend: Literal["inception", "domain"] = field(default="inception", metadata=help_text(
        "FID features: inception (standard) or domain (a small CNN trained on the reference images)"))
    batch_size: int = field(default=50, metadata=help_text("images per sampling batch (never changes the images)"))
    image_size: int = field(default=0, metadata=help_text(
        "judge at this size: samples resized (bicubic, as one enlarges a picture) and the references loaded at it, "
        "e.g. 64-px models against 128-px faces; 0: each model at its own resolution"))
    speedups: Speedups = speedups_field("CUDA graphs on a GPU; nothing paid for sampling on a CPU")
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata=help_text(
        "sampling precision (fp16 on GPUs; bf16 where the device runs it fast)"))
    scheduler: Literal["ddim", "ddpm"] = field(default="ddim", metadata=help_text(
        "sampler: ddim (deterministic at eta 0) or ddpm (ancestral, as DDPM-trained models sample); "
        "--ddim-steps then counts its steps"))
    eta: float = field(default=0.0, metadata=help_text("DDIM's eta: 0 deterministic, 1 as noisy as DDPM (ddim only)"))
    out: Path | None = field(default=None, metadata=help_text(
        "run folder (default: a new runs/evaluate/DATE-TIME for every run)"))
    resume: bool = field(default=False, metadata=help_text(
        "continue a killed evaluation in --out; measured cells are kept"))
    seed: int = field(default=0, metadata=help_text("seed of sampling"))
    bootstrap_resamples: int = field(default=BOOTSTRAP_RESAMPLES, metadata=help_text(
        "bootstrap resamples behind each FID's 95 % interval (0 skips it)"))
    classifier_steps: int = field(default=500, metadata=help_text("training steps of the domain classifier"))

    def validate(self, models: list[str]) -> None:
        if not models:
            raise SweepError("Name at least one model: a folder, or a hub id when online.", "models")
        if not self.reference:
            raise SweepError("Give the reference images: --reference FOLDER or --reference fashion-mnist.", "reference")
        whole_number(self.n, "n", "The number of samples", 2, 1_000_000)
        whole_number(self.reference_n, "reference_n", "The number of reference images", 0, 1_000_000)
        if 0 < self.reference_n < 2:
            raise SweepError("FID needs at least 2 reference images (0: as many as --n).", "reference_n")
        if self.reference_split not in ("auto", "all", "test"):
            raise SweepError(f"Unknown reference split {self.reference_split!r}; choose auto, all or test.",
                             "reference_split")
        if not self.ddim_steps:
            raise SweepError("Give at least one DDIM step count.", "ddim_steps")
        check_ddim_steps(self.ddim_steps, "ddim_steps")
        whole_number(self.batch_size, "batch_size", "Batch size", 1, 4096)
        if self.image_size and not 8 <= self.image_size <= 1024:
            raise SweepError(f"--image-size must be from 8 to 1024 px, or 0 for each model's own resolution "
                             f"(got {self.image_size}).", "image_size")
        whole_number(self.seed, "seed", "Seed", 0, 2**31 - 1)
        whole_number(self.bootstrap_resamples, "bootstrap_resamples", "The number of bootstrap resamples", 0, 100_000)
        whole_number(self.classifier_steps, "classifier_steps", "Classifier steps", 1, 10**6)
        if self.scheduler not in SAMPLERS:
            raise SweepError(f"Unknown sampler {self.scheduler!r}; choose {' or '.join(SAMPLERS)}.", "scheduler")
        if not 0 <= self.eta <= 1 or (self.eta and self.scheduler != "ddim"):
            raise SweepError(f"eta is DDIM's noise, from 0 to 1, and only for --scheduler ddim (got {self.eta} "
                             f"with {self.scheduler}).", "eta")
        if self.resume and self.out is None:
            raise SweepError("Name the evaluation to continue: --resume needs --out FOLDER.", "resume")
        self.validate_executor()

    def with_run_folder(self) -> "EvaluateSettings":
        """These settings with a run folder: the one given, else a new one under runs/evaluate."""
        if self.out is not None:
            return self
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out, i = Path("runs/evaluate") / stamp, 2
        while out.exists():  # two evaluations started within the same second
            out, i = Path("runs/evaluate") / f"{stamp}-{i}", i + 1
        return replace(self, out=out)


def model_names(models: list[str]) -> list[str]:
    """Short unique names: the folder's or repository's last part, numbered when two collide."""
    names: list[str] = []
    for m in models:
        base = Path(str(m).rstrip("/")).name or str(m)
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def _kind(pipe: LatentDiffusionPipeline) -> str:
    return "pixel" if pipe.factor == 1 else pipe.first_stage.kind


def _reference_images(spec: str, resolution: int, channels: int, n: int, seed: int | None,
                      split: str = "auto") -> tuple[ImageDataset, str]:
    """The reference set, drawn at random (stratified by label) unless ``seed`` is None (file order)."""
    if split == "auto":
        split = "test" if spec == FASHION_MNIST else "all"
    data = load_dataset(spec, resolution, channels, split=split)
    if len(data) < n:
        raise SweepError(f"The reference '{spec}' ({split} split) has {len(data)} images; {n} are asked for (lower "
                         "--n or --reference-n).", "n")
    return (data, FILE_ORDER_DRAW) if seed is None else representative_order(data, seed)


def _classifier_folder(cfg: EvaluateSettings, resolution: int) -> Path:
    return cfg.out / f"domain_classifier-{resolution}px"


def judged_size(cfg: EvaluateSettings, resolution: int) -> int:
    """The image size samples are judged at: ``--image-size`` when given, else the model's own resolution."""
    return cfg.image_size or resolution


def _reference(cfg: EvaluateSettings, log_: ResultsLog, device: torch.device, data: ImageDataset,
               resolution: int) -> np.ndarray:
    """The reference images' features; for the domain backend, its classifier is trained and saved first
    (in the run folder, where every cell reads it)."""
    n_ref = cfg.reference_n or cfg.n
    images = data.images[:n_ref]
    if cfg.backend == "domain":
        folder = _classifier_folder(cfg, resolution)
        if (folder / "config.json").is_file():
            clf = DomainClassifier.load(folder, device)
        else:
            clf = train_domain_classifier(data.images, steps=cfg.classifier_steps, seed=cfg.seed, device=device)
            clf.save(folder)
        return compute_features(images, "domain", device, classifier=clf)
    ref = reference_features(images, "inception", device, source=f"{cfg.reference} at {resolution} px")
    log_.append(ReferenceRecord(source=ref.key.source, content=ref.key.content, fid_backend="inception", n=n_ref,
                                resolution=resolution, cached=ref.cached, seconds=round(ref.seconds, 3),
                                compute_seconds=ref.compute_seconds))
    return ref.features


@dataclass
class EvaluationContext:
    """What one model's cell runs in, here or on a node of a Ray cluster."""

    settings: EvaluateSettings
    log: ResultsLog
    device: torch.device
    references: dict[tuple[int, int], np.ndarray]  # (resolution, channels) -> the reference images' features
    loaded: dict[str, LatentDiffusionPipeline] = field(default_factory=dict)  # the driver's models, by name


@dataclass(frozen=True)
class EvaluationOpener:
    """How a cell elsewhere gets its context: the driver's reference features travel with it (a few MB)."""

    settings: EvaluateSettings
    references: dict[tuple[int, int], np.ndarray]

    def open(self, log: ResultsLog) -> EvaluationContext:
        return EvaluationContext(self.settings, log, resolve_device(self.settings.device), self.references)

    def for_cluster(self) -> "EvaluationOpener":
        return replace(self, settings=replace(self.settings, out=self.settings.out.resolve()))


def _model_measured(name: str, ddim_steps: tuple[int, ...], results: Results) -> bool:
    return all(results.of(FidRecord, model=name, ddim_steps=s) and results.of(SamplingRecord, model=name, ddim_steps=s)
               for s in ddim_steps)


def _evaluate_model(name: str, source: str, load_from: str, ctx: EvaluationContext) -> None:
    """One model's cell: load it, then sample, time and score it at every DDIM step count not yet measured.

    ``source`` is what the user named (recorded); ``load_from`` the same model as this machine reaches it.
    """
    cfg, results, device = ctx.settings, ctx.log, ctx.device
    pipe = ctx.loaded.get(name) or load_model(load_from, device=device, dtype=sampling_dtype(cfg.mixed_precision,
                                                                                               device))
    if pipe.condition != "none":
        log.info("%s is %s-conditional; evaluating its unconditional samples.", name, pipe.condition)
    size = judged_size(cfg, pipe.resolution)
    reference = ctx.references[(size, pipe.image_channels)]
    classifier = (DomainClassifier.load(_classifier_folder(cfg, size), device)
                  if cfg.backend == "domain" else None)
    kind = _kind(pipe)
    if not results.has(ModelRecord, model=name):
        results.append(ModelRecord(
            model=name, source=source, layout=pipe.loaded_from, kind=kind, factor=pipe.factor,
            resolution=pipe.resolution, latent_shape=list(pipe.first_stage.latent_shape(pipe.resolution)),
            params=pipe.parameter_counts(), dtype=str(pipe.unet.dtype).removeprefix("torch."), device=str(device),
            weights_sha256=weights_digest(load_from)))
    warmed = False
    for steps in cfg.ddim_steps:
        cell = {"model": name, "kind": kind, "factor": pipe.factor, "ddim_steps": steps}
        if results.has(FidRecord, **cell) and results.has(SamplingRecord, **cell):
            continue
        print(f"== {name}: {cfg.scheduler.upper()} {steps} steps, N = {cfg.n} ==", flush=True)
        if not warmed:
            warm_up(pipe)
            warmed = True
        timed = timed_sampling(pipe, cfg.n, steps, cfg.scheduler, seed=cfg.seed, batch_size=cfg.batch_size,
                               eta=cfg.eta, speedups=cfg.speedups)
        save_grid(timed.images[:64], cfg.out / "grids" / f"samples-{name}-{cfg.scheduler}{steps}.png")
        judged = resize_tensor(unit_nhwc_to_uint8_nchw(timed.images), size, mode="bicubic")
        feats = compute_features(judged, cfg.backend, device, classifier=classifier)
        results.append(fid_record(reference, feats, cfg.backend, device, cfg.bootstrap_resamples, cfg.seed, **cell))
        results.append(SamplingRecord(
            **cell, device=str(device), n=len(timed.images), seconds=timed.seconds,
            samples_per_s=timed.samples_per_s, sec_per_image=timed.sec_per_image,
            peak_mem_sample_mb=timed.peak_mb, memory_method=timed.memory_method, sample_batch=cfg.batch_size,
            scheduler=cfg.scheduler, eta=cfg.eta if cfg.scheduler == "ddim" else None))


def run_evaluation(models: list[str], cfg: EvaluateSettings) -> Path:
    """Evaluate (or resume evaluating) ``models`` against the reference; returns the run folder.

    Each model is a cell (:mod:`ldm_eval.sweeps.executor`): with ``--executor ray`` the models are measured side
    by side on a cluster, the reference features and the domain classifier coming from this driver.
    """
    cfg.validate(models)
    cfg = cfg.with_run_folder()
    prepare_executor(cfg)  # Ray installed, its cluster reachable, the asks possible: before any work
    device = resolve_device(cfg.device)
    dtype = sampling_dtype(cfg.mixed_precision, device)
    results = ResultsLog(cfg.out)
    if len(results.results) and not cfg.resume:
        raise SweepError(f"'{cfg.out}' already holds results: resume the evaluation (--resume), or choose a new "
                         "--out folder.", "resume")
    names = model_names(models)
    # Load everything before measuring anything: a bad folder or hub id fails in seconds, not after an hour.
    pipes = {name: load_model(source, device=device, dtype=dtype) for name, source in zip(names, models)}
    begun = results.results.environment
    draw_seed = None if begun is not None and "reference_draw" not in begun.config else cfg.seed  # keep an old run's
    keys = list(dict.fromkeys((judged_size(cfg, p.resolution), p.image_channels) for p in pipes.values()))
    images: dict[tuple[int, int], ImageDataset] = {}
    for key in keys:  # the reference at every size a model needs
        images[key], draw = _reference_images(cfg.reference, *key, cfg.reference_n or cfg.n, draw_seed,
                                              cfg.reference_split)
    results.append_once(environment({"command": "evaluate", "models": list(models), **asdict(cfg),
                                     "reference_draw": draw}, device))
    references = {key: _reference(cfg, results, device, images[key], key[0]) for key in keys}
    cluster = cfg.executor == "ray"
    cells = [Cell(key=f"model {name}", run=partial(_evaluate_model, name, str(source),
                                                    str(Path(source).resolve()) if cluster and Path(source).exists()
                                                    else str(source)),
                  done=partial(_model_measured, name, tuple(cfg.ddim_steps)))
             for name, source in zip(names, models)]
    # here the cells use the models loaded above; on a cluster each task loads its own, where it runs
    run_cells(EvaluationContext(cfg, results, device, references, pipes), EvaluationOpener(cfg, references), cells)
    return cfg.out
