"""``python -m ldm_eval evaluate``: tiny models in both public layouts, real Inception FID, the reference cache."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, write_pngs
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline

from ldm_eval.reporting.evaluation import evaluation_table
from ldm_eval.reporting.page import read_run
from pipelines.data import load_dataset
from pipelines.denoiser import DenoiserSpec, build_denoiser
from pipelines.first_stage import AutoencoderSpec, build_autoencoder
from pipelines.records import FidRecord, ModelRecord, ReferenceRecord, SamplingRecord
from pipelines.results_log import read_results

N = 20


@pytest.fixture(scope="module")
def public_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Untrained tiny models saved exactly as the public pipelines save them (google/ddpm-*, CompVis/ldm-*)."""
    root = tmp_path_factory.mktemp("public")
    ddpm = root / "tiny-ddpm"
    DDPMPipeline(unet=build_denoiser(DenoiserSpec(side=16, channels=3, param_budget=20_000)),
                 scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(ddpm)
    ldm = root / "tiny-ldm-vq"
    vqvae = build_autoencoder(AutoencoderSpec(factor=4, kind="vq", image_channels=3, resolution=16, base_width=8))
    LDMPipeline(vqvae=vqvae, unet=build_denoiser(DenoiserSpec(side=4, channels=3, param_budget=20_000)),
                scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(ldm)
    return ddpm, ldm


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real images as files: Fashion-MNIST test images, RGB PNGs."""
    images = load_dataset("fashion-mnist", 16, 3, split="test").images[:N]
    return write_pngs(images, tmp_path_factory.mktemp("reference"))


def test_evaluates_both_public_layouts_and_reuses_the_reference(public_models, reference_folder, tmp_path) -> None:
    ddpm, ldm = public_models
    out = tmp_path / "eval"
    args = ["evaluate", ddpm, ldm, "--reference", reference_folder, "--n", N, "--ddim-steps", "2,3",
            "--batch-size", 8, "--bootstrap-resamples", 20]
    assert run_cli(*args, "--out", out) == 0
    results = read_results(out)
    models = {m.model: m for m in results.of(ModelRecord)}
    assert models["tiny-ddpm"].layout == "DDPMPipeline" and models["tiny-ddpm"].kind == "pixel"
    assert models["tiny-ldm-vq"].layout == "LDMPipeline" and models["tiny-ldm-vq"].kind == "vq"
    assert models["tiny-ldm-vq"].factor == 4 and models["tiny-ldm-vq"].latent_shape == [3, 4, 4]
    assert models["tiny-ldm-vq"].params["vae"] > 0 and models["tiny-ddpm"].params["vae"] == 0
    fids = results.of(FidRecord)
    assert {(r.model, r.ddim_steps) for r in fids} == {(m, s) for m in models for s in (2, 3)}
    for r in fids:
        assert r.fid_backend == "inception" and r.fid_samples == N and r.reference_samples == N
        assert r.fid_ci_low <= r.fid <= r.fid_ci_high and r.fid_inf is not None
        assert r.kid_std is not None and r.kid_subset_size == N // 2
    assert all(s.sec_per_image > 0 and s.n == N for s in results.of(SamplingRecord))
    (first,) = results.of(ReferenceRecord)
    assert not first.cached and first.compute_seconds > 0
    table = evaluation_table(read_run(out))
    assert len(table) == 4 and table["fid_ci_high"].notna().all()
    report = (out / "report.md").read_text()
    assert "**Finding**" in "\n".join(report.splitlines()[:5])  # the ranking opens the report
    assert "DDIM 2:" in report and "tiny-ddpm" in report
    assert "Reference and evaluation images: a random draw (seed 0)." in report  # a folder: no labels to stratify by
    assert "resized to the model's 16 px" in report
    assert (out / "grids" / "samples-tiny-ldm-vq-ddim3.png").is_file()
    assert (out / "plots" / "fid_vs_speed.png").is_file()

    # --resume measures nothing again
    lines = (out / "results.jsonl").read_text().count("\n")
    assert run_cli(*args, "--out", out, "--resume") == 0
    assert (out / "results.jsonl").read_text().count("\n") - lines <= 3  # environment/model/reference notes only
    assert len(read_results(out).of(SamplingRecord)) == 4

    # a second evaluation against the same images skips the reference pass
    again = tmp_path / "again"
    assert run_cli("evaluate", ldm, "--reference", reference_folder, "--n", N, "--ddim-steps", 2,
                   "--bootstrap-resamples", 0, "--out", again) == 0
    (second,) = read_results(again).of(ReferenceRecord)
    assert second.cached and second.content == first.content
    assert second.compute_seconds == first.compute_seconds and second.seconds < first.compute_seconds
    assert "time saved" in (again / "report.md").read_text()

    # 10 samples against all 20 reference images (the "N samples vs more held-out images")
    uneven = tmp_path / "uneven"
    assert run_cli("evaluate", ldm, "--reference", reference_folder, "--n", N // 2, "--reference-n", N,
                   "--ddim-steps", 2, "--bootstrap-resamples", 0, "--out", uneven) == 0
    (fid,) = read_results(uneven).of(FidRecord)
    assert fid.fid_samples == N // 2 and fid.reference_samples == N
    assert read_results(uneven).one(ReferenceRecord).cached  # the same 20 images as before
    assert f", {N} images; N = {N // 2} samples per model" in (uneven / "report.md").read_text()


def test_a_measurement_goes_on_the_card_of_the_weights_it_measured(public_models, reference_folder, tmp_path) -> None:
    """A zoo card lists what evaluate measured of the very weights its folder holds, whatever the folder's name."""
    import shutil

    from ldm_eval.zoo.cards import evaluation_lines
    from pipelines.loading import weights_digest

    ddpm, _ = public_models
    model = tmp_path / "zoo" / "renamed-ddpm"  # measured as tiny-ddpm, shipped under another name: the weights decide
    shutil.copytree(ddpm, model)
    out = tmp_path / "eval"
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--n", N, "--ddim-steps", 2,
                   "--bootstrap-resamples", 20, "--out", out) == 0
    results = read_results(out)
    assert results.one(ModelRecord).weights_sha256 == weights_digest(ddpm) == weights_digest(model)
    (fid,) = results.of(FidRecord)
    (speed,) = results.of(SamplingRecord)
    text = "\n".join(evaluation_lines(out, results, weights_digest(model)))
    assert f"FID {fid.fid:.2f}, 95 % interval [{fid.fid_ci_low:.2f}, {fid.fid_ci_high:.2f}]" in text
    assert f"precision {fid.precision:.3f}, recall {fid.recall:.3f}" in text
    assert f"N = {N} samples against {N} reference images, DDIM 2 steps" in text
    assert f"peak memory {speed.peak_mem_sample_mb:,.1f} MB at batch {speed.sample_batch} ({speed.memory_method})" \
        in text
    # other weights in the folder (a retrained model): the measurement is not theirs
    weights = next(model.rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert evaluation_lines(out, results, weights_digest(model)) == []


def test_bad_input_is_refused_before_any_work(public_models, reference_folder, tmp_path, capsys) -> None:
    ddpm, _ = public_models
    out = tmp_path / "bad"
    assert run_cli("evaluate", "google/ddpm-celebahq-256", "--reference", reference_folder, "--out", out) == 2
    err = capsys.readouterr().err
    assert "google/ddpm-celebahq-256" in err and "HF_HUB_OFFLINE" in err
    assert run_cli("evaluate", tmp_path / "no-such-model", "--reference", reference_folder, "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--n", N + 1, "--out", out) == 2
    assert f"has {N} images" in capsys.readouterr().err
    # a folder's held-out share (about 11 % of 20 images) is too small for N = 20
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--reference-split", "test", "--n", N,
                   "--out", out) == 2
    assert "(test split) has" in capsys.readouterr().err
    assert run_cli("evaluate", ddpm, "--reference", tmp_path / "nothing", "--n", N, "--out", out) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--ddim-steps", 0, "--out", out) == 2
    assert "--ddim-steps" in capsys.readouterr().err
    assert not (out / "results.jsonl").exists()


def test_hub_ids_are_recognised_and_local_folders_win(tmp_path, monkeypatch) -> None:
    from pipelines.loading import PipelineLoadError, load_model

    with pytest.raises(PipelineLoadError, match="CompVis/ldm-celebahq-256.*HF_HUB_OFFLINE"):
        load_model("CompVis/ldm-celebahq-256")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner").mkdir()
    with pytest.raises(PipelineLoadError, match="no model_index.json"):
        load_model("owner")  # a local folder, not a hub id


def test_precision_is_measured_not_assumed() -> None:
    import torch

    from pipelines.errors import InputError
    from pipelines.precision import bf16_speedup, sampling_dtype

    cpu = torch.device("cpu")
    assert sampling_dtype("no", cpu) == torch.float32
    with pytest.raises(InputError, match="fp16 sampling needs a GPU"):
        sampling_dtype("fp16", cpu)
    if bf16_speedup(cpu) >= 1.0:  # a CPU with fast bf16
        assert sampling_dtype("bf16", cpu) == torch.bfloat16
    else:  # e.g. AVX2 only: refused with the measured factor
        with pytest.raises(InputError, match="slower than fp32"):
            sampling_dtype("bf16", cpu)



def test_fid_command_prints_the_interval_and_kid_spread(reference_folder, tmp_path, capsys) -> None:
    other = write_pngs(load_dataset("fashion-mnist", 16, 3, split="train").images[:N], tmp_path / "train")
    assert run_cli("fid", reference_folder, other, "--kid") == 0
    out = capsys.readouterr().out
    assert f"N = {N} vs {N}" in out and "95 % interval" in out and "FID-infinity" in out
    assert f"std over subsets of {N // 2}" in out


def test_the_demo_lists_a_users_models_beside_the_zoo_and_compares_them(public_models, tmp_path, capsys) -> None:
    """``app.py --models DIR_OR_ID``: public-layout folders join the zoo's list and sample in Compare
    factors beside a zoo model; an offline hub id or a folder that is no pipeline stops start-up
    with one line."""
    import app
    from demo.service import Lab

    ddpm, ldm = public_models
    lab = Lab(device="cpu", user_models=[str(ddpm), str(ldm)])
    users = {m.name: m for m in lab.models if m.name.startswith("user/")}
    assert set(users) == {"user/tiny-ddpm", "user/tiny-ldm-vq"}
    assert (users["user/tiny-ddpm"].factor, users["user/tiny-ddpm"].kind) == (1, "pixel")
    assert (users["user/tiny-ldm-vq"].factor, users["user/tiny-ldm-vq"].kind) == (4, "vq")
    zoo = next(m for m in lab.models if m.name.startswith("models/") and m.condition == "none")
    rows = lab.compare([zoo.name, "user/tiny-ldm-vq"], "ddim", 2, 0)
    assert [r.entry.name for r in rows] == [zoo.name, "user/tiny-ldm-vq"]
    assert rows[1].timed.images.shape[1:3] == (16, 16) and rows[0].timed.images.shape[1] == zoo.resolution

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{}")
    for bad, message in (("CompVis/ldm-celebahq-256", "HF_HUB_OFFLINE"), (str(broken), "broken")):
        with pytest.raises(SystemExit) as exit_info:
            app.main(["--models", str(ddpm), "--models", bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "error: --models:" in err and message in err, err


def test_a_stock_ddpm_folder_is_scored_with_its_own_sampler_in_a_new_folder_each_run(
        public_models, reference_folder, tmp_path, monkeypatch, capsys) -> None:
    """--scheduler ddpm samples ancestrally and says so in every row; without --out every run gets its own folder."""
    ddpm, _ = public_models
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the second run of the same command neither collides nor resumes the first
        assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--n", N, "--ddim-steps", 3,
                       "--scheduler", "ddpm", "--bootstrap-resamples", 10) == 0
    runs = sorted((tmp_path / "runs" / "evaluate").iterdir())
    assert len(runs) == 2
    for run in runs:
        table = pd.read_csv(run / "results.csv")
        assert list(table["scheduler"]) == ["ddpm"] and table["eta"].isna().all()
        assert "DDPM (ancestral)" in (run / "report.md").read_text()
    # DDPM and DDIM draw different images from the same seed
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--n", N, "--ddim-steps", 3,
                   "--out", tmp_path / "ddim", "--bootstrap-resamples", 10) == 0
    ddim = pd.read_csv(tmp_path / "ddim" / "results.csv")
    assert list(ddim["scheduler"]) == ["ddim"] and list(ddim["eta"]) == [0.0]
    assert ddim["fid"].iloc[0] != pd.read_csv(runs[0] / "results.csv")["fid"].iloc[0]
    capsys.readouterr()
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--scheduler", "ddpm", "--eta", 0.5) == 2
    assert "only for --scheduler ddim" in capsys.readouterr().err
    assert run_cli("evaluate", ddpm, "--reference", reference_folder, "--resume") == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_a_model_is_judged_at_another_size_against_references_of_that_size(public_models, tmp_path, capsys) -> None:
    """--image-size: 16-px samples enlarged (bicubic) to 32 px and compared with 32-px references, as the 128-px
    set is compared with the 64-px models enlarged; a size out of range is refused before any work."""
    ddpm, _ = public_models
    faces = write_pngs(load_dataset("fashion-mnist", 32, 3, split="test").images[:N], tmp_path / "ref32")
    out = tmp_path / "judged"
    assert run_cli("evaluate", ddpm, "--reference", faces, "--n", N, "--ddim-steps", 2, "--image-size", 32,
                   "--bootstrap-resamples", 0, "--out", out) == 0
    results = read_results(out)
    assert results.one(ReferenceRecord).resolution == 32 and results.one(ModelRecord).resolution == 16
    assert len(results.of(FidRecord)) == 1
    assert "Judged at 32 px: every sample enlarged" in (out / "report.md").read_text()
    assert run_cli("evaluate", ddpm, "--reference", faces, "--image-size", 4, "--out", tmp_path / "bad") == 2
    assert "--image-size must be from 8 to 1024 px" in capsys.readouterr().err
