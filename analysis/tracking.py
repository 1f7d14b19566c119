"""Mirror the metric table and the detector's verdicts to W&B.

    log_results(table, verdicts, project="burnlab")   # or into the active wandb.run, if any

Logs into the W&B run already active in this process (wandb.run), else into a new run of
`project` (job_type "analysis") when a project is given; otherwise does nothing. wandb is
imported only then; WANDB_MODE=offline works (the tests use it).
"""
from __future__ import annotations

import sys
from pathlib import Path

from analysis.detector import Verdict
from analysis.measure import MetricTable

VERDICT_COLUMNS = ("run", "branch", "component", "burn_index", "burn_label", "implicates",
                   "matches_trained_component")


def log_results(table: MetricTable, verdicts: list[Verdict], *, project: str | None = None,
                directory: Path | None = None) -> str | None:
    """Log to W&B; returns where it went (the run's name and mode), or None if not logged."""
    loaded = sys.modules.get("wandb")
    active = getattr(loaded, "run", None)
    if active is None and not project:
        return None
    import wandb
    run = active or wandb.init(project=project, job_type="analysis",
                               dir=str(directory) if directory else None)
    columns = list(table.rows[0]) if table.rows else []
    run.log({
        "analysis/metrics": wandb.Table(columns=columns,
                                        data=[[row[c] for c in columns] for row in table.rows]),
        "analysis/detector": wandb.Table(
            columns=[*VERDICT_COLUMNS, "summary"],
            data=[[getattr(v, c) for c in VERDICT_COLUMNS] + [v.summary()] for v in verdicts]),
    })
    for verdict in verdicts:
        prefix = f"detector/{verdict.run}/{verdict.branch}"
        run.summary[f"{prefix}/burn_index"] = verdict.burn_index
        run.summary[f"{prefix}/implicates"] = verdict.implicates
    where = f"W&B run {run.name} ({run.settings.mode})"
    if active is None:
        run.finish()
    return where
