"""The report of an ``evaluate`` run: one row per model and DDIM step count, with error bars.

Every FID carries its bootstrap 95 % interval and FID-infinity; the reading at the end says,
per step count, which adjacent places of the FID ranking the intervals support and which
they do not (overlapping intervals: the order could flip with another draw of samples).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, NullFormatter

from ldm_eval.reporting.page import (
    data_label,
    error_bars,
    grid_lines,
    image_lines,
    md_table,
    measured_on,
    open_report,
    ranking_reading,
    read_run,
    save_figure,
    write_report,
)
from ldm_eval.reporting.tables import partner
from pipelines.records import FidRecord, ModelRecord, ReferenceRecord, SamplingRecord
from pipelines.results_log import Results

COLUMNS = ["model", "layout", "kind", "factor", "latent_shape", "unet_params", "ae_params", "scheduler", "eta", "ddim_steps",
           "sec_per_image", "samples_per_s", "peak_mem_sample_mb", "memory_method", "fid", "fid_ci_low", "fid_ci_high", "fid_inf",
           "precision", "recall", "density", "coverage", "prdc_k", "kid", "kid_std", "kid_subset_size", "fid_backend", "fid_samples",
           "reference_samples", "device", "dtype"]
SUMMARY_COLUMNS = ["model", "kind", "factor", "scheduler", "ddim_steps", "sec_per_image", "fid", "fid_ci_low", "fid_ci_high",
                   "fid_inf", "precision", "recall", "fid_samples", "fid_backend"]


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    """The report's own table: the summary's columns and memory, those this run measured."""
    shown = table[[*SUMMARY_COLUMNS[:-2], "peak_mem_sample_mb", *SUMMARY_COLUMNS[-2:]]]
    return shown.loc[:, [c for c in shown.columns if shown[c].notna().any()]]


def _precision(cfg: dict) -> str:
    mixed = cfg.get("mixed_precision")
    return "full precision (fp32)" if mixed in (None, "no") else f"{mixed} mixed precision"


def _batch(cfg: dict) -> str:
    batch = cfg.get("batch_size")
    return f"{batch} at a time (the memory column is the peak of one such batch)" if batch else "in batches"


def _memory_and_prdc(table: pd.DataFrame) -> list[str]:
    methods = "; ".join(sorted(set(table["memory_method"].dropna().astype(str)))) if len(table) else ""
    lines = [f"`peak_mem_sample_mb`: {methods or 'not measured'}."]
    k = table["prdc_k"].dropna() if len(table) else table
    if len(k):
        lines.append(f"`precision` and `recall` (Kynkäänniemi et al. 2019), `density` and `coverage` (Naeem et al. "
                     f"2020, in `results.csv`): on the FID's features, k = {int(k.iloc[0])} nearest neighbours; "
                     "precision is the share of samples inside the real images' manifold, recall the share of real "
                     "images inside the samples'.")
    return lines


def _sampler(cfg: dict) -> str:
    """The sampler as the run's settings name it (runs from before --scheduler sampled with DDIM at eta 0)."""
    if cfg.get("scheduler", "ddim") == "ddpm":
        return "DDPM (ancestral)"
    return f"DDIM, eta {cfg.get('eta', 0.0):g}"


def evaluation_table(results: Results) -> pd.DataFrame:
    rows = []
    for r in results.of(FidRecord):
        m = partner(results, ModelRecord, model=r.model)
        g = partner(results, SamplingRecord, model=r.model, ddim_steps=r.ddim_steps)
        params = m.params or {}
        rows.append({
            "model": r.model, "layout": m.layout, "kind": r.kind, "factor": r.factor,
            "latent_shape": "x".join(map(str, m.latent_shape or [])), "unet_params": params.get("unet"),
            "ae_params": params.get("vae"), "scheduler": g.scheduler, "eta": g.eta, "ddim_steps": r.ddim_steps,
            "sec_per_image": g.sec_per_image,
            "samples_per_s": g.samples_per_s, "peak_mem_sample_mb": g.peak_mem_sample_mb,
            "memory_method": g.memory_method, "prdc_k": r.prdc_k, "fid": r.fid,
            "fid_ci_low": r.fid_ci_low, "fid_ci_high": r.fid_ci_high, "fid_inf": r.fid_inf,
            "precision": r.precision, "recall": r.recall, "density": r.density, "coverage": r.coverage, "kid": r.kid,
            "kid_std": r.kid_std, "kid_subset_size": r.kid_subset_size, "fid_backend": r.fid_backend,
            "fid_samples": r.fid_samples, "reference_samples": r.reference_samples, "device": r.device,
            "dtype": m.dtype,
        })
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["ddim_steps", "fid"]).reset_index(drop=True)


