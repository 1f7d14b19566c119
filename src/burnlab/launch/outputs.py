"""After a study: build its analysis (grids, GIFs, loss overlay, metrics, report) through the
analysis package's API and say where everything is. The analysis reads the run store only; this
is the one place the harness builds it, as an observer of the run (PostRunAnalysis), whose
products the dashboards then mirror (burnlab.dashboards.trackers reads their W&B keys through
burnlab.analysis.tracking)."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("burnlab")


def build_outputs(run_dir: Path, use_probe: bool = True, clip_model: str | None = None):
    """The analysis products (None when it failed: the failure is logged, the run store stays
    complete). `clip_model`: `analysis.clip_model`, a hub id or a local folder; a hub id that
    cannot be had leaves the CLIP metrics out, with a note in the report."""
    from burnlab import analysis
    from burnlab.analysis.report import headlines

    run_dir = Path(run_dir)
    try:
        products = analysis.build([run_dir], analysis.Options(use_probe=use_probe, clip_model=clip_model))
    except (analysis.AnalysisError, OSError) as error:
        log.warning("the analysis of %s failed (%s); the run store is complete", run_dir, error)
        return None
    for line in headlines(products):
        print(line)
    print(
        f"\nburnlab: study finished.\n"
        f"  run dir:  {run_dir}\n"
        f"  report:   {products.report}\n"
        f"  samples:  {run_dir / 'samples.jsonl'} (PNG paths per checkpoint, prompt and seed)\n"
        f"  config:   {run_dir / 'config.yaml'}"
    )
    return products


class PostRunAnalysis:
    """The runner's observer that builds the analysis once the study finished (main process,
    `analyze=true`), then hands the products to the dashboards."""

    def __init__(self, run_dir: Path, use_probe: bool, clip_model: str | None, dashboards):
        self.run_dir, self.use_probe, self.clip_model, self.dashboards = run_dir, use_probe, clip_model, dashboards

    def study_finished(self, study: dict) -> None:
        self.dashboards.log_analysis(build_outputs(self.run_dir, use_probe=self.use_probe, clip_model=self.clip_model))

    def finish(self, exit_code: int = 0) -> None:
        pass
