"""The training loop shared by the first-stage and the diffusion trainers, built on accelerate.

:func:`run_training` owns the loop: the budget (steps or wall-clock seconds), the progress
bar, EMA, peak memory, atomic checkpoints, resuming, and callbacks -- an evaluation at
chosen points of training (:class:`Milestones`, e.g. the paper's Fig. 6 FID along training)
or any progress hook -- so a caller measures inside one run instead of restarting training
per point. Each step draws its batch and noise from a generator seeded by (seed, step,
rank), so a run resumed from a checkpoint continues exactly as the uninterrupted run would
have. The trainers (:mod:`pipelines.autoencoder_training`, :mod:`pipelines.diffusion_training`)
supply the model and its loss, and return what they trained, in memory, with a typed
:class:`~pipelines.training_summary.TrainingSummary` (also written to ``training.json``).
"""
from __future__ import annotations

import logging
import math
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from .callbacks import Callback, Snapshot
from .checkpoint import (
    CheckpointError,
    TrainState,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageDataset, load_dataset
from .errors import InputError
from .memory import MemoryReading, PeakMemory, Stopwatch, measures_without_overhead
from .speedups import (
    SpeedPlan,
    Speedups,
    adamw,
    check_speedups,
    prepare_module,
    training_plan,
    with_eager_fallback,
)
from .training_summary import TrainingSummary

log = logging.getLogger(__name__)

MixedPrecision = Literal["no", "fp16", "bf16"]
MAX_STEPS = 10_000_000
MEMORY_STEPS = 2  # off CUDA, memory is measured on the first steps only: the accounting slows the steps it watches


class TrainingError(InputError):
    """A training request that cannot run as asked (``field`` names the setting at fault)."""


@dataclass
class TrainConfig:
    """Settings common to every training run."""

    out: Path
    max_steps: int | None = None
    max_seconds: float | None = None
    batch_size: int = 64
    learning_rate: float = 2e-4
    checkpoint_every: int = 500
    seed: int = 0
    resume: bool = False
    mixed_precision: MixedPrecision = "no"
    cpu: bool = False
    progress: bool = True
    max_images: int | None = None  # train on the first N images only (quick runs, tests)
    ema_power: float = 0.75  # diffusers' example: inv_gamma 1, power 3/4, max decay 0.9999
    warmup_steps: int = 0  # learning rate rises linearly over these first steps
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 0 over the budget
    speedups: Speedups = "auto"  # the speed levers (pipelines.speedups); never part of a run's identity

    def validate(self) -> None:
        if (self.max_steps is None) == (self.max_seconds is None):
            raise TrainingError("Give exactly one budget: a number of steps (max_steps) or of seconds (max_seconds).",
                                "max_steps")
        if self.max_steps is not None and not 1 <= self.max_steps <= MAX_STEPS:
            raise TrainingError(f"The step budget must be from 1 to {MAX_STEPS} (got {self.max_steps}).", "max_steps")
        if self.max_seconds is not None and not 0 < self.max_seconds <= 30 * 86400:
            raise TrainingError(f"The time budget must be positive and at most 30 days (got {self.max_seconds} s).",
                                "max_seconds")
        if not 1 <= self.checkpoint_every <= MAX_STEPS:
            raise TrainingError(f"Checkpoints must come every 1 to {MAX_STEPS} steps (got {self.checkpoint_every}).",
                                "checkpoint_every")
        if not 1 <= self.batch_size <= 65536:
            raise TrainingError(f"Batch size must be from 1 to 65536 (got {self.batch_size}).", "batch_size")
        if not 0 <= self.warmup_steps <= MAX_STEPS:
            raise TrainingError(f"Warm-up steps must be from 0 to {MAX_STEPS} (got {self.warmup_steps}).",
                                "warmup_steps")
        if self.lr_schedule not in ("constant", "cosine"):
            raise TrainingError(f"Unknown learning-rate schedule {self.lr_schedule!r}; choose constant or cosine.",
                                "lr_schedule")
        check_speedups(self.speedups)
        if self.max_images is not None and self.max_images < 1:
            raise TrainingError(f"The number of training images must be positive (got {self.max_images}).",
                                "max_images")


@dataclass
class TrainResult:
    model: torch.nn.Module
    ema: EMAModel | None
    state: TrainState
    device: str
    num_processes: int
    step_seconds: list[float] = field(default_factory=list)  # this process's steps (benchmarks)
    peak_memory: MemoryReading | None = None  # the largest of the training steps' peaks
    resumed_at_step: int = 0  # the checkpoint's step this call continued from (0: it began from scratch)
    speed_plan: SpeedPlan = field(default_factory=SpeedPlan)

    @property
    def images_per_second(self) -> float:
        return self.state.images / self.state.seconds if self.state.seconds > 0 else float("nan")


# (model, the step's generator, progress so far) -> loss. Progress (step, seconds) lets an
# objective switch terms on late (the first stage's discriminator) from checkpointed state.
LossFn = Callable[[torch.nn.Module, torch.Generator, TrainState], torch.Tensor]


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """All randomness of one step on one rank: reproducible from (seed, step, rank) alone."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 4099 + rank)


def learning_rate_scale(cfg: TrainConfig, state: TrainState) -> float:
    """The share of the peak learning rate at this point of training: warm-up, then constant or cosine.

    Written here rather than taken from ``diffusers.optimization.get_scheduler`` because a
    wall-clock budget does not know its step count in advance (the cosine follows the share
    of the budget spent), and because a value derived from checkpointed progress alone keeps
    resuming exact without a scheduler state to save.
    """
    scale = min(1.0, (state.step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine":
        spent = state.step / cfg.max_steps if cfg.max_steps is not None else state.seconds / float(cfg.max_seconds or 1)
        scale *= 0.5 * (1.0 + math.cos(math.pi * min(1.0, spent)))
    return scale


def _start_state(cfg: TrainConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMAModel | None,
                 run_key: dict, accelerator: Accelerator) -> TrainState:
    """A fresh state, or the latest checkpoint's (loaded into model, optimizer and EMA) when resuming."""
    checkpoint = latest_checkpoint(cfg.out)
    if checkpoint is not None and not cfg.resume:
        raise TrainingError(
            f"'{cfg.out}' already holds checkpoints (latest {checkpoint.name}): resume the run or choose a new "
            "output folder.", "resume"
        )
    model.to(accelerator.device)
    if ema is not None:
        ema.to(accelerator.device)
    if checkpoint is None:
        return TrainState(run_key=run_key)
    state = load_checkpoint(checkpoint, model, optimizer, ema)
    if state.run_key != run_key:
        raise CheckpointError(
            f"Checkpoint {checkpoint} was made with other settings ({state.run_key}); "
            f"this run asks for {run_key}. Use a new output folder."
        )
    log.info("Resuming from %s (step %d).", checkpoint, state.step)
    return state


def _progress_bar(cfg: TrainConfig, state: TrainState, accelerator: Accelerator) -> tqdm:
    return tqdm(
        total=cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.max_seconds),
        initial=state.step if cfg.max_steps is not None else int(state.seconds),
        unit="step" if cfg.max_steps is not None else "s",
        desc=f"Training {cfg.out.name}",
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )


