"""Render a run folder's results as ``results.csv``, ``report.md`` and a self-contained ``report.html``.

Everything here is derived from ``results.jsonl``: ``python -m ldm_eval report RUN_DIR``
re-renders it at any time without measuring anything again.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .results import ResultsLog, tidy_table, write_table  # noqa: E402

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


def _label(kind: str, factor: int) -> str:
    return "pixel f=1" if factor == 1 else f"{kind.upper()} f={factor}"


def _fig_to_png(fig, path: Path) -> Path:
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def make_plots(records: list[dict], table: pd.DataFrame, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    progress = pd.DataFrame([r for r in records if r["record"] == "progress"])
    if len(progress):
        fig, ax = plt.subplots(figsize=(6, 4))
        for (kind, factor), g in progress.groupby(["kind", "factor"]):
            ax.plot(g["train_steps"], g["fid"], marker="o", label=_label(kind, factor))
        n = int(progress["fid_samples"].iloc[0])
        ax.set(xlabel="training steps", ylabel=f"FID (domain features, N={n})", title="FID along training (cf. paper Fig. 6)")
        ax.legend(fontsize=8)
        plots["fid_vs_steps"] = _fig_to_png(fig, out / "fid_vs_steps.png")
    for backend, g in table.groupby("fid_backend"):
        if g["samples_per_s"].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for (kind, factor), gg in g.groupby(["kind", "factor"]):
            gg = gg.sort_values("ddim_steps")
            ax.plot(gg["samples_per_s"], gg["fid"], marker="o", label=_label(kind, factor))
            for _, row in gg.iterrows():
                ax.annotate(str(int(row["ddim_steps"])), (row["samples_per_s"], row["fid"]), fontsize=7)
        ax.set_xscale("log")
        n = int(g["fid_samples"].iloc[0])
        ax.set(xlabel="sampling throughput (samples/s, log)", ylabel=f"FID ({backend}, N={n})",
               title="Quality vs speed; labels = DDIM steps (cf. Fig. 7)")
        ax.legend(fontsize=8)
        plots[f"fid_vs_speed_{backend}"] = _fig_to_png(fig, out / f"fid_vs_speed_{backend}.png")
    train = pd.DataFrame([r for r in records if r["record"] == "train"])
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
        plots["speed_memory"] = _fig_to_png(fig, out / "speed_memory.png")
    return plots


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".4g") if len(df) else "(no rows yet)"


def render_report(run_dir: Path) -> Path:
    """Write results.csv, plots, report.md and report.html; returns report.md."""
    run_dir = Path(run_dir)
    log = ResultsLog(run_dir)
    records = log.records()
    if not records:
        raise FileNotFoundError(f"'{run_dir}' has no results.jsonl with measurements: run a sweep there first.")
    table = tidy_table(records)
    write_table(run_dir, table)
    plots = make_plots(records, table, run_dir / "plots")
    env = next((r for r in records if r["record"] == "environment"), {})
    cfg = env.get("config", {})
    ae = pd.DataFrame([r for r in records if r["record"] == "autoencoder"])
    lines = [f"# LDM Lab report: {Path(run_dir).name}", ""]
    lines += [
        f"Preset `{cfg.get('preset')}` on `{cfg.get('dataset')}` at {cfg.get('resolution')} px; factors "
        f"{cfg.get('factors')}; autoencoders {cfg.get('kinds')}. Every factor got the same training budget: "
        f"{cfg.get('train_budget')} {cfg.get('budget')} for the denoiser ({cfg.get('ae_budget')} {cfg.get('budget')} "
        f"for each autoencoder), UNets matched at about {cfg.get('param_budget')} parameters.",
        "",
        f"Measured on {env.get('device_name')} ({env.get('device')}), started {env.get('started')}; torch "
        f"{env.get('torch')}, diffusers {env.get('diffusers')}, accelerate {env.get('accelerate')}, torchmetrics "
        f"{env.get('torchmetrics')}, clean-fid {env.get('clean_fid')}, Python {env.get('python')}; seed {cfg.get('seed')}.",
        "",
        "FID backends: `inception` = standard InceptionV3 features, clean-fid 'clean' resize (the comparable "
        "number, but small N here: FID is biased upward at small N, compare only at equal N and read KID beside "
        "it); `domain` = a small classifier trained on this data set (cheap, so larger N). Reference images are the "
        "held-out split. Sampling uses DDIM (eta 0); throughput is measured after a warm-up.",
        "",
        "## Results",
        "",
        *[f"- `{b}` FID/KID: N={int(g['fid_samples'].iloc[0])} generated images against as many held-out real images."
          for b, g in table.groupby("fid_backend")],
        "",
        _md_table(table.drop(columns=["notes"]).assign(latent_shape=table["latent_shape"])),
        "",
    ]
    degenerate = table.loc[table["degenerate"], "factor"].unique().tolist()
    if degenerate:
        lines += [f"Factors {degenerate} leave a latent of 2x2 or smaller here: run and flagged as degenerate.", ""]
    if len(ae):
        shown = ae[["kind", "factor", "latent_shape", "ae_params", "psnr", "ssim", "recon_samples", "rfid", "rfid_samples"]]
        lines += ["## Autoencoders (cf. paper Tab. 8)", "", _md_table(shown), ""]
    for name, path in plots.items():
        lines += [f"![{name}](plots/{path.name})", ""]
    grids = sorted((run_dir / "grids").glob("samples-*.png")) if (run_dir / "grids").is_dir() else []
    if grids:
        lines += ["## Samples", ""] + [f"**{g.stem}**\n\n![{g.stem}](grids/{g.name})\n" for g in grids]
    lines += ["## The paper's numbers (Rombach et al., CVPR 2022), for comparison", "",
              "First stages, trained on OpenImages, evaluated on ImageNet val (paper Tab. 8):", "",
              _md_table(PAPER_AUTOENCODERS), ""] + [f"- {n}" for n in PAPER_NOTES] + [""]
    md = "\n".join(lines)
    md_path = run_dir / "report.md"
    _write_atomic(md_path, md)
    _write_atomic(run_dir / "report.html", _html(md, run_dir))
    return md_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _html(markdown_text: str, run_dir: Path) -> str:
    """A self-contained page: images inlined as data URIs, tables as HTML."""
    body = []
    for block in markdown_text.split("\n\n"):
        block = block.strip()
        if not block:
            continue
        if block.startswith("#"):
            level = len(block) - len(block.lstrip("#"))
            body.append(f"<h{level}>{html.escape(block.lstrip('#').strip())}</h{level}>")
        elif block.startswith("!["):
            src = block[block.index("(") + 1 : block.rindex(")")]
            data = base64.b64encode((run_dir / src).read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(src)}" src="data:image/png;base64,{data}"></p>')
        elif block.startswith("|"):
            rows = [r.strip().strip("|").split("|") for r in block.splitlines() if not set(r) <= set("|-: ")]
            head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in rows[0])
            cells = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif block.startswith("- "):
            items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in block.splitlines())
            body.append(f"<ul>{items}</ul>")
        else:
            text = html.escape(block).replace("**", "")
            body.append(f"<p>{text}</p>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>LDM Lab report</title><style>{style}</style></head><body>{''.join(body)}</body></html>"


def summary_table(run_dir: Path) -> str:
    """The results table as printed at the end of a sweep."""
    table = tidy_table(ResultsLog(Path(run_dir)).records())
    cols = ["factor", "kind", "latent_shape", "ddim_steps", "fid_backend", "fid_samples", "fid", "kid",
            "train_images_per_s", "samples_per_s", "psnr", "rfid"]
    return _md_table(table[cols])


