"""The first-stage study's report: our Tab. 8 beside the paper's, plots and reconstruction grids.

Derived only from ``results.jsonl`` (``python -m ldm_eval report RUN_DIR`` re-renders it);
the page machinery is shared with the compression report in :mod:`ldm_eval.reporting.page`.
"""
from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ldm_eval.reporting.compression import PAPER_AUTOENCODERS
from ldm_eval.reporting.page import (
    budget_sentence,
    data_label,
    error_bars,
    grid_lines,
    image_lines,
    md_table,
    measured_on,
    open_report,
    read_run,
    records_frame,
    save_figure,
    write_report,
)
from pipelines.records import AutoencoderRecord
from pipelines.results_log import Results

# The columns of results.csv, in order (the Tab. 8 layout plus what tells rows apart).
COLUMNS = ["kind", "factor", "variant", "latent_shape", "codebook_size", "codebook_usage", "perplexity", "ae_params",
           "psnr", "ssim", "recon_samples", "rfid", "rfid_ci_low", "rfid_ci_high", "rfid_inf", "rkid", "rkid_std",
           "rfid_samples", "train_seconds",
           "train_steps", "train_images_per_s", "losses"]
SUMMARY_COLUMNS = ["kind", "factor", "variant", "latent_shape", "codebook_usage", "psnr", "ssim", "rfid", "rkid",
                   "rfid_samples", "train_seconds"]

# the first-stage study's variant names (a run's AutoencoderRecord.variant): without the GAN, or with it from a share
NO_GAN = "no-gan"
GAN_FROM = "gan-from-"


def first_stage_table(results: Results) -> pd.DataFrame:
    """One row per autoencoder, sorted by factor, kind and variant."""
    df = records_frame(results.of(AutoencoderRecord))
    if not len(df):
        return pd.DataFrame(columns=COLUMNS)
    df = df.rename(columns={"ae_train_seconds": "train_seconds", "ae_train_steps": "train_steps",
                            "ae_train_images_per_s": "train_images_per_s"})
    df["latent_shape"] = df["latent_shape"].map(lambda s: "x".join(map(str, s)))
    df["variant"] = df["variant"].replace("", "default")
    return df[COLUMNS].sort_values(["factor", "kind", "variant"]).reset_index(drop=True)


