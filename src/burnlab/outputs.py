"""After a study: build its analysis (grids, GIFs, loss overlay, metrics, report) and say where
everything is. The analysis package reads the run store only; this is the one place the
harness calls it."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("burnlab")


def build_outputs(run_dir: Path, use_probe: bool = True) -> int:
    from analysis.cli import main as analyze

    run_dir = Path(run_dir)
    status = analyze([str(run_dir)] + ([] if use_probe else ["--no-probe"]))
    if status:
        log.warning("the analysis of %s failed (status %d); the run store is complete", run_dir, status)
        return status
    print(f"\nburnlab: study finished.\n"
          f"  run dir:  {run_dir}\n"
          f"  report:   {run_dir / 'analysis' / 'report.html'}\n"
          f"  samples:  {run_dir / 'samples.jsonl'} (PNG paths per checkpoint, prompt and seed)\n"
          f"  config:   {run_dir / 'config.yaml'}")
    return 0
