import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT, run_cli
from pipelines.checkpoint import latest_checkpoint
from pipelines.pipeline import load_pipeline
from pipelines.training import DiffusionTrainConfig, train_diffusion


def test_diffusion_loss_falls_on_real_data(tmp_path: Path) -> None:
    cfg = DiffusionTrainConfig(
        out=tmp_path / "dm", max_steps=40, batch_size=32, learning_rate=1e-3, factor=1, dataset="fashion-mnist",
        resolution=16, param_budget=40_000, max_images=512, progress=False,
    )
    summary = train_diffusion(cfg)
    losses = __import__("json").loads((latest_checkpoint(cfg.out) / "state.json").read_text())["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert len(losses) == 40 and last < 0.7 * first, (first, last)
    assert summary["train_steps"] == 40 and summary["unet_params"] > 0 and summary["device"] == "cpu"
    assert load_pipeline(cfg.out).factor == 1


def test_autoencoder_and_latent_diffusion_train_and_sample(tiny_ldm: Path, tmp_path: Path) -> None:
    pipe = load_pipeline(tiny_ldm)
    assert pipe.factor == 4 and pipe.vae.config.scaling_factor != 1.0
    assert run_cli("sample", tiny_ldm, "--n", 5, "--steps", 3, "--batch-size", 2, "--out", tmp_path / "s") == 0
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [f"sample_{i:05d}.png" for i in range(5)]


TRAIN = [
    sys.executable, "-m", "ldm_eval", "train-diffusion", "--factor", "1", "--dataset", "fashion-mnist",
    "--resolution", "16", "--max-steps", "60", "--checkpoint-every", "10", "--batch-size", "16",
    "--param-budget", "20000", "--max-images", "256", "--seed", "3",
]


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(TRAIN + ["--out", str(whole)]).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(TRAIN + ["--out", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpt = latest_checkpoint(killed)
        if ckpt is not None and ckpt.name >= "step-00000020":
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = latest_checkpoint(killed)
    assert interrupted_at is not None and interrupted_at.name < "step-00000060", "the run finished before the kill"
    result = _run(TRAIN + ["--out", str(killed), "--resume"])
    assert result.returncode == 0, result.stderr
    a, b = latest_checkpoint(whole), latest_checkpoint(killed)
    assert a.name == b.name == "step-00000060"
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa), f"{name} differs after resume"


def test_training_input_errors(tmp_path: Path, tiny_autoencoder: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train-diffusion", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "2", "--param-budget", "20000"]
    cases = [
        (["--factor", "4", "--out", tmp_path / "a"], "needs --autoencoder"),
        (["--factor", "1", "--autoencoder", tiny_autoencoder, "--out", tmp_path / "b"], "--autoencoder is not allowed"),
        (["--factor", "8", "--autoencoder", tiny_autoencoder, "--out", tmp_path / "c"], "has f = 4, not 8"),
        (["--factor", "1", "--dataset", tmp_path / "missing", "--out", tmp_path / "d"], "does not exist"),
        (["--factor", "1", "--autoencoder", tmp_path, "--out", tmp_path / "e"], "not allowed"),
    ]
    for extra, message in cases:
        assert run_cli(*base, *extra) == 2
        assert message in capsys.readouterr().err
    assert run_cli("train-autoencoder", "--factor", "8", "--dataset", "fashion-mnist", "--resolution", "20", "--max-steps", "1", "--out", tmp_path / "f") == 2
    assert "does not divide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli("train-diffusion", "--factor", "3", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "1", "--out", tmp_path / "g")


def test_existing_checkpoints_need_resume_and_corrupt_checkpoint_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train-diffusion", "--factor", "1", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "2",
            "--param-budget", "20000", "--max-images", "64", "--batch-size", "4", "--out", tmp_path / "run"]
    assert run_cli(*args) == 0
    capsys.readouterr()
    assert run_cli(*args) == 2
    assert "pass --resume" in capsys.readouterr().err
    ckpt = latest_checkpoint(tmp_path / "run")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    assert run_cli(*args, "--resume") == 2
    assert "corrupt" in capsys.readouterr().err


def test_corrupt_autoencoder_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 10)
    assert run_cli("train-diffusion", "--factor", "4", "--autoencoder", tmp_path, "--dataset", "fashion-mnist",
                   "--resolution", "16", "--max-steps", "1", "--out", tmp_path / "o") == 2
    assert "Could not load the autoencoder" in capsys.readouterr().err


@pytest.mark.parametrize("condition", ["none", "text"])
def test_two_process_training_over_gloo(tmp_path: Path, condition: str) -> None:
    """The distributed path (what `accelerate launch` uses on GPUs), run as two CPU ranks.

    With ``text`` the UNet and the text encoder train as one DDP module (gradients of both synced).
    """
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--nproc_per_node", "2", "-m", "ldm_eval", "train-diffusion", "--cpu", "--factor", "1",
            "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "4", "--checkpoint-every", "2",
            "--batch-size", "8", "--param-budget", "20000", "--max-images", "128", "--condition", condition,
            "--condition-width", "16", "--out", str(tmp_path / "mp")]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = __import__("json").loads((tmp_path / "mp" / "training.json").read_text())
    assert summary["num_processes"] == 2 and summary["train_images"] == 4 * 8 * 2
    assert latest_checkpoint(tmp_path / "mp").name == "step-00000004"
    pipe = load_pipeline(tmp_path / "mp")
    assert pipe.factor == 1 and pipe.condition == condition
