"""Render a run folder's results as ``results.csv``, ``report.md`` and a self-contained ``report.html``.

Everything here is derived from ``results.jsonl`` (read through :func:`pipelines.results.read_results`):
``python -m ldm_eval report RUN_DIR`` re-renders it at any time without measuring anything again.
The helpers below the compression report (reading a run, saving figures, writing the page)
are shared with :mod:`ldm_eval.conditional_report`.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import markdown
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipelines.atomic import atomic_path, write_text_atomic  # noqa: E402
from pipelines.results import (  # noqa: E402
    AutoencoderRecord,
    ClassifierRecord,
    ConditioningRecord,
    EnvironmentRecord,
    ModelRecord,
    ProgressRecord,
    RecognisabilityRecord,
    Record,
    Results,
    TrainingRecord,
    read_results,
)

from .results import FILE_ORDER_DRAW, MIN_TRAIN_STEPS, Absent, tidy_table, write_table  # noqa: E402

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
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
         "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")


# --- the compression sweep's report ---------------------------------------------------------

def _label(kind: str, factor: int) -> str:
    return "pixel f=1" if factor == 1 else f"{kind.upper()} f={factor}"


# One colour and marker per factor, one line style per kind: a sweep draws up to 11 series (pixel, KL and
# VQ at five factors), more than a 10-colour cycle tells apart, and "KL f=2" and "VQ f=32" once shared one.
FACTOR_COLOURS = {1: "#000000", 2: "#1f77b4", 4: "#ff7f0e", 8: "#2ca02c", 16: "#d62728", 32: "#9467bd",
                  64: "#8c564b"}
FACTOR_MARKERS = {1: "o", 2: "s", 4: "^", 8: "D", 16: "v", 32: "P", 64: "X"}
KIND_LINES = {"pixel": "-", "kl": "-", "vq": "--"}


def series_style(kind: str, factor: int) -> dict[str, str]:
    """Matplotlib keywords of one (kind, factor) series: colour and marker by f, solid KL, dashed VQ."""
    return {"color": FACTOR_COLOURS.get(factor, "#7f7f7f"), "marker": FACTOR_MARKERS.get(factor, "*"),
            "linestyle": KIND_LINES.get(kind, ":")}


def make_plots(results: Results, table: pd.DataFrame, out: Path) -> dict[str, Path]:
    """FID along training (Fig. 6), quality vs sampling speed (Fig. 7), training speed and memory per factor."""
    plots: dict[str, Path] = {}
    progress = records_frame(results.of(ProgressRecord))
    if len(progress):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (kind, factor), g in progress.groupby(["kind", "factor"]):
            ax.plot(g["train_steps"], g["fid"], label=_label(kind, factor), **series_style(kind, factor))
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
            ax.errorbar(gg["samples_per_s"], gg["fid"], yerr=error_bars(gg), capsize=3, label=_label(kind, factor),
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
        plots["speed_memory"] = save_figure(fig, out / "speed_memory.png")
    return plots


def ranking_reading(table: pd.DataFrame, by: Sequence[str] = ("ddim_steps",)) -> list[str]:
    """Per step count (and ``by``), the FID ranking and whether each adjacent pair's 95 % intervals separate them.

    ``table`` needs the columns model (a name), fid, fid_ci_low, fid_ci_high and fid_samples.
    """
    lines = []
    for keys, group in table.groupby(list(by)):
        keys = keys if isinstance(keys, tuple) else (keys,)
        where = ", ".join(f"DDIM {k}" if col == "ddim_steps" else f"{k}" for col, k in zip(by, keys))
        ranked = group.sort_values("fid")
        if len(ranked) < 2:
            continue
        parts, doubtful = [], []
        rows = list(ranked.itertuples())
        for better, worse in zip(rows, rows[1:]):
            if pd.isna(better.fid_ci_high) or pd.isna(worse.fid_ci_low):
                sign, why = "?", "no interval"
            elif better.fid_ci_high < worse.fid_ci_low:
                sign, why = "<", ""
            else:
                sign, why = "~", "intervals overlap"
            parts.append(f"{better.model} {sign}")
            if why:
                doubtful.append(f"{better.model} vs {worse.model} ({why})")
        parts.append(str(rows[-1].model))
        line = f"- {where}: {' '.join(parts)} (by FID, N = {int(ranked['fid_samples'].min())})."
        if doubtful:
            line += (" **Not supported by the intervals:** " + "; ".join(doubtful)
                     + ". More samples (--n) would tell these apart, or show they are equal.")
        else:
            line += " Every step of this ranking is supported by the 95 % intervals."
        lines.append(line)
    return lines


def render_report(run_dir: Path) -> Path:
    """Write results.csv, plots, report.md and report.html of a compression sweep; returns report.md."""
    run_dir = Path(run_dir)
    results = read_run(run_dir)
    table = tidy_table(results)
    write_table(run_dir, table)
    plots = make_plots(results, table, run_dir / "plots")
    env, cfg = environment(results)
    ae = records_frame(results.of(AutoencoderRecord))
    lines = [f"# LDM Lab report: {run_dir.name}", ""]
    lines += [
        f"Preset `{cfg.get('preset')}` on `{cfg.get('dataset')}` at {cfg.get('resolution')} px; factors "
        f"{cfg.get('factors')}; autoencoders {cfg.get('kinds')}; UNets matched at about {cfg.get('param_budget')} "
        "parameters.",
        "",
        budget_sentence(cfg, results),
        "",
        measured_on(env, cfg),
        "",
        "FID backends: `inception` is the headline quality number: standard InceptionV3 features with clean-fid's "
        "'clean' resize, which rise clearly under blur and compression artefacts. FID is biased upward at small N, so "
        "read it with its 95 % interval, `fid_inf` (extrapolated to infinite N) and KID beside it, and compare only "
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
        md_table(table.drop(columns=["notes"])),
        "",
        "## Reading: which rankings the intervals support", "",
        "`<`: the 95 % bootstrap intervals separate the two; `~`: they overlap, so the order could flip with "
        "another draw of samples.", "",
        *ranking_reading(table.assign(model=[_label(k, f) for k, f in zip(table["kind"], table["factor"])]),
                         by=("fid_backend", "ddim_steps")),
        "",
    ]
    degenerate = table.loc[table["degenerate"], "factor"].unique().tolist()
    if degenerate:
        lines += [f"Factors {degenerate} leave a latent of 2x2 or smaller here: run and flagged as degenerate.", ""]
    lines += recognisability_lines(results)
    if len(ae):
        lines += ["## Autoencoders (cf. paper Tab. 8)", "", md_table(ae[AUTOENCODER_COLUMNS]), ""]
    lines += image_lines(plots)
    lines += grid_lines(run_dir, "samples-*.png", "## Samples")
    lines += ["## The paper's numbers (Rombach et al., CVPR 2022), for comparison", "",
              "First stages, trained on OpenImages, evaluated on ImageNet val (paper Tab. 8):", "",
              md_table(PAPER_AUTOENCODERS), ""] + [f"- {n}" for n in PAPER_NOTES] + [""]
    return write_report(run_dir, lines)


def summary_table(run_dir: Path) -> str:
    """The results table as printed at the end of a sweep."""
    return md_table(tidy_table(read_run(run_dir))[SUMMARY_COLUMNS])


def render_any_report(run_dir: Path) -> tuple[Path, str]:
    """Render whichever report the run is: conditioning, first-stage study or compression.

    Returns the report.md path and the summary table; a missing folder or one without results
    raises ValueError with a message meant for the command line.
    """
    from .conditional_report import conditional_summary, render_conditional_report  # these import this module
    from .evaluation_report import evaluation_summary, render_evaluation_report
    from .first_stage_report import first_stage_summary, render_first_stage_report

    results = read_run(run_dir)
    if results.of(ModelRecord):
        return render_evaluation_report(run_dir), evaluation_summary(run_dir)
    if results.of(ConditioningRecord):
        return render_conditional_report(run_dir), conditional_summary(run_dir)
    if results.of(AutoencoderRecord) and not results.of(TrainingRecord):
        return render_first_stage_report(run_dir), first_stage_summary(run_dir)
    return render_report(run_dir), summary_table(run_dir)


# --- shared by both reports ---------------------------------------------------------------

def read_run(run_dir: str | Path) -> Results:
    """The run's records; a clear ValueError (not an empty report) when there is nothing to render."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"Run folder '{run_dir}' does not exist.")
    results = read_results(run_dir)
    if not len(results):
        raise ValueError(f"'{run_dir}' has no results.jsonl with measurements: run a sweep there first.")
    return results


