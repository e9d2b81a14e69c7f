"""The first stage's objective: patch GAN, adaptive weight, VQ that learns, bad input, the study."""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import run_cli
from diffusers import VQModel
from safetensors.torch import load_file, save_file

from pipelines.autoencoder_training import (
    AutoencoderTrainConfig,
    FirstStageObjective,
    train_autoencoder,
)
from pipelines.codebook import CodebookKeeper, codebook_stats
from pipelines.data import load_dataset
from pipelines.discriminator import hinge_discriminator_loss
from pipelines.first_stage import (
    ATTENTION_FROM_FACTOR,
    CHANNEL_MULTIPLIERS,
    AutoencoderSpec,
    FirstStageError,
    build_autoencoder,
    load_autoencoder,
)
from pipelines.images import uint8_to_signed


def _objective(kind: str = "kl", **kw) -> FirstStageObjective:
    cfg = AutoencoderTrainConfig(out=Path("unused"), max_steps=1, factor=4, kind=kind, resolution=16, base_width=8,
                                 disc_width=8, **kw)
    torch.manual_seed(0)
    return FirstStageObjective(build_autoencoder(cfg.spec(1)), cfg, 1)


def _faces(n: int = 16) -> torch.Tensor:
    return uint8_to_signed(load_dataset("fashion-mnist", 16, 1, split="train").images[:n])


def test_generator_term_does_not_train_the_discriminator_and_weight_is_adaptive() -> None:
    obj = _objective()
    x = _faces()
    loss = obj(x, torch.Generator().manual_seed(1), step=0, adversarial=True)
    loss.backward()
    got = {n: p.grad.clone() for n, p in obj.disc.named_parameters()}
    obj.zero_grad()
    # the discriminator's gradient is exactly that of its own hinge loss on the same reconstruction
    recon, _ = obj.reconstruct_for_training(x, torch.Generator().manual_seed(1), 0)
    hinge_discriminator_loss(obj.disc(x), obj.disc(recon.detach().float())).backward()
    for name, param in obj.disc.named_parameters():
        torch.testing.assert_close(got[name], param.grad, msg=name)
    # the adversarial term reaches the decoder: its last layer's gradient differs from L1 + KL alone
    obj.zero_grad()
    obj(x, torch.Generator().manual_seed(1), step=0, adversarial=True).backward()
    with_gan = obj.vae.decoder.conv_out.weight.grad.clone()
    obj.zero_grad()
    obj(x, torch.Generator().manual_seed(1), step=0, adversarial=False).backward()
    assert not torch.allclose(with_gan, obj.vae.decoder.conv_out.weight.grad)
    assert all(p.grad is None or not p.grad.any() for p in obj.disc.parameters())  # off before the warm-up ends


def test_default_codebook_init_collapses_and_data_init_spreads_codes() -> None:
    """The diagnosis of the old VQ collapse, measured: diffusers' tiny uniform codes vs codes drawn from the data."""
    obj = _objective("vq", codebook_size=64)
    vae: VQModel = obj.vae
    x = _faces(64)
    before = codebook_stats(vae, x)
    CodebookKeeper.update(obj.keeper, vae, vae.encode(x).latents, 0, torch.Generator().manual_seed(0))
    after = codebook_stats(vae, x)
    # at diffusers' init a couple of codes take nearly every vector (perplexity ~2.5 of 64 measured)
    assert before.perplexity < 5 and after.usage >= 0.9 and after.perplexity > 8 * before.perplexity, (before, after)


def test_dead_codes_are_reseeded_from_the_batch() -> None:
    obj = _objective("vq", codebook_size=16)
    vae, keeper = obj.vae, obj.keeper
    latents = vae.encode(_faces(8)).latents
    keeper.update(vae, latents, 0, torch.Generator().manual_seed(0))
    vae.quantize.embedding.weight.data[3] = 1e6  # a code nothing can reach
    keeper.usage[3] = 0.0
    keeper.update(vae, latents, keeper.reseed_every, torch.Generator().manual_seed(0))
    assert vae.quantize.embedding.weight[3].abs().max() < 1e3


def test_ema_codebook_moves_codes_to_their_cluster_means() -> None:
    """With an EMA codebook every used code is the running mean of the vectors assigned to it, and takes no gradient."""
    obj = _objective("vq", codebook_size=16, codebook_ema=0.5)
    vae, keeper = obj.vae, obj.keeper
    assert not vae.quantize.embedding.weight.requires_grad
    assert all(p is not vae.quantize.embedding.weight for g in obj.param_groups() for p in g["params"])
    latents = vae.encode(_faces(8)).latents
    for step in range(6):  # the same batch again and again: k-means steps on it
        keeper.update(vae, latents, step, torch.Generator().manual_seed(step))
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    codes = vae.quantize.embedding.weight
    index = torch.cdist(vectors, codes).argmin(1)
    for code in index.unique()[:5]:  # each used code sits near the mean of its members
        members = vectors[index == code].mean(0)
        assert torch.dist(codes[code], members) < 0.2 * vectors.std() + 1e-4
    loss = obj(_faces(8), torch.Generator().manual_seed(0), step=7, adversarial=False)
    loss.backward()  # the commitment term trains the encoder; the codes stay out of the optimiser
    assert vae.quantize.embedding.weight.grad is None and vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert "EMA codebook 0.5 + commitment 0.25" in AutoencoderTrainConfig(
        out=Path("x"), max_steps=1, kind="vq", codebook_ema=0.5).losses()


