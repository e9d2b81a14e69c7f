"""The tour's report: the shipped models of each set side by side, the finding first.

Derived only from the sets' ``results.jsonl`` (``python -m ldm_eval`` re-renders a finished tour).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ldm_eval.reporting.page import (
    error_bars,
    md_table,
    read_run,
    save_figure,
    series_label,
    series_style,
    write_report,
)
from ldm_eval.reporting.tables import partner, write_table
from pipelines.records import (
    FidRecord,
    ModelRecord,
    RecognisabilityRecord,
    SamplingRecord,
)
from pipelines.results_log import Results

COLUMNS = ["model", "factor", "latent_shape", "unet_params", "inception_fid", "inception_ci_low", "inception_ci_high",
           "domain_fid", "domain_ci_low", "domain_ci_high", "precision", "recall", "density", "coverage", "recognised", "sec_per_image", "peak_mem_sample_mb",
           "memory_method", "n", "ddim_steps"]


def _ci(row: pd.Series, backend: str) -> str:
    low, high = row[f"{backend}_ci_low"], row[f"{backend}_ci_high"]
    return "" if pd.isna(low) else f"[{low:.1f}, {high:.1f}]"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader needs, intervals beside their FIDs (results.csv keeps them all)."""
    shown = pd.DataFrame({"model": table["model"], "f": table["factor"], "latent": table["latent_shape"]})
    for backend in ("inception", "domain"):
        shown[f"{backend} FID [95 %]"] = [f"{row[f'{backend}_fid']:.1f} {_ci(row, backend)}"
                                          if pd.notna(row[f"{backend}_fid"]) else "" for _, row in table.iterrows()]
    for pair in (("precision", "recall"), ("density", "coverage")):
        shown[" / ".join(pair)] = [f"{row[pair[0]]:.2f} / {row[pair[1]]:.2f}" if pd.notna(row[pair[0]]) else ""
                                   for _, row in table.iterrows()]
    shown["recognised"] = [f"{v:.0%}" if pd.notna(v) else "" for v in table["recognised"]]
    shown["s/image"] = table["sec_per_image"].round(4)
    shown["peak MB"] = table["peak_mem_sample_mb"].round(0)
    return shown


def tour_table(results: Results) -> pd.DataFrame:
    """One row per shipped model of a set, in factor order."""
    rows = []
    for m in results.of(ModelRecord):
        fids = {r.fid_backend: r for r in results.of(FidRecord, model=m.model)}
        inc, dom = fids.get("inception"), fids.get("domain")
        g = partner(results, SamplingRecord, model=m.model)
        rec = partner(results, RecognisabilityRecord, model=m.model)
        rows.append({
            "model": m.model, "factor": m.factor, "latent_shape": "x".join(map(str, m.latent_shape)),
            "unet_params": m.params.get("unet"),
            **{f"{name}_{key}": getattr(r, field) if r else None for name, r in (("inception", inc), ("domain", dom))
               for key, field in (("fid", "fid"), ("ci_low", "fid_ci_low"), ("ci_high", "fid_ci_high"))},
            **{key: getattr(inc, key) if inc else None for key in ("precision", "recall", "density", "coverage")},
            "recognised": rec.confident_share, "sec_per_image": g.sec_per_image,
            "peak_mem_sample_mb": g.peak_mem_sample_mb, "memory_method": g.memory_method,
            "n": inc.fid_samples if inc else None, "ddim_steps": g.ddim_steps,
        })
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("factor").reset_index(drop=True)


