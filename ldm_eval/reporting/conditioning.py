"""The conditioning sweep's report: quality against faithfulness across factors and guidance.

Derived only from ``results.jsonl`` through :func:`pipelines.results_log.read_results`
(``python -m ldm_eval report RUN_DIR`` re-renders it); the page machinery is shared with
the compression report in :mod:`ldm_eval.reporting.page`.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ldm_eval.reporting.page import (
    budget_sentence,
    data_label,
    grid_lines,
    image_lines,
    md_table,
    measured_on,
    open_report,
    read_run,
    save_figure,
    write_report,
)
from ldm_eval.reporting.tables import (
    conditional_table,
    per_class_table,
)
from pipelines.records import ClassifierRecord, ConditioningRecord

SUMMARY_COLUMNS = ["condition", "factor", "guidance", "accuracy", "fid", "mean_class_fid", "n", "samples_per_s",
                   "train_steps"]


def _plots(table: pd.DataFrame, out: Path, chance: float | None) -> dict[str, Path]:
    """FID against accuracy per condition, and both against the guidance scale."""
    plots: dict[str, Path] = {}
    if not len(table):
        return plots
    conditions = sorted(table["condition"].unique())
    fig, axes = plt.subplots(1, len(conditions), figsize=(5.2 * len(conditions), 4), squeeze=False)
    for ax, condition in zip(axes[0], conditions):
        for factor, g in table[table["condition"] == condition].groupby("factor"):
            g = g.sort_values("guidance")
            ax.plot(g["accuracy"], g["fid"], marker="o", label=f"f={factor}")
            for _, row in g.iterrows():
                ax.annotate(f"g={row['guidance']:g}", (row["accuracy"], row["fid"]), fontsize=7)
        n = int(table["n"].iloc[0])
        ax.set(xlabel="conditioning accuracy (share of samples of the asked class)",
               ylabel=f"FID (domain features, N={n})", title=f"{condition}: quality vs faithfulness")
        ax.legend(fontsize=8)
    plots["fid_vs_accuracy"] = save_figure(fig, out / "cond_fid_vs_accuracy.png")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (condition, factor), g in table.groupby(["condition", "factor"]):
        g = g.sort_values("guidance")
        style = "-" if condition == "class" else "--"
        axes[0].plot(g["guidance"], g["accuracy"], style, marker="o", label=f"{condition} f={factor}")
        axes[1].plot(g["guidance"], g["fid"], style, marker="o", label=f"{condition} f={factor}")
    if chance is not None:
        axes[0].axhline(chance, color="gray", lw=0.8, ls=":", label="chance")
    axes[0].set(xlabel="guidance scale", ylabel="conditioning accuracy")
    axes[1].set(xlabel="guidance scale", ylabel="FID (domain)")
    axes[0].legend(fontsize=7, ncol=2)
    plots["by_guidance"] = save_figure(fig, out / "cond_by_guidance.png")
    return plots


def render_conditional_report(run_dir: Path) -> Path:
    """Write results.csv, plots, report.md and report.html of a conditioning sweep; returns report.md."""
    run = open_report(run_dir, conditional_table)
    run_dir, results, table, env, cfg = run.run_dir, run.results, run.table, run.env, run.cfg
    clf = results.one(ClassifierRecord)
    scored = results.one(ConditioningRecord)
    n_classes = len(scored.class_names) if scored is not None and scored.class_names else None
    plots = _plots(table, run_dir / "plots", 1 / n_classes if n_classes else None)
    lines = [
        f"# LDM Lab conditioning report: {run_dir.name}", "",
        f"Preset `{cfg.get('preset')}` on `{data_label(cfg.get('dataset'))}` at {cfg.get('resolution')} px; factors "
        f"{cfg.get('factors')}; conditions {cfg.get('conditions')}; guidance scales {cfg.get('guidance')}. Each "
        f"cross-attention denoiser trained for {cfg.get('train_budget')} {cfg.get('budget')} (UNet about "
        f"{cfg.get('param_budget')} parameters, batch {cfg.get('batch_size')}, condition dropout "
        f"{cfg.get('condition_dropout')}); KL autoencoders {cfg.get('ae_budget')} {cfg.get('budget')} each.", "",
        measured_on(env, cfg), "",
        budget_sentence(cfg, results), "",
        f"Sampling: DDIM {cfg.get('eval_ddim_steps')} steps (eta 0), {cfg.get('samples_per_class')} samples per class, "
        "the same initial noise for every model. Classifier-free guidance eps = eps_null + g (eps_cond - eps_null); "
        "g = 1 is the plain conditional model.", "",
        "Metrics: **accuracy** = share of samples that a classifier trained on real training images (never on "
        "samples) assigns to the asked class"
        + (f" (its accuracy on {clf.n} real held-out images: {clf.accuracy_on_real:.3f}; chance "
           f"{1 / n_classes:.3f})" if clf and n_classes else "")
        + ". **FID/KID** on that classifier's penultimate features (domain FID), all samples against as many "
        "held-out real images; **per-class FID**: the samples asked for one class against all held-out real "
        "images of that class (small N: biased upward, compare only within this table).", "",
        "## Results", "", md_table(table), "",
    ]
    lines += image_lines(plots)
    for metric, title in (("accuracy", "Per-class conditioning accuracy"), ("fid", "Per-class FID (domain)")):
        lines += [f"## {title}", "", md_table(per_class_table(results, metric)), ""]
    lines += grid_lines(run_dir, "cond-*.png", "## Samples (one row per asked class, in class order)")
    lines += [
        "## The paper, for comparison", "",
        "- Rombach et al. (CVPR 2022) condition LDMs through cross-attention on tokens from a domain encoder "
        "(a transformer for text, trained jointly from scratch for LAION text-to-image); classifier-free guidance "
        "with s = 1.5 improves their class-conditional ImageNet LDM-4 from FID 10.56 to 3.60 (Tab. 3).", "",
    ]
    return write_report(run_dir, lines)


def conditional_summary(run_dir: Path) -> str:
    """The conditioning table as printed at the end of a conditioning sweep."""
    return md_table(conditional_table(read_run(run_dir))[SUMMARY_COLUMNS])
