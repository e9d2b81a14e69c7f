"""What the demo draws from results: the Compare grid and chart, readable tables, the report picker.

Pure functions of the service's answers (no Gradio, no models), so tests can read exactly
what a person will see. The Compare grid is HTML because a gallery crops captions to one
line and shows them only on hover; here every figure sits under its image.
"""
from __future__ import annotations

import base64
import html
import io
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from pipelines.images import unit_to_uint8

from .service import ComparedModel
from .zoo import ModelEntry, ShownFid

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DATASET_NAMES = {"fashion-mnist": "Fashion-MNIST"}
GRID_CSS = """
<style>
.ldm-grid-group h3 {margin: 0.6em 0 0.3em 0;}
.ldm-grid {display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px;}
.ldm-cell {margin: 0; border: 1px solid #d0d0d0; border-radius: 6px; padding: 6px; text-align: center;}
.ldm-cell .f {font-weight: 700; font-size: 1.05em;}
.ldm-cell .name {font-size: 0.8em; color: #666; overflow-wrap: anywhere;}
.ldm-cell img {width: 128px; height: 128px; image-rendering: pixelated; margin: 4px auto; display: block;}
.ldm-cell figcaption {font-size: 0.85em; line-height: 1.35; overflow-wrap: anywhere; white-space: normal;}
</style>
"""


def dataset_title(entry: ModelEntry) -> str:
    """'Fashion-MNIST, 32 px' or 'utkface, 64 px': how the grid and chart group models."""
    return f"{DATASET_NAMES.get(entry.dataset, entry.data_name)}, {entry.resolution} px"


def space_text(entry: ModelEntry) -> str:
    """'f = 1 · pixel' or 'f = 4 · KL': the grid's column heading."""
    return f"f = {entry.factor} · {entry.kind_text}"


@dataclass
class GridCell:
    """One figure of a grid: a heading, the model's folder name, a picture and the lines under it."""

    heading: str
    name: str
    image: np.ndarray  # (H, W, C) uint8
    lines: list[str]


def _data_uri(array: np.ndarray, size: int = 128) -> str:
    picture = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    picture = picture.resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def grid_html(groups: dict[str, list[GridCell]]) -> str:
    """Titled groups of figures, every caption line visible under its picture (nothing cut, no hovering)."""
    parts = [GRID_CSS]
    for title, cells in groups.items():
        parts.append(f'<div class="ldm-grid-group"><h3>{html.escape(title)}</h3><div class="ldm-grid">')
        for cell in cells:
            caption = "<br>".join(html.escape(line) for line in cell.lines)
            parts.append(f'<figure class="ldm-cell"><div class="f">{html.escape(cell.heading)}</div>'
                         f'<div class="name">{html.escape(cell.name)}</div>'
                         f'<img alt="{html.escape(cell.name)}" src="{_data_uri(cell.image)}">'
                         f"<figcaption>{caption}</figcaption></figure>")
        parts.append("</div></div>")
    return "".join(parts)


def _groups(rows: Sequence[ComparedModel]) -> dict[str, list[ComparedModel]]:
    groups: dict[str, list[ComparedModel]] = {}
    # the model lists' order: by data set, factor and kind, unconditional first within a factor
    for row in sorted(rows, key=lambda r: (r.entry.dataset, r.entry.resolution, r.entry.factor, r.entry.kind,
                                           r.entry.condition != "none", r.entry.name)):
        groups.setdefault(dataset_title(row.entry), []).append(row)
    return groups


def headline_fid(row: ComparedModel) -> ShownFid | None:
    """The FID the chart shows: the first backend's, at its largest DDIM step count."""
    if not row.fids:
        return None
    backend = row.fids[0].backend
    return max((f for f in row.fids if f.backend == backend), key=lambda f: f.ddim_steps)


def cell_lines(row: ComparedModel) -> list[str]:
    """The figures under one image: time, throughput, memory, each FID with what produced it."""
    t = row.timing
    memory = f"{t.peak_memory_mb:.0f} MB peak" if t.peak_memory_mb is not None else "memory not measured"
    lines = [f"{t.wall_seconds:.2f} s · {t.samples_per_s:.3g} samples/s", memory]
    if row.condition.caption != "unconditional":
        lines.append(row.condition.caption)
    return lines + ([f.text() for f in row.fids] or [row.fid])


