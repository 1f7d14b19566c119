"""After a study: build its analysis (grids, GIFs, loss overlay, metrics, report) through the
analysis package's API and say where everything is. The analysis reads the run store only; this
is the one place the harness builds it (burnlab.dashboards.trackers reads the products' W&B keys through
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
    print(f"\nburnlab: study finished.\n"
          f"  run dir:  {run_dir}\n"
          f"  report:   {products.report}\n"
          f"  samples:  {run_dir / 'samples.jsonl'} (PNG paths per checkpoint, prompt and seed)\n"
          f"  config:   {run_dir / 'config.yaml'}")
    return products