def test_commitment_weight_scales_only_the_encoders_pull() -> None:
    """Our VQ loss with a gradient-learned codebook (--codebook-ema 0): commitment_weight x |z - sg(e)|^2 +
    |sg(z) - e|^2 (diffusers' quantiser swaps the two weights)."""
    x = _faces(8)
    grads = {}
    for weight in (0.25, 1.0):
        obj = _objective("vq", codebook_size=16, commitment_weight=weight, disc_weight=0.0, codebook_ema=0.0)
        obj.keeper.update(obj.vae, obj.vae.encode(x).latents, 0, torch.Generator().manual_seed(0))
        _, regulariser = obj.reconstruct_for_training(x, torch.Generator().manual_seed(0), 1)
        regulariser.backward()
        grads[weight] = (obj.vae.quantize.embedding.weight.grad.clone(), obj.vae.encoder.conv_in.weight.grad.clone())
    torch.testing.assert_close(grads[0.25][0], grads[1.0][0])  # the codebook term does not change
    torch.testing.assert_close(4 * grads[0.25][1], grads[1.0][1])  # the encoder's pull scales with the weight


def test_architecture_follows_the_papers_configs() -> None:
    for factor, mults in CHANNEL_MULTIPLIERS.items():
        spec = AutoencoderSpec(factor=factor, resolution=64, base_width=8)
        vae = build_autoencoder(spec)
        assert tuple(vae.config.block_out_channels) == tuple(8 * m for m in mults)
        assert vae.config.mid_block_add_attention == (factor >= ATTENTION_FROM_FACTOR)
    wide = build_autoencoder(AutoencoderSpec(factor=8, resolution=64, base_width=16))
    assert wide.config.block_out_channels[0] == 16


def test_gan_vq_training_runs_and_reports_its_losses(tmp_path: Path) -> None:
    trained = train_autoencoder(AutoencoderTrainConfig(
        out=tmp_path / "vq", max_steps=6, batch_size=4, factor=4, kind="vq", dataset="fashion-mnist", resolution=16,
        base_width=8, disc_width=8, disc_start=3, codebook_size=16, max_images=64, progress=False))
    assert "PatchGAN(hinge, weight 0.1, from step 3)" in trained.summary.losses
    assert trained.summary.codebook_size == 16
    saved = json.loads((tmp_path / "vq" / "training.json").read_text())
    assert saved["losses"] == trained.summary.losses
    weights = load_file(next((tmp_path / "vq" / "checkpoints").iterdir()) / "model.safetensors")
    assert any(k.startswith("disc.") for k in weights) and "keeper.usage" in weights  # all in the checkpoint
    assert not any(k.startswith("disc.") for k in load_file(tmp_path / "vq" / "diffusion_pytorch_model.safetensors"))


BAD = [
    (["--kind", "ae"], "--kind", "invalid choice"),
    (["--kind", "vq", "--codebook-size", "1"], "--codebook-size: ", "at least 2 codes"),
    (["--disc-start", "-1"], "--disc-start: ", "cannot be negative"),
    (["--factor", "32"], "--factor: ", "leaves a 1x1 latent"),
]


@pytest.mark.parametrize("extra,flag,message", BAD)
def test_bad_autoencoder_requests_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                                flag: str, message: str) -> None:
    base = ["train-autoencoder", "--factor", "4", "--dataset", "fashion-mnist", "--resolution", "32", "--max-steps",
            "2", "--out", tmp_path / "ae"]
    with pytest.raises(SystemExit) if "invalid choice" in message else nullcontext():
        assert run_cli(*base, *extra) == 2
    err = capsys.readouterr().err
    assert flag in err and message in err, err
    assert not (tmp_path / "ae").exists()


def test_nan_codebook_refuses_to_load(tmp_path: Path) -> None:
    vae = build_autoencoder(AutoencoderSpec(factor=4, kind="vq", image_channels=1, resolution=16, base_width=8))
    vae.register_to_config(scaling_factor=1.0)
    vae.save_pretrained(tmp_path, safe_serialization=True)
    assert load_autoencoder(tmp_path).config.num_vq_embeddings == 512
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    weights["quantize.embedding.weight"] = torch.full_like(weights["quantize.embedding.weight"], float("nan"))
    save_file(weights, path)
    with pytest.raises(FirstStageError, match="corrupt: its VQ codebook"):
        load_autoencoder(tmp_path)


