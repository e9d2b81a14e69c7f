"""build-zoo: the zoo's sweeps, resumed after a kill, exported atomically within size budgets."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from safetensors.torch import load_file

from pipelines.loading import load_pipeline

SMOKE_MODELS = ["fmnist16-dm-f1", "fmnist16-ldm-kl-f4", "fmnist16-ldm-kl-f4-class"]


def _build(tmp: Path, *extra: object) -> int:
    return run_cli("build-zoo", "--preset", "smoke", "--runs", tmp / "runs", "--models", tmp / "models", *extra)


def test_build_zoo_survives_a_kill_and_resumes_without_retraining(tmp_path: Path) -> None:
    runs, models = tmp_path / "runs", tmp_path / "models"
    args = [sys.executable, "-m", "ldm_eval", "build-zoo", "--preset", "smoke", "--runs", str(runs),
            "--models", str(models)]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = runs / "fmnist16" / "results.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill once the first denoiser is trained and measured
        if log.is_file() and '"record": "sampling"' in log.read_text():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    trained_before = log.read_text().count('"record": "train"')
    assert trained_before >= 1

    # --export-only ships what is finished and measured, and trains nothing
    logged = log.read_text()
    assert _build(tmp_path, "--export-only") == 0
    assert log.read_text() == logged
    early = sorted(p.name for p in models.iterdir())
    assert "fmnist16-dm-f1" in early and set(early) <= set(SMOKE_MODELS)
    assert all("FID" in (models / name / "README.md").read_text() for name in early)

    assert _build(tmp_path) == 0
    assert sorted(p.name for p in models.iterdir()) == SMOKE_MODELS  # no temporary or half-written folder
    lines = log.read_text()
    assert lines.count('"record": "train"') == 2  # f = 1 and f = 4, the one finished before the kill not redone
    assert lines.count('"key": "train/pixel/f1"') == 1
    for name in SMOKE_MODELS:
        assert load_pipeline(models / name).unet is not None
        weights = load_file(models / name / "unet" / "diffusion_pytorch_model.safetensors")
        assert {t.dtype for t in weights.values()} == {torch.float16}  # fp16 on disk
    card = (models / "fmnist16-ldm-kl-f4" / "README.md").read_text()
    assert "build-zoo --preset smoke --parts fmnist16`" in card and "(48 images)" in card
    assert "- recognisable: " in card and "by a classifier trained on the real training images" in card
    assert "class" in (models / "fmnist16-ldm-kl-f4-class" / "README.md").read_text()
    # the conditioning part used the compression part's autoencoder and classifier instead of training its own
    assert not list((runs / "fmnist16-cond" / "models").glob("ae-*"))
    assert not (runs / "fmnist16-cond" / "domain_classifier").exists()
    # each part's report shows every model the part trained, the ones resumed after the kill too
    report = (runs / "fmnist16" / "report.md").read_text()
    assert re.search(r"\|\s+1 \| pixel ", report) and re.search(r"\|\s+4 \| kl ", report), report[:3000]
    assert (runs / "fmnist16-cond" / "report.md").is_file()
    assert (load_file(models / "fmnist16-ldm-kl-f4" / "vae" / "diffusion_pytorch_model.safetensors")["encoder.conv_in.weight"]
            == load_file(models / "fmnist16-ldm-kl-f4-class" / "vae" / "diffusion_pytorch_model.safetensors")[
                "encoder.conv_in.weight"]).all()

    stamps = {name: (models / name / "README.md").stat().st_mtime_ns for name in SMOKE_MODELS}
    results = {part: (runs / part / "results.jsonl").read_text() for part in ("fmnist16", "fmnist16-cond")}
    assert _build(tmp_path) == 0  # all done: nothing retrained, nothing re-exported
    assert {name: (models / name / "README.md").stat().st_mtime_ns for name in SMOKE_MODELS} == stamps
    assert {part: (runs / part / "results.jsonl").read_text() for part in results} == results


def test_build_zoo_refuses_a_model_over_its_size_budget(tmp_path: Path, capsys) -> None:
    assert _build(tmp_path, "--parts", "fmnist16", "--max-model-mb", "0.01") == 2
    err = capsys.readouterr().err
    assert "--max-model-mb: " in err and "fmnist16-dm-f1 holds" in err and "over its 0.01 MB budget" in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    assert _build(tmp_path, "--parts", "nope") == 2
    assert "Unknown zoo part(s) nope" in capsys.readouterr().err
    assert _build(tmp_path, "--ae-budget", "0") == 2
    assert "The ae budget must be positive (got 0.0)" in capsys.readouterr().err


def test_build_zoo_budgets_replace_every_parts_own() -> None:
    """--train-budget / --ae-budget: one command trains a preset's set on other budgets, every part alike."""
    from ldm_eval.presets import ZOO_PRESETS as PRESETS
    from ldm_eval.zoo.build import ZooBuildSettings, _configured

    given = ZooBuildSettings(preset="cpu", train_budget=2400, ae_budget=1500)
    for part in PRESETS["cpu"]:
        run = _configured(part, given).run
        assert (run.train_budget, run.ae_budget) == (2400, 1500)
        assert run.batch_size == part.run.batch_size  # nothing else changes
    assert _configured(PRESETS["cpu"][0], ZooBuildSettings(preset="cpu")).run.train_budget == 900


def test_build_zoo_trains_cells_side_by_side(tmp_path: Path) -> None:
    """--jobs: a part's cells in worker processes through the sweeps' own executor, every record written once
    by the driver to one results log that reads back whole; a shared autoencoder is trained once."""
    from pipelines.records import AutoencoderRecord, TrainingRecord
    from pipelines.results_log import read_results

    assert _build(tmp_path, "--jobs", "3", "--train-budget", "4", "--ae-budget", "5") == 0
    runs, models = tmp_path / "runs", tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == SMOKE_MODELS
    main, cond = read_results(runs / "fmnist16"), read_results(runs / "fmnist16-cond")
    assert len(main.of(TrainingRecord)) == 2 and len(cond.of(TrainingRecord)) == 1
    # every cell trained on the command's budgets, not the preset's (6 steps each)
    assert {r.train_steps for r in [*main.of(TrainingRecord), *cond.of(TrainingRecord)]} == {4}
    assert [r.ae_train_steps for r in main.of(AutoencoderRecord)] == [5]
    assert [r.key for r in main.records].count("environment") == 1  # opened once, before the cells
    assert main.environment.config["factors"] == [1, 4]  # the whole part's settings, not one cell's
    # the cells ran in worker processes, not in the driver (each says where it ran)
    where = [json.loads(p.read_text()) for p in (runs / "fmnist16" / "cells").glob("*.json")]
    assert len(where) == 3 and all(w["pid"] != os.getpid() for w in where)
    # the class model trained on the compression part's autoencoder
    assert not list((runs / "fmnist16-cond" / "models").glob("ae-*"))
    for name in SMOKE_MODELS:
        assert load_pipeline(models / name).unet is not None


def test_jobs_and_ray_are_one_or_the_other() -> None:
    from ldm_eval.zoo.build import ZooBuildSettings

    with pytest.raises(ValueError, match="one or the other"):
        ZooBuildSettings(jobs=2, executor="ray").validate()
