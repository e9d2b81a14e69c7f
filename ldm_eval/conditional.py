"""The conditioning sweep: class- and text-conditional LDMs across factors and guidance scales.

For every factor f and condition (class label, text caption) it trains a cross-attention
denoiser through ``pipelines.training`` (same command, ``condition=...``), then samples a
class-balanced set at each classifier-free guidance scale and measures

- quality: FID/KID of all samples, and FID per class, on the domain classifier's features,
  against held-out real images (per class: the real images of that class);
- faithfulness: conditioning accuracy, the share of samples that the classifier (trained on
  real data only) assigns to the label that was asked for.

Autoencoders, classifier and reference features come from the same helpers as the
compression sweep; every measurement is appended to ``results.jsonl`` at once, so a killed
run resumes with ``--resume`` and redoes nothing already measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.conditioning import CONDITION_KINDS, MAX_GUIDANCE, class_caption
from pipelines.pipeline import load_pipeline
from pipelines.training import DiffusionTrainConfig, train_diffusion

from .fid import compute_features, fid_from_features, kid_from_features
from .profiling import PeakMemory, timed_sampling
from .sweep import (
    WARMUP_SAMPLES,
    SweepConfig,
    SweepError,
    _budget_kwargs,
    _Context,
    _image_grid,
    _train_autoencoder,
    _uint8_nchw,
    open_run,
    reference_features,
)


@dataclass
class ConditionalSweepConfig(SweepConfig):
    """A conditioning sweep; the autoencoder and budget settings are the compression sweep's."""

    preset: str = "cond-quick"
    factors: tuple[int, ...] = (1, 4, 8, 16)
    conditions: tuple[str, ...] = ("class", "text")
    guidance: tuple[float, ...] = (1.0, 3.0, 7.0)
    samples_per_class: int = 50
    eval_ddim_steps: int = 20
    condition_dropout: float = 0.1
    condition_width: int = 64
    learning_rate: float = 2e-4
    mixed_precision: str = "no"
    inception_samples: int = 0  # conditional quality is measured on domain features only
    out: Path = Path("runs/cond-quick")

    def validate(self) -> None:
        super().validate()
        for c in self.conditions:
            if c not in CONDITION_KINDS or c == "none":
                raise SweepError(f"Unknown condition {c!r}; choose class and/or text.")
        for g in self.guidance:
            if not 0.0 <= g <= MAX_GUIDANCE:
                raise SweepError(f"Guidance scales must be from 0 to {MAX_GUIDANCE:g} (got {g}).")
        if self.samples_per_class < 2:
            raise SweepError("Per-class FID needs at least 2 samples per class (--samples-per-class).")
        if not 1 <= self.eval_ddim_steps <= 1000:
            raise SweepError(f"DDIM steps must be from 1 to 1000 (got {self.eval_ddim_steps}).")


COND_PRESETS: dict[str, dict] = {
    # tests and CI: every code path in about a minute on 2 CPU cores
    "cond-smoke": dict(resolution=16, factors=(1, 4), budget="steps", ae_budget=6, train_budget=6, fid_samples=40,
                       samples_per_class=4, eval_ddim_steps=2, guidance=(1.0, 3.0), batch_size=8, ae_batch_size=8,
                       param_budget=30_000, ae_base_width=8, max_images=256, classifier_steps=40, sample_batch=40,
                       condition_width=16),
    # the measured run on a 2-core CPU: f = 1, 4, 8, 16, class and text, guidance 1 / 3 / 7 (about an hour)
    "cond-quick": dict(resolution=32, budget="seconds", ae_budget=30, train_budget=60, fid_samples=500,
                       samples_per_class=50, eval_ddim_steps=20, max_images=10_000),
    # the same on one GPU: longer training, 4x the samples
    "cond-gpu": dict(resolution=32, budget="seconds", ae_budget=20, train_budget=30, fid_samples=1500,
                     samples_per_class=150, eval_ddim_steps=25, batch_size=256, ae_batch_size=128, max_images=None,
                     classifier_steps=1500, sample_batch=1500, learning_rate=4e-4),
}