def records_frame(records: Sequence[Record]) -> pd.DataFrame:
    """Records of one type as a DataFrame, one column per field (for plots and plain listings)."""
    return pd.DataFrame([dataclasses.asdict(r) for r in records])


def environment(results: Results) -> tuple[EnvironmentRecord | Absent, dict[str, Any]]:
    """The run's environment record (an :class:`Absent` stand-in if it was lost) and its sweep config."""
    env = results.environment
    return (env, env.config) if env is not None else (Absent(EnvironmentRecord), {})


def measured_on(env: EnvironmentRecord | Absent, cfg: dict[str, Any]) -> str:
    """Where and with which library versions the run was measured, as one sentence."""
    return (f"Measured on {env.device_name} ({env.device}), started {env.started}; torch {env.torch}, diffusers "
            f"{env.diffusers}, accelerate {env.accelerate}, torchmetrics {env.torchmetrics}, clean-fid "
            f"{env.clean_fid}, Python {env.python}; seed {cfg.get('seed')}. Reference and evaluation images: "
            f"{cfg.get('reference_draw', FILE_ORDER_DRAW)}.")


def classifier_sentence(results: Results) -> str:
    """What the domain classifier learned and how well, so a rotation fallback is never silent."""
    clf = results.one(ClassifierRecord)
    if clf is None:
        return ""
    if clf.task == "rotation":
        return ("This data set has no labels, so the domain classifier fell back to predicting rotations (0/90/180/"
                "270 degrees, self-supervised): its features see shape and orientation rather than classes; its "
                f"rotation accuracy on {clf.n} real held-out images is {clf.accuracy_on_real:.3f} (chance 0.25).")
    chance = f" (chance {1 / clf.num_classes:.2f})" if clf.num_classes else ""
    return (f"The domain classifier was trained on the data set's labels; its accuracy on {clf.n} real held-out "
            f"images is {clf.accuracy_on_real:.3f}{chance}.")


