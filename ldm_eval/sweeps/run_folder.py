"""What every sweep shares: its settings, its run folder, and the measurements both sweeps make.

A sweep is a list of cells (one autoencoder or denoiser per factor x kind x condition).
:func:`open_run` opens the run folder once -- results log, held-out images, the domain
classifier, the environment record -- and the helpers here measure a cell's first stage
(:func:`autoencoder_cell`) and the FID/KID of a sample set (:func:`fid_records`) the same
way for the compression sweep (``sweep.py``) and the conditioning sweep (``conditional.py``).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldm_eval.metrics.domain_classifier import DomainClassifier, train_domain_classifier
from ldm_eval.metrics.features import backend_label, compute_features
from ldm_eval.metrics.frechet import kid_from_features, kid_subset_for
from ldm_eval.metrics.prdc import PRDC_K, prdc
from ldm_eval.metrics.recognisability import recognisability, reconstructions
from ldm_eval.metrics.reconstruction import reconstruction_metrics
from ldm_eval.metrics.reference_cache import CACHEABLE_BACKENDS, reference_features
from ldm_eval.metrics.uncertainty import fid_with_uncertainty
from ldm_eval.reporting.tables import FILE_ORDER_DRAW
from ldm_eval.sweeps.settings import RunSettings, SweepError
from pipelines.atomic import atomic_path
from pipelines.autoencoder_training import AutoencoderTrainConfig, train_autoencoder
from pipelines.codebook import codebook_stats
from pipelines.data import (
    STRATIFY_KEYS,
    ImageDataset,
    load_dataset,
    representative_order,
)
from pipelines.first_stage import FirstStage
from pipelines.images import save_grid, signed_to_uint8
from pipelines.pipeline import resolve_device
from pipelines.records import (
    AutoencoderRecord,
    ClassifierRecord,
    EnvironmentRecord,
    FidRecord,
    RecognisabilityRecord,
    TrainingRecord,
)
from pipelines.results_log import Results, ResultsLog
from pipelines.training import device_name
from pipelines.training_summary import TrainingSummary

KID_SUBSETS = 50
KID_SUBSET_SIZE = 1000


@dataclass
class RunContext:
    """One open run folder: its settings, results log, device, held-out images and domain classifier."""

    settings: RunSettings
    log: ResultsLog
    device: torch.device
    test: ImageDataset
    classifier: DomainClassifier | None  # None: this run measures with Inception features only
    _features: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        assert self.settings.out is not None
        return self.settings.out

    def reference(self, backend: str, n: int) -> np.ndarray:
        """Features of the first ``n`` held-out images (a random, stratified draw: ``open_run``),
        computed once and kept for ``--resume``.

        Inception features come from the shared reference cache (``reference_cache``), so any
        run or evaluation against the same images skips the pass; domain-classifier features
        belong to this run's classifier and are kept in the run folder.
        """
        if (backend, n) not in self._features:
            if backend in CACHEABLE_BACKENDS:
                s = self.settings
                ref = reference_features(self.test.images[:n], backend, self.device,
                                         source=f"{s.dataset} held-out split at {s.resolution} px")
                feats = ref.features
            else:
                path = self.out / "reference" / f"{backend}-{n}.npy"
                if path.is_file():
                    feats = np.load(path)
                else:
                    feats = compute_features(self.test.images[:n], backend, self.device, classifier=self.classifier)
                    with atomic_path(path) as tmp:
                        np.save(tmp, feats)
            self._features[(backend, n)] = feats
        return self._features[(backend, n)]


def environment(config: dict[str, Any], device: torch.device) -> EnvironmentRecord:
    import accelerate
    import diffusers
    import torchmetrics

    try:
        clean_fid = version("clean-fid")
    except PackageNotFoundError:  # pragma: no cover
        clean_fid = "unknown"
    return EnvironmentRecord(
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"), python=platform.python_version(),
        platform=platform.platform(), torch=torch.__version__, diffusers=diffusers.__version__,
        accelerate=accelerate.__version__, torchmetrics=torchmetrics.__version__, clean_fid=clean_fid,
        device=str(device), device_name=device_name(str(device)), threads=torch.get_num_threads(), config=config,
    )


def _classifier(settings: RunSettings, folder: Path, device: torch.device) -> DomainClassifier:
    if (folder / "config.json").is_file():
        return DomainClassifier.load(folder, device)
    train = load_dataset(settings.dataset, settings.resolution, split="train")
    label_key = next((k for k in STRATIFY_KEYS if k in train.labels), None)
    labels = train.labels[label_key] if label_key else None
    names = train.class_names.get(label_key) if label_key else None
    clf = train_domain_classifier(train.images, labels, steps=settings.classifier_steps, seed=settings.seed,
                                  device=device, class_names=names, progress=True)
    clf.save(folder)
    return clf


def open_run(settings: RunSettings, config: dict[str, Any], n_needed: int, label_key: str | None = None,
             classifier: bool = True, log: ResultsLog | None = None) -> RunContext:
    """Open (or resume) the run folder: results log, held-out data, classifier, environment record.

    ``config`` is the whole sweep configuration, flat, as the environment record stores it;
    ``label_key`` names a label the held-out split must carry (checked before any training);
    ``classifier=False`` skips the domain classifier (a run that measures with Inception only).
    """
    assert settings.out is not None, "the CLI fills the default run folder"
    device = resolve_device(settings.device)
    log = log if log is not None else ResultsLog(settings.out)  # a cell elsewhere: its snapshot of the log
    if len(log.results) and not settings.resume:
        raise SweepError(f"'{settings.out}' already holds results: resume the run, or choose a new run folder.",
                         "resume")
    test = load_dataset(settings.dataset, settings.resolution, split="test")
    if label_key is not None and label_key not in test.labels:
        raise SweepError(f"This sweep needs '{label_key}' labels; '{settings.dataset}' has none (use fashion-mnist).",
                         "dataset")
    if len(test) < n_needed:
        raise SweepError(f"The held-out split has {len(test)} images; {n_needed} samples need as many.", "fid_samples")
    begun = log.results.environment
    if begun is not None and "reference_draw" not in begun.config:  # keep a resumed older run's images
        draw = FILE_ORDER_DRAW
    else:
        test, draw = representative_order(test, settings.seed)
    if begun is None:
        log.append(environment({**config, "reference_draw": draw}, device))
    clf_folder = (settings.share_from or settings.out) / "domain_classifier"
    clf = _classifier(settings, clf_folder, device) if classifier else None
    if clf is not None and not log.has(ClassifierRecord):  # the report says what the domain features learned
        key = next((k for k in STRATIFY_KEYS if k in test.labels), None)
        labels = test.labels[key] if key is not None and clf.config.task == "class" else None
        log.append(ClassifierRecord(n=len(test), accuracy_on_real=round(clf.accuracy(test.images, labels), 4),
                                    task=clf.config.task, num_classes=clf.config.num_classes))
    return RunContext(settings, log, device, test, clf)


def fid_record(reference: np.ndarray, features: np.ndarray, backend: str, device: torch.device,
               resamples: int, seed: int, **cell: Any) -> FidRecord:
    """One sample set's FID (exact), its bootstrap 95 % interval, FID-infinity and KID, as a record; for the
    Inception backend also precision, recall, density and coverage (k = 3) on the same features."""
    n = len(features)
    kid, kid_std = kid_from_features(reference, features, KID_SUBSETS, KID_SUBSET_SIZE)
    est = fid_with_uncertainty(reference, features, resamples, seed=seed)
    pr = prdc(reference, features, PRDC_K) if backend == "inception" and min(n, len(reference)) > PRDC_K else None
    return FidRecord(**cell, fid=est.fid, kid=kid, kid_std=kid_std, fid_backend=backend, fid_samples=n,
                     reference_samples=len(reference), device=str(device), fid_ci_low=est.ci_low,
                     fid_ci_high=est.ci_high, fid_inf=est.fid_inf, fid_resamples=est.resamples,
                     kid_subset_size=kid_subset_for(len(reference), n, KID_SUBSET_SIZE),
                     **({} if pr is None else {"precision": pr.precision, "recall": pr.recall, "density": pr.density,
                                               "coverage": pr.coverage, "prdc_k": pr.k}))


def fid_records(ctx: RunContext, samples_uint8: torch.Tensor, backends: list[tuple[str, int]],
                **cell: Any) -> list[FidRecord]:
    """FID and KID of the first ``n`` samples against as many held-out images, per (backend, n)."""
    out = []
    for backend, n in backends:
        feats = compute_features(samples_uint8[:n], backend, ctx.device, classifier=ctx.classifier)
        out.append(fid_record(ctx.reference(backend, n), feats, backend, ctx.device,
                              ctx.settings.bootstrap_resamples, ctx.settings.seed, **cell))
    return out


def held_out_reconstructions(ctx: RunContext, first_stage: FirstStage, n: int) -> torch.Tensor | None:
    """The first ``n`` held-out images through a model's first stage (None in pixel space): computed once per
    model, they set the ceiling :func:`recognisability_record` reads each of its sample sets against."""
    if ctx.classifier is None or ctx.classifier.config.task != "class":
        return None
    return reconstructions(first_stage, ctx.test.images[:n], ctx.settings.sample_batch)


def recognisability_record(ctx: RunContext, samples_uint8: torch.Tensor, reconstructed_uint8: torch.Tensor | None,
                           **cell: Any) -> RecognisabilityRecord | None:
    """Whether the run's real-data classifier recognises the samples (None: it learned rotations, not classes).

    Beside the samples it measures as many real held-out images and ``reconstructed_uint8``, the same
    images through the model's first stage (:func:`held_out_reconstructions`): the ceilings the data
    and the autoencoder set.
    """
    if ctx.classifier is None or ctx.classifier.config.task != "class":
        return None
    real = ctx.test.images[:len(samples_uint8)]
    recon = None if reconstructed_uint8 is None else reconstructed_uint8[:len(samples_uint8)]
    r = recognisability(samples_uint8, ctx.classifier, real_uint8=real, reconstructed_uint8=recon)
    return RecognisabilityRecord(**cell, n=r.n, confidence=r.confidence, confident_share=r.confident_share,
                                 class_shares=r.class_shares, real_confident_share=r.real_confident_share,
                                 reconstructed_confident_share=r.reconstructed_confident_share, meets_bar=r.meets_bar())


def first_stage_config(s: RunSettings, kind: str, factor: int, out: Path, cpu: bool,
                       **overrides: Any) -> AutoencoderTrainConfig:
    """The trainer's config of a sweep's autoencoder: the trainer's defaults, the run's ``ae_*`` settings (whose
    defaults are the trainer's), and a variant's ``overrides`` (e.g. ``disc_weight=0``)."""
    return AutoencoderTrainConfig(**{
        "out": out, **s.budget_kwargs(s.ae_budget), "batch_size": s.ae_batch_size,
        "checkpoint_every": s.checkpoint_every, "seed": s.seed, "resume": True, "cpu": cpu, "max_images": s.max_images,
        "factor": factor, "kind": kind, "dataset": s.dataset, "resolution": s.resolution,
        "base_width": s.ae_base_width, "learning_rate": s.ae_learning_rate, "warmup_steps": s.ae_warmup_steps,
        "lr_schedule": s.ae_lr_schedule, "disc_weight": s.ae_disc_weight, "codebook_size": s.ae_codebook_size,
        **overrides})


def autoencoder_cell(ctx: RunContext, kind: str, factor: int, rfid_samples: int, variant: str = "",
                     grid_images: int = 8, **overrides: Any) -> Path:
    """Train (or resume) one first stage and log its reconstruction quality (Tab. 8); returns its folder.

    PSNR/SSIM over ``fid_samples`` held-out images; rFID and KID (Inception) over the first
    ``rfid_samples`` of them against the run's cached reference features; codebook usage and
    perplexity for VQ. ``variant`` names a model that differs from the default one of its
    kind and f by ``overrides`` of the trainer's settings (e.g. ``disc_weight=0``).
    """
    s = ctx.settings
    name = f"ae-{kind}-f{factor}" + (f"-{variant}" if variant else "")
    # Several sweeps on one data set (the zoo's parts) can share their first stages: the trainer
    # below then resumes the shared folder, a no-op when it is finished.
    folder = (s.share_from or ctx.out) / "models" / name
    if ctx.log.has(AutoencoderRecord, kind=kind, factor=factor, variant=variant):
        return folder
    trained = train_autoencoder(first_stage_config(s, kind, factor, folder, cpu=ctx.device.type == "cpu", **overrides))
    vae = trained.vae.eval()
    n = max(s.fid_samples, rfid_samples)
    held_out = ctx.test.batch(slice(0, n)).to(ctx.device)
    _, recon = FirstStage(vae).reconstruct(held_out, s.sample_batch)
    recon = signed_to_uint8(recon).cpu()
    real = ctx.test.images[:n]
    quality = reconstruction_metrics(real, recon, ctx.device, rfid=False)
    rfid = rkid = rkid_std = None
    rfid_est = None
    if rfid_samples:
        ref = ctx.reference("inception", rfid_samples)
        feats = compute_features(recon[:rfid_samples], "inception", ctx.device)
        rfid_est = fid_with_uncertainty(ref, feats, s.bootstrap_resamples, seed=s.seed)
        rfid = rfid_est.fid
        rkid, rkid_std = kid_from_features(ref, feats, KID_SUBSETS, KID_SUBSET_SIZE)
    codes = codebook_stats(vae, held_out) if kind == "vq" else None
    pairs = torch.cat([real[:grid_images], recon[:grid_images]]).permute(0, 2, 3, 1).numpy()
    save_grid(pairs, ctx.out / "grids" / f"recon-{name.removeprefix('ae-')}.png", nrow=grid_images)
    summary = trained.summary
    ctx.log.append(AutoencoderRecord(
        kind=kind, factor=factor, ae_params=summary.ae_params, latent_shape=summary.latent_shape,
        scaling_factor=summary.scaling_factor, ae_train_steps=summary.train_steps,
        ae_train_seconds=summary.train_seconds, psnr=quality.psnr, ssim=quality.ssim, recon_samples=n,
        rfid=rfid, rfid_samples=rfid_samples, rfid_backend=backend_label("inception") if rfid_samples else None,
        device=str(ctx.device), variant=variant, losses=summary.losses, codebook_size=summary.codebook_size,
        codebook_usage=codes.usage if codes else None, perplexity=codes.perplexity if codes else None,
        rkid=rkid, rkid_std=rkid_std, ae_train_images_per_s=summary.train_images_per_s,
        rfid_ci_low=rfid_est.ci_low if rfid_est else None, rfid_ci_high=rfid_est.ci_high if rfid_est else None,
        rfid_inf=rfid_est.fid_inf if rfid_est else None,
    ))
    return folder


def autoencoder_done(kind: str, factor: int, variant: str, results: Results) -> bool:
    """Whether ``autoencoder_cell`` has measured this first stage (a sweep's cell needs no second run)."""
    return bool(results.of(AutoencoderRecord, kind=kind, factor=factor, variant=variant))


def training_record(summary: TrainingSummary, settings: RunSettings) -> TrainingRecord:
    """The log's record of a trained denoiser: the trainer's summary plus the sweep's budget."""
    shared = {f.name for f in fields(TrainingRecord)} & {f.name for f in fields(TrainingSummary)}
    shared.discard("budget")  # the record's budget is the sweep's unit ("steps"/"seconds"), the summary's its limits
    return TrainingRecord(**{name: getattr(summary, name) for name in shared},
                          degenerate=summary.latent_shape[-1] <= 2, budget=settings.budget,
                          budget_value=settings.train_budget)