def _budget_spent(cfg: TrainConfig, state: TrainState, recent: list[float], accelerator: Accelerator) -> bool:
    """Whether to stop; ``recent``: the last steps' durations."""
    if cfg.max_steps is not None:
        return state.step >= cfg.max_steps
    # Stop when the next step, as long as the recent ones (median of the last 10; the first step
    # carries one-time warm-up costs and predicts nothing), would overrun the budget: the model
    # then trains within about one step's time *under* the budget instead of up to a step over it.
    next_step = statistics.median(recent) if recent else 0.0
    done = torch.tensor(float(state.seconds + next_step > cfg.max_seconds), device=accelerator.device)
    return bool(accelerator.reduce(done, reduction="max").item())  # every rank stops together


def _optimizer_step(wrapped: torch.nn.Module, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
                    peak_rates: list[float], ema: EMAModel | None, cfg: TrainConfig, state: TrainState,
                    accelerator: Accelerator, measure_memory: bool, model: torch.nn.Module
                    ) -> tuple[torch.Tensor, MemoryReading]:
    """One step on this rank: its loss and its time (and its peak memory if ``measure_memory``)."""
    with (PeakMemory if measure_memory else Stopwatch)(accelerator.device) as memory:
        generator = step_generator(cfg.seed, state.step, accelerator.process_index, accelerator.device)
        scale = learning_rate_scale(cfg, state)
        for group, peak_rate in zip(optimizer.param_groups, peak_rates):
            group["lr"] = peak_rate * scale
        with accelerator.autocast():  # a failed compilation falls back to eager with a warning, never a crash
            loss = with_eager_fallback(lambda: loss_fn(wrapped, generator, state), [model])
        if not torch.isfinite(loss):
            raise TrainingError(f"Loss became {loss.item()} at step {state.step}; lower the learning rate.",
                                "learning_rate")
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(wrapped).parameters())
    return loss, memory.reading