def recognisability_lines(results: Results) -> list[str]:
    """A section: per model and DDIM steps, how many samples the real-data classifier is sure of."""
    found = results.of(RecognisabilityRecord, condition="none")
    if not found:
        return []
    rows = pd.DataFrame([{
        "model": _label(r.kind, r.factor), "ddim_steps": r.ddim_steps, "n": r.n,
        "confident_share": round(r.confident_share, 3), "real_confident_share": r.real_confident_share,
        "reconstructed_confident_share": r.reconstructed_confident_share,
        "min_class_share": round(min(r.class_shares.values()), 3),
        "max_class_share": round(max(r.class_shares.values()), 3), "meets_bar": r.meets_bar} for r in found])
    reading = ("The domain classifier (trained on the real training images) assigns each sample to one class; "
               f"`confident_share` is the share it assigns with probability >= {found[0].confidence:g}, "
               "`real_confident_share` the same share on as many real held-out images (the ceiling), "
               "`reconstructed_confident_share` on those images encoded and decoded by the model's autoencoder "
               "(a latent model's own ceiling: what its first stage keeps), and the class shares say whether every class is drawn. The bar: at least 80 % confident and every class "
               "between 5 % and 20 % of the samples.")
    return ["## Recognisability: would a person see the objects?", "", reading, "", md_table(rows), ""]


