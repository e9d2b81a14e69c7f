"""Shared fixtures: tiny real models trained once per session on real Fashion-MNIST."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["LDM_LAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))


def write_pngs(images_uint8, folder: Path, prefix: str = "img") -> Path:
    """uint8 images (any layout) as lossless PNG files in ``folder`` (for the folder-based metrics)."""
    from pipelines.images import as_uint8_nchw, save_png

    for i, image in enumerate(as_uint8_nchw(images_uint8).permute(0, 2, 3, 1).numpy()):
        save_png(image, Path(folder) / f"{prefix}_{i:06d}.png")
    return Path(folder)


def run_cli(*args: str) -> int:
    from ldm_eval.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KL f = 4 autoencoder trained for a few steps on 16 px Fashion-MNIST."""
    out = tmp_path_factory.mktemp("ae") / "kl-f4"
    assert run_cli(
        "train-autoencoder", "--factor", 4, "--kind", "kl", "--dataset", "fashion-mnist", "--resolution", 16,
        "--max-steps", 10, "--batch-size", 16, "--base-width", 8, "--max-images", 256, "--out", out,
    ) == 0
    return out


@pytest.fixture(scope="session")
def tiny_ldm(tmp_path_factory: pytest.TempPathFactory, tiny_autoencoder: Path) -> Path:
    out = tmp_path_factory.mktemp("ldm") / "ldm-f4"
    assert run_cli(
        "train-diffusion", "--factor", 4, "--autoencoder", tiny_autoencoder, "--dataset", "fashion-mnist",
        "--resolution", 16, "--max-steps", 5, "--batch-size", 16, "--param-budget", 30000, "--max-images", 256,
        "--out", out,
    ) == 0
    return out


@pytest.fixture(scope="session")
def tiny_class_ldm(tmp_path_factory: pytest.TempPathFactory, tiny_autoencoder: Path) -> Path:
    """A class-conditional (cross-attention) LDM-4, trained briefly on 16 px Fashion-MNIST."""
    out = tmp_path_factory.mktemp("cond") / "ldm-f4-class"
    assert run_cli(
        "train-diffusion", "--factor", 4, "--autoencoder", tiny_autoencoder, "--dataset", "fashion-mnist",
        "--resolution", 16, "--max-steps", 8, "--batch-size", 16, "--param-budget", 30000, "--max-images", 256,
        "--condition", "class", "--condition-width", 16, "--out", out,
    ) == 0
    return out


@pytest.fixture(scope="session")
def tiny_text_dm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text-conditional pixel-space model (f = 1) with its own tokenizer and text encoder."""
    out = tmp_path_factory.mktemp("cond") / "dm-f1-text"
    assert run_cli(
        "train-diffusion", "--factor", 1, "--dataset", "fashion-mnist", "--resolution", 16, "--max-steps", 8,
        "--batch-size", 16, "--param-budget", 30000, "--max-images", 256, "--condition", "text",
        "--condition-width", 16, "--out", out,
    ) == 0
    return out
