"""The tour: the shipped models measured side by side, in minutes -- what ``python -m ldm_eval`` runs.

For each shipped compression set (pixel space and every f of one data set) it opens a run folder like
any sweep's (held-out draw, domain classifier, environment record), then measures every model as a
cell: N samples at one DDIM step count, timed, with their peak memory; Inception and domain FID with
95 % intervals against as many held-out images; how many a real-data judge recognises; a sample grid.
Every measurement goes to the set's ``results.jsonl`` at once, so a killed tour resumes where it stopped
and a finished one only re-renders. Nothing is trained but the small domain classifier.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import diffusers
import torch
from tqdm.auto import tqdm

from ldm_eval.sweeps.executor import Cell, Opener, run_cells
from ldm_eval.sweeps.run_folder import (
    RunContext,
    fid_records,
    open_run,
    recognisability_record,
)
from ldm_eval.sweeps.settings import (
    RunSettings,
    SweepError,
    check_ddim_steps,
    help_text,
    speedups_field,
)
from pipelines.errors import whole_number
from pipelines.images import save_grid, unit_nhwc_to_uint8_nchw
from pipelines.loading import load_pipeline
from pipelines.pipeline import LatentDiffusionPipeline
from pipelines.records import (
    FidRecord,
    ModelRecord,
    RecognisabilityRecord,
    SamplingRecord,
)
from pipelines.results_log import Results
from pipelines.sampling import timed_sampling, warm_up
from pipelines.speedups import Speedups


@dataclass(frozen=True)
class TourSet:
    """One shipped compression set: ``PREFIX-dm-f1`` and ``PREFIX-ldm-kl-fF`` in the zoo folder, and its data."""

    prefix: str  # fmnist32, utk64
    dataset: str  # fashion-mnist or a folder of images
    resolution: int
    factors: tuple[int, ...] = (1, 2, 4, 8, 16)

    def models(self) -> list[tuple[str, int]]:
        """(folder name, factor) of every model of the set."""
        return [(f"{self.prefix}-dm-f1" if f == 1 else f"{self.prefix}-ldm-kl-f{f}", f) for f in self.factors]


@dataclass
class TourSettings:
    """``python -m ldm_eval`` (or ``tour``): the shipped models measured side by side."""

    models: Path = field(default=Path("models"), metadata=help_text("the zoo folder holding the shipped models"))
    out: Path = field(default=Path("runs/tour"), metadata=help_text("where the tour's runs and report go"))
    sets: list[str] = field(default_factory=lambda: ["fmnist32", "utk64"], metadata=help_text(
        "shipped sets to measure: fmnist32 (Fashion-MNIST, 32 px) and/or utk64 (UTKFace faces, 64 px)"))
    n: int = field(default=100, metadata=help_text("samples per model, and held-out images they are compared with"))
    ddim_steps: int = field(default=20, metadata=help_text("DDIM steps of every sample"))
    classifier_steps: int = field(default=500, metadata=help_text("training steps of each set's domain classifier"))
    bootstrap_resamples: int = field(default=200, metadata=help_text("bootstrap resamples behind each 95 % interval"))
    utkface: str = field(default="../shared/data/utkface", metadata=help_text("the UTKFace folder of face photos"))
    batch_size: int = field(default=100, metadata=help_text("images per sampling batch (never changes the images)"))
    seed: int = field(default=0, metadata=help_text("seed of sampling and of the held-out draw"))
    speedups: Speedups = speedups_field("CUDA graphs on a GPU; nothing paid for sampling on a CPU")
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))

    def validate(self, known: dict[str, TourSet]) -> None:
        unknown = [s for s in self.sets if s not in known]
        if unknown or not self.sets:
            raise SweepError(f"Unknown shipped set(s) {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(known)}.", "sets")
        whole_number(self.n, "n", "The number of samples", 20, 100_000)
        check_ddim_steps([self.ddim_steps], "ddim_steps")
        whole_number(self.classifier_steps, "classifier_steps", "Classifier steps", 1, 10**6)
        whole_number(self.bootstrap_resamples, "bootstrap_resamples", "The number of bootstrap resamples", 0, 100_000)
        whole_number(self.batch_size, "batch_size", "Batch size", 1, 4096)
        for tour_set in (known[s] for s in self.sets):
            for name, _ in tour_set.models():
                check_model_folder(self.models / name)


def check_model_folder(folder: Path) -> None:
    """A shipped model folder that is there and whole, or a clear error naming it (before anything runs)."""
    if not (folder / "model_index.json").is_file():
        raise SweepError(f"The shipped model folder '{folder}' is missing or has no model_index.json: restore it "
                         "(git checkout -- models) or leave its set out with --sets.", "models")
    try:
        json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError) as err:
        raise SweepError(f"The shipped model folder '{folder}' is damaged (model_index.json: {err}).", "models") from None
    if not any(folder.glob("*/*.safetensors")):
        raise SweepError(f"The shipped model folder '{folder}' holds no weights (*.safetensors).", "models")


def _run_settings(cfg: TourSettings, tour_set: TourSet) -> RunSettings:
    dataset = cfg.utkface if tour_set.prefix.startswith("utk") else tour_set.dataset
    return RunSettings(dataset=dataset, resolution=tour_set.resolution, fid_samples=cfg.n, sample_batch=cfg.batch_size,
                       classifier_steps=cfg.classifier_steps, bootstrap_resamples=cfg.bootstrap_resamples,
                       seed=cfg.seed, device=cfg.device, out=cfg.out / tour_set.prefix, resume=True, max_images=None,
                       speedups=cfg.speedups)


def _measured(name: str, results: Results) -> bool:
    return bool(results.of(SamplingRecord, model=name) and len(results.of(FidRecord, model=name)) == 2)


def _load(folder: Path, device: torch.device) -> LatentDiffusionPipeline:
    try:
        return load_pipeline(folder, device=device)
    except Exception as err:  # noqa: BLE001 - any failure to load is the folder's, and said so with its name
        raise SweepError(f"Could not load the shipped model '{folder}': {err}", "models") from err


def _measure_model(folder: str, factor: int, steps: int, ctx: RunContext) -> None:
    """One model's cell: sample, time, score and draw it (what it has measured already is kept)."""
    s = ctx.settings
    name = Path(folder).name
    pipe = _load(Path(folder), ctx.device)
    kind = "pixel" if factor == 1 else pipe.first_stage.kind
    if not ctx.log.has(ModelRecord, model=name):
        ctx.log.append(ModelRecord(
            model=name, source=folder, layout=pipe.loaded_from, kind=kind, factor=pipe.factor,
            resolution=pipe.resolution, latent_shape=list(pipe.first_stage.latent_shape(pipe.resolution)),
            params=pipe.parameter_counts(), dtype=str(pipe.unet.dtype).removeprefix("torch."), device=str(ctx.device)))
    cell = {"model": name, "kind": kind, "factor": factor, "ddim_steps": steps}
    warm_up(pipe)
    timed = timed_sampling(pipe, s.fid_samples, steps, "ddim", seed=s.seed + 1000, batch_size=s.sample_batch,
                           speedups=s.speedups)
    images = unit_nhwc_to_uint8_nchw(timed.images)
    save_grid(timed.images[:64], ctx.out / "grids" / f"samples-{name}.png")
    backends = [(b, s.fid_samples) for b in ("inception", "domain") if not ctx.log.has(FidRecord, fid_backend=b, **cell)]
    for record in fid_records(ctx, images, backends, **cell):  # (a resumed cell measures only what is missing)
        ctx.log.append(record)
    if not ctx.log.has(RecognisabilityRecord, **cell):
        recognised = recognisability_record(ctx, images, None, device=str(ctx.device), **cell)
        if recognised is not None:
            ctx.log.append(recognised)
    ctx.log.append(SamplingRecord(  # last: its presence (with both FIDs) marks the cell as measured
        **cell, device=str(ctx.device), n=len(timed.images), seconds=timed.seconds,
        samples_per_s=timed.samples_per_s, sec_per_image=timed.sec_per_image, peak_mem_sample_mb=timed.peak_mb,
        memory_method=timed.memory_method, sample_batch=s.sample_batch, scheduler="ddim"))


