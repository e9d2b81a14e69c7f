"""The run folder's measurements: ``results.jsonl`` (append-only) and the tidy table.

Each measurement is one JSON line, appended and fsynced as soon as it exists, so a kill
loses nothing already measured; a torn last line (killed mid-write) is ignored. Every
record has a ``key``; ``--resume`` skips work whose key is already there.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

RESULTS = "results.jsonl"
TABLE_COLUMNS = [
    "factor", "kind", "resolution", "latent_shape", "unet_params", "ae_params", "train_steps", "train_seconds",
    "train_images_per_s", "ddim_steps", "samples_per_s", "sec_per_image", "peak_mem_train_mb", "peak_mem_sample_mb",
    "fid", "kid", "fid_backend", "fid_samples", "rfid", "psnr", "ssim", "device", "degenerate", "notes",
]


class ResultsLog:
    def __init__(self, run_dir: Path):
        self.path = run_dir / RESULTS
        run_dir.mkdir(parents=True, exist_ok=True)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill
        return out

    def done(self, key: str) -> bool:
        return any(r.get("key") == key for r in self.records())

    def get(self, key: str) -> dict | None:
        return next((r for r in reversed(self.records()) if r.get("key") == key), None)

    def append(self, record: dict) -> None:
        line = json.dumps(record, default=_jsonable) + "\n"
        with open(self.path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def _jsonable(value: object) -> object:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def tidy_table(records: list[dict]) -> pd.DataFrame:
    """One row per (factor, kind, DDIM steps, FID backend), training and autoencoder facts joined in."""
    by_type: dict[str, list[dict]] = {}
    for r in records:
        by_type.setdefault(r["record"], []).append(r)
    train = {(r["kind"], r["factor"]): r for r in by_type.get("train", [])}
    ae = {(r["kind"], r["factor"]): r for r in by_type.get("autoencoder", [])}
    gen = {(r["kind"], r["factor"], r["ddim_steps"]): r for r in by_type.get("sampling", [])}
    rows = []
    for r in by_type.get("fid", []):
        t = train.get((r["kind"], r["factor"]), {})
        a = ae.get((r["ae_kind"], r["factor"]), {}) if r["factor"] > 1 else {}
        g = gen.get((r["kind"], r["factor"], r["ddim_steps"]), {})
        notes = []
        if t.get("degenerate"):
            notes.append("degenerate latent (side <= 2)")
        if r["factor"] == 1:
            notes.append("pixel space: no autoencoder, rFID/PSNR/SSIM do not apply")
        rows.append({
            "factor": r["factor"], "kind": r["kind"], "resolution": t.get("resolution"),
            "latent_shape": "x".join(map(str, t.get("latent_shape", []))), "unet_params": t.get("unet_params"),
            "ae_params": t.get("ae_params"), "train_steps": t.get("train_steps"), "train_seconds": t.get("train_seconds"),
            "train_images_per_s": t.get("train_images_per_s"), "ddim_steps": r["ddim_steps"],
            "samples_per_s": g.get("samples_per_s"), "sec_per_image": g.get("sec_per_image"),
            "peak_mem_train_mb": t.get("peak_mem_train_mb"), "peak_mem_sample_mb": g.get("peak_mem_sample_mb"),
            "fid": r["fid"], "kid": r.get("kid"), "fid_backend": r["fid_backend"], "fid_samples": r["fid_samples"],
            "rfid": a.get("rfid"), "psnr": a.get("psnr"), "ssim": a.get("ssim"), "device": t.get("device"),
            "degenerate": bool(t.get("degenerate")), "notes": "; ".join(notes),
        })
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return table.sort_values(["fid_backend", "factor", "kind", "ddim_steps"]).reset_index(drop=True)


def write_table(run_dir: Path, table: pd.DataFrame) -> Path:
    path = run_dir / "results.csv"
    tmp = path.with_name(".results.csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
