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
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from .conditional import ConditioningSettings, run_conditional_sweep
from .run import RunSettings, Sweep, SweepError, help_text
from .sweep import CompressionSettings, run_sweep

MB = 1024 * 1024
_UTK = "../shared/data/utkface"


@dataclass
class ZooPart:
    """One sweep whose trained pipelines go into the zoo as ``PREFIX-FOLDER``."""

    name: str  # the part's run folder under the build's runs folder
    prefix: str  # the zoo names' prefix: fmnist32, utk64
    sweep: Literal["compression", "conditioning"]
    run: RunSettings
    settings: CompressionSettings | ConditioningSettings
    share_from: str | None = None  # another part whose autoencoders and classifier this one uses (same data, recipe)


@dataclass
class ZooBuildSettings:
    """Where the zoo is built and how large it may be."""

    preset: str = field(default="cpu", metadata=help_text("cpu (2 CPU cores, hours, resumable), gpu or smoke"))
    runs: Path | None = field(default=None, metadata=help_text("where the parts' sweeps run (default runs/zoo-PRESET)"))
    models: Path = field(default=Path("models"), metadata=help_text("the zoo folder the demo reads"))
    max_model_mb: float = field(default=30.0, metadata=help_text("size budget of one exported model folder (MB)"))
    max_total_mb: float = field(default=120.0, metadata=help_text("size budget of the whole zoo folder (MB)"))
    parts: list[str] = field(default_factory=list, metadata=help_text("build only these parts (default: all)"))
    export_only: bool = field(default=False, metadata=help_text(
        "train nothing: export the models the parts have finished and measured so far"))

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise SweepError(f"Unknown zoo preset {self.preset!r}; choose one of {', '.join(PRESETS)}.", "preset")
        if not 0 < self.max_model_mb <= self.max_total_mb:
            raise SweepError(f"Size budgets must be positive, one model's at most the zoo's (got {self.max_model_mb} "
                             f"and {self.max_total_mb} MB).", "max_model_mb")
        known = [p.name for p in PRESETS[self.preset]]
        unknown = [p for p in self.parts if p not in known]
        if unknown:
            raise SweepError(f"Unknown zoo part(s) {', '.join(unknown)}; preset {self.preset} has {', '.join(known)}.",
                             "parts")


class ZooSizeError(SweepError):
    """An exported model or the whole zoo is over its size budget."""


# --- presets ---------------------------------------------------------------------------------------------------------

def _denoiser_recipe(**kw) -> RunSettings:
    """The denoiser recipe every zoo part shares (chosen by measurement: see the README's recipe table)."""
    # Budgets are wall-clock seconds for denoisers and autoencoders alike (the sweeps' one budget unit); the
    # autoencoders train as in the first-stage study (ae-quick: 1,100 steps took ~300 s at 32 px, ~570 s at 64 px).
    base = dict(budget="seconds", learning_rate=1e-3, warmup_steps=200, lr_schedule="cosine", batch_size=64,
                ae_budget=300, ae_batch_size=8, ae_base_width=16, ae_learning_rate=2e-3, ae_disc_weight=0.1,
                max_images=None, resume=True)
    base.update(kw)
    return RunSettings(**base)


_SMOKE = dict(budget="steps", ae_budget=6, train_budget=6, fid_samples=24, batch_size=8, ae_batch_size=8,
              param_budget=30_000, ae_base_width=8, max_images=256, classifier_steps=40, sample_batch=24,
              warmup_steps=2, ae_disc_weight=0.1)

# The zoo's CPU recipe: a 2 M-parameter UNet at learning rate 1e-3 with warm-up and cosine decay drew
# recognisable clothes after 1,000 steps where the 1 M one at 2e-4 drew blobs (README: "the denoiser recipe");
# the domain classifier trains for 5,000 steps (13 epochs) so that it is sure of real images and its
# recognisability bar means something; UTKFace's judges race x gender and trains less (its bar is Inception FID).
_FMNIST = dict(train_budget=900, param_budget=2_000_000, batch_size=64, fid_samples=500, classifier_steps=5000)
_UTK_RUN = dict(dataset=_UTK, resolution=64, train_budget=900, param_budget=2_000_000, batch_size=32, ae_budget=570,
                fid_samples=500, sample_batch=100, classifier_steps=1000)

