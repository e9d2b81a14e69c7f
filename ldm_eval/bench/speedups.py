"""``--speedups off`` against ``auto`` per factor, interleaved in one run, against this device's matmul peak.

Each factor's two contenders are copies of one freshly initialised UNet trained through the real
``pipelines.training.run_training`` on cached latents of real Fashion-MNIST images; their runs
alternate round by round, so a busy machine slows both alike and the speed-up holds. The FLOPs of
a step (forward and backward, counted by ``torch.utils.flop_counter``) over its median time, as a
share of a large fp32 matmul's FLOP/s measured in the same run, says how close a step is to what
the device can do at all. ``profile_step`` splits one step's time by kind of operator. Figures are
printed (and optionally written), never asserted.
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import torch
from diffusers import DDIMPipeline, DDIMScheduler, LDMPipeline
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ldm_eval.bench.train import untrained_pipeline
from pipelines.atomic import write_text_atomic
from pipelines.data import load_dataset
from pipelines.diffusion_training import (
    diffusion_loss,
    sample_cached_batch,
)
from pipelines.first_stage import check_factor
from pipelines.latent_cache import encode_dataset
from pipelines.loading import load_pipeline
from pipelines.sampling import timed_sampling
from pipelines.speedups import training_plan
from pipelines.training import (
    MEMORY_STEPS,
    TrainConfig,
    device_name,
    make_accelerator,
    run_training,
)

SETTINGS = ("off", "auto")
OP_KINDS = (  # (kind, substrings of aten operator names), first match wins
    ("convolution", ("conv",)),
    ("attention", ("attention", "softmax")),
    ("matmul / linear", ("mm", "linear", "matmul")),
    ("normalisation", ("norm",)),
    ("optimizer and EMA", ("_foreach", "adam", "lerp", "addcdiv")),
    ("activation", ("silu", "gelu", "sigmoid")),
)


def matmul_peak_gflops(device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large fp32 matrix product on ``device``: what its cores can do at their best."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    for _ in range(2):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup(factor: int, resolution: int, batch_size: int, param_budget: int, device: torch.device):
    """The denoiser of one factor and its loss on cached latents of 512 real images."""
    data = load_dataset("fashion-mnist", resolution, split="test").subset(512)
    pipe = untrained_pipeline(factor, resolution, param_budget, device)
    cache = encode_dataset(pipe.first_stage, data, device).to(device)

    def loss_fn(unet, generator, state=None):
        return diffusion_loss(unet, pipe.scheduler, sample_cached_batch(pipe.first_stage, cache, batch_size, generator),
                              generator)
    return pipe, loss_fn


def _median_step(unet, loss_fn, setting: str, batch_size: int, steps: int, device: torch.device) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(out=Path(tmp), max_steps=MEMORY_STEPS + steps, batch_size=batch_size, progress=False,
                          checkpoint_every=10**6, cpu=device.type == "cpu", speedups=setting)
        result = run_training(unet, loss_fn, cfg, make_accelerator(cfg), use_ema=True, run_key={})
    return statistics.median(result.step_seconds[MEMORY_STEPS:])  # past the first steps' memory accounting


def _step_gflop(unet, loss_fn, device: torch.device) -> float:
    generator = torch.Generator(device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        loss_fn(unet, generator).backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def benchmark_factor(factor: int, resolution: int, batch_size: int, steps: int, rounds: int, param_budget: int,
                     device: torch.device, peak_gflops: float) -> list[dict]:
    """One row per setting: steps/s, images/s, speed-up over ``off`` and share of the matmul peak."""
    pipe, loss_fn = _setup(factor, resolution, batch_size, param_budget, device)
    gflop = _step_gflop(pipe.unet, loss_fn, device)
    unets = {setting: copy.deepcopy(pipe.unet) for setting in SETTINGS}  # the same start; layouts stay apart
    seconds: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for _ in range(rounds):
        for setting in SETTINGS:
            seconds[setting].append(_median_step(unets[setting], loss_fn, setting, batch_size, steps, device))
    base = statistics.median(seconds["off"])
    rows = []
    for setting in SETTINGS:
        step = statistics.median(seconds[setting])
        rows.append({
            "resolution": resolution, "factor": factor,
            "latent": "x".join(map(str, pipe.first_stage.latent_shape(resolution))), "batch": batch_size,
            "speedups": setting, "levers": training_plan(setting, device, max_seconds=900).describe().split(": ")[1],
            "steps_per_s": 1 / step, "images_per_s": batch_size / step, "speedup": base / step,
            "gflop_per_step": gflop, "gflop_per_s": gflop / step, "share_of_matmul_peak": gflop / step / peak_gflops,
        })
    return rows


def run_speedups_benchmark(configs: list[tuple[int, int, int]], steps: int = 10, rounds: int = 3,
                           param_budget: int = 2_000_000, device: torch.device | None = None,
                           out: Path | None = None) -> pd.DataFrame:
    """``configs``: (resolution, factor, batch size) triples; the table, also written to ``out`` as Markdown."""
    device = device or torch.device("cpu")
    peak = matmul_peak_gflops(device)
    rows = []
    for resolution, factor, batch in configs:
        rows += benchmark_factor(factor, resolution, batch, steps, rounds, param_budget, device, peak)
        print(f"f = {factor} at {resolution} px: auto {rows[-1]['speedup']:.2f}x off", flush=True)
    table = pd.DataFrame(rows)
    header = (f"Training steps, `--speedups off` against `auto`, interleaved ({rounds} rounds of {steps} timed steps "
              f"each, median), {device_name(str(device))}, torch {torch.__version__}; UNets of ~{param_budget:,} "
              f"parameters on cached KL latents of Fashion-MNIST; fp32 matmul peak {peak:.0f} GFLOP/s measured in "
              "the same run; GFLOP per step: forward and backward, counted by torch.utils.flop_counter.")
    text = header + "\n\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n"
    if out is not None:
        write_text_atomic(Path(out), text)
    print(text)
    return table


def run_speedups_and_profiles(resolutions: list[int], factors: list[int], batch_size: int, steps: int,
                              param_budget: int, device: torch.device, out: Path | None, speedups: bool = True,
                              profiles: bool = False) -> None:
    """``bench-train --speedups`` / ``--profile``: the table of every (resolution, factor) and each one's
    profile; files under ``out`` when given."""
    configs = [(r, f, batch_size) for r in resolutions for f in factors]
    for resolution, factor, _ in configs:
        check_factor(factor, resolution)
    if speedups:
        run_speedups_benchmark(configs, steps, param_budget=param_budget, device=device,
                               out=None if out is None else Path(out) / "train_speedups.md")
    for resolution, factor, batch in configs if profiles else []:
        profile_step(factor, resolution, batch, param_budget, device,
                     out=None if out is None else Path(out) / f"train_profile_{resolution}px_f{factor}.md")


def _kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in OP_KINDS if any(k in lowered for k in keys)), "other operators")


def profile_step(factor: int, resolution: int, batch_size: int, param_budget: int = 2_000_000,
                 device: torch.device | None = None, steps: int = 3, out: Path | None = None) -> pd.DataFrame:
    """Where one eager training step's time goes, by kind of operator (the profiler's self time per aten op),
    and the time outside every operator (the profiled step's wall time less the operators')."""
    device = device or torch.device("cpu")
    pipe, loss_fn = _setup(factor, resolution, batch_size, param_budget, device)
    unet = pipe.unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step(i: int) -> None:
        loss_fn(unet, torch.Generator(device).manual_seed(i)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for i in range(2):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(i)
    profiled_ms = (time.perf_counter() - start) * 1000 / steps
    per_kind: Counter[str] = Counter()
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            per_kind[_kind(event.key)] += event.self_cpu_time_total / 1000 / steps
    rows = [{"kind": k, "ms_per_step": v, "share": v / profiled_ms} for k, v in per_kind.most_common()]
    rest = profiled_ms - sum(per_kind.values())
    rows.append({"kind": "outside operators (Python, dispatch, the profiler)", "ms_per_step": rest,
                 "share": rest / profiled_ms})
    table = pd.DataFrame(rows)
    text = (f"One eager training step of the f = {factor} denoiser at {resolution} px, batch {batch_size}, "
            f"{device_name(str(device))}: {wall_ms:.1f} ms, {profiled_ms:.1f} ms under the profiler; self time of "
            f"the aten operators by kind (optimizer: its named kernels only, its other arithmetic is in 'other')"
            f"\n\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    if out is not None:
        write_text_atomic(Path(out), text)
    print(text)
    return table


def sampling_against_stock(folder: Path, n: int, steps: int, device: torch.device, rounds: int = 3,
                           out: Path | None = None) -> pd.DataFrame:
    """Images/s of DDIM sampling ``n`` images of one model folder: our pipeline (``--speedups off`` and ``auto``)
    against stock diffusers (``LDMPipeline``, or ``DDIMPipeline`` in pixel space) on the very same modules,
    interleaved round by round; and one denoiser call's FLOPs against the matmul peak."""
    pipe = load_pipeline(folder, device=device)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    stock = (DDIMPipeline(unet=pipe.unet, scheduler=scheduler) if pipe.vae is None else
             LDMPipeline(vqvae=pipe.vae, unet=pipe.unet, scheduler=scheduler))
    stock.set_progress_bar_config(disable=True)
    def stock_seconds() -> float:
        start = time.perf_counter()
        stock(batch_size=n, num_inference_steps=steps, eta=0.0, output_type="np",
              generator=torch.Generator(device).manual_seed(0))
        return time.perf_counter() - start

    contenders = {  # each returns its sampling seconds (ours: without the untimed memory pass off CUDA)
        "ours, --speedups off": lambda: timed_sampling(pipe, n, steps, batch_size=n, speedups="off").seconds,
        "ours, --speedups auto": lambda: timed_sampling(pipe, n, steps, batch_size=n, speedups="auto").seconds,
        "stock diffusers": stock_seconds,
    }
    peak = matmul_peak_gflops(device)
    shape = (n, *pipe.first_stage.latent_shape(pipe.resolution))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        pipe.unet(torch.randn(shape, device=device), torch.full((n,), 500, device=device))
    call_gflop = counter.get_total_flops() / 1e9
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for name, run in contenders.items():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in contenders.items():
            seconds[name].append(run())
    stock_s = statistics.median(seconds["stock diffusers"])
    rows = [{"sampler": name, "images_per_s": n / statistics.median(s), "vs_stock": stock_s / statistics.median(s),
             "denoiser_share_of_matmul_peak": call_gflop * steps / statistics.median(s) / peak}
            for name, s in seconds.items()]
    table = pd.DataFrame(rows)
    text = (f"DDIM {steps} steps, {n} images in one batch, `{folder.name}`, {device_name(str(device))}, interleaved "
            f"({rounds} rounds, median; decoding included); one denoiser call {call_gflop:.2f} GFLOP, fp32 matmul "
            f"peak {peak:.0f} GFLOP/s measured in the same run\n\n" + table.to_markdown(index=False, floatfmt=".3g")
            + "\n")
    if out is not None:
        write_text_atomic(Path(out), text)
    print(text)
    return table
