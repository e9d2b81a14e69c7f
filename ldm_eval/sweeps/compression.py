"""The perceptual-compression sweep: train every factor at an equal budget, then measure.

For each first stage (pixel space, then KL and/or VQ autoencoders at every factor) the
sweep trains through ``pipelines.training`` once per cell, measuring FID at points along
that one training run through a callback (the paper's Fig. 6), then samples the trained
pipeline in memory at every DDIM step count for speed, memory and FID/KID (Fig. 7), and
measures the autoencoders (Tab. 8) -- at the size of the machine at hand. Every
measurement is appended to ``results.jsonl`` as soon as it exists, so ``--resume`` after a
kill redoes nothing already measured.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch

from ldm_eval.metrics.features import compute_features
from ldm_eval.metrics.frechet import fid_from_features
from ldm_eval.sweeps.executor import Cell, Opener, prepare_executor, run_cells
from ldm_eval.sweeps.run_folder import (
    RunContext,
    autoencoder_cell,
    autoencoder_done,
    fid_records,
    held_out_reconstructions,
    open_run,
    recognisability_record,
    training_record,
)
from ldm_eval.sweeps.settings import (
    Sweep,
    SweepError,
    check_ddim_steps,
    help_text,
)
from pipelines.callbacks import Milestones, Snapshot
from pipelines.diffusion_training import DiffusionTrainConfig, train_diffusion
from pipelines.first_stage import FACTORS
from pipelines.images import save_grid, unit_nhwc_to_uint8_nchw
from pipelines.loading import load_pipeline
from pipelines.pipeline import LatentDiffusionPipeline
from pipelines.records import ProgressRecord, SamplingRecord, TrainingRecord
from pipelines.results_log import Results
from pipelines.sampling import timed_sampling, warm_up


@dataclass
class CompressionSettings:
    """What the compression sweep compares and how finely it measures."""

    factors: list[int] = field(default_factory=lambda: list(FACTORS),
                               metadata=help_text("downsampling factors, e.g. 1,2,4,8,16,32 (1 = pixel space)"))
    kinds: list[str] = field(default_factory=lambda: ["kl"], metadata=help_text("autoencoder kinds: kl and/or vq"))
    inception_samples: int = field(default=64, metadata=help_text("samples for Inception FID/KID (0 skips it)"))
    ddim_steps: list[int] = field(default_factory=lambda: [10, 50], metadata=help_text("DDIM step counts, e.g. 10,50"))
    pixel_ddim_steps: list[int] | None = field(default=None, metadata=help_text(
        "DDIM step counts for pixel space (f = 1), whose sampling costs the most at a large size "
        "(default: the same as --ddim-steps)"))
    progress_points: int = field(default=3, metadata=help_text("FID checks along training (Fig. 6)"))
    progress_samples: int = field(default=200, metadata=help_text("samples per FID check along training"))


    def validate(self) -> None:
        for kind in self.kinds:
            if kind not in ("kl", "vq"):
                raise SweepError(f"Unknown autoencoder kind {kind!r}; choose kl and/or vq.", "kinds")
        if self.inception_samples == 1 or self.inception_samples < 0:
            raise SweepError("Inception FID needs at least 2 samples (0 skips it).", "inception_samples")
        if self.progress_points < 1 or self.progress_samples < 2:
            raise SweepError("FID along training needs at least one point and 2 samples per point.", "progress_points")
        check_ddim_steps(self.ddim_steps, "ddim_steps")
        if self.pixel_ddim_steps is not None:
            if not self.pixel_ddim_steps:
                raise SweepError("Give pixel space at least one DDIM step count (or leave it unset).",
                                 "pixel_ddim_steps")
            check_ddim_steps(self.pixel_ddim_steps, "pixel_ddim_steps")

    def steps_for(self, factor: int) -> list[int]:
        """The DDIM step counts one factor's model is sampled at."""
        return self.pixel_ddim_steps if factor == 1 and self.pixel_ddim_steps else self.ddim_steps


CompressionSweep = Sweep[CompressionSettings]




def _progress_steps(cfg: CompressionSweep, factor: int) -> int:
    """The DDIM step count for FID along training: the measured one closest to 20."""
    return min(cfg.sweep.steps_for(factor), key=lambda s: abs(s - 20))


def _denoiser_cell(ctx: RunContext, cfg: CompressionSweep, kind: str, factor: int,
                   autoencoder: Path | None) -> LatentDiffusionPipeline:
    """Train one factor's denoiser (FID along training inside the same run); the trained pipeline."""
    s = ctx.settings
    folder = ctx.out / "models" / ("dm-f1" if factor == 1 else f"ldm-{kind}-f{factor}")
    if ctx.log.has(TrainingRecord, kind=kind, factor=factor, condition="none"):
        return load_pipeline(folder, device=ctx.device)
    steps, n = _progress_steps(cfg, factor), cfg.sweep.progress_samples

    def measure_progress(snapshot: Snapshot, point: int) -> None:
        if ctx.log.has(ProgressRecord, kind=kind, factor=factor, point=point):
            return
        with snapshot.evaluating() as pipe:
            images = timed_sampling(pipe, n, steps, "ddim", seed=s.seed, batch_size=s.sample_batch,
                                    speedups=s.speedups).images
        feats = compute_features(unit_nhwc_to_uint8_nchw(images), "domain", ctx.device, classifier=ctx.classifier)
        ctx.log.append(ProgressRecord(
            kind=kind, factor=factor, point=point, train_steps=snapshot.state.step,
            train_seconds=round(snapshot.state.seconds, 3), fid=fid_from_features(ctx.reference("domain", n), feats),
            fid_backend="domain", fid_samples=n, ddim_steps=steps,
        ))

    trained = train_diffusion(DiffusionTrainConfig(
        out=folder, **s.budget_kwargs(s.train_budget), batch_size=s.batch_size, learning_rate=s.learning_rate,
        warmup_steps=s.warmup_steps, lr_schedule=s.lr_schedule, snr_gamma=s.snr_gamma,
        mixed_precision=s.mixed_precision, checkpoint_every=s.checkpoint_every, seed=s.seed, resume=True,
        cpu=ctx.device.type == "cpu", max_images=s.max_images, factor=factor, autoencoder=autoencoder,
        dataset=s.dataset, resolution=s.resolution, param_budget=s.param_budget,
    ), callbacks=[Milestones.evenly(s.train_budget, cfg.sweep.progress_points, s.budget, measure_progress)])
    ctx.log.append(training_record(trained.summary, s))
    return trained.pipeline


