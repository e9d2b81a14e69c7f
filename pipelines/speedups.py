"""``--speedups auto|off``: which speed levers a training or sampling run pulls, decided in one place.

``off`` is the plain eager path. ``auto`` pulls what was measured to pay on this kind of device
(``python -m ldm_eval bench-train --speedups``, interleaved against ``off``; docs/speed.md):

* **CPU, training:** a fused AdamW (one kernel over all parameters instead of PyTorch's per-tensor
  loop on CPU: 1.05-1.07x) and channels-last convolutions (another 1.02-1.07x), on a 2-core AMD EPYC.
  ``torch.compile`` measured 1.04-1.06x for 70-150 s of compilation, so it never pays within the
  presets' 15-minute budgets and ``auto`` does not compile on a CPU.
* **CPU, sampling:** nothing: channels-last made DDIM sampling 0.56-0.71x as fast.
* **CUDA:** the zoo's 2 M-parameter UNets are launch-bound on an H200 (4-32 steps/s whatever the
  latent size), which is what CUDA graphs remove: ``torch.compile(mode="reduce-overhead")`` with
  fixed shapes, plus the fused AdamW and the allocator's peak read on the first steps only. Compiling
  costs about a minute, so a budget under ``MIN_COMPILE_SECONDS`` runs eager.

A lever changes the arithmetic's order, not the maths: ``auto`` and ``off`` train to the same loss
curve within noise and draw the same samples within float tolerance (tests/test_speedups.py).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import torch

from .errors import InputError

log = logging.getLogger(__name__)

Speedups = Literal["auto", "off"]
SPEEDUPS = ("auto", "off")
MIN_COMPILE_SECONDS = 600  # a budget shorter than this would lose too much of itself to compilation
MIN_COMPILE_STEPS = 5_000  # the same for a budget in steps (at tens of steps/s, minutes of training)

T = TypeVar("T")


def check_speedups(value: str) -> Speedups:
    if value not in SPEEDUPS:
        raise InputError(f"Unknown speedups setting {value!r}; choose auto (what pays on this device) or off "
                         "(the plain eager path).", "speedups")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class SpeedPlan:
    """The levers one run pulls, and why (``notes``, one per lever considered)."""

    setting: Speedups = "off"
    fused_optimizer: bool = False
    channels_last: bool = False
    compile_mode: str | None = None  # None: eager; else torch.compile's mode
    memory_every_step: bool = True  # CUDA: read the allocator's peak on every step (off: the first steps only)
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        levers = [name for name, on in (("fused AdamW", self.fused_optimizer), ("channels-last", self.channels_last),
                                         (f"torch.compile ({self.compile_mode})", self.compile_mode)) if on]
        return f"speedups {self.setting}: " + (", ".join(levers) if levers else "plain eager")


def training_plan(setting: str, device: torch.device | str, max_seconds: float | None = None,
                  max_steps: int | None = None) -> SpeedPlan:
    """The levers of a training run on ``device`` with this budget."""
    setting, device = check_speedups(setting), torch.device(device)
    if setting == "off":
        return SpeedPlan()
    if device.type != "cuda":
        return SpeedPlan("auto", fused_optimizer=True, channels_last=True, notes=(
            "no torch.compile: on a CPU it measured 1.04-1.06x for 70-150 s of compilation",))
    long_enough = (max_seconds or 0) >= MIN_COMPILE_SECONDS or (max_steps or 0) >= MIN_COMPILE_STEPS
    note = ("torch.compile reduce-overhead (CUDA graphs)" if long_enough else
            f"no torch.compile: the budget is under {MIN_COMPILE_SECONDS} s / {MIN_COMPILE_STEPS} steps, "
            "too short to win back about a minute of compilation")
    return SpeedPlan("auto", fused_optimizer=True, compile_mode="reduce-overhead" if long_enough else None,
                     memory_every_step=False, notes=(note,))


def sampling_plan(setting: str, device: torch.device | str, num_images: int, steps: int) -> SpeedPlan:
    """The levers of a sampling request: on CUDA, compiled denoiser calls when there are enough of them."""
    setting, device = check_speedups(setting), torch.device(device)
    if setting == "off":
        return SpeedPlan()
    if device.type != "cuda":
        return SpeedPlan("auto", notes=("nothing measured to pay for sampling on a CPU (channels-last: 0.56-0.71x)",))
    if num_images * steps < 2_000:
        return SpeedPlan("auto", notes=("no torch.compile: too few denoiser calls to win back the compilation",))
    return SpeedPlan("auto", compile_mode="reduce-overhead", notes=("torch.compile reduce-overhead (CUDA graphs)",))


def adamw(params, plan: SpeedPlan, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused when the plan says so (PyTorch's default on a CPU is a per-tensor loop)."""
    return torch.optim.AdamW(params, fused=True if plan.fused_optimizer else None, **kwargs)


def prepare_module(module: torch.nn.Module, plan: SpeedPlan) -> torch.nn.Module:
    """Channels-last weights and in-place compilation (``Module.compile``: state-dict keys, checkpoints and
    ``save_pretrained`` stay as they are). Returns the module."""
    if plan.channels_last:
        module.to(memory_format=torch.channels_last)
    if plan.compile_mode:
        module.compile(mode=plan.compile_mode)
    return module


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``Module.compile``) and not since put back to eager."""
    return getattr(module, "_compiled_call_impl", None) is not None


def is_compile_error(error: BaseException) -> bool:
    """Whether ``error`` came from compiling (dynamo, inductor, a missing C++ compiler), not from the model."""
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(error, TorchDynamoException) or type(error).__module__.startswith("torch._inductor")


def with_eager_fallback(fn: Callable[[], T], modules: list[torch.nn.Module]) -> T:
    """``fn()``; if compiling fails inside it, one warning naming the cause, the modules back to eager, and
    ``fn()`` again. ``fn`` must not have changed any state before the failure (a step fails in its forward)."""
    try:
        return fn()
    except Exception as error:  # noqa: BLE001 -- re-raised unless it is a compilation failure
        compiled = [m for m in modules if is_compiled(m)]
        if not compiled or not is_compile_error(error):
            raise
        cause = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        log.warning("torch.compile failed (%s: %s); continuing on the eager path.", type(error).__name__, cause)
        for module in compiled:
            module._compiled_call_impl = None  # Module.compile's hook: unset, calls are eager again
        return fn()
