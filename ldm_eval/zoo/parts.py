"""The zoo's models, part by part: which model each ``build-zoo`` part trains, and which part made a model."""
from __future__ import annotations

from dataclasses import dataclass

from ldm_eval.presets import ZOO_PRESETS, ZooPart
from ldm_eval.sweeps.compression import CompressionSettings


@dataclass(frozen=True)
class ZooModel:
    """One model of a part, as ``--cells PART:MODEL`` names it."""

    part: str
    model: str  # the model's folder name in the part's run, as exported: ldm-kl-f4, dm-f1, ldm-kl-f8-class
    kind: str  # kl, vq or pixel
    factor: int
    condition: str | None = None

    @property
    def id(self) -> str:
        return f"{self.part}:{self.model}"


def part_models(part: ZooPart) -> list[ZooModel]:
    """The part's models in its own order."""
    s = part.settings
    if isinstance(s, CompressionSettings):
        pairs = list(dict.fromkeys(("pixel", 1) if f == 1 else (k, f) for k in s.kinds for f in s.factors))
        return [ZooModel(part.name, "dm-f1" if k == "pixel" else f"ldm-{k}-f{f}", k, f) for k, f in pairs]
    return [ZooModel(part.name, f"dm-f1-{c}" if f == 1 else f"ldm-{s.kind}-f{f}-{c}", "pixel" if f == 1 else s.kind,
                     f, c) for f in s.factors for c in s.conditions]


def source_part(name: str, device: str) -> tuple[str, ZooPart] | None:
    """(preset, part) of the ``build-zoo`` run that made the zoo model ``name`` (``fmnist32-ldm-kl-f4``).

    The presets are tried in order, the one of the model's hardware first (a model trained on a GPU: gpu,
    otherwise cpu); None when no part of any preset makes a model of that name.
    """
    first = "gpu" if device.startswith("cuda") else "cpu"
    for preset in sorted(ZOO_PRESETS, key=lambda p: p != first):
        for part in ZOO_PRESETS[preset]:
            if name.startswith(f"{part.prefix}-") and any(m.model == name.removeprefix(f"{part.prefix}-")
                                                           for m in part_models(part)):
                return preset, part
    return None
