import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_cli

from ldm_eval.metrics.uncertainty import MIN_IMAGES_FOR_INTERVALS
from ldm_eval.presets import FACTORS_32PX as FACTORS
from ldm_eval.reporting.tables import TABLE_COLUMNS
from pipelines.records import (
    ProgressRecord,
    RecognisabilityRecord,
    SamplingRecord,
    TrainingRecord,
)
from pipelines.results_log import read_results

SMOKE = [sys.executable, "-m", "ldm_eval", "sweep", "--preset", "smoke"]
NOT_APPLICABLE_TO_PIXELS = {"rfid", "psnr", "ssim"}
INTERVAL_COLUMNS = {"fid_ci_low", "fid_ci_high", "fid_inf"}  # need MIN_IMAGES_FOR_INTERVALS samples
PRDC_COLUMNS = {"precision", "recall", "density", "coverage"}  # on the Inception features only


def _keys(run: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (run / "results.jsonl").read_text().splitlines()]


def test_smoke_sweep_killed_then_resumed_fills_every_column(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(SMOKE + ["--out", str(run)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if (run / "results.jsonl").is_file() and any(k.startswith("sampling/pixel") for k in _keys(run)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _keys(run)
    assert "train/pixel/f1" in before and not any(k.startswith("sampling/kl/f16") for k in before)

    result = subprocess.run(SMOKE + ["--out", str(run), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _keys(run)
    assert after[: len(before)] == before and len(after) == len(set(after)), "a finished measurement was redone"

    results = read_results(run)
    for factor in FACTORS:  # FID along training was measured inside the one training run of each model
        kind = "pixel" if factor == 1 else "kl"
        trained = results.one(TrainingRecord, kind=kind, factor=factor)
        points = results.of(ProgressRecord, kind=kind, factor=factor)
        assert [p.point for p in points] == [1, 2] and [p.train_steps for p in points] == [3, 6]
        assert trained.train_steps == 6 and trained.peak_mem_train_mb > 0

    table = pd.read_csv(run / "results.csv")
    assert list(table.columns) == TABLE_COLUMNS
    assert sorted(table["factor"].unique()) == list(FACTORS)
    assert set(table["fid_backend"]) == {"domain", "inception"} and set(table["ddim_steps"]) == {2, 4}
    for _, row in table.iterrows():
        for column in TABLE_COLUMNS:
            if column == "notes":
                continue
            if row["factor"] == 1 and column in NOT_APPLICABLE_TO_PIXELS:
                assert pd.isna(row[column]) and "do not apply" in row["notes"]
            elif column in PRDC_COLUMNS and row["fid_backend"] != "inception":
                assert pd.isna(row[column]), (column, row.to_dict())
            elif column in INTERVAL_COLUMNS and row["fid_samples"] < MIN_IMAGES_FOR_INTERVALS:
                assert pd.isna(row[column]), (column, row.to_dict())  # too few samples: left out, not faked
            else:
                assert not pd.isna(row[column]), (column, row.to_dict())
    assert table.loc[table["factor"] >= 16, "degenerate"].all() and not table.loc[table["factor"] <= 8, "degenerate"].any()
    assert (table["fid"] > 0).all() and (table["samples_per_s"] > 0).all()
    report = (run / "report.md").read_text()
    assert "The paper's numbers" in report and "N=" in report
    recognised = results.of(RecognisabilityRecord)  # every sample set judged by the real-data classifier
    assert sorted((r.factor, r.ddim_steps) for r in recognised) == sorted((f, s) for f in FACTORS for s in (2, 4))
    for r in recognised:
        assert r.n == 24 and 0 <= r.confident_share <= 1 and 0 < r.real_confident_share <= 1
        # the autoencoder's ceiling: the same real images, encoded and decoded; pixel space has none
        assert (r.reconstructed_confident_share is None) == (r.factor == 1)
        assert r.factor == 1 or 0 <= r.reconstructed_confident_share <= 1
        assert abs(sum(r.class_shares.values()) - 1) < 1e-6 and len(r.class_shares) == 10
        assert r.meets_bar is False  # six training steps draw nothing a classifier is sure of
    assert "## Recognisability: would a person see the objects?" in report and "reconstructed_confident_share" in report
    assert results.environment.config["reference_draw"] == "a random draw (seed 0) stratified by class"
    assert "Reference and evaluation images: a random draw (seed 0) stratified by class." in report
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4

    # the report re-renders from stored results alone
    (run / "report.md").unlink()
    assert run_cli("report", run) == 0 and (run / "report.md").is_file()


@pytest.mark.parametrize("args,message", [
    (["--factors", "1,3"], "--factors: Unknown downsampling factor 3; choose one of [1, 2, 4, 8, 16, 32]"),
    (["--factors", "1,32"], "--factors: Factor 32 at 32 px leaves a 1x1 latent"),
    (["--resolution", "40"], "does not divide the resolution 40"),
    (["--kinds", "gan"], "--kinds: Unknown autoencoder kind 'gan'; choose kl and/or vq."),
    (["--ddim-steps", "0"], "--ddim-steps: DDIM steps must be a whole number from 1 to 1000 (got 0)."),
    (["--pixel-ddim-steps", "2000"], "--pixel-ddim-steps: DDIM steps must be a whole number from 1 to 1000 (got 2000)."),
    (["--budget", "hours"], "argument --budget: invalid choice: 'hours'"),
    (["--preset", "huge"], "--preset: Unknown preset 'huge'; choose one of smoke, quick, standard, paper"),
])
def test_sweep_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    try:
        code = run_cli("sweep", "--preset", "smoke", "--out", tmp_path / "r", *args)
    except SystemExit as exit_:  # argparse refuses values outside a flag's choices itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_pixel_space_sampled_at_its_own_step_counts(tmp_path: Path) -> None:
    """``--pixel-ddim-steps``: f = 1 sampled (and judged along training) at its own counts, the report saying so,
    and a finished run resumed redoes nothing."""
    run = tmp_path / "run"
    args = ["sweep", "--preset", "smoke", "--out", run, "--factors", "1,4", "--ddim-steps", "2,4",
            "--pixel-ddim-steps", "2"]
    assert run_cli(*args) == 0
    results = read_results(run)
    sampled = sorted((r.factor, r.ddim_steps) for r in results.of(SamplingRecord))
    assert sampled == [(1, 2), (4, 2), (4, 4)]
    # FID along training at the measured count closest to 20: pixel space's own
    assert {(p.factor, p.ddim_steps) for p in results.of(ProgressRecord)} == {(1, 2), (4, 4)}
    assert "Sampled at fewer step counts than the others ([2, 4]): pixel f=1 at DDIM [2]" in (run / "report.md").read_text()
    keys = _keys(run)
    assert run_cli(*args, "--resume") == 0 and _keys(run) == keys


def test_flags_come_from_the_config_dataclasses_over_the_preset(tmp_path: Path) -> None:
    from ldm_eval.arguments import parse_sweep
    from ldm_eval.presets import COMPRESSION_PRESETS as PRESETS
    from ldm_eval.sweeps.compression import CompressionSettings

    argv = ["--preset", "smoke", "--factors", "1,4", "--ddim_steps", "3", "5", "--max-images", "100", "--resume"]
    cfg = parse_sweep("sweep", PRESETS, "quick", CompressionSettings, argv)
    assert cfg.preset == "smoke" and cfg.sweep.factors == [1, 4] and cfg.sweep.ddim_steps == [3, 5]
    assert cfg.run.max_images == 100 and cfg.run.resume is True and cfg.run.out == Path("runs/smoke")
    assert cfg.run.train_budget == PRESETS["smoke"][0].train_budget and cfg.sweep.progress_points == 2  # the preset's
    cfg = parse_sweep("sweep", PRESETS, "quick", CompressionSettings, [])
    assert cfg.run == replace(PRESETS["quick"][0], out=Path("runs/quick")) and cfg.sweep == PRESETS["quick"][1]
    assert cfg.flat_config()["factors"] == [1, 2, 4, 8, 16] and cfg.flat_config()["preset"] == "quick"


@pytest.mark.parametrize("command", ["sweep", "cond-sweep", "ae-sweep", "evaluate", "train-autoencoder",
                                     "train-diffusion", "sample", "fid", "report", "export-zoo", "bench-train"])
def test_every_command_prints_its_help(command: str, capsys: pytest.CaptureFixture) -> None:
    """``--help`` lists every flag; a literal % in a help line once crashed argparse's formatter."""
    from ldm_eval.cli import COMMANDS, main

    assert command in COMMANDS
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_sweep_on_empty_folder_and_existing_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("sweep", "--preset", "smoke", "--dataset", empty, "--out", tmp_path / "r") == 2
    assert "No readable images" in capsys.readouterr().err
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "results.jsonl").write_text('{"schema": 2, "record": "classifier", "n": 5, "accuracy_on_real": 0.9}\n')
    assert run_cli("sweep", "--preset", "smoke", "--out", tmp_path / "r2") == 2
    assert "error: --resume: " in (err := capsys.readouterr().err) and "already holds results" in err


def test_fid_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a").mkdir()
    assert run_cli("fid", tmp_path / "a", tmp_path / "missing") == 2
    assert run_cli("fid", tmp_path / "a", tmp_path / "a", "--backend", "nope") == 2
    err = capsys.readouterr().err
    assert f"error: No images in '{tmp_path / 'a'}'" in err and "Unknown backend 'nope' for folders" in err