def run_tour(cfg: TourSettings, known: dict[str, TourSet]) -> list[Path]:
    """Measure (or resume measuring) every model of the chosen shipped sets; the sets' run folders."""
    cfg.validate(known)
    diffusers.utils.logging.disable_progress_bar()  # one bar here, not one per model loaded
    folders = []
    todo = sum(len(known[s].models()) for s in cfg.sets)
    with tqdm(total=todo, desc="tour", unit="model") as bar:
        for tour_set in (known[s] for s in cfg.sets):
            run = _run_settings(cfg, tour_set)
            config = {"command": "tour", "set": tour_set.prefix, "models": str(cfg.models), "n": cfg.n,
                      "ddim_steps": cfg.ddim_steps, "factors": list(tour_set.factors), "preset": "tour",
                      "dataset": run.dataset, "resolution": run.resolution}
            bar.set_postfix_str(f"{tour_set.prefix}: held-out images and domain classifier")
            ctx = open_run(run, config, cfg.n)
            cells = []
            for name, factor in tour_set.models():
                folder = str(cfg.models / name)
                cells.append(Cell(f"model {name}", partial(_measure_model, folder, factor, cfg.ddim_steps),
                                  partial(_measured, name)))
            for cell in cells:  # one by one here, so the bar can say which model it is on
                bar.set_postfix_str(cell.key.removeprefix("model "))
                run_cells(ctx, Opener(run, config, cfg.n), [cell])
                bar.update(1)
            folders.append(ctx.out)
    return folders
