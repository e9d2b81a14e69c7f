import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

from pipelines.callbacks import Milestones, Snapshot
from pipelines.checkpoint import latest_checkpoint
from pipelines.diffusion_training import DiffusionTrainConfig, train_diffusion
from pipelines.loading import load_pipeline


def test_diffusion_loss_falls_on_real_data(tmp_path: Path) -> None:
    cfg = DiffusionTrainConfig(
        out=tmp_path / "dm", max_steps=40, batch_size=32, learning_rate=1e-3, factor=1, dataset="fashion-mnist",
        resolution=16, param_budget=40_000, max_images=512, progress=False,
    )
    summary = train_diffusion(cfg).summary
    losses = __import__("json").loads((latest_checkpoint(cfg.out) / "state.json").read_text())["losses"]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert len(losses) == 40 and last < 0.7 * first, (first, last)
    assert summary.train_steps == 40 and summary.unet_params > 0 and summary.device == "cpu"
    assert load_pipeline(cfg.out).factor == 1


def test_min_snr_weighting_scales_each_samples_error_by_min_snr_gamma_over_snr() -> None:
    """``snr_gamma``: diffusers' ``compute_snr`` per sampled timestep, weights min(SNR, gamma) / SNR."""
    from diffusers.training_utils import compute_snr

    from pipelines.diffusion_training import diffusion_loss
    from pipelines.pipeline import default_train_scheduler
    from pipelines.training import TrainingError

    class Zero(torch.nn.Module):  # predicts no noise: the loss is then each sample's noise power, weighted
        def forward(self, x, t):
            return type("Out", (), {"sample": torch.zeros_like(x)})()

    scheduler = default_train_scheduler(pixel_space=False)
    latents = torch.zeros(64, 3, 4, 4)
    plain = diffusion_loss(Zero(), scheduler, latents, torch.Generator().manual_seed(1))
    weighted = diffusion_loss(Zero(), scheduler, latents, torch.Generator().manual_seed(1), snr_gamma=5.0)
    g = torch.Generator().manual_seed(1)  # the same draws, by hand
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    snr = compute_snr(scheduler, t)
    power = noise.pow(2).mean(dim=(1, 2, 3))
    assert torch.isclose(plain, power.mean())
    assert torch.isclose(weighted, (power * snr.clamp(max=5.0) / snr).mean())
    assert (snr > 5).any() and (snr < 5).any() and weighted < plain  # nearly clean steps count for less
    with pytest.raises(TrainingError, match="min-SNR gamma"):
        DiffusionTrainConfig(out=Path("unused"), max_steps=1, snr_gamma=-1).validate()


def test_a_resumed_run_keeps_its_loss_weighting(tmp_path: Path) -> None:
    """A checkpoint trained with min-SNR weighting does not silently continue under another loss."""
    def config(gamma: float, steps: int) -> DiffusionTrainConfig:
        return DiffusionTrainConfig(out=tmp_path / "dm", max_steps=steps, batch_size=8, factor=1, snr_gamma=gamma,
                                    dataset="fashion-mnist", resolution=16, param_budget=20_000, max_images=64,
                                    progress=False, checkpoint_every=2, resume=True)

    assert train_diffusion(config(5.0, 2)).summary.train_steps == 2
    with pytest.raises(Exception, match="snr_gamma"):
        train_diffusion(config(0.0, 4))
    assert train_diffusion(config(5.0, 4)).summary.train_steps == 4


def test_the_paper_codes_schedule_spaces_square_roots_of_beta_and_travels_with_the_model(tmp_path: Path) -> None:
    """``beta_schedule="scaled_linear"``: sqrt(beta) spaced linearly from sqrt(0.0015) to sqrt(0.0195), as the
    paper's code does; the saved model samples with it, a resume under the other schedule is refused, and an
    unknown name is refused by field."""
    from pipelines.errors import InputError
    from pipelines.pipeline import default_train_scheduler

    def config(schedule: str, steps: int) -> DiffusionTrainConfig:
        return DiffusionTrainConfig(out=tmp_path / "dm", max_steps=steps, batch_size=8, factor=1,
                                    dataset="fashion-mnist", resolution=16, param_budget=20_000, max_images=64,
                                    progress=False, checkpoint_every=2, resume=True, beta_schedule=schedule)

    train_diffusion(config("scaled_linear", 2))
    betas = load_pipeline(tmp_path / "dm").scheduler.betas.double()
    expected = torch.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(betas, expected, rtol=1e-5)
    linear = default_train_scheduler(pixel_space=False).alphas_cumprod
    assert linear[899] < 0.25 * torch.cumprod(1 - expected, 0)[899]  # "linear" leaves far less signal late
    with pytest.raises(Exception, match="beta_schedule"):
        train_diffusion(config("linear", 4))
    with pytest.raises(InputError, match="Unknown beta schedule 'cosine'") as refused:
        default_train_scheduler(pixel_space=False, beta_schedule="cosine")
    assert refused.value.field == "beta_schedule"