PRESETS: dict[str, list[ZooPart]] = {
    # for tests and CI: two tiny parts, seconds on 2 CPU cores
    "smoke": [
        ZooPart("fmnist16", "fmnist16", "compression", _denoiser_recipe(resolution=16, **_SMOKE),
                CompressionSettings(factors=[1, 4], inception_samples=0, ddim_steps=[2], progress_points=1,
                                    progress_samples=8)),
        ZooPart("fmnist16-cond", "fmnist16", "conditioning", _denoiser_recipe(resolution=16, **_SMOKE),
                ConditioningSettings(factors=[4], conditions=["class"], guidance=[1.0], samples_per_class=2,
                                     ddim_steps=2, condition_width=16), share_from="fmnist16"),
    ],
    # 2 CPU cores: every model of a set trains for the same 15 minutes; on an AVX2-only 2-core machine
    # the whole preset takes about 6 hours, in several resumed runs. The models the README's bar is about
    # come first (Fashion-MNIST f = 4 and 8, then UTKFace f = 4); pixel space last, as the slowest.
    "cpu": [
        ZooPart("fmnist32", "fmnist32", "compression", _denoiser_recipe(**_FMNIST),
                CompressionSettings(factors=[4, 8, 2, 16, 1], inception_samples=0, ddim_steps=[10, 50],
                                    progress_points=1, progress_samples=200)),
        ZooPart("utk64", "utk64", "compression", _denoiser_recipe(**_UTK_RUN),
                CompressionSettings(factors=[4, 8, 2, 16, 1], inception_samples=500, ddim_steps=[50],
                                    progress_points=1, progress_samples=200)),
        ZooPart("fmnist32-vq", "fmnist32", "compression", _denoiser_recipe(**_FMNIST),
                CompressionSettings(factors=[4, 8], kinds=["vq"], inception_samples=0, ddim_steps=[10, 50],
                                    progress_points=1, progress_samples=200), share_from="fmnist32"),
        ZooPart("fmnist32-text", "fmnist32", "conditioning", _denoiser_recipe(**_FMNIST),
                ConditioningSettings(factors=[4], conditions=["text"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="fmnist32"),
        ZooPart("fmnist32-class", "fmnist32", "conditioning", _denoiser_recipe(**_FMNIST),
                ConditioningSettings(factors=[8], conditions=["class"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="fmnist32"),
        ZooPart("utk64-vq", "utk64", "compression", _denoiser_recipe(**_UTK_RUN),
                CompressionSettings(factors=[4], kinds=["vq"], inception_samples=500, ddim_steps=[50],
                                    progress_points=1, progress_samples=200), share_from="utk64"),
        ZooPart("utk64-cond", "utk64", "conditioning", _denoiser_recipe(**_UTK_RUN),  # race x gender classes
                ConditioningSettings(factors=[4], conditions=["class"], guidance=[1.0, 3.0], samples_per_class=50,
                                     ddim_steps=25), share_from="utk64"),
    ],
    # one GPU in about 9 minutes: the same parts, wider UNets, bf16 autocast where the GPU is faster with it
    "gpu": [
        ZooPart("fmnist32", "fmnist32", "compression",
                _denoiser_recipe(train_budget=40, param_budget=16_000_000, batch_size=256, ae_budget=20,
                                 ae_batch_size=64, ae_base_width=32, budget="seconds", fid_samples=1000,
                                 device="cuda", mixed_precision="bf16", sample_batch=500),
                CompressionSettings(factors=[1, 2, 4, 8, 16], inception_samples=0, ddim_steps=[50],
                                    progress_points=1, progress_samples=500)),
        ZooPart("utk64", "utk64", "compression",
                _denoiser_recipe(dataset=_UTK, resolution=64, train_budget=50, param_budget=32_000_000,
                                 batch_size=128, ae_budget=25, ae_batch_size=32, ae_base_width=64, fid_samples=1000,
                                 device="cuda", mixed_precision="bf16", sample_batch=250),
                CompressionSettings(factors=[1, 2, 4, 8, 16], inception_samples=1000, ddim_steps=[50],
                                    progress_points=1, progress_samples=500)),
    ],
}


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


def run_part(part: ZooPart, runs: Path) -> Path:
    """Train and measure one part (resuming whatever it finished before); its run folder."""
    shared = runs / part.share_from if part.share_from else None
    run = replace(part.run, out=runs / part.name, resume=True, share_from=shared)
    if part.sweep == "compression":
        return run_sweep(Sweep(f"zoo-{part.name}", run, part.settings))
    return run_conditional_sweep(Sweep(f"zoo-{part.name}", run, part.settings))


def export_part(part: ZooPart, run_dir: Path, models: Path, max_model_mb: float) -> list[Path]:
    """Export the part's measured pipelines not yet in the zoo; refuse (and write nothing) when one is over budget."""
    from pipelines.results import TrainingSummary, read_results

    from .export import export_zoo, model_rows

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
    parts = [p for p in PRESETS[cfg.preset] if not cfg.parts or p.name in cfg.parts]
    for part in parts:
        if cfg.export_only:
            run_dir = runs / part.name
            if not run_dir.is_dir():
                continue
        else:
            print(f"=== zoo part {part.name} ({part.sweep} sweep) ===", flush=True)
            run_dir = run_part(part, runs)
        for path in export_part(part, run_dir, cfg.models, cfg.max_model_mb):
            print(f"exported {path} ({folder_mb(path):.1f} MB)", flush=True)
    zoo = sorted(p for p in cfg.models.glob("*") if (p / "model_index.json").is_file())
    total = folder_mb(cfg.models) if cfg.models.is_dir() else 0.0
    if total > cfg.max_total_mb:
        sizes = ", ".join(f"{p.name} {folder_mb(p):.1f}" for p in sorted(cfg.models.iterdir(), key=folder_mb,
                                                                         reverse=True)[:5])
        raise ZooSizeError(f"The zoo in '{cfg.models}' holds {total:.1f} MB, over its {cfg.max_total_mb:g} MB "
                           f"budget (largest: {sizes} MB). Lower the parameter budgets or drop models.", "max_total_mb")
    return zoo