def _sampling_cell(ctx: RunContext, cfg: CompressionSweep, kind: str, factor: int,
                   pipe: LatentDiffusionPipeline) -> None:
    """Samples/s, memory and FID/KID at every DDIM step count (the paper's Fig. 7)."""
    s = ctx.settings
    backends = [("domain", s.fid_samples)]
    if cfg.sweep.inception_samples:
        backends.append(("inception", min(cfg.sweep.inception_samples, s.fid_samples)))
    warmed = False
    reconstructed: torch.Tensor | None = None  # the held-out images through pipe's first stage, once per model
    for steps in cfg.sweep.steps_for(factor):
        if ctx.log.has(SamplingRecord, kind=kind, factor=factor, ddim_steps=steps, condition="none"):
            continue
        if not warmed:
            warm_up(pipe)
            warmed = True
        timed = timed_sampling(pipe, s.fid_samples, steps, "ddim", seed=s.seed + 1000, batch_size=s.sample_batch,
                               speedups=s.speedups)
        save_grid(timed.images, ctx.out / "grids" / f"samples-{kind}-f{factor}-ddim{steps}.png")
        cell = {"kind": kind, "factor": factor, "ddim_steps": steps}
        samples = unit_nhwc_to_uint8_nchw(timed.images)
        for record in fid_records(ctx, samples, backends, **cell):
            ctx.log.append(record)
        if reconstructed is None:
            reconstructed = held_out_reconstructions(ctx, pipe.first_stage, s.fid_samples)
        if (recognised := recognisability_record(ctx, samples, reconstructed, device=str(ctx.device), **cell)) is not None:
            ctx.log.append(recognised)
        ctx.log.append(SamplingRecord(
            **cell, n=len(timed.images), seconds=timed.seconds, samples_per_s=timed.samples_per_s,
            sec_per_image=timed.sec_per_image, peak_mem_sample_mb=timed.peak_mb, memory_method=timed.memory_method,
            sample_batch=s.sample_batch, scheduler="ddim", device=str(ctx.device),
        ))


def _model_done(cfg: CompressionSweep, kind: str, factor: int, results: Results) -> bool:
    return bool(results.of(TrainingRecord, kind=kind, factor=factor, condition="none")) and all(
        results.of(SamplingRecord, kind=kind, factor=factor, ddim_steps=steps, condition="none")
        for steps in cfg.sweep.steps_for(factor))


def _autoencoder_only(cfg: CompressionSweep, kind: str, factor: int, ctx: RunContext) -> None:
    print(f"== autoencoder {kind} f={factor} ==", flush=True)
    autoencoder_cell(ctx, kind, factor, cfg.sweep.inception_samples)


def _model(cfg: CompressionSweep, kind: str, factor: int, ctx: RunContext) -> None:
    """One factor's denoiser, trained and measured (its autoencoder, a cell of its own, already is)."""
    print(f"== {kind} f={factor} ==", flush=True)
    autoencoder = autoencoder_cell(ctx, kind, factor, cfg.sweep.inception_samples) if factor > 1 else None
    pipe = _denoiser_cell(ctx, cfg, kind, factor, autoencoder)
    _sampling_cell(ctx, cfg, kind, factor, pipe)


def sweep_cells(cfg: CompressionSweep) -> list[Cell]:
    """Per first stage, its autoencoder then its denoiser, in the order the factors were given (a long
    sweep can put the models wanted first first); pixel space once, whatever the kinds."""
    pairs = list(dict.fromkeys(("pixel", 1) if f == 1 else (kind, f)
                               for kind in cfg.sweep.kinds for f in cfg.sweep.factors))
    cells = []
    for kind, factor in pairs:
        after: tuple[str, ...] = ()
        if factor > 1:
            cells.append(Cell(f"autoencoder {kind} f{factor}", partial(_autoencoder_only, cfg, kind, factor),
                              partial(autoencoder_done, kind, factor, "")))
            after = (cells[-1].key,)
        cells.append(Cell(f"model {kind} f{factor}", partial(_model, cfg, kind, factor),
                          partial(_model_done, cfg, kind, factor), after))
    return cells


def run_sweep(cfg: CompressionSweep) -> Path:
    """Run (or resume) a compression sweep, here or on a Ray cluster (``--executor``); returns the run folder."""
    cfg.validate()
    prepare_executor(cfg.run)
    needed = max(cfg.run.fid_samples, cfg.sweep.inception_samples, cfg.sweep.progress_samples)
    ctx = open_run(cfg.run, cfg.flat_config(), needed)
    run_cells(ctx, Opener(replace(cfg.run, resume=True), cfg.flat_config(), needed), sweep_cells(cfg))
    return ctx.out