def cond_preset_config(name: str, **overrides) -> ConditionalSweepConfig:
    if name not in COND_PRESETS:
        raise SweepError(f"Unknown preset {name!r}; choose one of {', '.join(COND_PRESETS)}.")
    values = {"preset": name, "out": Path("runs") / name, **COND_PRESETS[name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ConditionalSweepConfig(**values)


def _model_folder(cfg: ConditionalSweepConfig, condition: str, factor: int) -> Path:
    return cfg.out / "models" / (f"dm-f1-{condition}" if factor == 1 else f"ldm-{cfg.kinds[0]}-f{factor}-{condition}")


def _train(ctx: _Context, condition: str, factor: int, autoencoder: Path | None) -> Path:
    cfg: ConditionalSweepConfig = ctx.cfg
    folder = _model_folder(cfg, condition, factor)
    key = f"cond-train/{condition}/f{factor}"
    if ctx.log.done(key):
        return folder
    with PeakMemory(ctx.device) as mem:
        summary = train_diffusion(DiffusionTrainConfig(
            out=folder, **_budget_kwargs(cfg.budget, cfg.train_budget), batch_size=cfg.batch_size, checkpoint_every=500,
            seed=cfg.seed, resume=True, cpu=ctx.device.type == "cpu", max_images=cfg.max_images, factor=factor,
            autoencoder=autoencoder, dataset=cfg.dataset, resolution=cfg.resolution, param_budget=cfg.param_budget,
            condition=condition, condition_dropout=cfg.condition_dropout, condition_width=cfg.condition_width,
            learning_rate=cfg.learning_rate, mixed_precision=cfg.mixed_precision,
        ))
    ctx.log.append({
        "key": key, "record": "cond_train", "condition": condition, "kind": "pixel" if factor == 1 else cfg.kinds[0],
        "factor": factor, **{k: summary[k] for k in (
            "latent_shape", "unet_params", "ae_params", "condition_params", "condition_dropout", "train_steps",
            "train_seconds", "train_images_per_s", "final_loss", "device", "device_name", "batch_size")},
        "peak_mem_train_mb": mem.reading.peak_mb, "memory_method": mem.reading.method,
        "budget": cfg.budget, "budget_value": cfg.train_budget, "degenerate": summary["latent_shape"][-1] <= 2,
    })
    return folder


def _evaluate(ctx: _Context, condition: str, factor: int, folder: Path, all_real: np.ndarray,
              real_labels: np.ndarray) -> None:
    cfg: ConditionalSweepConfig = ctx.cfg
    pipe = None
    for g in cfg.guidance:
        key = f"cond-eval/{condition}/f{factor}/g{g:g}"
        if ctx.log.done(key):
            continue
        if pipe is None:
            pipe = load_pipeline(folder, device=ctx.device)
            names = pipe.class_names if condition == "class" else list(ctx.classifier.config.class_names or [])
            if not names:
                raise SweepError("The domain classifier has no class names to ask for.")
            warm = {"labels": 0} if condition == "class" else {"prompt": class_caption(names[0])}
            pipe(num_images=WARMUP_SAMPLES, num_inference_steps=2, seed=0, **warm)  # warm-up, not timed
        wanted = np.repeat(np.arange(len(names)), cfg.samples_per_class)
        cond = ({"labels": wanted.tolist()} if condition == "class"
                else {"prompt": [class_caption(names[i]) for i in wanted]})
        timed = timed_sampling(pipe, len(wanted), cfg.eval_ddim_steps, "ddim", seed=cfg.seed + 1000,
                               batch_size=cfg.sample_batch, guidance_scale=g, **cond)
        images = _uint8_nchw(timed.images)
        predicted = ctx.classifier.predict(images).cpu().numpy()
        feats = compute_features(images, "domain", ctx.device, classifier=ctx.classifier)
        ref = ctx.reference["domain"][: len(wanted)]
        kid, kid_std = kid_from_features(ref, feats, 50, min(1000, len(wanted), len(ref)))
        per_class_fid, per_class_acc = [], []
        for c in range(len(names)):
            mine = wanted == c
            per_class_acc.append(float((predicted[mine] == c).mean()))
            per_class_fid.append(fid_from_features(all_real[real_labels == c], feats[mine]))
        order = np.concatenate([np.flatnonzero(wanted == c)[:8] for c in range(len(names))])
        _image_grid(timed.images[order], cfg.out / "grids" / f"cond-{condition}-f{factor}-g{g:g}.png",
                    n=len(order))
        ctx.log.append({
            "key": key, "record": "cond_eval", "condition": condition, "factor": factor,
            "kind": "pixel" if factor == 1 else cfg.kinds[0], "guidance": g, "ddim_steps": cfg.eval_ddim_steps,
            "n": len(wanted), "samples_per_class": cfg.samples_per_class, "class_names": names,
            "accuracy": float((predicted == wanted).mean()), "per_class_accuracy": per_class_acc,
            "fid": fid_from_features(ref, feats), "fid_backend": "domain", "fid_samples": len(wanted),
            "reference_samples": len(ref), "kid": kid, "kid_std": kid_std,
            "per_class_fid": per_class_fid, "per_class_reference": [int((real_labels == c).sum()) for c in range(len(names))],
            "samples_per_s": timed.samples_per_s, "peak_mem_sample_mb": timed.peak_mb,
            "memory_method": timed.memory_method, "device": str(ctx.device), "scheduler": "ddim",
        })


def run_conditional_sweep(cfg: ConditionalSweepConfig) -> Path:
    """Run (or resume) a conditioning sweep; returns the run folder."""
    ctx = open_run(cfg, cfg.fid_samples, label_key="class")
    log, test = ctx.log, ctx.test
    if not log.done("cond-classifier"):
        log.append({"key": "cond-classifier", "record": "cond_classifier", "n": len(test),
                    "accuracy_on_real": ctx.classifier.accuracy(test.images, test.labels["class"])})
    real_labels = test.labels["class"].numpy()
    all_real = reference_features(ctx, "domain", len(test))  # every held-out image: per-class FID
    for factor in cfg.factors:
        autoencoder = _train_autoencoder(ctx, cfg.kinds[0], factor) if factor > 1 else None
        for condition in cfg.conditions:
            print(f"== {condition} f={factor} ==", flush=True)
            folder = _train(ctx, condition, factor, autoencoder)
            _evaluate(ctx, condition, factor, folder, all_real, real_labels)
    return cfg.out
