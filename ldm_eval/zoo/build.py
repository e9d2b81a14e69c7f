"""Building the demo's model zoo in one resumable command: ``python -m ldm_eval build-zoo``.

A zoo is a list of parts, and each part is an ordinary sweep (compression or conditioning)
on one data set: the zoo's models are trained, measured and logged exactly as the harness
trains and measures everything else, and within a part every model gets the same budget.
The trained pipelines are then exported as fp16 safetensors with model cards
(``export.export_zoo``) under the part's prefix, keeping today's folder names
(``fmnist32-ldm-kl-f4``, ``utk64-dm-f1``, ``fmnist32-ldm-kl-f8-class``...).

Killed at any point, the command resumes: every part's sweep resumes from its results log
(a finished model is never retrained), a model already exported from the same training
run is not exported again, and exports go through a temporary folder renamed into place,
so ``models/`` never holds half a model. A model folder over its size budget fails the
export with a message that names it, and so does a zoo over its total budget.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ldm_eval.presets import UTKFACE, ZOO_PRESETS, ZooPart
from ldm_eval.reporting.dispatch import render_any_report
from ldm_eval.sweeps.compression import CompressionSettings, run_sweep
from ldm_eval.sweeps.conditioning import run_conditional_sweep
from ldm_eval.sweeps.run_folder import open_run
from ldm_eval.sweeps.settings import RunSettings, Sweep, SweepError, help_text
from ldm_eval.zoo.export import (
    add_before_sections,
    add_evaluation_sections,
    export_zoo,
    model_rows,
)
from pipelines.results import AutoencoderRecord, TrainingSummary, read_results

MB = 1024 * 1024




@dataclass
class ZooBuildSettings:
    """Where the zoo is built and how large it may be."""

    preset: str = field(default="cpu", metadata=help_text("cpu (2 CPU cores, hours, resumable), gpu or smoke"))
    runs: Path | None = field(default=None, metadata=help_text("where the parts' sweeps run (default runs/zoo-PRESET)"))
    models: Path = field(default=Path("models"), metadata=help_text("the zoo folder the demo reads"))
    max_model_mb: float = field(default=30.0, metadata=help_text("size budget of one exported model folder (MB)"))
    before: Path = field(default=Path("reports/zoo-before.json"), metadata=help_text(
        "measurements of the models the zoo held before, copied into those folders' cards (if the file exists)"))
    evaluations: list[str] = field(default_factory=lambda: ["reports/zoo-evaluate"], metadata=help_text(
        "evaluate runs whose measurements of the zoo's models (matched by their weights) go into the cards"))
    max_total_mb: float = field(default=120.0, metadata=help_text("size budget of the whole zoo folder (MB)"))
    parts: list[str] = field(default_factory=list, metadata=help_text("build only these parts (default: all)"))
    export_only: bool = field(default=False, metadata=help_text(
        "train nothing: export the models the parts have finished and measured so far"))
    jobs: int = field(default=1, metadata=help_text(
        "cells (one model each) trained at once, each in its own process: a GPU that one small model leaves "
        "mostly idle trains several side by side"))
    cells: list[str] = field(default_factory=list, metadata=help_text(
        "train only these cells, as PART:MODEL (e.g. fmnist32:ldm-kl-f4); what --jobs gives each process"))
    open_only: bool = field(default=False, metadata=help_text(
        "only open the parts' runs (held-out data, domain classifier, environment): what --jobs does first"))
    no_export: bool = field(default=False, metadata=help_text("train and measure, but export nothing"))
    utkface: str = field(default=UTKFACE, metadata=help_text("the UTKFace folder of face photos the utk64 parts train on"))
    executor: str = field(default="local", metadata=help_text(
        "local, or ray: each part's cells become Ray tasks (--runs must be on storage every node reaches)"))
    ray_address: str = field(default="auto", metadata=help_text("the Ray cluster: auto, HOST:PORT or local"))
    cell_gpus: float = field(default=0.0, metadata=help_text("GPUs each cell asks Ray for"))
    cell_cpus: float = field(default=1.0, metadata=help_text("CPUs each cell asks Ray for"))
    train_budget: float | None = field(default=None, metadata=help_text(
        "every denoiser's budget, in the preset's unit (cpu, gpu: seconds), in place of the preset's"))
    ae_budget: float | None = field(default=None, metadata=help_text(
        "every autoencoder's budget, in the preset's unit, in place of the preset's"))

    def given_budgets(self) -> dict[str, float]:
        """The budgets given on the command line, by field name (those left out keep each part's own)."""
        return {name: value for name, value in (("train_budget", self.train_budget), ("ae_budget", self.ae_budget))
                if value is not None}

    def validate(self) -> None:
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
        if not 1 <= self.jobs <= 64:
            raise SweepError(f"Jobs must be from 1 to 64 (got {self.jobs}).", "jobs")
        if self.jobs > 1 and self.executor != "local":
            raise SweepError("--jobs trains cells side by side on this machine; with --executor ray, Ray runs "
                             "them: give one or the other.", "jobs")
        for part in ZOO_PRESETS[self.preset]:  # the budgets given, as each part's sweep would check them
            _configured(part, self).run.validate()
        cells = {c.id for part in ZOO_PRESETS[self.preset] for c in part_cells(part)}
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

@dataclass(frozen=True)
class Cell:
    """One model of a part: the part restricted to it, and the shared autoencoder it must wait for."""

    part: str
    model: str  # the model's folder name in the part's run, as exported: ldm-kl-f4, dm-f1, ldm-kl-f8-class
    kind: str  # kl, vq or pixel
    factor: int
    condition: str | None = None
    waits_for: tuple[str, str, int] | None = None  # (source part, kind, factor) whose autoencoder another cell trains

    @property
    def id(self) -> str:
        return f"{self.part}:{self.model}"


def part_cells(part: ZooPart, preset: list[ZooPart] | None = None) -> list[Cell]:
    """The part's models in its own order; with the preset, which shared autoencoders they wait for."""
    s = part.settings
    if isinstance(s, CompressionSettings):
        pairs = list(dict.fromkeys(("pixel", 1) if f == 1 else (k, f) for k in s.kinds for f in s.factors))
        cells = [Cell(part.name, "dm-f1" if k == "pixel" else f"ldm-{k}-f{f}", k, f) for k, f in pairs]
    else:
        cells = [Cell(part.name, f"dm-f1-{c}" if f == 1 else f"ldm-{s.kind}-f{f}-{c}", "pixel" if f == 1 else s.kind,
                      f, c) for f in s.factors for c in s.conditions]
    source = next((p for p in preset or [] if p.name == part.share_from), None)
    if source is None:
        return cells
    trained_there = {(c.kind, c.factor) for c in part_cells(source) if c.factor > 1}
    return [replace(c, waits_for=(source.name, c.kind, c.factor)) if (c.kind, c.factor) in trained_there else c
            for c in cells]


def restrict(part: ZooPart, cell: Cell) -> ZooPart:
    """The part with only this cell's model to train (same run folder, same settings otherwise)."""
    if isinstance(part.settings, CompressionSettings):
        kinds = [cell.kind] if cell.kind != "pixel" else part.settings.kinds[:1]
        return replace(part, settings=replace(part.settings, factors=[cell.factor], kinds=kinds))
    return replace(part, settings=replace(part.settings, factors=[cell.factor], conditions=[cell.condition]))


def _autoencoder_ready(runs: Path, part: str, kind: str, factor: int) -> bool:

    folder = runs / part
    return (folder / "results.jsonl").is_file() and bool(read_results(folder).of(AutoencoderRecord, kind=kind,
                                                                                   factor=factor))


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
    failed: list[str] = []
    if cfg.jobs > 1 and not cfg.export_only:
        failed = train_side_by_side(cfg, parts, runs)
    for part in parts:
        run_dir = runs / part.name
        if cfg.open_only:
            open_part(part, runs)
            continue
        if cfg.cells:
            for cell in part_cells(part):
                if cell.id in cfg.cells:
                    print(f"=== zoo cell {cell.id} ===", flush=True)
                    run_part(restrict(part, cell), runs)
        elif not (cfg.export_only or cfg.jobs > 1):
            print(f"=== zoo part {part.name} ({part.sweep} sweep) ===", flush=True)
            run_part(part, runs)
        if cfg.no_export or not run_dir.is_dir():
            continue
        for path in export_part(part, run_dir, cfg.models, cfg.max_model_mb):
            print(f"exported {path} ({folder_mb(path):.1f} MB)", flush=True)
    if failed:
        raise SweepError(f"{len(failed)} cell(s) failed: {'; '.join(failed)}. The others were trained and exported; "
                         "run the same command again to retry the failed ones (finished cells are kept).", "cells")
    if cfg.open_only or cfg.no_export:
        return []
    for card in add_before_sections(cfg.models, cfg.before):
        print(f"card {card}: the model before the rebuild, from {cfg.before}", flush=True)
    for card in add_evaluation_sections(cfg.models, [Path(run) for run in cfg.evaluations]):
        print(f"card {card}: measured with evaluate ({', '.join(cfg.evaluations)})", flush=True)
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
    """The part reading UTKFace from where this machine keeps it, its cells run by the chosen executor, with the
    budgets given on the command line."""
    run = replace(part.run, executor=cfg.executor, ray_address=cfg.ray_address, cell_gpus=cfg.cell_gpus,
                  cell_cpus=cfg.cell_cpus, **cfg.given_budgets())
    return replace(part, run=replace(run, dataset=cfg.utkface) if run.dataset == UTKFACE else run)


def _child(cfg: ZooBuildSettings, runs: Path, part: str, *extra: str) -> list[str]:
    """The command one cell's process runs: this build's settings (budgets included), restricted to one part."""
    budgets = [arg for name, value in cfg.given_budgets().items() for arg in (f"--{name}", repr(value))]
    return [sys.executable, "-m", "ldm_eval", "build-zoo", "--preset", cfg.preset, "--runs", str(runs),
            "--models", str(cfg.models), "--parts", part, "--utkface", cfg.utkface, "--no-export", *budgets, *extra]


def train_side_by_side(cfg: ZooBuildSettings, parts: list[ZooPart], runs: Path) -> list[str]:
    """Train the parts' unfinished cells in up to ``cfg.jobs`` processes at once; the failed cells' log paths.

    Each part's run is opened first (one process per part, a shared one's source before it), then every
    cell runs ``build-zoo --cells PART:MODEL`` in its own process: cells of one part append to the same
    results log (whole lines, see ``ResultsLog.append``) and a cell that needs an autoencoder another cell
    trains starts once that one is measured. A process pool of our own rather than a job system: the
    cells are a few processes on one machine, and each one is the ordinary resumable command.
    """
    preset = ZOO_PRESETS[cfg.preset]
    logs = runs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.jobs)))
    root = str(Path(__file__).resolve().parents[1])  # the cells import this same code, wherever they start
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    todo = [(part, c) for part in parts for c in part_cells(part, preset) if not cfg.cells or c.id in cfg.cells]
    opened: set[str] = set()
    opening: dict[str, subprocess.Popen] = {}
    running: dict[str, tuple[subprocess.Popen, float, Cell]] = {}
    failed: list[str] = []
    begun = time.monotonic()

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name.replace(':', '--')}.log", "a") as fh:
            return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def stop(*_: object) -> None:
        raise SystemExit(f"Stopped; {len(running)} cell(s) were training. Run the same command to resume.")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        while todo or running or opening:
            for name, proc in list(opening.items()):
                if proc.poll() is not None:
                    del opening[name]
                    if proc.returncode == 0:
                        opened.add(name)
                    else:
                        failed.append(f"opening {name} (log {logs / name}.log)")
                        todo = [(p, c) for p, c in todo if p.name != name and p.share_from != name]
            for part in parts:
                source_ok = part.share_from is None or part.share_from in opened or part.share_from not in {
                    p.name for p in parts}
                if part.name not in opened and part.name not in opening and source_ok and any(
                        p.name == part.name for p, _ in todo):
                    opening[part.name] = start(part.name, _child(cfg, runs, part.name, "--open-only"))
            for cell_id, (proc, since, _) in list(running.items()):
                if proc.poll() is not None:
                    del running[cell_id]
                    took = time.monotonic() - since
                    if proc.returncode == 0:
                        print(f"[{time.monotonic() - begun:6.0f} s] done   {cell_id} ({took:.0f} s)", flush=True)
                    else:
                        log = logs / f"{cell_id.replace(':', '--')}.log"
                        print(f"[{time.monotonic() - begun:6.0f} s] FAILED {cell_id} (exit {proc.returncode}; "
                              f"log {log})", flush=True)
                        failed.append(f"{cell_id} (log {log})")
            for part, cell in list(todo):
                if len(running) >= cfg.jobs:
                    break
                if part.name not in opened:
                    continue
                if cell.waits_for and not _autoencoder_ready(runs, *cell.waits_for):
                    source, kind, factor = cell.waits_for
                    busy = [c for _, c in todo] + [c for _, _, c in running.values()]
                    if any((c.part, c.kind, c.factor) == (source, kind, factor) for c in busy):
                        continue  # another cell is training that autoencoder: wait for it (when none is, this
                        # cell trains it itself, resuming the shared folder)
                todo.remove((part, cell))
                running[cell.id] = (start(cell.id, _child(cfg, runs, part.name, "--cells", cell.id)),
                                    time.monotonic(), cell)
                print(f"[{time.monotonic() - begun:6.0f} s] start  {cell.id}", flush=True)
            time.sleep(0.5)
    finally:  # killed or interrupted: the cells' processes (own sessions, so Ctrl-C reaches only us) go too
        signal.signal(signal.SIGTERM, previous)
        for proc in [*opening.values(), *(proc for proc, _, _ in running.values())]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
    return failed
