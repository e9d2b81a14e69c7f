"""Find the models the demo can show: the shipped zoo and any run folder a user trained into.

A model is any folder with a ``model_index.json`` that ``pipelines.load_pipeline`` opens.
Its facts (factor, data, training time) come from the ``training.json`` the trainer wrote
and its FID from the newest ``results.csv`` the harness wrote next to it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIRS = (REPO / "models", REPO / "runs")
DEFAULT_REPORT_DIRS = (REPO / "reports", REPO / "runs")


@dataclass
class ModelEntry:
    name: str
    path: Path
    factor: int
    kind: str
    dataset: str
    resolution: int
    facts: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        space = "pixel" if self.factor == 1 else f"{self.kind.upper()} f={self.factor}"
        return f"{self.name} ({space}, {self.dataset}, {self.resolution}px)"


def _entry(folder: Path, root: Path) -> ModelEntry | None:
    facts_file = folder / "training.json"
    if not facts_file.is_file():
        return None
    try:
        facts = json.loads(facts_file.read_text())
    except json.JSONDecodeError:
        return None
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    return ModelEntry(
        name=f"{root.name}/{name}", path=folder, factor=int(facts.get("factor", 1)), kind=str(facts.get("kind", "pixel")),
        dataset=str(facts.get("dataset", "?")), resolution=int(facts.get("resolution", 0)), facts=facts,
    )


def discover_models(dirs: tuple[Path, ...] | list[Path] = DEFAULT_MODEL_DIRS) -> list[ModelEntry]:
    """Every pipeline folder under ``dirs`` (sorted by data set, then factor)."""
    found: dict[Path, ModelEntry] = {}
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            continue
        for index in sorted(root.rglob("model_index.json")):
            if "checkpoints" in index.parts:
                continue
            entry = _entry(index.parent, root)
            if entry is not None:
                found.setdefault(index.parent.resolve(), entry)
    return sorted(found.values(), key=lambda e: (e.dataset, e.resolution, e.factor, e.kind, e.name))


def latest_results(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> tuple[pd.DataFrame | None, Path | None]:
    """The newest harness ``results.csv`` (and its folder), or (None, None)."""
    candidates = [p for d in dirs if Path(d).is_dir() for p in Path(d).rglob("results.csv")]
    if not candidates:
        return None, None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return pd.read_csv(newest), newest.parent


def model_fid(results: pd.DataFrame | None, entry: ModelEntry) -> str:
    """The model's FID from the latest report, labelled with backend, N and DDIM steps."""
    if results is None:
        return "no report yet"
    kind = "pixel" if entry.factor == 1 else entry.kind
    rows = results[(results["factor"] == entry.factor) & (results["kind"] == kind)
                   & (results["resolution"] == entry.resolution)]
    if not len(rows):
        return "not in the latest report"
    rows = rows.sort_values(["fid_backend", "ddim_steps"]).groupby("fid_backend").tail(1)
    return "; ".join(f"FID {r.fid:.1f} ({r.fid_backend}, N={int(r.fid_samples)}, DDIM {int(r.ddim_steps)})"
                     for r in rows.itertuples())
