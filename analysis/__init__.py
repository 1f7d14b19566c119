"""burnlab's analysis package: reads a run store (docs/run_store.md) or a W&B run, never the
training code, and makes what the study's readers look at.

    burnlab-analyze runs/burn_unet --compare runs/burn_te --out runs/report   # (make report)
    .venv/bin/python -m pytest tests/analysis -q

Modules, in the order data flows: sources (run folder / W&B -> model), images (decoding),
grids and gifs, losses (overlay), dataset + features + metrics + measure (metric table),
detector (burn verdicts), metric_plots, tracking (W&B), build (every product), report (HTML),
cli.
"""