def budget_sentence(cfg: dict[str, Any], results: Results) -> str:
    """The training budget as set, beside what each model measurably got (steps and seconds).

    A time budget is checked between steps, so the time a model trained is reported next to
    the budget rather than assumed equal to it; models under ``MIN_TRAIN_STEPS`` are named.
    """
    unit = cfg.get("budget")
    got = [(f"{t.kind} f={t.factor}", t.train_steps, t.train_seconds) for t in results.of(TrainingRecord)]
    got_ae = [(f"{a.kind} f={a.factor}{' ' + a.variant if a.variant else ''}", a.ae_train_steps, a.ae_train_seconds)
              for a in results.of(AutoencoderRecord)]

    def measured(rows: list[tuple[str, int, float]]) -> str:
        return ", ".join(f"{name} {steps:,} steps in {seconds:.1f} s" for name, steps, seconds in rows) or "none yet"

    parts = []
    if got:
        parts.append(f"every denoiser {cfg.get('train_budget')} {unit} (measured: {measured(got)})")
    if got_ae:
        parts.append(f"every autoencoder {cfg.get('ae_budget')} {unit} (measured: {measured(got_ae)})")
    line = "Training budget, the same for every model of a kind: " + "; ".join(parts) + "."
    short = [name for name, steps, _ in got + got_ae if steps < MIN_TRAIN_STEPS]
    if short:
        line += (f" **Undertrained (under {MIN_TRAIN_STEPS} steps): {', '.join(short)}**: their numbers say little "
                 "about their design; give a larger budget.")
    return line


def md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4g") if len(df) else "(no rows yet)"


def save_figure(fig: Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG atomically (a report never links half a file) and free it."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def error_bars(df: pd.DataFrame, value: str = "fid", low: str = "fid_ci_low",
               high: str = "fid_ci_high") -> list[pd.Series] | None:
    """matplotlib's yerr (distances below and above) of an interval column pair; None unless every row has one."""
    if not df[low].notna().all():
        return None
    return [(df[value] - df[low]).clip(lower=0), (df[high] - df[value]).clip(lower=0)]


def image_lines(plots: dict[str, Path]) -> list[str]:
    return [line for name, path in plots.items() for line in (f"![{name}](plots/{path.name})", "")]


def grid_lines(run_dir: Path, pattern: str, heading: str, key: Callable[[Path], Any] | None = None) -> list[str]:
    """A section of the sample grids in ``run_dir/grids`` matching ``pattern`` (none: no section).

    ``key`` orders them (default: by file name).
    """
    grids = sorted((run_dir / "grids").glob(pattern), key=key)
    if not grids:
        return []
    return [heading, ""] + [f"**{g.stem}**\n\n![{g.stem}](grids/{g.name})\n" for g in grids]


def write_report(run_dir: Path, lines: list[str]) -> Path:
    """Write report.md and its self-contained report.html atomically; returns report.md."""
    md = "\n".join(lines)
    md_path = write_text_atomic(run_dir / "report.md", md)
    write_text_atomic(run_dir / "report.html", to_html(md, run_dir))
    return md_path


_LOCAL_IMAGE = re.compile(r'src="((?:plots|grids)/[^"]+)"')


def to_html(markdown_text: str, run_dir: Path) -> str:
    """A self-contained page: the Markdown rendered with tables, local images inlined as data URIs."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def inline(match: re.Match[str]) -> str:
        data = base64.b64encode((run_dir / html.unescape(match.group(1))).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = _LOCAL_IMAGE.sub(inline, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LDM Lab report: {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>")
