"""The perceptual-compression sweep: train every factor at an equal budget, then measure.

For each first stage (pixel space, then KL and/or VQ autoencoders at every factor) the
sweep trains through ``pipelines.training``, samples through ``LatentDiffusionPipeline``
and measures with ``ldm_eval.fid`` / ``ldm_eval.reconstruction``: the paper's Fig. 6
(FID along training), Fig. 7 (FID against sampling throughput) and Tab. 8 (autoencoders),
at the size of the machine at hand. Every measurement is appended to ``results.jsonl`` as
soon as it exists, so ``--resume`` after a kill redoes nothing already measured.
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from pipelines.data import ImageDataset, load_dataset
from pipelines.first_stage import FACTORS, FirstStage, check_factor
from pipelines.pipeline import load_pipeline, resolve_device, to_uint8
from pipelines.training import (
    AutoencoderTrainConfig,
    DiffusionTrainConfig,
    device_name,
    load_autoencoder,
    train_autoencoder,
    train_diffusion,
)

from .domain_classifier import DomainClassifier, train_domain_classifier
from .fid import compute_features, fid_from_features, kid_from_features
from .profiling import PeakMemory, timed_sampling
from .reconstruction import reconstruction_metrics
from .results import ResultsLog

WARMUP_SAMPLES = 2


class SweepError(ValueError):
    """A sweep that cannot run as asked."""


@dataclass
class SweepConfig:
    """One sweep; the presets below fill it for common machine sizes."""

    preset: str = "quick"
    dataset: str = "fashion-mnist"
    resolution: int = 32
    factors: tuple[int, ...] = FACTORS
    kinds: tuple[str, ...] = ("kl",)
    budget: str = "seconds"  # "steps" or "seconds": equal for every factor
    ae_budget: float = 30
    train_budget: float = 45
    fid_samples: int = 500  # domain-backend FID/KID samples
    inception_samples: int = 64  # Inception FID is ~6 images/s on 2 CPU cores
    ddim_steps: tuple[int, ...] = (10, 50)
    progress_points: int = 3  # FID at this many points along training (Fig. 6)
    progress_samples: int = 200
    batch_size: int = 64
    ae_batch_size: int = 32
    param_budget: int = 1_000_000
    ae_base_width: int = 16
    max_images: int | None = 10_000
    classifier_steps: int = 500
    sample_batch: int = 250
    device: str = "auto"
    out: Path = Path("runs/quick")
    resume: bool = False
    seed: int = 0

    def validate(self) -> None:
        for f in self.factors:
            check_factor(f, self.resolution)
        for kind in self.kinds:
            if kind not in ("kl", "vq"):
                raise SweepError(f"Unknown autoencoder kind {kind!r}; choose kl and/or vq.")
        if self.budget not in ("steps", "seconds"):
            raise SweepError(f"--budget must be 'steps' or 'seconds', not {self.budget!r}.")
        if self.fid_samples < 2 or self.inception_samples == 1 or self.inception_samples < 0:
            raise SweepError("FID needs at least 2 samples (--fid-samples; --inception-samples 0 skips Inception).")
        for s in self.ddim_steps:
            if not 1 <= s <= 1000:
                raise SweepError(f"DDIM steps must be from 1 to 1000 (got {s}).")


PRESETS: dict[str, dict] = {
    # for tests and CI: every code path, tiny sizes, under 3 minutes on 2 CPU cores
    "smoke": dict(resolution=32, budget="steps", ae_budget=6, train_budget=6, fid_samples=24, inception_samples=6,
                  ddim_steps=(2, 4), progress_points=2, progress_samples=16, batch_size=8, ae_batch_size=8,
                  param_budget=30_000, ae_base_width=8, max_images=256, classifier_steps=40, sample_batch=24),
    # the default: all six factors on Fashion-MNIST, under 20 minutes on 2 CPU cores
    "quick": dict(resolution=32, budget="seconds", ae_budget=30, train_budget=45, fid_samples=500,
                  inception_samples=64, ddim_steps=(10, 50), progress_points=3, progress_samples=200),
    # real photos (e.g. the UTKFace faces) at 64 px, where f = 16 and 32 keep a spatial latent; hours on CPU
    "standard": dict(resolution=64, kinds=("kl", "vq"), budget="seconds", ae_budget=600, train_budget=1800,
                     fid_samples=2000, inception_samples=500, ddim_steps=(10, 20, 50, 100), progress_points=4,
                     progress_samples=500, batch_size=64, param_budget=4_000_000, ae_base_width=32, max_images=None),
    # the paper's protocol scaled to the data, for a GPU
    "paper": dict(resolution=256, kinds=("kl", "vq"), budget="seconds", ae_budget=3600, train_budget=4 * 3600,
                  fid_samples=5000, inception_samples=5000, ddim_steps=(10, 20, 50, 100, 200), progress_points=8,
                  progress_samples=2000, batch_size=64, param_budget=100_000_000, ae_base_width=64, max_images=None,
                  classifier_steps=2000, sample_batch=100),
}


def preset_config(name: str, **overrides) -> SweepConfig:
    if name not in PRESETS:
        raise SweepError(f"Unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    values = {"preset": name, "out": Path("runs") / name, **PRESETS[name]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SweepConfig(**values)


@dataclass
class _Context:
    cfg: SweepConfig
    log: ResultsLog
    device: torch.device
    test: ImageDataset
    classifier: DomainClassifier
    reference: dict[str, np.ndarray] = field(default_factory=dict)


def _budget_kwargs(budget: str, value: float) -> dict:
    return {"max_steps": int(value)} if budget == "steps" else {"max_seconds": float(value)}


def _image_grid(images: np.ndarray, path: Path, n: int = 64) -> None:
    grid = make_grid(torch.from_numpy(images[:n]).permute(0, 3, 1, 2), nrow=8, padding=1, pad_value=1.0)
    array = to_uint8(grid.permute(1, 2, 0).numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(tmp, format="PNG")
    tmp.replace(path)


def _uint8_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).contiguous()


def _fid_records(ctx: _Context, samples: torch.Tensor, n_domain: int, base: dict) -> list[dict]:
    """FID and KID of ``samples`` against held-out reals, for each backend."""
    out = []
    for backend, n in (("domain", n_domain), ("inception", min(ctx.cfg.inception_samples, n_domain))):
        if n == 0:
            continue  # Inception skipped (--inception-samples 0)
        ref = ctx.reference[backend][:n]
        feats = compute_features(samples[:n], backend, ctx.device, classifier=ctx.classifier)
        kid, kid_std = kid_from_features(ref, feats, 50, min(1000, n))
        out.append({**base, "fid": fid_from_features(ref, feats), "kid": kid, "kid_std": kid_std,
                    "fid_backend": backend, "fid_samples": n, "reference_samples": len(ref)})
    return out


def reference_features(ctx: _Context, backend: str, n: int) -> np.ndarray:
    """Features of the first ``n`` held-out real images, computed once per run (cached for --resume)."""
    path = ctx.cfg.out / "reference" / f"{backend}-{n}.npy"
    if path.is_file():
        return np.load(path)
    feats = compute_features(ctx.test.images[:n], backend, ctx.device, classifier=ctx.classifier)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, feats)
    tmp.replace(path)
    return feats


def _reference(ctx: _Context) -> None:
    for backend, n in (("domain", ctx.cfg.fid_samples), ("inception", ctx.cfg.inception_samples)):
        if n > 0:  # 0: Inception skipped
            ctx.reference[backend] = reference_features(ctx, backend, n)


def _classifier(cfg: SweepConfig, run_dir: Path, device: torch.device) -> DomainClassifier:
    folder = run_dir / "domain_classifier"
    if (folder / "config.json").is_file():
        return DomainClassifier.load(folder, device)
    train = load_dataset(cfg.dataset, cfg.resolution, split="train")
    label_key = next((k for k in ("class", "race") if k in train.labels), None)
    labels = train.labels[label_key] if label_key else None
    names = train.class_names.get(label_key) if label_key else None
    clf = train_domain_classifier(train.images, labels, steps=cfg.classifier_steps, seed=cfg.seed, device=device,
                                  class_names=names)
    clf.save(folder)
    return clf


def _train_autoencoder(ctx: _Context, kind: str, factor: int) -> Path:
    cfg, run_dir = ctx.cfg, ctx.cfg.out
    folder = run_dir / "models" / f"ae-{kind}-f{factor}"
    key = f"autoencoder/{kind}/f{factor}"
    if ctx.log.done(key):
        return folder
    summary = train_autoencoder(AutoencoderTrainConfig(
        out=folder, **_budget_kwargs(cfg.budget, cfg.ae_budget), batch_size=cfg.ae_batch_size, checkpoint_every=500,
        seed=cfg.seed, resume=True, cpu=ctx.device.type == "cpu", max_images=cfg.max_images, factor=factor,
        kind=kind, dataset=cfg.dataset, resolution=cfg.resolution, base_width=cfg.ae_base_width,
    ))
    vae = load_autoencoder(folder).to(ctx.device).eval()
    stage = FirstStage(vae)
    n = cfg.fid_samples
    real = ctx.test.images[:n]
    recon = []
    for i in range(0, n, cfg.sample_batch):
        x = ctx.test.batch(slice(i, min(i + cfg.sample_batch, n))).to(ctx.device)
        recon.append(stage.decode(stage.encode_moments(x)[0] * stage.scale).clamp(-1, 1).cpu())
    recon_u8 = ((torch.cat(recon) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    m = reconstruction_metrics(real, recon_u8, ctx.device, rfid=False)
    n_inc = min(cfg.inception_samples, n)
    rfid = reconstruction_metrics(real[:n_inc], recon_u8[:n_inc], ctx.device) if n_inc else {"rfid": None,
                                                                                            "rfid_backend": None}
    _image_grid((torch.cat([real[:32], recon_u8[:32]]).permute(0, 2, 3, 1).numpy() / 255.0),
                run_dir / "grids" / f"recon-{kind}-f{factor}.png")
    ctx.log.append({
        "key": key, "record": "autoencoder", "kind": kind, "factor": factor, "ae_params": summary["ae_params"],
        "latent_shape": summary["latent_shape"], "scaling_factor": summary["scaling_factor"],
        "ae_train_steps": summary["train_steps"], "ae_train_seconds": summary["train_seconds"],
        "psnr": m["psnr"], "ssim": m["ssim"], "recon_samples": n, "rfid": rfid["rfid"], "rfid_samples": n_inc,
        "rfid_backend": rfid["rfid_backend"], "device": str(ctx.device),
    })
    return folder


def _train_and_track(ctx: _Context, kind: str, factor: int, autoencoder: Path | None) -> Path:
    """Train in segments, measuring FID at each milestone (the paper's Fig. 6)."""
    cfg = ctx.cfg
    folder = cfg.out / "models" / ("dm-f1" if factor == 1 else f"ldm-{kind}-f{factor}")
    for i in range(1, cfg.progress_points + 1):
        key = f"progress/{kind}/f{factor}/{i}"
        if ctx.log.done(key):
            continue
        target = cfg.train_budget * i / cfg.progress_points
        with PeakMemory(ctx.device) as mem:
            summary = train_diffusion(DiffusionTrainConfig(
                out=folder, **_budget_kwargs(cfg.budget, target), batch_size=cfg.batch_size, checkpoint_every=500,
                seed=cfg.seed, resume=True, cpu=ctx.device.type == "cpu", max_images=cfg.max_images, factor=factor,
                autoencoder=autoencoder, dataset=cfg.dataset, resolution=cfg.resolution,
                param_budget=cfg.param_budget,
            ))
        pipe = load_pipeline(folder, device=ctx.device)
        steps = min(cfg.ddim_steps, key=lambda s: abs(s - 20))
        n = cfg.progress_samples
        images = timed_sampling(pipe, n, steps, "ddim", seed=cfg.seed, batch_size=cfg.sample_batch).images
        feats = compute_features(_uint8_nchw(images), "domain", ctx.device, classifier=ctx.classifier)
        ref = ctx.reference["domain"][:n]
        ctx.log.append({
            "key": key, "record": "progress", "kind": kind, "factor": factor, "point": i,
            "train_steps": summary["train_steps"], "train_seconds": summary["train_seconds"],
            "fid": fid_from_features(ref, feats), "fid_backend": "domain", "fid_samples": n, "ddim_steps": steps,
            "peak_mem_train_mb": mem.reading.peak_mb, "memory_method": mem.reading.method,
            "train_summary": summary,
        })
    key = f"train/{kind}/f{factor}"
    if not ctx.log.done(key):
        progress = [r for r in ctx.log.records() if r.get("record") == "progress" and r["kind"] == kind
                    and r["factor"] == factor]
        summary = progress[-1]["train_summary"]
        side = summary["latent_shape"][-1]
        ctx.log.append({
            "key": key, "record": "train", "kind": kind, "factor": factor, "resolution": cfg.resolution,
            **{k: summary[k] for k in ("latent_shape", "unet_params", "ae_params", "train_steps", "train_seconds",
                                       "train_images_per_s", "device", "device_name", "batch_size")},
            "peak_mem_train_mb": max(r["peak_mem_train_mb"] or 0 for r in progress),
            "memory_method": progress[-1]["memory_method"], "degenerate": side <= 2,
            "budget": cfg.budget, "budget_value": cfg.train_budget,
        })
    return folder


def _evaluate_sampling(ctx: _Context, kind: str, factor: int, folder: Path) -> None:
    """Samples/s, memory and FID/KID at every DDIM step count (the paper's Fig. 7)."""
    cfg = ctx.cfg
    pipe = None
    for steps in cfg.ddim_steps:
        key = f"sampling/{kind}/f{factor}/ddim{steps}"
        if ctx.log.done(key):
            continue
        if pipe is None:
            pipe = load_pipeline(folder, device=ctx.device)
            pipe(num_images=WARMUP_SAMPLES, num_inference_steps=2, seed=0)  # warm-up, not timed
        timed = timed_sampling(pipe, cfg.fid_samples, steps, "ddim", seed=cfg.seed + 1000, batch_size=cfg.sample_batch)
        images = timed.images
        _image_grid(images, cfg.out / "grids" / f"samples-{kind}-f{factor}-ddim{steps}.png")
        base = {"kind": kind, "ae_kind": kind, "factor": factor, "ddim_steps": steps, "device": str(ctx.device)}
        for i, record in enumerate(_fid_records(ctx, _uint8_nchw(images), cfg.fid_samples, base)):
            ctx.log.append({"key": f"fid/{kind}/f{factor}/ddim{steps}/{record['fid_backend']}", "record": "fid", **record})
        ctx.log.append({
            "key": key, "record": "sampling", **base, "n": len(images), "seconds": timed.seconds,
            "samples_per_s": timed.samples_per_s, "sec_per_image": timed.sec_per_image,
            "peak_mem_sample_mb": timed.peak_mb, "memory_method": timed.memory_method,
            "sample_batch": cfg.sample_batch, "scheduler": "ddim",
        })


def environment(cfg: SweepConfig, device: torch.device) -> dict:
    import accelerate
    import diffusers
    import torchmetrics

    try:
        from importlib.metadata import version

        cleanfid_version = version("clean-fid")
    except Exception:  # pragma: no cover
        cleanfid_version = "unknown"
    return {
        "key": "environment", "record": "environment", "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "diffusers": diffusers.__version__, "accelerate": accelerate.__version__, "torchmetrics": torchmetrics.__version__,
        "clean_fid": cleanfid_version, "device": str(device), "device_name": device_name(str(device)),
        "threads": torch.get_num_threads(), "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def open_run(cfg: SweepConfig, n_needed: int, label_key: str | None = None) -> _Context:
    """Validate, open (or resume) the run folder; held-out data, classifier and reference features.

    ``label_key`` names a label the held-out split must carry (checked before any training).
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    log = ResultsLog(cfg.out)
    if log.records() and not cfg.resume:
        raise SweepError(f"'{cfg.out}' already holds results: pass --resume to continue it, or choose a new --out.")
    test = load_dataset(cfg.dataset, cfg.resolution, split="test")
    if label_key is not None and label_key not in test.labels:
        raise SweepError(f"This sweep needs '{label_key}' labels; '{cfg.dataset}' has none (use fashion-mnist).")
    if len(test) < n_needed:
        raise SweepError(f"The held-out split has {len(test)} images; --fid-samples {n_needed} needs more.")
    if not log.done("environment"):
        log.append(environment(cfg, device))
    ctx = _Context(cfg, log, device, test, _classifier(cfg, cfg.out, device))
    _reference(ctx)
    return ctx


def run_sweep(cfg: SweepConfig) -> Path:
    """Run (or resume) a sweep; returns the run folder."""
    ctx = open_run(cfg, max(cfg.fid_samples, cfg.inception_samples, cfg.progress_samples))
    run_dir = cfg.out
    jobs: list[tuple[str, int]] = [("pixel", 1)] if 1 in cfg.factors else []
    jobs += [(kind, f) for kind in cfg.kinds for f in cfg.factors if f > 1]
    for kind, factor in jobs:
        print(f"== {kind} f={factor} ==", flush=True)
        autoencoder = _train_autoencoder(ctx, kind, factor) if factor > 1 else None
        folder = _train_and_track(ctx, kind, factor, autoencoder)
        _evaluate_sampling(ctx, kind, factor, folder)
    return run_dir
