"""The sweep report's HTML page (report.html in a sweep's analysis folder), over the products of
burnlab/analysis/sweep/products.py.

    burnlab-analyze runs/burn_unet_multirun
    # then open runs/burn_unet_multirun/analysis/report.html: every link is relative

Sections: what was swept and what every job shares, what is missing, per job and branch (a table,
in swept-value order) the component swap's verdict of its final checkpoint against the baseline and
its symptom profile, the loss overlay, per branch and
prompt set the grids across the swept values (one per checkpoint shown), and each metric
against the swept value.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from burnlab.analysis.measure import METRICS
from burnlab.analysis.report import (
    NO_SWAP,
    final_against_baseline,
    image,
    missing,
    profile_number,
    write_page,
)
from burnlab.analysis.results import SweepProducts
from burnlab.analysis.symptoms import SYMPTOM_NAMES
from burnlab.store.layout import CONFIG

SOURCES = {
    "overrides": "each job's overrides (job.json, else .hydra/overrides.yaml; a key a job did not "
    "override taken from its config.yaml)",
    CONFIG: "the jobs' resolved configs (config.yaml), as not every job has its overrides",
}


def write_sweep_report(products: SweepProducts) -> Path:
    return write_page(
        products.out / "report.html",
        "burnlab sweep report",
        [
            header(products),
            missing(products.problems + products.table.notes),
            verdict_table(products),
            losses(products),
            grids(products),
            metric_plots(products),
        ],
    )


def header(products: SweepProducts) -> str:
    sweep = products.sweep
    studies = ", ".join(dict.fromkeys(job.study for job in sweep.jobs))
    swept = (
        ", ".join(f"<code>{escape(key)}</code>" for key in sweep.keys) + " (rows sorted by it)"
        if sweep.keys
        else "nothing: the jobs' settings are the same (rows are named by folder)"
    )
    common = "".join(f"<li><code>{escape(key)}={escape(value)}</code></li>" for key, value in sweep.common.items())
    logged = products.logged_to or "not logged to W&B (no active run, no --wandb-project)"
    return (
        f"<h1>burnlab sweep report: {escape(studies)}</h1>"
        f"<p>{len(sweep.jobs)} jobs. Swept: {swept}. Settings read from {SOURCES[sweep.source]}.</p>"
        f"<details{' open' if sweep.source == 'overrides' else ''}><summary>Common to every job "
        f"({len(sweep.common)})</summary><ul>{common}</ul></details>"
        f"<p>Feature space: {escape(products.table.feature_space)}. Results: "
        f"<a href='sweep.json'>sweep.json</a>, <a href='metrics.json'>metrics.json</a>, "
        f"<a href='symptoms.json'>symptoms.json</a>, <a href='attribution.json'>attribution.json</a>, "
        f"<a href='losses.json'>losses.json</a>; "
        f"{escape(logged)}.</p>"
    )


def verdict_table(products: SweepProducts) -> str:
    """A row per job and branch: the swap verdict of its final checkpoint against the baseline, the
    shares it was read from, and the job's symptom profile."""
    sweep = products.sweep
    values = {job.label: job.values for job in sweep.jobs}
    folders = {job.label: job.run.location for job in sweep.jobs}
    head = "".join(f"<th>{escape(key)}</th>" for key in sweep.keys)
    rows = []
    for found in products.profiles:
        pair = final_against_baseline(products.attributions, found.run, found.branch)
        swap = (
            [
                pair.verdict,
                f"{pair.tuned} vs {pair.reference}",
                pair.shares["unet"].text(),
                " / ".join(pair.shares[c].text() for c in pair.components if c != "unet"),  # SDXL: TE1 / TE2
            ]
            if pair
            else ["not sampled", "-", "-", "-"]
        )
        rows.append(
            f"<tr class='job'><td class='text'>{escape(found.run)}</td>"
            + "".join(f"<td>{escape(value)}</td>" for value in values[found.run])
            + f"<td class='text'>{escape(found.branch)}</td><td class='text'>{escape(found.component)}</td>"
            + "".join(f"<td class='text'>{escape(cell)}</td>" for cell in swap)
            + "".join(f"<td>{profile_number(found.symptoms[name])}</td>" for name in SYMPTOM_NAMES)
            + f"<td class='text'>{escape(folders[found.run])}</td></tr>"
        )
    symptoms = "".join(f"<th>{escape(name)}</th>" for name in SYMPTOM_NAMES)
    return (
        "<h2>Which component burned, and the symptom profile, per job</h2><p>Swap verdict: the component "
        "swap of the job's final checkpoint against its baseline (shares in seed spreads with their 95% "
        "intervals; every pair: attribution.json); not sampled: "
        f"{escape(NO_SWAP)}. Then each symptom's mean capped z over its (prompt set, checkpoint after the "
        "baseline) cells, which describes what moved and blames nothing (every signal: symptoms.json).</p>"
        f"<table id='verdicts'><tr><th>job</th>{head}<th>branch</th><th>trains</th><th>swap verdict</th>"
        f"<th>pair</th><th>UNet share</th><th>TE share</th>{symptoms}<th>folder</th></tr>{''.join(rows)}</table>"
    )


def losses(products: SweepProducts) -> str:
    caption = "a colour per job: train loss (raw + EMA), validation and stabilized loss; dashed lines: stage ends"
    return (
        "<h2>Losses</h2>"
        + image(products.out, products.losses_png, caption)
        + "<p>The lines' data: <a href='losses.json'>losses.json</a>.</p>"
    )


def grids(products: SweepProducts) -> str:
    keys = ", ".join(products.sweep.keys) or "job"
    parts = []
    for branch in dict.fromkeys(grid.branch for grid in products.grids):
        parts.append(f"<h2>Samples across the sweep: {escape(branch)}</h2><p>Rows: {escape(keys)}; columns: seeds.</p>")
        of_branch = [grid for grid in products.grids if grid.branch == branch]
        for prompt_set in dict.fromkeys(grid.prompt_set for grid in of_branch):
            figures = "".join(
                image(products.out, grid.path, f"checkpoint: {grid.choice}")
                for grid in of_branch
                if grid.prompt_set == prompt_set
            )
            parts.append(f"<h3>Prompt set: {escape(prompt_set)}</h3><div class='figures'>{figures}</div>")
    return "\n".join(parts)


def metric_plots(products: SweepProducts) -> str:
    plots = "".join(
        image(products.out, path, f"{metric}: {METRICS[metric]}") for metric, path in products.metric_plots.items()
    )
    return (
        "<h2>Metrics against the swept value</h2><p>A line per checkpoint shown; bands: 95% "
        "bootstrap intervals over the images (every value: metrics.json).</p>"
        f"<div class='figures'>{plots}</div>"
    )
