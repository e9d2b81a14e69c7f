"""Find the models the demo can show: the shipped zoo and any run folder a user trained into.

A model is any folder with a ``model_index.json`` that ``pipelines.loading.load_pipeline`` opens.
Its facts (factor, data, training time) come from the ``training.json`` the trainer wrote
and its FID from the model's own ``metrics.json`` or the newest harness run that measured
it, read through ``pipelines.results_log.read_results`` like every other consumer. Its condition
(none, class labels, text prompts) is read from the pipeline's own files, so the lists can
say which models take labels or prompts without loading any weights.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.pipeline import LatentDiffusionPipeline
from pipelines.records import ConditioningRecord, FidRecord, RecordError, TrainingRecord
from pipelines.results_log import RESULTS, Results, read_results
from pipelines.training_summary import TrainingSummary

log = logging.getLogger(__name__)

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
    facts: TrainingSummary | None = None  # the training.json of the model folder
    condition: str = "none"  # "none", "class" or "text"
    class_names: tuple[str, ...] = ()
    first_stage_only: bool = False  # an autoencoder folder (the first-stage study's), not a pipeline
    channels: int = 3  # image channels it draws or reads: 1 grey, 3 colour

    @property
    def short_name(self) -> str:
        """The folder's own name, for captions (the full name stays in the pickers)."""
        return self.path.name if self.path.name else self.name

    @property
    def kind_text(self) -> str:
        """'pixel', 'KL' or 'VQ', as captions and tables print it."""
        return "pixel" if self.factor == 1 and not self.first_stage_only else self.kind.upper()

    @property
    def data_name(self) -> str:
        """The data set as people name it: a folder by its own name, not by where it sits on the trainer's disk."""
        return self.dataset if self.dataset in ("fashion-mnist", "user model") else Path(self.dataset).name

    @property
    def label(self) -> str:
        """Conditional models name their condition; unconditional labels stay as they always were."""
        if self.first_stage_only:
            return f"{self.name} ({self.kind.upper()} f={self.factor} autoencoder, {self.data_name}, {self.resolution}px)"
        space = "pixel" if self.factor == 1 else f"{self.kind.upper()} f={self.factor}"
        extra = "" if self.condition == "none" else f", {CONDITION_WORDS.get(self.condition, self.condition)}"
        return f"{self.name} ({space}, {self.data_name}, {self.resolution}px{extra})"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _condition(folder: Path, facts: TrainingSummary) -> tuple[str, tuple[str, ...]]:
    """The condition from ``model_index.json`` (what the loader will build), training.json as fallback."""
    encoder = _read_json(folder / "model_index.json").get("condition_encoder") or [None, None]
    kind = {"ClassEmbedder": "class", "CLIPTextModel": "text"}.get(str(encoder[-1]), facts.condition)
    if kind not in CONDITION_WORDS:
        kind = "none"
    names = _read_json(folder / "condition_encoder" / "config.json").get("class_names", []) if kind == "class" else []
    return kind, tuple(str(n) for n in names)


AUTOENCODER_CLASSES = ("AutoencoderKL", "VQModel")


def _channels(folder: Path, first_stage_only: bool) -> int:
    """Image channels from the model's configs (no weights loaded): what the decoder (or pixel UNet) puts out."""
    configs = [folder / "config.json"] if first_stage_only else [folder / "vae" / "config.json",
                                                                 folder / "unet" / "config.json"]
    for config in configs:
        channels = _read_json(config).get("out_channels")
        if isinstance(channels, int) and channels > 0:
            return channels
    return 3


def _entry(folder: Path, root: Path, first_stage_only: bool = False) -> ModelEntry | None:
    if not (folder / "training.json").is_file():
        return None
    try:
        facts = TrainingSummary.load(folder / "training.json")
    except RecordError as err:
        log.warning("Skipping %s: %s", folder, err)
        return None
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    condition, class_names = ("none", ()) if first_stage_only else _condition(folder, facts)
    return ModelEntry(
        name=f"{root.name}/{name}", path=folder, factor=facts.factor, kind=facts.kind, dataset=facts.dataset,
        resolution=facts.resolution, facts=facts, condition=condition, class_names=class_names,
        first_stage_only=first_stage_only, channels=_channels(folder, first_stage_only),
    )


def user_model_entry(source: str, pipe: LatentDiffusionPipeline) -> ModelEntry:
    """A model the user named (``app.py --models FOLDER_OR_HUB_ID``): what its loaded pipeline says of itself.

    Any diffusers layout the core loads (ours, ``DDPMPipeline``, ``LDMPipeline``) has no
    training.json, so factor, kind and resolution come from the pipeline itself.
    """
    path = Path(source)
    own = _entry(path, path.parent) if (path / "training.json").is_file() else None
    if own is not None:
        own.name = f"user/{path.name}"
        return own
    kind = "pixel" if pipe.factor == 1 else pipe.first_stage.kind
    name = path.name if path.exists() else str(source)
    return ModelEntry(name=f"user/{name}", path=path, factor=pipe.factor, kind=kind, dataset="user model",
                      resolution=pipe.resolution, condition=pipe.condition, class_names=tuple(pipe.class_names),
                      channels=pipe.image_channels)


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


