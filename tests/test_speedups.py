"""``--speedups auto|off``: the plan per device and budget, the same maths either way, compilation that fails softly."""
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.checkpoint import latest_checkpoint
from pipelines.diffusion_training import DiffusionTrainConfig, train_diffusion
from pipelines.errors import InputError
from pipelines.loading import load_pipeline
from pipelines.sampling import timed_sampling
from pipelines.speedups import (
    MIN_COMPILE_SECONDS,
    SpeedPlan,
    prepare_module,
    sampling_plan,
    training_plan,
    with_eager_fallback,
)


def test_the_plan_pulls_what_pays_on_each_device_and_budget() -> None:
    assert training_plan("off", "cpu", max_seconds=900) == SpeedPlan()
    cpu = training_plan("auto", "cpu", max_seconds=10 * 3600)
    assert cpu.fused_optimizer and cpu.channels_last and cpu.compile_mode is None  # compiling never paid on a CPU
    assert "1.04-1.06x" in cpu.notes[0] and cpu.describe() == "speedups auto: fused AdamW, channels-last"
    short = training_plan("auto", "cuda", max_seconds=MIN_COMPILE_SECONDS - 1)
    long = training_plan("auto", "cuda", max_seconds=MIN_COMPILE_SECONDS)
    assert short.compile_mode is None and "too short" in short.notes[0]
    assert long.compile_mode == "reduce-overhead" and not long.memory_every_step
    assert sampling_plan("auto", "cpu", 500, 50).compile_mode is None
    assert sampling_plan("auto", "cuda", 500, 50).compile_mode == "reduce-overhead"
    with pytest.raises(InputError, match="Unknown speedups setting 'fast'"):
        training_plan("fast", "cpu", max_steps=10)
    with pytest.raises(InputError, match="speedups"):
        DiffusionTrainConfig(out=Path("unused"), max_steps=1, speedups="fast").validate()


def _train(out: Path, speedups: str, steps: int, resume: bool = False):
    cfg = DiffusionTrainConfig(out=out, max_steps=steps, batch_size=16, learning_rate=1e-3, factor=1,
                               dataset="fashion-mnist", resolution=16, param_budget=40_000, max_images=256,
                               progress=False, checkpoint_every=4, speedups=speedups, resume=resume)
    return train_diffusion(cfg)


def _losses(out: Path) -> list[float]:
    return json.loads((latest_checkpoint(out) / "state.json").read_text())["losses"]


def test_auto_trains_the_same_loss_curve_and_draws_the_same_samples_as_off(tmp_path: Path) -> None:
    """Fused AdamW and channels-last change the order of float operations, not the maths: over 24 steps the
    loss curves agree to 1e-3 of the loss, and so do the samples."""
    off, auto = _train(tmp_path / "off", "off", 24), _train(tmp_path / "auto", "auto", 24)
    assert off.summary.speedups == "speedups off: plain eager"
    assert auto.summary.speedups == "speedups auto: fused AdamW, channels-last"
    a, b = np.array(_losses(tmp_path / "off")), np.array(_losses(tmp_path / "auto"))
    assert len(a) == len(b) == 24 and a[-4:].mean() < a[:4].mean()  # it learned
    assert np.abs(a - b).max() < 1e-3 * a.mean(), np.abs(a - b).max()
    samples = [timed_sampling(load_pipeline(tmp_path / name), 8, 5, seed=3).images for name in ("off", "auto")]
    assert np.abs(samples[0] - samples[1]).max() < 1e-3  # images in [0, 1]


def test_a_run_resumes_with_either_setting(tmp_path: Path) -> None:
    _train(tmp_path / "run", "off", 8)
    resumed = _train(tmp_path / "run", "auto", 16, resume=True)  # the fused optimizer takes the loop's state
    assert resumed.summary.train_steps == 16 and resumed.summary.resumed_at_step == 8
    again = _train(tmp_path / "run", "off", 20, resume=True)
    assert again.summary.train_steps == 20 and len(_losses(tmp_path / "run")) == 20


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.conv(x)) * 2


def test_a_failed_compilation_warns_once_and_runs_eager(monkeypatch, caplog) -> None:
    """No C++ compiler (here: a compiler path that does not exist): one warning naming the cause, the eager
    result, and later calls eager; a model's own error still raises."""
    from torch._inductor import config

    monkeypatch.setattr(config.cpp, "cxx", (None, "/nonexistent/g++"))
    torch._dynamo.reset()
    model = prepare_module(_Tiny(), SpeedPlan("auto", compile_mode="default"))
    x = torch.randn(2, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="pipelines.speedups"):
        out = with_eager_fallback(lambda: model(x), [model])
        again = with_eager_fallback(lambda: model(x), [model])
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "eager path" in warnings[0].getMessage()
    assert torch.equal(out, _Tiny.forward(model, x)) and torch.equal(again, out)
    assert model._compiled_call_impl is None
    with pytest.raises(ZeroDivisionError):
        with_eager_fallback(lambda: 1 / 0, [model])


