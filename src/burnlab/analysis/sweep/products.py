"""A sweep report: every job of a Hydra multirun (or any list of runs of one study) in one
report, the jobs sorted by their swept values.

    products = analyze_sweep(["runs/burn_unet_multirun"], Options())
    burnlab-analyze runs/burn_unet_multirun                  # the same, from a shell
    burnlab-analyze RUN1 RUN2 RUN3 --out runs/lr_report --checkpoints 650,final

Layout of the output folder (default: MULTIRUN/analysis; for a list of runs ./analysis-sweep):
  report.html                                the report
  sweep.json                                 swept keys, common settings, the jobs in order
                                             (label, swept values, folder), what each grid shows
  losses.png, losses.json                    loss overlay, a colour per job, and the series drawn
  grids/<branch>/<prompt_set>/<choice>.png   rows = jobs (swept values), columns = seeds
  metrics/<metric>.png                       each metric against the swept value
  metrics.json, symptoms.json                the metric table and each job's symptom profile
  attribution.json                           the swap pairs and verdicts of every job (local jobs)
The jobs' own folders are left as they are (each study analysed itself when it finished).
"""

from __future__ import annotations

from pathlib import Path

from burnlab.analysis import attribution, symptoms
from burnlab.analysis.features import Instruments, load_instruments
from burnlab.analysis.grids import labelled_grid
from burnlab.analysis.images import SampleImages
from burnlab.analysis.losses import Series, plot_losses
from burnlab.analysis.measure import measure
from burnlab.analysis.products import check_options, safe, write_results
from burnlab.analysis.results import Options, SweepProducts, ValueGrid
from burnlab.analysis.run import AnalysisError, BranchRef, Checkpoint
from burnlab.analysis.sources import open_run
from burnlab.analysis.sweep.checkpoints import (
    Choice,
    check_choices,
    default_choices,
    parse_choices,
)
from burnlab.analysis.sweep.jobs import Sweep, describe, is_multirun, job_specs
from burnlab.analysis.sweep.plots import Picked, plot_metrics_by_value, value_axis
from burnlab.analysis.sweep.report import write_sweep_report
from burnlab.analysis.tracking import log_results
from burnlab.store.files import atomic_write_json  # the run store's one atomic writer

LIST_OUT = Path("analysis-sweep")  # a list of runs has no folder of its own


def analyze_sweep(specs: list[str | Path], options: Options) -> SweepProducts:
    """Open every job of the specs (runs, or multirun folders), find what was swept and build
    the sweep report; raises AnalysisError for bad input."""
    check_options(options)
    choices = parse_choices(options.checkpoints) if options.checkpoints else None
    specs = [str(spec) for spec in specs]
    out = Path(options.out) if options.out else default_out(specs)
    runs = [open_run(spec, download_root=out / "wandb_artifacts") for spec in job_specs(specs)]
    sweep = describe(runs)
    branches = common_branches(sweep)
    rule = attribution.AttributionRule.load(options.attribution_rule)
    instruments = load_instruments(options.features, options.clip_model, use_probe=options.use_probe)
    return build_sweep_products(sweep, branches, choices, out, instruments, options, rule)


def default_out(specs: list[str]) -> Path:
    return Path(specs[0]) / "analysis" if len(specs) == 1 and is_multirun(specs[0]) else LIST_OUT


def common_branches(sweep: Sweep) -> list[str]:
    """The branches every job has: the jobs of one study have the same."""
    first = sweep.jobs[0].run
    for job in sweep.jobs[1:]:
        if set(job.run.branches) != set(first.branches):
            raise AnalysisError(
                f"{job.run.location} has branches {sorted(job.run.branches)} but {first.location} has "
                f"{sorted(first.branches)}; a sweep report compares runs of one study (the same stages "
                f"and branches, e.g. the jobs of `burnlab -m experiment=burn_unet stages.unet_hi.lr=...`). "
                f"To set two studies side by side: burnlab-analyze RUN --compare RUN2."
            )
    return list(first.branches)


