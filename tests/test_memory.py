"""Peak memory per model: the block's own tensors, so models and batch sizes tell apart on every device.

Tiny real diffusers models (UNets matched in parameters by ``pipelines.denoiser``, autoencoders
as narrow as the shipped ones), untrained: memory depends on shapes, not on weights.
"""
from __future__ import annotations

import pytest
import torch

from pipelines.diffusion_training import build_diffusion_pipeline, diffusion_loss
from pipelines.first_stage import AutoencoderSpec, build_autoencoder, set_scaling_factor
from pipelines.memory import PeakMemory, StorageAccounting
from pipelines.sampling import timed_sampling

RESOLUTION = 64
BATCH = 32
PARAM_BUDGET = 300_000


def _pipeline(factor: int, device: str = "cpu"):
    torch.manual_seed(0)
    vae = None
    if factor > 1:
        vae = build_autoencoder(AutoencoderSpec(factor=factor, kind="kl", image_channels=1, resolution=RESOLUTION,
                                                base_width=16))
        set_scaling_factor(vae, 1.0)
    pipe = build_diffusion_pipeline(vae, RESOLUTION, 1, PARAM_BUDGET).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipes() -> dict:
    return {f: _pipeline(f) for f in (1, 4, 8)}


def _sampling_peak(pipe, batch: int, steps: int = 1) -> float:
    with PeakMemory(pipe.device) as mem:
        pipe(num_images=batch, num_inference_steps=steps, seed=0)
    return mem.reading.peak_mb


def test_accounting_counts_new_storages_only_and_frees_them() -> None:
    before = torch.zeros(2**20)  # 4 MiB that exist before the block: not the block's
    with PeakMemory("cpu") as mem:
        a = torch.ones(2**20)  # 4 MiB
        view = a[::2]  # a view: no new memory
        before.add_(1)  # in place: no new memory
        b = a * 2  # 4 MiB
        del a, b, view
        c = torch.ones(2**19)  # 2 MiB, after 8 MiB were freed
    assert mem.reading.peak_mb == pytest.approx(8.0, abs=0.01)
    assert "dispatch-mode storage accounting" in mem.reading.method and "CPU" in mem.reading.method
    del c


def test_accounting_sees_autograd_backward() -> None:
    layer = torch.nn.Linear(512, 512)
    x = torch.randn(256, 512)
    with StorageAccounting() as forward_only, torch.no_grad():
        layer(x).relu().sum()
    with StorageAccounting() as training:
        layer(x).relu().sum().backward()
    assert training.peak > forward_only.peak
    # the gradients the backward pass made are live at the end of the block: autograd's allocations were counted
    grads = sum(p.grad.untyped_storage().nbytes() for p in layer.parameters())
    assert training.live >= grads


def test_four_times_the_batch_measures_more(pipes: dict) -> None:
    small, large = _sampling_peak(pipes[4], BATCH // 4), _sampling_peak(pipes[4], BATCH)
    assert large > 3 * small > 0


def test_pixel_space_needs_more_memory_than_latent_space(pipes: dict) -> None:
    peaks = {f: _sampling_peak(pipe, BATCH) for f, pipe in pipes.items()}
    assert peaks[1] > 1.5 * peaks[4], peaks
    # at f = 4 and f = 8 the decoder's last, full-resolution block (the same in both) sets the peak
    assert peaks[4] >= peaks[8] > 0, peaks


def test_a_training_step_measures_more_than_sampling(pipes: dict) -> None:
    pipe, batch = pipes[1], 8
    sampling = _sampling_peak(pipe, batch)
    latents = torch.randn(batch, 1, RESOLUTION, RESOLUTION)
    pipe.unet.train()
    try:
        with PeakMemory("cpu") as mem:
            diffusion_loss(pipe.unet, pipe.scheduler, latents, torch.Generator().manual_seed(0)).backward()
    finally:
        pipe.unet.zero_grad(set_to_none=True)
        pipe.unet.eval()
    assert mem.reading.peak_mb > sampling


def test_timed_sampling_times_without_the_accounting(pipes: dict) -> None:
    timed = timed_sampling(pipes[8], num_images=6, steps=1, batch_size=4)
    assert timed.images.shape[0] == 6 and timed.seconds > 0
    assert timed.peak_mb == pytest.approx(_sampling_peak(pipes[8], 4), rel=0.01)
    assert "untimed pass" in timed.memory_method
    # the pass watches at most 2 steps: one step's peak is every step's, so more steps measure the same
    longer = timed_sampling(pipes[8], num_images=4, steps=6, batch_size=4)
    assert longer.peak_mb == pytest.approx(_sampling_peak(pipes[8], 4, steps=6), rel=0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_above_the_blocks_start() -> None:
    pipe = _pipeline(4, "cuda")
    pipe(num_images=BATCH, num_inference_steps=1, seed=0)  # warm-up: cuDNN's lazy set-up is not a block's work
    readings = []
    for batch in (BATCH // 4, BATCH):
        with PeakMemory("cuda") as mem:
            pipe(num_images=batch, num_inference_steps=1, seed=0)
        readings.append(mem.reading)
    assert readings[1].peak_mb > 3 * readings[0].peak_mb > 0
    assert "max_memory_allocated minus the level at entry" in readings[0].method
