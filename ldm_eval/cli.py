"""The command line: thin wrappers over ``pipelines`` (training, sampling) and the harness.

Every sub-command turns the project's own ``ValueError`` / ``RuntimeError`` subclasses into
one clear line on stderr and exit status 2, never a traceback, for bad input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipelines.checkpoint import CheckpointError
from pipelines.conditioning import CONDITION_KINDS
from pipelines.data import DatasetError
from pipelines.first_stage import FACTORS, FirstStageError
from pipelines.pipeline import PipelineLoadError
from pipelines.training import TrainingError

from .fid import MetricError
from .sweep import SweepError

USER_ERRORS = (SweepError, MetricError, DatasetError, FirstStageError, PipelineLoadError, TrainingError, CheckpointError, ValueError)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _factor(text: str) -> int:
    value = int(text)
    if value not in FACTORS:
        raise argparse.ArgumentTypeError(f"unknown factor {text}; choose one of {list(FACTORS)}")
    return value


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--factor", type=_factor, required=True, help="downsampling factor f (1 = pixel space)")
    p.add_argument("--dataset", required=True, help="'fashion-mnist' or a folder of images")
    p.add_argument("--resolution", type=_positive_int, required=True, help="image side in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 = gray, 3 = RGB (default: the data's own)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-steps", type=_positive_int, help="stop after N optimiser steps")
    budget.add_argument("--max-seconds", type=float, help="stop after S seconds of training")
    p.add_argument("--checkpoint-every", type=_positive_int, default=500, help="steps between checkpoints")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=_positive_int, help="train on the first N images only")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("--out", type=Path, required=True, help="output folder (diffusers layout)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ldm_eval", description="LDM Lab: pixel vs latent diffusion, measured.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train-autoencoder", help="train a KL or VQ first stage")
    _add_training_args(p)
    p.add_argument("--kind", choices=("kl", "vq"), default="kl")
    p.add_argument("--latent-channels", type=_positive_int, help="default: the paper's value for this factor")
    p.add_argument("--base-width", type=_positive_int, default=32)

    p = sub.add_parser("train-diffusion", help="train a denoiser (pixel space or on cached latents)")
    _add_training_args(p)
    p.add_argument("--autoencoder", type=Path, help="first-stage folder; required for f > 1, refused for f = 1")
    p.add_argument("--param-budget", type=_positive_int, default=1_000_000, help="UNet parameters (matched across f)")
    p.add_argument("--cache-dir", type=Path, help="latent cache folder (default ~/.cache/ldm_lab/latents)")
    p.add_argument("--condition", choices=CONDITION_KINDS, default="none",
                   help="cross-attention condition: a class label or a text caption made from the labels")
    p.add_argument("--condition-dropout", type=float, default=0.1,
                   help="share of steps trained without the condition (enables classifier-free guidance)")
    p.add_argument("--condition-width", type=_positive_int, default=64, help="condition token width")

    p = sub.add_parser("sample", help="write N samples of a trained model as PNG files")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--n", type=_positive_int, required=True)
    p.add_argument("--steps", type=_positive_int, required=True)
    p.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, required=True)
    cond = p.add_mutually_exclusive_group()
    cond.add_argument("--label", action="append",
                      help="class name or index (class models); repeat to cycle labels over the images")
    cond.add_argument("--prompt", action="append", help="text prompt (text models); repeat to cycle prompts")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")

    p = sub.add_parser("sweep", help="train and measure every factor (the default command)")
    _add_sweep_args(p)

    p = sub.add_parser("cond-sweep", help="class- and text-conditional models across factors and guidance scales")
    p.add_argument("--preset", default="cond-quick", choices=("cond-smoke", "cond-quick", "cond-gpu"))
    p.add_argument("--factors", type=_factor_list, help="e.g. 1,4,8,16")
    p.add_argument("--conditions", type=lambda t: tuple(v for v in t.split(",") if v), help="class,text")
    p.add_argument("--guidance", type=_float_list, help="classifier-free guidance scales, e.g. 1,3,7")
    p.add_argument("--train-budget", type=float, help="denoiser budget per model (steps or seconds)")
    p.add_argument("--ae-budget", type=float, help="autoencoder budget per factor")
    p.add_argument("--samples-per-class", type=_positive_int, help="samples per class and guidance scale")
    p.add_argument("--ddim-steps", type=_positive_int, help="DDIM steps for the evaluation samples")
    p.add_argument("--max-images", type=_positive_int, help="train on the first N images only")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=Path, help="run folder (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue a killed run; finished measurements are kept")

    p = sub.add_parser("fid", help="FID (and KID) between two folders of images")
    p.add_argument("dir_a", type=Path)
    p.add_argument("dir_b", type=Path)
    p.add_argument("--backend", default="inception", help="inception or domain")
    p.add_argument("--kid", action="store_true", help="also compute KID")
    p.add_argument("--classifier", type=Path, help="domain classifier folder (a sweep's domain_classifier/)")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("report", help="re-render a run folder's report from its stored results")
    p.add_argument("run_dir", type=Path)

    p = sub.add_parser("export-zoo", help="copy a sweep's models as fp16 with model cards (the demo's zoo)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("models"))
    p.add_argument("--prefix", required=True, help="name prefix, e.g. fmnist32")
    p.add_argument("--only", type=lambda t: [v for v in t.split(",") if v], help="model names, e.g. dm-f1,ldm-kl-f4")

    p = sub.add_parser("bench-train", help="training speed and memory for every factor (prints a table)")
    p.add_argument("--resolutions", default="32,64")
    p.add_argument("--factors", default=",".join(map(str, FACTORS)))
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--steps", type=_positive_int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="also write the table as CSV and Markdown here")
    return parser


def _factor_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"factors must be integers separated by commas, got {text!r}") from err
    for v in values:
        _factor(str(v))
    return values


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from err


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from err


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", choices=("smoke", "quick", "standard", "paper"))
    p.add_argument("--dataset", help="'fashion-mnist' (default) or a folder of images")
    p.add_argument("--resolution", type=_positive_int)
    p.add_argument("--factors", type=_factor_list, help="e.g. 1,2,4,8,16,32")
    p.add_argument("--kinds", type=lambda t: tuple(v for v in t.split(",") if v), help="kl,vq")
    p.add_argument("--budget", choices=("steps", "seconds"), help="equal steps or equal wall-clock seconds per factor")
    p.add_argument("--train-budget", type=float, help="denoiser budget per factor (steps or seconds)")
    p.add_argument("--ae-budget", type=float, help="autoencoder budget per factor (steps or seconds)")
    p.add_argument("--fid-samples", type=_positive_int)
    p.add_argument("--inception-samples", type=_non_negative_int, help="0 skips Inception FID")
    p.add_argument("--ddim-steps", type=_int_list, help="e.g. 10,20,50,100,200")
    p.add_argument("--progress-points", type=_positive_int, help="FID checks along training")
    p.add_argument("--progress-samples", type=_positive_int, help="samples per FID check along training")
    p.add_argument("--param-budget", type=_positive_int, help="UNet parameters, matched across factors")
    p.add_argument("--max-images", type=_positive_int, help="train on the first N images only")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=Path, help="run folder (default runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue a killed sweep; finished measurements are kept")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .report import render_report, summary_table
    from .sweep import preset_config, run_sweep

    cfg = preset_config(
        args.preset, dataset=args.dataset, resolution=args.resolution, factors=args.factors, kinds=args.kinds,
        budget=args.budget, train_budget=args.train_budget, ae_budget=args.ae_budget, fid_samples=args.fid_samples,
        inception_samples=args.inception_samples, ddim_steps=args.ddim_steps, device=args.device, out=args.out,
        resume=args.resume, progress_points=args.progress_points, progress_samples=args.progress_samples,
        param_budget=args.param_budget, max_images=args.max_images,
    )
    run_dir = run_sweep(cfg)
    report = render_report(run_dir)
    print(summary_table(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_cond_sweep(args: argparse.Namespace) -> int:
    from .conditional import cond_preset_config, run_conditional_sweep
    from .conditional_report import conditional_summary, render_conditional_report

    cfg = cond_preset_config(
        args.preset, factors=args.factors, conditions=args.conditions, guidance=args.guidance,
        train_budget=args.train_budget, ae_budget=args.ae_budget, samples_per_class=args.samples_per_class,
        eval_ddim_steps=args.ddim_steps, max_images=args.max_images, mixed_precision=args.mixed_precision,
        device=args.device, out=args.out, resume=args.resume,
    )
    run_dir = run_conditional_sweep(cfg)
    report = render_conditional_report(run_dir)
    print(conditional_summary(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from pipelines.pipeline import resolve_device

    from .fid import fid_between_folders

    result = fid_between_folders(args.dir_a, args.dir_b, backend=args.backend, kid=args.kid,
                                 device=resolve_device(args.device), classifier_path=args.classifier)
    print(f"FID {result.fid:.4f} ({result.backend}, N = {result.n_a} vs {result.n_b}, {result.device})")
    if result.kid is not None:
        print(f"KID {result.kid:.6f} +- {result.kid_std:.6f} (subset size {result.kid_subset_size})")
    print(f"features: {result.extractor}; resize: {result.resize}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import render_report, summary_table

    if not args.run_dir.is_dir():
        raise ValueError(f"Run folder '{args.run_dir}' does not exist.")
    from .conditional_report import conditional_summary, render_conditional_report
    from .results import ResultsLog

    if any(r.get("record") == "cond_eval" for r in ResultsLog(args.run_dir).records()):
        path = render_conditional_report(args.run_dir)
        print(conditional_summary(args.run_dir))
        print(f"\nReport: {path}")
        return 0
    try:
        path = render_report(args.run_dir)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from err
    print(summary_table(args.run_dir))
    print(f"\nReport: {path}")
    return 0


def cmd_export_zoo(args: argparse.Namespace) -> int:
    from .export import export_zoo

    for path in export_zoo(args.run_dir, args.out, args.prefix, args.only):
        print(path)
    return 0


def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from pipelines.training import AutoencoderTrainConfig, train_autoencoder

    cfg = AutoencoderTrainConfig(
        out=args.out, max_steps=args.max_steps, max_seconds=args.max_seconds, checkpoint_every=args.checkpoint_every,
        batch_size=args.batch_size or 32, learning_rate=args.learning_rate, seed=args.seed, resume=args.resume,
        mixed_precision=args.mixed_precision, cpu=args.cpu, max_images=args.max_images, factor=args.factor, kind=args.kind, dataset=args.dataset,
        resolution=args.resolution, channels=args.channels, latent_channels=args.latent_channels,
        base_width=args.base_width,
    )
    print(json.dumps(train_autoencoder(cfg), indent=2))
    return 0


def cmd_train_diffusion(args: argparse.Namespace) -> int:
    from pipelines.training import DiffusionTrainConfig, train_diffusion

    cfg = DiffusionTrainConfig(
        out=args.out, max_steps=args.max_steps, max_seconds=args.max_seconds, checkpoint_every=args.checkpoint_every,
        batch_size=args.batch_size or 64, learning_rate=args.learning_rate, seed=args.seed, resume=args.resume,
        mixed_precision=args.mixed_precision, cpu=args.cpu, max_images=args.max_images, factor=args.factor, autoencoder=args.autoencoder,
        dataset=args.dataset, resolution=args.resolution, channels=args.channels, param_budget=args.param_budget,
        cache_dir=args.cache_dir, condition=args.condition, condition_dropout=args.condition_dropout,
        condition_width=args.condition_width,
    )
    print(json.dumps(train_diffusion(cfg), indent=2))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from pipelines.pipeline import load_pipeline, resolve_device, save_images

    pipe = load_pipeline(args.model_dir, device=resolve_device(args.device))
    pipe.validate_request(min(args.n, args.batch_size), args.steps)
    conditions = args.label or args.prompt
    pipe.validate_condition(1, **_condition_kwargs(args, conditions[:1] if conditions else None))  # before any work
    generator = torch.Generator("cpu").manual_seed(args.seed)
    written = 0
    with tqdm(total=args.n, desc="Sampling", unit="img") as bar:
        while written < args.n:
            n = min(args.batch_size, args.n - written)
            cycled = [conditions[(written + i) % len(conditions)] for i in range(n)] if conditions else None
            out = pipe(num_images=n, num_inference_steps=args.steps, scheduler=args.scheduler, generator=generator,
                       **_condition_kwargs(args, cycled))
            save_images(out.images, args.out, start=written)
            written += n
            bar.update(n)
    print(f"Wrote {written} images to {args.out}")
    return 0


def _condition_kwargs(args: argparse.Namespace, conditions: list[str] | None) -> dict:
    kwargs: dict = {"guidance_scale": args.guidance}
    if conditions is not None:
        kwargs["labels" if args.label else "prompt"] = conditions
    return kwargs


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .benchmark import run_train_benchmark

    run_train_benchmark(
        resolutions=[int(r) for r in args.resolutions.split(",")],
        factors=[_factor(f) for f in args.factors.split(",")],
        batch_size=args.batch_size, steps=args.steps, device=args.device, out=args.out,
    )
    return 0


COMMANDS = {
    "train-autoencoder": cmd_train_autoencoder,
    "train-diffusion": cmd_train_diffusion,
    "sample": cmd_sample,
    "bench-train": cmd_bench_train,
    "sweep": cmd_sweep,
    "cond-sweep": cmd_cond_sweep,
    "fid": cmd_fid,
    "report": cmd_report,
    "export-zoo": cmd_export_zoo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:  # the main job: the default sweep on the embedded default data
        # (resuming, so running it again continues or just re-renders a finished run)
        args = parser.parse_args(["sweep", "--resume"])
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
