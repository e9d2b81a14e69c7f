"""The conditioning sweep: per-class FID and conditioning accuracy across factors and guidance."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from ldm_eval.reporting.tables import COND_COLUMNS
from pipelines.records import (
    ClassifierRecord,
    ConditioningRecord,
    FidRecord,
    SamplingRecord,
    TrainingRecord,
)
from pipelines.results_log import read_results


def test_cond_smoke_sweep_measures_accuracy_and_per_class_fid_then_resumes(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "cond"
    assert run_cli("cond-sweep", "--preset", "cond-smoke", "--out", run) == 0
    results = read_results(run)
    evals = results.of(ConditioningRecord)
    # factors 1 and 4 x class and text x guidance 1 and 3
    assert sorted((r.condition, r.factor, r.guidance) for r in evals) == sorted(
        (c, f, g) for c in ("class", "text") for f in (1, 4) for g in (1.0, 3.0))
    for r in evals:
        assert r.n == 40 and r.samples_per_class == 4 and len(r.class_names) == 10
        assert 0.0 <= r.accuracy <= 1.0
        # the overall accuracy is the mean of the per-class accuracies (classes are balanced)
        assert r.accuracy == pytest.approx(np.mean(r.per_class_accuracy))
        assert len(r.per_class_fid) == 10 and all(np.isfinite(r.per_class_fid))
        assert r.per_class_reference == [1000] * 10
        cell = {"condition": r.condition, "factor": r.factor, "guidance": r.guidance, "ddim_steps": r.ddim_steps}
        (fid,) = results.of(FidRecord, **cell)
        (speed,) = results.of(SamplingRecord, **cell)
        assert np.isfinite(fid.fid) and fid.fid_samples == 40 and fid.fid_backend == "domain" and speed.samples_per_s > 0
    trained = {(r.condition, r.factor): r for r in results.of(TrainingRecord)}
    assert trained[("text", 1)].condition_params > trained[("class", 1)].condition_params > 0
    clf = results.one(ClassifierRecord)
    assert 0.1 < clf.accuracy_on_real <= 1.0

    table = pd.read_csv(run / "results.csv")
    assert list(table.columns) == COND_COLUMNS and len(table) == 8
    report = (run / "report.md").read_text()
    assert "Per-class FID" in report and "conditioning accuracy" in report.lower()
    assert (run / "plots" / "cond_fid_vs_accuracy.png").is_file()
    assert len(list((run / "grids").glob("cond-*.png"))) == 8
    assert (run / "report.html").read_text().count("data:image/png;base64") >= 10

    # resuming a finished run measures nothing again; re-rendering works from the log alone
    before = (run / "results.jsonl").read_text()
    assert run_cli("cond-sweep", "--preset", "cond-smoke", "--out", run, "--resume") == 0
    assert (run / "results.jsonl").read_text() == before
    assert run_cli("report", run) == 0
    capsys.readouterr()
    assert run_cli("cond-sweep", "--preset", "cond-smoke", "--out", run) == 2
    assert "error: --resume: " in (err := capsys.readouterr().err) and "already holds results" in err


@pytest.mark.parametrize("args,message", [
    (["--conditions", "colour"], "--conditions: Unknown condition 'colour'; choose class and/or text."),
    (["--guidance", "1,80"], "--guidance: Guidance scale must be a number from 0 to 50 (got 80.0)."),
    (["--factors", "1,3"], "--factors: Unknown downsampling factor 3"),
    (["--kind", "gan"], "--kind: Unknown autoencoder kind 'gan'; choose kl or vq."),
    (["--samples-per-class", "1"], "--samples-per-class: Per-class FID needs at least 2 samples per class."),
])
def test_cond_sweep_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    assert run_cli("cond-sweep", "--preset", "cond-smoke", "--out", tmp_path / "x", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
