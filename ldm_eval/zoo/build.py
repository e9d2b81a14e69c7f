"""Building the demo's model zoo in one resumable command: ``python -m ldm_eval build-zoo``.

A zoo is a list of parts, and each part is an ordinary sweep (compression or conditioning)
on one data set: the zoo's models are trained, measured and logged exactly as the harness
trains and measures everything else, and within a part every model gets the same budget.
The trained pipelines are then exported as fp16 safetensors with model cards
(``export.export_zoo``; ``cards.finish_folder`` adds the code plain diffusers loads) under the part's prefix, keeping today's folder names
(``fmnist32-ldm-kl-f4``, ``utk64-dm-f1``, ``fmnist32-ldm-kl-f8-class``...).

Killed at any point, the command resumes: every part's sweep resumes from its results log
(a finished model is never retrained), a model already exported from the same training
run is not exported again, and exports go through a temporary folder renamed into place,
so ``models/`` never holds half a model. A model folder over its size budget fails the
export with a message that names it, and so does a zoo over its total budget.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ldm_eval.presets import UTKFACE, ZOO_PRESETS, ZooPart
from ldm_eval.reporting.dispatch import render_any_report
from ldm_eval.sweeps.compression import CompressionSettings, run_sweep
from ldm_eval.sweeps.conditioning import run_conditional_sweep
from ldm_eval.sweeps.run_folder import open_run
from ldm_eval.sweeps.settings import (
    ExecutorFlags,
    RunSettings,
    Sweep,
    SweepError,
    help_text,
)
from ldm_eval.zoo.cards import render_zoo
from ldm_eval.zoo.export import export_zoo, model_rows
from ldm_eval.zoo.parts import ZooModel, part_models
from pipelines.results_log import read_results
from pipelines.training_summary import TrainingSummary

MB = 1024 * 1024




@dataclass
class ZooBuildSettings(ExecutorFlags):
    """Where the zoo is built and how large it may be; where its cells run (``--jobs``, ``--executor``) as in a sweep."""

    preset: str = field(default="cpu", metadata=help_text("cpu (2 CPU cores, hours, resumable), gpu or smoke"))
    runs: Path | None = field(default=None, metadata=help_text("where the parts' sweeps run (default runs/zoo-PRESET)"))
    models: Path = field(default=Path("models"), metadata=help_text("the zoo folder the demo reads"))
    max_model_mb: float = field(default=30.0, metadata=help_text("size budget of one exported model folder (MB)"))
    evaluations: list[str] = field(default_factory=lambda: ["reports/zoo-evaluate", "reports/utk128-evaluate"],
                                   metadata=help_text(
        "evaluate runs whose measurements of the zoo's models (matched by their weights) go into the cards"))
    max_total_mb: float = field(default=150.0, metadata=help_text("size budget of the whole zoo folder (MB)"))
    parts: list[str] = field(default_factory=list, metadata=help_text("build only these parts (default: all)"))
    export_only: bool = field(default=False, metadata=help_text(
        "train nothing: export the models the parts have finished and measured so far"))
    cells: list[str] = field(default_factory=list, metadata=help_text(
        "train only these models, as PART:MODEL (e.g. fmnist32:ldm-kl-f4)"))
    open_only: bool = field(default=False, metadata=help_text(
        "only open the parts' runs (held-out data, domain classifier, environment), training nothing"))
    no_export: bool = field(default=False, metadata=help_text("train and measure, but export nothing"))
    utkface: str = field(default=UTKFACE, metadata=help_text("the UTKFace folder of face photos the utk64 parts train on"))
    train_budget: float | None = field(default=None, metadata=help_text(
        "every denoiser's budget, in the preset's unit (cpu, gpu: seconds), in place of the preset's"))
    ae_budget: float | None = field(default=None, metadata=help_text(
        "every autoencoder's budget, in the preset's unit, in place of the preset's"))

    def given_budgets(self) -> dict[str, float]:
        """The budgets given on the command line, by field name (those left out keep each part's own)."""
        return {name: value for name, value in (("train_budget", self.train_budget), ("ae_budget", self.ae_budget))
                if value is not None}

    def validate(self) -> None:
        self.validate_executor()
        if self.preset not in ZOO_PRESETS:
            raise SweepError(f"Unknown zoo preset {self.preset!r}; choose one of {', '.join(ZOO_PRESETS)}.", "preset")
        if not 0 < self.max_model_mb <= self.max_total_mb:
            raise SweepError(f"Size budgets must be positive, one model's at most the zoo's (got {self.max_model_mb} "
                             f"and {self.max_total_mb} MB).", "max_model_mb")
        known = [p.name for p in ZOO_PRESETS[self.preset]]
        unknown = [p for p in self.parts if p not in known]
        if unknown:
            raise SweepError(f"Unknown zoo part(s) {', '.join(unknown)}; preset {self.preset} has {', '.join(known)}.",
                             "parts")
        for part in ZOO_PRESETS[self.preset]:  # the budgets given, as each part's sweep would check them
            _configured(part, self).run.validate()
        cells = {m.id for part in ZOO_PRESETS[self.preset] for m in part_models(part)}
        wrong = [c for c in self.cells if c not in cells]
        if wrong:
            raise SweepError(f"Unknown cell(s) {', '.join(wrong)}; preset {self.preset} has {', '.join(sorted(cells))}.",
                             "cells")


class ZooSizeError(SweepError):
    """An exported model or the whole zoo is over its size budget."""




# --- building --------------------------------------------------------------------------------------------------------

def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / MB


def _pipelines(run_dir: Path) -> list[str]:
    """The run's trained pipelines (folders with a model_index.json), not its autoencoders."""
    return sorted(p.name for p in (run_dir / "models").glob("*") if (p / "model_index.json").is_file())


def _already_exported(source: Path, target: Path) -> bool:
    """Whether ``target`` holds the export of exactly this training run (same training.json)."""
    a, b = source / "training.json", target / "training.json"
    return b.is_file() and a.is_file() and json.loads(a.read_text()) == json.loads(b.read_text())


def _part_run(part: ZooPart, runs: Path) -> RunSettings:
    shared = runs / part.share_from if part.share_from else None
    return replace(part.run, out=runs / part.name, resume=True, share_from=shared)


def run_part(part: ZooPart, runs: Path) -> Path:
    """Train and measure one part (resuming whatever it finished before); its run folder."""

    run = _part_run(part, runs)
    sweep = run_sweep if part.sweep == "compression" else run_conditional_sweep
    out = sweep(Sweep(f"zoo-{part.name}", run, part.settings))
    render_any_report(out)  # the sweep commands render theirs; without this a part's report.md stayed at its first cell
    return out


def open_part(part: ZooPart, runs: Path) -> Path:
    """Open the part's run once, before its cells train side by side: the environment record (with the whole
    part's settings), the held-out draw and the domain classifier are then there for every cell to resume."""

    sweep = Sweep(f"zoo-{part.name}", _part_run(part, runs), part.settings)
    sweep.validate()
    if isinstance(part.settings, CompressionSettings):
        s = part.settings
        open_run(sweep.run, sweep.flat_config(), max(sweep.run.fid_samples, s.inception_samples, s.progress_samples))
    else:
        open_run(sweep.run, sweep.flat_config(), sweep.run.fid_samples, label_key="class")
    return sweep.run.out


# --- cells: one model each, for training several side by side ---------------------------------------------------------

def restrict(part: ZooPart, model: ZooModel) -> ZooPart:
    """The part with only this model to train (same run folder, same settings otherwise)."""
    if isinstance(part.settings, CompressionSettings):
        kinds = [model.kind] if model.kind != "pixel" else part.settings.kinds[:1]
        return replace(part, settings=replace(part.settings, factors=[model.factor], kinds=kinds))
    return replace(part, settings=replace(part.settings, factors=[model.factor], conditions=[model.condition]))


def export_part(part: ZooPart, run_dir: Path, models: Path, max_model_mb: float) -> list[Path]:
    """Export the part's measured pipelines not yet in the zoo; refuse (and write nothing) when one is over budget."""

    results = read_results(run_dir)  # once: a sweep measures each model right after training it

    def measured(name: str) -> bool:
        return bool(model_rows(results, TrainingSummary.load(run_dir / "models" / name / "training.json")))

    todo = [name for name in _pipelines(run_dir)
            if measured(name)
            and not _already_exported(run_dir / "models" / name, models / f"{part.prefix}-{name}")]
    return export_zoo(run_dir, models, part.prefix, only=todo, max_mb=max_model_mb) if todo else []


def build_zoo(cfg: ZooBuildSettings) -> list[Path]:
    """Train (or resume) every part, export the new models, check the zoo's total size; the zoo's model folders."""
    cfg.validate()
    runs = cfg.runs or Path("runs") / f"zoo-{cfg.preset}"
    for stale in cfg.models.glob(".tmp-*"):  # what an export killed mid-write left (atomic_folder's temporary)
        shutil.rmtree(stale, ignore_errors=True)
    parts = [_configured(p, cfg) for p in ZOO_PRESETS[cfg.preset] if not cfg.parts or p.name in cfg.parts]
    for part in parts:
        run_dir = runs / part.name
        if cfg.open_only:
            open_part(part, runs)
            continue
        if cfg.cells:
            for model in part_models(part):
                if model.id in cfg.cells:
                    print(f"=== zoo model {model.id} ===", flush=True)
                    run_part(restrict(part, model), runs)
        elif not cfg.export_only:
            print(f"=== zoo part {part.name} ({part.sweep} sweep) ===", flush=True)
            run_part(part, runs)
        if cfg.no_export or not run_dir.is_dir():
            continue
        for path in export_part(part, run_dir, cfg.models, cfg.max_model_mb):
            print(f"exported {path} ({folder_mb(path):.1f} MB)", flush=True)
    if cfg.open_only or cfg.no_export:
        return []
    for card in render_zoo(cfg.models, [Path(run) for run in cfg.evaluations]):  # budgets and evaluate lines
        print(f"card {card} rendered (evaluate runs: {', '.join(cfg.evaluations)})", flush=True)
    zoo = sorted(p for p in cfg.models.glob("*") if (p / "model_index.json").is_file())
    total = folder_mb(cfg.models) if cfg.models.is_dir() else 0.0
    if total > cfg.max_total_mb:
        sizes = ", ".join(f"{p.name} {folder_mb(p):.1f}" for p in sorted(cfg.models.iterdir(), key=folder_mb,
                                                                         reverse=True)[:5])
        raise ZooSizeError(f"The zoo in '{cfg.models}' holds {total:.1f} MB, over its {cfg.max_total_mb:g} MB "
                           f"budget (largest: {sizes} MB). Lower the parameter budgets or drop models.", "max_total_mb")
    return zoo



# --- training cells side by side -------------------------------------------------------------------------------------

def _configured(part: ZooPart, cfg: ZooBuildSettings) -> ZooPart:
    """The part reading UTKFace from where this machine keeps it, its cells run by the chosen executor (in
    ``--jobs`` processes, or on Ray), with the budgets given on the command line."""
    run = replace(part.run, executor=cfg.executor, ray_address=cfg.ray_address, cell_gpus=cfg.cell_gpus,
                  cell_cpus=cfg.cell_cpus, jobs=cfg.jobs, **cfg.given_budgets())
    return replace(part, run=replace(run, dataset=cfg.utkface) if run.dataset == UTKFACE else run)
