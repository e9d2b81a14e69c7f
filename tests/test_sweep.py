import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, run_cli
from ldm_eval.results import TABLE_COLUMNS
from pipelines.first_stage import FACTORS

SMOKE = [sys.executable, "-m", "ldm_eval", "sweep", "--preset", "smoke"]
NOT_APPLICABLE_TO_PIXELS = {"rfid", "psnr", "ssim"}


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
    assert "train/pixel/f1" in before and not any(k.startswith("sampling/kl/f32") for k in before)

    result = subprocess.run(SMOKE + ["--out", str(run), "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _keys(run)
    assert after[: len(before)] == before and len(after) == len(set(after)), "a finished measurement was redone"

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
            else:
                assert not pd.isna(row[column]), (column, row.to_dict())
    assert table.loc[table["factor"] >= 16, "degenerate"].all() and not table.loc[table["factor"] <= 8, "degenerate"].any()
    assert (table["fid"] > 0).all() and (table["samples_per_s"] > 0).all()
    report = (run / "report.md").read_text()
    assert "The paper's numbers" in report and "N=" in report
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4

    # the report re-renders from stored results alone
    (run / "report.md").unlink()
    assert run_cli("report", run) == 0 and (run / "report.md").is_file()


@pytest.mark.parametrize("args,message", [
    (["--factors", "1,3"], "unknown factor 3"),
    (["--resolution", "40"], "does not divide the resolution 40"),
    (["--kinds", "gan"], "Unknown autoencoder kind"),
    (["--ddim-steps", "0"], "DDIM steps must be from 1 to 1000"),
])
def test_sweep_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    try:
        code = run_cli("sweep", "--preset", "smoke", "--out", tmp_path / "r", *args)
    except SystemExit as exit_:  # argparse rejects some values itself
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_sweep_on_empty_folder_and_existing_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("sweep", "--preset", "smoke", "--dataset", empty, "--out", tmp_path / "r") == 2
    assert "No readable images" in capsys.readouterr().err
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "results.jsonl").write_text('{"key": "environment", "record": "environment"}\n')
    assert run_cli("sweep", "--preset", "smoke", "--out", tmp_path / "r2") == 2
    assert "pass --resume" in capsys.readouterr().err


def test_fid_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a").mkdir()
    assert run_cli("fid", tmp_path / "a", tmp_path / "missing") == 2
    assert run_cli("fid", tmp_path / "a", tmp_path / "a", "--backend", "nope") == 2
    err = capsys.readouterr().err
    assert "Unknown backend 'nope'" in err
