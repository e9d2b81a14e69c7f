"""The command line: thin wrappers over ``pipelines`` (training, sampling) and the harness.

Each command's flags come from its config dataclass through ``transformers.HfArgumentParser``
(``--max-steps`` and ``--max_steps`` both work; list flags take ``1,2,4`` or ``1 2 4``). A
sweep's ``--preset`` fills the defaults of every other flag from the preset table. Bad input
anywhere -- the core's :class:`~pipelines.errors.InputError`, whose ``field`` names the
setting at fault, or any project error -- becomes one line on stderr naming the flag, and
exit status 2, never a traceback.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from transformers import HfArgumentParser

from ldm_eval.arguments import (
    BenchFidSettings,
    BenchSettings,
    BenchStartupSettings,
    ExportSettings,
    FidSettings,
    RecogniseSettings,
    SampleSettings,
    TrainClassifierSettings,
    list_flags,
    make_parser,
    parse,
    parse_sweep,
    split_commas,
)


def cmd_tour(argv: list[str]) -> int:
    from ldm_eval.presets import TOUR_SETS
    from ldm_eval.reporting.tour import render_tour_report, tour_summary
    from ldm_eval.sweeps.tour import TourSettings, run_tour

    (cfg,) = parse("python -m ldm_eval tour", [TourSettings], argv)
    run_tour(cfg, TOUR_SETS)
    report = render_tour_report(cfg.out, cfg.sets)
    print(f"\n{tour_summary(cfg.out, cfg.sets)}")
    print(f"Report: {report} and {report.with_suffix('.html')}")
    return 0


def cmd_sweep(argv: list[str]) -> int:
    from ldm_eval.presets import COMPRESSION_PRESETS
    from ldm_eval.reporting.compression import render_report, summary_table
    from ldm_eval.sweeps.compression import CompressionSettings, run_sweep

    run_dir = run_sweep(parse_sweep("python -m ldm_eval sweep", COMPRESSION_PRESETS, "quick", CompressionSettings, argv))
    report = render_report(run_dir)
    print(summary_table(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_cond_sweep(argv: list[str]) -> int:
    from ldm_eval.presets import CONDITIONING_PRESETS
    from ldm_eval.reporting.conditioning import (
        conditional_summary,
        render_conditional_report,
    )
    from ldm_eval.sweeps.conditioning import (
        ConditioningSettings,
        run_conditional_sweep,
    )

    sweep = parse_sweep("python -m ldm_eval cond-sweep", CONDITIONING_PRESETS, "cond-quick", ConditioningSettings, argv)
    run_dir = run_conditional_sweep(sweep)
    report = render_conditional_report(run_dir)
    print(conditional_summary(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_ae_sweep(argv: list[str]) -> int:
    from ldm_eval.presets import FIRST_STAGE_PRESETS
    from ldm_eval.reporting.first_stage import (
        first_stage_summary,
        render_first_stage_report,
    )
    from ldm_eval.sweeps.first_stage import (
        FirstStageSettings,
        run_first_stage_sweep,
    )

    run_dir = run_first_stage_sweep(parse_sweep("python -m ldm_eval ae-sweep", FIRST_STAGE_PRESETS, "ae-quick",
                                                FirstStageSettings, argv))
    report = render_first_stage_report(run_dir)
    print(first_stage_summary(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_evaluate(argv: list[str]) -> int:
    from ldm_eval.reporting.evaluation import (
        evaluation_summary,
        render_evaluation_report,
    )
    from ldm_eval.sweeps.evaluate import EvaluateSettings, run_evaluation

    parser = make_parser("python -m ldm_eval evaluate", [EvaluateSettings])
    parser.add_argument("models", nargs="+", help="model folders (ours, DDPMPipeline/DDIMPipeline or LDMPipeline "
                        "layout) or hub ids (online only)")
    cfg, args = parser.parse_args_into_dataclasses(args=split_commas(argv, list_flags([EvaluateSettings])))
    run_dir = run_evaluation(list(args.models), cfg)
    report = render_evaluation_report(run_dir)
    print(evaluation_summary(run_dir))
    print(f"\nReport: {report} and {report.with_suffix('.html')}; table: {run_dir / 'results.csv'}")
    return 0


def cmd_train_autoencoder(argv: list[str]) -> int:
    from pipelines.autoencoder_training import AutoencoderTrainConfig, train_autoencoder

    (cfg,) = parse("python -m ldm_eval train-autoencoder", [AutoencoderTrainConfig], argv)
    print(json.dumps(dataclasses.asdict(train_autoencoder(cfg).summary), indent=2))
    return 0


def cmd_train_diffusion(argv: list[str]) -> int:
    from pipelines.diffusion_training import DiffusionTrainConfig, train_diffusion

    (cfg,) = parse("python -m ldm_eval train-diffusion", [DiffusionTrainConfig], argv)
    print(json.dumps(dataclasses.asdict(train_diffusion(cfg).summary), indent=2))
    return 0


def cmd_sample(argv: list[str]) -> int:
    from tqdm.auto import tqdm

    from pipelines.loading import load_pipeline
    from pipelines.pipeline import resolve_device, save_images
    from pipelines.sampling import sample_batches

    cfg, args = parse("python -m ldm_eval sample", [SampleSettings], argv, [("model_dir", "a trained model folder")])
    pipe = load_pipeline(args.model_dir, device=resolve_device(cfg.device))
    conditions = cfg.label or cfg.prompt
    cycled = [conditions[i % len(conditions)] for i in range(cfg.n)] if conditions else None
    condition = {"labels": cycled} if cfg.label else {"prompt": cycled}
    batches = sample_batches(pipe, cfg.n, cfg.steps, cfg.scheduler, cfg.seed, cfg.batch_size,
                             guidance_scale=cfg.guidance, **condition)
    with tqdm(total=cfg.n, desc="Sampling", unit="img") as bar:
        for start, out in batches:  # the whole request is checked before the first batch
            save_images(out.images, cfg.out, start=start)
            bar.update(len(out.images))
    print(f"Wrote {cfg.n} images to {cfg.out}")
    return 0


def cmd_fid(argv: list[str]) -> int:
    from ldm_eval.metrics.fid import fid_between_folders
    from pipelines.errors import whole_number
    from pipelines.pipeline import resolve_device

    cfg, args = parse("python -m ldm_eval fid", [FidSettings], argv,
                      [("dir_a", "first image folder"), ("dir_b", "second image folder")])
    result = fid_between_folders(args.dir_a, args.dir_b, backend=cfg.backend, kid=cfg.kid,
                                 device=resolve_device(cfg.device), classifier_path=cfg.classifier,
                                 intervals=cfg.intervals, resamples=whole_number(
                                     cfg.bootstrap_resamples, "bootstrap_resamples", "Bootstrap resamples", 0, 100_000),
                                 resample_reference=cfg.resample_reference)
    print(f"FID {result.fid:.4f} ({result.backend}, N = {result.n_a} vs {result.n_b}, {result.device})")
    if result.fid_ci is not None:
        print(f"  95 % interval {result.fid_ci[0]:.4f} to {result.fid_ci[1]:.4f} ({result.resamples} bootstrap "
              + ("resamples of both folders)" if cfg.resample_reference else "resamples of the second folder; the "
                 "first is held fixed, so its own draw's variance is not in the interval: --resample-reference adds it)"))
    if result.fid_inf is not None:
        print(f"  FID-infinity {result.fid_inf:.4f} (Chong & Forsyth 2020: FID against 1/N, read at 1/N = 0)")
    if result.interval_note:
        print(f"  {result.interval_note}")
    if result.kid is not None:
        spread = (f"+- {result.kid_std:.6f} (std over subsets of {result.kid_subset_size})"
                  if result.kid_std is not None else f"(N too small for a std; one subset of {result.kid_subset_size})")
        print(f"KID {result.kid:.6f} {spread}")
    print(f"features: {result.extractor}; resize: {result.resize}")
    for folder, skipped in ((args.dir_a, result.skipped_a), (args.dir_b, result.skipped_b)):
        if skipped:
            names = ", ".join(Path(p).name for p in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
            print(f"skipped {len(skipped)} unreadable file(s) in {folder} (truncated or not images): {names}")
    if result.small_n_warning:
        print(result.small_n_warning)
    return 0


def cmd_recognise(argv: list[str]) -> int:
    from ldm_eval.metrics.recognisability import read_judge_quality, recognise_models
    from pipelines.atomic import write_json_atomic
    from pipelines.errors import InputError, whole_number
    from pipelines.pipeline import SAMPLERS

    parser = make_parser("python -m ldm_eval recognise", [RecogniseSettings])
    parser.add_argument("models", nargs="+", help="model folders")
    cfg, args = parser.parse_args_into_dataclasses(args=split_commas(argv, list_flags([RecogniseSettings])))
    whole_number(cfg.n, "n", "The number of samples", 1, 1_000_000)
    whole_number(cfg.ddim_steps, "ddim_steps", "Sampling steps", 1, 1000)
    if cfg.scheduler not in SAMPLERS:
        raise InputError(f"Unknown sampler {cfg.scheduler!r}; choose {' or '.join(SAMPLERS)}.", "scheduler")
    found = recognise_models(list(args.models), cfg.classifier, cfg.real, cfg.n, cfg.ddim_steps, cfg.seed,
                             cfg.batch_size, cfg.device, cfg.scheduler)
    judge = read_judge_quality(cfg.classifier)
    if judge:
        print(f"judge {cfg.classifier}: {judge.sentence()}")
    for name, r in found.items():
        print(f"{name}: {r.sentence()}; {'meets' if r.meets_bar() else 'misses'} the bar")
    if cfg.out:
        write_json_atomic(cfg.out, {"classifier": str(cfg.classifier), "ddim_steps": cfg.ddim_steps,
                                    "scheduler": cfg.scheduler, "seed": cfg.seed,
                                    "judge": dataclasses.asdict(judge) if judge else None,
                                    "models": {name: {**dataclasses.asdict(r), "meets_bar": r.meets_bar()}
                                               for name, r in found.items()}})
    return 0


def cmd_train_classifier(argv: list[str]) -> int:
    from ldm_eval.metrics.recognisability import train_judge
    from pipelines.errors import whole_number

    cfg, args = parse("python -m ldm_eval train-classifier", [TrainClassifierSettings], argv,
                      [("data", "fashion-mnist, a folder of class subfolders, or UTKFace")])
    whole_number(cfg.steps, "steps", "Classifier steps", 1, 10**6)
    whole_number(cfg.width, "width", "The classifier width", 4, 256)
    whole_number(cfg.batch_size, "batch_size", "The batch size", 1, 4096)
    quality = train_judge(str(args.data), cfg.out, cfg.resolution, steps=cfg.steps, width=cfg.width, shift=cfg.shift,
                          batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device)
    print(f"{cfg.out}: {quality.sentence()}")
    return 0


def cmd_report(argv: list[str]) -> int:
    from ldm_eval.reporting.dispatch import render_any_report

    parser = HfArgumentParser([], prog="python -m ldm_eval report")
    parser.add_argument("run_dir", type=Path, help="a run folder with results.jsonl")
    args = parser.parse_args(argv)
    path, summary = render_any_report(args.run_dir)
    print(summary)
    print(f"\nReport: {path}")
    return 0


def cmd_export_zoo(argv: list[str]) -> int:
    from ldm_eval.zoo.export import export_zoo

    cfg, args = parse("python -m ldm_eval export-zoo", [ExportSettings], argv, [("run_dir", "a sweep's run folder")])
    for path in export_zoo(args.run_dir, cfg.out, cfg.prefix, cfg.only):
        print(path)
    return 0


def cmd_build_zoo(argv: list[str]) -> int:
    from ldm_eval.zoo.build import ZooBuildSettings, build_zoo

    (cfg,) = parse("python -m ldm_eval build-zoo", [ZooBuildSettings], argv)
    zoo = build_zoo(cfg)
    if not (cfg.open_only or cfg.no_export):
        print(f"\nThe zoo in '{cfg.models}' holds {len(zoo)} model(s).")
    return 0


def cmd_bench_train(argv: list[str]) -> int:
    from dataclasses import asdict

    from ldm_eval.bench.command import run_bench_train

    (cfg,) = parse("python -m ldm_eval bench-train", [BenchSettings], argv)
    run_bench_train(**asdict(cfg))
    return 0


def cmd_bench_fid(argv: list[str]) -> int:
    from ldm_eval.bench.fid import run_fid_benchmark, run_interval_cost, run_sensitivity
    from pipelines.errors import whole_number
    from pipelines.pipeline import resolve_device

    (cfg,) = parse("python -m ldm_eval bench-fid", [BenchFidSettings], argv)
    whole_number(cfg.images, "images", "The number of images", 2, 100_000)
    whole_number(cfg.rounds, "rounds", "The number of rounds", 1, 1000)
    whole_number(cfg.batch_size, "batch_size", "Batch size", 1, 4096)
    whole_number(cfg.sensitivity, "sensitivity", "The sensitivity set size", 0, 100_000)
    whole_number(cfg.interval_cost, "interval_cost", "The interval-cost set size", 0, 100_000)
    result = run_fid_benchmark(cfg.images, cfg.rounds, cfg.batch_size, cfg.dataset, cfg.resolution,
                               resolve_device(cfg.device), cfg.out)
    print(result.markdown())
    if cfg.sensitivity:
        out = None if cfg.out is None else cfg.out.with_name(cfg.out.stem + "-sensitivity.md")
        table = run_sensitivity(cfg.dataset, cfg.resolution, cfg.sensitivity, resolve_device(cfg.device), out=out)
        print(f"\nFID against {cfg.sensitivity} other real images, as they are and degraded "
              "(x_real: times the real-vs-real FID at this N):\n")
        print(table.to_markdown(index=False, floatfmt=".4g"))
    if cfg.interval_cost:
        out = None if cfg.out is None else cfg.out.with_name(cfg.out.stem + "-interval-cost.md")
        print("\n" + run_interval_cost(cfg.dataset, cfg.resolution, cfg.interval_cost, resolve_device(cfg.device),
                                       out=out))
    return 0


def cmd_bench_startup(argv: list[str]) -> int:
    from ldm_eval.bench.startup import run_startup_benchmark
    from pipelines.atomic import write_text_atomic
    from pipelines.errors import InputError, whole_number

    (cfg,) = parse("python -m ldm_eval bench-startup", [BenchStartupSettings], argv)
    whole_number(cfg.rounds, "rounds", "The number of rounds", 1, 50)
    if not cfg.app.is_file():
        raise InputError(f"No demo entry point at '{cfg.app}' (give the path of app.py).", "app")
    table, summary = run_startup_benchmark(cfg.app.resolve(), cfg.rounds)
    text = f"{summary}\n\n{table.to_markdown(index=False, floatfmt='.2f')}\n"
    print(text)
    if cfg.out is not None:
        write_text_atomic(cfg.out / "startup_benchmark.md", text)
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "tour": (cmd_tour, "measure the shipped models side by side, in minutes (the default command)"),
    "sweep": (cmd_sweep, "train and measure every factor on your machine (the quick preset: 11-28 minutes)"),
    "cond-sweep": (cmd_cond_sweep, "class- and text-conditional models across factors and guidance scales"),
    "ae-sweep": (cmd_ae_sweep, "the first-stage study: KL and VQ autoencoders per factor (cf. paper Tab. 8)"),
    "evaluate": (cmd_evaluate, "measure any diffusion model (folder or hub id) against reference images"),
    "train-autoencoder": (cmd_train_autoencoder, "train a KL or VQ first stage"),
    "train-diffusion": (cmd_train_diffusion, "train a denoiser (pixel space or on cached latents)"),
    "sample": (cmd_sample, "write N samples of a trained model as PNG files"),
    "fid": (cmd_fid, "FID (and KID) between two folders of images"),
    "recognise": (cmd_recognise, "would a person recognise a model's samples? a real-data classifier's verdict"),
    "train-classifier": (cmd_train_classifier, "train a judge for recognise and measure it on real held-out images"),
    "report": (cmd_report, "re-render a run folder's report from its stored results"),
    "build-zoo": (cmd_build_zoo, "train, measure and export the demo's whole model zoo (resumable)"),
    "export-zoo": (cmd_export_zoo, "copy a sweep's models as fp16 with model cards (the demo's zoo)"),
    "bench-train": (cmd_bench_train, "training speed and memory for every factor (prints a table)"),
    "bench-fid": (cmd_bench_fid, "Inception feature extraction: images/s of each way of running it (prints a table)"),
    "bench-startup": (cmd_bench_startup, "the web demo's time to first HTTP 200 against the bare imports (ratio)"),
}


def _usage() -> str:
    lines = ["usage: python -m ldm_eval [-v] COMMAND [flags]   (no command: the tour of the shipped models)", "",
             "LDM Lab: pixel vs latent diffusion, measured.", "", "commands:"]
    lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "python -m ldm_eval COMMAND --help lists a command's flags."]
    return "\n".join(lines)


# the sampling pipeline's keyword arguments that the ``sample`` command spells differently
_PIPELINE_FLAGS = {"labels": "--label", "guidance_scale": "--guidance", "num_inference_steps": "--steps",
                   "num_images": "--n"}


def flag_name(field_name: str) -> str:
    """The command-line spelling of a config field or pipeline argument."""
    return _PIPELINE_FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = bool(argv) and argv[0] in ("-v", "--verbose")
    if verbose:
        argv = argv[1:]
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not argv:  # the main job: the shipped models measured (a rerun resumes, or re-renders a finished tour)
        argv = ["tour"]
    if argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"{_usage()}\n\nerror: unknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ValueError as err:  # InputError and the project's other errors for bad input (all ValueErrors)
        field_name = getattr(err, "field", None)
        print(f"error: {flag_name(field_name) + ': ' if field_name else ''}{err}", file=sys.stderr)
        return 2