def compare_grid_html(rows: Sequence[ComparedModel]) -> str:
    """One column per model, grouped by data set: heading above the image, every figure below it."""
    return grid_html({title: [GridCell(space_text(r.entry), r.entry.short_name, unit_to_uint8(r.timed.images[0]),
                                       cell_lines(r))
                              for r in group] for title, group in _groups(rows).items()})


def reconstruction_grid_html(rows: list[dict]) -> str:
    """The input, then each autoencoder's reconstruction with its kind, f, latent, PSNR and SSIM, by data set."""
    groups: dict[str, list[GridCell]] = {}
    for row in rows:
        entry = row["entry"]
        cells = groups.setdefault(dataset_title(entry), [])
        if not cells:  # each group's own input: grey models see the picture in grey
            cells.append(GridCell("input", f"{entry.resolution} px, {'colour' if entry.channels == 3 else 'grey'}",
                                  row["input"], ["what the models are given"]))
        cells.append(GridCell(f"f = {row['factor']} · {row['kind'].upper()}", entry.short_name, row["reconstruction"],
                              [f"PSNR {row['psnr']:.1f} dB · SSIM {row['ssim']:.3f}",
                               f"latent {'x'.join(map(str, row['latent_shape']))} "
                               f"({row['compression_ratio']:.0f}x fewer values)"]))
    return grid_html(groups)


def compare_chart(rows: Sequence[ComparedModel]) -> Figure:
    """Seconds per image and FID for every compared model, as bars grouped by data set: the tradeoff, seen."""
    import matplotlib

    matplotlib.use("Agg")  # a server has no display; imported here, on first use, to keep start-up short
    import matplotlib.pyplot as plt

    groups = _groups(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    labels, seconds, fids, colours, backends, memory = [], [], [], [], [], []
    palette = plt.get_cmap("tab10")
    for i, (title, group) in enumerate(groups.items()):
        for row in group:
            labels.append(f"{space_text(row.entry).replace(' · ', ' ')}\n{title.split(',')[0]}")
            seconds.append(row.timing.wall_seconds / max(1, len(row.timed.images)))
            fid = headline_fid(row)
            fids.append(np.nan if fid is None else fid.fid)
            backends.append("" if fid is None else f"{fid.backend}, N={fid.n}")
            memory.append(np.nan if row.timing.peak_memory_mb is None else row.timing.peak_memory_mb)
            colours.append(palette(i % 10))
    x = np.arange(len(labels))
    axes[0].bar(x, seconds, color=colours)
    axes[0].set(ylabel="seconds per image (lower is faster)", title="Sampling time")
    axes[1].bar(x, np.nan_to_num(fids), color=colours)
    for xi, value, backend in zip(x, fids, backends):
        axes[1].annotate("no FID" if np.isnan(value) else f"{value:.1f}\n{backend}", (xi, 0 if np.isnan(value)
                         else value), ha="center", va="bottom", fontsize=7)
    axes[1].set(ylabel="FID (lower is better)", title="Quality (FID of the model's own report)")
    axes[1].set_ylim(top=max([f for f in fids if not np.isnan(f)], default=1.0) * 1.2)  # room for the labels
    _memory_panel(axes[2], x, memory, colours, rows)
    for ax in axes:
        ax.set_xticks(x, labels, fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # Gradio draws it; pyplot must not keep every figure of a long-running server
    return fig


def _memory_panel(ax, x: np.ndarray, memory: list[float], colours: list, rows: Sequence[ComparedModel]) -> None:
    """Peak sampling memory per model from zero, the way it was measured written beside it."""
    ax.bar(x, np.nan_to_num(memory), color=colours)
    for xi, value in zip(x, memory):
        if np.isnan(value):
            ax.annotate("not measured", (xi, 0), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(bottom=0)
    methods = sorted({r.timing.memory_method for r in rows})
    ax.set(ylabel="peak sampling memory (MB)", title="Memory (lower is smaller)")
    ax.set_xlabel(textwrap.fill("measured as: " + "; ".join(methods), 70), fontsize=7)


def readable(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Floats to ``digits`` significant digits (2.864633179502356 -> 2.865), for tables people read."""
    out = df.copy()
    for column in out.columns:
        if pd.api.types.is_float_dtype(out[column]):
            out[column] = [v if pd.isna(v) else float(f"{v:.{digits}g}") for v in out[column]]
    return out