def test_a_time_budget_is_kept_to_within_one_step_and_never_overrun(tmp_path: Path) -> None:
    """Training stops when the next step would overrun the budget (it once reported 76 s for 60 s)."""
    budget = 3.0
    cfg = DiffusionTrainConfig(
        out=tmp_path / "dm", max_seconds=budget, batch_size=16, factor=1, dataset="fashion-mnist",
        resolution=16, param_budget=40_000, max_images=256, progress=False, resume=True,
    )
    summary = train_diffusion(cfg).summary
    step = summary.train_seconds / summary.train_steps
    assert summary.train_steps >= 1
    if summary.train_steps >= 3:  # (a machine so loaded that a step takes the whole budget predicts nothing)
        assert summary.train_seconds <= budget
        assert budget - summary.train_seconds < 4 * step, (summary.train_seconds, step)  # stopped near the budget
        # resumed once finished (a killed sweep run again), it knows its steps' length and trains no further
        again = train_diffusion(cfg).summary
        assert (again.train_steps, again.resumed_at_step) == (summary.train_steps, summary.train_steps)
        assert again.train_seconds == summary.train_seconds


def test_evaluation_inside_one_training_run_sees_ema_weights_and_changes_nothing(tmp_path: Path) -> None:
    """The Fig. 6 path: evaluations at milestones of one run, with EMA weights swapped in and then restored."""
    def config(out: Path) -> DiffusionTrainConfig:
        return DiffusionTrainConfig(out=out, max_steps=12, batch_size=8, factor=1, dataset="fashion-mnist",
                                    resolution=16, param_budget=20_000, max_images=128, progress=False)

    seen: list[tuple[int, int, np.ndarray, dict]] = []

    def evaluate(snapshot: Snapshot, point: int) -> None:
        with snapshot.evaluating() as pipe:
            images = pipe(num_images=2, num_inference_steps=2, seed=0).images
            weights = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
        seen.append((point, snapshot.state.step, images, weights))

    evaluated = train_diffusion(config(tmp_path / "a"), callbacks=[Milestones.evenly(12, 3, "steps", evaluate)])
    plain = train_diffusion(config(tmp_path / "b"))
    assert [(point, step) for point, step, *_ in seen] == [(1, 4), (2, 8), (3, 12)]
    final = dict(evaluated.pipeline.unet.named_parameters())
    for name, param in plain.pipeline.unet.named_parameters():  # evaluating did not disturb training
        assert torch.equal(param, final[name]), name
    assert all(torch.equal(seen[-1][3][n], p) for n, p in final.items())  # the last check saw the final EMA weights
    assert not all(torch.equal(seen[0][3][n], p) for n, p in final.items())
    np.testing.assert_array_equal(seen[-1][2], evaluated.pipeline(num_images=2, num_inference_steps=2, seed=0).images)
    assert evaluated.summary.peak_mem_train_mb > 0 and "largest training step" in evaluated.summary.memory_method


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


# A VQ first stage with the patch GAN switched on at step 20: the discriminator, its optimiser
# state and the codebook's running usage must all come back from the checkpoint.
TRAIN_AUTOENCODER = [
    sys.executable, "-m", "ldm_eval", "train-autoencoder", "--factor", "4", "--kind", "vq", "--dataset",
    "fashion-mnist", "--resolution", "16", "--max-steps", "60", "--checkpoint-every", "10", "--batch-size", "8",
    "--base-width", "8", "--codebook-size", "16", "--disc-start", "20", "--disc-width", "8", "--max-images", "256",
    "--seed", "3",
]