def build_sweep_products(
    sweep: Sweep,
    branches: list[str],
    choices: list[Choice] | None,
    out: Path,
    instruments: Instruments,
    options: Options,
    rule: attribution.AttributionRule,
) -> SweepProducts:
    out.mkdir(parents=True, exist_ok=True)
    refs = [BranchRef(job.run, job.run.branches[name]) for job in sweep.jobs for name in branches]
    picked, problems = pick_checkpoints(sweep, branches, choices)
    images = SampleImages()
    prompt_sets = list(dict.fromkeys(p for job in sweep.jobs for p in job.run.prompt_sets()))
    grids = [
        value_grid(images, sweep, branch, prompt_set, choice, checkpoints, out, options.max_cell)
        for (branch, choice), checkpoints in picked.items()
        for prompt_set in prompt_sets
    ]
    table = measure(refs, images, instruments, options.near_copy_distance)
    loss_series = plot_losses(
        refs,
        out / "losses.png",
        log_scale=options.log_scale,
        smoothing=options.smoothing,
        relative=options.relative_losses,
    )
    products = SweepProducts(
        out=out,
        sweep=sweep,
        refs=refs,
        losses_png=out / "losses.png",
        loss_series=loss_series,
        grids=grids,
        metric_plots=plot_metrics_by_value(table, sweep, picked, value_axis(sweep), out / "metrics"),
        table=table,
        profiles=symptoms.profile_all(symptoms.branch_series(table)),
        # each job's own swap corners (its run dir's attribution.json): the sweep table shows the
        # verdict of its final checkpoint against the baseline
        attributions=[
            pair
            for job in sweep.jobs
            if job.run.local_dir is not None
            for pair in attribution.attribute_run(job.run.local_dir, instruments, rule, job.run.name)
        ],
        problems=[f"{job.label}: {problem}" for job in sweep.jobs for problem in job.run.problems]
        + problems
        + images.problems,
    )
    write_results(out, table, products.profiles, products.attributions)
    atomic_write_json(out / "losses.json", losses_json(loss_series, refs))
    atomic_write_json(out / "sweep.json", sweep_json(products))
    products.logged_to = log_results(products, project=options.wandb_project, directory=out)
    products.report = write_sweep_report(products)
    return products


def pick_checkpoints(sweep: Sweep, branches: list[str], choices: list[Choice] | None) -> tuple[Picked, list[str]]:
    """Each choice's checkpoint of every job, per branch (a branch where no job has it is left
    out), and a problem line per job that lacks a checkpoint the others have."""
    plans = {branch: [job.run.branches[branch].plan for job in sweep.jobs] for branch in branches}
    if choices:
        check_choices(choices, [plan for branch_plans in plans.values() for plan in branch_plans])
    picked: Picked = {}
    problems = []
    for branch, branch_plans in plans.items():
        for choice in choices or default_choices(branch_plans):
            by_job = {job.label: choice.pick(plan) for job, plan in zip(sweep.jobs, branch_plans)}
            if not any(by_job.values()):
                continue
            picked[branch, choice.text] = by_job
            problems += [
                f"{label}: branch {branch} has no checkpoint {choice.text!r}; its row of the grids is blank."
                for label, checkpoint in by_job.items()
                if checkpoint is None
            ]
    return picked, problems


def value_grid(
    images: SampleImages,
    sweep: Sweep,
    branch: str,
    prompt_set: str,
    choice: str,
    checkpoints: dict[str, Checkpoint | None],
    out: Path,
    max_cell: int,
) -> ValueGrid:
    """Rows = jobs in swept-value order, columns = seeds, at each job's checkpoint for `choice`
    (named in the row too when the jobs' checkpoints have different labels)."""
    labels_differ = len({checkpoint.label for checkpoint in checkpoints.values() if checkpoint}) > 1
    rows, shown = [], []
    for job in sweep.jobs:
        checkpoint = checkpoints[job.label]
        samples = job.run.samples_of(branch, prompt_set, checkpoint.index) if checkpoint else []
        suffix = "" if checkpoint and not labels_differ else f" @ {checkpoint.label if checkpoint else 'none'}"
        rows.append((job.label + suffix, samples))
        shown.append((job.label, checkpoint.label if checkpoint else None))
    path = out / "grids" / safe(branch) / safe(prompt_set) / f"{safe(choice)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(images, f"{prompt_set} / seed", rows, max_cell, fit_labels=True).save(path)
    return ValueGrid(branch, prompt_set, choice, path, shown)


def losses_json(series: list[Series], refs: list[BranchRef]) -> dict:
    """The loss overlay's data: each line with its job and branch."""
    owner = {ref.title: ref for ref in refs}
    return {
        "series": [
            {
                "job": owner[line.branch].run.name,
                "branch": owner[line.branch].branch.name,
                "kind": line.kind,
                "stage": line.stage,
                "x": line.x,
                "y": line.y,
            }
            for line in series
        ]
    }


def sweep_json(products: SweepProducts) -> dict:
    sweep = products.sweep
    return {
        "keys": list(sweep.keys),
        "source": sweep.source,
        "common": sweep.common,
        "jobs": [
            {
                "label": job.label,
                "values": dict(zip(sweep.keys, job.values)),
                "study": job.study,
                "location": job.run.location,
            }
            for job in sweep.jobs
        ],
        "grids": [
            {
                "branch": grid.branch,
                "prompt_set": grid.prompt_set,
                "checkpoints": grid.choice,
                "path": grid.path.relative_to(products.out).as_posix(),
                "rows": [{"job": job, "checkpoint": label} for job, label in grid.rows],
            }
            for grid in products.grids
        ],
    }