def _plots(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    if not len(table):
        return {}
    fig, ax = plt.subplots(figsize=(6.5, 4))
    markers = "osD^v<>px*"
    for i, (model, group) in enumerate(table.groupby("model", sort=False)):
        group = group.sort_values("sec_per_image")
        ax.errorbar(group["sec_per_image"], group["fid"], yerr=error_bars(group), marker=markers[i % len(markers)],
                    capsize=3, label=model)
        for _, row in group.iterrows():
            ax.annotate(f"{int(row['ddim_steps'])}", (row["sec_per_image"], row["fid"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.1, not 10^-1
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis collide
    ax.set_xlabel("seconds per image (log; labels: DDIM steps)")
    ax.set_ylabel(f"FID ({table['fid_backend'].iloc[0]}, N = {int(table['fid_samples'].min())}; bars: 95 % CI)")
    ax.set_title("Quality against sampling cost")
    ax.legend(fontsize=8)
    return {"FID against seconds per image": save_figure(fig, out / "fid_vs_speed.png")}


def timing_notes(table: pd.DataFrame, ratio: float = 3.0) -> list[str]:
    """Timings out of line: a model that sampled over ``ratio`` times slower than one with a larger latent at the
    same steps and image size (a smaller latent is less work, so the machine was probably busy then)."""
    notes = []
    rows = table.assign(elements=[np.prod([int(v) for v in s.split("x")]) if s else np.nan
                                  for s in table["latent_shape"].fillna("")])
    for _, row in rows.iterrows():
        larger = rows[(rows["ddim_steps"] == row["ddim_steps"]) & (rows["elements"] > row["elements"])
                      & (rows["sec_per_image"] * ratio < row["sec_per_image"])]
        if len(larger):
            other = larger.sort_values("sec_per_image").iloc[0]
            notes.append(f"- **Timing out of line:** `{row['model']}` took {row['sec_per_image']:.3g} s/image at "
                         f"{int(row['ddim_steps'])} steps, over {ratio:g}x `{other['model']}` "
                         f"({other['sec_per_image']:.3g} s), whose latent is larger; the machine was probably busy "
                         "while it was timed. Time it again before citing it.")
    return notes


def _reference_lines(results: Results) -> list[str]:
    lines = []
    for r in results.of(ReferenceRecord):
        lines.append(f"- The reference images were resized to the model's {r.resolution} px (short side, bicubic, "
                     "centre crop) before any feature was taken, as the samples are made at that size.")
        if r.cached:
            saved = f"; computing them took {r.compute_seconds:.1f} s" if r.compute_seconds is not None else ""
            lines.append(f"- {r.source}, N = {r.n}: features read from the reference cache in {r.seconds:.2f} s{saved} "
                         "(that much time saved).")
        else:
            lines.append(f"- {r.source}, N = {r.n}: features computed in {r.seconds:.1f} s and cached for later runs.")
    return lines


def render_evaluation_report(run_dir: Path) -> Path:
    """Write results.csv, the plot, report.md and report.html of an evaluation; returns report.md."""
    run = open_report(run_dir, evaluation_table)
    run_dir, results, table, env, cfg = run.run_dir, run.results, run.table, run.env, run.cfg
    split = cfg.get("reference_split", "auto")
    ref_n = cfg.get("reference_n") or cfg.get("n")
    reference = f"`{data_label(cfg.get('reference'))}`" + (f" ({split} split)" if split != "auto" else "") + f", {ref_n} images"
    reading = ranking_reading(table)
    lines = [
        f"# LDM Lab evaluation: {run_dir.name}", "",
        *(["**Finding** (FID ranking; `<`: the 95 % intervals separate the two, `~`: they overlap):", "", *reading, ""]
          if reading else []),
        f"Models: {', '.join(f'`{m}`' for m in cfg.get('models', []))}; reference {reference}; "
        f"N = {cfg.get('n')} samples per model and step count ({_sampler(cfg)}, seed {cfg.get('seed')}), "
        f"{cfg.get('backend')} features, {_precision(cfg)}; samples made {_batch(cfg)}.", "",
        *([f"Judged at {cfg['image_size']} px: every sample enlarged (or reduced) to it with bicubic interpolation "
           f"before its features were taken, the references loaded at {cfg['image_size']} px.", ""]
          if cfg.get("image_size") else []),
        measured_on(env, cfg), "",
        "Speed is measured after a warm-up, over all N samples, at the batch size given. FID is biased at small N: "
        "`fid_ci_low`-`fid_ci_high` is a bootstrap 95 % interval (resampling the samples "
        f"{cfg.get('bootstrap_resamples')} times; the reference images are held fixed, so their own draw's variance "
        "is not in it), `fid_inf` the FID extrapolated to infinitely many samples "
        "(Chong & Forsyth, CVPR 2020); KID ± `kid_std` is over subsets of `kid_subset_size` images.", "",
        *_memory_and_prdc(table), "",
        "## Results", "", md_table(_shown(table)), "",
        "The columns a reader needs; every measured column is in `results.csv` beside this report.", "",
        *timing_notes(table), "",
        "## Reference features", "", *_reference_lines(results), "",
    ]
    lines += image_lines(_plots(table, run_dir / "plots"))
    lines += grid_lines(run_dir, "samples-*.png", "## Samples")
    return write_report(run_dir, lines)


def evaluation_summary(run_dir: Path) -> str:
    return md_table(evaluation_table(read_run(run_dir))[SUMMARY_COLUMNS])
