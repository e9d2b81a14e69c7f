"""Render a run folder's results as ``results.csv``, ``report.md`` and a self-contained ``report.html``.

Everything here is derived from ``results.jsonl`` (read through :func:`pipelines.results_log.read_results`):
``python -m ldm_eval report RUN_DIR`` re-renders it at any time without measuring anything again.
The helpers below the compression report (reading a run, saving figures, writing the page)
are shared with :mod:`ldm_eval.conditional_report`.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ldm_eval.reporting.page import (
    budget_sentence,
    classifier_sentence,
    data_label,
    error_bars,
    grid_lines,
    image_lines,
    md_table,
    measured_on,
    open_report,
    ranking_reading,
    read_run,
    recognisability_lines,
    records_frame,
    save_figure,
    series_label,
    series_style,
    write_report,
)
from ldm_eval.reporting.tables import (
    tidy_table,
)
from pipelines.records import AutoencoderRecord, ProgressRecord, TrainingRecord
from pipelines.results_log import Results

# The paper's numbers (Rombach et al., CVPR 2022), shown beside ours and labelled as the paper's.
PAPER_AUTOENCODERS = pd.DataFrame(
    [("VQ", 4, 3, 0.58, 27.43), ("VQ", 8, 4, 1.14, 23.07), ("VQ", 16, 8, 5.15, 20.83), ("VQ", 32, 16, 31.83, 17.45),
     ("KL", 2, 2, 0.086, 32.47), ("KL", 4, 3, 0.27, 27.53), ("KL", 8, 4, 0.90, 24.19), ("KL", 16, 16, 0.87, 24.08),
     ("KL", 32, 64, 2.04, 22.27)],
    columns=["kind", "factor", "latent channels", "R-FID", "PSNR"],
)
PAPER_NOTES = [
    "Fig. 6 (ImageNet, class-conditional, 2 M steps, 100 DDIM steps): LDM-1 and LDM-2 learn slowly, LDM-32 stalls "
    "early; LDM-4 to LDM-16 are the sweet spot; FID gap of 38 between LDM-1 and LDM-8 after 2 M steps.",
    "Fig. 7 (CelebA-HQ, ImageNet; DDIM 10-200 steps, FID on 5k samples): LDM-4 and LDM-8 give the best quality per "
    "unit of sampling speed.",
    "Tab. 13: about 391-396 M parameters for every f; batch 7 / 9 / 40 / 64 / 112 / 112 for f = 1 / 2 / 4 / 8 / 16 / 32 "
    "in the same memory.",
    "Inpainting, LDM-1 vs LDM-4: training 0.11 vs 0.32 samples/s, sampling 0.26 vs 0.97 samples/s, FID@2k 24.74 vs 15.21.",
]
SUMMARY_COLUMNS = ["factor", "kind", "latent_shape", "ddim_steps", "fid_backend", "fid_samples", "fid", "kid",
                   "train_images_per_s", "samples_per_s", "psnr", "rfid"]
AUTOENCODER_COLUMNS = ["kind", "factor", "latent_shape", "ae_params", "psnr", "ssim", "recon_samples", "rfid",
                       "rfid_samples", "codebook_usage", "losses"]


def make_plots(results: Results, table: pd.DataFrame, out: Path) -> dict[str, Path]:
    """FID along training (Fig. 6), quality vs sampling speed (Fig. 7), training speed and memory per factor."""
    plots: dict[str, Path] = {}
    progress = records_frame(results.of(ProgressRecord))
    if len(progress):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (kind, factor), g in progress.groupby(["kind", "factor"]):
            ax.plot(g["train_steps"], g["fid"], label=series_label(kind, factor), **series_style(kind, factor))
        n = int(progress["fid_samples"].iloc[0])
        ax.set(xlabel="training steps", ylabel=f"FID (domain features, N={n})", title="FID along training (cf. paper Fig. 6)")
        ax.legend(fontsize=8)
        plots["fid_vs_steps"] = save_figure(fig, out / "fid_vs_steps.png")
    for backend, g in table.groupby("fid_backend"):
        if g["samples_per_s"].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for (kind, factor), gg in g.groupby(["kind", "factor"]):
            gg = gg.sort_values("ddim_steps")
            ax.errorbar(gg["samples_per_s"], gg["fid"], yerr=error_bars(gg), capsize=3, label=series_label(kind, factor),
                        **series_style(kind, factor))
            for _, row in gg.iterrows():
                ax.annotate(str(int(row["ddim_steps"])), (row["samples_per_s"], row["fid"]), fontsize=7)
        ax.set_xscale("log")
        n = int(g["fid_samples"].iloc[0])
        ax.set(xlabel="sampling throughput (samples/s, log)", ylabel=f"FID ({backend}, N={n})",
               title="Quality vs speed; labels = DDIM steps; bars = 95 % CI (cf. Fig. 7)")
        ax.legend(fontsize=8)
        plots[f"fid_vs_speed_{backend}"] = save_figure(fig, out / f"fid_vs_speed_{backend}.png")
    train = records_frame(results.of(TrainingRecord, condition="none"))
    if len(train):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for kind, g in train.groupby("kind"):
            g = g.sort_values("factor")
            axes[0].plot(g["factor"], g["train_images_per_s"], marker="o", label=kind)
            axes[1].plot(g["factor"], g["peak_mem_train_mb"], marker="o", label=kind)
        for ax, ylabel in zip(axes, ("training images/s", "peak training memory (MB)")):
            ax.set_xscale("log", base=2)
            ax.set(xlabel="downsampling factor f", ylabel=ylabel)
            ax.legend(fontsize=8)
        axes[0].set_yscale("log")
        axes[1].set_ylim(bottom=0)  # memory from zero: the values compare as ratios
        methods = "; ".join(sorted(set(train["memory_method"].dropna().astype(str))))
        axes[1].set_xlabel("downsampling factor f\n" + textwrap.fill(f"memory: {methods or 'unavailable'}", 60),
                           fontsize=7)
        plots["speed_memory"] = save_figure(fig, out / "speed_memory.png")
    return plots


def render_report(run_dir: Path) -> Path:
    """Write results.csv, plots, report.md and report.html of a compression sweep; returns report.md."""
    run = open_report(run_dir, tidy_table)
    run_dir, results, table, env, cfg = run.run_dir, run.results, run.table, run.env, run.cfg
    plots = make_plots(results, table, run_dir / "plots")
    ae = records_frame(results.of(AutoencoderRecord))
    reading = ranking_reading(table.assign(model=[series_label(k, f) for k, f in zip(table["kind"], table["factor"])]),
                              by=("fid_backend", "ddim_steps"))
    lines = [f"# LDM Lab report: {run_dir.name}", "",
             "**Finding** (FID rankings; `<`: the 95 % intervals separate the two, `~`: they overlap, so the order "
             "could flip with another draw of samples):", "", *(reading or ["(no ranking: fewer than two models)"]), ""]
    lines += [
        f"Preset `{cfg.get('preset')}` on `{data_label(cfg.get('dataset'))}` at {cfg.get('resolution')} px; factors "
        f"{cfg.get('factors')}; autoencoders {cfg.get('kinds')}; UNets matched at about {cfg.get('param_budget')} "
        "parameters.",
        "",
        budget_sentence(cfg, results),
        "",
        measured_on(env, cfg),
        "",
        "FID backends: `inception` is the headline quality number: standard InceptionV3 features with clean-fid's "
        "'clean' resize, which rise clearly under blur and compression artefacts. FID is biased upward at small N, so "
        "read it with its 95 % interval (a bootstrap over the samples; the held-out images are held fixed, so "
        "their own draw's variance is not in it), `fid_inf` (extrapolated to infinite N) and KID beside it, and compare only "
        "at equal N. `domain` is a *semantic* measure: the features of a small classifier trained on this data set "
        "(cheap, so larger N): what that classifier learned to tell apart, not comparable across data sets or with "
        "published numbers. "
        + classifier_sentence(results) + " Reference images are the held-out split. Sampling uses DDIM (eta 0); "
        "throughput is measured after a warm-up.",
        "",
        "## Results",
        "",
        *[f"- `{b}` FID/KID: N={int(g['fid_samples'].iloc[0])} generated images against as many held-out real images."
          for b, g in table.groupby("fid_backend")],
        "",
        md_table(report_columns(table)),
        "",
        "The columns a reader needs; every measured column (training time, KID spread, memory, SSIM...) is in "
        "`results.csv` beside this report.",
        "",
    ]
    degenerate = table.loc[table["degenerate"], "factor"].unique().tolist()
    if degenerate:
        lines += [f"Factors {degenerate} leave a latent of 2x2 or smaller here: run and flagged as degenerate.", ""]
    lines += fewer_steps_lines(table)
    lines += recognisability_lines(results)
    if len(ae):
        lines += ["## Autoencoders (cf. paper Tab. 8)", "", md_table(ae[AUTOENCODER_COLUMNS]), ""]
    lines += image_lines(plots)
    lines += grid_lines(run_dir, "samples-*.png", "## Samples")
    lines += ["## The paper's numbers (Rombach et al., CVPR 2022), for comparison", "",
              "First stages, trained on OpenImages, evaluated on ImageNet val (paper Tab. 8):", "",
              md_table(PAPER_AUTOENCODERS), ""] + [f"- {n}" for n in PAPER_NOTES] + [""]
    return write_report(run_dir, lines)


def fewer_steps_lines(table: pd.DataFrame) -> list[str]:
    """A sentence for every model sampled at fewer DDIM step counts than the others (``--pixel-ddim-steps``)."""
    steps = table.groupby(["kind", "factor"])["ddim_steps"].agg(lambda s: sorted(set(int(v) for v in s)))
    widest = max(steps, key=len, default=[])
    short = [f"{series_label(k, f)} at DDIM {v}" for (k, f), v in steps.items() if len(v) < len(widest)]
    if not short:
        return []
    return [f"Sampled at fewer step counts than the others ({widest}): {'; '.join(short)}. Pixel-space sampling "
            "costs the most at a large size (`--pixel-ddim-steps`); those rows compare at equal step counts only.", ""]


REPORT_COLUMNS = ["factor", "kind", "latent_shape", "train_steps", "ddim_steps", "fid_backend", "fid_samples", "fid",
                  "fid_ci_low", "fid_ci_high", "precision", "recall", "sec_per_image", "peak_mem_sample_mb", "psnr",
                  "rfid", "notes"]


def report_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The report's own table: the columns a reader needs, those measured in this run (results.csv keeps all)."""
    shown = table[[c for c in REPORT_COLUMNS if c in table.columns]]
    return shown.loc[:, [c for c in shown.columns if shown[c].notna().any() and (shown[c] != "").any()]]


def summary_table(run_dir: Path) -> str:
    """The results table as printed at the end of a sweep."""
    return md_table(tidy_table(read_run(run_dir))[SUMMARY_COLUMNS])