@pytest.mark.parametrize("train", [TRAIN, TRAIN_AUTOENCODER], ids=["diffusion", "vq-gan-autoencoder"])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path, train: list[str]) -> None:
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _run(train + ["--out", str(whole)]).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(train + ["--out", str(killed)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    result = _run(train + ["--out", str(killed), "--resume"])
    assert result.returncode == 0, result.stderr
    a, b = latest_checkpoint(whole), latest_checkpoint(killed)
    assert a.name == b.name == "step-00000060"
    names = ["model.safetensors"] + (["ema.safetensors"] if train is TRAIN else [])
    if train is TRAIN_AUTOENCODER:
        assert {"disc.net.0.weight", "keeper.usage"} <= load_file(a / "model.safetensors").keys()
    for name in names:
        wa, wb = load_file(a / name), load_file(b / name)
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa), f"{name} differs after resume"


def test_training_input_errors(tmp_path: Path, tiny_autoencoder: Path, capsys: pytest.CaptureFixture) -> None:
    base = ["train-diffusion", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "2", "--param-budget", "20000"]
    cases = [
        (["--factor", "4", "--out", tmp_path / "a"], "--autoencoder: f = 4 needs a trained autoencoder folder"),
        (["--factor", "1", "--autoencoder", tiny_autoencoder, "--out", tmp_path / "b"],
         "--autoencoder: f = 1 is pixel-space diffusion: it takes no autoencoder"),
        (["--factor", "8", "--autoencoder", tiny_autoencoder, "--out", tmp_path / "c"], "has f = 4, not 8"),
        (["--factor", "1", "--dataset", tmp_path / "missing", "--out", tmp_path / "d"], "does not exist"),
        (["--factor", "1", "--autoencoder", tmp_path, "--out", tmp_path / "e"], "takes no autoencoder"),
        (["--factor", "3", "--out", tmp_path / "g"], "Unknown downsampling factor 3; choose one of [1, 2, 4, 8, 16, 32]"),
        (["--factor", "1", "--max-seconds", "5", "--out", tmp_path / "h"], "--max-steps: Give exactly one budget"),
        (["--factor", "1", "--batch-size", "0", "--out", tmp_path / "i"],
         "--batch-size: Batch size must be from 1 to 65536 (got 0)"),
    ]
    for extra, message in cases:
        assert run_cli(*base, *extra) == 2
        assert message in capsys.readouterr().err
    assert run_cli("train-autoencoder", "--factor", "8", "--dataset", "fashion-mnist", "--resolution", "20", "--max-steps", "1", "--out", tmp_path / "f") == 2
    assert "does not divide" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcdfghi")


def test_existing_checkpoints_need_resume_and_corrupt_checkpoint_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train-diffusion", "--factor", "1", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "2",
            "--param-budget", "20000", "--max-images", "64", "--batch-size", "4", "--out", tmp_path / "run"]
    assert run_cli(*args) == 0
    capsys.readouterr()
    assert run_cli(*args) == 2
    assert "--resume: " in (err := capsys.readouterr().err) and "already holds checkpoints" in err
    ckpt = latest_checkpoint(tmp_path / "run")
    (ckpt / "model.safetensors").write_bytes(b"garbage")
    assert run_cli(*args, "--resume") == 2
    assert f"Checkpoint '{ckpt}' is corrupt or from another model" in capsys.readouterr().err


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


def test_recipe_benchmark_prints_each_setting_against_its_baseline(capsys) -> None:
    """bench-train --recipe: every speed setting timed against its baseline; EMA foreach and inference_mode
    compute exactly what their baselines compute, channels_last the same up to float rounding."""
    from conftest import run_cli

    assert run_cli("bench-train", "--recipe", "--param-budget", "30000", "--batch-size", "4", "--steps", "3") == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip() + "/" + line.split("|")[3].strip(): line.split("|")
            for line in out.splitlines() if line.startswith("| ") and "setting" not in line}
    assert set(rows) == {"EMA update/foreach", "sampling forward/inference_mode", "training step/channels_last",
                         "training step/bf16 autocast"}
    assert float(rows["EMA update/foreach"][7]) == 0 and float(rows["sampling forward/inference_mode"][7]) == 0
    assert float(rows["training step/channels_last"][7]) < 1e-4
    assert "refused on this CPU" in out or "enabled on this CPU" in out


def test_one_process_trains_in_one_precision_then_another() -> None:
    """A zoo cell trains its autoencoder in fp32, then its denoiser in bf16, in one process: accelerate
    refuses a second precision unless its state is reset (the GPU preset's first run failed on this)."""
    from types import SimpleNamespace

    from pipelines.training import make_accelerator

    # (accelerate's state is process-wide: read each precision while its accelerator is the current one)
    assert make_accelerator(SimpleNamespace(mixed_precision="no", cpu=True)).mixed_precision == "no"
    assert make_accelerator(SimpleNamespace(mixed_precision="bf16", cpu=True)).mixed_precision == "bf16"
    assert make_accelerator(SimpleNamespace(mixed_precision="no", cpu=True)).mixed_precision == "no"


def test_train_benchmark_prints_every_factor_with_its_memory(tmp_path, capsys) -> None:
    """bench-train: each factor trained through the real loop, cached and on the fly, with the tensor memory."""
    from conftest import run_cli

    assert run_cli("bench-train", "--resolutions", "16", "--factors", "1,4,16", "--batch-size", "4", "--steps", "2",
                   "--out", tmp_path) == 0
    table = __import__("pandas").read_csv(tmp_path / "train_benchmark.csv")
    assert list(table["factor"]) == [1, 4] and (table["train_images_per_s"] > 0).all()
    assert (table["peak_mem_train_mb"] > 0).all() and table["cache_speedup"].notna().tolist() == [False, True]
    out = capsys.readouterr().out
    assert "memory: tensor peak above the block's start" in out and "skipped: Factor 16 at 16 px leaves a 1x1" in out
