"""Any run folder's report, whichever kind of run it holds (what ``python -m ldm_eval report`` renders)."""
from __future__ import annotations

from pathlib import Path

from ldm_eval.reporting.compression import render_report, summary_table
from ldm_eval.reporting.conditioning import (
    conditional_summary,
    render_conditional_report,
)
from ldm_eval.reporting.evaluation import (
    evaluation_summary,
    render_evaluation_report,
)
from ldm_eval.reporting.first_stage import (
    first_stage_summary,
    render_first_stage_report,
)
from ldm_eval.reporting.page import read_run
from pipelines.records import (
    AutoencoderRecord,
    ConditioningRecord,
    ModelRecord,
    TrainingRecord,
)


def render_any_report(run_dir: Path) -> tuple[Path, str]:
    """Render whichever report the run is: conditioning, first-stage study or compression.

    Returns the report.md path and the summary table; a missing folder or one without results
    raises ValueError with a message meant for the command line.
    """

    results = read_run(run_dir)
    if results.of(ModelRecord):
        return render_evaluation_report(run_dir), evaluation_summary(run_dir)
    if results.of(ConditioningRecord):
        return render_conditional_report(run_dir), conditional_summary(run_dir)
    if results.of(AutoencoderRecord) and not results.of(TrainingRecord):
        return render_first_stage_report(run_dir), first_stage_summary(run_dir)
    return render_report(run_dir), summary_table(run_dir)

