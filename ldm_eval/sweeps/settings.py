"""What every sweep is configured by: the shared run settings, a sweep kind's own settings, and their checks."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from ldm_eval.metrics.uncertainty import BOOTSTRAP_RESAMPLES
from pipelines.autoencoder_training import AutoencoderTrainConfig
from pipelines.diffusion_training import snr_gamma_problem
from pipelines.errors import InputError, whole_number
from pipelines.first_stage import check_factor
from pipelines.speedups import Speedups, check_speedups
from pipelines.training import MAX_STEPS

_AE = AutoencoderTrainConfig  # where the autoencoders' defaults live


class SweepError(InputError):
    """A sweep that cannot run as asked."""


def help_text(text: str) -> dict[str, str]:
    """A dataclass field's ``metadata``: its ``--help`` line on the command line.

    argparse expands ``%`` in help strings (``%(default)s``), so a literal one ("95 % interval")
    is doubled here; unescaped, it made ``--help`` crash.
    """
    return {"help": text.replace("%", "%%")}


def speedups_field(levers: str) -> Any:
    """The ``--speedups`` setting of a command, ``levers`` saying what ``auto`` pulls there."""
    return field(default="auto", metadata=help_text(
        f"auto: the speed levers measured to pay on this device ({levers}); off: the plain eager path. "
        "Same maths either way (docs/speed.md)"))


@dataclass
class ExecutorFlags:
    """Where a command's cells run (:mod:`ldm_eval.sweeps.executor`): the flags every sweep and ``evaluate`` share."""

    executor: Literal["local", "ray"] = field(default="local", metadata=help_text(
        "where the cells (one model each) run: local (here, one after another) or ray (tasks on a Ray cluster; "
        "--out must be a folder every node reaches)"))
    ray_address: str = field(default="auto", metadata=help_text(
        "the Ray cluster: auto (the one this machine belongs to), HOST:PORT, or local (start one here)"))
    cell_gpus: float = field(default=0.0, metadata=help_text("GPUs each cell asks Ray for (--executor ray)"))
    cell_cpus: float = field(default=1.0, metadata=help_text("CPUs each cell asks Ray for (--executor ray)"))
    jobs: int = field(default=1, metadata=help_text(
        "cells trained at once on this machine, each in its own process (--executor local): a GPU that one small "
        "model leaves mostly idle trains several side by side; 1 runs them here, one after another"))

    def validate_executor(self) -> None:
        if self.executor not in ("local", "ray"):
            raise SweepError(f"Unknown executor {self.executor!r}; choose local or ray.", "executor")
        whole_number(self.jobs, "jobs", "Jobs", 1, 64)
        if self.jobs > 1 and self.executor != "local":
            raise SweepError("--jobs runs cells side by side on this machine; with --executor ray, Ray runs "
                             "them: give one or the other.", "jobs")
        if not (0 <= self.cell_gpus <= 1024 and 0 < self.cell_cpus <= 4096):
            raise SweepError(f"Each cell needs at least some CPU and no negative GPUs (got --cell-cpus "
                             f"{self.cell_cpus}, --cell-gpus {self.cell_gpus}).", "cell_cpus")


