"""Export a sweep's trained models as a small model zoo: fp16 safetensors, metrics, code and a model card.

``metrics.json`` keeps the model's own measurements from the same run's ``results.jsonl`` (read
through :func:`pipelines.results_log.read_results` like every other consumer): every FID with its
backend, N, reference N, interval and the sampling speed of that run, and the autoencoder's
reconstruction scores. The card and the code plain diffusers loads come from
:func:`ldm_eval.zoo.cards.finish_folder`, from what the folder holds.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldm_eval.reporting.tables import domain_fid
from ldm_eval.zoo.cards import (
    FASHION_LICENCE,
    UTKFACE_LICENCE,
    finish_folder,
    write_hub_files,
)
from pipelines.atomic import atomic_folder, write_json_atomic, write_text_atomic
from pipelines.errors import InputError
from pipelines.first_stage import load_autoencoder
from pipelines.loading import load_pipeline
from pipelines.memory import is_model_memory
from pipelines.records import (
    AutoencoderRecord,
    ConditioningRecord,
    EnvironmentRecord,
    FidRecord,
    RecognisabilityRecord,
    SamplingRecord,
)
from pipelines.results_log import Results, read_results
from pipelines.training_summary import TrainingSummary


@dataclass
class MetricRow:
    """One measurement of the model, as listed on the card and stored in ``metrics.json``."""

    fid: float | None
    kid: float | None
    fid_backend: str | None
    fid_samples: int | None
    ddim_steps: int
    accuracy: float | None = None  # conditional models only
    guidance: float | None = None  # conditional models only
    reference_samples: int | None = None
    fid_ci_low: float | None = None  # the 95 % bootstrap interval; None: not measured
    fid_ci_high: float | None = None
    sec_per_image: float | None = None  # the run's sampling speed for this sample set; None: not measured
    sampling_device: str | None = None
    precision: float | None = None  # precision, recall, density, coverage on the FID's features; None: not measured
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    prdc_k: int | None = None
    peak_mem_sample_mb: float | None = None  # the sampling run's peak memory, measured as memory_method says
    memory_method: str | None = None
    sample_batch: int | None = None


def _row(results: Results, f: FidRecord, ddim_steps: int, accuracy: float | None = None,
         guidance: float | None = None) -> MetricRow:
    speed = results.one(SamplingRecord, kind=f.kind, factor=f.factor, condition=f.condition, guidance=f.guidance,
                        ddim_steps=f.ddim_steps)
    env = results.environment
    device = (env.device_name if env and env.device == speed.device else speed.device) if speed else None
    return MetricRow(f.fid, f.kid, f.fid_backend, f.fid_samples, ddim_steps, accuracy, guidance, f.reference_samples,
                     f.fid_ci_low, f.fid_ci_high, speed.sec_per_image if speed else None, device,
                     f.precision, f.recall, f.density, f.coverage, f.prdc_k,
                     *((speed.peak_mem_sample_mb, speed.memory_method, speed.sample_batch)
                       if speed and is_model_memory(speed.memory_method) else (None, None, None)))


def model_rows(results: Results, facts: TrainingSummary) -> list[MetricRow]:
    """The model's FID rows, or for a conditional model its accuracy and domain FID per guidance."""
    if facts.condition == "none":
        kind = "pixel" if facts.factor == 1 else facts.kind
        return [_row(results, f, f.ddim_steps)
                for f in results.of(FidRecord, kind=kind, factor=facts.factor, condition="none")]
    rows = []
    for c in results.of(ConditioningRecord, condition=facts.condition, factor=facts.factor):
        rows.append(_row(results, domain_fid(results, c), c.ddim_steps, c.accuracy, c.guidance))
    return rows


AE_FIELDS = ("psnr", "ssim", "recon_samples", "rfid", "rfid_samples", "rfid_ci_low", "rfid_ci_high")


def metrics_json(run: str, rows: list[MetricRow], recognised: list[RecognisabilityRecord],
                 ae: AutoencoderRecord | None) -> dict[str, Any]:
    """What ``metrics.json`` holds: the run, the FID rows, recognisability and the autoencoder's scores."""
    return {"run": run, "rows": [dataclasses.asdict(r) for r in rows],
            "recognisability": [dataclasses.asdict(r) for r in recognised],
            "autoencoder": {k: getattr(ae, k) for k in AE_FIELDS} if ae else None}