def finding(prefix: str, table: pd.DataFrame) -> str:
    """The set's finding in one sentence: the best model by Inception FID, and what its interval separates it from."""
    scored = table.dropna(subset=["inception_fid"])
    if scored.empty:
        return f"**{prefix}**: nothing measured yet."
    best = scored.loc[scored["inception_fid"].idxmin()]
    beaten = [row["model"] for _, row in scored.iterrows() if pd.notna(best["inception_ci_high"])
              and pd.notna(row["inception_ci_low"]) and best["inception_ci_high"] < row["inception_ci_low"]]
    pixel = scored[scored["factor"] == 1]
    speed = ""
    if len(pixel) and best["factor"] != 1:
        speed = (f", and it samples {pixel['sec_per_image'].iloc[0] / best['sec_per_image']:.1f}x faster than "
                 "pixel space")
    separated = (f"its 95 % interval lies below those of {', '.join(f'`{b}`' for b in beaten)}" if beaten
                 else "no interval separates it from the others at this N")
    return (f"**{prefix}**: `{best['model']}` (f = {best['factor']}) draws the best samples by Inception FID "
            f"({best['inception_fid']:.1f} {_ci(best, 'inception')}, N = {int(best['n'])}); {separated}{speed}.")


def _plot(prefix: str, table: pd.DataFrame, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for _, row in table.dropna(subset=["inception_fid"]).iterrows():
        one = table[table["model"] == row["model"]].rename(columns={
            "inception_fid": "fid", "inception_ci_low": "fid_ci_low", "inception_ci_high": "fid_ci_high"})
        kind = "kl" if row["factor"] > 1 else "pixel"
        ax.errorbar(one["sec_per_image"], one["fid"], yerr=error_bars(one), capsize=3,
                    label=series_label(kind, int(row["factor"])), **series_style(kind, int(row["factor"])))
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    n = int(table["n"].dropna().iloc[0]) if table["n"].notna().any() else 0
    ax.set(xlabel="seconds per image (lower is faster)", ylabel=f"Inception FID, N={n} (lower is better)",
           title=f"{prefix}: quality against sampling time; bars = 95 % CI")
    ax.legend(fontsize=8)
    return save_figure(fig, out / f"{prefix}-fid-vs-time.png")


def render_tour_report(out: Path, prefixes: list[str]) -> Path:
    """Write each set's results.csv, the plots, report.md and report.html of a tour; returns report.md."""
    findings, sections = [], []
    for prefix in prefixes:
        run_dir = out / prefix
        if not (run_dir / "results.jsonl").is_file():
            continue
        results = read_run(run_dir)
        table = tour_table(results)
        write_table(run_dir, table)
        findings.append(finding(prefix, table))
        env = results.environment
        where = f"{env.device_name} ({env.device}, {env.threads} threads)" if env else "unknown"
        plot = _plot(prefix, table, out / "plots")
        sections += [f"## {prefix}", "", md_table(display_table(table)), "",
                     f"Measured on {where}; memory: {table['memory_method'].iloc[0] if len(table) else ''}.", "",
                     f'<img src="plots/{plot.name}" width="520">', "",
                     "Samples (the first 64 of each model, the same seeds for every model):", ""]
        sections += ["| " + " | ".join(f"f = {f}" for f in table["factor"]) + " |",
                     "|" + "---|" * len(table),
                     "| " + " | ".join(f'<img src="{prefix}/grids/samples-{m}.png" width="170" title="{m}">'
                                      for m in table["model"]) + " |", ""]
    lines = ["# LDM Lab: the shipped models, measured", "", *[f"- {line}" for line in findings], "",
             "Every number here was measured by this run on this machine: N samples per model at one DDIM step "
             "count, Inception FID (clean-fid features) and domain FID (a small classifier trained on the data "
             "set) against as many held-out real images, each with a bootstrap 95 % interval; precision / recall "
             "(Kynkäänniemi et al. 2019) and density / coverage (Naeem et al. 2020), k = 3, on the Inception "
             "features, tell fidelity (precision, density) from diversity (recall, coverage); `recognised` is "
             "the share of samples a real-data classifier is sure of (Fashion-MNIST classes, UTKFace race x "
             "gender). Small N makes FID high and intervals wide: compare models only within a table.", "",
             *sections]
    return write_report(out, lines)


def tour_summary(out: Path, prefixes: list[str]) -> str:
    """What the command prints: each set's finding and table."""
    parts = []
    for prefix in prefixes:
        if (out / prefix / "results.jsonl").is_file():
            table = tour_table(read_run(out / prefix))
            parts += [finding(prefix, table), "", display_table(table).to_markdown(index=False), ""]
    return "\n".join(parts)
