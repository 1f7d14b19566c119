"""burnlab's analysis package: reads a run store (docs/run_store.md) or a W&B run, never the
training code, and makes what the study's readers look at.

    import burnlab.analysis
    products = analysis.build(["runs/burn_unet", "runs/burn_te"], analysis.Options(out=Path("runs/report")))
    burnlab-analyze runs/burn_unet --compare runs/burn_te --out runs/report   # the same, from a shell
    sweep = analysis.build_sweep(["runs/burn_unet_multirun"])     # one report across a sweep's jobs
    burnlab-analyze runs/burn_unet_multirun                       # the same, from a shell

`build` is the entry point for one run or two side by side: the command line (burnlab.analysis.cli) and
burnlab's runner both call it; `build_sweep` for the jobs of a sweep (or any runs of one study).
Both raise AnalysisError (one paragraph naming the path or key, the value and what is expected)
for bad input.

Modules, in the order data flows: sources (run folder / W&B -> model), images (decoding),
grids and gifs, losses (overlay) and loss_stats (its numbers), dataset + features + metrics +
estimates (bootstrap intervals) + measure (metric table), attribution (which component burned,
from the component swap's corners; threshold in attribution_rule.json), symptoms (the symptom
profile: what moved and when, blaming nothing), metric_plots, tracking (W&B), products (every
product), report (HTML), cli. results holds the
options and products dataclasses. A sweep: sweep_jobs (which runs, what was swept),
sweep_checkpoints (which checkpoint of each job), sweep_plots (metrics against the swept value),
sweep_products (every product), sweep_report (HTML).
"""

from __future__ import annotations

from pathlib import Path

from burnlab.analysis.results import Options, Products, SweepProducts
from burnlab.analysis.run import AnalysisError


def build(runs: list[str | Path], options: Options | None = None) -> Products:
    """Analyse `runs` (run folders or wandb:entity/project/run_id; two runs are compared side by
    side) into `options.out`; returns what was made, `products.report` the HTML report."""
    from burnlab.analysis.products import (
        analyze,  # the heavy imports (matplotlib, torch) only now
    )

    return analyze(list(runs), options or Options())


def build_sweep(runs: list[str | Path], options: Options | None = None) -> SweepProducts:
    """One report across the jobs of a sweep: `runs` are run folders (or W&B paths) of one study,
    or multirun folders whose job folders hold them; the jobs are sorted by what differs
    across their overrides (or configs). Into `options.out` (default MULTIRUN/analysis)."""
    from burnlab.analysis.sweep.products import (
        analyze_sweep,  # the heavy imports only now
    )

    return analyze_sweep(list(runs), options or Options())


def write_diagnosis(out: str | Path, pair) -> Path:
    """burnlab-diagnose's report of one attributed pair (burnlab.analysis.attribution.Attribution) into
    `out`: swap grids, numbers, verdict; returns report.html."""
    from burnlab.analysis.products import diagnosis

    return diagnosis(Path(out), pair)


__all__ = ["AnalysisError", "Options", "Products", "SweepProducts", "build", "build_sweep", "write_diagnosis"]
