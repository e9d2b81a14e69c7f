"""Reports and tables read every run through the typed records, committed runs included.

Some committed runs (standard-replaced, kept as test data in tests/data/) are in the first ``results.jsonl`` layout, so rendering them checks the
conversion on reading as well as the joins. Each is copied to tmp_path before rendering:
nothing here writes into ``reports/``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

from ldm_eval.reporting.dispatch import render_any_report
from ldm_eval.reporting.tables import (
    COND_COLUMNS,
    TABLE_COLUMNS,
    Absent,
    conditional_table,
    partner,
    tidy_table,
)
from pipelines.records import (
    AutoencoderRecord,
    ConditioningRecord,
    FidRecord,
    RecordError,
    SamplingRecord,
    TrainingRecord,
)
from pipelines.results_log import Results, ResultsLog, read_results

REPORTS = ROOT / "reports"
COMPRESSION_RUNS = ["quick", "standard", "standard-replaced"]  # the last one in the first layout
CONDITIONING_RUNS = ["cond-gpu", "cond-quick"]
RUN_DIRS = {"standard-replaced": ROOT / "tests" / "data" / "standard-replaced"}  # its report left reports/


def _raw_lines(run: str) -> list[dict]:
    """The committed jsonl lines as plain dicts: an independent view to check the typed path against."""
    return [json.loads(line) for line in (REPORTS / run / "results.jsonl").read_text().splitlines()]


def _fid_line(**where: object) -> float:
    lines = [r for r in _raw_lines("quick") if all(r.get(k) == v for k, v in where.items())]
    assert len(lines) == 1, where
    return lines[0]["fid"]


@pytest.mark.parametrize("run", COMPRESSION_RUNS + CONDITIONING_RUNS)
def test_committed_run_loads_and_renders_self_contained(run: str, tmp_path: Path) -> None:
    run_dir = shutil.copytree(RUN_DIRS.get(run, REPORTS / run), tmp_path / run, ignore=shutil.ignore_patterns("domain_classifier"))
    for stale in ("report.md", "report.html", "results.csv"):
        (run_dir / stale).unlink(missing_ok=True)
    results = read_results(run_dir)
    assert results.environment is not None

    report, summary = render_any_report(run_dir)

    assert report == run_dir / "report.md" and report.read_text().startswith("# LDM Lab")
    html = (run_dir / "report.html").read_text()
    assert 'src="plots/' not in html and 'src="grids/' not in html
    assert html.count("data:image/png;base64,") >= 4 and "<table>" in html and "<style>" in html
    table = pd.read_csv(run_dir / "results.csv")
    if run in CONDITIONING_RUNS:
        assert list(table.columns) == COND_COLUMNS
        assert len(table) == len(results.of(ConditioningRecord)) > 0
        assert table[["fid", "samples_per_s", "train_steps"]].notna().all().all()
    else:
        assert list(table.columns) == TABLE_COLUMNS
        assert len(table) == len(results.of(FidRecord, condition="none")) > 0
        assert table[["fid", "samples_per_s", "train_steps", "unet_params"]].notna().all().all()
        latent = table["factor"] > 1
        assert table.loc[latent, "psnr"].notna().all() and table.loc[~latent, "psnr"].isna().all()
    assert summary.startswith("|") and len(summary.splitlines()) == len(table) + 2


def test_quick_table_matches_the_jsonl_lines() -> None:
    table = tidy_table(read_results(REPORTS / "quick"))
    row = table[(table["kind"] == "kl") & (table["factor"] == 4) & (table["ddim_steps"] == 10)
                & (table["fid_backend"] == "domain")].squeeze()
    assert row["fid"] == _fid_line(record="fid", kind="kl", factor=4, ddim_steps=10, fid_backend="domain")
    sampling = next(r for r in _raw_lines("quick") if r["key"] == "sampling/kl/f4/ddim10")
    train = next(r for r in _raw_lines("quick") if r["key"] == "train/kl/f4")
    ae = next(r for r in _raw_lines("quick") if r["key"] == "autoencoder/kl/f4")
    assert row["samples_per_s"] == sampling["samples_per_s"] and row["train_steps"] == train["train_steps"]
    assert row["psnr"] == ae["psnr"] and row["latent_shape"] == "x".join(map(str, train["latent_shape"]))


def test_conditioning_table_matches_the_jsonl_lines() -> None:
    table = conditional_table(read_results(REPORTS / "cond-quick"))
    row = table[(table["condition"] == "text") & (table["factor"] == 8) & (table["guidance"] == 3.0)].squeeze()
    line = next(r for r in _raw_lines("cond-quick") if r["key"] == "cond-eval/text/f8/g3")
    train = next(r for r in _raw_lines("cond-quick") if r["key"] == "cond-train/text/f8")
    assert (row["accuracy"], row["fid"], row["kid"]) == (line["accuracy"], line["fid"], line["kid"])
    assert row["samples_per_s"] == line["samples_per_s"] and row["train_steps"] == train["train_steps"]
    assert row["mean_class_fid"] == pytest.approx(sum(line["per_class_fid"]) / len(line["per_class_fid"]))


def test_a_misspelt_field_raises_instead_of_an_empty_cell() -> None:
    results = read_results(REPORTS / "quick")
    with pytest.raises(RecordError, match="fid_sample"):
        results.of(FidRecord, fid_sample=500)
    missing = partner(results, TrainingRecord, kind="vq", factor=4)  # a partner not written (yet)
    assert isinstance(missing, Absent) and missing.train_steps is None
    with pytest.raises(AttributeError, match="train_step"):
        missing.train_step


def test_missing_partners_leave_cells_empty(tmp_path: Path) -> None:
    """A sweep still running: the FID is there, its training and sampling records are not (yet)."""
    log = ResultsLog(tmp_path)
    log.append(FidRecord(kind="kl", factor=4, ddim_steps=10, fid=50.0, kid=1.0, kid_std=0.1, fid_backend="domain",
                         fid_samples=100, reference_samples=100, device="cpu"))
    row = tidy_table(read_results(tmp_path)).squeeze()
    assert row["fid"] == 50.0 and pd.isna(row["train_steps"]) and pd.isna(row["samples_per_s"])
    assert row["latent_shape"] == "" and not row["degenerate"]


def test_current_layout_round_trips_into_the_tables(tmp_path: Path) -> None:
    """Records written by today's ResultsLog (schema 2) join like the converted first-layout ones."""
    log = ResultsLog(tmp_path)
    train = dict(latent_shape=[3, 8, 8], unet_params=10, ae_params=5, train_steps=7, train_seconds=1.0,
                 train_images_per_s=2.0, device="cpu", device_name="CPU", batch_size=4, peak_mem_train_mb=None,
                 memory_method="none", degenerate=False, budget="steps", budget_value=7)
    sampling = dict(ddim_steps=10, n=8, seconds=2.0, samples_per_s=4.0, sec_per_image=0.25, peak_mem_sample_mb=None,
                    memory_method="none", sample_batch=8, scheduler="ddim", device="cpu")
    fid = dict(ddim_steps=10, fid=30.0, kid=None, kid_std=None, fid_backend="domain", fid_samples=8,
               reference_samples=8, device="cpu")
    log.append(TrainingRecord(kind="kl", factor=4, resolution=32, **train))
    log.append(AutoencoderRecord(kind="kl", factor=4, ae_params=5, latent_shape=[3, 8, 8], scaling_factor=1.0,
                                 ae_train_steps=3, ae_train_seconds=1.0, psnr=20.0, ssim=0.5, recon_samples=8,
                                 rfid=None, rfid_samples=0, rfid_backend=None, device="cpu"))
    log.append(SamplingRecord(kind="kl", factor=4, **sampling))
    log.append(FidRecord(kind="kl", factor=4, **fid))
    log.append(TrainingRecord(kind="kl", factor=4, condition="class", **train))
    log.append(SamplingRecord(kind="kl", factor=4, condition="class", guidance=3.0, **sampling))
    log.append(FidRecord(kind="kl", factor=4, condition="class", guidance=3.0, **{**fid, "fid": 20.0}))
    log.append(ConditioningRecord(condition="class", kind="kl", factor=4, guidance=3.0, ddim_steps=10, n=8,
                                  samples_per_class=4, class_names=["a", "b"], accuracy=0.75,
                                  per_class_accuracy=[1.0, 0.5], per_class_fid=[10.0, 30.0],
                                  per_class_reference=[4, 4], device="cpu"))
    results = read_results(tmp_path)
    compression = tidy_table(results).squeeze()  # the conditional FID is not a compression row
    assert (compression["fid"], compression["samples_per_s"], compression["psnr"]) == (30.0, 4.0, 20.0)
    assert compression["latent_shape"] == "3x8x8" and compression["resolution"] == 32
    conditioning = conditional_table(results).squeeze()
    assert (conditioning["fid"], conditioning["accuracy"], conditioning["mean_class_fid"]) == (20.0, 0.75, 20.0)
    assert conditioning["train_steps"] == 7 and conditioning["samples_per_s"] == 4.0


