import math

import pytest
import torch

from pipelines.denoiser import DenoiserSpec, build_denoiser
from pipelines.first_stage import (
    DEFAULT_LATENT_CHANNELS,
    AutoencoderSpec,
    FirstStage,
    FirstStageError,
    build_autoencoder,
    count_parameters,
    measure_scaling_factor,
    set_scaling_factor,
)


@pytest.mark.parametrize("kind", ["kl", "vq"])
@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_latent_shapes_every_factor(kind: str, factor: int) -> None:
    vae = build_autoencoder(AutoencoderSpec(factor=factor, kind=kind, image_channels=3, resolution=64, base_width=8))
    stage = FirstStage(vae)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = stage.encode(x)
    expected = (DEFAULT_LATENT_CHANNELS[kind][factor], 64 // factor, 64 // factor)
    assert tuple(z.shape) == (2, *expected)
    assert stage.latent_shape(64) == expected
    assert stage.factor == factor and stage.kind == kind
    assert stage.decode(z).shape == x.shape


def test_grayscale_and_identity() -> None:
    vae = build_autoencoder(AutoencoderSpec(factor=8, kind="kl", image_channels=1, resolution=32, base_width=8))
    assert FirstStage(vae).encode(torch.zeros(1, 1, 32, 32)).shape == (1, 4, 4, 4)
    identity = FirstStage(None, image_channels=1)
    x = torch.randn(2, 1, 32, 32)
    assert identity.factor == 1 and torch.equal(identity.encode(x), x) and torch.equal(identity.decode(x), x)


def test_scaling_factor_measured_and_applied() -> None:
    torch.manual_seed(0)
    vae = build_autoencoder(AutoencoderSpec(factor=4, kind="kl", image_channels=1, resolution=16, base_width=8))
    x = torch.rand(64, 1, 16, 16) * 2 - 1
    set_scaling_factor(vae, measure_scaling_factor(vae, x))
    stage = FirstStage(vae)
    z = stage.sample_latents(*stage.encode_moments(x)[:1], None)
    assert math.isclose(float(z.std()), 1.0, rel_tol=1e-3)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf")])
def test_absurd_scaling_factor_refused(bad: float) -> None:
    vae = build_autoencoder(AutoencoderSpec(factor=2, kind="vq", image_channels=1, resolution=16, base_width=8))
    vae.register_to_config(scaling_factor=bad)
    with pytest.raises(FirstStageError, match="latent scale"):
        FirstStage(vae)


@pytest.mark.parametrize("factor,resolution,message", [(3, 32, "Unknown downsampling factor"), (8, 28, "does not divide"), (1, 32, "pixel space")])
def test_bad_factor_errors(factor: int, resolution: int, message: str) -> None:
    with pytest.raises(FirstStageError, match=message):
        build_autoencoder(AutoencoderSpec(factor=factor, resolution=resolution))


def test_denoiser_parameter_counts_are_matched_across_factors() -> None:
    budget = 200_000
    shapes = {1: (3, 64), 2: (2, 32), 4: (3, 16), 8: (4, 8), 16: (16, 4), 32: (64, 2)}
    counts = {}
    for f, (channels, side) in shapes.items():
        unet = build_denoiser(DenoiserSpec(side=side, channels=channels, param_budget=budget))
        assert unet.config.sample_size == side and unet.config.in_channels == channels
        counts[f] = count_parameters(unet)
    assert all(abs(c - budget) / budget < 0.3 for c in counts.values()), counts


@pytest.mark.parametrize("channels,side,first", [(64, 4, 64), (16, 8, 44), (3, 32, 36)])
def test_the_first_level_is_never_narrower_than_the_latent(channels: int, side: int, first: int) -> None:
    """At the zoo's 2 M parameters: f = 32's 64x4x4 latent gets a first level of 64 channels (half the deep
    width would be 56); latents with fewer channels keep half the deep width, as before."""
    unet = build_denoiser(DenoiserSpec(side=side, channels=channels, param_budget=2_000_000))
    assert unet.config.block_out_channels[0] == first
    assert abs(count_parameters(unet) - 2_000_000) / 2_000_000 < 0.05
