"""What a training run did and on what: the ``training.json`` beside every trained model's weights."""
from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from .atomic import write_json_atomic
from .records import RecordError


@dataclass
class TrainingSummary:
    """What a training run did and on what: returned by the trainers and written to ``training.json``.

    Every model folder carries one, so the zoo export and the demo read a model's facts here.
    """

    factor: int
    kind: str  # "pixel", "kl" or "vq"
    dataset: str
    resolution: int
    latent_shape: list[int]
    ae_params: int
    train_steps: int
    train_seconds: float
    train_images: int
    train_images_per_s: float
    final_loss: float | None
    batch_size: int
    num_processes: int
    device: str
    device_name: str
    mixed_precision: str
    seed: int
    budget: dict[str, float | None]  # {"max_steps": ..., "max_seconds": ...}
    peak_mem_train_mb: float | None = None
    memory_method: str = "unavailable"
    unet_params: int = 0  # diffusion models
    scaling_factor: float | None = None  # autoencoders: 1 / std of the training latents
    condition: str = "none"
    condition_params: int = 0
    condition_dropout: float | None = None
    losses: str | None = None  # autoencoders: the terms that trained it, e.g. "L1 + KL(1e-06) + PatchGAN(...)"
    codebook_size: int | None = None  # VQ autoencoders
    speedups: str | None = None  # the speed levers it trained with (pipelines.speedups); None: before they existed
    resumed_at_step: int = 0  # the last training call continued a checkpoint of this step (0: from scratch)

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / "training.json", asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "TrainingSummary":
        """A ``training.json`` of any generation: the first layout lacks only keys that have defaults here."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RecordError(f"Cannot read the training summary '{path}': {err}") from err
        missing = [f.name for f in fields(cls)
                   if f.default is MISSING and f.default_factory is MISSING and f.name not in raw]
        if missing:
            raise RecordError(f"'{path}' lacks {missing}: it is not a training summary.")
        known = {f.name: raw[f.name] for f in fields(cls) if f.name in raw}
        known["condition"] = known.get("condition") or "none"  # the first layout may write null
        return cls(**known)
