"""What a training run shows its callbacks after each step, and the callback that fires at chosen points."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers.training_utils import EMAModel

from .checkpoint import TrainState


@dataclass
class Snapshot:
    """What a callback sees after a training step (on the main process only).

    ``evaluating()`` yields the trained artefact (a pipeline, an autoencoder) with the EMA
    weights swapped in and in eval mode, then restores the training weights.
    """

    state: TrainState
    finished: bool
    _model: torch.nn.Module
    _ema: EMAModel | None
    _artefact: Any

    @contextmanager
    def evaluating(self) -> Iterator[Any]:
        if self._ema is not None:
            self._ema.store(self._model.parameters())
            self._ema.copy_to(self._model.parameters())
        self._model.eval()
        try:
            yield self._artefact
        finally:
            self._model.train()
            if self._ema is not None:
                self._ema.restore(self._model.parameters())


Callback = Callable[[Snapshot], None]


class Milestones:
    """Call ``fn(snapshot, point)`` once when training first reaches each target (steps or seconds).

    Points are numbered from 1. A run resumed past a target calls it at its first step; the
    end of training reaches every target left.
    """

    def __init__(self, targets: Sequence[float], unit: Literal["steps", "seconds"],
                 fn: Callable[[Snapshot, int], None]):
        self.targets, self.unit, self.fn = list(targets), unit, fn
        self._reached: set[int] = set()

    @classmethod
    def evenly(cls, budget: float, points: int, unit: Literal["steps", "seconds"],
               fn: Callable[[Snapshot, int], None]) -> "Milestones":
        """``points`` targets spread evenly up to ``budget`` (whole steps when counting steps)."""
        targets = [budget * i / points for i in range(1, points + 1)]
        return cls([int(t) for t in targets] if unit == "steps" else targets, unit, fn)

    def __call__(self, snapshot: Snapshot) -> None:
        progress = snapshot.state.step if self.unit == "steps" else snapshot.state.seconds
        for point, target in enumerate(self.targets, 1):
            if point not in self._reached and (progress >= target or snapshot.finished):
                self._reached.add(point)
                self.fn(snapshot, point)