def discover_autoencoders(dirs: tuple[Path, ...] | list[Path] = DEFAULT_MODEL_DIRS) -> list[ModelEntry]:
    """Every stand-alone autoencoder folder under ``dirs`` (a trained first stage with its ``training.json``).

    A pipeline's own ``vae`` subfolder is not listed here: the pipeline carries it.
    """
    found: dict[Path, ModelEntry] = {}
    for root in map(Path, dirs):
        if not root.is_dir():
            continue
        for config in sorted(root.rglob("config.json")):
            folder = config.parent
            if "checkpoints" in config.parts or not (folder / "training.json").is_file():
                continue
            if _read_json(config).get("_class_name") not in AUTOENCODER_CLASSES:
                continue
            entry = _entry(folder, root, first_stage_only=True)
            if entry is not None:
                found.setdefault(folder.resolve(), entry)
    return sorted(found.values(), key=lambda e: (e.dataset, e.resolution, e.factor, e.kind, e.name))


def sweep_results(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> list[tuple[Results, Path]]:
    """Every compression-sweep run (its records and its folder), newest first.

    A run is a folder holding a ``results.jsonl`` with FID records. Conditioning sweeps (those
    with conditioning records) measure other models and are left out: conditional zoo models
    carry their own ``metrics.json``. A run whose file cannot be read is skipped with a
    warning, so one broken folder under ``runs/`` does not stop the demo.
    """
    return _sweeps(_readable_runs(dirs))


def _sweeps(runs: list[tuple[Results, Path]]) -> list[tuple[Results, Path]]:
    """The compression runs among ``runs``, newest first."""
    sweeps = [(results, folder) for results, folder in runs
              if results.of(FidRecord) and not results.of(ConditioningRecord)]
    # newest first by the run's own start time (a fresh clone gives every file the same age), then by file age
    return sorted(sweeps, key=lambda run: (run[0].environment.started if run[0].environment else "",
                                           (run[1] / RESULTS).stat().st_mtime), reverse=True)


def _readable_runs(dirs: tuple[Path, ...] | list[Path]) -> list[tuple[Results, Path]]:
    """Every run folder (one with a results log) under ``dirs``; an unreadable one is skipped with a warning."""
    files = dict.fromkeys(p.resolve() for d in dirs if Path(d).is_dir() for p in Path(d).rglob(RESULTS)
                          if "checkpoints" not in p.parts)
    runs = []
    for path in files:
        try:
            runs.append((read_results(path.parent), path.parent))
        except RecordError as err:
            log.warning("Skipping %s: %s", path, err)
    return runs


def _newest_trained(sweeps: list[tuple[Results, Path]]) -> tuple[Results, Path] | None:
    """The newest sweep that trained its models (an evaluation of saved models is not one)."""
    return next(((results, folder) for results, folder in sweeps if results.of(TrainingRecord)), None)


def result_folders(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> tuple[dict[str, Path], Path | None]:
    """What the Results tab offers, from one read of the results logs: every run or report folder by the
    name people see (its path from the folder above the one searched: ``reports/quick``,
    ``runs/zoo-cpu/fmnist32``), and the newest compression sweep's folder, which it opens on."""
    found: dict[str, Path] = {}
    every = []
    for root in map(Path, dirs):
        runs = _readable_runs([root])
        every += runs
        for _, folder in runs:
            found.setdefault(folder.relative_to(root.resolve().parent).as_posix(), folder)
    newest = _newest_trained(_sweeps(every))
    return dict(sorted(found.items())), None if newest is None else newest[1]


def results_table(results: Results, folder: Path) -> pd.DataFrame:
    """The run's table for people: the ``results.csv`` its report step wrote, else its FID records."""
    csv = folder / "results.csv"
    if csv.is_file():
        return pd.read_csv(csv)
    return pd.DataFrame([dataclasses.asdict(r) for r in results.of(FidRecord)])


def latest_results(dirs: tuple[Path, ...] | list[Path] = DEFAULT_REPORT_DIRS) -> tuple[pd.DataFrame | None, Path | None]:
    """The newest compression sweep's table (and its folder), or (None, None).

    A sweep trained its models (it has training records); an evaluation of saved models is not one.
    """
    newest = _newest_trained(sweep_results(dirs))
    if newest is None:
        return None, None
    results, folder = newest
    return results_table(results, folder), folder


@dataclass
class ShownFid:
    """One FID the demo shows for a model, with what produced it."""

    fid: float
    backend: str
    n: int
    ddim_steps: int
    ci: tuple[float, float] | None = None
    guidance: float | None = None
    accuracy: float | None = None

    def text(self) -> str:
        acc = f"accuracy {self.accuracy:.2f}, " if self.accuracy is not None else ""
        ci = f" [95 % CI {self.ci[0]:.1f}-{self.ci[1]:.1f}]" if self.ci else ""
        g = f", g={self.guidance:g}" if self.guidance is not None else ""
        return f"{acc}FID {self.fid:.1f}{ci} ({self.backend}, N={self.n}, DDIM {self.ddim_steps}{g})"


def _own_metrics(entry: ModelEntry, exported: dict | None = None) -> list[ShownFid] | None:
    """Metrics exported with a zoo model (``metrics.json``, or its contents when already read): exactly this
    model's, from its own run."""
    rows = (_read_json(entry.path / "metrics.json") if exported is None else exported).get("rows")
    if not rows:
        return None
    return [ShownFid(fid=float(r["fid"]), backend=str(r["fid_backend"]), n=int(r["fid_samples"]),
                     ddim_steps=int(r["ddim_steps"]), guidance=r.get("guidance"), accuracy=r.get("accuracy"),
                     ci=(r["fid_ci_low"], r["fid_ci_high"]) if r.get("fid_ci_low") is not None
                     and r.get("fid_ci_high") is not None else None)
            for r in rows]


def best_measured(entries: list[ModelEntry]) -> ModelEntry | None:
    """The entry with the lowest FID among those its run measured alike, or None when there is no such pair.

    Only models exported from the same training run (``metrics.json``'s ``run``: one reference, one judge) are
    compared, the run holding most of ``entries``, on a measurement every one of them has: Inception features
    before domain ones, the most samples, the fewest DDIM steps.
    """
    by_run: dict[str, list[tuple[ModelEntry, dict]]] = {}
    for entry in entries:
        exported = _read_json(entry.path / "metrics.json")  # read once: its run and its rows
        run = exported.get("run")
        scores = {(f.backend != "inception", -f.n, f.ddim_steps): f.fid for f in _own_metrics(entry, exported) or []
                  if f.guidance in (None, 1.0)}
        if run and scores:
            by_run.setdefault(str(run), []).append((entry, scores))
    group = max(by_run.values(), key=len, default=[])
    shared = set.intersection(*(set(scores) for _, scores in group)) if len(group) > 1 else set()
    if not shared:
        return None
    key = min(shared)
    return min(group, key=lambda pair: pair[1][key])[0]


def _resolution(results: Results, kind: str, factor: int) -> int | None:
    """The resolution a run trained this model at: its training record's, else the run's configured one."""
    trained = results.one(TrainingRecord, kind=kind, factor=factor, condition="none")
    if trained is not None and trained.resolution is not None:
        return trained.resolution
    env = results.environment
    return None if env is None else env.config.get("resolution")


def model_fids(runs: Results | list[Results] | None, entry: ModelEntry) -> list[ShownFid] | str:
    """The model's FIDs (and conditioning accuracy), or a sentence saying why there is none.

    A zoo model's own exported metrics come first; otherwise the newest compression run (of
    those given, newest first) that measured this factor and kind at this resolution, with
    the largest DDIM step count per feature backend.
    """
    own = _own_metrics(entry)
    if own is not None:
        return own
    runs = [] if runs is None else [runs] if isinstance(runs, Results) else list(runs)
    if not runs:
        return "no report yet"
    if entry.condition != "none":
        return "not in the compression reports (they measure unconditional models)"
    kind = "pixel" if entry.factor == 1 else entry.kind
    for results in runs:
        fids = results.of(FidRecord, kind=kind, factor=entry.factor, condition="none")
        if fids and _resolution(results, kind, entry.factor) == entry.resolution:
            break
    else:
        return "not in the latest reports"
    best: dict[str, FidRecord] = {}
    for r in sorted(fids, key=lambda r: (r.fid_backend, r.ddim_steps)):  # stable: a re-measurement wins a tie
        best[r.fid_backend] = r
    return [ShownFid(fid=r.fid, backend=r.fid_backend, n=r.fid_samples, ddim_steps=r.ddim_steps,
                     ci=(r.fid_ci_low, r.fid_ci_high) if r.fid_ci_low is not None and r.fid_ci_high is not None
                     else None) for r in best.values()]


def fid_line(fids: list[ShownFid] | str) -> str:
    """``model_fids``' answer as one line, each FID labelled with backend, N, DDIM steps (and guidance)."""
    return fids if isinstance(fids, str) else "; ".join(f.text() for f in fids)


def model_fid(runs: Results | list[Results] | None, entry: ModelEntry) -> str:
    return fid_line(model_fids(runs, entry))