def test_a_compiled_denoiser_pads_the_last_batch_and_draws_the_same_images(tmp_path: Path) -> None:
    """The GPU's sampling path at smoke size on a CPU (CUDA graphs themselves need CUDA): a compiled denoiser
    keeps one batch shape, so the last batch of 5 is drawn as 4 and cut to 1; every image equals the eager one."""
    pipe = _train(tmp_path / "dm", "off", 2).pipeline
    eager = timed_sampling(pipe, 5, 3, seed=1, batch_size=4).images
    pipe.unet.compile(mode="default", dynamic=False)
    compiled = timed_sampling(pipe, 5, 3, seed=1, batch_size=4).images
    assert compiled.shape == eager.shape == (5, 16, 16, 1)
    assert np.abs(compiled - eager).max() < 1e-4


def test_bench_train_speedups_prints_off_and_auto_against_the_matmul_peak(tmp_path: Path, capsys) -> None:
    from conftest import run_cli

    assert run_cli("bench-train", "--speedups", "--profile", "--resolutions", "16", "--factors", "4",
                   "--batch-size", "4", "--steps", "3", "--param-budget", "30000", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "fp32 matmul peak" in out and "measured in the same run" in out
    table = (tmp_path / "train_speedups.md").read_text()
    rows = [line.split("|") for line in table.splitlines() if line.startswith("|") and "---" not in line]
    header, body = [c.strip() for c in rows[0]], rows[1:]
    col = {name: header.index(name) for name in ("speedups", "speedup", "steps_per_s", "share_of_matmul_peak")}
    assert [r[col["speedups"]].strip() for r in body] == ["off", "auto"]
    assert float(body[0][col["speedup"]]) == 1.0 and float(body[1][col["speedup"]]) > 0
    assert all(0 < float(r[col["share_of_matmul_peak"]]) < 1.5 and float(r[col["steps_per_s"]]) > 0 for r in body)
    profile = (tmp_path / "train_profile_16px_f4.md").read_text()
    assert "| convolution" in profile and "outside operators" in profile


def test_bench_sampling_against_stock_diffusers_on_the_same_weights(tmp_path: Path, capsys) -> None:
    from conftest import run_cli

    _train(tmp_path / "dm", "off", 2)
    assert run_cli("bench-train", "--sampling", tmp_path / "dm", "--batch-size", "4", "--steps", "3",
                   "--out", tmp_path / "bench") == 0
    table = (tmp_path / "bench" / "sampling_dm.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|") for line in table.splitlines()
            if line.startswith("| ") and "sampler" not in line}
    assert set(rows) == {"ours, --speedups off", "ours, --speedups auto", "stock diffusers"}
    assert float(rows["stock diffusers"][3]) == 1.0 and all(float(r[2]) > 0 for r in rows.values())
    assert "DDIM 10 steps, 4 images in one batch" in table and "matmul peak" in table


def test_bench_train_refuses_two_benchmarks_at_once(tmp_path: Path, capsys) -> None:
    """--recipe with --sampling is refused by name before anything runs or is written."""
    from conftest import run_cli

    assert run_cli("bench-train", "--recipe", "--sampling", tmp_path / "dm", "--out", tmp_path / "bench") == 2
    err = capsys.readouterr().err
    assert "error: --sampling: bench-train runs one benchmark at a time; got recipe and sampling" in err
    assert not (tmp_path / "bench").exists()


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA graphs (torch.compile mode='reduce-overhead') need a CUDA device; on a CPU the "
                           "compiled path is tested in default mode above")
def test_cuda_graphs_draw_the_same_images_as_eager(tmp_path: Path) -> None:
    pipe = _train(tmp_path / "dm", "off", 2).pipeline.to("cuda")
    eager = timed_sampling(pipe, 45, 50, seed=1, batch_size=20, speedups="off").images
    graphs = timed_sampling(pipe, 45, 50, seed=1, batch_size=20, speedups="auto").images  # 2,250 denoiser calls
    assert pipe.unet._compiled_call_impl is not None
    assert graphs.shape == eager.shape and np.abs(graphs - eager).max() < 1e-3
