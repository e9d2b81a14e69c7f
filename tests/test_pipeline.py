import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, LDMPipeline

from pipelines.denoiser import DenoiserSpec, build_denoiser
from pipelines.first_stage import AutoencoderSpec, build_autoencoder
from pipelines.pipeline import LatentDiffusionPipeline, PipelineLoadError, load_pipeline, to_uint8
from pipelines.training import build_diffusion_pipeline


def _pipe(factor: int, kind: str = "kl") -> LatentDiffusionPipeline:
    torch.manual_seed(0)
    vae = None if factor == 1 else build_autoencoder(AutoencoderSpec(factor=factor, kind=kind, image_channels=1, resolution=16, base_width=8))
    return build_diffusion_pipeline(vae, resolution=16, image_channels=1, param_budget=20_000)


@pytest.mark.parametrize("factor,kind", [(1, "kl"), (4, "kl"), (4, "vq")])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_saved_and_reloaded_pipeline_gives_identical_samples(tmp_path: Path, factor: int, kind: str, sampler: str) -> None:
    pipe = _pipe(factor, kind)
    before = pipe(num_images=3, num_inference_steps=4, scheduler=sampler, seed=7).images
    pipe.save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    reloaded = load_pipeline(tmp_path)
    after = reloaded(num_images=3, num_inference_steps=4, scheduler=sampler, seed=7).images
    assert before.shape == (3, 16, 16, 1)
    np.testing.assert_array_equal(to_uint8(before), to_uint8(after))
    np.testing.assert_allclose(before, after, atol=1e-5)
    assert reloaded.factor == factor and reloaded.resolution == 16


def test_seed_controls_samples_and_trajectory_shapes() -> None:
    pipe = _pipe(4)
    a = pipe(num_images=2, num_inference_steps=5, seed=1, return_trajectory=True)
    b = pipe(num_images=2, num_inference_steps=5, seed=2)
    assert not np.allclose(a.images, b.images)
    assert a.trajectory_x0.shape == (5, 2, 16, 16, 1) and a.trajectory_xt.shape == (5, 2, 16, 16, 1)
    np.testing.assert_allclose(a.trajectory_xt[-1], a.images)
    assert a.timesteps == sorted(a.timesteps, reverse=True) and len(a.timesteps) == 5


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_absurd_step_counts_refused(steps) -> None:
    with pytest.raises(ValueError, match="Steps must be an integer from 1 to 1000"):
        _pipe(1)(num_images=1, num_inference_steps=steps)


def test_loads_public_ddpm_layout(tmp_path: Path) -> None:
    """A folder laid out like google/ddpm-celebahq-256 (unet + DDPM scheduler)."""
    unet = build_denoiser(DenoiserSpec(side=16, channels=3, param_budget=20_000))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    pipe = load_pipeline(tmp_path)
    assert pipe.factor == 1 and pipe(num_images=1, num_inference_steps=2, seed=0).images.shape == (1, 16, 16, 3)


def test_loads_public_ldm_layout_and_fixes_missing_vq_scale(tmp_path: Path) -> None:
    """A folder laid out like CompVis/ldm-celebahq-256 whose vqvae config has no scaling_factor."""
    vqvae = build_autoencoder(AutoencoderSpec(factor=4, kind="vq", image_channels=3, resolution=16, base_width=8))
    unet = build_denoiser(DenoiserSpec(side=4, channels=3, param_budget=20_000))
    LDMPipeline(vqvae=vqvae, unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(tmp_path)
    config_path = tmp_path / "vqvae" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("scaling_factor")
    config_path.write_text(json.dumps(config))
    pipe = load_pipeline(tmp_path)
    assert pipe.factor == 4 and pipe.vae.config.scaling_factor == 1.0
    assert pipe(num_images=1, num_inference_steps=2, seed=0).images.shape == (1, 16, 16, 3)


def test_bad_model_folders(tmp_path: Path) -> None:
    with pytest.raises(PipelineLoadError, match="does not exist"):
        load_pipeline(tmp_path / "nope")
    with pytest.raises(PipelineLoadError, match="no model_index.json"):
        load_pipeline(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(PipelineLoadError, match="corrupt"):
        load_pipeline(tmp_path)


def test_pickled_weights_are_refused(tmp_path: Path) -> None:
    pipe = _pipe(1)
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    assert list(tmp_path.rglob("*.bin"))
    with pytest.raises(PipelineLoadError):
        load_pipeline(tmp_path)


def test_corrupt_weights_give_clear_error(tmp_path: Path) -> None:
    _pipe(1).save_pretrained(tmp_path)
    weights = next((tmp_path / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PipelineLoadError, match="Could not load"):
        load_pipeline(tmp_path)
