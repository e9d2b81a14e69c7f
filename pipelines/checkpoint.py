"""Atomic, resumable training checkpoints (safetensors for weights, JSON for state).

A checkpoint is a folder ``checkpoints/step-00000100`` written under a temporary name and
renamed into place, so a kill at any moment leaves either the old or the new checkpoint,
never half of one. accelerate's ``save_state`` writes in place and pickles RNG states; we
need neither because each step's randomness is derived from (seed, step).
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_folder, write_json_atomic
from .errors import InputError

CHECKPOINT_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(InputError):
    """A checkpoint that is missing, corrupt or belongs to another run."""


@dataclass
class TrainState:
    """What a resumed run needs besides weights: progress and the loss history."""

    step: int = 0
    seconds: float = 0.0
    images: int = 0
    losses: list[float] = field(default_factory=list)
    run_key: dict = field(default_factory=dict)  # settings that must match on resume
    # the last steps' durations (the first step of each call left out: warm-up), so that a resumed run
    # with a budget in seconds knows at once whether another step still fits
    step_times: list[float] = field(default_factory=list)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(
    out: Path,
    state: TrainState,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: EMAModel | None,
    keep: int = 2,
) -> Path:
    final = out / CHECKPOINT_DIR / f"step-{state.step:08d}"
    with atomic_folder(final) as tmp:
        save_file(_contiguous(model.state_dict()), tmp / "model.safetensors")
        if ema is not None:
            names = [n for n, _ in model.named_parameters()]
            save_file(_contiguous(dict(zip(names, ema.shadow_params))), tmp / "ema.safetensors")
            ema_meta = {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}
            write_json_atomic(tmp / "ema.json", ema_meta)
        # Optimizer moments are plain tensors; torch.save of our own file, read back with
        # weights_only=True, so nothing is unpickled beyond tensors and numbers.
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", asdict(state))
    for old in list_checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    root = out / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if _STEP_DIR.match(p.name))


def latest_checkpoint(out: Path) -> Path | None:
    found = list_checkpoints(out)
    return found[-1] if found else None


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema: EMAModel | None
) -> TrainState:
    """Restore weights, optimizer and EMA in place; return the saved progress."""
    try:
        state = TrainState(**json.loads((path / "state.json").read_text()))
        model.load_state_dict(load_file(path / "model.safetensors"))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        if ema is not None:
            shadow = load_file(path / "ema.safetensors")
            meta = json.loads((path / "ema.json").read_text())
            names = [n for n, _ in model.named_parameters()]
            device = next(model.parameters()).device
            ema.load_state_dict({**meta, "shadow_params": [shadow[n].to(device) for n in names]})
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, json.JSONDecodeError) as err:
        raise CheckpointError(f"Checkpoint '{path}' is corrupt or from another model: {err}") from err
    return state
