"""Training speed and memory for every factor, measured side by side in one run.

Every configuration trains through the same ``pipelines.training.run_training`` as a real
run, on real Fashion-MNIST images, with UNets matched in parameter count. Figures are
printed (and optionally written), never asserted: timings belong in benchmarks, not tests.
"""
from __future__ import annotations

import multiprocessing
import statistics
import tempfile
from pathlib import Path

import pandas as pd
import torch

from pipelines.atomic import atomic_path, write_text_atomic
from pipelines.data import load_dataset
from pipelines.diffusion_training import (
    build_diffusion_pipeline,
    diffusion_loss,
    sample_cached_batch,
)
from pipelines.first_stage import (
    AutoencoderSpec,
    FirstStageError,
    build_autoencoder,
    check_factor,
    set_scaling_factor,
)
from pipelines.images import uint8_to_signed
from pipelines.latent_cache import encode_dataset
from pipelines.pipeline import resolve_device
from pipelines.training import (
    MEMORY_STEPS,
    TrainConfig,
    device_name,
    make_accelerator,
    run_training,
)

WARMUP_STEPS = MEMORY_STEPS  # untimed: warm-up costs, and off CUDA the memory accounting's


def _train_speed(pipe, loss_fn, batch_size: int, steps: int, device: torch.device) -> dict:
    """Median images/s over ``steps`` timed steps after warm-up, and the peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            out=Path(tmp), max_steps=WARMUP_STEPS + steps, batch_size=batch_size, checkpoint_every=10**6,
            progress=False, cpu=device.type == "cpu",
        )
        result = run_training(pipe.unet, loss_fn, cfg, make_accelerator(cfg), use_ema=True, run_key={})
    median = statistics.median(result.step_seconds[WARMUP_STEPS:])  # skips the steps whose memory is measured off CUDA
    peak = result.peak_memory
    return {"images_per_s": batch_size / median, "peak_mb": None if peak is None else peak.peak_mb,
            "memory_method": "unavailable" if peak is None else f"{peak.method}, largest training step"}


def untrained_pipeline(factor: int, resolution: int, param_budget: int, device: torch.device):
    """A seeded, untrained Fashion-MNIST pipeline of one factor: a KL autoencoder (scaling factor 1) and a
    denoiser matched to ``param_budget``, on ``device`` (what every training benchmark times)."""
    torch.manual_seed(0)
    vae = None
    if factor > 1:
        vae = build_autoencoder(AutoencoderSpec(factor=factor, kind="kl", image_channels=1, resolution=resolution))
        set_scaling_factor(vae, 1.0)
    return build_diffusion_pipeline(vae, resolution, 1, param_budget).to(device)


def benchmark_config(factor: int, resolution: int, batch_size: int, steps: int, device: str,
                     param_budget: int = 1_000_000, n_images: int = 256) -> dict:
    device = torch.device(device)
    data = load_dataset("fashion-mnist", resolution, split="test").subset(n_images)
    data.images = data.images.clone()  # drop the rest of the test split before measuring memory
    pipe = untrained_pipeline(factor, resolution, param_budget, device)
    vae = pipe.vae
    stage = pipe.first_stage
    cache = encode_dataset(stage, data, device).to(device)
    images = data.images.to(device)
    scheduler = pipe.scheduler

    def cached(unet, generator, state=None):
        return diffusion_loss(unet, scheduler, sample_cached_batch(stage, cache, batch_size, generator), generator)

    def on_the_fly(unet, generator, state=None):
        index = torch.randint(0, len(images), (batch_size,), generator=generator, device=device)
        latents = stage.encode(uint8_to_signed(images[index]), generator)
        return diffusion_loss(unet, scheduler, latents, generator)

    counts = pipe.parameter_counts()
    row = {
        "resolution": resolution, "factor": factor, "latent_shape": "x".join(map(str, stage.latent_shape(resolution))),
        "unet_params": counts["unet"], "ae_params": counts["vae"], "batch_size": batch_size,
    }
    fast = _train_speed(pipe, cached, batch_size, steps, device)
    row.update(train_images_per_s=fast["images_per_s"], peak_mem_train_mb=fast["peak_mb"],
               memory_method=fast["memory_method"])
    if vae is not None:
        slow = _train_speed(pipe, on_the_fly, batch_size, steps, device)
        row.update(on_the_fly_images_per_s=slow["images_per_s"],
                   cache_speedup=fast["images_per_s"] / slow["images_per_s"])
    return row


def run_train_benchmark(resolutions: list[int], factors: list[int], batch_size: int, steps: int,
                        device: str = "auto", out: Path | None = None) -> pd.DataFrame:
    dev = resolve_device(device)
    rows = []
    # Each configuration runs in a fresh process, so none inherits another's heap, caches or threads.
    spawn = multiprocessing.get_context("spawn")
    for resolution in resolutions:
        for factor in factors:
            try:
                check_factor(factor, resolution, autoencoder=True)
            except FirstStageError as error:  # the default grid holds f = 32 at 32 px: say why it is skipped
                print(f"skipped: {error}", flush=True)
                continue
            with spawn.Pool(1) as pool:
                row = pool.apply(benchmark_config, (factor, resolution, batch_size, steps, str(dev)))
            rows.append(row)
            print(f"f={factor:>2} {resolution}px: {row['train_images_per_s']:.1f} img/s", flush=True)
    table = pd.DataFrame(rows)
    for resolution in resolutions:  # speed-up over pixel space at the same resolution
        same = table["resolution"] == resolution
        pixel = table.loc[same & (table["factor"] == 1), "train_images_per_s"]
        if len(pixel):
            table.loc[same, "speedup_vs_pixel"] = table.loc[same, "train_images_per_s"] / float(pixel.iloc[0])
    header = (f"Training throughput, {device_name(str(dev))}, torch {torch.__version__}, batch {batch_size}, "
              f"median of {steps} steps after {WARMUP_STEPS} warm-up steps, KL autoencoders, "
              f"UNets matched at ~1.0 M parameters, Fashion-MNIST, --speedups auto (the trainer's default)")
    shown = table.drop(columns=["memory_method"]).round(2)
    print(header)
    print(f"memory: {table['memory_method'].iloc[0]}")
    print(shown.to_markdown(index=False))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "train_benchmark.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_text_atomic(out / "train_benchmark.md",
                          f"{header}\n\nmemory: {table['memory_method'].iloc[0]}\n\n{shown.to_markdown(index=False)}\n")
    return table