@pytest.mark.parametrize("bad_line,message", [
    ({"record": "bogus", "x": 1}, "unknown record type 'bogus'"),
    ({"record": "fid", "kind": "kl", "factor": 4, "ddim_steps": 10, "fid": 1.0, "kid": None, "kid_std": None,
      "fid_backend": "domain", "fid_samples": 8, "reference_samples": 8, "device": "cpu", "fid_smaples": 8},
     "fid_smaples"),
    ({"schema": 2, "record": "classifier", "n": 5, "accuracy_on_real": 0.9, "acc": 0.9}, "acc"),
])
def test_a_bad_record_names_file_and_line(tmp_path: Path, bad_line: dict, message: str) -> None:
    good = {"schema": 2, "record": "classifier", "n": 5, "accuracy_on_real": 0.9}
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, good, bad_line)) + "\n")
    with pytest.raises(RecordError, match=message) as err:
        read_results(tmp_path)
    assert f"{path} line 3" in str(err.value)


def test_line_numbers_count_skipped_lines(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"record": "classifier", "n": 5, "accuracy_on_real": 0.9}\n\n'
                                            '{"record": "bogus"}\n')
    with pytest.raises(RecordError, match="line 3"):
        read_results(tmp_path)


def test_only_the_last_line_may_be_torn(tmp_path: Path) -> None:
    good = '{"record": "classifier", "n": 5, "accuracy_on_real": 0.9}'
    (tmp_path / "results.jsonl").write_text(f'{good}\n{good[:20]}\n{good}\n')
    with pytest.raises(RecordError, match="line 2: not JSON"):
        read_results(tmp_path)


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    lines = (REPORTS / "quick" / "results.jsonl").read_text().splitlines()
    (tmp_path / "results.jsonl").write_text("\n".join(lines[:10]) + "\n" + lines[10][: len(lines[10]) // 2])
    results = read_results(tmp_path)
    assert len(results) == 10 and isinstance(results, Results)
    report, _ = render_any_report(tmp_path)  # a killed sweep still renders what it has
    assert report.is_file()


def test_nothing_to_report_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        render_any_report(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no results"):
        render_any_report(tmp_path)


def test_first_stage_report_reads_the_gan_rows_and_orders_grids_like_the_table(tmp_path: Path) -> None:
    """The committed GPU first-stage run: the GAN reading judges rFID by the intervals, and the
    reconstruction grids follow the table (factor, kind, the no-GAN twin after its model)."""
    from ldm_eval.reporting.first_stage import first_stage_table, gan_reading

    run_dir = shutil.copytree(REPORTS / "first-stage-gpu", tmp_path / "run")
    report, _ = render_any_report(run_dir)
    table = first_stage_table(read_results(run_dir))
    lines = gan_reading(table)
    assert [line.split(":")[0] for line in lines] == ["- KL f = 4", "- KL f = 8"]
    for line, factor in zip(lines, (4, 8)):
        rows = table[(table["kind"] == "kl") & (table["factor"] == factor)].set_index("variant")
        with_gan, without = rows.loc["default"], rows.loc["no-gan"]
        separated = with_gan["rfid_ci_high"] < without["rfid_ci_low"] or without["rfid_ci_high"] < with_gan["rfid_ci_low"]
        assert ("intervals overlap" in line) != separated
        assert f"{with_gan['psnr']:.2f} dB" in line and f"{without['psnr']:.2f} dB" in line
    grids = [line for line in report.read_text().splitlines() if line.startswith("**recon-")]
    assert grids[:3] == ["**recon-kl-f4**", "**recon-kl-f4-no-gan**", "**recon-vq-f4**"]
    assert grids[-1] == "**recon-vq-f16**"


def test_every_series_of_a_sweep_has_its_own_look() -> None:
    """Pixel, KL and VQ at every factor: 11 series, no two drawn alike (colour and marker by f, VQ dashed)."""
    from ldm_eval.reporting.page import series_style

    series = [("pixel", 1)] + [(kind, f) for kind in ("kl", "vq") for f in (2, 4, 8, 16, 32)]
    looks = [tuple(series_style(kind, f).values()) for kind, f in series]
    assert len(set(looks)) == len(series)
    assert series_style("kl", 2)["color"] != series_style("vq", 32)["color"]
    assert series_style("vq", 8)["linestyle"] == "--" and series_style("kl", 8)["linestyle"] == "-"