def export_zoo(run_dir: Path, out: Path, prefix: str, only: list[str] | None = None,
               max_mb: float | None = None) -> list[Path]:
    """Copy the models of ``run_dir`` (all, or those named in ``only``) into ``out/PREFIX-NAME`` as fp16.

    Diffusion pipelines and stand-alone autoencoders (the first-stage study's) alike. A model
    folder over ``max_mb`` megabytes fails with a clear error and is not written.
    """
    run_dir, out = Path(run_dir), Path(out)
    results = read_results(run_dir)
    written = []
    for folder in sorted((run_dir / "models").glob("*")):
        if only and folder.name not in only:
            continue
        if not (folder / "model_index.json").is_file():
            if (folder / "config.json").is_file() and (folder / "training.json").is_file():
                written.append(_export_autoencoder(folder, out / f"{prefix}-{folder.name}", results))
            continue
        facts = TrainingSummary.load(folder / "training.json")
        rows = model_rows(results, facts)
        ae = results.one(AutoencoderRecord, kind=facts.kind, factor=facts.factor, variant="")
        recognised = ([] if facts.condition != "none" else
                      results.of(RecognisabilityRecord, kind="pixel" if facts.factor == 1 else facts.kind,
                                 factor=facts.factor, condition="none"))
        name = f"{prefix}-{folder.name}"
        target = out / name
        with atomic_folder(target) as tmp:
            pipe = load_pipeline(folder, device="cpu")
            pipe.to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
            shutil.copy2(folder / "training.json", tmp / "training.json")  # verbatim, whatever its generation
            write_json_atomic(tmp / "metrics.json", metrics_json(str(run_dir), rows, recognised, ae))
            write_hub_files(tmp)
            _check_size(tmp, name, max_mb)
        finish_folder(target)  # the card, from what the folder now holds (build-zoo re-renders the zoo's at the end)
        written.append(target)
    return written


class ExportSizeError(InputError):
    """An exported model folder is over its size budget."""


def _check_size(folder: Path, name: str, max_mb: float | None) -> None:
    """Refuse a model folder over its budget (raised inside the atomic write: nothing is kept)."""
    if max_mb is None:
        return
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / (1024 * 1024)
    if size > max_mb:
        raise ExportSizeError(f"The exported model {name} holds {size:.1f} MB, over its {max_mb:g} MB budget: "
                              "lower its parameter budget (--param-budget) or raise the budget.", "max_model_mb")


def _autoencoder_card(name: str, facts: TrainingSummary, env: EnvironmentRecord | None,
                      ae: AutoencoderRecord | None) -> str:
    licence = FASHION_LICENCE if facts.dataset == "fashion-mnist" else UTKFACE_LICENCE
    preset = env.config.get("preset") if env else None
    lines = [
        f"# {name}", "",
        f"LDM Lab first stage: {facts.kind.upper()} autoencoder, factor f = {facts.factor}, latent "
        f"{'x'.join(map(str, facts.latent_shape))}" + (f", {facts.codebook_size} codes" if facts.codebook_size else "")
        + ".", "",
        f"- data: `{facts.dataset}` at {facts.resolution} px (train split)",
        f"- trained with: {facts.losses or 'L1 + regulariser'}",
        f"- training: {facts.train_steps} steps, batch {facts.batch_size}, {facts.train_seconds:.0f} s on "
        f"{facts.device_name} ({facts.train_images_per_s:.0f} images/s), seed {facts.seed}",
        f"- parameters: {facts.ae_params:,}; latent scale {facts.scaling_factor:.4g}",
        f"- produced by `python -m ldm_eval ae-sweep --preset {preset}` (torch {env.torch if env else None}, "
        f"diffusers {env.diffusers if env else None}); weights stored in fp16",
        "", "## Measured by the harness in the same run (held-out images)", "",
    ]
    if ae:
        rfid = (f", rFID {ae.rfid:.1f} and KID {ae.rkid:.4f} (Inception, N={ae.rfid_samples})"
                if ae.rfid is not None and ae.rkid is not None else "")
        usage = (f", codebook usage {ae.codebook_usage:.0%} (perplexity {ae.perplexity:.0f})"
                 if ae.codebook_usage is not None else "")
        lines.append(f"- PSNR {ae.psnr:.2f} dB, SSIM {ae.ssim:.3f} (N={ae.recon_samples}){rfid}{usage}")
    lines += ["", "## Licence", "", licence, ""]
    return "\n".join(lines)


def _export_autoencoder(folder: Path, target: Path, results: Results) -> Path:
    """A trained autoencoder folder as fp16 safetensors with its training.json and a card."""
    facts = TrainingSummary.load(folder / "training.json")
    variant = folder.name.split(f"-f{facts.factor}", 1)[-1].lstrip("-")
    ae = results.one(AutoencoderRecord, kind=facts.kind, factor=facts.factor, variant=variant)
    with atomic_folder(target) as tmp:
        vae = load_autoencoder(folder)
        vae.to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        shutil.copy2(folder / "training.json", tmp / "training.json")
        write_text_atomic(tmp / "README.md", _autoencoder_card(target.name, facts, results.environment, ae))
    return target
