"""What every report shares: reading a run, its tables and sentences, figures, and writing report.md and report.html."""
from __future__ import annotations

import base64
import dataclasses
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.figure import Figure

from ldm_eval.reporting.tables import (
    FILE_ORDER_DRAW,
    MIN_TRAIN_STEPS,
    Absent,
    write_table,
)
from pipelines.atomic import atomic_path, write_text_atomic
from pipelines.records import (
    AutoencoderRecord,
    ClassifierRecord,
    EnvironmentRecord,
    RecognisabilityRecord,
    Record,
    TrainingRecord,
)
from pipelines.results_log import Results, read_results

STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
         "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")


# --- the compression sweep's report ---------------------------------------------------------

def series_label(kind: str, factor: int) -> str:
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
        "model": series_label(r.kind, r.factor), "ddim_steps": r.ddim_steps, "n": r.n,
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


# a PNG inside the run folder: plots/, grids/, or a sub-run's grids (the tour's SET/grids/)
_LOCAL_IMAGE = re.compile(r'src="((?:(?!\.\./)[\w.-]+/)*(?:plots|grids)/[^"/]+\.png)"')


def to_html(markdown_text: str, run_dir: Path) -> str:
    """A self-contained page: the Markdown rendered with tables, local images inlined as data URIs."""
    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def inline(match: re.Match[str]) -> str:
        data = base64.b64encode((run_dir / html.unescape(match.group(1))).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'

    body = _LOCAL_IMAGE.sub(inline, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>LDM Lab report: {html.escape(run_dir.name)}"
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>")


@dataclass
class OpenedRun:
    """What every report starts from: the run's records, its table (already written as results.csv) and settings."""

    run_dir: Path
    results: Results
    table: pd.DataFrame
    env: EnvironmentRecord | Absent
    cfg: dict[str, Any]


def open_report(run_dir: str | Path, table_of: Callable[[Results], pd.DataFrame]) -> OpenedRun:
    """Read a run, write its table as ``results.csv`` and read its settings: the opening of every report kind."""
    run_dir = Path(run_dir)
    results = read_run(run_dir)
    table = table_of(results)
    write_table(run_dir, table)
    env, cfg = environment(results)
    return OpenedRun(run_dir, results, table, env, cfg)


def data_label(spec: object) -> str:
    """A data set as a report names it: a registered name as it is, a folder by its path from the checkout's
    parent (``../shared/data/utkface``) when it lies there, else by its own name -- never a machine's path."""
    text = str(spec)
    if not text.startswith("/"):
        return text
    parts = Path(text).parts
    if "shared" in parts:
        return "../" + "/".join(parts[parts.index("shared"):])
    return Path(text).name
