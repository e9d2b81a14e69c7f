"""Export a sweep's trained models as a small model zoo: fp16 safetensors plus a model card.

The card states what produced the weights (data, resolution, steps, time, hardware) and
the model's own measurements from the same run's ``results.jsonl``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pipelines.checkpoint import write_json_atomic
from pipelines.pipeline import load_pipeline

from .results import ResultsLog

UTKFACE_LICENCE = ("Trained on UTKFace (Zhang, Song, Qi, CVPR 2017), released for non-commercial research only; "
                   "these weights inherit that licence: non-commercial research use only.")
FASHION_LICENCE = "Trained on Fashion-MNIST (Zalando Research, MIT licence)."


def _card(name: str, facts: dict, run_env: dict, rows: list[dict], ae: dict | None) -> str:
    licence = FASHION_LICENCE if facts.get("dataset") == "fashion-mnist" else UTKFACE_LICENCE
    condition = facts.get("condition") or "none"
    command = "cond-sweep" if condition != "none" else "sweep"
    lines = [
        f"# {name}", "",
        f"LDM Lab {'pixel-space DDPM' if facts['factor'] == 1 else 'latent diffusion model'}, factor f = {facts['factor']} "
        f"({facts.get('kind')}), latent {'x'.join(map(str, facts['latent_shape']))}.", "",
        f"- data: `{facts['dataset']}` at {facts['resolution']} px (train split)",
        f"- training: {facts['train_steps']} steps, batch {facts['batch_size']}, {facts['train_seconds']:.0f} s on "
        f"{facts['device_name']} ({facts['train_images_per_s']:.0f} images/s), seed {facts['seed']}",
        f"- parameters: UNet {facts['unet_params']:,}, autoencoder {facts['ae_params']:,}",
        f"- produced by `python -m ldm_eval {command} --preset {run_env.get('config', {}).get('preset')}` "
        f"(torch {run_env.get('torch')}, diffusers {run_env.get('diffusers')}); weights stored in fp16",
    ]
    if condition != "none":
        lines[4:4] = [f"Conditioned through cross-attention on **{condition}** "
                        f"({'a learned token per class' if condition == 'class' else 'a text transformer trained from scratch with its own BPE tokenizer'}), "
                        f"condition dropout {facts.get('condition_dropout')}, so classifier-free guidance works; "
                        f"condition encoder {facts.get('condition_params', 0):,} parameters.", ""]
    lines += ["", "## Measured by the harness in the same run", ""]
    for r in rows:
        kid = f", KID {r['kid']:.4f}" if r.get("kid") is not None else ""
        accuracy = f"conditioning accuracy {r['accuracy']:.3f}, " if "accuracy" in r else ""
        guidance = f", guidance {r['guidance']:g}" if "guidance" in r else ""
        lines.append(f"- {accuracy}FID {r['fid']:.2f}{kid} ({r['fid_backend']} features, N={r['fid_samples']}, "
                     f"DDIM {r['ddim_steps']} steps{guidance})")
    if ae:
        rfid = f", rFID {ae['rfid']:.1f} (Inception, N={ae['rfid_samples']})" if ae.get("rfid") is not None else ""
        lines.append(f"- autoencoder: PSNR {ae['psnr']:.2f} dB, SSIM {ae['ssim']:.3f} (N={ae['recon_samples']}){rfid}")
    lines += ["", "## Licence", "", licence, ""]
    return "\n".join(lines)


def export_zoo(run_dir: Path, out: Path, prefix: str, only: list[str] | None = None) -> list[Path]:
    """Copy the diffusion models of ``run_dir`` (all, or those named in ``only``) into ``out/PREFIX-NAME`` as fp16."""
    records = ResultsLog(run_dir).records()
    env = next((r for r in records if r["record"] == "environment"), {})
    written = []
    for folder in sorted((run_dir / "models").glob("*")):
        if not (folder / "model_index.json").is_file() or (only and folder.name not in only):
            continue
        facts = json.loads((folder / "training.json").read_text())
        kind = "pixel" if facts["factor"] == 1 else facts["kind"]
        condition = facts.get("condition") or "none"
        if condition == "none":
            rows = [r for r in records if r["record"] == "fid" and r["kind"] == kind and r["factor"] == facts["factor"]]
        else:
            rows = [r for r in records if r["record"] == "cond_eval" and r["condition"] == condition
                    and r["factor"] == facts["factor"]]
        ae = next((r for r in records if r["record"] == "autoencoder" and r["kind"] == facts["kind"]
                   and r["factor"] == facts["factor"]), None)
        target = out / f"{prefix}-{folder.name}"
        tmp = out / f".tmp-{prefix}-{folder.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        pipe = load_pipeline(folder, device="cpu")
        pipe.to(dtype=torch.float16).save_pretrained(tmp, safe_serialization=True)
        write_json_atomic(tmp / "training.json", facts)
        write_json_atomic(tmp / "metrics.json", {"run": str(run_dir), "rows": [
            {k: r.get(k) for k in ("fid", "kid", "fid_backend", "fid_samples", "ddim_steps", "accuracy", "guidance")}
            for r in rows]})
        (tmp / "README.md").write_text(_card(f"{prefix}-{folder.name}", facts, env, rows, ae))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        written.append(target)
    return written