def _notify(callbacks: Sequence[Callback], snapshot: Callable[[], Snapshot], accelerator: Accelerator) -> None:
    """Every callback sees the snapshot on the main process; the other ranks wait for them."""
    if callbacks and accelerator.is_main_process:
        taken = snapshot()
        for callback in callbacks:
            callback(taken)
    if callbacks:
        accelerator.wait_for_everyone()


def _save(cfg: TrainConfig, state: TrainState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
          ema: EMAModel | None, accelerator: Accelerator, unless_saved: bool = False) -> None:
    """A checkpoint of this step, written by the main process (``unless_saved``: only if not there yet)."""
    last = list_checkpoints(cfg.out) if unless_saved else []
    if accelerator.is_main_process and not (last and last[-1].name == f"step-{state.step:08d}"):
        save_checkpoint(cfg.out, state, model, optimizer, ema)
    accelerator.wait_for_everyone()


def run_training(
    model: torch.nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    accelerator: Accelerator,
    use_ema: bool,
    run_key: dict,
    callbacks: Sequence[Callback] = (),
    artefact: Any = None,
    param_groups: list[dict[str, Any]] | None = None,
) -> TrainResult:
    """Optimise ``model`` on ``loss_fn`` within the budget, checkpointing atomically.

    After every step (and once more when the budget is spent) each callback gets a
    :class:`Snapshot` on the main process; ``artefact`` is what ``Snapshot.evaluating``
    yields (the pipeline being trained, say). Time spent in callbacks is not training
    time: it counts neither toward the budget nor in the throughput. ``param_groups``
    (AdamW groups, e.g. the discriminator's own betas) replaces "all parameters alike".
    """
    cfg.validate()
    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = training_plan(cfg.speedups, accelerator.device, cfg.max_seconds, cfg.max_steps)
    optimizer = adamw(param_groups or model.parameters(), plan, lr=cfg.learning_rate, weight_decay=0.0)
    peak_rates = [group["lr"] for group in optimizer.param_groups]
    # foreach: one fused update over all tensors instead of a Python loop (faster, the same values)
    ema = (EMAModel(model.parameters(), use_ema_warmup=True, inv_gamma=1.0, power=cfg.ema_power, foreach=True)
           if use_ema else None)
    state = _start_state(cfg, model, optimizer, ema, run_key, accelerator)
    prepare_module(model, plan)  # after loading: a checkpoint's tensors are copied into whatever layout
    resumed_at = state.step
    model.train()
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    per_step_images = cfg.batch_size * accelerator.num_processes
    bar = _progress_bar(cfg, state, accelerator)
    resumed_times = list(state.step_times)  # a resumed run's estimate until its own steps are timed
    step_seconds: list[float] = []

    def recent_step_times() -> list[float]:
        return (resumed_times + step_seconds[1:])[-10:]

    def snapshot(done: bool) -> Callable[[], Snapshot]:
        return lambda: Snapshot(state, done, accelerator.unwrap_model(wrapped), ema, artefact)

    smooth = None
    peak: MemoryReading | None = None
    while not _budget_spent(cfg, state, recent_step_times(), accelerator):
        measure = _measures_every_step(accelerator.device, plan) or len(step_seconds) < MEMORY_STEPS
        loss, reading = _optimizer_step(wrapped, loss_fn, optimizer, peak_rates, ema, cfg, state, accelerator, measure,
                                        model)
        if reading.peak_mb is not None and (peak is None or reading.peak_mb > peak.peak_mb):
            peak = reading
        value = float(accelerator.reduce(loss.detach(), reduction="mean").item())
        state.step += 1
        state.seconds += reading.seconds
        step_seconds.append(reading.seconds)
        state.images += per_step_images
        state.losses.append(value)
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        bar.update(1 if cfg.max_steps is not None else int(state.seconds) - bar.n)
        bar.set_postfix(loss=f"{smooth:.4f}", img_s=f"{per_step_images / max(reading.seconds, 1e-9):.0f}")
        _notify(callbacks, snapshot(False), accelerator)  # before the checkpoint: it never runs ahead of the evaluations
        state.step_times = recent_step_times()
        if state.step % cfg.checkpoint_every == 0:
            _save(cfg, state, accelerator.unwrap_model(wrapped), optimizer, ema, accelerator)
    bar.close()
    _notify(callbacks, snapshot(True), accelerator)
    model = accelerator.unwrap_model(wrapped)
    _save(cfg, state, model, optimizer, ema, accelerator, unless_saved=True)
    model.eval()
    return TrainResult(model, ema, state, str(accelerator.device), accelerator.num_processes, step_seconds, peak,
                       resumed_at_step=resumed_at, speed_plan=plan)


