"""The run's tidy tables (``results.csv``), joined from the typed records of ``results.jsonl``.

The records and their one reader live in :mod:`pipelines.records` and :mod:`pipelines.results_log`; this module only joins
them into one row per measurement for the reports, the CSV and the demo. A partner record
that is not there yet (a sweep still running) leaves its cells empty, but a field name that
no record type has is an error: see :class:`Absent`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from pipelines.atomic import atomic_path
from pipelines.records import (
    AutoencoderRecord,
    ConditioningRecord,
    FidRecord,
    Record,
    SamplingRecord,
    TrainingRecord,
)
from pipelines.results_log import Results

TABLE_COLUMNS = [
    "factor", "kind", "resolution", "latent_shape", "unet_params", "ae_params", "train_steps", "train_seconds",
    "train_images_per_s", "ddim_steps", "samples_per_s", "sec_per_image", "peak_mem_train_mb", "peak_mem_sample_mb",
    "fid", "fid_ci_low", "fid_ci_high", "fid_inf", "kid", "kid_std", "precision", "recall", "density", "coverage",
    "fid_backend", "fid_samples", "rfid", "psnr",
    "ssim", "device", "degenerate", "notes",
]
COND_COLUMNS = [
    "condition", "factor", "kind", "guidance", "accuracy", "fid", "fid_ci_low", "fid_ci_high", "kid",
    "mean_class_fid", "fid_backend", "n",
    "samples_per_class", "ddim_steps", "samples_per_s", "latent_shape", "unet_params", "condition_params",
    "train_steps", "train_seconds", "train_images_per_s", "peak_mem_train_mb", "peak_mem_sample_mb", "device",
    "degenerate",
]
PER_CLASS_METRICS = {"accuracy": "per_class_accuracy", "fid": "per_class_fid"}
R = TypeVar("R", bound=Record)

# how runs begun before random reference draws chose their reference and evaluation images
FILE_ORDER_DRAW = "the first images of the held-out split in file order (a run begun before random draws)"


class Absent:
    """Stands in for a record that is not written yet: its fields read None, a field it lacks raises.

    A plain ``None`` partner would need ``.get``-style reads, which turn a misspelt field into
    a silently empty column; this keeps attribute access checked against the record type.
    """

    def __init__(self, cls: type[Record]):
        self._cls = cls
        self._names = {f.name for f in dataclasses.fields(cls)}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in self._names:
            raise AttributeError(f"{self._cls.__name__} has no field {name!r}")
        return None

    def __bool__(self) -> bool:  # "if partner:" reads as "if it was written"
        return False


def partner(results: Results, cls: type[R], **where: Any) -> R | Absent:
    """The last record of ``cls`` matching ``where``, or an :class:`Absent` stand-in for it."""
    found = results.one(cls, **where)
    return found if found is not None else Absent(cls)


def domain_fid(results: Results, c: ConditioningRecord) -> FidRecord | Absent:
    """The domain-feature FID of the sample set that a conditioning record scored."""
    return partner(results, FidRecord, condition=c.condition, factor=c.factor, guidance=c.guidance,
                   ddim_steps=c.ddim_steps, fid_backend="domain")


MIN_TRAIN_STEPS = 100  # a model with fewer optimiser steps is flagged: its numbers say little about its design


def undertrained_notes(steps: int | None, what: str) -> list[str]:
    """A note when a model got fewer than ``MIN_TRAIN_STEPS`` steps (a time budget on a slow machine)."""
    if steps is None or steps >= MIN_TRAIN_STEPS:
        return []
    return [f"UNDERTRAINED {what}: {steps} step(s), under {MIN_TRAIN_STEPS}"]


def _shape(train: TrainingRecord | Absent) -> str:
    return "x".join(map(str, train.latent_shape or []))


def tidy_table(results: Results) -> pd.DataFrame:
    """Compression sweep: one row per unconditional FID (factor, kind, DDIM steps, backend), facts joined in."""
    rows = []
    for r in results.of(FidRecord, condition="none"):
        t = partner(results, TrainingRecord, kind=r.kind, factor=r.factor, condition="none")
        a = (partner(results, AutoencoderRecord, kind=r.kind, factor=r.factor) if r.factor > 1
             else Absent(AutoencoderRecord))  # pixel space (f = 1) has no autoencoder
        g = partner(results, SamplingRecord, kind=r.kind, factor=r.factor, ddim_steps=r.ddim_steps, condition="none")
        notes = []
        if t.degenerate:
            notes.append("degenerate latent (side <= 2)")
        notes += undertrained_notes(t.train_steps, "denoiser") + undertrained_notes(a.ae_train_steps, "autoencoder")
        if r.factor == 1:
            notes.append("pixel space: no autoencoder, rFID/PSNR/SSIM do not apply")
        rows.append({
            "factor": r.factor, "kind": r.kind, "resolution": t.resolution, "latent_shape": _shape(t),
            "unet_params": t.unet_params, "ae_params": t.ae_params, "train_steps": t.train_steps,
            "train_seconds": t.train_seconds, "train_images_per_s": t.train_images_per_s, "ddim_steps": r.ddim_steps,
            "samples_per_s": g.samples_per_s, "sec_per_image": g.sec_per_image,
            "peak_mem_train_mb": t.peak_mem_train_mb, "peak_mem_sample_mb": g.peak_mem_sample_mb,
            "fid": r.fid, "fid_ci_low": r.fid_ci_low, "fid_ci_high": r.fid_ci_high, "fid_inf": r.fid_inf, "kid": r.kid,
            "kid_std": r.kid_std, "precision": r.precision, "recall": r.recall, "density": r.density,
            "coverage": r.coverage, "fid_backend": r.fid_backend, "fid_samples": r.fid_samples,
            "rfid": a.rfid, "psnr": a.psnr, "ssim": a.ssim, "device": t.device, "degenerate": bool(t.degenerate),
            "notes": "; ".join(notes),
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.sort_values(["fid_backend", "factor", "kind", "ddim_steps"]).reset_index(drop=True)


def conditional_table(results: Results) -> pd.DataFrame:
    """Conditioning sweep: one row per (condition, factor, guidance), FID, speed and training facts joined in."""
    rows = []
    for c in results.of(ConditioningRecord):
        f = domain_fid(results, c)
        g = partner(results, SamplingRecord, condition=c.condition, factor=c.factor, guidance=c.guidance,
                    ddim_steps=c.ddim_steps)
        t = partner(results, TrainingRecord, condition=c.condition, factor=c.factor)
        rows.append({
            "condition": c.condition, "factor": c.factor, "kind": c.kind, "guidance": c.guidance,
            "accuracy": c.accuracy, "fid": f.fid, "fid_ci_low": f.fid_ci_low, "fid_ci_high": f.fid_ci_high, "kid": f.kid,
            "mean_class_fid": sum(c.per_class_fid) / len(c.per_class_fid), "fid_backend": f.fid_backend,
            "n": c.n, "samples_per_class": c.samples_per_class, "ddim_steps": c.ddim_steps,
            "samples_per_s": g.samples_per_s, "latent_shape": _shape(t), "unet_params": t.unet_params,
            "condition_params": t.condition_params, "train_steps": t.train_steps, "train_seconds": t.train_seconds,
            "train_images_per_s": t.train_images_per_s, "peak_mem_train_mb": t.peak_mem_train_mb,
            "peak_mem_sample_mb": g.peak_mem_sample_mb, "device": c.device, "degenerate": bool(t.degenerate),
        })
    table = pd.DataFrame(rows, columns=COND_COLUMNS)
    return table.sort_values(["condition", "factor", "guidance"]).reset_index(drop=True)


def per_class_table(results: Results, metric: str) -> pd.DataFrame:
    """Per-class ``"fid"`` or ``"accuracy"``: rows (condition, f, guidance), one column per class."""
    if metric not in PER_CLASS_METRICS:
        raise ValueError(f"metric must be one of {sorted(PER_CLASS_METRICS)}, not {metric!r}.")
    rows = [{"condition": c.condition, "factor": c.factor, "guidance": c.guidance,
             **dict(zip(c.class_names, getattr(c, PER_CLASS_METRICS[metric])))}
            for c in results.of(ConditioningRecord)]
    df = pd.DataFrame(rows)
    return df.sort_values(["condition", "factor", "guidance"]).reset_index(drop=True) if len(df) else df


def write_table(run_dir: Path, table: pd.DataFrame) -> Path:
    """``run_dir/results.csv``, replaced atomically so a reader never sees half a table."""
    path = Path(run_dir) / "results.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path
