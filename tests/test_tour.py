"""The tour (the first command): the shipped models measured side by side, resumable, clear about bad folders."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from pipelines.records import (
    FidRecord,
    ModelRecord,
    RecognisabilityRecord,
    SamplingRecord,
)
from pipelines.results_log import read_results

SMALL = ["--sets", "fmnist32", "--n", "20", "--ddim-steps", "2", "--classifier-steps", "20",
         "--bootstrap-resamples", "20"]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped Fashion-MNIST compression set, copied (the tour never writes into models/)."""
    folder = tmp_path_factory.mktemp("zoo")
    for f in ("dm-f1", "ldm-kl-f2", "ldm-kl-f4", "ldm-kl-f8", "ldm-kl-f16"):
        shutil.copytree(ROOT / "models" / f"fmnist32-{f}", folder / f"fmnist32-{f}")
    return folder


def test_the_tour_measures_every_shipped_model_and_resumes(zoo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "tour"
    assert run_cli("tour", "--models", zoo, "--out", out, *SMALL) == 0
    printed = capsys.readouterr().out
    results = read_results(out / "fmnist32")
    models = [m.model for m in results.of(ModelRecord)]
    assert sorted(models) == sorted(p.name for p in zoo.iterdir())
    for name in models:
        assert {r.fid_backend for r in results.of(FidRecord, model=name)} == {"inception", "domain"}
        fid = results.of(FidRecord, model=name, fid_backend="inception")[0]
        assert fid.fid_samples == 20 and fid.fid_ci_low is not None and fid.fid_ci_low <= fid.fid <= fid.fid_ci_high
        assert fid.prdc_k == 3 and all(0 <= v <= 1 for v in (fid.precision, fid.recall, fid.coverage))
        assert fid.density >= 0
        assert results.of(FidRecord, model=name, fid_backend="domain")[0].precision is None  # Inception's only
        assert "dispatch-mode storage accounting" in results.of(SamplingRecord, model=name)[0].memory_method
        assert results.of(SamplingRecord, model=name)[0].sec_per_image > 0
        assert len(results.of(RecognisabilityRecord, model=name)) == 1
        assert (out / "fmnist32" / "grids" / f"samples-{name}.png").is_file()
    report = (out / "report.md").read_text()
    assert "**fmnist32**:" in report.splitlines()[2]  # the finding opens the report
    assert "precision / recall" in report and "density / coverage" in report
    assert "fmnist32-ldm-kl-f4" in printed and "Report:" in printed
    # run again: nothing is measured a second time, the report is written again
    lines = (out / "fmnist32" / "results.jsonl").read_text().count("\n")
    assert run_cli("tour", "--models", zoo, "--out", out, *SMALL) == 0
    assert (out / "fmnist32" / "results.jsonl").read_text().count("\n") == lines


def test_a_missing_or_damaged_shipped_model_is_named(zoo: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "zoo"
    shutil.copytree(zoo, broken)
    shutil.rmtree(broken / "fmnist32-ldm-kl-f8")
    assert run_cli("tour", "--models", broken, "--out", tmp_path / "out", *SMALL) == 2
    err = capsys.readouterr().err
    assert "fmnist32-ldm-kl-f8" in err and "missing" in err
    shutil.copytree(zoo / "fmnist32-ldm-kl-f8", broken / "fmnist32-ldm-kl-f8")
    (broken / "fmnist32-ldm-kl-f8" / "model_index.json").write_text("{not json")
    assert run_cli("tour", "--models", broken, "--out", tmp_path / "out", *SMALL) == 2
    assert "damaged" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
