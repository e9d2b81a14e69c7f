"""Find the models the demo can show: the shipped zoo and any run folder a user trained into.

A model is any folder with a ``model_index.json`` that ``pipelines.load_pipeline`` opens.
Its facts (factor, data, training time) come from the ``training.json`` the trainer wrote
and its FID from the newest ``results.csv`` the harness wrote next to it. Its condition
(none, class labels, text prompts) is read from the pipeline's own files, so the lists can
say which models take labels or prompts without loading any weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONDITION_WORDS = {"none": "unconditional", "class": "class labels", "text": "text prompts"}
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
    condition: str = "none"  # "none", "class" or "text"
    class_names: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """Conditional models name their condition; unconditional labels stay as they always were."""
        space = "pixel" if self.factor == 1 else f"{self.kind.upper()} f={self.factor}"
        extra = "" if self.condition == "none" else f", {CONDITION_WORDS.get(self.condition, self.condition)}"
        return f"{self.name} ({space}, {self.dataset}, {self.resolution}px{extra})"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _condition(folder: Path, facts: dict) -> tuple[str, tuple[str, ...]]:
    """The condition from ``model_index.json`` (what the loader will build), training.json as fallback."""
    encoder = _read_json(folder / "model_index.json").get("condition_encoder") or [None, None]
    kind = {"ClassEmbedder": "class", "CLIPTextModel": "text"}.get(str(encoder[-1]), str(facts.get("condition")))
    if kind not in CONDITION_WORDS:
        kind = "none"
    names = _read_json(folder / "condition_encoder" / "config.json").get("class_names", []) if kind == "class" else []
    return kind, tuple(str(n) for n in names)


def _entry(folder: Path, root: Path) -> ModelEntry | None:
    facts_file = folder / "training.json"
    if not facts_file.is_file():
        return None
    try:
        facts = json.loads(facts_file.read_text())
    except json.JSONDecodeError:
        return None
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    condition, class_names = _condition(folder, facts)
    return ModelEntry(
        name=f"{root.name}/{name}", path=folder, factor=int(facts.get("factor", 1)), kind=str(facts.get("kind", "pixel")),
        dataset=str(facts.get("dataset", "?")), resolution=int(facts.get("resolution", 0)), facts=facts,
        condition=condition, class_names=class_names,
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
    # unconditional first within a factor, so defaults and old listings keep their order
    return sorted(found.values(),
                  key=lambda e: (e.dataset, e.resolution, e.factor, e.kind, e.condition != "none", e.name))


def sweep_results(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> list[tuple[pd.DataFrame, Path]]:
    """Every compression-sweep ``results.csv`` (with its folder), newest first."""
    candidates = [p for d in dirs if Path(d).is_dir() for p in Path(d).rglob("results.csv")]
    # the conditioning sweep's tables have another shape; conditional zoo models carry metrics.json
    candidates = [p for p in candidates if "condition" not in p.open().readline().split(",")]
    return [(pd.read_csv(p), p.parent) for p in sorted(candidates, key=lambda p: p.stat().st_mtime, reverse=True)]


def latest_results(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> tuple[pd.DataFrame | None, Path | None]:
    """The newest harness ``results.csv`` (and its folder), or (None, None)."""
    tables = sweep_results(dirs)
    return tables[0] if tables else (None, None)


def _own_metrics(entry: ModelEntry) -> str | None:
    """Metrics exported with a zoo model (``metrics.json``): exactly this model's, from its own run."""
    rows = _read_json(entry.path / "metrics.json").get("rows")
    if not rows:
        return None
    parts = []
    for r in rows:
        acc = f"accuracy {r['accuracy']:.2f}, " if r.get("accuracy") is not None else ""
        g = f", g={r['guidance']:g}" if r.get("guidance") is not None else ""
        parts.append(f"{acc}FID {r['fid']:.1f} ({r['fid_backend']}, N={int(r['fid_samples'])}, "
                     f"DDIM {int(r['ddim_steps'])}{g})")
    return "; ".join(parts)


def model_fid(results: pd.DataFrame | list[pd.DataFrame] | None, entry: ModelEntry) -> str:
    """The model's FID (and conditioning accuracy), labelled with backend, N, DDIM steps, guidance.

    A zoo model's own exported metrics come first; otherwise the newest compression report
    (of those given, newest first) that measured this factor at this resolution.
    """
    own = _own_metrics(entry)
    if own is not None:
        return own
    tables = [] if results is None else [results] if isinstance(results, pd.DataFrame) else list(results)
    if not tables:
        return "no report yet"
    if entry.condition != "none":
        return "not in the compression reports (they measure unconditional models)"
    kind = "pixel" if entry.factor == 1 else entry.kind
    for table in tables:
        rows = table[(table["factor"] == entry.factor) & (table["kind"] == kind)
                     & (table["resolution"] == entry.resolution)]
        if len(rows):
            break
    else:
        return "not in the latest reports"
    rows = rows.sort_values(["fid_backend", "ddim_steps"]).groupby("fid_backend").tail(1)
    return "; ".join(f"FID {r.fid:.1f} ({r.fid_backend}, N={int(r.fid_samples)}, DDIM {int(r.ddim_steps)})"
                     for r in rows.itertuples())