def test_perceptual_term_says_clearly_when_vgg_weights_are_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert run_cli("train-autoencoder", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "1",
                   "--perceptual-weight", "1", "--out", tmp_path / "ae") == 2
    err = capsys.readouterr().err
    assert "--perceptual-weight: " in err and "VGG16 weights" in err and "perceptual weight 0" in err
    assert not (tmp_path / "ae").exists()


def test_first_stage_study_writes_tab8_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "fs"
    assert run_cli("ae-sweep", "--preset", "ae-smoke", "--out", out) == 0
    table = pd.read_csv(out / "results.csv")
    for column in ("kind", "factor", "latent_shape", "codebook_size", "codebook_usage", "ae_params", "psnr", "ssim",
                   "rfid", "rfid_samples", "train_seconds", "losses"):
        assert column in table.columns, column
    rows = {(r.kind, r.factor, r.variant) for r in table.itertuples()}
    assert rows == {("kl", 4, "default"), ("vq", 4, "default"), ("kl", 8, "default"), ("vq", 8, "default"),
                    ("kl", 4, "no-gan"), ("kl", 4, "gan-from-0.3")}
    vq = table[table.kind == "vq"]
    assert vq["codebook_usage"].between(0, 1).all() and (vq["codebook_size"] == 32).all()
    assert table["codebook_usage"][table.kind == "kl"].isna().all()
    assert (table["rfid_samples"] == 6).all() and table["rfid"].notna().all()
    no_gan = table[table.variant == "no-gan"]["losses"].iloc[0]
    assert "PatchGAN" not in no_gan and "PatchGAN" in table[table.variant == "default"]["losses"].iloc[0]
    assert "from step 3" in table[table.variant == "default"]["losses"].iloc[0]  # 60 % of 6 steps
    assert "from step 1" in table[table.variant == "gan-from-0.3"]["losses"].iloc[0]  # 30 % of 6 steps
    report = (out / "report.md").read_text()
    assert "The paper's Tab. 8" in report and "recon-kl-f4-no-gan.png" in report
    assert "- KL f = 4: with the GAN from 30% of the budget PSNR" in report
    assert sorted(p.name for p in (out / "grids").iterdir()) == [
        "recon-kl-f4-gan-from-0.3.png", "recon-kl-f4-no-gan.png", "recon-kl-f4.png", "recon-kl-f8.png", "recon-vq-f4.png", "recon-vq-f8.png"]
    lines = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert run_cli("ae-sweep", "--preset", "ae-smoke", "--out", out, "--resume") == 0
    assert (out / "results.jsonl").read_text() == lines  # nothing measured twice
    assert run_cli("report", out) == 0 and "codebook_usage" in capsys.readouterr().out


def test_two_process_vq_gan_training_over_gloo(tmp_path: Path) -> None:
    """`accelerate launch` on GPUs; here two CPU ranks: the GAN and the codebook upkeep under DDP."""
    import subprocess
    import sys

    from conftest import ROOT

    torchrun = Path(sys.executable).with_name("torchrun")
    args = [str(torchrun), "--nproc_per_node", "2", "-m", "ldm_eval", "train-autoencoder", "--cpu", "--kind", "vq",
            "--factor", "4", "--dataset", "fashion-mnist", "--resolution", "16", "--max-steps", "4",
            "--disc-start", "2", "--batch-size", "4", "--base-width", "8", "--codebook-size", "16",
            "--max-images", "64", "--out", str(tmp_path / "mp")]
    result = subprocess.run(args, cwd=ROOT, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "mp" / "training.json").read_text())
    assert summary["num_processes"] == 2 and summary["train_images"] == 4 * 4 * 2
    assert torch.isfinite(load_autoencoder(tmp_path / "mp").quantize.embedding.weight).all()


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero() -> None:
    from pipelines.checkpoint import TrainState
    from pipelines.training import TrainingError, learning_rate_scale

    cfg = AutoencoderTrainConfig(out=Path("unused"), max_steps=1000, warmup_steps=50)
    assert cfg.lr_schedule == "cosine"  # the autoencoders' default
    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * step / 1000))

    scales = [learning_rate_scale(cfg, TrainState(step=s)) for s in (0, 24, 49, 500, 999)]
    assert scales[0] == pytest.approx(1 / 50) and scales[1] == pytest.approx(25 / 50 * cosine(24))
    assert scales[2] == pytest.approx(cosine(49)) and scales[3] == pytest.approx(0.5)
    assert 0 < scales[4] < 1e-4
    timed = AutoencoderTrainConfig(out=Path("unused"), max_seconds=100, warmup_steps=0)
    assert learning_rate_scale(timed, TrainState(step=10, seconds=50.0)) == pytest.approx(0.5)
    constant = AutoencoderTrainConfig(out=Path("unused"), max_steps=10, lr_schedule="constant", warmup_steps=0)
    assert learning_rate_scale(constant, TrainState(step=9)) == 1.0
    with pytest.raises(TrainingError, match="schedule"):
        AutoencoderTrainConfig(out=Path("unused"), max_steps=10, lr_schedule="linear").validate()