@dataclass
class RunSettings(ExecutorFlags):
    """Settings every sweep shares: data, training budgets and sizes, evaluation size, where it runs."""

    dataset: str = field(default="fashion-mnist", metadata=help_text("'fashion-mnist' or a folder of images"))
    resolution: int = field(default=32, metadata=help_text("image side in pixels"))
    budget: Literal["steps", "seconds"] = field(
        default="seconds", metadata=help_text("equal optimiser steps or equal wall-clock seconds for every model"))
    train_budget: float = field(default=45, metadata=help_text("denoiser budget per model (steps or seconds)"))
    ae_budget: float = field(default=30, metadata=help_text("autoencoder budget per factor (steps or seconds)"))
    batch_size: int = field(default=64, metadata=help_text("denoiser batch size"))
    ae_batch_size: int = field(default=_AE.batch_size, metadata=help_text("autoencoder batch size"))
    learning_rate: float = field(default=2e-4, metadata=help_text("denoiser learning rate"))
    warmup_steps: int = field(default=0, metadata=help_text("denoiser learning-rate warm-up steps"))
    lr_schedule: Literal["constant", "cosine"] = field(default="constant", metadata=help_text(
        "denoiser learning rate after the warm-up: constant, or a cosine decay to 0 over the budget"))
    snr_gamma: float = field(default=0.0, metadata=help_text(
        "min-SNR-gamma loss weighting of the denoiser (e.g. 5; 0: the plain DDPM loss)"))
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata=help_text("training precision"))
    speedups: Speedups = speedups_field("fused optimizer and channels-last on a CPU; CUDA graphs on a GPU with a "
                                        "long enough budget")
    param_budget: int = field(default=1_000_000, metadata=help_text("UNet parameters, matched across factors"))
    # The autoencoders' defaults are the trainer's own (AutoencoderTrainConfig): a sweep's autoencoder is the
    # trainer's default one plus what its preset or the command line changes (first_stage_config()).
    ae_base_width: int = field(default=_AE.base_width, metadata=help_text("autoencoder base channel width"))
    ae_learning_rate: float = field(default=_AE.learning_rate, metadata=help_text("autoencoder learning rate"))
    ae_warmup_steps: int = field(default=_AE.warmup_steps, metadata=help_text("autoencoder learning-rate warm-up steps"))
    ae_lr_schedule: Literal["constant", "cosine"] = field(default=_AE.lr_schedule, metadata=help_text(
        "autoencoder learning rate after the warm-up: constant, or a cosine decay to 0 over the budget"))
    ae_disc_weight: float = field(default=_AE.disc_weight, metadata=help_text(
        "weight of the autoencoders' patch-GAN term (the paper's 0.5; 0 trains without it)"))
    ae_codebook_size: int = field(default=_AE.codebook_size, metadata=help_text("codes of the VQ autoencoders"))
    share_from: Path | None = field(default=None, metadata=help_text(
        "another run folder on the same data whose autoencoders and domain classifier this run uses "
        "(trained there when missing)"))
    bootstrap_resamples: int = field(default=BOOTSTRAP_RESAMPLES, metadata=help_text(
        "bootstrap resamples behind every FID's 95 % interval (0 skips the interval)"))
    max_images: int | None = field(default=10_000, metadata=help_text("train on the first N images only"))
    classifier_steps: int = field(default=500, metadata=help_text("training steps of the domain classifier"))
    fid_samples: int = field(default=500, metadata=help_text("samples for domain-feature FID/KID"))
    sample_batch: int = field(default=250, metadata=help_text("images per sampling batch (never changes the images)"))
    seed: int = field(default=0, metadata=help_text("seed of training and sampling"))
    device: str = field(default="auto", metadata=help_text("auto, cpu or cuda"))
    out: Path | None = field(default=None, metadata=help_text("run folder (default runs/PRESET)"))
    resume: bool = field(default=False, metadata=help_text("continue a killed run; finished measurements are kept"))
    checkpoint_every: int = field(default=500, metadata=help_text(
        "training steps between resumable checkpoints: a killed or retried cell redoes at most this many"))

    def validate(self) -> None:
        self.validate_executor()
        check_speedups(self.speedups)
        if not 1 <= self.checkpoint_every <= MAX_STEPS:
            raise SweepError(f"Checkpoints must come every 1 to {MAX_STEPS:,} steps (got {self.checkpoint_every}).",
                             "checkpoint_every")
        if self.budget not in ("steps", "seconds"):
            raise SweepError(f"The budget must be counted in 'steps' or 'seconds', not {self.budget!r}.", "budget")
        for name in ("train_budget", "ae_budget"):
            if not getattr(self, name) > 0:
                raise SweepError(f"The {name.replace('_', ' ')} must be positive (got {getattr(self, name)}).", name)
        for name in ("batch_size", "ae_batch_size", "param_budget", "ae_base_width", "classifier_steps", "sample_batch",
                     "ae_codebook_size"):
            whole_number(getattr(self, name), name, name.replace("_", " ").capitalize(), 1, 10**9)
        if self.max_images is not None:
            whole_number(self.max_images, "max_images", "The number of training images", 1, 10**9)
        whole_number(self.fid_samples, "fid_samples", "The number of FID samples", 2, 10**7)
        whole_number(self.seed, "seed", "Seed", 0, 2**31 - 1)
        whole_number(self.warmup_steps, "warmup_steps", "Warm-up steps", 0, 10**7)
        if self.lr_schedule not in ("constant", "cosine"):
            raise SweepError(f"Unknown learning-rate schedule {self.lr_schedule!r}; choose constant or cosine.",
                             "lr_schedule")
        if (problem := snr_gamma_problem(self.snr_gamma)) is not None:
            raise SweepError(problem, "snr_gamma")
        whole_number(self.bootstrap_resamples, "bootstrap_resamples", "The number of bootstrap resamples", 0, 100_000)

    def budget_kwargs(self, value: float) -> dict[str, Any]:
        """``max_steps`` or ``max_seconds`` for a trainer config, with the speed levers that spend it."""
        budget = {"max_steps": int(value)} if self.budget == "steps" else {"max_seconds": float(value)}
        return {**budget, "speedups": self.speedups}


def check_factors(factors: list[int], resolution: int) -> None:
    """Every factor by the core's one rule (known, divides the image, an autoencoder's latent at least 2x2),
    its message naming the sweep's flag."""
    if not factors:
        raise SweepError("Give at least one factor.", "factors")
    for f in factors:
        try:
            check_factor(f, resolution, autoencoder=True)
        except InputError as err:
            raise SweepError(str(err), "factors" if err.field == "factor" else err.field) from None


def check_ddim_steps(steps: list[int], field_name: str) -> None:
    """Every step count as the pipeline will check it (training uses 1,000 diffusion steps)."""
    for s in steps:
        whole_number(s, field_name, "DDIM steps", 1, 1000)


class SweepSettings(Protocol):
    """What a sweep kind's own settings provide (``CompressionSettings``, ``ConditioningSettings``)."""

    factors: list[int]

    def validate(self) -> None: ...


S = TypeVar("S", bound=SweepSettings)


@dataclass
class Sweep(Generic[S]):
    """One sweep: the shared run settings composed with a sweep kind's own settings (not inherited)."""

    preset: str
    run: RunSettings
    sweep: S

    def validate(self) -> None:
        self.run.validate()
        check_factors(self.sweep.factors, self.run.resolution)
        self.sweep.validate()

    @classmethod
    def from_preset(cls, presets: dict[str, tuple[RunSettings, S]], name: str) -> "Sweep[S]":
        """A fresh copy of a preset table's entry, run folder ``runs/NAME``."""
        if name not in presets:
            raise SweepError(f"Unknown preset {name!r}; choose one of {', '.join(presets)}.", "preset")
        run, sweep = presets[name]
        return cls(name, replace(run, out=Path("runs") / name), replace(sweep))

    def flat_config(self) -> dict[str, Any]:
        """All settings as one flat dict (what the environment record and the reports read)."""
        return {"preset": self.preset, **asdict(self.run), **asdict(self.sweep)}