def _measures_every_step(device: torch.device | str, plan: SpeedPlan) -> bool:
    """Whether every step's memory is read (CUDA without speedups: the allocator's counters cost a sync only)."""
    return measures_without_overhead(device) and plan.memory_every_step


def load_training_data(dataset: str, resolution: int, channels: int | None, max_images: int | None) -> ImageDataset:
    data = load_dataset(dataset, resolution, channels, split="train")
    return data.subset(max_images) if max_images is not None else data


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An Accelerator for this training; one process may train several models (an autoencoder in fp32,
    then a denoiser in bf16), and accelerate keeps the first one's precision process-wide unless its
    state is reset. The distributed state (``PartialState``, set by ``accelerate launch``) is kept."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != cfg.mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)


def summarize(result: TrainResult, cfg: TrainConfig, **facts: Any) -> TrainingSummary:
    """The :class:`~pipelines.training_summary.TrainingSummary` of a finished run (``facts``: what the model is)."""
    peak = result.peak_memory
    return TrainingSummary(
        **facts,
        train_steps=result.state.step, train_seconds=round(result.state.seconds, 3),
        train_images=result.state.images, train_images_per_s=round(result.images_per_second, 3),
        final_loss=result.state.losses[-1] if result.state.losses else None, batch_size=cfg.batch_size,
        num_processes=result.num_processes, device=result.device, device_name=device_name(result.device),
        mixed_precision=cfg.mixed_precision, seed=cfg.seed,
        budget={"max_steps": cfg.max_steps, "max_seconds": cfg.max_seconds},
        peak_mem_train_mb=None if peak is None else round(peak.peak_mb, 1),
        memory_method="unavailable" if peak is None else f"{peak.method}, {_memory_scope(result)}",
        resumed_at_step=result.resumed_at_step, speedups=result.speed_plan.describe(),
    )


def _memory_scope(result: TrainResult) -> str:
    if _measures_every_step(result.device, result.speed_plan):
        return "largest training step"
    return f"largest training step of the first {MEMORY_STEPS} (the others run without the accounting's overhead)"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
