"""What each CPU speed setting of the denoiser recipe buys, measured side by side (``bench-train --recipe``).

Each row times one setting against its baseline on the same UNet and batch, the two
interleaved round by round (a busy machine slows both alike; OpenMP spin-waiting on a
loaded 2-core machine can cost 4x, so only ratios measured together mean anything), and
checks that the variant computes the same thing (the largest difference of its outputs).
Figures are printed, never asserted: timings belong in benchmarks, not tests.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
from diffusers.training_utils import EMAModel

from pipelines.denoiser import DenoiserSpec, build_denoiser
from pipelines.first_stage import count_parameters
from pipelines.precision import bf16_speedup
from pipelines.training import device_name


def _interleaved(a: Callable[[], object], b: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately ``rounds`` times after one untimed call each."""
    a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def _max_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.float() - y.float()).abs().max())


def run_recipe_benchmark(side: int = 8, channels: int = 3, param_budget: int = 4_000_000, batch_size: int = 64,
                         rounds: int = 5) -> pd.DataFrame:
    """One row per setting: baseline and variant ms, the speed-up, the outputs' largest difference."""
    torch.manual_seed(0)
    unet = build_denoiser(DenoiserSpec(side=side, channels=channels, param_budget=param_budget))
    x = torch.randn(batch_size, channels, side, side)
    t = torch.randint(0, 1000, (batch_size,))
    rows = []

    def row(setting: str, baseline: str, variant: str, seconds: tuple[float, float], diff: float, note: str = ""):
        rows.append({"setting": setting, "baseline": baseline, "variant": variant,
                     "baseline_ms": 1000 * seconds[0], "variant_ms": 1000 * seconds[1],
                     "speedup": seconds[0] / seconds[1], "max_abs_diff": diff, "note": note})

    # EMA update: one Python loop over tensors against one fused (foreach) update
    loop = EMAModel(unet.parameters(), use_ema_warmup=True, power=0.75, foreach=False)
    fused = EMAModel(unet.parameters(), use_ema_warmup=True, power=0.75, foreach=True)
    row("EMA update", "per-tensor loop", "foreach", _interleaved(lambda: loop.step(unet.parameters()),
                                                               lambda: fused.step(unet.parameters()), rounds),
        max(_max_diff(a, b) for a, b in zip(loop.shadow_params, fused.shadow_params)))

    # sampling: the UNet's forward under no_grad against inference_mode
    def forward(mode) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with mode():
                return unet(x, t).sample
        return run

    unet.eval()
    row("sampling forward", "no_grad", "inference_mode", _interleaved(forward(torch.no_grad),
                                                                    forward(torch.inference_mode), rounds),
        _max_diff(forward(torch.no_grad)(), forward(torch.inference_mode)()))
    unet.train()

    # a training step (forward + backward) in the default memory format against channels_last
    def step(memory_format: torch.memory_format) -> Callable[[], torch.Tensor]:
        model = unet.to(memory_format=memory_format)
        inp = x.contiguous(memory_format=memory_format)

        def run() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            out = model(inp, t).sample
            out.float().pow(2).mean().backward()
            return out.detach()
        return run

    plain, last = step(torch.contiguous_format), step(torch.channels_last)
    seconds = _interleaved(plain, last, rounds)
    row("training step", "contiguous (NCHW)", "channels_last", seconds, _max_diff(plain(), last()))
    unet.to(memory_format=torch.contiguous_format)

    # bf16 autocast on this CPU: what precision.bf16_speedup decides from (a convolution), and a real training step
    def autocast_step(enabled: bool) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            unet.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                out = unet(x, t).sample
            out.float().pow(2).mean().backward()
            return out.detach()
        return run

    conv = bf16_speedup("cpu")
    row("training step", "fp32", "bf16 autocast", _interleaved(autocast_step(False), autocast_step(True), rounds),
        _max_diff(autocast_step(False)(), autocast_step(True)()),
        note=f"the trainer's probe convolution: bf16 {conv:.2f}x fp32 speed "
             f"({'enabled' if conv >= 1 else 'refused'} on this CPU)")
    table = pd.DataFrame(rows)
    table.attrs["header"] = (
        f"Denoiser recipe settings, {device_name('cpu')}, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads: UNet {count_parameters(unet):,} parameters on a {channels}x{side}x{side} latent, batch "
        f"{batch_size}; median of {rounds} interleaved rounds each")
    return table