def _plots(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    """PSNR and rFID against the factor, one line per kind (the no-GAN models as points)."""
    if not len(table):
        return {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (kind, variant), g in table.groupby(["kind", "variant"]):
        g = g.sort_values("factor")
        style = dict(marker="o") if variant == "default" else dict(marker="x", ls=":")
        label = kind.upper() + ("" if variant == "default" else f" ({variant})")
        axes[0].plot(g["factor"], g["psnr"], label=label, **style)
        if g["rfid"].notna().any():
            axes[1].errorbar(g["factor"], g["rfid"], yerr=error_bars(g, "rfid", "rfid_ci_low", "rfid_ci_high"),
                             label=label, capsize=3, **style)
    n = table["rfid_samples"].max()
    axes[0].set(ylabel="PSNR (dB, held-out)", title="Reconstruction fidelity")
    axes[1].set(ylabel=f"rFID (Inception, N={n}; bars: 95 % CI)", title="Reconstruction realism (lower is better)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set(xlabel="downsampling factor f")
        ax.legend(fontsize=8)
    return {"first_stage": save_figure(fig, out / "first_stage.png")}


def gan_reading(table: pd.DataFrame) -> list[str]:
    """What the adversarial term bought at each factor trained both ways: PSNR and rFID, with the intervals.

    Every model with the GAN (the default one and any ``gan-from-*`` variant, whose adversarial
    phase starts at another share of the budget) is compared with the no-GAN twin.
    """
    lines = []
    for (kind, factor), g in table.groupby(["kind", "factor"]):
        without = g[g["variant"] == NO_GAN]
        if not len(without) or without["rfid"].isna().any():
            continue
        b = without.iloc[0]
        for _, a in g[g["variant"] != NO_GAN].iterrows():
            if pd.isna(a["rfid"]):
                continue
            which = ("the GAN" if a["variant"] == "default" else
                     f"the GAN from {float(a['variant'].removeprefix(GAN_FROM)):.0%} of the budget")
            lines.append(f"- {kind.upper()} f = {factor}: with {which} PSNR {a['psnr']:.2f} dB, rFID {_fid(a)}; "
                         f"without it PSNR {b['psnr']:.2f} dB, rFID {_fid(b)}; {_verdict(a, b)}.")
    return lines


def _fid(row: pd.Series) -> str:
    ci = "" if pd.isna(row["rfid_ci_low"]) else f" (95 % CI {row['rfid_ci_low']:.1f}-{row['rfid_ci_high']:.1f})"
    return f"{row['rfid']:.1f}{ci}"


def _verdict(a: pd.Series, b: pd.Series) -> str:
    if pd.isna(a["rfid_ci_high"]) or pd.isna(b["rfid_ci_low"]):
        return "no rFID intervals to judge by"
    if a["rfid_ci_high"] < b["rfid_ci_low"]:
        return "rFID is lower with the GAN, and the intervals separate the two"
    if b["rfid_ci_high"] < a["rfid_ci_low"]:
        return "rFID is higher with the GAN, and the intervals separate the two"
    return "the rFID intervals overlap: no supported difference at this N"


_GRID_NAME = re.compile(r"recon-(?P<kind>[a-z]+)-f(?P<factor>\d+)(?P<variant>.*)")


def _grid_order(path: Path) -> tuple:
    """Grids in the table's order: by factor, then kind, the default model before its no-GAN twin."""
    m = _GRID_NAME.fullmatch(path.stem)
    return (int(m["factor"]), m["kind"], m["variant"]) if m else (10**9, path.stem, "")


def render_first_stage_report(run_dir: Path) -> Path:
    """Write results.csv, plots, report.md and report.html of a first-stage study; returns report.md."""
    run = open_report(run_dir, first_stage_table)
    run_dir, results, table, env, cfg = run.run_dir, run.results, run.table, run.env, run.cfg
    n = int(table["rfid_samples"].max()) if len(table) else 0
    lines = [
        f"# LDM Lab first-stage study: {run_dir.name}", "",
        f"Preset `{cfg.get('preset')}` on `{data_label(cfg.get('dataset'))}` at {cfg.get('resolution')} px. Every autoencoder "
        f"trained for the same budget ({cfg.get('ae_budget')} {cfg.get('budget')}, batch {cfg.get('ae_batch_size')}, "
        f"base width {cfg.get('ae_base_width')}, learning rate {cfg.get('ae_learning_rate')}); the column `losses` "
        "says which terms trained each model. Rows marked `no-gan` are the same model trained without the "
        "adversarial term at the same budget; rows marked `gan-from-S` switch it on at the share S of the budget "
        "instead of the default 0.6 (a longer adversarial phase).", "",
        measured_on(env, cfg), "",
        budget_sentence(cfg, results), "",
        f"All metrics on held-out images the autoencoders never saw: PSNR/SSIM (mean per image) on "
        f"{int(table['recon_samples'].max()) if len(table) else 0}; rFID and KID (`rkid` ± `rkid_std`) between {n} "
        "held-out images and their reconstructions, standard InceptionV3 features with clean-fid's 'clean' resize "
        "(FID falls as N grows: compare rows only at equal N). Codebook usage is the share of VQ codes the held-out "
        "images use; perplexity is the effective number of codes.", "",
        "## Results (cf. the paper's Tab. 8)", "",
        md_table(table), "",
        "`rfid_ci_low`-`rfid_ci_high`: bootstrap 95 % interval (resampling the reconstructions); `rfid_inf`: rFID "
        "extrapolated to infinitely many images (Chong & Forsyth 2020).", "",
        "## What the adversarial term buys (same budget, same held-out images)", "",
        *(gan_reading(table) or ["(no factor was trained both with and without the GAN)"]), "",
        "## The paper's Tab. 8 (Rombach et al., CVPR 2022), for comparison", "",
        "Trained on OpenImages, evaluated on ImageNet val at 256 px, with an LPIPS term and far longer training: "
        "the paper's numbers, not ours.", "",
        md_table(PAPER_AUTOENCODERS), "",
    ]
    lines += image_lines(_plots(table, run_dir / "plots"))
    lines += grid_lines(run_dir, "recon-*.png",
                        "## Reconstructions (top row: held-out images; bottom row: the model's reconstruction)",
                        key=_grid_order)
    return write_report(run_dir, lines)


def first_stage_summary(run_dir: Path) -> str:
    return md_table(first_stage_table(read_run(run_dir))[SUMMARY_COLUMNS])
