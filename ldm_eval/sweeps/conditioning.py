"""The conditioning sweep: class- and text-conditional LDMs across factors and guidance scales.

For every factor f and condition (class label, text caption) it trains a cross-attention
denoiser through ``pipelines.training`` (same trainer, ``condition=...``), then samples a
class-balanced set at each classifier-free guidance scale from the trained pipeline and
measures

- quality: FID/KID of all samples, and FID per class, on the domain classifier's features,
  against held-out real images (per class: the real images of that class);
- faithfulness: conditioning accuracy, the share of samples that the classifier (trained on
  real data only) assigns to the label that was asked for.

Autoencoders, classifier and reference features come from the same helpers as the
compression sweep (``run.py``); every measurement is appended to ``results.jsonl`` at once,
so a killed run resumes with ``--resume`` and redoes nothing already measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from ldm_eval.metrics.features import compute_features
from ldm_eval.metrics.frechet import fid_from_features
from ldm_eval.sweeps.executor import Cell, Opener, prepare_executor, run_cells
from ldm_eval.sweeps.run_folder import (
    RunContext,
    autoencoder_cell,
    autoencoder_done,
    fid_records,
    open_run,
    training_record,
)
from ldm_eval.sweeps.settings import (
    Sweep,
    SweepError,
    check_ddim_steps,
    help_text,
)
from pipelines.conditioning import class_caption, validate_guidance
from pipelines.diffusion_training import DiffusionTrainConfig, train_diffusion
from pipelines.images import save_grid, unit_nhwc_to_uint8_nchw
from pipelines.loading import load_pipeline
from pipelines.pipeline import LatentDiffusionPipeline
from pipelines.records import (
    ClassifierRecord,
    ConditioningRecord,
    SamplingRecord,
    TrainingRecord,
)
from pipelines.results_log import Results
from pipelines.sampling import timed_sampling, warm_up


@dataclass
class ConditioningSettings:
    """What the conditioning sweep compares: factors, conditions, guidance scales, samples per class."""

    factors: list[int] = field(default_factory=lambda: [1, 4, 8, 16], metadata=help_text("downsampling factors"))
    kind: str = field(default="kl", metadata=help_text("autoencoder kind of the latent models: kl or vq"))
    conditions: list[str] = field(default_factory=lambda: ["class", "text"], metadata=help_text("class and/or text"))
    guidance: list[float] = field(default_factory=lambda: [1.0, 3.0, 7.0],
                                  metadata=help_text("classifier-free guidance scales, e.g. 1,3,7"))
    samples_per_class: int = field(default=50, metadata=help_text("samples per class and guidance scale"))
    ddim_steps: int = field(default=20, metadata=help_text("DDIM steps of the evaluation samples"))
    condition_dropout: float = field(default=0.1, metadata=help_text("share of steps trained without the condition"))
    condition_width: int = field(default=64, metadata=help_text("condition token width"))


    def validate(self) -> None:
        if self.kind not in ("kl", "vq"):
            raise SweepError(f"Unknown autoencoder kind {self.kind!r}; choose kl or vq.", "kind")
        for c in self.conditions:
            if c not in ("class", "text"):
                raise SweepError(f"Unknown condition {c!r}; choose class and/or text.", "conditions")
        for g in self.guidance:
            validate_guidance(g, "class")  # the pipeline's own rule, so the sweep never asks what sampling refuses
        if self.samples_per_class < 2:
            raise SweepError("Per-class FID needs at least 2 samples per class.", "samples_per_class")
        check_ddim_steps([self.ddim_steps], "ddim_steps")


ConditioningSweep = Sweep[ConditioningSettings]




def _denoiser_cell(ctx: RunContext, cfg: ConditioningSweep, condition: str, factor: int,
                   autoencoder: Path | None) -> LatentDiffusionPipeline:
    s, kind = ctx.settings, "pixel" if factor == 1 else cfg.sweep.kind
    folder = ctx.out / "models" / (f"dm-f1-{condition}" if factor == 1 else f"ldm-{kind}-f{factor}-{condition}")
    if ctx.log.has(TrainingRecord, kind=kind, factor=factor, condition=condition):
        return load_pipeline(folder, device=ctx.device)
    trained = train_diffusion(DiffusionTrainConfig(
        out=folder, **s.budget_kwargs(s.train_budget), batch_size=s.batch_size, checkpoint_every=s.checkpoint_every,
        seed=s.seed, resume=True, cpu=ctx.device.type == "cpu", max_images=s.max_images, factor=factor,
        autoencoder=autoencoder, dataset=s.dataset, resolution=s.resolution, param_budget=s.param_budget, condition=condition,
        condition_dropout=cfg.sweep.condition_dropout, condition_width=cfg.sweep.condition_width,
        learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, lr_schedule=s.lr_schedule, snr_gamma=s.snr_gamma,
        mixed_precision=s.mixed_precision,
    ))
    ctx.log.append(training_record(trained.summary, s))
    return trained.pipeline


def _evaluate(ctx: RunContext, cfg: ConditioningSweep, condition: str, factor: int, pipe: LatentDiffusionPipeline,
              all_real: np.ndarray, real_labels: np.ndarray) -> None:
    """Class-balanced samples at each guidance scale: speed, FID/KID, accuracy and per-class FID."""
    s, kind, steps = ctx.settings, "pixel" if factor == 1 else cfg.sweep.kind, cfg.sweep.ddim_steps
    names = pipe.class_names if condition == "class" else list(ctx.classifier.config.class_names or [])
    if not names:
        raise SweepError("The domain classifier has no class names to ask for.", "dataset")
    wanted = np.repeat(np.arange(len(names)), cfg.sweep.samples_per_class)
    asked = ({"labels": wanted.tolist()} if condition == "class"
             else {"prompt": [class_caption(names[i]) for i in wanted]})
    warmed = False
    for g in cfg.sweep.guidance:
        cell = {"condition": condition, "kind": kind, "factor": factor, "guidance": g, "ddim_steps": steps}
        if ctx.log.has(ConditioningRecord, **cell):
            continue
        if not warmed:
            warm_up(pipe, **({"labels": 0} if condition == "class" else {"prompt": class_caption(names[0])}))
            warmed = True
        timed = timed_sampling(pipe, len(wanted), steps, "ddim", seed=s.seed + 1000, batch_size=s.sample_batch,
                               guidance_scale=g, speedups=s.speedups, **asked)
        images = unit_nhwc_to_uint8_nchw(timed.images)
        predicted = ctx.classifier.predict(images).cpu().numpy()
        feats = compute_features(images, "domain", ctx.device, classifier=ctx.classifier)
        per_class_fid = [fid_from_features(all_real[real_labels == c], feats[wanted == c]) for c in range(len(names))]
        per_class_acc = [float((predicted[wanted == c] == c).mean()) for c in range(len(names))]
        order = np.concatenate([np.flatnonzero(wanted == c)[:8] for c in range(len(names))])
        save_grid(timed.images[order], ctx.out / "grids" / f"cond-{condition}-f{factor}-g{g:g}.png", n=len(order))
        records = [
            SamplingRecord(**cell, n=len(wanted), seconds=timed.seconds, samples_per_s=timed.samples_per_s,
                           sec_per_image=timed.sec_per_image, peak_mem_sample_mb=timed.peak_mb,
                           memory_method=timed.memory_method, sample_batch=s.sample_batch, scheduler="ddim",
                           device=str(ctx.device)),
            *fid_records(ctx, images, [("domain", len(wanted))], **cell),
            ConditioningRecord(  # last: its presence marks the whole cell as measured
                **cell, n=len(wanted), samples_per_class=cfg.sweep.samples_per_class, class_names=list(names),
                accuracy=float((predicted == wanted).mean()), per_class_accuracy=per_class_acc,
                per_class_fid=per_class_fid, per_class_reference=[int((real_labels == c).sum()) for c in range(len(names))],
                device=str(ctx.device)),
        ]
        for record in records:
            ctx.log.append_once(record)  # a kill between two appends may have left some of them


def _model_done(cfg: ConditioningSweep, condition: str, factor: int, results: Results) -> bool:
    kind = "pixel" if factor == 1 else cfg.sweep.kind
    return all(results.of(ConditioningRecord, condition=condition, kind=kind, factor=factor, guidance=g,
                          ddim_steps=cfg.sweep.ddim_steps) for g in cfg.sweep.guidance)


def _autoencoder_only(cfg: ConditioningSweep, factor: int, ctx: RunContext) -> None:
    print(f"== autoencoder {cfg.sweep.kind} f={factor} ==", flush=True)
    autoencoder_cell(ctx, cfg.sweep.kind, factor, rfid_samples=0)


def _model(cfg: ConditioningSweep, condition: str, factor: int, ctx: RunContext) -> None:
    """One conditional denoiser, trained and measured at every guidance scale."""
    print(f"== {condition} f={factor} ==", flush=True)
    autoencoder = autoencoder_cell(ctx, cfg.sweep.kind, factor, rfid_samples=0) if factor > 1 else None
    test = ctx.test
    real_labels = test.labels["class"].numpy()
    all_real = ctx.reference("domain", len(test))  # every held-out image: per-class FID
    pipe = _denoiser_cell(ctx, cfg, condition, factor, autoencoder)
    _evaluate(ctx, cfg, condition, factor, pipe, all_real, real_labels)


def conditional_cells(cfg: ConditioningSweep) -> list[Cell]:
    """Per factor, its autoencoder, then one model per condition."""
    cells = []
    for factor in cfg.sweep.factors:
        after: tuple[str, ...] = ()
        if factor > 1:
            cells.append(Cell(f"autoencoder {cfg.sweep.kind} f{factor}", partial(_autoencoder_only, cfg, factor),
                              partial(autoencoder_done, cfg.sweep.kind, factor, "")))
            after = (cells[-1].key,)
        cells += [Cell(f"model {condition} f{factor}", partial(_model, cfg, condition, factor),
                       partial(_model_done, cfg, condition, factor), after) for condition in cfg.sweep.conditions]
    return cells


def run_conditional_sweep(cfg: ConditioningSweep) -> Path:
    """Run (or resume) a conditioning sweep, here or on a Ray cluster (``--executor``); returns the run folder."""
    cfg.validate()
    prepare_executor(cfg.run)
    ctx = open_run(cfg.run, cfg.flat_config(), cfg.run.fid_samples, label_key="class")
    if not ctx.log.has(ClassifierRecord):
        ctx.log.append(ClassifierRecord(n=len(ctx.test), accuracy_on_real=ctx.classifier.accuracy(
            ctx.test.images, ctx.test.labels["class"])))
    opener = Opener(replace(cfg.run, resume=True), cfg.flat_config(), cfg.run.fid_samples, label_key="class")
    run_cells(ctx, opener, conditional_cells(cfg))
    return ctx.out
